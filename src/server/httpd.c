/* kubelua.server.core: a small HTTP/1.1 server on libuv TCP.
 *
 * The C side accepts connections, parses one request at a time per
 * connection (request line, headers, Content-Length body), and queues the
 * complete request. A Lua task parked in srv:next() receives it as a plain
 * table; whoever handles it answers with srv:respond(conn_id, status,
 * headers, body). No Lua runs inside a uv callback: callbacks only queue
 * and resume parked tasks.
 *
 * Limits: request head (line + headers) 8 KiB -> 431, 100 headers -> 431,
 * body 1 MiB -> 413, malformed input -> 400, Transfer-Encoding -> 501. Each
 * error answer closes the connection. A connection idle for 60 s is closed.
 * Reading pauses while a request is with Lua, so pipelined requests are
 * answered in order and a slow handler holds one buffer per connection.
 *
 * Memory: the server and each connection are malloc'd and freed from uv_close
 * callbacks; the Lua userdata only points at the server. */
#include "server/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SRV_MT "kubelua.server.http"
#define MAX_HEAD (8 * 1024)
#define MAX_BODY (1024 * 1024)
#define MAX_HEADERS 100
#define MAX_CONNS 1024
#define IDLE_MS 60000
#define DRAIN_MS 2000

typedef struct srv srv;
typedef struct hconn hconn;
typedef struct hreq hreq;

/* A parsed request waiting for a Lua task; strings point into buf. */
struct hreq {
    kl__qlink link; /* in the server's queue */
    double conn_id;
    char *buf;
    const char *method, *target;
    int minor;
    int nhdr;
    const char *hname[MAX_HEADERS], *hval[MAX_HEADERS];
    const char *body;
    size_t body_len;
    char peer[64];
};

struct hconn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    srv *s;
    hconn *prev, *next;
    double id;
    char *buf;
    size_t len, cap;
    int busy;          /* a request is with Lua */
    int keep_alive;    /* of the request in flight */
    int is_head;       /* the request in flight is HEAD */
    int continue_sent; /* 100 Continue written for the current request */
    int draining;      /* error answered: discard input until EOF */
    int closing;
    int open_handles;
    char peer[64];
};

struct srv {
    uv_tcp_t tcp;
    int tcp_open;
    int closed;
    int ud_alive;
    kl_host *h;
    hconn *conns;
    int nconns;
    double next_id;
    kl__waitq requests; /* parsed, waiting for next() */
    int port;
};

typedef struct {
    uv_write_t req;
    hconn *c;
    int kind; /* 0 interim (100 Continue), 1 response, 2 response then close */
    char data[];
} wreq;

static void srv_maybe_free(srv *s)
{
    if (!s->ud_alive && !s->tcp_open && s->nconns == 0)
        free(s);
}

static void hreq_free(hreq *r)
{
    free(r->buf);
    free(r);
}

/* --- connections ---------------------------------------------------------- */

static void conn_handle_closed(uv_handle_t *hd)
{
    hconn *c = hd->data;
    if (--c->open_handles > 0)
        return;
    srv *s = c->s;
    free(c->buf);
    free(c);
    s->nconns--;
    srv_maybe_free(s);
}

static void conn_close(hconn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    srv *s = c->s;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
}

static void on_conn_timer(uv_timer_t *t)
{
    conn_close(t->data);
}

static void conn_read_start(hconn *c);
static void conn_process(hconn *c);

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    free(req);
}

