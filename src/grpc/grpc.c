/* gRPC client over nghttp2 on libuv (see grpc.h). */
#include "grpc/grpc.h"

#include <ctype.h>
#include <nghttp2/nghttp2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONN_WINDOW (64u << 20)   /* connection receive window */
#define STREAM_WINDOW (16u << 20) /* per-stream receive window */
#define READ_BUF (64u << 10)
#define MAX_REFUSED_RETRIES 3

static const char *const code_names[] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

const char *kl_grpc_code_name(int code)
{
    return code >= 0 && code <= 16 ? code_names[code] : "UNKNOWN";
}

typedef struct conn conn;

enum chan_state { CH_IDLE, CH_CONNECTING, CH_READY, CH_TRANSIENT_FAILURE };
enum conn_state { C_CONNECTING, C_READY, C_DRAINING, C_CLOSED };

struct kl_grpc_channel {
    uv_loop_t *loop;
    int is_unix;
    char path[108];
    struct sockaddr_storage addr;
    char target[256];
    enum chan_state state;
    conn *current;                       /* where new calls go */
    conn *conns;                         /* every open connection, draining ones too */
    kl_grpc_call *pending, *pending_end; /* waiting for `current` to connect */
    uv_timer_t backoff;
    uint64_t backoff_ms;
    char last_error[512];
    uv_prepare_t flush;
    int flush_active;
    int freeing;
    int open_handles; /* backoff + flush + connections still closing */
    kl_grpc_channel_options opt;
    kl_grpc_stats stats;
};

struct conn {
    kl_grpc_channel *ch;
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } s;
    uv_connect_t connect_req;
    nghttp2_session *session;
    enum conn_state state;
    kl_grpc_call *calls; /* calls attached to a stream of this connection */
    int ncalls;
    int busy;          /* inside nghttp2 (recv/send): do not delete the session */
    int close_pending; /* close once no longer busy */
    int want_flush;
    int closing;
    char error[512];
    kl_buf out;
    conn *next;
    uint8_t rbuf[READ_BUF];
};

struct kl_grpc_call {
    kl_grpc_channel *ch;
    conn *conn;
    int32_t stream_id;
    kl_grpc_call *prev, *next; /* conn->calls, or ch->pending (next only) */
    const char *path;
    kl_buf req;
    size_t req_off;
    int streaming;
    int retries;
    char timeout_hdr[24];
    uv_timer_t timer;
    int has_timer;
    const kl_grpc_call_ops *ops;
    void *ud;
    int done;            /* on_done delivered, or cancelled */
    int delivering;      /* inside ops->on_message: a cancel there must not free us */
    int release_pending; /* ...so call_release is left to on_data_chunk */
    /* response */
    int http_status;
    int have_grpc_status;
    int grpc_status;
    int got_headers;
    int nmsgs;
    char grpc_message[512];
    uint8_t hdr[5];
    size_t hdr_have;
    uint8_t *msg;
    size_t msg_len, msg_have;
    int in_msg;
};

static void conn_close(conn *c);
static void on_backoff_done(uv_timer_t *t);
static void conn_fail(conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void chan_connect(kl_grpc_channel *ch);
static void chan_dispatch_pending(kl_grpc_channel *ch);
static void request_flush(conn *c);

/* ------------------------------------------------------------ call state */

static void call_free_cb(uv_handle_t *h)
{
    kl_grpc_call *call = h->data;
    free(call);
}

/* Detach from the connection. `reset`: the stream is still open on the
 * wire; tell the server to stop. */
static void call_detach(kl_grpc_call *call, int reset)
{
    conn *c = call->conn;
    if (c == NULL)
        return;
    if (c->session != NULL && call->stream_id > 0) {
        nghttp2_session_set_stream_user_data(c->session, call->stream_id, NULL);
        if (reset && c->state != C_CLOSED) {
            nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, call->stream_id,
                                      NGHTTP2_CANCEL);
            request_flush(c);
        }
    }
    if (call->prev != NULL)
        call->prev->next = call->next;
    else
        c->calls = call->next;
    if (call->next != NULL)
        call->next->prev = call->prev;
    call->prev = call->next = NULL;
    call->conn = NULL;
    call->stream_id = 0;
    c->ncalls--;
    if (c->ncalls == 0) {
        if (!c->closing)
            uv_unref(&c->s.handle);
        if (c->state == C_DRAINING)
            conn_close(c);
    }
}

