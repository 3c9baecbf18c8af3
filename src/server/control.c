/* kubelua.server.control: a unix-socket control server with line I/O.
 *
 * The socket file is bound, chmod'ed to 0600 and only then listened on, so
 * no peer can connect while it has wider permissions (connect() to a bound
 * but not listening socket is refused). Each accepted peer is checked with
 * SO_PEERCRED: uid 0 and the server's own effective uid are served; anyone
 * else gets one line "ERR ..." and is closed without reaching Lua.
 *
 * Lua side: ctl:accept() parks until a permitted connection arrives (nil
 * once closed); conn:read_line() parks until a whole line is in (returned
 * without its newline; nil, "EOF: ..." at end), conn:write(s) parks until
 * written, conn:close(). Lines are limited to 64 KiB.
 *
 * Memory: listener and connections are malloc'd and freed from uv_close
 * callbacks; a connection also counts its Lua userdata as a reference. */
#include "server/common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CTL_MT "kubelua.server.control"
#define CONN_MT "kubelua.server.control_conn"
#define MAX_LINE (64 * 1024)
#define MAX_PENDING 64

typedef struct cconn cconn;

struct cconn {
    uv_pipe_t pipe;
    int refs; /* the handle until closed, plus the Lua userdata */
    int closing;
    int eof;     /* 0, or the libuv error that ended reading */
    int reading; /* uv_read_start is active */
    kl_park *reader;
    char *buf;
    size_t len, cap;
    kl__qlink qlink; /* accepted, waiting for ctl:accept() */
    long uid, pid;
};

typedef struct {
    uv_pipe_t pipe;
    kl_host *h; /* for logging in its format */
    int pipe_open;
    int closed;
    int ud_alive;
    kl__waitq accepted; /* permitted connections not yet taken by accept() */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    dev_t dev;
    ino_t ino;
} ctl;

typedef struct {
    uv_write_t req;
    kl_park *park; /* NULL when nobody waits (refusal line, cancelled) */
    cconn *c;
    int close_after;
    char data[];
} cwrite;

/* --- connections ---------------------------------------------------------- */

static void conn_unref(cconn *c)
{
    if (--c->refs > 0)
        return;
    free(c->buf);
    free(c);
}

static void conn_closed_cb(uv_handle_t *hd)
{
    conn_unref(hd->data);
}

/* Push a line (or the end) onto L; returns the number of results. */
static int take_line(lua_State *L, cconn *c)
{
    char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
    if (nl != NULL || (c->eof && c->len > 0)) {
        size_t n = nl ? (size_t)(nl - c->buf) : c->len;
        size_t used = nl ? n + 1 : n;
        size_t keep = n > 0 && c->buf[n - 1] == '\r' ? n - 1 : n;
        lua_pushlstring(L, c->buf, keep);
        memmove(c->buf, c->buf + used, c->len - used);
        c->len -= used;
        return 1;
    }
    if (c->eof == UV_EOF)
        return kl__push_error(L, "EOF", "control connection: peer closed");
    if (c->eof)
        return kl__push_error(L, "CLOSED", "control connection: %s", uv_strerror(c->eof));
    if (c->len >= MAX_LINE)
        return kl__push_error(L, "TOO_LARGE", "control connection: line longer than 64 KiB");
    return 0;
}

static void conn_wake_reader(cconn *c)
{
    if (c->reader == NULL)
        return;
    lua_State *co = kl__park_thread(c->reader);
    int n = take_line(co, c);
    if (n == 0)
        return;
    kl_park *p = c->reader;
    c->reader = NULL;
    kl__park_resume(p, n);
}

