/* kubelua.probe.core: the C part of the probe engine - a TCP dial with a
 * deadline on the host's loop (the TCP probe, kubelet-behaviour.md 3.7).
 *
 *   local core = require "kubelua.probe.core"
 *   local ok, err, code = core.tcp_connect("127.0.0.1", 8080, 1.0)   -- parks the task
 *   -- true | nil, "TIMEOUT: dial tcp 127.0.0.1:8080: i/o timeout", "TIMEOUT"
 *
 * The connection is closed as soon as it opens and nothing is sent. Like
 * kubelet's dialer, the socket gets SO_LINGER on with 1 s before it is closed.
 * Messages use Go's wording, as kubelet reports them:
 *   "dial tcp HOST:PORT: connect: connection refused"   code CONNECT
 *   "dial tcp HOST:PORT: i/o timeout"                   code TIMEOUT
 *   "dial tcp: lookup HOST: <reason>"                   code DNS
 * HOST may be a numeric IPv4/IPv6 address or a name (resolved with
 * getaddrinfo on libuv's thread pool; the first address is dialled). The
 * deadline covers resolution and connect together.
 *
 * event() gives an object a task can wait on with a timeout (ev:wait(secs)
 * -> true when woken by ev:wake(), false when the time is up): the probe
 * workers' "next period, manual trigger or stop" primitive.
 *
 * Every uv handle lives in one malloc'd record freed when the last of them is
 * closed (and any pending resolution has called back), never in Lua memory.
 */
#include "host/host.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef struct {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect;
    uv_getaddrinfo_t gai;
    kl_park *park;
    int open;        /* uv handles not yet closed */
    int tcp_init;    /* tcp was initialised (so must be closed) */
    int gai_pending; /* getaddrinfo has not called back yet */
    int done;        /* the task was resumed or dropped: no more results */
    int torn;        /* teardown ran */
    int port;
    char host[256];
    char label[300]; /* JoinHostPort(host, port) */
} dial;

static void dial_maybe_free(dial *d)
{
    if (d->open == 0 && !d->gai_pending)
        free(d);
}

static void on_closed(uv_handle_t *h)
{
    dial *d = h->data;
    d->open--;
    dial_maybe_free(d);
}

/* Close every handle; the record goes when the last close callback ran. */
static void dial_teardown(dial *d)
{
    if (d->torn)
        return;
    d->torn = 1;
    uv_timer_stop(&d->timer);
    uv_close((uv_handle_t *)&d->timer, on_closed);
    if (d->tcp_init)
        uv_close((uv_handle_t *)&d->tcp, on_closed); /* a pending connect ends with ECANCELED */
    if (d->gai_pending)
        uv_cancel((uv_req_t *)&d->gai); /* may fail if it runs already: its callback frees */
}

/* Resume the task with (true) or (nil, "CODE: msg", "CODE"), then tear down. */
static void dial_finish(dial *d, const char *code, const char *fmt, const char *detail)
{
    if (d->done)
        return;
    d->done = 1;
    lua_State *co = kl__park_thread(d->park);
    int n;
    if (code == NULL) {
        lua_pushboolean(co, 1);
        n = 1;
    } else {
        n = kl__push_error(co, code, fmt, d->label, detail);
    }
    kl__park_set_cancel(d->park, NULL, NULL);
    kl__park_resume(d->park, n);
    dial_teardown(d);
}

static const char *code_of(int status)
{
    switch (status) {
    case UV_ETIMEDOUT:
        return "TIMEOUT";
    case UV_ECONNREFUSED:
    case UV_ENETUNREACH:
    case UV_EHOSTUNREACH:
    case UV_EADDRNOTAVAIL:
    case UV_ECONNRESET:
        return "CONNECT";
    default:
        return "ERROR";
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    dial *d = req->data;
    if (d->done)
        return; /* closed by teardown (ECANCELED) or after the deadline */
    if (status != 0) {
        dial_finish(d, code_of(status), "dial tcp %s: connect: %s", uv_strerror(status));
        return;
    }
    /* kubelet's probe dialer: linger on, 1 s. */
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&d->tcp, &fd) == 0) {
        struct linger lg = {.l_onoff = 1, .l_linger = 1};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    dial_finish(d, NULL, NULL, NULL);
}