static void call_release(kl_grpc_call *call)
{
    if (call->delivering) {
        call->release_pending = 1;
        return;
    }
    kl_buf_free(&call->req);
    free(call->msg);
    call->msg = NULL;
    if (call->has_timer) {
        uv_timer_stop(&call->timer);
        uv_close((uv_handle_t *)&call->timer, call_free_cb);
    } else {
        free(call);
    }
}

/* End a call with a status: deliver it, detach, free. */
static void call_finish(kl_grpc_call *call, int code, const char *msg, int reset)
{
    if (call->done)
        return;
    call->done = 1;
    call_detach(call, reset);
    call->ops->on_done(call->ud, code, msg);
    call_release(call);
}

static void pending_remove(kl_grpc_channel *ch, kl_grpc_call *call)
{
    kl_grpc_call **pp = &ch->pending, *prev = NULL;
    while (*pp != NULL && *pp != call) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp == NULL)
        return;
    *pp = call->next;
    if (ch->pending_end == call)
        ch->pending_end = prev;
    call->next = NULL;
}

static void on_deadline(uv_timer_t *t)
{
    kl_grpc_call *call = t->data;
    if (call->conn == NULL)
        pending_remove(call->ch, call);
    call_finish(call, KL_GRPC_DEADLINE_EXCEEDED, "deadline exceeded", 1);
}

void kl_grpc_call_cancel(kl_grpc_call *call)
{
    if (call->done)
        return;
    call->done = 1;
    if (call->conn == NULL)
        pending_remove(call->ch, call);
    call_detach(call, 1);
    call_release(call);
}

/* --------------------------------------------------------- nghttp2 hooks */

static ssize_t read_request(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *user)
{
    (void)src;
    (void)user;
    kl_grpc_call *call = nghttp2_session_get_stream_user_data(s, stream_id);
    if (call == NULL) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        return 0;
    }
    size_t left = call->req.len - call->req_off;
    size_t n = left < len ? left : len;
    memcpy(buf, call->req.p + call->req_off, n);
    call->req_off += n;
    if (call->req_off == call->req.len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user)
{
    (void)flags;
    (void)user;
    kl_grpc_call *call = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    if (call == NULL)
        return 0;
    call->got_headers = 1;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        call->http_status = atoi((const char *)value);
    } else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        call->have_grpc_status = 1;
        call->grpc_status = atoi((const char *)value);
    } else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
        /* percent-decoded */
        size_t o = 0;
        for (size_t i = 0; i < valuelen && o + 1 < sizeof call->grpc_message; i++) {
            if (value[i] == '%' && i + 2 < valuelen && isxdigit(value[i + 1]) &&
                isxdigit(value[i + 2])) {
                char hex[3] = {(char)value[i + 1], (char)value[i + 2], 0};
                call->grpc_message[o++] = (char)strtol(hex, NULL, 16);
                i += 2;
            } else {
                call->grpc_message[o++] = (char)value[i];
            }
        }
        call->grpc_message[o] = '\0';
    }
    return 0;
}

/* Hand one message to the caller, who may cancel the call from inside the
 * callback; returns -1 when the call is over (and then released). */
