/* Fuzz target: the gRPC client's response reader (src/grpc/grpc.c) over a
 * real unix socket. An in-process HTTP/2 server (a second nghttp2 session
 * on the same libuv loop) answers one call with the fuzz payload as its
 * DATA, cut into DATA frames of fuzz-chosen sizes, then trailers.
 *
 * Input: [flags][grpc-status][nsplits][split sizes...][payload...]
 *   flags bit 0: server-streaming call      bit 1: send trailers
 *         bit 2: max_message 64 bytes       bit 3: the call has a deadline
 *         bit 4: cancel the call inside on_message (a Lua task closing a
 *                stream as soon as a message arrives)
 * Checks: on_done exactly once; every message delivered is the next one
 * that the 5-byte length prefixes of the payload describe; a well-formed
 * payload with grpc-status 0 ends OK, and OK is only reported for one;
 * after the channel is freed the loop closes with no handle left. */
#include "fuzz_lua.h"
#include "grpc/grpc.h"

#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define SMALL_MAX 64

typedef struct {
    uv_loop_t loop;
    uv_pipe_t listener, peer;
    int peer_open;
    nghttp2_session *srv;
    int32_t stream_id;
    int responded;
    /* the plan */
    int streaming, trailers, status, has_deadline;
    size_t max_message;
    const uint8_t *splits;
    size_t nsplits, split_i;
    const uint8_t *payload;
    size_t len, off;
    /* what the client saw */
    kl_grpc_call *call;
    int cancel_in_callback, cancelled;
    int done, code;
    char message[640];
    size_t nmsgs, ref_off; /* next message expected at payload + ref_off */
    char rbuf[65536];      /* the server's reads */
} fz;

/* ------------------------------------------------------------ the server */

static void on_written(uv_write_t *w, int status)
{
    free(w);
}

static void server_flush(fz *z)
{
    if (!z->peer_open)
        return;
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(z->srv, &data);
        if (n <= 0)
            return;
        uv_write_t *w = malloc(sizeof *w + (size_t)n);
        if (w == NULL)
            abort();
        memcpy(w + 1, data, (size_t)n);
        uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)n);
        if (uv_write(w, (uv_stream_t *)&z->peer, &b, 1, on_written) != 0)
            free(w);
    }
}

static ssize_t read_payload(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t cap,
                            uint32_t *flags, nghttp2_data_source *src, void *user)
{
    fz *z = user;
    size_t n = z->len - z->off;
    if (z->nsplits > 0) {
        size_t want = (size_t)z->splits[z->split_i++ % z->nsplits] * 37 + 1;
        n = n < want ? n : want;
    }
    n = n < cap ? n : cap;
    memcpy(buf, z->payload + z->off, n);
    z->off += n;
    if (z->off == z->len) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (z->trailers) {
            char st[16];
            snprintf(st, sizeof st, "%d", z->status);
            nghttp2_nv tr[] = {
                {(uint8_t *)"grpc-status", (uint8_t *)st, 11, strlen(st), NGHTTP2_NV_FLAG_NONE},
                {(uint8_t *)"grpc-message", (uint8_t *)"fuzz%20status", 12, 13,
                 NGHTTP2_NV_FLAG_NONE},
            };
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            if (nghttp2_submit_trailer(s, sid, tr, 2) != 0)
                abort();
        }
    }
    return (ssize_t)n;
}

static int on_request_frame(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    fz *z = user;
    if (z->responded || f->hd.stream_id == 0 || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    z->responded = 1;
    z->stream_id = f->hd.stream_id;
    nghttp2_nv hd[] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider prd = {.read_callback = read_payload};
    if (nghttp2_submit_response(s, f->hd.stream_id, hd, 2, &prd) != 0)
        abort();
    return 0;
}

static void server_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    fz *z = h->data;
    *buf = uv_buf_init(z->rbuf, sizeof z->rbuf);
}

static void server_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    fz *z = st->data;
    if (n < 0) {
        uv_read_stop(st);
        return;
    }
    if (nghttp2_session_mem_recv(z->srv, (const uint8_t *)buf->base, (size_t)n) < 0)
        return;
    server_flush(z);
}

static void on_connection(uv_stream_t *l, int status)
{
    fz *z = l->data;
    if (status != 0 || z->peer_open)
        return;
    uv_pipe_init(&z->loop, &z->peer, 0);
    z->peer.data = z;
    if (uv_accept(l, (uv_stream_t *)&z->peer) != 0)
        abort();
    z->peer_open = 1;
    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_request_frame);
    if (nghttp2_session_server_new(&z->srv, cbs, z) != 0)
        abort();
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(z->srv, NGHTTP2_FLAG_NONE, NULL, 0);
    uv_read_start((uv_stream_t *)&z->peer, server_alloc, server_read);
    server_flush(z);
}

/* ------------------------------------------------------------ the client */

