/* kubelua.http.core: HTTP(S) requests with libcurl's multi interface on the
 * host's libuv loop. No thread, no polling: curl tells us which sockets to
 * watch (CURLMOPT_SOCKETFUNCTION -> one uv_poll per socket) and when to call
 * it back (CURLMOPT_TIMERFUNCTION -> one uv_timer); readiness is handed back
 * with curl_multi_socket_action and finished transfers are collected with
 * curl_multi_info_read, from loop callbacks only.
 *
 *   local core = require "kubelua.http.core"
 *   local resp, err, code = core.request{ url = "http://127.0.0.1:8080/", ... }
 *
 * The Lua module kubelua.http (lua/kubelua/http.lua) checks option names,
 * fills in defaults and normalises headers; this file only checks the types
 * it reads. Options left nil keep curl's behaviour (no timeout, no body
 * limit), except that proxies come only from `proxy=` (never from the
 * environment), only http and https are allowed, and signals are not used.
 *
 * With `stream = true` the request returns as soon as the final response's
 * headers are in, and the body is read piecewise with resp.stream:read(),
 * which parks while nothing is buffered (see "streams" below).
 *
 * One state per Lua state holds the multi handle, the timer and the polls.
 * It is created on first use and owned by a registry userdata whose __gc
 * tears it down; the uv handles live in malloc'd memory freed by their close
 * callbacks, since Lua frees userdata before the host closes its loop.
 *
 * libcurl is not linked: the state loads libcurl.so.4 with dlopen when it is
 * created and keeps the functions this file calls in its own table
 * (st->api). Linking it would pull about 30 shared objects (TLS, Kerberos,
 * LDAP, SSH, ...) into every start of every program using the library, even
 * one that never makes an HTTP request, for ~10 ms each time. Every state
 * holds its own reference to the library (dlopen counts them); nothing is
 * process-wide but libcurl's own global state.
 *
 * Finished easy handles are reset and kept for the next request (up to
 * EASY_POOL per state), and the uv_poll of a socket curl drops is kept for
 * the next socket with the same fd number: a probe loop makes one request
 * and one connection per target and period.
 */
#include "host/host.h"

#include <curl/curl.h>
#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define STATE_MT "kubelua.http.state"     /* registry: its metatable */
#define STREAM_MT "kubelua.http.stream"   /* registry: a streamed body's metatable */
#define STATE_KEY "kubelua.http.instance" /* registry: the state userdata */
#define MAX_HEADER_BYTES (1024 * 1024)    /* all header lines of one response */
#define EASY_POOL 256                     /* idle easy handles a state keeps */
#define CURL_SONAME "libcurl.so.4"

typedef struct http_state http_state;
typedef struct request request;

typedef struct {
    char *data;
    size_t len, cap;
} buf;

/* The libcurl functions this file calls, resolved from CURL_SONAME. */
typedef struct {
    CURLcode (*global_init)(long flags);
    void (*global_cleanup)(void);
    char *(*version)(void);
    CURL *(*easy_init)(void);
    void (*easy_cleanup)(CURL *e);
    void (*easy_reset)(CURL *e);
    CURLcode (*easy_setopt)(CURL *e, CURLoption opt, ...);
    CURLcode (*easy_getinfo)(CURL *e, CURLINFO info, ...);
    CURLcode (*easy_pause)(CURL *e, int bitmask);
    const char *(*easy_strerror)(CURLcode code);
    CURLM *(*multi_init)(void);
    CURLMcode (*multi_cleanup)(CURLM *m);
    CURLMcode (*multi_setopt)(CURLM *m, CURLMoption opt, ...);
    CURLMcode (*multi_add_handle)(CURLM *m, CURL *e);
    CURLMcode (*multi_remove_handle)(CURLM *m, CURL *e);
    CURLMcode (*multi_assign)(CURLM *m, curl_socket_t fd, void *p);
    CURLMcode (*multi_socket_action)(CURLM *m, curl_socket_t fd, int ev, int *running);
    CURLMsg *(*multi_info_read)(CURLM *m, int *left);
    const char *(*multi_strerror)(CURLMcode code);
    struct curl_slist *(*slist_append)(struct curl_slist *l, const char *s);
    void (*slist_free_all)(struct curl_slist *l);
} curl_api;

/* One socket curl asked us to watch. */
typedef struct sock {
    uv_poll_t poll;
    curl_socket_t fd;
    http_state *st;
    struct sock *prev, *next;
} sock;

struct http_state {
    curl_api api;
    void *lib;             /* the dlopen handle api came from */
    CURL *pool[EASY_POOL]; /* reset easy handles for the next requests */
    int npool;
    uv_loop_t *loop;
    lua_State *L; /* the host's main state: results are built there */
    CURLM *multi;
    uv_timer_t timer;
    sock *socks;      /* polls not yet closing */
    sock **idle;      /* stopped polls by fd number, kept for the next socket */
    int nidle;        /* size of idle */
    request *reqs;    /* requests in the multi */
    int running;      /* how many: the uv handles keep the loop alive only while > 0 */
    int open_handles; /* uv handles whose close callback has not run */
    int closing;      /* __gc ran: freed when open_handles drops to 0 */
    int failed;       /* some request has `failed` or `abandoned` set, see sweep_failed */
    int pending;      /* some stream has something for its parked task, see deliver */
};

struct request {
    http_state *st;
    CURL *easy;
    kl_park *park;
    lua_State *co;
    struct curl_slist *headers;
    char *label; /* "METHOD url" for messages, without user:password */
    buf body, head;
    size_t max_body;
    int truncate;
    int truncated, too_large, head_too_large, oom;
    int failed; /* a socket of ours could not be watched (uv error) */
    char errbuf[CURL_ERROR_SIZE];
    request *prev, *next;
    request *done_next; /* check_done's list of finished transfers */
    CURLcode done_rc;
    /* Stream mode: `body` is the queue of bytes not yet read, `park` the task
     * waiting for the headers, then for data. Once the response was handed
     * out, the stream userdata owns the request: the transfer may end (done)
     * long before the userdata goes away. */
    int stream;
    int follow;        /* redirects are followed: a 3xx with Location is not final */
    int head_ready;    /* the final response's headers are complete */
    int wants_head;    /* the parked task waits in response(), not read() */
    int done;          /* the transfer ended and left the multi; `easy` is gone */
    int paused;        /* the write callback paused the transfer (queue full) */
    int cancelled;     /* closed by the caller */
    int abandoned;     /* the userdata was collected: sweep_failed frees it */
    request **ud;      /* the userdata's slot, NULL when it is gone */
    char *error;       /* "CODE: label: detail" when the transfer failed */
    char err_code[16]; /* its CODE ("" while none) */
    /* What the response table reports, kept from the easy handle so that
     * it outlives the transfer (see take_info). */
    long status, redirects, connects;
    char *url;
    double timings[5];
};

