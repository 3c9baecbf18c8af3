/* kubelua.watch.core: a non-recursive directory watcher on the host's loop.
 *
 *   local core = require "kubelua.watch.core"
 *   local w, err, code = core.open("/etc/kubernetes/manifests", { debounce = 0.1 })
 *   local batch = w:next()   -- parks until something changed; nil once closed
 *   -- batch = { { kind = "changed", name = "a.yaml", path = ".../a.yaml", type = "file",
 *   --             size = 123, mtime = 1.7e9 }, ... }
 *   w:close()
 *
 * kubelua.watch (lua/kubelua/watch.lua) is the API scripts use: it checks the
 * options, filters names (dotfiles, editor temporaries) and calls a callback
 * from a task. This file is the mechanism.
 *
 * Why raw inotify on a uv_poll rather than uv_fs_event: libuv folds every
 * inotify event into UV_RENAME or UV_CHANGE and drops the rest. We need
 *   - IN_Q_OVERFLOW, to rescan at once when the kernel queue overflowed
 *     (uv_fs_event loses it silently);
 *   - IN_MOVED_TO apart from IN_CREATE/IN_DELETE: a rename into place is a
 *     complete new version of the file, reported without waiting for the
 *     debounce (the editor-style atomic save);
 *   - IN_DELETE_SELF / IN_MOVE_SELF / IN_IGNORED, to tell the directory itself
 *     went away (and stop following it when it was renamed elsewhere);
 *   - a second watch on the nearest existing ancestor while the path is
 *     missing, keyed by its own watch descriptor, filtered on one name.
 * Each watcher owns one inotify instance (fs.inotify.max_user_instances is
 * 128 per user by default: a node agent has a handful of watchers).
 *
 * The model is state-based, not event-based. For every name the watcher keeps
 * what it last reported (exists or not; device, inode, size, mtime, ctime,
 * mode). An inotify event only marks the name dirty and sets its deadline:
 * now + debounce (trailing: every new event pushes it back, but never past
 * first event + max_delay), or now for IN_MOVED_TO. When a deadline is due and
 * a task waits in next(), the name is stat()ed and compared with the record:
 *   absent before, present now        -> "appeared"
 *   present before and now, and a write/create/rename-in was seen or the
 *   stat differs                       -> "changed"
 *   present before, absent now         -> "removed"
 *   absent before and now              -> nothing (a temporary file)
 * So many writes give one "changed", a file created and deleted within the
 * debounce gives nothing, and a consumer that is slow to call next() gets the
 * net change per name: the memory used is bounded by the number of names.
 *
 * The directory itself: when it is missing (or not a directory), next()
 * reports "removed" for every name it had reported, then { kind = "missing" }
 * without a name; when it comes back, { kind = "appeared" } without a name,
 * then its entries. While missing, the nearest existing ancestor is watched
 * for the next path component, and the path is re-checked every `retry`
 * seconds as well (kubelet's file source retries a missing path every 1 s,
 * kubelet-behaviour.md 4.4). When present, a full rescan every `rescan`
 * seconds (kubelet's fileCheckFrequency, 20 s, 4.1) compares every name with
 * its record, so a change inotify did not report (writes through a shared
 * mmap, an overflow, a filesystem without inotify) is found within a period.
 * The rescan also notices the path now naming another directory (inode).
 *
 * With `only = NAME` the watcher tracks that one name of the directory (the
 * file mode of kubelua.watch: watching the parent is what makes a rename over
 * the file visible). Then the directory's own appeared/missing are not
 * reported; a NAME absent at start is reported once as { kind = "missing" }.
 *
 * Symlinked entries (a Kubernetes ConfigMap or Secret volume: `name ->
 * ..data/name`, where `..data` is swapped atomically) change without an event
 * on their own name; any event in the directory re-checks the known symlinks
 * by stat after the debounce.
 *
 * Lifetime: the userdata holds a pointer to malloc'd state; the uv handles
 * live there and the state is freed by the last close callback. __gc and
 * close() stop everything; a task parked in next() is resumed with nil. The
 * handles keep the loop alive only while a task waits in next().
 */
#include "host/host.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#define WATCHER_MT "kubelua.watch.watcher"

#define ROOT_MASK                                                                                  \
    (IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_MOVED_FROM |              \
     IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK)
#define ANC_MASK                                                                                   \
    (IN_CREATE | IN_DELETE | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF |            \
     IN_MOVE_SELF | IN_ONLYDIR)
#define SELF_GONE (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED)
#define CONTENT_EVENTS (IN_MODIFY | IN_CREATE | IN_MOVED_TO)

#define NS_PER_MS 1000000ull
#define SLACK_NS NS_PER_MS /* a deadline within 1 ms counts as due (timers are in ms) */