static void on_write(uv_write_t *req, int status)
{
    wreq *w = (wreq *)req;
    hconn *c = w->c;
    int kind = w->kind;
    free(w);
    if (c->closing || kind == 0)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    c->busy = 0;
    if (kind == 2 || c->s->closed) {
        /* Send our FIN, then read and drop what the peer still sends so that
         * the answer is not lost to a reset; close at EOF or after a delay. */
        c->draining = 1;
        c->len = 0;
        uv_shutdown_t *sh = malloc(sizeof *sh);
        if (sh == NULL || uv_shutdown(sh, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
            free(sh);
            conn_close(c);
            return;
        }
        uv_timer_start(&c->timer, on_conn_timer, DRAIN_MS, 0);
        conn_read_start(c);
        return;
    }
    conn_process(c);
    if (!c->busy && !c->closing)
        conn_read_start(c);
}

static int conn_write(hconn *c, const char *head, size_t hlen, const char *body, size_t blen,
                      int kind)
{
    wreq *w = malloc(sizeof *w + hlen + blen);
    if (w == NULL)
        return -1;
    w->c = c;
    w->kind = kind;
    memcpy(w->data, head, hlen);
    if (blen > 0)
        memcpy(w->data + hlen, body, blen);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)(hlen + blen));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        free(w);
        return -1;
    }
    return 0;
}

static const char *reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "";
    }
}

/* Answer a protocol error and close the connection. */
static void conn_fail(hconn *c, int status, const char *msg)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s\n",
                     status, reason(status), strlen(msg) + 1, msg);
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_timer_stop(&c->timer);
    c->busy = 1;
    if (n < 0 || (size_t)n >= sizeof head || conn_write(c, head, (size_t)n, NULL, 0, 2) != 0)
        conn_close(c);
}

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    hconn *c = hd->data;
    kl__read_room(&c->buf, c->len, &c->cap, 64 * 1024, buf);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    hconn *c = st->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (c->draining || nread == 0)
        return;
    c->len += (size_t)nread;
    uv_timer_start(&c->timer, on_conn_timer, IDLE_MS, 0);
    conn_process(c);
}