/* ------------------------------------------------------------ small helpers */

static int buf_append(buf *b, const char *p, size_t n)
{
    if (n > SIZE_MAX - b->len)
        return -1;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n)
            cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
        char *d = realloc(b->data, cap);
        if (d == NULL)
            return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static void buf_free(buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* "METHOD url" with any user:password@ of the URL replaced by "***@". */
static char *make_label(const char *method, const char *url)
{
    size_t n = strlen(method) + strlen(url) + 8;
    char *s = malloc(n);
    if (s == NULL)
        return NULL;
    const char *auth = strstr(url, "://");
    const char *at = NULL;
    if (auth != NULL) {
        auth += 3;
        size_t hostlen = strcspn(auth, "/?#");
        const char *a = memchr(auth, '@', hostlen);
        /* the last '@' before the path ends the user info */
        while (a != NULL) {
            at = a;
            a = memchr(a + 1, '@', hostlen - (size_t)(a + 1 - auth));
        }
    }
    if (at != NULL)
        snprintf(s, n, "%s %.*s***%s", method, (int)(auth - url), url, at);
    else
        snprintf(s, n, "%s %s", method, url);
    return s;
}

/* The stable short names Lua code branches on (documented in http.lua). */
static const char *code_name(CURLcode rc)
{
    switch (rc) {
    case CURLE_OK:
        return "OK";
    case CURLE_OPERATION_TIMEDOUT:
        return "TIMEOUT";
    case CURLE_COULDNT_CONNECT:
        return "CONNECT";
    case CURLE_COULDNT_RESOLVE_HOST:
        return "DNS";
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_PROXY:
        return "PROXY";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
        return "TLS";
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
    case CURLE_QUIC_CONNECT_ERROR:
        return "HTTP2";
    case CURLE_FILESIZE_EXCEEDED:
        return "TOO_LARGE";
    case CURLE_TOO_MANY_REDIRECTS:
        return "REDIRECTS";
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return "URL";
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        return "CLOSED";
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
        return "IO";
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_BAD_CONTENT_ENCODING:
        return "PROTOCOL";
    default:
        return "ERROR";
    }
}

/* ------------------------------------------------------ uv handle lifetime */

static void handle_closed(http_state *st)
{
    if (--st->open_handles == 0 && st->closing) {
        dlclose(st->lib); /* loaded with RTLD_NODELETE: only drops our reference */
        free(st->idle);
        free(st);
    }
}

static void sock_closed(uv_handle_t *h)
{
    sock *s = h->data;
    http_state *st = s->st;
    free(s);
    handle_closed(st);
}

static void timer_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void sock_unlink(http_state *st, sock *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        st->socks = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
}

static void sock_close(http_state *st, sock *s)
{
    sock_unlink(st, s);
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, sock_closed);
}

/* Curl is done with the socket (and closes it next). Its poll is stopped
 * (which takes the fd out of epoll) and kept under the fd number: new
 * connections mostly get the number just freed, and restarting a stopped
 * poll saves creating and closing one per connection (libuv checks a new
 * poll's fd with two epoll_ctl calls, and closing takes a loop turn). */
static void sock_retire(http_state *st, sock *s)
{
    int fd = (int)s->fd;
    if (!st->closing && fd >= 0 && fd >= st->nidle && fd < 65536) {
        int n = st->nidle ? st->nidle : 64;
        while (n <= fd)
            n *= 2;
        sock **idle = realloc(st->idle, (size_t)n * sizeof *idle);
        if (idle != NULL) {
            memset(idle + st->nidle, 0, (size_t)(n - st->nidle) * sizeof *idle);
            st->idle = idle;
            st->nidle = n;
        }
    }
    if (st->closing || fd < 0 || fd >= st->nidle || st->idle[fd] != NULL) {
        sock_close(st, s);
        return;
    }
    sock_unlink(st, s);
    uv_poll_stop(&s->poll);
    st->idle[fd] = s;
}

/* A stopped poll kept for `fd`, taken out of the idle table, or NULL. */
static sock *sock_reuse(http_state *st, curl_socket_t fd)
{
    if (fd < 0 || (int)fd >= st->nidle || st->idle[fd] == NULL)
        return NULL;
    sock *s = st->idle[fd];
    st->idle[fd] = NULL;
    return s;
}

/* Idle keep-alive connections must not keep the host running: the handles
 * hold the loop only while a request is in flight. */
static void set_refs(http_state *st, int on)
{
    if (on)
        uv_ref((uv_handle_t *)&st->timer);
    else
        uv_unref((uv_handle_t *)&st->timer);
    for (sock *s = st->socks; s != NULL; s = s->next) {
        if (on)
            uv_ref((uv_handle_t *)&s->poll);
        else
            uv_unref((uv_handle_t *)&s->poll);
    }
}

/* ----------------------------------------------------------- requests */

/* An easy handle with curl's defaults: a pooled one, or a new one. */
static CURL *easy_get(http_state *st)
{
    if (st->npool > 0)
        return st->pool[--st->npool];
    return st->api.easy_init();
}

/* Give back a handle that is in no multi: reset and pooled, or freed. */
static void easy_put(http_state *st, CURL *e)
{
    if (e == NULL)
        return;
    if (st->closing || st->npool == EASY_POOL) {
        st->api.easy_cleanup(e);
        return;
    }
    st->api.easy_reset(e);
    st->pool[st->npool++] = e;
}

/* Enter a request added to the multi in the state's list; the uv handles
 * hold the loop while any is in flight. */
static void req_link(request *r)
{
    http_state *st = r->st;
    r->next = st->reqs;
    if (st->reqs != NULL)
        st->reqs->prev = r;
    st->reqs = r;
    if (st->running++ == 0)
        set_refs(st, 1);
}

static void req_unlink(request *r)
{
    http_state *st = r->st;
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        st->reqs = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    if (--st->running == 0)
        set_refs(st, 0);
}

/* Remove from the multi (if added) and free everything. Never called from
 * inside a curl callback. */
static void req_free(request *r, int added)
{
    if (r->easy != NULL) {
        if (added) {
            r->st->api.multi_remove_handle(r->st->multi, r->easy);
            req_unlink(r);
        }
        easy_put(r->st, r->easy);
    }
    r->st->api.slist_free_all(r->headers);
    buf_free(&r->body);
    buf_free(&r->head);
    free(r->label);
    free(r->error);
    free(r->url);
    free(r);
}

/* Cancel hook: the host dropped the task (shutdown); nothing is resumed. */
static void req_cancel(void *ud)
{
    req_free(ud, 1);
}

