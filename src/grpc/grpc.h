/* gRPC client over HTTP/2 (nghttp2) on libuv streams.
 *
 * A channel is one endpoint (unix socket or TCP). It keeps one HTTP/2
 * connection and multiplexes every call on it; output is coalesced into one
 * write per loop turn. When the server goes away, calls in flight fail with
 * UNAVAILABLE and the next call reconnects; failed connects back off (100 ms
 * growing to 3 s) and calls made meanwhile fail fast with UNAVAILABLE.
 * On GOAWAY the connection drains and refused calls are retried on a new
 * one; a new connection is also opened before stream IDs run out.
 *
 * Callbacks are never called from inside kl_grpc_call_start, and never
 * after kl_grpc_call_cancel. They run inside the loop; they must not free
 * the channel (defer that to a later turn).
 */
#ifndef KL_GRPC_H
#define KL_GRPC_H

#include "pb/pb.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum kl_grpc_code {
    KL_GRPC_OK = 0,
    KL_GRPC_CANCELLED = 1,
    KL_GRPC_UNKNOWN = 2,
    KL_GRPC_INVALID_ARGUMENT = 3,
    KL_GRPC_DEADLINE_EXCEEDED = 4,
    KL_GRPC_NOT_FOUND = 5,
    KL_GRPC_ALREADY_EXISTS = 6,
    KL_GRPC_PERMISSION_DENIED = 7,
    KL_GRPC_RESOURCE_EXHAUSTED = 8,
    KL_GRPC_FAILED_PRECONDITION = 9,
    KL_GRPC_ABORTED = 10,
    KL_GRPC_OUT_OF_RANGE = 11,
    KL_GRPC_UNIMPLEMENTED = 12,
    KL_GRPC_INTERNAL = 13,
    KL_GRPC_UNAVAILABLE = 14,
    KL_GRPC_DATA_LOSS = 15,
    KL_GRPC_UNAUTHENTICATED = 16,
};

/* "UNAVAILABLE" etc.; "UNKNOWN" for codes out of range. */
const char *kl_grpc_code_name(int code);

#define KL_GRPC_MAX_MESSAGE (16u << 20) /* 16 MiB, either direction (kubelet's limit) */

typedef struct kl_grpc_channel kl_grpc_channel;
typedef struct kl_grpc_call kl_grpc_call;

typedef struct kl_grpc_channel_options {
    size_t max_message;       /* 0: KL_GRPC_MAX_MESSAGE */
    uint32_t max_stream_id;   /* 0: 2^31-1; a new connection is opened past it */
    uint64_t backoff_base_ms; /* 0: 100 */
    uint64_t backoff_max_ms;  /* 0: 3000 */
} kl_grpc_channel_options;

typedef struct kl_grpc_call_ops {
    /* One complete response message (without the 5-byte prefix). */
    void (*on_message)(void *ud, const uint8_t *msg, size_t len);
    /* The call ended; exactly once unless cancelled. */
    void (*on_done)(void *ud, int code, const char *message);
} kl_grpc_call_ops;

/* target: "unix:///path", "unix:/path", "unix:path", "tcp://host:port" or
 * "host:port" (host numeric or "localhost"). NULL + err when malformed. */
kl_grpc_channel *kl_grpc_channel_new(uv_loop_t *loop, const char *target,
                                     const kl_grpc_channel_options *opts, char *err, size_t errlen);

/* Cancel every call silently and close; memory is released once the loop
 * has closed the handles. */
void kl_grpc_channel_free(kl_grpc_channel *ch);

/* Start a call. `req` holds 5 reserved bytes followed by the encoded
 * request; the call takes it over (and frees it, also on failure).
 * timeout_s <= 0: no deadline. `streaming`: server-streaming (zero or more
 * messages); unary calls must get exactly one.
 * Returns NULL when the call fails at once: *code and err say why, and no
 * callback will be made. */
kl_grpc_call *kl_grpc_call_start(kl_grpc_channel *ch, const char *path, kl_buf *req,
                                 double timeout_s, int streaming, const kl_grpc_call_ops *ops,
                                 void *ud, int *code, char *err, size_t errlen);

/* Abandon a call: RST_STREAM(CANCEL) to the server, no more callbacks. */
void kl_grpc_call_cancel(kl_grpc_call *c);

typedef struct kl_grpc_stats {
    uint64_t connects; /* connections opened */
    uint64_t writes;   /* socket writes (coalesced frames) */
    uint64_t calls;    /* calls started */
} kl_grpc_stats;

void kl_grpc_channel_stats(kl_grpc_channel *ch, kl_grpc_stats *out);

#endif
