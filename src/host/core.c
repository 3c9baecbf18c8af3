/* kubelua.core: tasks, time and wakers - the scheduler as Lua sees it.
 *
 * core.version: kubelua's version string (KUBELUA_VERSION). */
#include "host.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* spawn(fn, ...): run fn(...) in a new task on the next loop turn. */
static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    kl__spawn(kl__host(L), L, lua_gettop(L) - 1);
    return 0;
}

/* --- sleep ------------------------------------------------------------- */

typedef struct {
    uv_timer_t timer;
    kl_park *park;
} sleeper;

static void sleeper_free(uv_handle_t *handle)
{
    free(handle->data);
}

static void on_sleep_done(uv_timer_t *t)
{
    sleeper *s = t->data;
    kl__park_resume(s->park, 0);
    uv_close((uv_handle_t *)&s->timer, sleeper_free);
}

static void sleep_cancel(void *ud)
{
    sleeper *s = ud;
    uv_close((uv_handle_t *)&s->timer, sleeper_free);
}

/* sleep(seconds): park the task for at least that long (0 yields one turn). */
static int l_sleep(lua_State *L)
{
    double secs = luaL_checknumber(L, 1);
    if (secs < 0)
        secs = 0;
    kl_host *h = kl__host(L);
    kl_park *p = kl__park_new(L);
    sleeper *s = malloc(sizeof *s);
    if (s == NULL)
        return luaL_error(L, "out of memory");
    s->park = p;
    uv_timer_init(h->loop, &s->timer);
    s->timer.data = s;
    uv_timer_start(&s->timer, on_sleep_done, (uint64_t)(secs * 1000.0 + 0.5), 0);
    kl__park_set_cancel(p, sleep_cancel, s);
    return kl__park_yield(L, p);
}

/* --- clocks ------------------------------------------------------------- */