static int deliver(kl_grpc_call *call, const uint8_t *msg, size_t len)
{
    call->nmsgs++;
    call->delivering = 1;
    call->ops->on_message(call->ud, msg, len);
    call->delivering = 0;
    if (!call->done)
        return 0;
    if (call->release_pending)
        call_release(call);
    return -1;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
                         size_t len, void *user)
{
    (void)flags;
    (void)user;
    kl_grpc_call *call = nghttp2_session_get_stream_user_data(s, stream_id);
    if (call == NULL || call->done)
        return 0;
    if (call->http_status != 200) /* an HTTP error page, not gRPC frames */
        return 0;
    size_t max = call->ch->opt.max_message;
    while (len > 0) {
        if (!call->in_msg) {
            size_t n = 5 - call->hdr_have;
            n = n < len ? n : len;
            memcpy(call->hdr + call->hdr_have, data, n);
            call->hdr_have += n;
            data += n;
            len -= n;
            if (call->hdr_have < 5)
                break;
            size_t mlen = (size_t)call->hdr[1] << 24 | (size_t)call->hdr[2] << 16 |
                          (size_t)call->hdr[3] << 8 | call->hdr[4];
            if (call->hdr[0] != 0) {
                call_finish(call, KL_GRPC_INTERNAL,
                            "compressed response message, but no compression was offered", 1);
                return 0;
            }
            if (mlen > max) {
                char m[160];
                snprintf(m, sizeof m,
                         "response message of %zu bytes exceeds the limit of %zu bytes", mlen, max);
                call_finish(call, KL_GRPC_RESOURCE_EXHAUSTED, m, 1);
                return 0;
            }
            call->hdr_have = 0;
            call->msg_len = mlen;
            call->msg_have = 0;
            call->in_msg = 1;
            if (mlen <= len) { /* whole message in this chunk: no copy */
                call->in_msg = 0;
                if (deliver(call, data, mlen) != 0)
                    return 0;
                data += mlen;
                len -= mlen;
                continue;
            }
            call->msg = malloc(mlen);
            if (call->msg == NULL) {
                call_finish(call, KL_GRPC_RESOURCE_EXHAUSTED, "out of memory", 1);
                return 0;
            }
        }
        size_t n = call->msg_len - call->msg_have;
        n = n < len ? n : len;
        memcpy(call->msg + call->msg_have, data, n);
        call->msg_have += n;
        data += n;
        len -= n;
        if (call->msg_have == call->msg_len) {
            call->in_msg = 0;
            uint8_t *m = call->msg;
            call->msg = NULL; /* ours now: a cancel inside the callback must not free it */
            int over = deliver(call, m, call->msg_len);
            free(m);
            if (over)
                return 0;
        }
    }
    return 0;
}

static int http_to_grpc(int status)
{
    switch (status) {
    case 400:
        return KL_GRPC_INTERNAL;
    case 401:
        return KL_GRPC_UNAUTHENTICATED;
    case 403:
        return KL_GRPC_PERMISSION_DENIED;
    case 404:
        return KL_GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return KL_GRPC_UNAVAILABLE;
    default:
        return KL_GRPC_UNKNOWN;
    }
}

static void call_submit(kl_grpc_channel *ch, kl_grpc_call *call);

static int on_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *user)
{
    conn *c = user;
    kl_grpc_call *call = nghttp2_session_get_stream_user_data(s, stream_id);
    if (call == NULL || call->done)
        return 0;
    char m[640];
    int code;
    if (error_code == NGHTTP2_REFUSED_STREAM && !call->got_headers &&
        call->retries < MAX_REFUSED_RETRIES) {
        /* The server never started it (GOAWAY, stream limit): try again on a
         * connection that is not draining. */
        call_detach(call, 0);
        call->retries++;
        call->req_off = 0;
        if (c->state == C_READY) {
            c->state = C_DRAINING;
            if (c->ch->current == c)
                c->ch->current = NULL;
        }
        call_submit(c->ch, call);
        return 0;
    }
    if (call->have_grpc_status) {
        code = call->grpc_status;
        if (code == KL_GRPC_OK && (call->in_msg || call->hdr_have > 0)) {
            code = KL_GRPC_INTERNAL;
            snprintf(m, sizeof m, "stream ended in the middle of a message (%zu of %zu bytes)",
                     call->in_msg ? call->msg_have : call->hdr_have,
                     call->in_msg ? call->msg_len : (size_t)5);
        } else if (code == KL_GRPC_OK && !call->streaming && call->nmsgs != 1) {
            code = KL_GRPC_INTERNAL;
            snprintf(m, sizeof m, "unary call got %d response messages", call->nmsgs);
        } else {
            snprintf(m, sizeof m, "%s", call->grpc_message);
        }
    } else if (error_code != NGHTTP2_NO_ERROR) {
        if (c->error[0]) {
            code = KL_GRPC_UNAVAILABLE;
            snprintf(m, sizeof m, "%s", c->error);
        } else {
            code = error_code == NGHTTP2_CANCEL           ? KL_GRPC_CANCELLED
                   : error_code == NGHTTP2_REFUSED_STREAM ? KL_GRPC_UNAVAILABLE
                                                          : KL_GRPC_INTERNAL;
            snprintf(m, sizeof m, "stream reset by the server: %s",
                     nghttp2_http2_strerror(error_code));
        }
    } else if (call->http_status != 0 && call->http_status != 200) {
        code = http_to_grpc(call->http_status);
        snprintf(m, sizeof m, "HTTP status %d from the server, without a grpc-status",
                 call->http_status);
    } else {
        code = KL_GRPC_INTERNAL;
        snprintf(m, sizeof m, "the server ended the stream without a grpc-status");
    }
    call_finish(call, code, m, 0);
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *user)
{
    (void)s;
    conn *c = user;
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        /* No new streams here; what the server did not take is refused and
         * retried elsewhere by on_stream_close. */
        if (c->state == C_READY)
            c->state = C_DRAINING;
        if (c->ch->current == c) {
            c->ch->current = NULL;
            c->ch->state = CH_IDLE;
        }
        if (frame->goaway.error_code != NGHTTP2_NO_ERROR)
            snprintf(c->error, sizeof c->error, "server sent GOAWAY: %s",
                     nghttp2_http2_strerror(frame->goaway.error_code));
    }
    return 0;
}