static void conn_close(cconn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    if (!c->eof)
        c->eof = UV_ECANCELED;
    if (c->reader != NULL) {
        lua_State *co = kl__park_thread(c->reader);
        kl_park *p = c->reader;
        c->reader = NULL;
        kl__park_resume(p, kl__push_error(co, "CLOSED", "control connection: closed"));
    }
    uv_close((uv_handle_t *)&c->pipe, conn_closed_cb);
}

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    cconn *c = hd->data;
    kl__read_room(&c->buf, c->len, &c->cap, 4096, buf);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    cconn *c = st->data;
    if (nread < 0) {
        c->eof = (int)nread;
        uv_read_stop(st);
        c->reading = 0;
    } else {
        c->len += (size_t)nread;
        if (c->len >= MAX_LINE) { /* backpressure: read_line resumes reading */
            uv_read_stop(st);
            c->reading = 0;
        }
    }
    conn_wake_reader(c);
}

static void conn_read_start(cconn *c)
{
    if (!c->reading && !c->eof && !c->closing && c->len < MAX_LINE) {
        if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) == 0)
            c->reading = 1;
    }
}

static void on_write(uv_write_t *req, int status)
{
    cwrite *w = (cwrite *)req;
    if (w->park != NULL) {
        lua_State *co = kl__park_thread(w->park);
        int n = 1;
        if (status < 0)
            n = kl__push_error(co, "CLOSED", "control connection: write: %s", uv_strerror(status));
        else
            lua_pushboolean(co, 1);
        kl__park_resume(w->park, n);
    }
    if (w->close_after)
        conn_close(w->c);
    conn_unref(w->c);
    free(w);
}

static void write_cancel(void *ud)
{
    cwrite *w = ud;
    w->park = NULL;
}

static void read_cancel(void *ud)
{
    cconn *c = ud;
    c->reader = NULL;
}

static cconn *check_conn(lua_State *L)
{
    cconn **ud = luaL_checkudata(L, 1, CONN_MT);
    return *ud;
}

/* conn:read_line() -> line | nil, "EOF: ...", "EOF" | nil, "CLOSED: ..." */
static int conn_read_line(lua_State *L)
{
    cconn *c = check_conn(L);
    if (c == NULL || c->closing)
        return kl__push_error(L, "CLOSED", "control connection: closed");
    if (c->reader != NULL)
        return luaL_error(L, "control connection: another task is already reading");
    int n = take_line(L, c);
    conn_read_start(c);
    if (n > 0)
        return n;
    kl_park *p = kl__park_new(L);
    c->reader = p;
    kl__park_set_cancel(p, read_cancel, c);
    return kl__park_yield(L, p);
}

/* conn:write(s) -> true | nil, "CLOSED: ...", "CLOSED". Parks until written. */
static int conn_write(lua_State *L)
{
    cconn *c = check_conn(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    if (c == NULL || c->closing)
        return kl__push_error(L, "CLOSED", "control connection: closed");
    if (!kl__in_task(L))
        kl__park_new(L); /* throws the host's "must run in a task" error */
    cwrite *w = malloc(sizeof *w + n);
    if (w == NULL)
        return luaL_error(L, "out of memory");
    memcpy(w->data, s, n);
    w->park = NULL;
    w->c = c;
    w->close_after = 0;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, on_write);
    if (rc != 0) {
        free(w);
        return kl__push_error(L, "CLOSED", "control connection: write: %s", uv_strerror(rc));
    }
    kl_park *p = kl__park_new(L); /* cannot throw now: L is a task */
    w->park = p;
    c->refs++; /* the write request */
    kl__park_set_cancel(p, write_cancel, w);
    return kl__park_yield(L, p);
}

static int conn_close_l(lua_State *L)
{
    cconn *c = check_conn(L);
    if (c != NULL)
        conn_close(c);
    return 0;
}

/* conn:peer() -> uid, pid of the connected process. */
static int conn_peer(lua_State *L)
{
    cconn *c = check_conn(L);
    lua_pushinteger(L, c ? c->uid : -1);
    lua_pushinteger(L, c ? c->pid : -1);
    return 2;
}

static int conn_gc(lua_State *L)
{
    cconn **ud = luaL_checkudata(L, 1, CONN_MT);
    cconn *c = *ud;
    if (c == NULL)
        return 0;
    *ud = NULL;
    c->reader = NULL; /* a parked reader would have kept the userdata alive */
    conn_close(c);
    conn_unref(c);
    return 0;
}