static void on_message(void *ud, const uint8_t *msg, size_t len)
{
    fz *z = ud;
    if (z->done || z->cancelled)
        FUZZ_FAIL("a message after on_done or kl_grpc_call_cancel");
    /* the reference: the next length-prefixed message of the payload */
    size_t at = z->ref_off;
    if (at + 5 > z->len)
        FUZZ_FAIL("message %zu delivered beyond the payload's prefixes", z->nmsgs + 1);
    const uint8_t *h = z->payload + at;
    size_t want = (size_t)h[1] << 24 | (size_t)h[2] << 16 | (size_t)h[3] << 8 | h[4];
    if (h[0] != 0 || want > z->max_message || want != len || at + 5 + want > z->len ||
        (len > 0 && memcmp(msg, h + 5, len) != 0))
        FUZZ_FAIL("message %zu (%zu bytes) is not the payload's (flag %u, %zu bytes at %zu)",
                  z->nmsgs + 1, len, h[0], want, at);
    z->ref_off = at + 5 + want;
    z->nmsgs++;
    if (z->cancel_in_callback) { /* a policy that stops reading a stream at once */
        z->cancelled = 1;
        kl_grpc_call_cancel(z->call);
    }
}

static void on_done(void *ud, int code, const char *message)
{
    fz *z = ud;
    if (z->cancelled)
        FUZZ_FAIL("on_done after kl_grpc_call_cancel");
    if (z->done++)
        FUZZ_FAIL("on_done called twice");
    z->code = code;
    snprintf(z->message, sizeof z->message, "%s", message ? message : "(null)");
}

static const kl_grpc_call_ops ops = {on_message, on_done};

/* Does the payload hold exactly complete, uncompressed messages within the
 * limit (and one for a unary call)? */
static int well_formed(const fz *z)
{
    size_t at = 0, n = 0;
    while (at < z->len) {
        if (z->len - at < 5)
            return 0;
        const uint8_t *h = z->payload + at;
        size_t m = (size_t)h[1] << 24 | (size_t)h[2] << 16 | (size_t)h[3] << 8 | h[4];
        if (h[0] != 0 || m > z->max_message || m > z->len - at - 5)
            return 0;
        at += 5 + m;
        n++;
    }
    return z->streaming || n == 1;
}

static void close_cb(uv_handle_t *h) {}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    fz z;
    memset(&z, 0, sizeof z);
    z.streaming = data[0] & 1;
    z.trailers = (data[0] >> 1) & 1;
    z.max_message = data[0] & 4 ? SMALL_MAX : KL_GRPC_MAX_MESSAGE;
    z.has_deadline = (data[0] >> 3) & 1;
    /* Cancelling from inside on_message once freed the call under
     * on_data_chunk (regress/cancel_inside_on_message). */
    z.cancel_in_callback = (data[0] >> 4) & 1;
    z.status = data[1] % 17;
    z.nsplits = data[2];
    if (3 + z.nsplits > size)
        z.nsplits = size - 3;
    z.splits = data + 3;
    z.payload = data + 3 + z.nsplits;
    z.len = size - 3 - z.nsplits;

    char path[64];
    snprintf(path, sizeof path, "/tmp/kl-fuzz-grpc-%d.sock", (int)getpid());
    unlink(path);
    if (uv_loop_init(&z.loop) != 0)
        abort();
    uv_pipe_init(&z.loop, &z.listener, 0);
    z.listener.data = &z;
    if (uv_pipe_bind(&z.listener, path) != 0 ||
        uv_listen((uv_stream_t *)&z.listener, 4, on_connection) != 0)
        FUZZ_FAIL("cannot listen on %s", path);

    char target[80], err[512];
    snprintf(target, sizeof target, "unix://%s", path);
    kl_grpc_channel_options opt = {.max_message = z.max_message};
    kl_grpc_channel *ch = kl_grpc_channel_new(&z.loop, target, &opt, err, sizeof err);
    if (ch == NULL)
        FUZZ_FAIL("channel: %s", err);
    kl_buf req = {0};
    if (kl_buf_reserve(&req, 8) != 0)
        abort();
    memcpy(req.p, "\0\0\0\0\0\x0a\x01x", 8); /* prefix room + a small body */
    req.len = 8;
    int code;
    kl_grpc_call *call =
        kl_grpc_call_start(ch, "/runtime.v1.RuntimeService/Version", &req, z.has_deadline ? 5.0 : 0,
                           z.streaming, &ops, &z, &code, err, sizeof err);
    if (call == NULL)
        FUZZ_FAIL("call_start: %d %s", code, err);
    z.call = call;
    for (int turns = 0; !z.done && !z.cancelled; turns++) {
        uv_run(&z.loop, UV_RUN_ONCE);
        if (turns > 100000)
            FUZZ_FAIL("the call never ended");
    }

    int ok_expected = !z.cancelled && well_formed(&z) && z.trailers && z.status == 0;
    if (!z.cancelled && z.code == KL_GRPC_OK && !ok_expected)
        FUZZ_FAIL("OK for a response that is not well formed (status %d, trailers %d, %zu "
                  "messages, streaming %d)",
                  z.status, z.trailers, z.nmsgs, z.streaming);
    if (ok_expected && z.code != KL_GRPC_OK)
        FUZZ_FAIL("a well-formed response failed: %s: %s", kl_grpc_code_name(z.code), z.message);
    if (!z.cancelled && z.code == KL_GRPC_OK && z.ref_off != z.len)
        FUZZ_FAIL("OK, but %zu of %zu payload bytes delivered", z.ref_off, z.len);

    kl_grpc_channel_free(ch);
    if (z.peer_open)
        uv_close((uv_handle_t *)&z.peer, close_cb);
    uv_close((uv_handle_t *)&z.listener, close_cb);
    uv_run(&z.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&z.loop) != 0)
        FUZZ_FAIL("handles left open on the loop");
    if (z.srv != NULL)
        nghttp2_session_del(z.srv);
    unlink(path);
    return 0;
}