/* We end the connection when the server breaks the protocol: say why. */
static int on_frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *user)
{
    (void)s;
    conn *c = user;
    if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR &&
        !c->error[0])
        snprintf(c->error, sizeof c->error, "HTTP/2 protocol error from the server (%s)%s%.*s",
                 nghttp2_http2_strerror(frame->goaway.error_code),
                 frame->goaway.opaque_data_len ? ": " : "", (int)frame->goaway.opaque_data_len,
                 (const char *)frame->goaway.opaque_data);
    return 0;
}

static int on_error(nghttp2_session *s, int lib_error_code, const char *msg, size_t len, void *user)
{
    (void)s;
    (void)lib_error_code;
    conn *c = user;
    if (!c->error[0])
        snprintf(c->error, sizeof c->error, "HTTP/2 protocol error from the server: %.*s", (int)len,
                 msg);
    return 0;
}

/* ------------------------------------------------------------ connection */

static void on_conn_closed(uv_handle_t *h)
{
    conn *c = h->data;
    kl_grpc_channel *ch = c->ch;
    kl_buf_free(&c->out);
    free(c);
    ch->open_handles--;
    if (ch->freeing && ch->open_handles == 0)
        free(ch);
}

/* Close now, or once nghttp2 has returned. */
static void conn_close(conn *c)
{
    if (c->closing)
        return;
    if (c->busy) {
        c->close_pending = 1;
        return;
    }
    c->closing = 1;
    c->state = C_CLOSED;
    kl_grpc_channel *ch = c->ch;
    if (ch->current == c) {
        ch->current = NULL;
        if (ch->state == CH_READY || ch->state == CH_CONNECTING)
            ch->state = CH_IDLE;
    }
    for (conn **pp = &ch->conns; *pp != NULL; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (c->session != NULL) {
        nghttp2_session_del(c->session);
        c->session = NULL;
    }
    uv_close(&c->s.handle, on_conn_closed);
}

/* The connection is unusable: every call on it fails with UNAVAILABLE. */
static void conn_fail(conn *c, const char *fmt, ...)
{
    if (!c->error[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->error, sizeof c->error, fmt, ap);
        va_end(ap);
    }
    kl_grpc_channel *ch = c->ch;
    int was_connecting = c->state == C_CONNECTING;
    c->state = C_CLOSED;
    if (ch->current == c) {
        ch->current = NULL;
        ch->state = CH_IDLE;
    }
    snprintf(ch->last_error, sizeof ch->last_error, "%s", c->error);
    while (c->calls != NULL) {
        kl_grpc_call *call = c->calls;
        call_finish(call, KL_GRPC_UNAVAILABLE, c->error, 0);
    }
    if (was_connecting && ch->current == NULL && !ch->freeing) {
        /* Back off before the next attempt; calls meanwhile fail fast. */
        ch->state = CH_TRANSIENT_FAILURE;
        uint64_t base = ch->opt.backoff_base_ms, max = ch->opt.backoff_max_ms;
        ch->backoff_ms = ch->backoff_ms == 0 ? base : ch->backoff_ms * 8 / 5;
        if (ch->backoff_ms > max)
            ch->backoff_ms = max;
        uv_timer_start(&ch->backoff, on_backoff_done, ch->backoff_ms, 0);
        while (ch->pending != NULL) {
            kl_grpc_call *call = ch->pending;
            ch->pending = call->next;
            if (ch->pending == NULL)
                ch->pending_end = NULL;
            call->next = NULL;
            call_finish(call, KL_GRPC_UNAVAILABLE, c->error, 0);
        }
    }
    conn_close(c);
}

static void on_write(uv_write_t *req, int status)
{
    conn *c = req->data;
    free(req);
    if (status < 0 && status != UV_ECANCELED && !c->closing)
        conn_fail(c, "write to %s failed: %s", c->ch->target, uv_strerror(status));
}

/* Serialize everything nghttp2 has queued and write it with one call. */
static void conn_flush(conn *c)
{
    c->want_flush = 0;
    if (c->closing)
        return;
    if (c->session == NULL) { /* a connect that failed before it started */
        if (c->close_pending)
            conn_fail(c, "%s", c->error);
        return;
    }
    c->busy++;
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->session, &data);
        if (n < 0) {
            c->busy--;
            conn_fail(c, "HTTP/2 send error: %s", nghttp2_strerror((int)n));
            return;
        }
        if (n == 0)
            break;
        if (kl_buf_reserve(&c->out, (size_t)n) != 0)
            break;
        memcpy(c->out.p + c->out.len, data, (size_t)n);
        c->out.len += (size_t)n;
    }
    c->busy--;
    if (c->out.len > 0) {
        c->ch->stats.writes++;
        uv_buf_t b = uv_buf_init((char *)c->out.p, (unsigned)c->out.len);
        int n = uv_try_write(&c->s.stream, &b, 1);
        size_t done = n > 0 ? (size_t)n : 0;
        if (n < 0 && n != UV_EAGAIN) {
            conn_fail(c, "write to %s failed: %s", c->ch->target, uv_strerror(n));
            return;
        }
        if (done < c->out.len) {
            /* Queue the rest; the request owns its copy. */
            size_t rest = c->out.len - done;
            uv_write_t *req = malloc(sizeof *req + rest);
            if (req == NULL) {
                conn_fail(c, "out of memory");
                return;
            }
            memcpy((char *)(req + 1), c->out.p + done, rest);
            req->data = c;
            uv_buf_t rb = uv_buf_init((char *)(req + 1), (unsigned)rest);
            int rc = uv_write(req, &c->s.stream, &rb, 1, on_write);
            if (rc != 0) {
                free(req);
                conn_fail(c, "write to %s failed: %s", c->ch->target, uv_strerror(rc));
                return;
            }
        }
        c->out.len = 0;
    }
    if (c->close_pending ||
        (!nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session)))
        conn_fail(c, "%s", c->error[0] ? c->error : "connection closed");
}