static size_t on_body(char *ptr, size_t size, size_t n, void *ud)
{
    request *r = ud;
    size_t len = size * n;
    if (r->stream) {
        /* Only the final response has a body curl hands out. A full queue
         * pauses the transfer: curl keeps this piece and offers it again
         * once read() unpauses. */
        r->head_ready = 1;
        if (r->body.len >= r->max_body && len > 0) {
            r->paused = 1;
            return CURL_WRITEFUNC_PAUSE;
        }
        if (buf_append(&r->body, ptr, len) != 0) {
            r->oom = 1;
            return CURL_WRITEFUNC_ERROR;
        }
        if (r->park != NULL)
            r->st->pending = 1;
        return len;
    }
    size_t room = r->max_body - r->body.len;
    if (len > room) {
        if (r->truncate) {
            if (buf_append(&r->body, ptr, room) != 0)
                r->oom = 1;
            else
                r->truncated = 1;
        } else {
            r->too_large = 1;
        }
        return CURL_WRITEFUNC_ERROR; /* stop reading: no need for the rest */
    }
    if (buf_append(&r->body, ptr, len) != 0) {
        r->oom = 1;
        return CURL_WRITEFUNC_ERROR;
    }
    return len;
}

/* Whether the header block holds a Location header. */
static int has_location(const buf *h)
{
    static const char name[] = "\nlocation:";
    size_t n = sizeof name - 1;
    for (size_t i = 0; h->len >= n && i <= h->len - n; i++) {
        size_t k = 0;
        while (k < n) {
            char c = h->data[i + k];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            if (c != name[k])
                break;
            k++;
        }
        if (k == n)
            return 1;
    }
    return 0;
}

/* The blank line that ends a header block: the response is the final one
 * unless it is interim (1xx) or a redirect curl is about to follow. */
static void stream_head_end(request *r)
{
    long status = 0;
    r->st->api.easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200)
        return;
    if (r->follow && status >= 300 && status < 400 && status != 304 && has_location(&r->head))
        return;
    r->head_ready = 1;
    if (r->park != NULL)
        r->st->pending = 1;
}

static size_t on_header(char *ptr, size_t size, size_t n, void *ud)
{
    request *r = ud;
    size_t len = size * n;
    /* A status line starts a new response (1xx, redirects followed, a
     * proxy's CONNECT reply): keep only the last one's headers and body. */
    if (len >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
        r->head.len = 0;
        r->body.len = 0;
        r->truncated = 0;
    }
    if (r->head.len + len > MAX_HEADER_BYTES) {
        r->head_too_large = 1;
        return 0;
    }
    if (buf_append(&r->head, ptr, len) != 0) {
        r->oom = 1;
        return 0;
    }
    if (r->stream && !r->head_ready &&
        ((len == 2 && ptr[0] == '\r' && ptr[1] == '\n') || (len == 1 && ptr[0] == '\n')))
        stream_head_end(r);
    return len;
}

static double secs_info(const curl_api *api, CURL *e, CURLINFO what)
{
    curl_off_t us = 0;
    if (api->easy_getinfo(e, what, &us) != CURLE_OK)
        return 0;
    return (double)us / 1e6;
}

static void set_num(lua_State *L, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

/* Add `v` under `name` in the table on top of L, after `sep` when the
 * name is there already. */
static void add_header(lua_State *L, const char *name, size_t nlen, const char *sep, const char *v,
                       size_t vlen)
{
    lua_pushlstring(L, name, nlen);
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushlstring(L, v, vlen);
    } else {
        lua_pushstring(L, sep);
        lua_pushlstring(L, v, vlen);
        lua_concat(L, 3);
    }
    lua_rawset(L, -3);
}

/* Push the raw header block of the last response as a table: lowercased
 * names (lowercased in place), repeated names joined with ", ", obsolete
 * folded lines appended with a space. */
static void push_headers(lua_State *L, char *p, size_t len)
{
    int lines = 0; /* more than the names: the table is sized once */
    for (size_t i = 0; i < len; i++)
        lines += p[i] == '\n';
    lua_createtable(L, 0, lines);
    if (len == 0)
        return;
    char *end = p + len;
    const char *name = NULL;
    size_t nlen = 0;
    while (p < end) {
        char *eol = memchr(p, '\n', (size_t)(end - p));
        char *next = eol != NULL ? eol + 1 : end;
        char *le = eol != NULL ? eol : end;
        if (le > p && le[-1] == '\r')
            le--;
        char *colon = memchr(p, ':', (size_t)(le - p));
        if (le == p || (le - p >= 5 && memcmp(p, "HTTP/", 5) == 0)) {
            name = NULL; /* blank line or status line */
        } else if (*p == ' ' || *p == '\t') {
            while (p < le && (*p == ' ' || *p == '\t'))
                p++;
            if (name != NULL)
                add_header(L, name, nlen, " ", p, (size_t)(le - p));
        } else if (colon != NULL && colon > p) {
            for (char *c = p; c < colon; c++)
                if (*c >= 'A' && *c <= 'Z')
                    *c = (char)(*c - 'A' + 'a');
            name = p;
            nlen = (size_t)(colon - p);
            const char *v = colon + 1;
            while (v < le && (*v == ' ' || *v == '\t'))
                v++;
            while (le > v && (le[-1] == ' ' || le[-1] == '\t'))
                le--;
            add_header(L, name, nlen, ", ", v, (size_t)(le - v));
        }
        p = next;
    }
}

typedef struct {
    request *r;
    CURLcode rc;
    int nres;
} finish_ctx;

/* The CODE of a failed transfer, and its message in `out` (no label). */
static const char *error_detail(const request *r, CURLcode rc, char *out, size_t size)
{
    const char *code = code_name(rc);
    if (r->oom) {
        snprintf(out, size, "out of memory");
        return "ERROR";
    }
    if (r->too_large) {
        snprintf(out, size, "response body exceeds max_body (%zu bytes)", r->max_body);
        return "TOO_LARGE";
    }
    if (r->head_too_large) {
        snprintf(out, size, "response headers exceed %d bytes", MAX_HEADER_BYTES);
        return "TOO_LARGE";
    }
    const char *detail = r->errbuf[0] ? r->errbuf : r->st->api.easy_strerror(rc);
    size_t n = strlen(detail);
    while (n > 0 && (detail[n - 1] == '\n' || detail[n - 1] == '\r'))
        n--;
    snprintf(out, size, "%.*s", (int)n, detail);
    return code;
}

static void push_response(lua_State *L, request *r);
static void take_info(request *r);

/* Build the results on the host's main state (inside lua_cpcall, so an
 * allocation failure cannot escape) and move them to the parked task. */