static void conn_read_start(hconn *c)
{
    if (!c->draining)
        uv_timer_start(&c->timer, on_conn_timer, IDLE_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* --- parsing -------------------------------------------------------------- */

static int is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* Offset just past the blank line ending the head, or 0 when not there yet. */
static size_t head_end(const char *b, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (b[i] != '\n')
            continue;
        if (i + 1 < len && b[i + 1] == '\n')
            return i + 2;
        if (i + 2 < len && b[i + 1] == '\r' && b[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/* Split the next line (ending in LF or CRLF) off *p, NUL-terminating it. */
static char *next_line(char **p, char *end)
{
    char *s = *p;
    char *nl = memchr(s, '\n', (size_t)(end - s));
    if (nl == NULL)
        return NULL;
    *nl = '\0';
    if (nl > s && nl[-1] == '\r')
        nl[-1] = '\0';
    *p = nl + 1;
    return s;
}

static int has_token(const char *v, const char *tok)
{
    size_t n = strlen(tok);
    for (const char *p = v; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *te = e;
        while (te > p && (te[-1] == ' ' || te[-1] == '\t'))
            te--;
        if ((size_t)(te - p) == n && strncasecmp(p, tok, n) == 0)
            return 1;
        p = e;
    }
    return 0;
}

static void give_request(lua_State *L, kl__qlink *it);

/* Parse what is buffered: queue a complete request, answer an error, or
 * wait for more bytes. */
static void conn_process(hconn *c)
{
    if (c->busy || c->closing || c->draining)
        return;
    /* Empty lines before a request line are ignored (RFC 9112 2.2). */
    size_t skip = 0;
    while (skip < c->len && (c->buf[skip] == '\r' || c->buf[skip] == '\n'))
        skip++;
    if (skip > 0) {
        memmove(c->buf, c->buf + skip, c->len - skip);
        c->len -= skip;
    }
    if (c->len == 0)
        return;
    size_t hl = head_end(c->buf, c->len < MAX_HEAD + 3 ? c->len : MAX_HEAD + 3);
    if (hl == 0) {
        if (c->len > MAX_HEAD)
            conn_fail(c, 431, "request head larger than 8 KiB");
        return;
    }
    if (hl > MAX_HEAD) {
        conn_fail(c, 431, "request head larger than 8 KiB");
        return;
    }
    hreq *r = calloc(1, sizeof *r);
    char *head = r != NULL ? malloc(hl + 1) : NULL;
    if (head == NULL) {
        free(r);
        conn_fail(c, 500, "out of memory");
        return;
    }
    memcpy(head, c->buf, hl);
    head[hl] = '\0';
    r->buf = head;
    const char *bad = NULL;
    int status = 400;
    char *p = head, *end = head + hl;
    if (memchr(head, '\0', hl) != NULL)
        bad = "NUL byte in request head";
    char *line = bad ? NULL : next_line(&p, end);
    if (!bad) {
        /* request-line = method SP request-target SP HTTP-version */
        char *sp1 = strchr(line, ' ');
        char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
        if (sp1 == NULL || sp2 == NULL || sp1 == line || sp2 == sp1 + 1) {
            bad = "malformed request line";
        } else {
            *sp1 = *sp2 = '\0';
            r->method = line;
            r->target = sp1 + 1;
            for (const char *q = r->method; *q && !bad; q++)
                if (!is_tchar((unsigned char)*q))
                    bad = "malformed method";
            for (const unsigned char *q = (const unsigned char *)r->target; *q && !bad; q++)
                if (*q <= 0x20 || *q >= 0x7f)
                    bad = "malformed request target";
            if (!bad && strcmp(sp2 + 1, "HTTP/1.1") == 0)
                r->minor = 1;
            else if (!bad && strcmp(sp2 + 1, "HTTP/1.0") == 0)
                r->minor = 0;
            else if (!bad && strncmp(sp2 + 1, "HTTP/", 5) == 0) {
                bad = "only HTTP/1.0 and HTTP/1.1 are served";
                status = 505;
            } else if (!bad)
                bad = "malformed HTTP version";
        }
    }
    long long clen = -1;
    int conn_close_tok = 0, conn_keep_tok = 0, expect_continue = 0;
    while (!bad && (line = next_line(&p, end)) != NULL && *line != '\0') {
        if (*line == ' ' || *line == '\t') {
            bad = "folded header lines are not accepted";
            break;
        }
        char *colon = strchr(line, ':');
        if (colon == NULL || colon == line) {
            bad = "malformed header line";
            break;
        }
        *colon = '\0';
        for (const char *q = line; *q && !bad; q++)
            if (!is_tchar((unsigned char)*q))
                bad = "malformed header name";
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        char *ve = v + strlen(v);
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            *--ve = '\0';
        for (const unsigned char *q = (const unsigned char *)v; *q && !bad; q++)
            if ((*q < 0x20 && *q != '\t') || *q == 0x7f)
                bad = "control character in header value";
        if (bad)
            break;
        if (r->nhdr == MAX_HEADERS) {
            bad = "more than 100 header fields";
            status = 431;
            break;
        }
        r->hname[r->nhdr] = line;
        r->hval[r->nhdr++] = v;
        if (strcasecmp(line, "content-length") == 0) {
            long long n = 0;
            if (*v == '\0')
                bad = "malformed Content-Length";
            for (const char *q = v; *q && !bad; q++) {
                if (*q < '0' || *q > '9')
                    bad = "malformed Content-Length";
                else if (n <= MAX_BODY)
                    n = n * 10 + (*q - '0'); /* stops growing once over the limit */
            }
            if (!bad && clen >= 0 && clen != n)
                bad = "conflicting Content-Length headers";
            clen = n;
        } else if (strcasecmp(line, "transfer-encoding") == 0) {
            bad = "Transfer-Encoding request bodies are not supported; send Content-Length";
            status = 501;
        } else if (strcasecmp(line, "connection") == 0) {
            conn_close_tok |= has_token(v, "close");
            conn_keep_tok |= has_token(v, "keep-alive");
        } else if (strcasecmp(line, "expect") == 0) {
            expect_continue = has_token(v, "100-continue");
        }
    }
    if (!bad && clen > MAX_BODY) {
        bad = "request body larger than 1 MiB";
        status = 413;
    }
    if (bad) {
        hreq_free(r);
        conn_fail(c, status, bad);
        return;
    }
    size_t blen = clen > 0 ? (size_t)clen : 0;
    if (c->len - hl < blen) {
        if (expect_continue && !c->continue_sent && r->minor == 1) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            c->continue_sent = 1;
            conn_write(c, cont, sizeof cont - 1, NULL, 0, 0);
        }
        hreq_free(r); /* parsed again when the body is in: cheap, and simple */
        return;
    }
    if (blen > 0) {
        char *nb = malloc(hl + 1 + blen);
        if (nb == NULL) {
            hreq_free(r);
            conn_fail(c, 500, "out of memory");
            return;
        }
        /* Move the parsed head into a block that also holds the body. */
        memcpy(nb, head, hl + 1);
        r->method = nb + (r->method - head);
        r->target = nb + (r->target - head);
        for (int i = 0; i < r->nhdr; i++) {
            r->hname[i] = nb + (r->hname[i] - head);
            r->hval[i] = nb + (r->hval[i] - head);
        }
        free(head);
        r->buf = nb;
        memcpy(nb + hl + 1, c->buf + hl, blen);
        r->body = nb + hl + 1;
    }
    r->body_len = blen;
    memmove(c->buf, c->buf + hl + blen, c->len - hl - blen);
    c->len -= hl + blen;
    c->continue_sent = 0;
    c->keep_alive = r->minor == 1 ? !conn_close_tok : (conn_keep_tok && !conn_close_tok);
    c->is_head = strcmp(r->method, "HEAD") == 0;
    c->busy = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_timer_stop(&c->timer);
    r->conn_id = c->id;
    memcpy(r->peer, c->peer, sizeof r->peer);
    kl__waitq_put(&c->s->requests, &r->link, give_request);
}

/* --- the server ---------------------------------------------------------- */

static void push_request(lua_State *L, hreq *r)
{
    lua_createtable(L, 0, 8);
    lua_pushstring(L, r->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, r->target);
    lua_setfield(L, -2, "target");
    lua_pushstring(L, r->minor ? "HTTP/1.1" : "HTTP/1.0");
    lua_setfield(L, -2, "version");
    lua_createtable(L, 0, r->nhdr);
    for (int i = 0; i < r->nhdr; i++) {
        char name[MAX_HEAD];
        size_t n = strlen(r->hname[i]);
        for (size_t k = 0; k <= n; k++) {
            char ch = r->hname[i][k];
            name[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        lua_getfield(L, -1, name);
        if (lua_isstring(L, -1)) {
            lua_pushstring(L, ", ");
            lua_pushstring(L, r->hval[i]);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushstring(L, r->hval[i]);
        }
        lua_setfield(L, -2, name);
    }
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, r->body ? r->body : "", r->body_len);
    lua_setfield(L, -2, "body");
    lua_pushnumber(L, r->conn_id);
    lua_setfield(L, -2, "conn");
    lua_pushstring(L, r->peer);
    lua_setfield(L, -2, "peer");
}

/* The request queue's give: the request becomes a table and is freed. */
static void give_request(lua_State *L, kl__qlink *it)
{
    hreq *r = kl__item_of(it, hreq, link);
    push_request(L, r);
    hreq_free(r);
}

/* The request queue's drop: a request nobody took. */
static void drop_request(kl__qlink *it)
{
    hreq_free(kl__item_of(it, hreq, link));
}

static void srv_tcp_closed(uv_handle_t *hd)
{
    srv *s = hd->data;
    s->tcp_open = 0;
    srv_maybe_free(s);
}

static void on_connection(uv_stream_t *st, int status)
{
    srv *s = st->data;
    if (status < 0) {
        kl__logh(s->h, 'W', NULL, "http server: accept: %s", uv_strerror(status));
        return;
    }
    hconn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return;
    c->s = s;
    uv_tcp_init(s->h->loop, &c->tcp);
    uv_timer_init(s->h->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    c->id = ++s->next_id;
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    if (uv_accept(st, (uv_stream_t *)&c->tcp) != 0 || s->nconns > MAX_CONNS) {
        conn_close(c);
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        char ip[48] = "";
        int port = 0;
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
            snprintf(c->peer, sizeof c->peer, "[%s]:%d", ip, port);
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            snprintf(c->peer, sizeof c->peer, "%s:%d", ip, port);
        }
    }
    uv_tcp_nodelay(&c->tcp, 1);
    conn_read_start(c);
}

static srv *check_srv(lua_State *L)
{
    srv **ud = luaL_checkudata(L, 1, SRV_MT);
    return *ud;
}

/* core.listen(host, port) -> server | nil, "BIND: ...", "BIND" */
static int l_listen(lua_State *L)
{
    const char *host = luaL_checkstring(L, 1);
    lua_Integer port = luaL_checkinteger(L, 2);
    if (port < 0 || port > 65535)
        return luaL_argerror(L, 2, "port must be 0..65535");
    struct sockaddr_storage addr;
    int rc = strchr(host, ':') ? uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&addr)
                               : uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&addr);
    if (rc != 0)
        return luaL_argerror(L, 1, "host must be a numeric IPv4 or IPv6 address");
    kl_host *h = kl__host(L);
    srv **ud = lua_newuserdata(L, sizeof *ud);
    *ud = NULL;
    srv *s = calloc(1, sizeof *s);
    if (s == NULL)
        return luaL_error(L, "out of memory");
    s->h = h;
    uv_tcp_init(h->loop, &s->tcp);
    s->tcp.data = s;
    s->tcp_open = 1;
    rc = uv_tcp_bind(&s->tcp, (struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->tcp, 511, on_connection);
    if (rc != 0) {
        uv_close((uv_handle_t *)&s->tcp, srv_tcp_closed);
        return kl__push_error(L, "BIND", "listen on %s port %d: %s", host, (int)port,
                              uv_strerror(rc));
    }
    struct sockaddr_storage got;
    int len = sizeof got;
    uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&got, &len);
    s->port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                              : ((struct sockaddr_in *)&got)->sin_port);
    s->ud_alive = 1;
    *ud = s;
    luaL_setmetatable(L, SRV_MT);
    return 1;
}

/* srv:port() -> the port listened on (the one the kernel chose for port 0). */
static int srv_port(lua_State *L)
{
    lua_pushinteger(L, check_srv(L)->port);
    return 1;
}

/* srv:next() -> request table, or nil once the server is closed. Parks. */
static int srv_next(lua_State *L)
{
    srv *s = check_srv(L);
    if (s == NULL || s->closed) {
        lua_pushnil(L);
        return 1;
    }
    return kl__waitq_take(L, &s->requests, give_request,
                          "http server: another task is already waiting in next()");
}

static int valid_header_text(const char *v, int name)
{
    for (const unsigned char *q = (const unsigned char *)v; *q; q++) {
        if (name ? !is_tchar(*q) : ((*q < 0x20 && *q != '\t') || *q == 0x7f))
            return 0;
    }
    return !name || *v != '\0';
}

/* srv:respond(conn_id, status, headers, body) -> true, or false when the
 * connection is gone. Throws on a bad status or header. */
static int srv_respond(lua_State *L)
{
    srv *s = check_srv(L);
    double id = luaL_checknumber(L, 2);
    lua_Integer status = luaL_checkinteger(L, 3);
    size_t blen = 0;
    const char *body = luaL_optlstring(L, 5, "", &blen);
    if (status < 100 || status > 599)
        return luaL_argerror(L, 3, "status must be 100..599");
    if (!lua_isnoneornil(L, 4))
        luaL_checktype(L, 4, LUA_TTABLE);
    hconn *c = NULL;
    if (s != NULL)
        for (c = s->conns; c != NULL && c->id != id; c = c->next)
            ;
    if (c == NULL || !c->busy || c->closing || c->draining) {
        lua_pushboolean(L, 0);
        return 1;
    }
    /* Two passes over the headers: check (may throw) and size, then copy. */
    size_t hsize = 256; /* status line, Content-Length, Connection, blank line */
    for (int pass = 0; pass < 2 && lua_istable(L, 4); pass++) {
        lua_pushnil(L);
        while (lua_next(L, 4) != 0) {
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
            const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            if (pass == 0 &&
                (k == NULL || v == NULL || !valid_header_text(k, 1) || !valid_header_text(v, 0)))
                return luaL_error(L,
                                  "http server: bad response header %s (names are tokens, "
                                  "values strings without CR/LF)",
                                  k ? k : "(not a string)");
            if (pass == 0)
                hsize += strlen(k) + strlen(v) + 4;
            lua_pop(L, 1);
        }
    }
    int keep = c->keep_alive && !s->closed;
    int no_body = status == 204 || status == 304 || status < 200;
    if (no_body)
        blen = 0;
    size_t send_len = c->is_head ? 0 : blen;
    wreq *w = malloc(sizeof *w + hsize + send_len);
    if (w == NULL)
        return luaL_error(L, "out of memory");
    char *o = w->data;
    o += sprintf(o, "HTTP/1.1 %d %s\r\n", (int)status, reason((int)status));
    if (lua_istable(L, 4)) {
        lua_pushnil(L);
        while (lua_next(L, 4) != 0) {
            const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
            if (strcasecmp(k, "content-length") != 0 && strcasecmp(k, "connection") != 0 &&
                strcasecmp(k, "transfer-encoding") != 0)
                o += sprintf(o, "%s: %s\r\n", k, v);
            lua_pop(L, 1);
        }
    }
    if (!no_body)
        o += sprintf(o, "Content-Length: %zu\r\n", blen);
    o += sprintf(o, keep ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
    memcpy(o, body, send_len);
    o += send_len;
    w->c = c;
    w->kind = keep ? 1 : 2;
    uv_buf_t ub = uv_buf_init(w->data, (unsigned)(o - w->data));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1, on_write) != 0) {
        free(w);
        conn_close(c);
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Stop listening, drop queued requests and every connection, end a parked
 * next() with nil (none is parked when called from __gc: it would hold the
 * userdata). */
static void srv_shutdown(srv *s)
{
    if (s->closed)
        return;
    s->closed = 1;
    uv_close((uv_handle_t *)&s->tcp, srv_tcp_closed);
    kl__waitq_close(&s->requests, drop_request);
    while (s->conns != NULL)
        conn_close(s->conns);
}

/* srv:close(): stop listening, drop every connection, end next() with nil. */
static int srv_close(lua_State *L)
{
    srv *s = check_srv(L);
    if (s == NULL)
        return 0;
    srv_shutdown(s);
    return 0;
}

/* srv:connections() -> open connection count (for tests and metrics). */
static int srv_connections(lua_State *L)
{
    srv *s = check_srv(L);
    lua_pushinteger(L, s ? s->nconns : 0);
    return 1;
}

static int srv_gc(lua_State *L)
{
    srv **ud = luaL_checkudata(L, 1, SRV_MT);
    srv *s = *ud;
    if (s == NULL)
        return 0;
    *ud = NULL;
    srv_shutdown(s);
    s->ud_alive = 0;
    srv_maybe_free(s);
    return 0;
}

int luaopen_kubelua_server_core(lua_State *L)
{
    static const luaL_Reg methods[] = {{"port", srv_port},
                                       {"next", srv_next},
                                       {"respond", srv_respond},
                                       {"close", srv_close},
                                       {"connections", srv_connections},
                                       {0, 0}};
    kl__new_type(L, SRV_MT, methods, srv_gc);
    static const luaL_Reg fns[] = {{"listen", l_listen}, {0, 0}};
    luaL_newlib(L, fns);
    return 1;
}
