/* The host: one LuaJIT state, one libuv loop, and the scheduler that parks
 * tasks on I/O and resumes them from the loop. */
#include "host.h"

#include <dlfcn.h>
#include <luajit.h>
#include <lualib.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef KL_SOURCE_LUA_DIR
#define KL_SOURCE_LUA_DIR "lua"
#endif

static const char HOST_KEY[] = "kubelua.host";
static const char TASKS_KEY[] = "kubelua.tasks"; /* weak set of the host's task threads */

struct kl_park {
    kl_host *h;
    lua_State *co;
    int co_ref;
    int nres;
    int queued;
    kl_park_cancel_fn cancel;
    void *cancel_ud;
    kl_park *prev, *next; /* h->parked */
    kl_park *rnext;       /* h->ready */
};

/* ---------------------------------------------------------------- logging */

/* Append s (n bytes) to out as JSON string content: quotes, backslashes and
 * control characters escaped, invalid UTF-8 replaced by U+FFFD. Returns the
 * new length (at most cap - 1: the rest is cut). */
static size_t json_escape(char *out, size_t len, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end && len + 8 < cap) {
        unsigned c = *p;
        if (c == '"' || c == '\\') {
            out[len++] = '\\';
            out[len++] = (char)c;
            p++;
        } else if (c == '\n' || c == '\t' || c == '\r') {
            out[len++] = '\\';
            out[len++] = c == '\n' ? 'n' : c == '\t' ? 't' : 'r';
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            len += (size_t)snprintf(out + len, cap - len, "\\u00%c%c", hex[c >> 4], hex[c & 15]);
            p++;
        } else if (c < 0x80) {
            out[len++] = (char)c;
            p++;
        } else {
            /* one whole, shortest-form UTF-8 sequence, else U+FFFD for this byte */
            size_t k = c >= 0xc2 && c <= 0xdf   ? 2
                       : c >= 0xe0 && c <= 0xef ? 3
                       : c >= 0xf0 && c <= 0xf4 ? 4
                                                : 0;
            int ok = k > 0 && (size_t)(end - p) >= k;
            for (size_t i = 1; ok && i < k; i++)
                ok = (p[i] & 0xc0) == 0x80;
            if (ok && k == 3)
                ok = !(c == 0xe0 && p[1] < 0xa0) && !(c == 0xed && p[1] >= 0xa0);
            if (ok && k == 4)
                ok = !(c == 0xf0 && p[1] < 0x90) && !(c == 0xf4 && p[1] >= 0x90);
            if (ok) {
                memcpy(out + len, p, k);
                len += k;
                p += k;
            } else {
                memcpy(out + len, "\xef\xbf\xbd", 3);
                len += 3;
                p++;
            }
        }
    }
    return len;
}

#define LOG_MSG_MAX 4096

/* One line of at most LOG_MSG_MAX bytes of msg, in the chosen format, with
 * a single write. */
static void log_line(int json, char level, const char *caller, const char *msg, size_t mlen)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    if (mlen > LOG_MSG_MAX)
        mlen = LOG_MSG_MAX;
    char line[4 * LOG_MSG_MAX];
    size_t len;
    if (!json) {
        int n = snprintf(line, sizeof line, "%c%02d%02d %02d:%02d:%02d.%06ld %7d kubelua] ", level,
                         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                         ts.tv_nsec / 1000, (int)getpid());
        len = n < 0 ? 0 : (size_t)n; /* short: the prefix always fits */
        memcpy(line + len, msg, mlen);
        len += mlen;
        line[len++] = '\n';
    } else {
        const char *lv = level == 'E' ? "error" : level == 'W' ? "warning" : "info";
        int n = snprintf(line, sizeof line,
                         "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ\",\"level\":\"%s\","
                         "\"pid\":%d,",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec, ts.tv_nsec / 1000, lv, (int)getpid());
        len = n < 0 ? 0 : (size_t)n;
        if (caller != NULL) {
            memcpy(line + len, "\"caller\":\"", 10);
            len = json_escape(line, len + 10, 512, caller, strlen(caller));
            memcpy(line + len, "\",", 2);
            len += 2;
        }
        memcpy(line + len, "\"msg\":\"", 7);
        len = json_escape(line, len + 7, sizeof line - 3, msg, mlen);
        memcpy(line + len, "\"}\n", 3);
        len += 3;
    }
    fwrite(line, 1, len, stderr);
}