static double ts_secs(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* now(): wall clock, seconds since the epoch (a float). */
static int l_now(lua_State *L)
{
    lua_pushnumber(L, ts_secs(CLOCK_REALTIME));
    return 1;
}

/* monotime(): monotonic seconds (a float), for measuring intervals. */
static int l_monotime(lua_State *L)
{
    lua_pushnumber(L, ts_secs(CLOCK_MONOTONIC));
    return 1;
}

/* cputime(): user + system CPU seconds used by this process. */
static int l_cputime(lua_State *L)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    lua_pushnumber(L, (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                          (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
    return 1;
}

/* --- wakers: park one task until another wakes it ------------------------ */

#define WAKER_MT "kubelua.waker"

typedef struct wait_rec wait_rec;

typedef struct {
    wait_rec *waiting; /* the parked task, if any */
    int pending;       /* wake() arrived before wait() */
} waker;

/* One parked wait; malloc'd because it may hold a timer handle. */
struct wait_rec {
    uv_timer_t timer;
    int has_timer;
    kl_park *park;
    waker *w;
};

static void wait_rec_free(uv_handle_t *h)
{
    free(h->data);
}

static void wait_rec_done(wait_rec *r)
{
    if (r->has_timer) {
        uv_timer_stop(&r->timer);
        uv_close((uv_handle_t *)&r->timer, wait_rec_free);
    } else {
        free(r);
    }
}

/* Resume the waiter with `woken` (true: wake(), false: timeout). */
static void wait_finish(lua_State *L, wait_rec *r, int woken)
{
    waker *w = r->w;
    w->waiting = NULL;
    lua_pushlightuserdata(L, w); /* drop the anchor that kept the waker alive */
    lua_pushnil(L);
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_State *co = kl__park_thread(r->park);
    lua_pushboolean(co, woken);
    kl__park_resume(r->park, 1);
    wait_rec_done(r);
}

static void on_wait_timeout(uv_timer_t *t)
{
    wait_rec *r = t->data;
    wait_finish(kl__park_thread(r->park), r, 0);
}

static void waker_cancel(void *ud)
{
    wait_rec *r = ud;
    r->w->waiting = NULL;
    wait_rec_done(r);
}

/* waker() -> w: w:wait([timeout]) parks until w:wake() (true) or the timeout (false). */
static int l_waker(lua_State *L)
{
    waker *w = lua_newuserdata(L, sizeof *w);
    w->waiting = NULL;
    w->pending = 0;
    luaL_setmetatable(L, WAKER_MT);
    return 1;
}

/* w:wait([timeout_s]) -> true when woken (at once if woken already),
 * false when the timeout passed first. */
static int waker_wait(lua_State *L)
{
    waker *w = luaL_checkudata(L, 1, WAKER_MT);
    double timeout = luaL_optnumber(L, 2, -1);
    if (w->waiting != NULL)
        return luaL_error(L, "waker: another task is already waiting");
    if (w->pending) {
        w->pending = 0;
        lua_pushboolean(L, 1);
        return 1;
    }
    kl_park *p = kl__park_new(L);
    wait_rec *r = calloc(1, sizeof *r);
    if (r == NULL)
        return luaL_error(L, "out of memory");
    r->park = p;
    r->w = w;
    if (timeout >= 0) {
        uv_timer_init(kl__host(L)->loop, &r->timer);
        r->timer.data = r;
        r->has_timer = 1;
        uv_timer_start(&r->timer, on_wait_timeout, (uint64_t)(timeout * 1000.0 + 0.5), 0);
    }
    w->waiting = r;
    kl__park_set_cancel(p, waker_cancel, r);
    /* Keep the waker alive while a task waits on it. */
    lua_pushlightuserdata(L, w);
    lua_pushvalue(L, 1);
    lua_rawset(L, LUA_REGISTRYINDEX);
    return kl__park_yield(L, p);
}

/* w:wake(): resume the waiting task on the next loop turn (or make the
 * next wait() return at once). */
static int waker_wake(lua_State *L)
{
    waker *w = luaL_checkudata(L, 1, WAKER_MT);
    if (w->waiting != NULL)
        wait_finish(L, w->waiting, 1);
    else
        w->pending = 1;
    return 0;
}

/* --- signals ------------------------------------------------------------ */

typedef struct {
    uv_signal_t sig[4];
    int n, open;
    kl_park *park;
    int done;
} sig_wait;

static void sigwait_closed(uv_handle_t *h)
{
    sig_wait *w = h->data;
    if (--w->open == 0)
        free(w);
}

static void sigwait_close(sig_wait *w)
{
    for (int i = 0; i < w->n; i++) {
        uv_signal_stop(&w->sig[i]);
        uv_close((uv_handle_t *)&w->sig[i], sigwait_closed);
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    sig_wait *w = s->data;
    if (w->done)
        return;
    w->done = 1;
    lua_State *co = kl__park_thread(w->park);
    lua_pushstring(co, signum == SIGTERM  ? "TERM"
                       : signum == SIGINT ? "INT"
                       : signum == SIGHUP ? "HUP"
                                          : "QUIT");
    kl__park_resume(w->park, 1);
    sigwait_close(w);
}

static void sigwait_cancel(void *ud)
{
    sigwait_close(ud);
}

/* wait_signal("TERM", "INT", ...) -> the name of the first that arrives.
 * Parks the task; while it waits, those signals no longer end the process. */
static int l_wait_signal(lua_State *L)
{
    int n = lua_gettop(L);
    if (n < 1 || n > 4)
        return luaL_error(L, "wait_signal: give 1 to 4 of TERM, INT, HUP, QUIT");
    int nums[4];
    for (int i = 0; i < n; i++) {
        const char *name = luaL_checkstring(L, i + 1);
        nums[i] = strcmp(name, "TERM") == 0   ? SIGTERM
                  : strcmp(name, "INT") == 0  ? SIGINT
                  : strcmp(name, "HUP") == 0  ? SIGHUP
                  : strcmp(name, "QUIT") == 0 ? SIGQUIT
                                              : 0;
        if (nums[i] == 0)
            return luaL_error(L, "wait_signal: unknown signal \"%s\"", name);
    }
    kl_park *p = kl__park_new(L);
    sig_wait *w = calloc(1, sizeof *w);
    if (w == NULL)
        return luaL_error(L, "out of memory");
    w->park = p;
    w->n = w->open = n;
    for (int i = 0; i < n; i++) {
        uv_signal_init(kl__host(L)->loop, &w->sig[i]);
        w->sig[i].data = w;
        uv_signal_start(&w->sig[i], on_signal, nums[i]);
    }
    kl__park_set_cancel(p, sigwait_cancel, w);
    return kl__park_yield(L, p);
}

/* --- signal watchers: signals caught for as long as the watcher is open --- */

#define SIGWATCH_MT "kubelua.signal_watch"
#define SIGWATCH_QUEUE 16

typedef struct {
    uv_signal_t sig[4];
    int n, open;
    int queue[SIGWATCH_QUEUE]; /* arrived, not yet taken (oldest first) */
    int queued;
    kl_park *park; /* the task waiting in next(), if any */
} sig_watch;

typedef struct {
    sig_watch *w; /* NULL once closed */
} sig_watch_ud;

static const char *sig_name(int signum)
{
    return signum == SIGTERM  ? "TERM"
           : signum == SIGINT ? "INT"
           : signum == SIGHUP ? "HUP"
                              : "QUIT";
}

static int sig_number(lua_State *L, int idx)
{
    const char *name = luaL_checkstring(L, idx);
    int num = strcmp(name, "TERM") == 0   ? SIGTERM
              : strcmp(name, "INT") == 0  ? SIGINT
              : strcmp(name, "HUP") == 0  ? SIGHUP
              : strcmp(name, "QUIT") == 0 ? SIGQUIT
                                          : 0;
    if (num == 0)
        return luaL_error(L, "signal_watch: unknown signal \"%s\"", name);
    return num;
}

static void sigwatch_closed(uv_handle_t *h)
{
    sig_watch *w = h->data;
    if (--w->open == 0)
        free(w);
}

/* The handles keep the loop running only while a task waits in next(). */
static void sigwatch_ref(sig_watch *w, int on)
{
    for (int i = 0; i < w->n; i++) {
        if (on)
            uv_ref((uv_handle_t *)&w->sig[i]);
        else
            uv_unref((uv_handle_t *)&w->sig[i]);
    }
}

static void on_watched_signal(uv_signal_t *s, int signum)
{
    sig_watch *w = s->data;
    if (w->park != NULL) {
        kl_park *p = w->park;
        w->park = NULL;
        sigwatch_ref(w, 0);
        lua_pushstring(kl__park_thread(p), sig_name(signum));
        kl__park_resume(p, 1);
    } else if (w->queued < SIGWATCH_QUEUE) {
        w->queue[w->queued++] = signum;
    }
}

static void sigwatch_cancel(void *ud)
{
    sig_watch *w = ud;
    w->park = NULL;
    sigwatch_ref(w, 0);
}

/* signal_watch("TERM", "HUP", ...) -> watcher: from now until watcher:close()
 * (or its collection) those signals no longer end the process; each one
 * that arrives is queued (up to 16) for watcher:next(). */
static int l_signal_watch(lua_State *L)
{
    int n = lua_gettop(L);
    if (n < 1 || n > 4)
        return luaL_error(L, "signal_watch: give 1 to 4 of TERM, INT, HUP, QUIT");
    int nums[4];
    for (int i = 0; i < n; i++)
        nums[i] = sig_number(L, i + 1);
    sig_watch_ud *ud = lua_newuserdata(L, sizeof *ud);
    ud->w = NULL;
    luaL_setmetatable(L, SIGWATCH_MT);
    sig_watch *w = calloc(1, sizeof *w);
    if (w == NULL)
        return luaL_error(L, "out of memory");
    w->n = w->open = n;
    for (int i = 0; i < n; i++) {
        uv_signal_init(kl__host(L)->loop, &w->sig[i]);
        w->sig[i].data = w;
        uv_signal_start(&w->sig[i], on_watched_signal, nums[i]);
        uv_unref((uv_handle_t *)&w->sig[i]);
    }
    ud->w = w;
    return 1;
}

/* watcher:next() -> the name of the oldest signal not yet taken, parking
 * the task until one arrives; nil once the watcher is closed. */
static int sigwatch_next(lua_State *L)
{
    sig_watch_ud *ud = luaL_checkudata(L, 1, SIGWATCH_MT);
    sig_watch *w = ud->w;
    if (w == NULL)
        return 0;
    if (w->park != NULL)
        return luaL_error(L, "signal_watch: another task is already waiting");
    if (w->queued > 0) {
        int signum = w->queue[0];
        memmove(w->queue, w->queue + 1, (size_t)(--w->queued) * sizeof w->queue[0]);
        lua_pushstring(L, sig_name(signum));
        return 1;
    }
    kl_park *p = kl__park_new(L);
    w->park = p;
    sigwatch_ref(w, 1);
    kl__park_set_cancel(p, sigwatch_cancel, w);
    /* Keep the watcher alive while a task waits on it. */
    lua_pushlightuserdata(L, w);
    lua_pushvalue(L, 1);
    lua_rawset(L, LUA_REGISTRYINDEX);
    return kl__park_yield(L, p);
}

/* watcher:close(): stop catching; a task waiting in next() gets nil. */
static int sigwatch_close(lua_State *L)
{
    sig_watch_ud *ud = luaL_checkudata(L, 1, SIGWATCH_MT);
    sig_watch *w = ud->w;
    if (w == NULL)
        return 0;
    ud->w = NULL;
    lua_pushlightuserdata(L, w);
    lua_pushnil(L);
    lua_rawset(L, LUA_REGISTRYINDEX);
    if (w->park != NULL) {
        kl_park *p = w->park;
        w->park = NULL;
        kl__park_resume(p, 0);
    }
    for (int i = 0; i < w->n; i++) {
        uv_signal_stop(&w->sig[i]);
        uv_close((uv_handle_t *)&w->sig[i], sigwatch_closed);
    }
    return 0;
}

/* log(level, msg): one line on stderr ('I', 'W' or 'E'), in the host's log
 * format: klog text, or JSON with the calling Lua file:line as caller. */
static int l_log(lua_State *L)
{
    kl_host *h = kl__host(L);
    const char *lvl = luaL_checkstring(L, 1);
    size_t len;
    const char *msg = luaL_checklstring(L, 2, &len);
    char c = (lvl[0] == 'W' || lvl[0] == 'E') ? lvl[0] : 'I';
    char caller[256];
    lua_Debug ar;
    const char *where = NULL;
    if (h->log_json && lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
        const char *src = ar.short_src;
        const char *slash = strrchr(src, '/');
        snprintf(caller, sizeof caller, "%s:%d", slash ? slash + 1 : src, ar.currentline);
        where = caller;
    }
    kl__logh_msg(h, c, where, msg, len);
    return 0;
}

/* set_log_format("text" | "json"): the format of every later log line of
 * this host (core.log and the host's own messages). Returns the old one. */
static int l_set_log_format(lua_State *L)
{
    static const char *const names[] = {"text", "json", NULL};
    kl_host *h = kl__host(L);
    int old = h->log_json;
    h->log_json = luaL_checkoption(L, 1, NULL, names);
    lua_pushstring(L, names[old]);
    return 1;
}

/* set_exit_code(n): what kl_host_exit_code reports (the CLI's exit status). */
static int l_set_exit_code(lua_State *L)
{
    kl__host(L)->exit_code = (int)luaL_checkinteger(L, 1);
    return 0;
}

/* parked_count(): tasks parked on an operation right now. */
static int l_parked_count(lua_State *L)
{
    lua_pushinteger(L, kl__parked_count(kl__host(L)));
    return 1;
}

int luaopen_kubelua_core(lua_State *L)
{
    static const luaL_Reg waker_methods[] = {{"wait", waker_wait}, {"wake", waker_wake}, {0, 0}};
    luaL_newmetatable(L, WAKER_MT);
    lua_newtable(L);
    luaL_setfuncs(L, waker_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    static const luaL_Reg sigwatch_methods[] = {
        {"next", sigwatch_next}, {"close", sigwatch_close}, {0, 0}};
    kl__new_type(L, SIGWATCH_MT, sigwatch_methods, sigwatch_close);

    static const luaL_Reg fns[] = {{"spawn", l_spawn},
                                   {"sleep", l_sleep},
                                   {"now", l_now},
                                   {"monotime", l_monotime},
                                   {"cputime", l_cputime},
                                   {"waker", l_waker},
                                   {"log", l_log},
                                   {"set_log_format", l_set_log_format},
                                   {"set_exit_code", l_set_exit_code},
                                   {"parked_count", l_parked_count},
                                   {"wait_signal", l_wait_signal},
                                   {"signal_watch", l_signal_watch},
                                   {0, 0}};
    luaL_newlib(L, fns);
    lua_pushstring(L, KUBELUA_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