static void on_flush(uv_prepare_t *p)
{
    kl_grpc_channel *ch = p->data;
    for (conn *c = ch->conns, *next; c != NULL; c = next) {
        next = c->next;
        if (c->want_flush)
            conn_flush(c);
    }
    ch->flush_active = 0;
    uv_prepare_stop(&ch->flush);
}

static void request_flush(conn *c)
{
    c->want_flush = 1;
    if (!c->ch->flush_active) {
        c->ch->flush_active = 1;
        uv_prepare_start(&c->ch->flush, on_flush);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    conn *c = h->data;
    *buf = uv_buf_init((char *)c->rbuf, sizeof c->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn *c = s->data;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        conn_fail(c,
                  nread == UV_EOF ? "connection closed by the server"
                                  : "read from the server failed: %s",
                  uv_strerror((int)nread));
        return;
    }
    c->busy++;
    ssize_t rv = nghttp2_session_mem_recv(c->session, (const uint8_t *)buf->base, (size_t)nread);
    c->busy--;
    if (rv < 0) {
        if (!c->error[0])
            snprintf(c->error, sizeof c->error, "HTTP/2 error: %s", nghttp2_strerror((int)rv));
        conn_fail(c, "%s", c->error);
        return;
    }
    /* SETTINGS and PING acks leave on this turn's flush. */
    request_flush(c);
}

static int setup_session(conn *c)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return -1;
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_error_callback2(cbs, on_error);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    int rc = nghttp2_session_client_new(&c->session, cbs, c);
    nghttp2_session_callbacks_del(cbs);
    if (rc != 0)
        return -1;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 64u << 10},
    };
    if (nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0)
        return -1;
    /* Open the connection window (WINDOW_UPDATE on stream 0). */
    return nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW);
}

