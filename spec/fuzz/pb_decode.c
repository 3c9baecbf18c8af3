/* Fuzz target: protobuf wire bytes -> Lua tables (src/pb/pb.c), over every
 * message type. The first byte picks the type from kl_pb_all_messages; the
 * rest is decoded. A decoded table must encode, the encoding must decode,
 * and encoding that again must give the same bytes (the round trip is
 * stable). A rejected input must leave a message and the stack unchanged. */
#include "fuzz_lua.h"
#include "pb/pb.h"
#include "fuzz_pb.h"

#include <string.h>

typedef struct {
    const ProtobufCMessageDescriptor *d;
    const uint8_t *data;
    size_t size;
} input;

static void encode_top(lua_State *L, kl_pb_ctx *ctx, const input *in, kl_buf *b, const char *what)
{
    char err[512] = "";
    int top = lua_gettop(L);
    if (kl_pb_encode(L, ctx, -1, in->d, b, err, sizeof err) != 0)
        FUZZ_FAIL("%s: %s does not encode: %s", what, in->d->name, err);
    if (lua_gettop(L) != top)
        FUZZ_FAIL("%s: encode left the stack at %d, was %d", what, lua_gettop(L), top);
}

static int run(lua_State *L)
{
    const input *in = lua_touserdata(L, 1);
    kl_pb_ctx *ctx = kl_pb_context(L);
    char err[512] = "";
    int top = lua_gettop(L);
    if (kl_pb_decode(L, ctx, in->d, in->data, in->size, err, sizeof err) != 0) {
        if (err[0] == '\0' || memchr(err, '\0', sizeof err) == NULL)
            FUZZ_FAIL("decode of %s failed without a message", in->d->name);
        if (lua_gettop(L) != top)
            FUZZ_FAIL("failed decode of %s left %d values", in->d->name, lua_gettop(L) - top);
        return 0;
    }
    if (lua_gettop(L) != top + 1 || !lua_istable(L, -1))
        FUZZ_FAIL("decode of %s did not push one table", in->d->name);

    kl_buf b1 = {0}, b2 = {0};
    encode_top(L, ctx, in, &b1, "first encode");
    if (kl_pb_decode(L, ctx, in->d, b1.p, b1.len, err, sizeof err) != 0)
        FUZZ_FAIL("%s: our own encoding (%zu bytes) does not decode: %s", in->d->name, b1.len, err);
    encode_top(L, ctx, in, &b2, "second encode");
    if (b1.len != b2.len || (b1.len > 0 && memcmp(b1.p, b2.p, b1.len) != 0))
        FUZZ_FAIL("%s: round trip not stable (%zu bytes, then %zu)", in->d->name, b1.len, b2.len);
    kl_buf_free(&b1);
    kl_buf_free(&b2);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    input in = {fuzz_message(data[0]), data + 1, size - 1};
    lua_State *L = fuzz_new_state();
    if (lua_cpcall(L, run, &in) != 0) {
        const char *msg = lua_tostring(L, -1);
        if (msg == NULL || strstr(msg, "not enough memory") == NULL)
            FUZZ_FAIL("decode of %s threw: %s", in.d->name, msg ? msg : "(not a string)");
    }
    lua_close(L);
    return 0;
}