static void dial_start(dial *d, const struct sockaddr *sa)
{
    int rc = uv_tcp_init(d->timer.loop, &d->tcp);
    if (rc == 0) {
        d->tcp_init = 1;
        d->open++;
        d->tcp.data = d;
        d->connect.data = d;
        uv_tcp_nodelay(&d->tcp, 1);
        rc = uv_tcp_connect(&d->connect, &d->tcp, sa, on_connect);
    }
    if (rc != 0)
        dial_finish(d, code_of(rc), "dial tcp %s: connect: %s", uv_strerror(rc));
}

/* Go's wording: "dial tcp: lookup HOST: reason". */
static void dial_fail_lookup(dial *d, const char *reason)
{
    char msg[400];
    snprintf(msg, sizeof msg, "lookup %s: %s", d->host, reason);
    d->label[0] = '\0';
    dial_finish(d, "DNS", "dial tcp%s: %s", msg);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    dial *d = req->data;
    d->gai_pending = 0;
    if (d->done) {
        if (res != NULL)
            uv_freeaddrinfo(res);
        dial_maybe_free(d);
        return;
    }
    if (status != 0 || res == NULL) {
        dial_fail_lookup(d, status != 0 ? uv_strerror(status) : "no such host");
    } else {
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof ss);
        memcpy(&ss, res->ai_addr, res->ai_addrlen);
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)d->port); /* same offset in v6 */
        char ip[64];
        if (uv_ip_name((const struct sockaddr *)&ss, ip, sizeof ip) == 0) /* as Go reports it */
            snprintf(d->label, sizeof d->label, ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip,
                     d->port);
        dial_start(d, (const struct sockaddr *)&ss);
    }
    if (res != NULL)
        uv_freeaddrinfo(res);
}

static void on_deadline(uv_timer_t *t)
{
    dial_finish(t->data, "TIMEOUT", "dial tcp %s: %s", "i/o timeout");
}

/* The host dropped the task (shutdown, task killed): release, never resume. */
static void dial_cancel(void *ud)
{
    dial *d = ud;
    d->done = 1;
    dial_teardown(d);
}

/* tcp_connect(host, port, timeout_seconds) -> true | nil, err, code (parks) */
static int l_tcp_connect(lua_State *L)
{
    size_t hlen;
    const char *host = luaL_checklstring(L, 1, &hlen);
    lua_Integer port = luaL_checkinteger(L, 2);
    double timeout = luaL_checknumber(L, 3);
    if (hlen == 0 || hlen >= sizeof(((dial *)0)->host))
        return luaL_argerror(L, 1, "host must be 1 to 255 bytes");
    if (port < 1 || port > 65535)
        return luaL_argerror(L, 2, "port must be in 1..65535");
    if (!(timeout > 0) || isinf(timeout))
        return luaL_argerror(L, 3, "timeout must be a positive number of seconds");

    kl_host *h = kl__host(L);
    kl_park *p = kl__park_new(L); /* throws outside a task; nothing allocated yet */
    dial *d = calloc(1, sizeof *d);
    if (d == NULL)
        return luaL_error(L, "kubelua.probe: out of memory");
    d->park = p;
    d->port = (int)port;
    memcpy(d->host, host, hlen + 1);
    int v6 = strchr(host, ':') != NULL;
    snprintf(d->label, sizeof d->label, v6 ? "[%s]:%d" : "%s:%d", host, (int)port);
    uv_timer_init(h->loop, &d->timer);
    d->timer.data = d;
    d->open = 1;
    kl__park_set_cancel(p, dial_cancel, d);
    double ms = ceil(timeout * 1000.0);
    uv_update_time(h->loop); /* a deadline counts from now, not the loop's cached clock */
    uv_timer_start(&d->timer, on_deadline, ms > 1e12 ? (uint64_t)1e12 : (uint64_t)ms, 0);

    /* Failures found here are queued like loop results: the task is only
     * resumed after it has yielded. */
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss) == 0) {
        dial_start(d, (const struct sockaddr *)&ss);
    } else {
        struct addrinfo hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        d->gai.data = d;
        int rc = uv_getaddrinfo(h->loop, &d->gai, on_resolved, d->host, NULL, &hints);
        if (rc == 0)
            d->gai_pending = 1;
        else
            dial_fail_lookup(d, uv_strerror(rc));
    }
    return kl__park_yield(L, p);
}