typedef struct {
    dev_t dev;
    ino_t ino;
    off_t size;
    int64_t mtime_ns, ctime_ns;
    mode_t mode;
    int is_link; /* the name itself is a symlink (stat follows it) */
} rec;

typedef struct entry entry;
struct entry {
    entry *hnext;         /* hash chain */
    entry *dprev, *dnext; /* the dirty list */
    uint32_t hash;
    int known;   /* reported present: the consumer's view */
    int dirty;   /* waiting for its deadline */
    int content; /* a write, create or rename-in since the last report */
    uint64_t first, deadline;
    rec st; /* valid when known */
    char name[];
};

enum { ROOT_UNKNOWN, ROOT_PRESENT, ROOT_MISSING };

typedef struct {
    uv_loop_t *loop;
    kl_host *h; /* for logging in its format */
    int fd;     /* the inotify instance */
    uv_poll_t poll;
    uv_timer_t debounce; /* the earliest deadline, while a task waits */
    uv_timer_t tick;     /* rescan (present) or retry (missing) */
    int open_handles;
    int closed;

    char *root; /* the directory */
    size_t root_len;
    char *only;    /* file mode: the one name tracked, else NULL */
    char *pathbuf; /* root + '/' + name */
    int root_wd;   /* -1 when not watched */
    dev_t root_dev;
    ino_t root_ino;
    int root_state;     /* what the consumer was told: ROOT_* */
    int root_dirty;     /* re-check the directory itself at root_deadline */
    int emit_missing;   /* after this flush's removals */
    int only_missing;   /* file mode: report "missing" once at start */
    int watch_warned;   /* logged that inotify_add_watch failed */
    int check_links;    /* an event arrived: re-check symlinked entries */
    int first;          /* the first next() returns at once (initial state) */
    char root_err[256]; /* why the root is missing */
    uint64_t root_first, root_deadline;
    int anc_wd; /* the ancestor watched while the root is missing */
    char *anc_next;
    uint64_t tick_period_ms;

    uint64_t debounce_ns, max_delay_ns, rescan_ms, retry_ms;

    entry **buckets;
    size_t nbuckets, count, nlinks;
    entry *dirty_head, *dirty_tail;

    kl_park *park; /* the task waiting in next() */

    /* counters for info() */
    uint64_t n_events, n_rescans, n_overflows, n_batches;
} watcher;

typedef struct {
    watcher *w;
} watcher_ud;

/* ------------------------------------------------------------------ names */