static int push_results(lua_State *L)
{
    finish_ctx *c = lua_touserdata(L, 1);
    request *r = c->r;
    CURLcode rc = c->rc;
    lua_settop(L, 0);
    if (rc == CURLE_WRITE_ERROR && r->truncated && !r->oom)
        rc = CURLE_OK; /* we stopped reading on purpose */
    if (rc != CURLE_OK) {
        char msg[CURL_ERROR_SIZE + 64];
        const char *code = error_detail(r, rc, msg, sizeof msg);
        c->nres = kl__push_error(L, code, "%s: %s", r->label, msg);
    } else {
        take_info(r);
        push_response(L, r);
        lua_pushlstring(L, r->body.data ? r->body.data : "", r->body.len);
        lua_setfield(L, -2, "body");
        c->nres = 1;
    }
    lua_xmove(L, r->co, c->nres);
    return 0;
}

static const struct {
    const char *name;
    CURLINFO info;
} phases[] = {{"dns", CURLINFO_NAMELOOKUP_TIME_T},
              {"connect", CURLINFO_CONNECT_TIME_T},
              {"tls", CURLINFO_APPCONNECT_TIME_T},
              {"first_byte", CURLINFO_STARTTRANSFER_TIME_T},
              {"total", CURLINFO_TOTAL_TIME_T}};

/* Copy what the response table shows from the easy handle (while there is
 * one): a stream's transfer may be gone when its response is asked for. */
static void take_info(request *r)
{
    CURL *e = r->easy;
    if (e == NULL)
        return;
    char *url = NULL;
    r->st->api.easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
    r->st->api.easy_getinfo(e, CURLINFO_REDIRECT_COUNT, &r->redirects);
    r->st->api.easy_getinfo(e, CURLINFO_NUM_CONNECTS, &r->connects);
    r->st->api.easy_getinfo(e, CURLINFO_EFFECTIVE_URL, &url);
    char *copy = url != NULL ? strdup(url) : NULL;
    if (copy != NULL || url == NULL) {
        free(r->url);
        r->url = copy;
    }
    /* Seconds from the start to the end of each phase; a phase that did
     * not happen (no TLS, a reused connection) ends with the one before,
     * so the figures never decrease. */
    double last = 0;
    for (size_t i = 0; i < sizeof phases / sizeof phases[0]; i++) {
        double v = secs_info(&r->st->api, e, phases[i].info);
        if (v < last)
            v = last;
        r->timings[i] = last = v;
    }
}

/* Push the response table: status, headers, url, timings, ... (no body),
 * as of the last take_info. */
static void push_response(lua_State *L, request *r)
{
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, (lua_Integer)r->status);
    lua_setfield(L, -2, "status");
    push_headers(L, r->head.data, r->head.len);
    lua_setfield(L, -2, "headers");
    lua_pushstring(L, r->url ? r->url : "");
    lua_setfield(L, -2, "url");
    lua_pushboolean(L, r->truncated);
    lua_setfield(L, -2, "truncated");
    lua_pushinteger(L, (lua_Integer)r->redirects);
    lua_setfield(L, -2, "redirects");
    lua_pushboolean(L, r->connects == 0);
    lua_setfield(L, -2, "reused");
    lua_createtable(L, 0, 5);
    for (size_t i = 0; i < sizeof phases / sizeof phases[0]; i++)
        set_num(L, phases[i].name, r->timings[i]);
    lua_setfield(L, -2, "timings");
}

/* ---------------------------------------------------------------- streams
 *
 * open() makes the request and returns its userdata at once; the userdata
 * owns the request. The transfer runs in loop callbacks: on_header marks
 * the final response's headers (head_ready), on_body queues bytes in
 * r->body (pausing the transfer while max_body bytes wait unread). One task
 * at a time parks on a stream, in response() until head_ready or in read()
 * until bytes are queued. Curl callbacks only set flags: deliver() resumes
 * the task once curl has returned, so no Lua value is made inside a curl
 * callback (a collection could run a __gc there). When the transfer ends,
 * the easy handle goes at once; the queued bytes, the response and the
 * outcome stay for the task to take. */

static void stream_end(request *r)
{
    if (r->easy != NULL) {
        take_info(r);
        r->st->api.multi_remove_handle(r->st->multi, r->easy);
        req_unlink(r);
        easy_put(r->st, r->easy);
        r->easy = NULL;
    }
    r->done = 1;
}

/* Record the failure read() and response() report. */
static void stream_fail(request *r, const char *code, const char *msg)
{
    if (r->err_code[0] != '\0')
        return; /* the first failure stands */
    snprintf(r->err_code, sizeof r->err_code, "%s", code);
    size_t n = strlen(code) + strlen(r->label ? r->label : "") + strlen(msg) + 8;
    r->error = malloc(n);
    if (r->error != NULL)
        snprintf(r->error, n, "%s: %s: %s", code, r->label ? r->label : "request", msg);
}

static int push_failure(lua_State *L, request *r)
{
    if (r->error == NULL)
        return kl__push_error(L, r->err_code, "%s: out of memory", r->label ? r->label : "request");
    lua_pushnil(L);
    lua_pushstring(L, r->error);
    lua_pushstring(L, r->err_code);
    return 3;
}

/* What response() returns now (the response, or the failure), or -1 when
 * it must wait. */
static int push_head(lua_State *L, request *r)
{
    if (r->cancelled)
        return kl__push_error(L, "CANCELLED", "%s: the stream was closed", r->label);
    if (r->head_ready) {
        take_info(r);
        push_response(L, r);
        return 1;
    }
    if (r->done)
        return r->err_code[0] ? push_failure(L, r)
                              : kl__push_error(L, "CLOSED", "%s: no response", r->label);
    return -1;
}

/* What read() returns now: the queued bytes, else the outcome (nil at the
 * end, or the failure); -1 when it must wait. */
static int push_read(lua_State *L, request *r)
{
    if (r->cancelled)
        return kl__push_error(L, "CANCELLED", "%s: the stream was closed", r->label);
    if (r->body.len > 0) {
        lua_pushlstring(L, r->body.data, r->body.len);
        r->body.len = 0;
        return 1;
    }
    if (!r->done)
        return -1;
    if (r->err_code[0])
        return push_failure(L, r);
    lua_pushnil(L);
    return 1;
}

typedef struct {
    request *r;
    lua_State *co;
    int nres;
} stream_ctx;

static int stream_push(lua_State *L)
{
    stream_ctx *c = lua_touserdata(L, 1);
    lua_settop(L, 0);
    c->nres = c->r->wants_head ? push_head(L, c->r) : push_read(L, c->r);
    lua_xmove(L, c->co, c->nres);
    return 0;
}