/* --- events: wait for a wake-up or a timeout ---------------------------- */

/* A probe worker waits for its next period, a manual trigger or a stop:
 * ev:wait(seconds) parks until ev:wake() or the time is up, so a stopped
 * worker leaves at once instead of sleeping out its period. */

#define EVENT_MT "kubelua.probe.event"

typedef struct {
    uv_timer_t timer;
    kl_park *waiting; /* the parked task, if any */
    int pending;      /* wake() came before wait() */
} event_state;

typedef struct {
    event_state *s; /* NULL once collected */
} event_ud;

static void event_free(uv_handle_t *h)
{
    free(h->data);
}

static void event_resume(event_state *s, int woken)
{
    kl_park *p = s->waiting;
    s->waiting = NULL;
    uv_timer_stop(&s->timer);
    kl__park_set_cancel(p, NULL, NULL);
    lua_pushboolean(kl__park_thread(p), woken);
    kl__park_resume(p, 1);
}

static void on_event_timeout(uv_timer_t *t)
{
    event_state *s = t->data;
    if (s->waiting != NULL)
        event_resume(s, 0);
}

static void event_cancel(void *ud)
{
    event_state *s = ud;
    s->waiting = NULL;
    uv_timer_stop(&s->timer);
}

static event_state *check_event(lua_State *L)
{
    event_ud *u = luaL_checkudata(L, 1, EVENT_MT);
    if (u->s == NULL)
        luaL_error(L, "kubelua.probe: event is closed");
    return u->s;
}

/* event() -> ev */
static int l_event(lua_State *L)
{
    event_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return luaL_error(L, "kubelua.probe: out of memory");
    event_ud *u = lua_newuserdata(L, sizeof *u);
    u->s = s;
    uv_timer_init(kl__host(L)->loop, &s->timer);
    s->timer.data = s;
    luaL_setmetatable(L, EVENT_MT);
    return 1;
}

/* ev:wait([seconds]) -> true (woken) | false (time up); no seconds: no limit */
static int event_wait(lua_State *L)
{
    event_state *s = check_event(L);
    double secs = luaL_optnumber(L, 2, -1);
    if (s->waiting != NULL)
        return luaL_error(L, "kubelua.probe: another task is already waiting on this event");
    if (s->pending) {
        s->pending = 0;
        lua_pushboolean(L, 1);
        return 1;
    }
    kl_park *p = kl__park_new(L);
    s->waiting = p;
    kl__park_set_cancel(p, event_cancel, s);
    if (secs >= 0) {
        double ms = ceil(secs * 1000.0);
        uv_update_time(s->timer.loop);
        uv_timer_start(&s->timer, on_event_timeout, ms > 1e12 ? (uint64_t)1e12 : (uint64_t)ms, 0);
    }
    return kl__park_yield(L, p);
}

/* ev:wake(): resume the waiting task (next loop turn), or make the next
 * wait return at once. */
static int event_wake(lua_State *L)
{
    event_state *s = check_event(L);
    if (s->waiting != NULL)
        event_resume(s, 1);
    else
        s->pending = 1;
    return 0;
}

static int event_gc(lua_State *L)
{
    event_ud *u = luaL_checkudata(L, 1, EVENT_MT);
    event_state *s = u->s;
    if (s == NULL)
        return 0;
    u->s = NULL;
    if (s->waiting != NULL) /* cannot happen: the waiting task holds the event */
        kl__park_set_cancel(s->waiting, NULL, NULL);
    uv_close((uv_handle_t *)&s->timer, event_free);
    return 0;
}

int luaopen_kubelua_probe_core(lua_State *L)
{
    static const luaL_Reg methods[] = {{"wait", event_wait}, {"wake", event_wake}, {0, 0}};
    kl__new_type(L, EVENT_MT, methods, event_gc);
    static const luaL_Reg fns[] = {{"tcp_connect", l_tcp_connect}, {"event", l_event}, {0, 0}};
    luaL_newlib(L, fns);
    return 1;
}