static void on_connect(uv_connect_t *req, int status)
{
    conn *c = req->data;
    kl_grpc_channel *ch = c->ch;
    if (c->closing)
        return;
    if (status < 0) {
        conn_fail(c, "connect to %s failed: %s", ch->target, uv_strerror(status));
        return;
    }
    if (setup_session(c) != 0) {
        conn_fail(c, "cannot set up an HTTP/2 session");
        return;
    }
    int rc = uv_read_start(&c->s.stream, on_alloc, on_read);
    if (rc != 0) {
        conn_fail(c, "read from %s failed: %s", ch->target, uv_strerror(rc));
        return;
    }
    c->state = C_READY;
    if (ch->current == c) {
        ch->state = CH_READY;
        ch->backoff_ms = 0;
    }
    request_flush(c);
    chan_dispatch_pending(ch);
    if (c->ncalls == 0)
        uv_unref(&c->s.handle);
}

static void chan_connect(kl_grpc_channel *ch)
{
    conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return;
    c->ch = ch;
    c->state = C_CONNECTING;
    int rc;
    if (ch->is_unix)
        rc = uv_pipe_init(ch->loop, &c->s.pipe, 0);
    else
        rc = uv_tcp_init(ch->loop, &c->s.tcp);
    if (rc != 0) {
        free(c);
        return;
    }
    c->s.handle.data = c;
    c->connect_req.data = c;
    ch->open_handles++;
    c->next = ch->conns;
    ch->conns = c;
    ch->current = c;
    ch->state = CH_CONNECTING;
    ch->stats.connects++;
    if (ch->is_unix) {
        uv_pipe_connect(&c->connect_req, &c->s.pipe, ch->path, on_connect);
    } else {
        uv_tcp_nodelay(&c->s.tcp, 1);
        rc = uv_tcp_connect(&c->connect_req, &c->s.tcp, (const struct sockaddr *)&ch->addr,
                            on_connect);
        if (rc != 0) {
            /* Report through the loop like any other connect failure. */
            snprintf(c->error, sizeof c->error, "connect to %s failed: %s", ch->target,
                     uv_strerror(rc));
            c->close_pending = 1;
            request_flush(c);
        }
    }
}

/* ------------------------------------------------------------------ calls */

static void call_attach(conn *c, kl_grpc_call *call)
{
    kl_grpc_channel *ch = c->ch;
    /* NO_COPY: every name and value must outlive the stream (serialized later). */
    static const char ctype[] = "application/grpc";
    nghttp2_nv nva[] = {
#define NV(n, v, vl)                                                                               \
    {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vl),                                          \
     NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE}
        NV(":method", "POST", 4),
        NV(":scheme", "http", 4),
        NV(":path", call->path, strlen(call->path)),
        NV(":authority", "localhost", 9),
        NV("content-type", ctype, sizeof ctype - 1),
        NV("te", "trailers", 8),
        NV("user-agent",
           "kubelua/"
           "0.1.0",
           13),
        NV("grpc-timeout", call->timeout_hdr, strlen(call->timeout_hdr)),
#undef NV
    };
    size_t nnv = sizeof nva / sizeof nva[0] - (call->timeout_hdr[0] ? 0 : 1);
    nghttp2_data_provider dp = {.source.ptr = call, .read_callback = read_request};
    int32_t id = nghttp2_submit_request(c->session, NULL, nva, nnv, &dp, call);
    if (id < 0) {
        /* Stream IDs exhausted or the session is going away: drain this
         * connection and put the call back in line for a new one. */
        c->state = C_DRAINING;
        if (ch->current == c) {
            ch->current = NULL;
            ch->state = CH_IDLE;
        }
        call->next = NULL;
        if (ch->pending_end)
            ch->pending_end->next = call;
        else
            ch->pending = call;
        ch->pending_end = call;
        if (c->ncalls == 0)
            conn_close(c);
        chan_connect(ch);
        return;
    }
    call->conn = c;
    call->stream_id = id;
    call->prev = NULL;
    call->next = c->calls;
    if (c->calls != NULL)
        c->calls->prev = call;
    c->calls = call;
    if (c->ncalls++ == 0)
        uv_ref(&c->s.handle);
    if ((uint32_t)id >= ch->opt.max_stream_id && c->state == C_READY) {
        /* Last stream ID of this connection: new calls go elsewhere. */
        c->state = C_DRAINING;
        ch->current = NULL;
        ch->state = CH_IDLE;
    }
    request_flush(c);
}