static uint32_t hash_name(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static entry *find_entry(watcher *w, const char *name, uint32_t h)
{
    for (entry *e = w->buckets[h & (w->nbuckets - 1)]; e != NULL; e = e->hnext)
        if (e->hash == h && strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

static void grow(watcher *w)
{
    size_t n = w->nbuckets * 2;
    entry **b = calloc(n, sizeof *b);
    if (b == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < w->nbuckets; i++) {
        entry *e = w->buckets[i];
        while (e != NULL) {
            entry *next = e->hnext;
            e->hnext = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(w->buckets);
    w->buckets = b;
    w->nbuckets = n;
}

/* The entry of `name`, created (not known, not dirty) when absent; NULL
 * only when out of memory. */
static entry *get_entry(watcher *w, const char *name)
{
    uint32_t h = hash_name(name);
    entry *e = find_entry(w, name, h);
    if (e != NULL)
        return e;
    size_t len = strlen(name);
    e = calloc(1, sizeof *e + len + 1);
    if (e == NULL)
        return NULL;
    memcpy(e->name, name, len + 1);
    e->hash = h;
    e->hnext = w->buckets[h & (w->nbuckets - 1)];
    w->buckets[h & (w->nbuckets - 1)] = e;
    if (++w->count > w->nbuckets)
        grow(w);
    return e;
}

static void drop_entry(watcher *w, entry *e)
{
    entry **pp = &w->buckets[e->hash & (w->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    w->count--;
    free(e);
}

static void mark_dirty(watcher *w, entry *e, uint64_t now, uint64_t delay, int content)
{
    if (!e->dirty) {
        e->dirty = 1;
        e->first = now;
        e->content = 0;
        e->dprev = w->dirty_tail;
        e->dnext = NULL;
        if (w->dirty_tail != NULL)
            w->dirty_tail->dnext = e;
        else
            w->dirty_head = e;
        w->dirty_tail = e;
    }
    e->content |= content;
    uint64_t d = now + delay, cap = e->first + w->max_delay_ns;
    e->deadline = d < cap ? d : cap; /* follows the last event, up to the cap */
}

/* Ask for a stat comparison, without delaying a pending report. */
static void mark_check(watcher *w, entry *e, uint64_t now, uint64_t delay)
{
    if (!e->dirty)
        mark_dirty(w, e, now, delay, 0);
}

static void unlink_dirty(watcher *w, entry *e)
{
    if (e->dprev != NULL)
        e->dprev->dnext = e->dnext;
    else
        w->dirty_head = e->dnext;
    if (e->dnext != NULL)
        e->dnext->dprev = e->dprev;
    else
        w->dirty_tail = e->dprev;
    e->dprev = e->dnext = NULL;
    e->dirty = 0;
}

static void mark_root(watcher *w, uint64_t now, uint64_t delay)
{
    if (!w->root_dirty) {
        w->root_dirty = 1;
        w->root_first = now;
    }
    uint64_t d = now + delay, cap = w->root_first + w->max_delay_ns;
    w->root_deadline = d < cap ? d : cap;
}

/* ----------------------------------------------------------------- paths */

static const char *entry_path(watcher *w, const char *name)
{
    size_t n = strlen(name);
    if (n > NAME_MAX)
        n = NAME_MAX;
    size_t at = w->root_len;
    if (at > 0 && w->root[at - 1] == '/')
        at--; /* root "/" */
    w->pathbuf[at] = '/';
    memcpy(w->pathbuf + at + 1, name, n);
    w->pathbuf[at + 1 + n] = '\0';
    return w->pathbuf;
}

/* stat the entry (following a symlink); 0 when it exists. */
static int stat_entry(watcher *w, const char *name, rec *r)
{
    const char *path = entry_path(w, name);
    struct stat st;
    if (lstat(path, &st) != 0)
        return -1;
    r->is_link = S_ISLNK(st.st_mode);
    if (r->is_link && stat(path, &st) != 0)
        return -1; /* a dangling symlink counts as absent */
    r->dev = st.st_dev;
    r->ino = st.st_ino;
    r->size = st.st_size;
    r->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    r->ctime_ns = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
    r->mode = st.st_mode;
    return 0;
}

/* A subdirectory's times and size change with its contents, which this
 * watcher does not follow (not recursive): only its identity counts. */
static int rec_differs(const rec *a, const rec *b)
{
    if (S_ISDIR(a->mode) && S_ISDIR(b->mode))
        return a->dev != b->dev || a->ino != b->ino || a->mode != b->mode ||
               a->is_link != b->is_link;
    return a->dev != b->dev || a->ino != b->ino || a->size != b->size ||
           a->mtime_ns != b->mtime_ns || a->ctime_ns != b->ctime_ns || a->mode != b->mode ||
           a->is_link != b->is_link;
}

/* --------------------------------------------------------------- emitting */

static const char *type_name(mode_t m)
{
    if (S_ISREG(m))
        return "file";
    if (S_ISDIR(m))
        return "dir";
    return "other";
}

/* Append one event to the table on top of L. */
static void push_event(watcher *w, lua_State *L, int *n, const char *kind, const char *name,
                       const rec *r, const char *err)
{
    lua_createtable(L, 0, 7);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    if (name != NULL) {
        lua_pushstring(L, name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, entry_path(w, name));
    } else {
        lua_pushstring(L, w->root);
    }
    lua_setfield(L, -2, "path");
    if (r != NULL) {
        lua_pushstring(L, type_name(r->mode));
        lua_setfield(L, -2, "type");
        if (r->is_link) {
            lua_pushboolean(L, 1);
            lua_setfield(L, -2, "symlink");
        }
        if (strcmp(kind, "removed") != 0) {
            lua_pushnumber(L, (double)r->size);
            lua_setfield(L, -2, "size");
            lua_pushnumber(L, (double)r->mtime_ns / 1e9);
            lua_setfield(L, -2, "mtime");
        }
    }
    if (err != NULL && *err) {
        lua_pushstring(L, err);
        lua_setfield(L, -2, "err");
    }
    lua_rawseti(L, -2, ++*n);
}

/* ------------------------------------------------------ the directory itself */

static void on_tick(uv_timer_t *t);

static void set_tick(watcher *w, uint64_t period_ms)
{
    if (w->closed || w->tick_period_ms == period_ms)
        return;
    w->tick_period_ms = period_ms;
    uv_timer_start(&w->tick, on_tick, period_ms, period_ms);
}

static void drop_ancestor(watcher *w)
{
    if (w->anc_wd >= 0)
        inotify_rm_watch(w->fd, w->anc_wd);
    w->anc_wd = -1;
    free(w->anc_next);
    w->anc_next = NULL;
}

/* Watch the nearest existing directory above the root for the next
 * component of the path (its creation, or a rename to it). Returns 1 when
 * that component appeared meanwhile. */
static int watch_ancestor(watcher *w)
{
    int raced = 0;
    drop_ancestor(w);
    char *buf = strdup(w->root);
    if (buf == NULL)
        return 0;
    size_t len = strlen(buf);
    for (;;) {
        char *slash = len > 0 ? memrchr(buf, '/', len) : NULL;
        const char *anc, *next;
        if (slash == NULL) {
            buf[len] = '\0';
            anc = ".";
            next = buf;
        } else if (slash == buf) {
            buf[len] = '\0';
            anc = "/";
            next = buf + 1;
        } else {
            *slash = '\0';
            buf[len] = '\0';
            anc = buf;
            next = slash + 1;
        }
        struct stat st;
        if (stat(anc, &st) == 0 && S_ISDIR(st.st_mode)) {
            int wd = inotify_add_watch(w->fd, anc, ANC_MASK);
            if (wd >= 0) {
                w->anc_wd = wd;
                w->anc_next = strdup(next);
                if (w->anc_next == NULL)
                    drop_ancestor(w);
                /* Created between our look and the watch (mkdir -p)? Then no
                 * event will tell: look again. */
                char *p = malloc(strlen(anc) + strlen(next) + 2);
                if (p != NULL) {
                    sprintf(p, "%s/%s", anc, next);
                    raced = stat(p, &st) == 0 && S_ISDIR(st.st_mode);
                    free(p);
                }
            }
            break; /* else: the retry timer looks again */
        }
        if (slash == NULL || slash == buf)
            break;
        len = (size_t)(slash - buf);
    }
    free(buf);
    return raced;
}

/* Every name in the directory (or the one name), and every name reported,
 * gets a stat comparison now. */
static void mark_scan(watcher *w, uint64_t now)
{
    for (size_t i = 0; i < w->nbuckets; i++)
        for (entry *e = w->buckets[i]; e != NULL; e = e->hnext)
            if (e->known)
                mark_check(w, e, now, 0);
    if (w->only != NULL) {
        entry *e = get_entry(w, w->only);
        if (e != NULL)
            mark_check(w, e, now, 0);
        return;
    }
    DIR *d = opendir(w->root);
    if (d == NULL)
        return; /* gone meanwhile: the removals show at the stat */
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        entry *e = get_entry(w, de->d_name);
        if (e != NULL)
            mark_check(w, e, now, 0);
    }
    closedir(d);
}

/* Re-check the directory: still the one watched, back, or gone. Appends
 * "appeared" to the batch; "missing" comes after the removals (flush). */
static void root_flush(watcher *w, lua_State *L, int *n, uint64_t now)
{
    w->root_dirty = 0;
    struct stat st;
    int err = 0;
    int ok = stat(w->root, &st) == 0;
    if (!ok)
        err = errno;
    else if (!S_ISDIR(st.st_mode))
        ok = 0, err = ENOTDIR;
    if (ok && w->root_wd >= 0 && st.st_dev == w->root_dev && st.st_ino == w->root_ino) {
        mark_scan(w, now); /* the same directory: a rescan */
        return;
    }
    if (w->root_wd >= 0) /* replaced, moved away or gone: stop following the old one */
        inotify_rm_watch(w->fd, w->root_wd);
    w->root_wd = -1;
    if (ok) {
        int wd = inotify_add_watch(w->fd, w->root, ROOT_MASK);
        if (wd < 0 && (errno == ENOENT || errno == ENOTDIR)) {
            ok = 0, err = errno; /* went away in between */
        } else if (wd < 0) {
            if (!w->watch_warned)
                kl__logh(w->h, 'W', NULL,
                         "watch %s: inotify_add_watch: %s; changes are seen by rescans only",
                         w->root, strerror(errno));
            w->watch_warned = 1;
        } else {
            w->root_wd = wd;
            w->watch_warned = 0;
            if (stat(w->root, &st) == 0) { /* what the watch is on */
                w->root_dev = st.st_dev;
                w->root_ino = st.st_ino;
            }
        }
    }
    if (ok) {
        drop_ancestor(w);
        if (w->root_state == ROOT_MISSING && w->only == NULL)
            push_event(w, L, n, "appeared", NULL, NULL, NULL);
        w->root_state = ROOT_PRESENT;
        w->root_err[0] = '\0';
        mark_scan(w, now);
        set_tick(w, w->rescan_ms);
    } else {
        /* Gone: every name goes now, so the removals come before "missing". */
        for (size_t i = 0; i < w->nbuckets; i++)
            for (entry *e = w->buckets[i]; e != NULL; e = e->hnext) {
                mark_check(w, e, now, 0);
                e->deadline = now;
            }
        snprintf(w->root_err, sizeof w->root_err, "%s: %s: %s",
                 err == ENOENT    ? "ENOENT"
                 : err == ENOTDIR ? "ENOTDIR"
                 : err == EACCES  ? "EACCES"
                                  : "ERROR",
                 w->root, strerror(err));
        if (w->root_state != ROOT_MISSING && w->only == NULL)
            w->emit_missing = 1;
        w->root_state = ROOT_MISSING;
        if (watch_ancestor(w))
            mark_root(w, now, w->debounce_ns);
        set_tick(w, w->retry_ms);
    }
}

/* ----------------------------------------------------------------- flush */

static int by_name(const void *a, const void *b)
{
    return strcmp((*(entry *const *)a)->name, (*(entry *const *)b)->name);
}

/* Push a table with every due change (sorted by name); returns how many. */
static int flush(watcher *w, lua_State *L, uint64_t now)
{
    int n = 0;
    lua_newtable(L);
    if (w->root_dirty && w->root_deadline <= now + SLACK_NS)
        root_flush(w, L, &n, now);
    if (w->check_links) {
        w->check_links = 0;
        if (w->nlinks > 0)
            for (size_t i = 0; i < w->nbuckets; i++)
                for (entry *e = w->buckets[i]; e != NULL; e = e->hnext)
                    if (e->known && e->st.is_link)
                        mark_check(w, e, now, w->debounce_ns);
    }
    size_t ndue = 0;
    for (entry *e = w->dirty_head; e != NULL; e = e->dnext)
        if (e->deadline <= now + SLACK_NS)
            ndue++;
    if (ndue > 0) {
        entry **due = malloc(ndue * sizeof *due);
        if (due == NULL) {
            mark_root(w, now, w->debounce_ns); /* try again */
        } else {
            size_t k = 0;
            for (entry *e = w->dirty_head; e != NULL; e = e->dnext)
                if (e->deadline <= now + SLACK_NS)
                    due[k++] = e;
            qsort(due, ndue, sizeof *due, by_name);
            for (k = 0; k < ndue; k++) {
                entry *e = due[k];
                rec cur;
                int exists = w->root_state != ROOT_MISSING && stat_entry(w, e->name, &cur) == 0;
                if (exists) {
                    if (!e->known)
                        push_event(w, L, &n, "appeared", e->name, &cur, NULL);
                    else if (e->content || rec_differs(&e->st, &cur))
                        push_event(w, L, &n, "changed", e->name, &cur, NULL);
                    if (e->known && e->st.is_link)
                        w->nlinks--;
                    e->known = 1;
                    e->st = cur;
                    if (cur.is_link)
                        w->nlinks++;
                } else if (e->known) {
                    push_event(w, L, &n, "removed", e->name, &e->st, NULL);
                    if (e->st.is_link)
                        w->nlinks--;
                    e->known = 0;
                }
                unlink_dirty(w, e);
                if (!e->known)
                    drop_entry(w, e);
            }
            free(due);
        }
    }
    if (w->emit_missing) {
        w->emit_missing = 0;
        push_event(w, L, &n, "missing", NULL, NULL, w->root_err);
    }
    if (w->only_missing && !w->root_dirty) {
        w->only_missing = 0;
        entry *e = find_entry(w, w->only, hash_name(w->only));
        if (e == NULL || (!e->known && !e->dirty))
            push_event(w, L, &n, "missing", w->only, NULL,
                       w->root_state == ROOT_MISSING ? w->root_err : NULL);
    }
    return n;
}

/* The earliest pending deadline, or UINT64_MAX. */
static uint64_t next_deadline(watcher *w)
{
    uint64_t m = w->root_dirty ? w->root_deadline : UINT64_MAX;
    if (w->check_links && w->nlinks > 0)
        m = 0;
    for (entry *e = w->dirty_head; e != NULL; e = e->dnext)
        if (e->deadline < m)
            m = e->deadline;
    return m;
}

static void on_debounce(uv_timer_t *t);

static void arm_debounce(watcher *w, uint64_t now)
{
    uint64_t d = next_deadline(w);
    if (d == UINT64_MAX) {
        uv_timer_stop(&w->debounce);
        return;
    }
    uint64_t ms = d > now ? (d - now + NS_PER_MS - 1) / NS_PER_MS : 0;
    uv_timer_start(&w->debounce, on_debounce, ms, 0);
}

static void set_refs(watcher *w, int on)
{
    uv_handle_t *hs[] = {(uv_handle_t *)&w->poll, (uv_handle_t *)&w->debounce,
                         (uv_handle_t *)&w->tick};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++) {
        if (on)
            uv_ref(hs[i]);
        else
            uv_unref(hs[i]);
    }
}

/* From a loop callback: hand what is due to the waiting task, if any. */
static void deliver(watcher *w)
{
    if (w->park == NULL || w->closed)
        return;
    uint64_t now = uv_hrtime();
    lua_State *co = kl__park_thread(w->park);
    lua_checkstack(co, 8);
    if (flush(w, co, now) > 0) {
        kl_park *p = w->park;
        w->park = NULL;
        w->n_batches++;
        kl__park_set_cancel(p, NULL, NULL);
        kl__park_resume(p, 1);
        set_refs(w, 0);
        uv_timer_stop(&w->debounce);
        return;
    }
    lua_pop(co, 1);
    arm_debounce(w, now);
}

static void on_debounce(uv_timer_t *t)
{
    deliver(t->data);
}

static void on_tick(uv_timer_t *t)
{
    watcher *w = t->data;
    uint64_t now = uv_hrtime();
    if (w->root_state != ROOT_MISSING)
        w->n_rescans++;
    mark_root(w, now, 0);
    w->root_deadline = now;
    deliver(w);
}

/* ---------------------------------------------------------------- inotify */

static void handle_event(watcher *w, const struct inotify_event *e, uint64_t now)
{
    w->n_events++;
    if (e->mask & IN_Q_OVERFLOW) {
        w->n_overflows++;
        mark_root(w, now, 0); /* events were lost: rescan at once */
        w->root_deadline = now;
        return;
    }
    if (e->wd == w->root_wd && w->root_wd >= 0) {
        if (e->mask & SELF_GONE) {
            if (!(e->mask & IN_IGNORED))
                inotify_rm_watch(w->fd, w->root_wd);
            w->root_wd = -1;
            mark_root(w, now, w->debounce_ns);
            return;
        }
        if (e->len == 0 || e->name[0] == '\0')
            return; /* the directory's own attributes */
        w->check_links = 1;
        if (w->only != NULL && strcmp(e->name, w->only) != 0)
            return;
        entry *en = get_entry(w, e->name);
        if (en == NULL) {
            mark_root(w, now, w->debounce_ns); /* out of memory: rescan later */
            return;
        }
        /* A rename into place is a complete new version: report it at once.
         * Everything else may be followed by more (writes, the new file of a
         * delete-and-recreate), so it waits for the debounce. */
        uint64_t delay = (e->mask & IN_MOVED_TO) ? 0 : w->debounce_ns;
        mark_dirty(w, en, now, delay, (e->mask & CONTENT_EVENTS) ? 1 : 0);
    } else if (e->wd == w->anc_wd && w->anc_wd >= 0) {
        if (e->mask & SELF_GONE) {
            if (!(e->mask & IN_IGNORED))
                inotify_rm_watch(w->fd, w->anc_wd);
            w->anc_wd = -1;
            mark_root(w, now, 0);
            return;
        }
        if (e->len > 0 && w->anc_next != NULL && strcmp(e->name, w->anc_next) == 0)
            mark_root(w, now, w->debounce_ns);
    }
    /* else: a watch already dropped */
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    watcher *w = h->data;
    if (w->closed)
        return;
    if (status < 0) {
        kl__logh(w->h, 'W', NULL, "watch %s: inotify poll: %s; rescanning", w->root,
                 uv_strerror(status));
        uv_poll_stop(&w->poll);
        mark_root(w, uv_hrtime(), 0);
        deliver(w);
        return;
    }
    /* Drain the queue: the two halves of a rename are read together. */
    char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
    uint64_t now = uv_hrtime();
    for (;;) {
        ssize_t len = read(w->fd, buf, sizeof buf);
        if (len < 0 && errno == EINTR)
            continue;
        if (len <= 0)
            break;
        for (char *p = buf; p < buf + len;) {
            const struct inotify_event *e = (const struct inotify_event *)p;
            handle_event(w, e, now);
            p += sizeof *e + e->len;
        }
    }
    deliver(w);
}

/* ------------------------------------------------------------- lifetime */

static void free_watcher(watcher *w)
{
    for (size_t i = 0; i < w->nbuckets; i++) {
        entry *e = w->buckets[i];
        while (e != NULL) {
            entry *next = e->hnext;
            free(e);
            e = next;
        }
    }
    if (w->fd >= 0)
        close(w->fd);
    free(w->buckets);
    free(w->root);
    free(w->only);
    free(w->pathbuf);
    free(w->anc_next);
    free(w);
}

static void handle_closed(uv_handle_t *h)
{
    watcher *w = h->data;
    if (--w->open_handles == 0)
        free_watcher(w);
}

static void park_cancel(void *ud)
{
    watcher *w = ud;
    w->park = NULL; /* the host drops the task; the watcher stays usable */
    set_refs(w, 0);
}

static void watcher_close(watcher *w)
{
    if (w->closed)
        return;
    w->closed = 1;
    if (w->park != NULL) {
        kl_park *p = w->park;
        w->park = NULL;
        kl__park_set_cancel(p, NULL, NULL);
        lua_pushnil(kl__park_thread(p));
        kl__park_resume(p, 1);
    }
    uv_close((uv_handle_t *)&w->poll, handle_closed);
    uv_close((uv_handle_t *)&w->debounce, handle_closed);
    uv_close((uv_handle_t *)&w->tick, handle_closed);
}

static watcher *check_watcher(lua_State *L)
{
    watcher_ud *u = luaL_checkudata(L, 1, WATCHER_MT);
    return u->w;
}

/* ------------------------------------------------------------------ API */

static double opt_num(lua_State *L, int t, const char *k, double dflt, double min)
{
    lua_getfield(L, t, k);
    double v = dflt;
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1))
            luaL_error(L, "watch: option %s must be a number", k);
        v = lua_tonumber(L, -1);
        if (!(v >= min) || v > 1e9)
            luaL_error(L, "watch: option %s must be at least %g", k, min);
    }
    lua_pop(L, 1);
    return v;
}

/* open(dir, {only=, debounce=, max_delay=, rescan=, retry=, initial=})
 *   -> watcher | nil, "CODE: ...", "CODE" */
static int l_open(lua_State *L)
{
    const char *root = luaL_checkstring(L, 1);
    if (lua_isnoneornil(L, 2))
        lua_newtable(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    double debounce = opt_num(L, 2, "debounce", 0.1, 0);
    double max_delay = opt_num(L, 2, "max_delay", 1, 0);
    double rescan = opt_num(L, 2, "rescan", 20, 0.001);
    double retry = opt_num(L, 2, "retry", 1, 0.001);
    lua_getfield(L, 2, "initial");
    int initial = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 2, "only");
    const char *only = lua_isnil(L, -1) ? NULL : lua_tostring(L, -1);
    if (!lua_isnil(L, -1) && (only == NULL || *only == '\0' || strchr(only, '/') != NULL))
        return luaL_error(L, "watch: option only must be a file name (no '/')");
    lua_pop(L, 1); /* only stays valid: the options table holds the string */
    if (*root == '\0')
        return luaL_error(L, "watch: the path is empty");
    if (strlen(root) > PATH_MAX)
        return kl__push_error(L, "ENAMETOOLONG", "%.64s...: path too long", root);

    watcher_ud *u = lua_newuserdata(L, sizeof *u);
    u->w = NULL;
    luaL_setmetatable(L, WATCHER_MT);

    watcher *w = calloc(1, sizeof *w);
    if (w == NULL)
        return kl__push_error(L, "ERROR", "watch %s: out of memory", root);
    w->h = kl__host(L);
    w->fd = -1;
    w->root_wd = w->anc_wd = -1;
    w->root = strdup(root);
    w->root_len = strlen(root);
    w->only = only != NULL ? strdup(only) : NULL;
    w->pathbuf = malloc(w->root_len + NAME_MAX + 2);
    w->nbuckets = 64;
    w->buckets = calloc(w->nbuckets, sizeof *w->buckets);
    if (w->root == NULL || (only != NULL && w->only == NULL) || w->pathbuf == NULL ||
        w->buckets == NULL) {
        free_watcher(w);
        return kl__push_error(L, "ERROR", "watch %s: out of memory", root);
    }
    memcpy(w->pathbuf, w->root, w->root_len);
    w->debounce_ns = (uint64_t)(debounce * 1e9);
    w->max_delay_ns = (uint64_t)((max_delay > debounce ? max_delay : debounce) * 1e9);
    w->rescan_ms = (uint64_t)(rescan * 1000 + 0.5);
    w->retry_ms = (uint64_t)(retry * 1000 + 0.5);
    if (w->rescan_ms == 0)
        w->rescan_ms = 1;
    if (w->retry_ms == 0)
        w->retry_ms = 1;

    w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->fd < 0) {
        int err = errno;
        free_watcher(w);
        return kl__push_error(L, err == EMFILE ? "EMFILE" : "ERROR",
                              "watch %s: inotify_init1: %s%s", root, strerror(err),
                              err == EMFILE ? " (fs.inotify.max_user_instances)" : "");
    }
    w->loop = kl__host(L)->loop;
    int rc = uv_poll_init(w->loop, &w->poll, w->fd);
    if (rc < 0) {
        free_watcher(w);
        return kl__push_error(L, "ERROR", "watch %s: uv_poll_init: %s", root, uv_strerror(rc));
    }
    uv_timer_init(w->loop, &w->debounce);
    uv_timer_init(w->loop, &w->tick);
    w->poll.data = w->debounce.data = w->tick.data = w;
    w->open_handles = 3;
    u->w = w;
    set_refs(w, 0);
    uv_poll_start(&w->poll, UV_READABLE, on_poll);

    /* Watch the directory now, so that nothing is missed before the first
     * next(); what is there is reported by that next() (initial), or taken
     * as the starting point silently. */
    uint64_t now = uv_hrtime();
    int n = 0;
    w->root_state = ROOT_UNKNOWN;
    lua_newtable(L);
    root_flush(w, L, &n, now); /* emits nothing from ROOT_UNKNOWN */
    lua_pop(L, 1);
    w->first = initial;
    if (!initial) {
        /* what is there now is the consumer's starting view: no events */
        while (w->dirty_head != NULL) {
            entry *e = w->dirty_head;
            rec cur;
            if (w->root_state == ROOT_PRESENT && stat_entry(w, e->name, &cur) == 0) {
                e->known = 1;
                e->st = cur;
                if (cur.is_link)
                    w->nlinks++;
            }
            unlink_dirty(w, e);
            if (!e->known)
                drop_entry(w, e);
        }
    }
    if (w->only != NULL && w->root_state == ROOT_PRESENT) {
        rec r;
        if (stat_entry(w, w->only, &r) != 0)
            w->only_missing = 1;
    } else if (w->only != NULL) {
        w->only_missing = 1;
    }
    return 1;
}

/* w:next() -> { events } (parks until some are due) | nil once closed.
 * With `initial`, the first call returns at once: the entries present (or
 * "missing"), an empty table for an empty directory, so that a consumer
 * knows it has seen the starting state (kubelet's file source sends its
 * first SET, empty or not, right away: kubelet-behaviour.md 4.4). */
static int w_next(lua_State *L)
{
    watcher *w = check_watcher(L);
    if (w == NULL || w->closed) {
        lua_pushnil(L);
        return 1;
    }
    if (w->park != NULL)
        return luaL_error(L, "watch %s: another task is already waiting in next()", w->root);
    if (!kl__in_task(L))
        return luaL_error(L, "watch: next() parks and must run in a task");
    uint64_t now = uv_hrtime();
    if (flush(w, L, now) > 0 || w->first) {
        w->first = 0;
        w->n_batches++;
        return 1;
    }
    lua_pop(L, 1);
    kl_park *p = kl__park_new(L);
    w->park = p;
    kl__park_set_cancel(p, park_cancel, w);
    set_refs(w, 1);
    arm_debounce(w, now);
    return kl__park_yield(L, p);
}

/* w:close(): stop watching; a task waiting in next() gets nil. */
static int w_close(lua_State *L)
{
    watcher_ud *u = luaL_checkudata(L, 1, WATCHER_MT);
    if (u->w != NULL) {
        watcher_close(u->w);
        u->w = NULL;
    }
    return 0;
}

/* w:info() -> { watching =, missing =, entries =, pending =, events =, rescans =,
 *               overflows =, batches = } */
static int w_info(lua_State *L)
{
    watcher *w = check_watcher(L);
    lua_createtable(L, 0, 8);
    if (w == NULL) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "closed");
        return 1;
    }
    size_t pending = 0;
    for (entry *e = w->dirty_head; e != NULL; e = e->dnext)
        pending++;
    lua_pushboolean(L, w->root_wd >= 0);
    lua_setfield(L, -2, "watching");
    lua_pushboolean(L, w->root_state == ROOT_MISSING);
    lua_setfield(L, -2, "missing");
    lua_pushnumber(L, (double)w->count);
    lua_setfield(L, -2, "entries");
    lua_pushnumber(L, (double)pending);
    lua_setfield(L, -2, "pending");
    lua_pushnumber(L, (double)w->n_events);
    lua_setfield(L, -2, "events");
    lua_pushnumber(L, (double)w->n_rescans);
    lua_setfield(L, -2, "rescans");
    lua_pushnumber(L, (double)w->n_overflows);
    lua_setfield(L, -2, "overflows");
    lua_pushnumber(L, (double)w->n_batches);
    lua_setfield(L, -2, "batches");
    return 1;
}

static int w_tostring(lua_State *L)
{
    watcher *w = check_watcher(L);
    lua_pushfstring(L, "kubelua.watch.watcher(%s)", w != NULL ? w->root : "closed");
    return 1;
}

int luaopen_kubelua_watch_core(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"next", w_next}, {"close", w_close}, {"info", w_info}, {0, 0}};
    kl__new_type(L, WATCHER_MT, methods, w_close);
    luaL_getmetatable(L, WATCHER_MT);
    lua_pushcfunction(L, w_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"open", l_open}, {0, 0}};
    luaL_newlib(L, fns);
    return 1;
}
