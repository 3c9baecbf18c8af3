/* kubelua.core: tasks, time and wakers - the scheduler as Lua sees it. */
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

/* log(level, msg): a klog-style line on stderr ('I', 'W' or 'E'). */
static int l_log(lua_State *L)
{
    const char *lvl = luaL_checkstring(L, 1);
    const char *msg = luaL_checkstring(L, 2);
    char c = (lvl[0] == 'W' || lvl[0] == 'E') ? lvl[0] : 'I';
    kl__log(c, "%s", msg);
    return 0;
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

    static const luaL_Reg fns[] = {{"spawn", l_spawn},
                                   {"sleep", l_sleep},
                                   {"now", l_now},
                                   {"monotime", l_monotime},
                                   {"cputime", l_cputime},
                                   {"waker", l_waker},
                                   {"log", l_log},
                                   {"set_exit_code", l_set_exit_code},
                                   {"parked_count", l_parked_count},
                                   {"wait_signal", l_wait_signal},
                                   {0, 0}};
    luaL_newlib(L, fns);
    lua_pushstring(L, KUBELUA_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