static void call_submit(kl_grpc_channel *ch, kl_grpc_call *call)
{
    if (ch->current == NULL)
        chan_connect(ch);
    if (ch->current != NULL && ch->current->state == C_READY) {
        call_attach(ch->current, call);
        return;
    }
    call->next = NULL;
    if (ch->pending_end)
        ch->pending_end->next = call;
    else
        ch->pending = call;
    ch->pending_end = call;
}

static void chan_dispatch_pending(kl_grpc_channel *ch)
{
    kl_grpc_call *list = ch->pending;
    ch->pending = ch->pending_end = NULL;
    while (list != NULL) {
        kl_grpc_call *call = list;
        list = call->next;
        call->next = NULL;
        call_submit(ch, call);
    }
}

static void format_timeout(char *out, size_t n, double secs)
{
    /* At most 8 digits, in the finest unit that fits. */
    double ms = secs * 1000.0;
    if (ms < 1)
        ms = 1;
    if (ms <= 99999999)
        snprintf(out, n, "%.0fm", ms);
    else if (secs <= 99999999)
        snprintf(out, n, "%.0fS", secs);
    else
        snprintf(out, n, "%.0fM", secs / 60 > 99999999 ? 99999999 : secs / 60);
}

kl_grpc_call *kl_grpc_call_start(kl_grpc_channel *ch, const char *path, kl_buf *req,
                                 double timeout_s, int streaming, const kl_grpc_call_ops *ops,
                                 void *ud, int *code, char *err, size_t errlen)
{
    size_t body = req->len - 5;
    if (body > ch->opt.max_message) {
        *code = KL_GRPC_RESOURCE_EXHAUSTED;
        snprintf(err, errlen, "request message of %zu bytes exceeds the limit of %zu bytes", body,
                 ch->opt.max_message);
        kl_buf_free(req);
        return NULL;
    }
    if (ch->state == CH_TRANSIENT_FAILURE) {
        *code = KL_GRPC_UNAVAILABLE;
        snprintf(err, errlen, "%s (retrying in at most %llu ms)", ch->last_error,
                 (unsigned long long)ch->backoff_ms);
        kl_buf_free(req);
        return NULL;
    }
    kl_grpc_call *call = calloc(1, sizeof *call);
    if (call == NULL) {
        *code = KL_GRPC_RESOURCE_EXHAUSTED;
        snprintf(err, errlen, "out of memory");
        kl_buf_free(req);
        return NULL;
    }
    req->p[0] = 0;
    req->p[1] = (uint8_t)(body >> 24);
    req->p[2] = (uint8_t)(body >> 16);
    req->p[3] = (uint8_t)(body >> 8);
    req->p[4] = (uint8_t)body;
    call->req = *req;
    *req = (kl_buf){0};
    call->ch = ch;
    call->path = path;
    call->ops = ops;
    call->ud = ud;
    call->streaming = streaming;
    if (timeout_s > 0) {
        format_timeout(call->timeout_hdr, sizeof call->timeout_hdr, timeout_s);
        uv_timer_init(ch->loop, &call->timer);
        call->timer.data = call;
        call->has_timer = 1;
        /* the loop's cached clock is stale after a long callback or a
         * blocking caller: the deadline counts from now */
        uv_update_time(ch->loop);
        uv_timer_start(&call->timer, on_deadline, (uint64_t)(timeout_s * 1000.0 + 0.5), 0);
    }
    ch->stats.calls++;
    call_submit(ch, call);
    return call;
}

/* ---------------------------------------------------------------- channel */

static void on_backoff_done(uv_timer_t *t)
{
    kl_grpc_channel *ch = t->data;
    if (ch->state == CH_TRANSIENT_FAILURE)
        ch->state = CH_IDLE;
}

