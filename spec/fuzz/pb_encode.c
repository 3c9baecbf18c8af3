/* Fuzz target: Lua tables -> protobuf wire bytes (src/pb/pb.c). The input
 * drives a small builder: the first byte picks the message type, the rest
 * picks keys (field names of the message, near misses and junk keys of
 * every Lua type) and values (the field's own type, or any other: numbers
 * with fractions, NaN and infinities, huge integers, boxed 64-bit integers,
 * decimal strings, nested tables, functions). kl_pb_encode must either
 * succeed or fail with a message and the stack as it was; bytes it produced
 * must decode, and re-encoding the decoded table must give the same bytes. */
#include "fuzz_lua.h"
#include "pb/pb.h"
#include "fuzz_pb.h"

#include <math.h>
#include <string.h>

#define MAX_BUILD_DEPTH 6

typedef struct {
    const uint8_t *p, *end;
} reader;

typedef struct {
    const ProtobufCMessageDescriptor *d;
    reader r;
} input;

static unsigned byte(reader *r)
{
    return r->p < r->end ? *r->p++ : 0;
}

static uint64_t u64(reader *r)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | byte(r);
    return v;
}

static void push_bytes(lua_State *L, reader *r)
{
    size_t n = byte(r) % 24;
    if (n > (size_t)(r->end - r->p))
        n = (size_t)(r->end - r->p);
    lua_pushlstring(L, (const char *)r->p, n);
    r->p += n;
}

/* A boxed integer through the helper stored at registry["fuzz.box"]. */
static void push_boxed(lua_State *L, uint64_t v, int is_unsigned)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.box");
    lua_pushnumber(L, (double)(uint32_t)(v >> 32));
    lua_pushnumber(L, (double)(uint32_t)v);
    lua_pushboolean(L, is_unsigned);
    lua_call(L, 3, 1);
}

static int a_function(lua_State *L)
{
    return 0;
}

static void push_table(lua_State *L, reader *r, const ProtobufCMessageDescriptor *d, int depth);

static void push_any(lua_State *L, reader *r, int depth)
{
    unsigned k = byte(r);
    switch (k % 14) {
    case 0:
        lua_pushboolean(L, k & 16);
        break;
    case 1:
        lua_pushnumber(L, (double)(int64_t)u64(r));
        break;
    case 2: {
        uint64_t bits = u64(r);
        double x;
        memcpy(&x, &bits, sizeof x);
        lua_pushnumber(L, x);
        break;
    }
    case 3:
        lua_pushnumber(L, (double)(int8_t)byte(r));
        break;
    case 4:
        lua_pushnumber(L, (double)(int8_t)byte(r) / 4);
        break;
    case 5:
        push_bytes(L, r);
        break;
    case 6: {
        char s[32];
        if (k & 16)
            snprintf(s, sizeof s, "%llu", (unsigned long long)u64(r));
        else
            snprintf(s, sizeof s, "%lld", (long long)(int64_t)u64(r));
        lua_pushstring(L, s);
        break;
    }
    case 7:
        push_boxed(L, u64(r), k & 16);
        break;
    case 8:
        push_table(L, r, NULL, depth + 1);
        break;
    case 9:
        lua_pushlightuserdata(L, NULL);
        break;
    case 10:
        lua_pushcfunction(L, a_function);
        break;
    case 11: { /* powers of two around the integer limits */
        double x = ldexp(1.0, (int)(byte(r) % 70));
        lua_pushnumber(L, k & 16 ? -x : x);
        break;
    }
    case 12:
        lua_pushnumber(L, (k & 16) ? HUGE_VAL : -HUGE_VAL);
        break;
    default:
        lua_pushnil(L);
        break;
    }
}

/* A value meant for field fd (one element when `element`). */
static void push_typed(lua_State *L, reader *r, const ProtobufCFieldDescriptor *fd, int element,
                       int depth)
{
    unsigned k = byte(r);
    if (k % 5 == 0 || depth > MAX_BUILD_DEPTH) {
        push_any(L, r, depth);
        return;
    }
    if (!element && fd->label == PROTOBUF_C_LABEL_REPEATED) {
        const ProtobufCMessageDescriptor *ed = fd->descriptor;
        int is_map = fd->type == PROTOBUF_C_TYPE_MESSAGE && ed->n_fields == 2 &&
                     strlen(ed->name) > 5 && strcmp(ed->name + strlen(ed->name) - 5, "Entry") == 0;
        unsigned n = byte(r) % 6;
        lua_createtable(L, (int)n, 0);
        for (unsigned i = 1; i <= n; i++) {
            if (is_map)
                push_typed(L, r, &ed->fields[0], 1, depth + 1);
            else if (byte(r) % 8 == 0)
                lua_pushnumber(L, i + 1); /* a hole or a non-array key */
            else
                lua_pushnumber(L, i);
            push_typed(L, r, is_map ? &ed->fields[1] : fd, 1, depth + 1);
            if (lua_isnil(L, -2) || lua_tonumber(L, -2) != lua_tonumber(L, -2)) /* nil, NaN */
                lua_pop(L, 2);
            else
                lua_rawset(L, -3);
        }
        return;
    }
    switch (fd->type) {
    case PROTOBUF_C_TYPE_MESSAGE:
        push_table(L, r, fd->descriptor, depth + 1);
        break;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
        push_bytes(L, r);
        break;
    case PROTOBUF_C_TYPE_BOOL:
        lua_pushboolean(L, k & 8);
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = fd->descriptor;
        if (k & 8)
            lua_pushnumber(L, (double)(int32_t)(uint32_t)u64(r));
        else if (ed->n_values > 0)
            lua_pushstring(L, ed->values[byte(r) % ed->n_values].name);
        else
            lua_pushstring(L, "");
        break;
    }
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        push_any(L, r, depth);
        break;
    default: /* integers */
        switch (k % 4) {
        case 0:
            lua_pushnumber(L, (double)(int32_t)(uint32_t)u64(r));
            break;
        default:
            push_any(L, r, depth);
            break;
        }
    }
}

