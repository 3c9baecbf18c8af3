/* Descriptor-driven conversion between protobuf wire bytes and Lua tables.
 *
 * Decoding walks the wire bytes once, guided by protobuf-c's message
 * descriptors, and builds Lua tables directly (no intermediate C structs).
 * Encoding walks a Lua table in descriptor order and writes wire bytes.
 *
 * Mapping (both directions):
 *   string            Lua string
 *   bytes             Lua string
 *   bool              boolean
 *   int32/uint32/...  number
 *   int64/uint64/...  number when |v| <= 2^53 (exact), else a LuaJIT boxed
 *                     integer (int64_t / uint64_t cdata); encoding accepts
 *                     numbers (integral), boxed integers and decimal strings
 *   float/double      number
 *   enum              the value's name ("CONTAINER_RUNNING"); an unknown
 *                     number decodes as that number; encoding accepts either
 *   message           table (absent message fields decode as nil)
 *   repeated          array table (absent: empty table)
 *   map<k,v>          table keyed by k (absent: empty table)
 * Absent scalar fields decode to their proto3 default ("" / 0 / false /
 * the enum's zero name), so `c.state` is always set.
 */
#ifndef KL_PB_H
#define KL_PB_H

#include <lua.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#define KL_PB_MAX_DEPTH 64
#define KL_PB_MAX_FIELDS 64

typedef struct kl_pb_ctx kl_pb_ctx;

typedef struct {
    uint8_t *p;
    size_t len, cap;
} kl_buf;

/* Grow so that `extra` more bytes fit; returns -1 when out of memory. */
int kl_buf_reserve(kl_buf *b, size_t extra);
void kl_buf_free(kl_buf *b);

/* The per-state conversion context (created on first use, kept in the
 * registry; it holds the helpers that box 64-bit integers). */
kl_pb_ctx *kl_pb_context(lua_State *L);

/* Decode `len` bytes as message `d`; on success push one table and return
 * 0; on failure push nothing, write a message naming the message and field
 * into err and return -1. */
int kl_pb_decode(lua_State *L, kl_pb_ctx *ctx, const ProtobufCMessageDescriptor *d,
                 const uint8_t *buf, size_t len, char *err, size_t errlen);

/* Append the encoding of the table at `idx` as message `d` to `b`; on
 * failure return -1 with err naming the message, the field path and why. */
int kl_pb_encode(lua_State *L, kl_pb_ctx *ctx, int idx, const ProtobufCMessageDescriptor *d,
                 kl_buf *b, char *err, size_t errlen);

/* Wire-level helpers for code that walks messages itself (e.g. the relist
 * fast path). Both return the position after what they read, or NULL when
 * the bytes end early or are malformed. */
const uint8_t *kl_pb_read_varint(const uint8_t *p, const uint8_t *end, uint64_t *out);
/* Skip one field value of wire type `wt`; for length-delimited fields the
 * value's bytes are returned through val and len (both may be NULL). */
const uint8_t *kl_pb_skip_value(const uint8_t *p, const uint8_t *end, int wt, const uint8_t **val,
                                size_t *len);

/* Look up a message descriptor of the compiled protos by full name
 * ("runtime.v1.Container"); NULL when unknown. */
const ProtobufCMessageDescriptor *kl_pb_find(const char *full_name);

/* Every message descriptor of the compiled protos (NULL-terminated). */
extern const ProtobufCMessageDescriptor *const kl_pb_all_messages[];
extern const ProtobufCServiceDescriptor *const kl_pb_all_services[];
/* Names ("Service/Method") of the server-streaming RPCs (NULL-terminated). */
extern const char *const kl_pb_streaming_rpcs[];

#endif