static void push_conn(lua_State *L, cconn *c)
{
    cconn **ud = lua_newuserdata(L, sizeof *ud);
    *ud = c;
    c->refs++;
    luaL_setmetatable(L, CONN_MT);
}

/* The accept queue's give: the userdata takes over the queue's reference,
 * and the connection starts reading. */
static void give_conn(lua_State *L, kl__qlink *it)
{
    cconn *c = kl__item_of(it, cconn, qlink);
    push_conn(L, c);
    conn_unref(c);
    conn_read_start(c);
}

/* The accept queue's drop: a connection Lua never saw. */
static void drop_conn(kl__qlink *it)
{
    cconn *c = kl__item_of(it, cconn, qlink);
    conn_close(c);
    conn_unref(c);
}

/* --- the listener --------------------------------------------------------- */

static void ctl_maybe_free(ctl *s)
{
    if (!s->ud_alive && !s->pipe_open)
        free(s);
}

static void ctl_closed_cb(uv_handle_t *hd)
{
    ctl *s = hd->data;
    s->pipe_open = 0;
    ctl_maybe_free(s);
}

static void refuse(cconn *c, const char *line)
{
    size_t n = strlen(line);
    cwrite *w = malloc(sizeof *w + n);
    if (w == NULL) {
        conn_close(c);
        conn_unref(c);
        return;
    }
    memcpy(w->data, line, n);
    w->park = NULL;
    w->c = c;
    w->close_after = 1;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    /* The write request takes over the reference the accept gave us. */
    if (uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, on_write) != 0) {
        free(w);
        conn_close(c);
        conn_unref(c);
    }
}

static void on_connection(uv_stream_t *st, int status)
{
    ctl *s = st->data;
    if (status < 0) {
        kl__logh(s->h, 'W', NULL, "control server %s: accept: %s", s->path, uv_strerror(status));
        return;
    }
    cconn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return;
    uv_pipe_init(st->loop, &c->pipe, 0);
    c->pipe.data = c;
    c->refs = 2; /* the handle, and whoever owns the connection next */
    c->uid = c->pid = -1;
    if (uv_accept(st, (uv_stream_t *)&c->pipe) != 0) {
        conn_close(c);
        conn_unref(c);
        return;
    }
    struct ucred cred;
    socklen_t len = sizeof cred;
    uv_os_fd_t fd;
    int ok = uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0 &&
             getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
    if (ok) {
        c->uid = (long)cred.uid;
        c->pid = (long)cred.pid;
    }
    if (!ok || (cred.uid != 0 && cred.uid != geteuid())) {
        kl__logh(s->h, 'W', NULL, "control server %s: refused peer uid %ld pid %ld", s->path,
                 c->uid, c->pid);
        refuse(c, "ERR permission denied: only root and the agent's user may connect\n");
        return;
    }
    if (s->accepted.len >= MAX_PENDING) {
        refuse(c, "ERR busy: too many pending connections\n");
        return;
    }
    kl__waitq_put(&s->accepted, &c->qlink, give_conn);
}

static ctl *check_ctl(lua_State *L)
{
    ctl **ud = luaL_checkudata(L, 1, CTL_MT);
    return *ud;
}

/* Remove a socket file left by a dead server; refuse to steal a live one. */
static int clear_stale(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return 0;
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket", path);
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    close(fd);
    if (rc == 0) {
        snprintf(err, errlen, "another server is listening on %s", path);
        return -1;
    }
    if (e == ECONNREFUSED && unlink(path) == 0)
        return 0;
    snprintf(err, errlen, "stale socket %s: %s", path, strerror(e));
    return -1;
}