/* A table for message d (d NULL: any table). */
static void push_table(lua_State *L, reader *r, const ProtobufCMessageDescriptor *d, int depth)
{
    unsigned n = depth > MAX_BUILD_DEPTH ? 0 : byte(r) % 8;
    lua_createtable(L, 0, (int)n);
    for (unsigned i = 0; i < n && r->p < r->end; i++) {
        unsigned k = byte(r);
        const ProtobufCFieldDescriptor *fd = NULL;
        if (d != NULL && d->n_fields > 0 && (k & 3) != 0) {
            fd = &d->fields[byte(r) % d->n_fields];
            lua_pushstring(L, fd->name);
        } else {
            switch ((k >> 2) % 5) {
            case 0:
                push_bytes(L, r);
                break;
            case 1:
                lua_pushnumber(L, (double)(int8_t)byte(r));
                break;
            case 2:
                lua_pushboolean(L, 1);
                break;
            case 3:
                lua_newtable(L);
                break;
            default: /* a near miss: a field name with its first letter upper-cased */
                if (d != NULL && d->n_fields > 0) {
                    char name[128];
                    snprintf(name, sizeof name, "%s", d->fields[byte(r) % d->n_fields].name);
                    name[0] = (char)(name[0] >= 'a' && name[0] <= 'z' ? name[0] - 32 : name[0]);
                    lua_pushstring(L, name);
                } else {
                    lua_pushliteral(L, "x");
                }
            }
        }
        if (fd != NULL)
            push_typed(L, r, fd, 0, depth);
        else
            push_any(L, r, depth);
        if (lua_isnil(L, -1) || lua_isnil(L, -2))
            lua_pop(L, 2);
        else
            lua_rawset(L, -3);
    }
}

static const char BOX_HELPER[] =
    "local ffi = require 'ffi'\n"
    "return function(hi, lo, u)\n"
    "  local v = ffi.new(u and 'uint64_t' or 'int64_t', hi) * 4294967296 + lo\n"
    "  return v\n"
    "end\n";

static void dump(const char *what, const kl_buf *b)
{
    fprintf(stderr, "%s:", what);
    for (size_t i = 0; i < b->len; i++)
        fprintf(stderr, " %02x", b->p[i]);
    fputc('\n', stderr);
}

static int run(lua_State *L)
{
    input *in = lua_touserdata(L, 1);
    if (luaL_loadbuffer(L, BOX_HELPER, sizeof BOX_HELPER - 1, "=box") != 0)
        return lua_error(L);
    lua_call(L, 0, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "fuzz.box");
    kl_pb_ctx *ctx = kl_pb_context(L);
    push_table(L, &in->r, in->d, 0);
    int top = lua_gettop(L);
    char err[512] = "";
    kl_buf b1 = {0}, b2 = {0};
    if (kl_pb_encode(L, ctx, top, in->d, &b1, err, sizeof err) != 0) {
        if (err[0] == '\0')
            FUZZ_FAIL("encode of %s failed without a message", in->d->name);
        if (lua_gettop(L) != top)
            FUZZ_FAIL("failed encode of %s left the stack at %d, was %d", in->d->name,
                      lua_gettop(L), top);
        kl_buf_free(&b1);
        return 0;
    }
    if (lua_gettop(L) != top)
        FUZZ_FAIL("encode of %s left the stack at %d, was %d", in->d->name, lua_gettop(L), top);
    if (kl_pb_decode(L, ctx, in->d, b1.p, b1.len, err, sizeof err) != 0)
        FUZZ_FAIL("%s: encoded bytes (%zu) do not decode: %s", in->d->name, b1.len, err);
    if (kl_pb_encode(L, ctx, -1, in->d, &b2, err, sizeof err) != 0)
        FUZZ_FAIL("%s: the decoded table does not encode: %s", in->d->name, err);
    if (b1.len != b2.len || (b1.len > 0 && memcmp(b1.p, b2.p, b1.len) != 0)) {
        dump("first", &b1);
        dump("then", &b2);
        FUZZ_FAIL("%s: encode(decode(bytes)) differs (%zu bytes, then %zu)", in->d->name, b1.len,
                  b2.len);
    }
    kl_buf_free(&b1);
    kl_buf_free(&b2);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    input in = {fuzz_message(data[0]), {data + 1, data + size}};
    lua_State *L = fuzz_new_state();
    if (lua_cpcall(L, run, &in) != 0) {
        const char *msg = lua_tostring(L, -1);
        if (msg == NULL || strstr(msg, "not enough memory") == NULL)
            FUZZ_FAIL("encode of %s threw: %s", in.d->name, msg ? msg : "(not a string)");
    }
    lua_close(L);
    return 0;
}