static void vlog(int json, char level, const char *caller, const char *fmt, va_list ap)
{
    char msg[LOG_MSG_MAX + 1];
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    log_line(json, level, caller, msg,
             m < 0                     ? 0
             : (size_t)m >= sizeof msg ? sizeof msg - 1
                                       : (size_t)m);
}

void kl__logh_msg(kl_host *h, char level, const char *caller, const char *msg, size_t len)
{
    log_line(h != NULL && h->log_json, level, caller, msg, len);
}

void kl__log(char level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(0, level, NULL, fmt, ap);
    va_end(ap);
}

void kl__logh(kl_host *h, char level, const char *caller, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(h != NULL && h->log_json, level, caller, fmt, ap);
    va_end(ap);
}

int kl__push_error(lua_State *L, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", code, msg);
    lua_pushstring(L, code);
    return 3;
}

void kl__new_type(lua_State *L, const char *tname, const luaL_Reg *methods, lua_CFunction gc)
{
    luaL_newmetatable(L, tname);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
}

/* ------------------------------------------------------------------ host */

kl_host *kl__host(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, HOST_KEY);
    kl_host *h = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return h;
}

static void report_task_error(kl_host *h, lua_State *co, int status)
{
    const char *msg = lua_tostring(co, -1);
    if (msg == NULL)
        msg = status == LUA_ERRMEM ? "out of memory" : "(error object is not a string)";
    /* The failed coroutine keeps its stack, so the traceback shows where. */
    luaL_traceback(h->L, co, msg, 0);
    kl__logh(h, 'E', NULL, "task failed: %s", lua_tostring(h->L, -1));
    lua_pop(h->L, 1);
    h->task_errors++;
}

static void resume_one(kl_host *h, kl_park *p)
{
    lua_State *co = p->co;
    h->parking = 0;
    int status = lua_resume(co, p->nres);
    if (status == LUA_YIELD && !h->parking) {
        lua_pushstring(co, "coroutine.yield() outside a kubelua binding: the task was suspended "
                           "with nothing to resume it (use coroutine.wrap inside the task)");
        report_task_error(h, co, LUA_ERRRUN);
    } else if (status != 0 && status != LUA_YIELD) {
        report_task_error(h, co, status);
    } else if (status == 0) {
        lua_settop(co, 0);
    }
    /* Only now drop the reference: the coroutine was reachable while it ran. */
    luaL_unref(h->L, LUA_REGISTRYINDEX, p->co_ref);
    free(p);
}

static void on_idle(uv_idle_t *idle)
{
    kl_host *h = idle->data;
    /* Resume only what was queued before this turn; what those resumes queue
     * runs next turn, after pending writes are flushed. */
    kl_park *batch = h->ready;
    h->ready = h->ready_end = NULL;
    while (batch != NULL) {
        kl_park *p = batch;
        batch = p->rnext;
        resume_one(h, p);
    }
    if (h->ready == NULL)
        uv_idle_stop(&h->idle);
}

/* Is <dir>/<rel>/kubelua a folder? Then <dir>/<rel> is the module folder.
 * `file` is a path whose last component is dropped to get <dir>. */
static int lua_dir_beside(kl_host *h, const char *file, const char *rel)
{
    struct stat st;
    char dir[900], cand[1024];
    snprintf(dir, sizeof dir, "%s", file);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        return 0;
    *slash = '\0';
    snprintf(cand, sizeof cand, "%s/%s/kubelua", dir, rel);
    if (stat(cand, &st) != 0 || !S_ISDIR(st.st_mode))
        return 0;
    snprintf(h->lua_dir, sizeof h->lua_dir, "%s/%s", dir, rel);
    return 1;
}

static void find_lua_dir(kl_host *h, const char *given)
{
    const char *env = getenv("KUBELUA_LUA_PATH");
    if (given != NULL) {
        snprintf(h->lua_dir, sizeof h->lua_dir, "%s", given);
        return;
    }
    if (env != NULL && *env) {
        snprintf(h->lua_dir, sizeof h->lua_dir, "%s", env);
        return;
    }
    /* An installed libkubelua.so finds the modules installed with it, so a
     * program built against any prefix works without KUBELUA_LUA_PATH.
     * Linked statically, dladdr names the executable instead, and the
     * exe-relative rule below applies. */
    Dl_info info;
    if (dladdr((void *)find_lua_dir, &info) != 0 && info.dli_fname != NULL &&
        strchr(info.dli_fname, '/') != NULL && lua_dir_beside(h, info.dli_fname, KL_LIB_TO_LUA))
        return;
    char exe[900];
    size_t len = sizeof exe;
    if (uv_exepath(exe, &len) == 0 && lua_dir_beside(h, exe, KL_BIN_TO_LUA))
        return;
    snprintf(h->lua_dir, sizeof h->lua_dir, "%s", KL_SOURCE_LUA_DIR);
}