/* Resume the task parked on `r` with what it waits for, if that is there. */
static void stream_wake(request *r)
{
    kl_park *p = r->park;
    if (p == NULL)
        return;
    if (r->wants_head ? !(r->head_ready || r->done || r->cancelled)
                      : !(r->body.len > 0 || r->done || r->cancelled))
        return;
    lua_State *co = kl__park_thread(p);
    lua_State *L = r->st->L;
    stream_ctx c = {r, co, 0};
    int top = lua_gettop(L);
    r->park = NULL;
    kl__park_set_cancel(p, NULL, NULL);
    if (!lua_checkstack(co, 4) || lua_cpcall(L, stream_push, &c) != 0) {
        lua_settop(L, top);
        c.nres = kl__push_error(co, "ERROR", "%s: out of memory", r->label);
    }
    kl__park_resume(p, c.nres);
}

/* The transfer of a stream ended: keep the outcome for the task. */
static void stream_finish(request *r, CURLcode rc)
{
    if (rc != CURLE_OK) {
        char msg[CURL_ERROR_SIZE + 64];
        const char *code = error_detail(r, rc, msg, sizeof msg);
        stream_fail(r, code, msg);
    }
    stream_end(r);
    if (r->ud == NULL) { /* collected already: nobody will read */
        req_free(r, 0);
        return;
    }
    stream_wake(r);
}

/* After curl returned: resume the stream tasks that have what they wait for. */
static void deliver(http_state *st)
{
    if (!st->pending)
        return;
    st->pending = 0;
    for (request *r = st->reqs; r != NULL; r = r->next)
        if (r->stream && r->park != NULL)
            stream_wake(r);
}

/* The transfer ended: queue the task's resumption and free the request. */
static void finish(request *r, CURLcode rc)
{
    if (r->stream) {
        stream_finish(r, rc);
        return;
    }
    finish_ctx c = {r, rc, 0};
    lua_State *L = r->st->L;
    int top = lua_gettop(L);
    if (!lua_checkstack(r->co, 4) || lua_cpcall(L, push_results, &c) != 0) {
        lua_settop(L, top);
        c.nres = kl__push_error(r->co, "ERROR", "%s: out of memory", r->label);
    }
    kl__park_resume(r->park, c.nres);
    req_free(r, 1);
}

/* Take every finished transfer's message first, then finish them: curl
 * looks through its queue of unread messages for each handle removed, which
 * made thousands of transfers ending together (timeouts) cost n^2. */