/* control.listen(path) -> ctl | nil, "BIND: ...", "BIND" */
static int l_listen(lua_State *L)
{
    size_t plen;
    const char *path = luaL_checklstring(L, 1, &plen);
    if (plen == 0 || plen >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return luaL_argerror(L, 1, "path must be 1..107 bytes");
    char err[256];
    if (clear_stale(path, err, sizeof err) != 0)
        return kl__push_error(L, "BIND", "control socket: %s", err);
    ctl **ud = lua_newuserdata(L, sizeof *ud);
    *ud = NULL;
    ctl *s = calloc(1, sizeof *s);
    if (s == NULL)
        return luaL_error(L, "out of memory");
    memcpy(s->path, path, plen + 1);
    s->h = kl__host(L);
    uv_pipe_init(s->h->loop, &s->pipe, 0);
    s->pipe.data = s;
    s->pipe_open = 1;
    int rc = uv_pipe_bind(&s->pipe, path);
    const char *step = "bind";
    struct stat st;
    if (rc == 0) {
        /* Not listening yet: nobody can connect before the mode is 0600. */
        step = "chmod";
        if (chmod(path, 0600) != 0 || lstat(path, &st) != 0)
            rc = uv_translate_sys_error(errno);
    }
    if (rc == 0) {
        step = "listen";
        rc = uv_listen((uv_stream_t *)&s->pipe, 64, on_connection);
    }
    if (rc != 0) {
        if (strcmp(step, "bind") != 0)
            unlink(path);
        uv_close((uv_handle_t *)&s->pipe, ctl_closed_cb);
        return kl__push_error(L, "BIND", "control socket %s: %s: %s", path, step, uv_strerror(rc));
    }
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->ud_alive = 1;
    *ud = s;
    luaL_setmetatable(L, CTL_MT);
    return 1;
}

/* ctl:accept() -> conn, or nil once closed. Parks. */
static int ctl_accept(lua_State *L)
{
    ctl *s = check_ctl(L);
    if (s == NULL || s->closed) {
        lua_pushnil(L);
        return 1;
    }
    return kl__waitq_take(L, &s->accepted, give_conn,
                          "control server: another task is already waiting in accept()");
}

/* Stop listening, drop unaccepted connections, end a parked accept() with
 * nil (none is parked when called from __gc: it would hold the userdata). */
static void ctl_shutdown(ctl *s)
{
    if (s->closed)
        return;
    s->closed = 1;
    struct stat st;
    if (lstat(s->path, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino)
        unlink(s->path);
    uv_close((uv_handle_t *)&s->pipe, ctl_closed_cb);
    kl__waitq_close(&s->accepted, drop_conn);
}

/* ctl:close(): stop listening, remove the socket file, end accept() with nil.
 * Connections already handed to Lua stay open until closed there. */
static int ctl_close(lua_State *L)
{
    ctl *s = check_ctl(L);
    if (s == NULL)
        return 0;
    ctl_shutdown(s);
    return 0;
}

/* ctl:path() -> the socket's path ("" once closed). */
static int ctl_path(lua_State *L)
{
    ctl *s = check_ctl(L);
    lua_pushstring(L, s ? s->path : "");
    return 1;
}

static int ctl_gc(lua_State *L)
{
    ctl **ud = luaL_checkudata(L, 1, CTL_MT);
    ctl *s = *ud;
    if (s == NULL)
        return 0;
    *ud = NULL;
    ctl_shutdown(s);
    s->ud_alive = 0;
    ctl_maybe_free(s);
    return 0;
}

int luaopen_kubelua_server_control(lua_State *L)
{
    static const luaL_Reg conn_methods[] = {{"read_line", conn_read_line},
                                            {"write", conn_write},
                                            {"close", conn_close_l},
                                            {"peer", conn_peer},
                                            {0, 0}};
    kl__new_type(L, CONN_MT, conn_methods, conn_gc);
    static const luaL_Reg ctl_methods[] = {
        {"accept", ctl_accept}, {"close", ctl_close}, {"path", ctl_path}, {0, 0}};
    kl__new_type(L, CTL_MT, ctl_methods, ctl_gc);
    static const luaL_Reg fns[] = {{"listen", l_listen}, {0, 0}};
    luaL_newlib(L, fns);
    return 1;
}