static void on_chan_handle_closed(uv_handle_t *h)
{
    kl_grpc_channel *ch = h->data;
    ch->open_handles--;
    if (ch->open_handles == 0)
        free(ch);
}

static int parse_target(kl_grpc_channel *ch, const char *target, char *err, size_t errlen)
{
    snprintf(ch->target, sizeof ch->target, "%s", target);
    const char *p = NULL;
    if (strncmp(target, "unix://", 7) == 0)
        p = target + 7;
    else if (strncmp(target, "unix:", 5) == 0)
        p = target + 5;
    if (p != NULL) {
        if (*p == '\0' || strlen(p) >= sizeof ch->path) {
            snprintf(err, errlen, "bad unix socket path in \"%s\"", target);
            return -1;
        }
        ch->is_unix = 1;
        snprintf(ch->path, sizeof ch->path, "%s", p);
        return 0;
    }
    if (strncmp(target, "tcp://", 6) == 0)
        target += 6;
    char host[256];
    const char *colon = strrchr(target, ':');
    if (colon == NULL || colon == target || (size_t)(colon - target) >= sizeof host) {
        snprintf(err, errlen, "endpoint \"%s\" is neither unix://PATH nor HOST:PORT", ch->target);
        return -1;
    }
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port <= 0 || port > 65535) {
        snprintf(err, errlen, "bad port in endpoint \"%s\"", ch->target);
        return -1;
    }
    const char *h = host;
    size_t hl = strlen(host);
    if (h[0] == '[' && hl > 2 && h[hl - 1] == ']') {
        host[hl - 1] = '\0';
        h = host + 1;
    }
    if (strcmp(h, "localhost") == 0)
        h = "127.0.0.1";
    if (uv_ip4_addr(h, (int)port, (struct sockaddr_in *)&ch->addr) != 0 &&
        uv_ip6_addr(h, (int)port, (struct sockaddr_in6 *)&ch->addr) != 0) {
        snprintf(err, errlen, "endpoint \"%s\": host must be a numeric address or localhost",
                 ch->target);
        return -1;
    }
    return 0;
}

kl_grpc_channel *kl_grpc_channel_new(uv_loop_t *loop, const char *target,
                                     const kl_grpc_channel_options *opts, char *err, size_t errlen)
{
    kl_grpc_channel *ch = calloc(1, sizeof *ch);
    if (ch == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (parse_target(ch, target, err, errlen) != 0) {
        free(ch);
        return NULL;
    }
    if (opts != NULL)
        ch->opt = *opts;
    if (ch->opt.max_message == 0)
        ch->opt.max_message = KL_GRPC_MAX_MESSAGE;
    if (ch->opt.max_stream_id == 0)
        ch->opt.max_stream_id = 0x7fffffff;
    if (ch->opt.backoff_base_ms == 0)
        ch->opt.backoff_base_ms = 100;
    if (ch->opt.backoff_max_ms == 0)
        ch->opt.backoff_max_ms = 3000;
    ch->loop = loop;
    uv_timer_init(loop, &ch->backoff);
    ch->backoff.data = ch;
    uv_unref((uv_handle_t *)&ch->backoff);
    uv_prepare_init(loop, &ch->flush);
    ch->flush.data = ch;
    uv_unref((uv_handle_t *)&ch->flush);
    ch->open_handles = 2;
    return ch;
}

void kl_grpc_channel_free(kl_grpc_channel *ch)
{
    if (ch == NULL)
        return;
    ch->freeing = 1;
    while (ch->pending != NULL) {
        kl_grpc_call *call = ch->pending;
        ch->pending = call->next;
        call->done = 1;
        call_release(call);
    }
    ch->pending_end = NULL;
    while (ch->conns != NULL) {
        conn *c = ch->conns;
        while (c->calls != NULL) {
            kl_grpc_call *call = c->calls;
            call->done = 1;
            call_detach(call, 0);
            call_release(call);
        }
        c->busy = 0;
        conn_close(c);
    }
    uv_close((uv_handle_t *)&ch->backoff, on_chan_handle_closed);
    uv_close((uv_handle_t *)&ch->flush, on_chan_handle_closed);
}

void kl_grpc_channel_stats(kl_grpc_channel *ch, kl_grpc_stats *out)
{
    *out = ch->stats;
}