static void set_package_path(kl_host *h)
{
    lua_State *L = h->L;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", h->lua_dir, h->lua_dir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
}

static int ext_open(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "kubelua.ext");
    return 1;
}

kl_host *kl_host_new(const kl_host_options *opts)
{
    kl_host *h = calloc(1, sizeof *h);
    if (h == NULL)
        return NULL;
    if (opts != NULL && opts->loop != NULL) {
        h->loop = opts->loop;
    } else {
        if (uv_loop_init(&h->own_loop) != 0) {
            free(h);
            return NULL;
        }
        h->loop = &h->own_loop;
        h->owns_loop = 1;
    }
    /* A peer that goes away (the runtime restarting) must be an EPIPE on
     * write, not the end of the process. Left alone if the embedder chose. */
    struct sigaction old;
    if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
    h->L = luaL_newstate();
    if (h->L == NULL) {
        if (h->owns_loop)
            uv_loop_close(&h->own_loop);
        free(h);
        return NULL;
    }
    luaL_openlibs(h->L);
    /* KUBELUA_JIT=off runs every script in the interpreter. Debian 12's
     * LuaJIT (2.1.0-beta3, 2022 snapshot) lacks upstream's later x64 GC64
     * code-generation fixes; we have seen rare miscompiled traces under
     * heavy churn (see README, "LuaJIT"). */
    const char *jit = getenv("KUBELUA_JIT");
    if (jit != NULL && strcmp(jit, "off") == 0)
        luaJIT_setmode(h->L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    lua_pushlightuserdata(h->L, h);
    lua_setfield(h->L, LUA_REGISTRYINDEX, HOST_KEY);
    lua_newtable(h->L);
    lua_setfield(h->L, LUA_REGISTRYINDEX, "kubelua.ext");
    lua_newtable(h->L);
    lua_createtable(h->L, 0, 1);
    lua_pushliteral(h->L, "k");
    lua_setfield(h->L, -2, "__mode");
    lua_setmetatable(h->L, -2);
    lua_setfield(h->L, LUA_REGISTRYINDEX, TASKS_KEY);

    uv_idle_init(h->loop, &h->idle);
    h->idle.data = h;

    find_lua_dir(h, opts != NULL ? opts->lua_dir : NULL);
    set_package_path(h);
    for (const kl__module *m = kl__modules; m->name != NULL; m++)
        kl_host_preload(h, m->name, m->open);
    kl_host_preload(h, "kubelua.ext", ext_open);
    return h;
}

static void close_walk(uv_handle_t *handle, void *arg)
{
    (void)arg;
    if (!uv_is_closing(handle))
        uv_close(handle, NULL);
}

void kl_host_free(kl_host *h)
{
    if (h == NULL)
        return;
    /* Cancel parked operations first: their handles close, nothing resumes. */
    while (h->parked != NULL) {
        kl_park *p = h->parked;
        h->parked = p->next;
        if (p->cancel != NULL)
            p->cancel(p->cancel_ud);
        luaL_unref(h->L, LUA_REGISTRYINDEX, p->co_ref);
        free(p);
    }
    while (h->ready != NULL) {
        kl_park *p = h->ready;
        h->ready = p->rnext;
        luaL_unref(h->L, LUA_REGISTRYINDEX, p->co_ref);
        free(p);
    }
    /* Userdata finalizers close channels, timers and curl handles. */
    lua_close(h->L);
    h->L = NULL;
    uv_close((uv_handle_t *)&h->idle, NULL);
    if (h->owns_loop) {
        uv_walk(h->loop, close_walk, NULL);
        uv_run(h->loop, UV_RUN_DEFAULT);
        uv_loop_close(h->loop);
    } else {
        uv_run(h->loop, UV_RUN_NOWAIT);
    }
    free(h);
}

lua_State *kl_host_lua(kl_host *h)
{
    return h->L;
}

uv_loop_t *kl_host_loop(kl_host *h)
{
    return h->loop;
}

const char *kl_host_last_error(kl_host *h)
{
    return h->last_error;
}

void kl_host_register(kl_host *h, const char *name, lua_CFunction fn)
{
    lua_getfield(h->L, LUA_REGISTRYINDEX, "kubelua.ext");
    lua_pushcfunction(h->L, fn);
    lua_setfield(h->L, -2, name);
    lua_pop(h->L, 1);
}

void kl_host_preload(kl_host *h, const char *modname, lua_CFunction open)
{
    lua_getglobal(h->L, "package");
    lua_getfield(h->L, -1, "preload");
    lua_pushcfunction(h->L, open);
    lua_setfield(h->L, -2, modname);
    lua_pop(h->L, 2);
}

void kl_host_spawn(kl_host *h, int nargs)
{
    kl__spawn(h, h->L, nargs);
}

static int spawn_chunk(kl_host *h, int status, int argc, char **argv)
{
    lua_State *L = h->L;
    if (status != 0) {
        snprintf(h->last_error, sizeof h->last_error, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    lua_createtable(L, argc, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_setglobal(L, "arg");
    for (int i = 1; i < argc; i++)
        lua_pushstring(L, argv[i]);
    kl__spawn(h, L, argc > 1 ? argc - 1 : 0);
    return 0;
}

int kl_host_spawn_file(kl_host *h, const char *path, int argc, char **argv)
{
    return spawn_chunk(h, luaL_loadfile(h->L, path), argc, argv);
}

int kl_host_spawn_string(kl_host *h, const char *code, const char *chunkname)
{
    char *argv[1] = {(char *)chunkname};
    return spawn_chunk(h, luaL_loadbuffer(h->L, code, strlen(code), chunkname), 1, argv);
}

int kl_host_run(kl_host *h)
{
    h->stopping = 0;
    while (!h->stopping && uv_run(h->loop, UV_RUN_ONCE) != 0)
        ;
    return h->task_errors;
}

int kl__parked_count(kl_host *h)
{
    int n = 0;
    for (kl_park *p = h->parked; p != NULL; p = p->next)
        n++;
    return n;
}

int kl_host_exit_code(kl_host *h)
{
    return h->exit_code;
}

void kl_host_stop(kl_host *h)
{
    h->stopping = 1;
    uv_stop(h->loop);
}

/* ------------------------------------------------------------- scheduler */

static kl_park *park_alloc(kl_host *h, lua_State *co)
{
    kl_park *p = calloc(1, sizeof *p);
    if (p == NULL)
        luaL_error(h->L, "out of memory");
    p->h = h;
    p->co = co;
    return p;
}

static void ready_push(kl_host *h, kl_park *p)
{
    p->queued = 1;
    p->rnext = NULL;
    if (h->ready_end != NULL)
        h->ready_end->rnext = p;
    else
        h->ready = p;
    h->ready_end = p;
    uv_idle_start(&h->idle, on_idle);
}

kl_park *kl__park_new(lua_State *L)
{
    kl_host *h = kl__host(L);
    if (!kl__in_task(L))
        luaL_error(L, "this call does I/O and must run in a task (kubelua.spawn, or a script "
                      "started by kubelua run), not in the main thread or a coroutine of "
                      "your own");
    lua_pushthread(L);
    kl_park *p = park_alloc(h, L);
    p->co_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* the thread pushed above */
    p->next = h->parked;
    if (h->parked != NULL)
        h->parked->prev = p;
    h->parked = p;
    return p;
}

void kl__park_set_cancel(kl_park *p, kl_park_cancel_fn fn, void *ud)
{
    p->cancel = fn;
    p->cancel_ud = ud;
}

int kl__park_yield(lua_State *L, kl_park *p)
{
    (void)p;
    kl__host(L)->parking = 1;
    return lua_yield(L, 0);
}

lua_State *kl__park_thread(kl_park *p)
{
    return p->co;
}

void kl__park_resume(kl_park *p, int nres)
{
    kl_host *h = p->h;
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        h->parked = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    p->nres = nres;
    ready_push(h, p);
}

int kl__in_task(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, TASKS_KEY);
    lua_pushthread(L);
    lua_rawget(L, -2);
    int yes = lua_toboolean(L, -1);
    lua_pop(L, 2);
    return yes;
}

void kl__spawn(kl_host *h, lua_State *L, int nargs)
{
    lua_State *co = lua_newthread(L);
    lua_getfield(L, LUA_REGISTRYINDEX, TASKS_KEY);
    lua_pushvalue(L, -2);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_xmove(L, co, nargs + 1);
    kl_park *p = park_alloc(h, co);
    p->co_ref = ref;
    p->nres = nargs;
    ready_push(h, p);
}