static void check_done(http_state *st)
{
    CURLMsg *m;
    int left;
    request *done = NULL, **tail = &done;
    while ((m = st->api.multi_info_read(st->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        char *priv = NULL;
        st->api.easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        request *r = (request *)priv;
        r->done_rc = m->data.result; /* m is invalid once the handle is removed */
        r->done_next = NULL;
        *tail = r;
        tail = &r->done_next;
    }
    while (done != NULL) {
        request *r = done;
        done = r->done_next;
        finish(r, r->done_rc);
    }
}

/* Requests whose socket we could not watch end with an error here. */
static void sweep_failed(http_state *st)
{
    if (!st->failed)
        return;
    st->failed = 0;
    request *r = st->reqs;
    while (r != NULL) {
        request *next = r->next;
        if (r->abandoned) {
            req_free(r, 1);
        } else if (r->failed) {
            snprintf(r->errbuf, sizeof r->errbuf, "cannot watch the socket: %s",
                     uv_strerror(r->failed));
            finish(r, CURLE_COULDNT_CONNECT);
        }
        r = next;
    }
}

/* --------------------------------------------------- curl <-> libuv glue */

static void on_poll(uv_poll_t *p, int status, int events)
{
    sock *s = p->data;
    http_state *st = s->st;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    int running;
    st->api.multi_socket_action(st->multi, s->fd, flags, &running);
    check_done(st);
    deliver(st);
    sweep_failed(st);
}

static void on_timeout(uv_timer_t *t)
{
    http_state *st = t->data;
    int running;
    st->api.multi_socket_action(st->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(st);
    deliver(st);
    sweep_failed(st);
}

/* CURLMOPT_SOCKETFUNCTION: watch `fd` for `what`, or stop watching it. */
static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    http_state *st = userp;
    sock *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL) {
            st->api.multi_assign(st->multi, fd, NULL);
            sock_retire(st, s);
        }
        return 0;
    }
    if (s == NULL && (s = sock_reuse(st, fd)) != NULL) {
        s->next = st->socks;
        if (st->socks != NULL)
            st->socks->prev = s;
        st->socks = s;
        if (st->running == 0)
            uv_unref((uv_handle_t *)&s->poll);
        else
            uv_ref((uv_handle_t *)&s->poll);
        st->api.multi_assign(st->multi, fd, s);
    } else if (s == NULL) {
        int err = UV_ENOMEM;
        s = calloc(1, sizeof *s);
        if (s == NULL || (err = uv_poll_init_socket(st->loop, &s->poll, fd)) != 0) {
            /* Fail this request from the timer: curl must not be called
             * from here, and -1 would fail every transfer of the multi. */
            free(s);
            char *priv = NULL;
            st->api.easy_getinfo(e, CURLINFO_PRIVATE, &priv);
            if (priv != NULL) {
                ((request *)priv)->failed = err;
                st->failed = 1;
                uv_timer_start(&st->timer, on_timeout, 0, 0);
            }
            return 0;
        }
        s->poll.data = s;
        s->fd = fd;
        s->st = st;
        s->next = st->socks;
        if (st->socks != NULL)
            st->socks->prev = s;
        st->socks = s;
        st->open_handles++;
        if (st->running == 0)
            uv_unref((uv_handle_t *)&s->poll);
        st->api.multi_assign(st->multi, fd, s);
    }
    int ev = 0;
    if (what & CURL_POLL_IN)
        ev |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        ev |= UV_WRITABLE;
    uv_poll_start(&s->poll, ev, on_poll);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: one timer; 0 means "as soon as possible" (never
 * from inside this callback), -1 means none. */
static int on_timer(CURLM *m, long timeout_ms, void *userp)
{
    http_state *st = userp;
    if (st->closing)
        return 0;
    if (st->failed)
        timeout_ms = 0; /* sweep_failed has work to do */
    if (timeout_ms < 0)
        uv_timer_stop(&st->timer);
    else
        uv_timer_start(&st->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ------------------------------------------------------- stream userdata */

static request *check_stream(lua_State *L)
{
    request **u = luaL_checkudata(L, 1, STREAM_MT);
    return *u;
}

static void park_cancel(void *ud)
{
    request *r = ud;
    r->park = NULL; /* the transfer goes on; close() or __gc ends it */
}

/* Let a paused transfer go on once the queue was taken. curl may hand over
 * the piece it kept right here (on_body only queues it); the timer makes
 * sure the multi is driven again. */
static void stream_unpause(request *r)
{
    if (!r->paused || r->easy == NULL)
        return;
    r->paused = 0;
    r->st->api.easy_pause(r->easy, CURLPAUSE_CONT);
    uv_timer_start(&r->st->timer, on_timeout, 0, 0);
}

/* Return what `push` has for the caller, or park it until it is there. */
static int stream_wait(lua_State *L, request *r, int head)
{
    if (r->park != NULL)
        return luaL_error(L, "kubelua.http: another task is already waiting on this stream");
    int n = head ? push_head(L, r) : push_read(L, r);
    if (n < 0 && !head) {
        stream_unpause(r); /* the queue is empty: let data come */
        n = push_read(L, r);
    }
    if (n >= 0) {
        if (!head)
            stream_unpause(r);
        return n;
    }
    kl_park *p = kl__park_new(L);
    r->park = p;
    r->wants_head = head;
    kl__park_set_cancel(p, park_cancel, r);
    return kl__park_yield(L, p);
}

/* s:response() -> resp (no body) | nil, "CODE: METHOD url: msg", "CODE"
 * Parks until the final response's headers are in. */
static int l_stream_response(lua_State *L)
{
    request *r = check_stream(L);
    if (r == NULL)
        return kl__push_error(L, "CANCELLED", "the stream was closed");
    return stream_wait(L, r, 1);
}

/* s:read() -> bytes | nil (the end) | nil, "CODE: METHOD url: msg", "CODE"
 * Returns every byte queued since the last read; parks while there is none. */
static int l_stream_read(lua_State *L)
{
    request *r = check_stream(L);
    if (r == NULL)
        return kl__push_error(L, "CANCELLED", "the stream was closed");
    return stream_wait(L, r, 0);
}

/* s:close(): end the transfer now; a task parked on the stream gets
 * nil, "CANCELLED: ...". Closing twice is fine. */
static int l_stream_close(lua_State *L)
{
    request *r = check_stream(L);
    if (r == NULL || r->cancelled)
        return 0;
    stream_end(r);
    r->cancelled = 1;
    r->body.len = 0;
    stream_wake(r);
    return 0;
}

/* s:done() -> whether the transfer ended (queued bytes may remain). */
static int l_stream_done(lua_State *L)
{
    request *r = check_stream(L);
    lua_pushboolean(L, r == NULL || r->done);
    return 1;
}

/* __gc: a stream nobody holds. Curl must not be called here (a collection
 * can run inside any Lua allocation), so a live transfer is only marked and
 * the timer's sweep removes it. */
static int l_stream_gc(lua_State *L)
{
    request **u = lua_touserdata(L, 1);
    request *r = *u;
    if (r == NULL)
        return 0;
    *u = NULL;
    r->ud = NULL;
    if (r->done) {
        req_free(r, 0);
    } else {
        r->abandoned = 1;
        r->st->failed = 1;
        uv_timer_start(&r->st->timer, on_timeout, 0, 0);
    }
    return 0;
}

/* ------------------------------------------------------------------ state */

static int state_gc(lua_State *L)
{
    http_state **u = lua_touserdata(L, 1); /* only ever set on our userdata */
    http_state *st = *u;
    if (st == NULL)
        return 0;
    *u = NULL;
    /* Parked requests were cancelled by the host before lua_close; anything
     * left is released here and can never be resumed. */
    while (st->reqs != NULL) {
        request *r = st->reqs;
        if (r->park != NULL)
            kl__park_set_cancel(r->park, NULL, NULL);
        if (r->ud != NULL) {
            /* a live stream: its userdata (finalized later or already)
             * must not find the request */
            *r->ud = NULL;
            r->ud = NULL;
        }
        req_free(r, 1);
    }
    st->closing = 1;
    while (st->npool > 0)
        st->api.easy_cleanup(st->pool[--st->npool]);
    st->api.multi_cleanup(st->multi); /* closes cached connections */
    st->multi = NULL;
    while (st->socks != NULL)
        sock_close(st, st->socks);
    for (int fd = 0; fd < st->nidle; fd++)
        if (st->idle[fd] != NULL)
            uv_close((uv_handle_t *)&st->idle[fd]->poll, sock_closed);
    uv_close((uv_handle_t *)&st->timer, timer_closed);
    st->api.global_cleanup();
    return 0;
}

/* Load libcurl and fill st->api and st->lib: 0, or -1 with a message. */
static int load_curl(http_state *st, char *err, size_t n)
{
    /* NODELETE: libcurl's global state and its TLS library's exit handlers
     * outlive our reference; dlclose then only drops the count. */
    void *lib = dlopen(CURL_SONAME, RTLD_LAZY | RTLD_LOCAL | RTLD_NODELETE);
    if (lib == NULL) {
        snprintf(err, n, "cannot load libcurl: %s", dlerror());
        return -1;
    }
    static const struct {
        size_t off;
        const char *name;
    } syms[] = {
#define SYM(field) {offsetof(curl_api, field), "curl_" #field}
        SYM(global_init),    SYM(global_cleanup),      SYM(version),
        SYM(easy_init),      SYM(easy_cleanup),        SYM(easy_reset),
        SYM(easy_setopt),    SYM(easy_getinfo),        SYM(easy_pause),
        SYM(easy_strerror),  SYM(multi_init),          SYM(multi_cleanup),
        SYM(multi_setopt),   SYM(multi_add_handle),    SYM(multi_remove_handle),
        SYM(multi_assign),   SYM(multi_socket_action), SYM(multi_info_read),
        SYM(multi_strerror), SYM(slist_append),        SYM(slist_free_all),
#undef SYM
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        void *f = dlsym(lib, syms[i].name);
        if (f == NULL) {
            snprintf(err, n, "%s lacks %s", CURL_SONAME, syms[i].name);
            dlclose(lib);
            return -1;
        }
        /* POSIX guarantees a function pointer fits in a void * */
        memcpy((char *)&st->api + syms[i].off, &f, sizeof f);
    }
    st->lib = lib;
    return 0;
}

static http_state *get_state(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, STATE_KEY);
    http_state **u = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (u != NULL && *u != NULL)
        return *u;
    u = lua_newuserdata(L, sizeof *u);
    *u = NULL;
    luaL_getmetatable(L, STATE_MT);
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, STATE_KEY);
    kl_host *h = kl__host(L);
    http_state *st = calloc(1, sizeof *st);
    if (st == NULL) {
        luaL_error(L, "kubelua.http: out of memory");
        return NULL;
    }
    char err[300];
    if (load_curl(st, err, sizeof err) != 0) {
        free(st);
        luaL_error(L, "kubelua.http: %s", err);
        return NULL;
    }
    const char *fail = NULL;
    if (st->api.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fail = "curl_global_init failed";
    } else if ((st->multi = st->api.multi_init()) == NULL) {
        st->api.global_cleanup();
        fail = "curl_multi_init failed";
    }
    if (fail != NULL) {
        dlclose(st->lib);
        free(st);
        luaL_error(L, "kubelua.http: %s", fail);
        return NULL;
    }
    st->loop = h->loop;
    st->L = h->L;
    st->api.multi_setopt(st->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    st->api.multi_setopt(st->multi, CURLMOPT_SOCKETDATA, st);
    st->api.multi_setopt(st->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    st->api.multi_setopt(st->multi, CURLMOPT_TIMERDATA, st);
    uv_timer_init(st->loop, &st->timer);
    st->timer.data = st;
    uv_unref((uv_handle_t *)&st->timer);
    st->open_handles = 1;
    *u = st;
    return st;
}

/* --------------------------------------------------------------- options */

typedef struct {
    const char *url, *method, *body, *ca_file, *cert_file, *key_file, *unix_socket, *proxy;
    size_t body_len;
    double timeout, connect_timeout, max_body, max_redirects; /* < 0: not given */
    int truncate, follow, verify_tls, keepalive;
    int headers; /* stack index of the header line array, 0 if none */
    int nheaders;
} req_opts;

static void opt_get(lua_State *L, int t, const char *name)
{
    lua_pushstring(L, name);
    lua_rawget(L, t);
}

static const char *opt_string(lua_State *L, int t, const char *name, size_t *len)
{
    const char *s = NULL;
    opt_get(L, t, name);
    if (lua_type(L, -1) == LUA_TSTRING)
        s = lua_tolstring(L, -1, len); /* stays referenced by the table */
    else if (!lua_isnil(L, -1))
        luaL_error(L, "kubelua.http: option '%s' must be a string, got %s", name,
                   luaL_typename(L, -1));
    lua_pop(L, 1);
    return s;
}

static double opt_number(lua_State *L, int t, const char *name)
{
    double v = -1;
    opt_get(L, t, name);
    if (lua_type(L, -1) == LUA_TNUMBER) {
        v = lua_tonumber(L, -1);
        if (!(v >= 0) || isinf(v))
            luaL_error(L, "kubelua.http: option '%s' must be a non-negative number, got %f", name,
                       v);
    } else if (!lua_isnil(L, -1)) {
        luaL_error(L, "kubelua.http: option '%s' must be a number, got %s", name,
                   luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    return v;
}

static int opt_bool(lua_State *L, int t, const char *name, int def)
{
    int v = def;
    opt_get(L, t, name);
    if (lua_type(L, -1) == LUA_TBOOLEAN)
        v = lua_toboolean(L, -1);
    else if (!lua_isnil(L, -1))
        luaL_error(L, "kubelua.http: option '%s' must be a boolean, got %s", name,
                   luaL_typename(L, -1));
    lua_pop(L, 1);
    return v;
}

static int has_ctl(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return 1;
    return 0;
}

/* Read and check everything before parking: only this may throw. */
static void read_opts(lua_State *L, int t, req_opts *o)
{
    luaL_checktype(L, t, LUA_TTABLE);
    size_t n;
    memset(o, 0, sizeof *o);
    o->url = opt_string(L, t, "url", &n);
    if (o->url == NULL)
        luaL_error(L, "kubelua.http: option 'url' is required (a string)");
    if (has_ctl(o->url, n))
        luaL_error(L, "kubelua.http: option 'url' contains a control character");
    o->method = opt_string(L, t, "method", &n);
    if (o->method == NULL)
        o->method = "GET";
    static const char tchar[] = "!#$%&'*+-.^_`|~";
    if (o->method[0] == '\0')
        luaL_error(L, "kubelua.http: option 'method' is empty");
    for (const char *c = o->method; *c; c++)
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
              strchr(tchar, *c) != NULL))
            luaL_error(L, "kubelua.http: option 'method' is not an HTTP method token");
    o->body = opt_string(L, t, "body", &o->body_len);
    o->ca_file = opt_string(L, t, "ca_file", NULL);
    o->cert_file = opt_string(L, t, "cert_file", NULL);
    o->key_file = opt_string(L, t, "key_file", NULL);
    o->unix_socket = opt_string(L, t, "unix_socket", NULL);
    o->proxy = opt_string(L, t, "proxy", NULL);
    o->timeout = opt_number(L, t, "timeout");
    o->connect_timeout = opt_number(L, t, "connect_timeout");
    o->max_body = opt_number(L, t, "max_body");
    o->max_redirects = opt_number(L, t, "max_redirects");
    o->truncate = opt_bool(L, t, "truncate", 0);
    o->follow = opt_bool(L, t, "follow_redirects", 0);
    o->verify_tls = opt_bool(L, t, "verify_tls", 1);
    o->keepalive = opt_bool(L, t, "keepalive", 1);
    opt_get(L, t, "headers");
    if (lua_istable(L, -1)) {
        o->headers = lua_gettop(L); /* left on the stack for setup() */
        o->nheaders = (int)lua_objlen(L, -1);
        for (int i = 1; i <= o->nheaders; i++) {
            lua_rawgeti(L, o->headers, i);
            size_t len;
            const char *line = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (line == NULL || has_ctl(line, len))
                luaL_error(L,
                           "kubelua.http: option 'headers': entry %d must be a \"Name: value\" "
                           "line without CR/LF",
                           i);
            lua_pop(L, 1);
        }
    } else if (!lua_isnil(L, -1)) {
        luaL_error(L, "kubelua.http: option 'headers' must be an array of lines, got %s",
                   luaL_typename(L, -1));
    } else {
        lua_pop(L, 1);
    }
}

static long to_ms(double secs)
{
    double ms = ceil(secs * 1000.0);
    return ms > (double)(LONG_MAX / 2) ? LONG_MAX / 2 : (long)ms;
}

#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if ((rc = r->st->api.easy_setopt(e, opt, val)) != CURLE_OK)                                \
            return rc;                                                                             \
    } while (0)

/* Configure the easy handle; uses no Lua call that can throw. */
static CURLcode setup(lua_State *L, request *r, const req_opts *o)
{
    CURL *e = r->easy;
    CURLcode rc;
    SET(CURLOPT_URL, o->url);
    SET(CURLOPT_PRIVATE, (void *)r);
    SET(CURLOPT_ERRORBUFFER, r->errbuf);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PROXY, o->proxy ? o->proxy : ""); /* never from the environment */
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, (void *)r);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, (void *)r);
    if (strcmp(o->method, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (strcmp(o->method, "GET") == 0 && o->body == NULL) {
        SET(CURLOPT_HTTPGET, 1L);
    } else {
        if (o->body != NULL || strcmp(o->method, "POST") == 0) {
            SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(o->body ? o->body_len : 0));
            SET(CURLOPT_COPYPOSTFIELDS, o->body ? o->body : "");
        }
        if (strcmp(o->method, "POST") != 0)
            SET(CURLOPT_CUSTOMREQUEST, o->method);
    }
    if (o->timeout >= 0)
        SET(CURLOPT_TIMEOUT_MS, to_ms(o->timeout));
    if (o->connect_timeout >= 0)
        SET(CURLOPT_CONNECTTIMEOUT_MS, to_ms(o->connect_timeout));
    if (o->follow) {
        SET(CURLOPT_FOLLOWLOCATION, 1L);
        if (o->max_redirects >= 0)
            SET(CURLOPT_MAXREDIRS, (long)o->max_redirects);
    }
    SET(CURLOPT_SSL_VERIFYPEER, o->verify_tls ? 1L : 0L);
    SET(CURLOPT_SSL_VERIFYHOST, o->verify_tls ? 2L : 0L);
    if (o->ca_file != NULL)
        SET(CURLOPT_CAINFO, o->ca_file);
    if (o->cert_file != NULL)
        SET(CURLOPT_SSLCERT, o->cert_file);
    if (o->key_file != NULL)
        SET(CURLOPT_SSLKEY, o->key_file);
    if (o->unix_socket != NULL)
        SET(CURLOPT_UNIX_SOCKET_PATH, o->unix_socket);
    if (r->stream)
        SET(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L); /* a proxy's reply is not ours */
    if (!o->keepalive) {
        SET(CURLOPT_FRESH_CONNECT, 1L);
        SET(CURLOPT_FORBID_REUSE, 1L);
        /* a pooled handle must not resume an earlier request's TLS session */
        SET(CURLOPT_SSL_SESSIONID_CACHE, 0L);
    }
    for (int i = 1; i <= o->nheaders; i++) {
        lua_rawgeti(L, o->headers, i);
        struct curl_slist *l = r->st->api.slist_append(r->headers, lua_tostring(L, -1));
        lua_pop(L, 1);
        if (l == NULL)
            return CURLE_OUT_OF_MEMORY;
        r->headers = l;
    }
    if (r->headers != NULL)
        SET(CURLOPT_HTTPHEADER, r->headers);
    return CURLE_OK;
}

#undef SET

/* Deliver a failure found before the transfer started: through the loop,
 * like every other result (the task is parked already). */
static int fail_parked(lua_State *L, kl_park *p, request *r, const char *code, const char *msg)
{
    kl__park_set_cancel(p, NULL, NULL);
    kl__park_resume(p,
                    kl__push_error(L, code, "%s: %s", r && r->label ? r->label : "request", msg));
    if (r != NULL)
        req_free(r, 0);
    return kl__park_yield(L, p);
}

/* What every request takes from its options: the state, max_body, the label
 * and an easy handle; -1 when the label or the handle could not be had. */
static int req_init(request *r, http_state *st, const req_opts *o)
{
    r->st = st;
    r->max_body =
        o->max_body >= 0 && o->max_body < (double)SIZE_MAX ? (size_t)o->max_body : SIZE_MAX;
    r->label = make_label(o->method, o->url);
    r->easy = easy_get(st);
    return r->label != NULL && r->easy != NULL ? 0 : -1;
}

/* request(opts) -> resp | nil, "CODE: METHOD url: message", "CODE" (parks) */
static int l_request(lua_State *L)
{
    req_opts o;
    read_opts(L, 1, &o);
    http_state *st = get_state(L);
    kl_park *p = kl__park_new(L); /* throws outside a task; nothing allocated yet */

    request *r = calloc(1, sizeof *r);
    if (r == NULL)
        return fail_parked(L, p, NULL, "ERROR", "out of memory");
    r->park = p;
    r->co = L;
    r->truncate = o.truncate;
    if (req_init(r, st, &o) != 0)
        return fail_parked(L, p, r, "ERROR", "out of memory");
    CURLcode rc = setup(L, r, &o);
    if (rc != CURLE_OK)
        return fail_parked(L, p, r, code_name(rc), st->api.easy_strerror(rc));
    CURLMcode mc = st->api.multi_add_handle(st->multi, r->easy);
    if (mc != CURLM_OK)
        return fail_parked(L, p, r, "ERROR", st->api.multi_strerror(mc));
    req_link(r);
    /* curl_multi_add_handle only armed the timer: the transfer starts, and
     * ends, in loop callbacks. */
    kl__park_set_cancel(p, req_cancel, r);
    return kl__park_yield(L, p);
}

/* open(opts) -> stream: the request starts on the next loop turn, and its
 * response and body are taken with s:response() and s:read(). Never parks;
 * a failure to start is what s:response() returns. */
static int l_open(lua_State *L)
{
    req_opts o;
    read_opts(L, 1, &o);
    http_state *st = get_state(L);
    request **u = lua_newuserdata(L, sizeof *u); /* first: nothing to leak if it throws */
    int self = lua_gettop(L);
    *u = NULL;
    luaL_getmetatable(L, STREAM_MT);
    lua_setmetatable(L, -2);
    request *r = calloc(1, sizeof *r);
    if (r == NULL)
        return luaL_error(L, "kubelua.http: out of memory");
    r->stream = 1;
    r->follow = o.follow;
    int oom = req_init(r, st, &o) != 0;
    *u = r;
    r->ud = u;
    CURLcode rc = CURLE_OUT_OF_MEMORY;
    CURLMcode mc = CURLM_OK;
    if (oom || (rc = setup(L, r, &o)) != CURLE_OK ||
        (mc = st->api.multi_add_handle(st->multi, r->easy)) != CURLM_OK) {
        if (oom)
            stream_fail(r, "ERROR", "out of memory");
        else if (rc != CURLE_OK)
            stream_fail(r, code_name(rc), st->api.easy_strerror(rc));
        else
            stream_fail(r, "ERROR", st->api.multi_strerror(mc));
        easy_put(st, r->easy);
        r->easy = NULL;
        r->done = 1;
        lua_pushvalue(L, self);
        return 1;
    }
    req_link(r);
    lua_pushvalue(L, self);
    return 1;
}

/* code_name(curlcode) -> the short name a CURLcode maps to */
static int l_code_name(lua_State *L)
{
    lua_pushstring(L, code_name((CURLcode)luaL_checkinteger(L, 1)));
    return 1;
}

/* version() -> libcurl's version string */
static int l_version(lua_State *L)
{
    lua_pushstring(L, get_state(L)->api.version());
    return 1;
}

int luaopen_kubelua_http_core(lua_State *L)
{
    luaL_newmetatable(L, STATE_MT);
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    static const luaL_Reg stream_methods[] = {{"response", l_stream_response},
                                              {"read", l_stream_read},
                                              {"close", l_stream_close},
                                              {"done", l_stream_done},
                                              {0, 0}};
    kl__new_type(L, STREAM_MT, stream_methods, l_stream_gc);
    static const luaL_Reg fns[] = {{"request", l_request},
                                   {"open", l_open},
                                   {"code_name", l_code_name},
                                   {"version", l_version},
                                   {0, 0}};
    luaL_newlib(L, fns);
    return 1;
}
