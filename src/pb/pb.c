/* Descriptor-driven protobuf <-> Lua conversion (see pb.h for the mapping). */
#include "pb/pb.h"

#include <errno.h>
#include <lauxlib.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LUA_TCDATA 10 /* LuaJIT's type tag for FFI cdata */

struct kl_pb_ctx {
    int box_i64_ref; /* function() return scratch_i64[0] end */
    int box_u64_ref;
    int unbox_ref; /* function(v) -> 1 int64_t, 2 uint64_t (stored in scratch), 0 neither */
    int64_t *scratch_i64;
    uint64_t *scratch_u64;
};

static const char CTX_KEY[] = "kubelua.pb.ctx";

/* Lua side of 64-bit boxing: C writes into / reads from FFI scratch cells. */
static const char BOX_CODE[] =
    "local ffi = require('ffi')\n"
    "local si, su = ffi.new('int64_t[1]'), ffi.new('uint64_t[1]')\n"
    "local i64, u64 = ffi.typeof('int64_t'), ffi.typeof('uint64_t')\n"
    "return si, su,\n"
    "  function() return si[0] end,\n"
    "  function() return su[0] end,\n"
    "  function(v)\n"
    "    if ffi.istype(i64, v) then si[0] = v return 1 end\n"
    "    if ffi.istype(u64, v) then su[0] = v ffi.copy(si, su, 8) return 2 end\n"
    "    return 0\n"
    "  end\n";

/* ----------------------------------------------------------------- buffer */

int kl_buf_reserve(kl_buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (p == NULL)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

void kl_buf_free(kl_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---------------------------------------------------------------- context */

kl_pb_ctx *kl_pb_context(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, CTX_KEY);
    kl_pb_ctx *ctx = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (ctx != NULL)
        return ctx;
    if (luaL_loadbuffer(L, BOX_CODE, sizeof BOX_CODE - 1, "=kubelua.pb.box") != 0 ||
        lua_pcall(L, 0, 5, 0) != 0)
        luaL_error(L, "kubelua.pb: cannot set up 64-bit integers: %s", lua_tostring(L, -1));
    ctx = lua_newuserdata(L, sizeof *ctx);
    lua_setfield(L, LUA_REGISTRYINDEX, CTX_KEY);
    ctx->unbox_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ctx->box_u64_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ctx->box_i64_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ctx->scratch_u64 = (uint64_t *)lua_topointer(L, -1);
    lua_pushlightuserdata(L, ctx); /* keep the cells alive: registry[ctx] = {si, su} */
    lua_createtable(L, 2, 0);
    lua_pushvalue(L, -4);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, -3);
    lua_rawseti(L, -2, 2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    ctx->scratch_i64 = (int64_t *)lua_topointer(L, -2);
    lua_pop(L, 2);
    return ctx;
}

#define EXACT_LIMIT 9007199254740992LL /* 2^53 */

static void push_i64(lua_State *L, kl_pb_ctx *ctx, int64_t v)
{
    if (v >= -EXACT_LIMIT && v <= EXACT_LIMIT) {
        lua_pushnumber(L, (lua_Number)v);
        return;
    }
    *ctx->scratch_i64 = v;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->box_i64_ref);
    lua_call(L, 0, 1);
}

static void push_u64(lua_State *L, kl_pb_ctx *ctx, uint64_t v)
{
    if (v <= (uint64_t)EXACT_LIMIT) {
        lua_pushnumber(L, (lua_Number)v);
        return;
    }
    *ctx->scratch_u64 = v;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->box_u64_ref);
    lua_call(L, 0, 1);
}

/* ------------------------------------------------------------------ wire */

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

static const uint8_t *read_varint(const uint8_t *p, const uint8_t *end, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && p < end; shift += 7) {
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return p;
        }
    }
    return NULL;
}

const uint8_t *kl_pb_read_varint(const uint8_t *p, const uint8_t *end, uint64_t *out)
{
    return read_varint(p, end, out);
}

const uint8_t *kl_pb_skip_value(const uint8_t *p, const uint8_t *end, int wt, const uint8_t **val,
                                size_t *len)
{
    uint64_t v;
    switch (wt) {
    case WT_VARINT:
        return read_varint(p, end, &v);
    case WT_I64:
        return end - p >= 8 ? p + 8 : NULL;
    case WT_I32:
        return end - p >= 4 ? p + 4 : NULL;
    case WT_LEN:
        p = read_varint(p, end, &v);
        if (p == NULL || v > (uint64_t)(end - p))
            return NULL;
        if (val != NULL) {
            *val = p;
            *len = (size_t)v;
        }
        return p + v;
    default:
        return NULL;
    }
}

static int expected_wire_type(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
        return WT_I32;
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return WT_I64;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
    case PROTOBUF_C_TYPE_MESSAGE:
        return WT_LEN;
    default:
        return WT_VARINT;
    }
}

static int is_map_entry(const ProtobufCFieldDescriptor *fd)
{
    if (fd->type != PROTOBUF_C_TYPE_MESSAGE || fd->label != PROTOBUF_C_LABEL_REPEATED)
        return 0;
    const ProtobufCMessageDescriptor *md = fd->descriptor;
    size_t n = strlen(md->name);
    return md->n_fields == 2 && md->fields[0].id == 1 && md->fields[1].id == 2 && n > 5 &&
           strcmp(md->name + n - 5, "Entry") == 0;
}

typedef struct {
    lua_State *L;
    kl_pb_ctx *ctx;
    char *err;
    size_t errlen;
} dec;

static int dec_fail(dec *D, const ProtobufCMessageDescriptor *d, const char *field, const char *fmt,
                    ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (field != NULL)
        snprintf(D->err, D->errlen, "%s.%s: %s", d->name, field, why);
    else
        snprintf(D->err, D->errlen, "%s: %s", d->name, why);
    return -1;
}

static int decode_message(dec *D, const ProtobufCMessageDescriptor *d, const uint8_t *p,
                          const uint8_t *end, int depth);

static void push_default(dec *D, const ProtobufCFieldDescriptor *fd)
{
    lua_State *L = D->L;
    switch (fd->type) {
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
        lua_pushliteral(L, "");
        break;
    case PROTOBUF_C_TYPE_BOOL:
        lua_pushboolean(L, 0);
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(fd->descriptor, 0);
        if (ev != NULL)
            lua_pushstring(L, ev->name);
        else
            lua_pushnumber(L, 0);
        break;
    }
    default:
        lua_pushnumber(L, 0);
        break;
    }
}

/* Push one scalar (or nested message) value read at *pp with wire type wt. */
static int push_value(dec *D, const ProtobufCMessageDescriptor *d,
                      const ProtobufCFieldDescriptor *fd, int wt, const uint8_t **pp,
                      const uint8_t *end, int depth)
{
    lua_State *L = D->L;
    const uint8_t *p = *pp;
    uint64_t v = 0;
    if (wt == WT_VARINT) {
        if ((p = read_varint(p, end, &v)) == NULL)
            return dec_fail(D, d, fd->name, "truncated varint");
    } else if (wt == WT_I32) {
        if (end - p < 4)
            return dec_fail(D, d, fd->name, "truncated fixed32");
        uint32_t u;
        memcpy(&u, p, 4);
        v = u;
        p += 4;
    } else if (wt == WT_I64) {
        if (end - p < 8)
            return dec_fail(D, d, fd->name, "truncated fixed64");
        memcpy(&v, p, 8);
        p += 8;
    } else { /* WT_LEN */
        if ((p = read_varint(p, end, &v)) == NULL || v > (uint64_t)(end - p))
            return dec_fail(D, d, fd->name, "length beyond the end of the message");
    }
    switch (fd->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        lua_pushnumber(L, (int32_t)(uint32_t)v);
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        lua_pushnumber(L, (uint32_t)v);
        break;
    case PROTOBUF_C_TYPE_SINT32: {
        uint32_t u = (uint32_t)v;
        lua_pushnumber(L, (int32_t)((u >> 1) ^ (~(u & 1) + 1)));
        break;
    }
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        push_i64(L, D->ctx, (int64_t)v);
        break;
    case PROTOBUF_C_TYPE_SINT64:
        push_i64(L, D->ctx, (int64_t)((v >> 1) ^ (~(v & 1) + 1)));
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        push_u64(L, D->ctx, v);
        break;
    case PROTOBUF_C_TYPE_FLOAT: {
        uint32_t u = (uint32_t)v;
        float f;
        memcpy(&f, &u, 4);
        lua_pushnumber(L, f);
        break;
    }
    case PROTOBUF_C_TYPE_DOUBLE: {
        double f;
        memcpy(&f, &v, 8);
        lua_pushnumber(L, f);
        break;
    }
    case PROTOBUF_C_TYPE_BOOL:
        lua_pushboolean(L, v != 0);
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *ev =
            protobuf_c_enum_descriptor_get_value(fd->descriptor, (int)(int32_t)v);
        if (ev != NULL)
            lua_pushstring(L, ev->name);
        else
            lua_pushnumber(L, (int32_t)v);
        break;
    }
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
        lua_pushlstring(L, (const char *)p, (size_t)v);
        p += v;
        break;
    case PROTOBUF_C_TYPE_MESSAGE:
        if (decode_message(D, fd->descriptor, p, p + v, depth + 1) != 0)
            return -1;
        p += v;
        break;
    }
    *pp = p;
    return 0;
}

/* A map entry: key (1) and value (2), each may be absent (then default). */
static int decode_map_entry(dec *D, const ProtobufCMessageDescriptor *d,
                            const ProtobufCFieldDescriptor *fd, const uint8_t *p,
                            const uint8_t *end, int map_idx, int depth)
{
    lua_State *L = D->L;
    const ProtobufCMessageDescriptor *ed = fd->descriptor;
    int top = lua_gettop(L);
    int have_key = 0, have_val = 0;
    lua_pushnil(L); /* key slot   top+1 */
    lua_pushnil(L); /* value slot top+2 */
    while (p < end) {
        uint64_t tag;
        if ((p = read_varint(p, end, &tag)) == NULL)
            return lua_settop(L, top), dec_fail(D, d, fd->name, "truncated map entry");
        int num = (int)(tag >> 3), wt = (int)(tag & 7);
        const ProtobufCFieldDescriptor *f = num == 1   ? &ed->fields[0]
                                            : num == 2 ? &ed->fields[1]
                                                       : NULL;
        if (f == NULL || wt != expected_wire_type(f->type))
            return lua_settop(L, top), dec_fail(D, d, fd->name, "bad map entry field %d", num);
        if (push_value(D, d, f, wt, &p, end, depth) != 0)
            return lua_settop(L, top), -1;
        lua_replace(L, top + num);
        if (num == 1)
            have_key = 1;
        else
            have_val = 1;
    }
    if (!have_key) {
        push_default(D, &ed->fields[0]);
        lua_replace(L, top + 1);
    }
    if (!have_val) {
        if (ed->fields[1].type == PROTOBUF_C_TYPE_MESSAGE)
            lua_newtable(L);
        else
            push_default(D, &ed->fields[1]);
        lua_replace(L, top + 2);
    }
    lua_rawset(L, map_idx);
    return 0;
}

/* Count how often each repeated field occurs, so its table is allocated at
 * its final size instead of growing (and rehashing) entry by entry. */
static void prescan(const ProtobufCMessageDescriptor *d, const uint8_t *p, const uint8_t *end,
                    int *expect)
{
    for (unsigned i = 0; i < d->n_fields; i++)
        expect[i] = 0;
    while (p != NULL && p < end) {
        uint64_t tag;
        if ((p = read_varint(p, end, &tag)) == NULL)
            return;
        p = kl_pb_skip_value(p, end, (int)(tag & 7), NULL, NULL);
        const ProtobufCFieldDescriptor *fd =
            tag >> 3 ? protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3)) : NULL;
        if (fd != NULL && fd->label == PROTOBUF_C_LABEL_REPEATED)
            expect[fd - d->fields]++;
    }
}

static int decode_message(dec *D, const ProtobufCMessageDescriptor *d, const uint8_t *p,
                          const uint8_t *end, int depth)
{
    lua_State *L = D->L;
    if (depth > KL_PB_MAX_DEPTH)
        return dec_fail(D, d, NULL, "nested deeper than %d", KL_PB_MAX_DEPTH);
    if (d->n_fields > KL_PB_MAX_FIELDS)
        return dec_fail(D, d, NULL, "more than %d fields", KL_PB_MAX_FIELDS);
    if (!lua_checkstack(L, (int)d->n_fields + 8))
        return dec_fail(D, d, NULL, "Lua stack exhausted");
    int top = lua_gettop(L);
    lua_createtable(L, 0, (int)d->n_fields);
    int t = top + 1;
    /* Repeated fields: their array table sits on the stack at slot[i]. */
    int slot[KL_PB_MAX_FIELDS];
    int count[KL_PB_MAX_FIELDS];
    int expect[KL_PB_MAX_FIELDS]; /* occurrences, to size tables once */
    uint64_t seen = 0;
    prescan(d, p, end, expect);

    while (p < end) {
        uint64_t tag;
        if ((p = read_varint(p, end, &tag)) == NULL)
            return lua_settop(L, top), dec_fail(D, d, NULL, "truncated tag");
        int num = (int)(tag >> 3), wt = (int)(tag & 7);
        const ProtobufCFieldDescriptor *fd =
            num > 0 ? protobuf_c_message_descriptor_get_field(d, (unsigned)num) : NULL;
        if (fd == NULL) { /* unknown field: skip it */
            if ((p = kl_pb_skip_value(p, end, wt, NULL, NULL)) == NULL)
                return lua_settop(L, top), dec_fail(D, d, NULL, "bad unknown field %d", num);
            continue;
        }
        int i = (int)(fd - d->fields);
        int want = expected_wire_type(fd->type);
        if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
            if (!(seen & (1ULL << i))) {
                seen |= 1ULL << i;
                if (is_map_entry(fd))
                    lua_createtable(L, 0, expect[i]);
                else
                    lua_createtable(L, expect[i], 0);
                lua_pushvalue(L, -1);
                lua_setfield(L, t, fd->name);
                slot[i] = lua_gettop(L);
                count[i] = 0;
            }
            if (is_map_entry(fd)) {
                uint64_t len;
                if (wt != WT_LEN || (p = read_varint(p, end, &len)) == NULL ||
                    len > (uint64_t)(end - p))
                    return lua_settop(L, top), dec_fail(D, d, fd->name, "bad map entry");
                if (decode_map_entry(D, d, fd, p, p + len, slot[i], depth) != 0)
                    return lua_settop(L, top), -1;
                p += len;
            } else if (wt == WT_LEN && want != WT_LEN) { /* packed scalars */
                uint64_t len;
                if ((p = read_varint(p, end, &len)) == NULL || len > (uint64_t)(end - p))
                    return lua_settop(L, top), dec_fail(D, d, fd->name, "bad packed length");
                const uint8_t *pend = p + len;
                while (p < pend) {
                    if (push_value(D, d, fd, want, &p, pend, depth) != 0)
                        return lua_settop(L, top), -1;
                    lua_rawseti(L, slot[i], ++count[i]);
                }
            } else if (wt == want) {
                if (push_value(D, d, fd, wt, &p, end, depth) != 0)
                    return lua_settop(L, top), -1;
                lua_rawseti(L, slot[i], ++count[i]);
            } else {
                return lua_settop(L, top),
                       dec_fail(D, d, fd->name, "wire type %d, expected %d", wt, want);
            }
            continue;
        }
        if (wt != want)
            return lua_settop(L, top),
                   dec_fail(D, d, fd->name, "wire type %d, expected %d", wt, want);
        if (fd->type == PROTOBUF_C_TYPE_MESSAGE && (seen & (1ULL << i))) {
            /* A repeated occurrence of a message field merges into it; rare
             * (never produced by real encoders), so decode it on its own and
             * copy its fields over. */
            if (push_value(D, d, fd, wt, &p, end, depth) != 0)
                return lua_settop(L, top), -1;
            lua_getfield(L, t, fd->name);
            lua_pushnil(L);
            while (lua_next(L, -3)) {
                lua_pushvalue(L, -2);
                lua_insert(L, -2);
                lua_rawset(L, -4);
            }
            lua_pop(L, 2);
            continue;
        }
        if (push_value(D, d, fd, wt, &p, end, depth) != 0)
            return lua_settop(L, top), -1;
        lua_setfield(L, t, fd->name);
        seen |= 1ULL << i;
    }
    /* proto3 defaults for what the wire left out. */
    for (unsigned i = 0; i < d->n_fields; i++) {
        if (seen & (1ULL << i))
            continue;
        const ProtobufCFieldDescriptor *fd = &d->fields[i];
        if (fd->label == PROTOBUF_C_LABEL_REPEATED)
            lua_newtable(L);
        else if (fd->type == PROTOBUF_C_TYPE_MESSAGE)
            continue;
        else
            push_default(D, fd);
        lua_setfield(L, t, fd->name);
    }
    lua_settop(L, t);
    return 0;
}

int kl_pb_decode(lua_State *L, kl_pb_ctx *ctx, const ProtobufCMessageDescriptor *d,
                 const uint8_t *buf, size_t len, char *err, size_t errlen)
{
    dec D = {L, ctx, err, errlen};
    if (len == 0) /* an empty kl_buf has no buffer; NULL + 0 is undefined in C */
        buf = (const uint8_t *)"";
    return decode_message(&D, d, buf, buf + len, 0);
}

/* ---------------------------------------------------------------- encode */

typedef struct {
    lua_State *L;
    kl_pb_ctx *ctx;
    kl_buf *b;
    char *err;
    size_t errlen;
    const char *root; /* the message being encoded, for errors */
    char path[256];   /* dotted field path below it, for errors */
} enc;

/* fmt starts with ": " so that errors read "Msg: field a.b: why" or "Msg: why". */
static int enc_fail(enc *E, const ProtobufCMessageDescriptor *d, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    (void)d;
    if (E->path[0])
        snprintf(E->err, E->errlen, "%s: field %s%s", E->root, E->path, why);
    else
        snprintf(E->err, E->errlen, "%s%s", E->root, why);
    return -1;
}

static int put_varint(kl_buf *b, uint64_t v)
{
    if (kl_buf_reserve(b, 10) != 0)
        return -1;
    while (v >= 0x80) {
        b->p[b->len++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    b->p[b->len++] = (uint8_t)v;
    return 0;
}

static int put_bytes(kl_buf *b, const void *s, size_t n)
{
    if (kl_buf_reserve(b, n) != 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* Read the integer at idx: a number with no fraction, a boxed integer or
 * a decimal string, and check it against the field's range [lo, hi] (for
 * every form: a value that does not fit is an error, never truncated). */
static int get_integer(enc *E, const ProtobufCMessageDescriptor *d, int idx, int64_t lo,
                       uint64_t hi, uint64_t *out)
{
    lua_State *L = E->L;
    int type = lua_type(L, idx);
    int negative = 0; /* *out holds a negative int64_t's bits */
    if (type == LUA_TNUMBER) {
        double n = lua_tonumber(L, idx);
        if (n != floor(n) || isinf(n))
            return enc_fail(E, d, ": %.17g is not an integer", n);
        /* (double)hi rounds up to a power of two for the 64-bit limits, so
         * compare against hi + 1, which is exact for every limit */
        if (n < (double)lo || n >= (double)hi + 1.0)
            return enc_fail(E, d, ": %.17g is out of range", n);
        *out = n < 0 ? (uint64_t)(int64_t)n : (uint64_t)n;
        return 0;
    }
    if (type == LUA_TCDATA) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, E->ctx->unbox_ref);
        lua_pushvalue(L, idx);
        lua_call(L, 1, 1);
        int kind = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (kind == 0)
            return enc_fail(E, d, ": cdata is not an int64_t or uint64_t");
        *out = (uint64_t)*E->ctx->scratch_i64;
        negative = kind == 1 && *E->ctx->scratch_i64 < 0;
    } else if (type == LUA_TSTRING) {
        const char *s = lua_tostring(L, idx);
        char *endp;
        /* strtoll/strtoull also take spaces, '+', and (strtoull) a '-' that
         * wraps around; accept only [-]digits */
        negative = *s == '-';
        if (!(s[negative] >= '0' && s[negative] <= '9'))
            return enc_fail(E, d, ": \"%s\" is not an integer", s);
        errno = 0;
        if (negative)
            *out = (uint64_t)strtoll(s, &endp, 10);
        else
            *out = strtoull(s, &endp, 10);
        if (*endp != '\0')
            return enc_fail(E, d, ": \"%s\" is not an integer", s);
        if (errno == ERANGE)
            return enc_fail(E, d, ": \"%s\" is out of range", s);
    } else {
        return enc_fail(E, d, ": expected an integer, got %s", luaL_typename(L, idx));
    }
    if (negative && (int64_t)*out < lo)
        return enc_fail(E, d, ": %lld is out of range", (long long)(int64_t)*out);
    if (!negative && *out > hi)
        return enc_fail(E, d, ": %llu is out of range", (unsigned long long)*out);
    return 0;
}

static int encode_message(enc *E, int idx, const ProtobufCMessageDescriptor *d, int depth);

/* Encode the value at idx as field fd; tag included. `force` writes a
 * proto3 default too (repeated elements and map entries). */
static int encode_value(enc *E, const ProtobufCMessageDescriptor *d,
                        const ProtobufCFieldDescriptor *fd, int idx, int force, int depth)
{
    lua_State *L = E->L;
    kl_buf *b = E->b;
    int wt = expected_wire_type(fd->type);
    uint64_t tag = ((uint64_t)fd->id << 3) | (uint64_t)wt;
    uint64_t u = 0;
    switch (fd->type) {
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES: {
        if (lua_type(L, idx) != LUA_TSTRING)
            return enc_fail(E, d, ": expected a string, got %s", luaL_typename(L, idx));
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        if (n == 0 && !force)
            return 0;
        return put_varint(b, tag) || put_varint(b, n) || put_bytes(b, s, n) ? -1 : 0;
    }
    case PROTOBUF_C_TYPE_BOOL:
        if (lua_type(L, idx) != LUA_TBOOLEAN)
            return enc_fail(E, d, ": expected a boolean, got %s", luaL_typename(L, idx));
        if (!lua_toboolean(L, idx) && !force)
            return 0;
        return put_varint(b, tag) || put_varint(b, (uint64_t)lua_toboolean(L, idx)) ? -1 : 0;
    case PROTOBUF_C_TYPE_ENUM: {
        int32_t v;
        if (lua_type(L, idx) == LUA_TSTRING) {
            const ProtobufCEnumValue *ev =
                protobuf_c_enum_descriptor_get_value_by_name(fd->descriptor, lua_tostring(L, idx));
            if (ev == NULL)
                return enc_fail(E, d, ": \"%s\" is not a value of %s", lua_tostring(L, idx),
                                ((const ProtobufCEnumDescriptor *)fd->descriptor)->name);
            v = ev->value;
        } else if (lua_type(L, idx) == LUA_TNUMBER) {
            if (get_integer(E, d, idx, INT32_MIN, INT32_MAX, &u) != 0)
                return -1;
            v = (int32_t)u;
        } else {
            return enc_fail(E, d, ": expected an enum name, got %s", luaL_typename(L, idx));
        }
        if (v == 0 && !force)
            return 0;
        return put_varint(b, tag) || put_varint(b, (uint64_t)(int64_t)v) ? -1 : 0;
    }
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE: {
        if (lua_type(L, idx) != LUA_TNUMBER)
            return enc_fail(E, d, ": expected a number, got %s", luaL_typename(L, idx));
        double n = lua_tonumber(L, idx);
        if (n == 0 && !signbit(n) && !force)
            return 0;
        if (put_varint(b, tag) != 0)
            return -1;
        if (fd->type == PROTOBUF_C_TYPE_FLOAT) {
            float f = (float)n;
            return put_bytes(b, &f, 4);
        }
        return put_bytes(b, &n, 8);
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        if (lua_type(L, idx) != LUA_TTABLE)
            return enc_fail(E, d, ": expected a table, got %s", luaL_typename(L, idx));
        /* Reserve a 5-byte length, encode, then close the gap. */
        if (put_varint(b, tag) != 0 || kl_buf_reserve(b, 5) != 0)
            return -1;
        size_t at = b->len;
        b->len += 5;
        if (encode_message(E, idx, fd->descriptor, depth + 1) != 0)
            return -1;
        size_t n = b->len - at - 5;
        uint8_t len[10];
        int k = 0;
        uint64_t v = n;
        while (v >= 0x80) {
            len[k++] = (uint8_t)(v | 0x80);
            v >>= 7;
        }
        len[k++] = (uint8_t)v;
        memmove(b->p + at + k, b->p + at + 5, n);
        memcpy(b->p + at, len, (size_t)k);
        b->len = at + (size_t)k + n;
        return 0;
    }
    default:
        break;
    }
    /* integers */
    int is_unsigned = fd->type == PROTOBUF_C_TYPE_UINT32 || fd->type == PROTOBUF_C_TYPE_FIXED32 ||
                      fd->type == PROTOBUF_C_TYPE_UINT64 || fd->type == PROTOBUF_C_TYPE_FIXED64;
    int is32 = fd->type == PROTOBUF_C_TYPE_INT32 || fd->type == PROTOBUF_C_TYPE_SINT32 ||
               fd->type == PROTOBUF_C_TYPE_SFIXED32 || fd->type == PROTOBUF_C_TYPE_UINT32 ||
               fd->type == PROTOBUF_C_TYPE_FIXED32;
    int64_t lo = is_unsigned ? 0 : is32 ? INT32_MIN : INT64_MIN;
    uint64_t hi = is_unsigned ? (is32 ? UINT32_MAX : UINT64_MAX) : is32 ? INT32_MAX : INT64_MAX;
    if (get_integer(E, d, idx, lo, hi, &u) != 0)
        return -1;
    if (u == 0 && !force)
        return 0;
    if (put_varint(b, tag) != 0)
        return -1;
    switch (fd->type) {
    case PROTOBUF_C_TYPE_SINT32: {
        int32_t s = (int32_t)u;
        return put_varint(b, ((uint32_t)s << 1) ^ (uint32_t)(s >> 31));
    }
    case PROTOBUF_C_TYPE_SINT64: {
        int64_t s = (int64_t)u;
        return put_varint(b, ((uint64_t)s << 1) ^ (uint64_t)(s >> 63));
    }
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_SFIXED32: {
        uint32_t w = (uint32_t)u;
        return put_bytes(b, &w, 4);
    }
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return put_bytes(b, &u, 8);
    case PROTOBUF_C_TYPE_INT32: /* negative int32 is sign-extended to 64 bits */
        return put_varint(b, (uint64_t)(int64_t)(int32_t)u);
    default:
        return put_varint(b, u);
    }
}

/* Append one map entry (key at k, value at v) as a length-delimited field. */
static int encode_map_entry(enc *E, const ProtobufCFieldDescriptor *fd, int k, int v, int depth)
{
    const ProtobufCMessageDescriptor *ed = fd->descriptor;
    if (put_varint(E->b, ((uint64_t)fd->id << 3) | WT_LEN) != 0 || kl_buf_reserve(E->b, 5) != 0)
        return -1;
    size_t at = E->b->len;
    E->b->len += 5;
    /* a key or value of the wrong type is reported by encode_value */
    if (encode_value(E, ed, &ed->fields[0], k, 1, depth) != 0 ||
        encode_value(E, ed, &ed->fields[1], v, 1, depth) != 0)
        return -1;
    size_t n = E->b->len - at - 5;
    uint8_t len[10];
    int c = 0;
    uint64_t w = n;
    while (w >= 0x80) {
        len[c++] = (uint8_t)(w | 0x80);
        w >>= 7;
    }
    len[c++] = (uint8_t)w;
    memmove(E->b->p + at + c, E->b->p + at + 5, n);
    memcpy(E->b->p + at, len, (size_t)c);
    E->b->len = at + (size_t)c + n;
    return 0;
}

typedef struct {
    const char *s;
    size_t n;
} keyref;

static int keyref_cmp(const void *a, const void *b)
{
    const keyref *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    return c != 0 ? c : (x->n > y->n) - (x->n < y->n);
}

/* Maps are written in key order, so equal tables always encode to equal
 * bytes (stable hashes of specs, comparable requests). */
static int encode_map(enc *E, const ProtobufCMessageDescriptor *d,
                      const ProtobufCFieldDescriptor *fd, int idx, int depth)
{
    lua_State *L = E->L;
    const ProtobufCMessageDescriptor *ed = fd->descriptor;
    size_t count = 0, cap = 0;
    keyref *keys = NULL;
    int all_strings = ed->fields[0].type == PROTOBUF_C_TYPE_STRING;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            all_strings = 0;
        if (!all_strings) {
            lua_pop(L, 1);
            break;
        }
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            keyref *nk = realloc(keys, cap * sizeof *keys);
            if (nk == NULL) {
                free(keys);
                lua_pop(L, 1);
                return enc_fail(E, d, ": out of memory");
            }
            keys = nk;
        }
        /* the key string is anchored in the table while we encode */
        keys[count].s = lua_tolstring(L, -1, &keys[count].n);
        count++;
    }
    int rc = 0;
    if (all_strings) {
        if (count > 1) /* an empty map has no key array, and qsort's may not be NULL */
            qsort(keys, count, sizeof *keys, keyref_cmp);
        for (size_t i = 0; rc == 0 && i < count; i++) {
            lua_pushlstring(L, keys[i].s, keys[i].n);
            lua_pushvalue(L, -1);
            lua_rawget(L, idx);
            rc = encode_map_entry(E, fd, lua_gettop(L) - 1, lua_gettop(L), depth);
            lua_pop(L, 2);
        }
    } else {
        lua_pushnil(L);
        while (rc == 0 && lua_next(L, idx)) {
            rc = encode_map_entry(E, fd, lua_gettop(L) - 1, lua_gettop(L), depth);
            lua_pop(L, 1);
        }
        if (rc != 0)
            lua_pop(L, 1);
    }
    free(keys);
    return rc;
}

static int encode_message(enc *E, int idx, const ProtobufCMessageDescriptor *d, int depth)
{
    lua_State *L = E->L;
    if (depth > KL_PB_MAX_DEPTH)
        return enc_fail(E, d, ": nested deeper than %d", KL_PB_MAX_DEPTH);
    if (!lua_checkstack(L, 8))
        return enc_fail(E, d, ": Lua stack exhausted");
    idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
    size_t plen = strlen(E->path);
    /* Every key must name a field. */
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pop(L, 1);
            return enc_fail(E, d, ": a %s key where field names go", luaL_typename(L, -1));
        }
        if (protobuf_c_message_descriptor_get_field_by_name(d, lua_tostring(L, -1)) == NULL) {
            char name[128];
            snprintf(name, sizeof name, "%s", lua_tostring(L, -1));
            lua_pop(L, 1);
            return enc_fail(E, d, ": unknown field \"%s\"", name);
        }
    }
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *fd = &d->fields[i];
        lua_getfield(L, idx, fd->name);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            continue;
        }
        snprintf(E->path + plen, sizeof E->path - plen, "%s%s", plen ? "." : "", fd->name);
        int v = lua_gettop(L), rc = 0;
        if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
            if (!lua_istable(L, v)) {
                rc = enc_fail(E, d, ": expected a table, got %s", luaL_typename(L, v));
            } else if (is_map_entry(fd)) {
                rc = encode_map(E, d, fd, v, depth);
            } else {
                size_t n = lua_objlen(L, v);
                /* an array: keys 1..n only */
                size_t keys = 0;
                lua_pushnil(L);
                while (lua_next(L, v)) {
                    keys++;
                    lua_pop(L, 1);
                }
                if (keys != n)
                    rc = enc_fail(E, d, ": expected an array (keys 1..n)");
                for (size_t k = 1; rc == 0 && k <= n; k++) {
                    lua_rawgeti(L, v, (int)k);
                    rc = encode_value(E, d, fd, lua_gettop(L), 1, depth);
                    lua_pop(L, 1);
                }
            }
        } else {
            rc = encode_value(E, d, fd, v, 0, depth);
        }
        if (rc != 0)
            return -1;
        E->path[plen] = '\0';
        lua_settop(L, v - 1);
    }
    return 0;
}

int kl_pb_encode(lua_State *L, kl_pb_ctx *ctx, int idx, const ProtobufCMessageDescriptor *d,
                 kl_buf *b, char *err, size_t errlen)
{
    enc E = {L, ctx, b, err, errlen, d->name, {0}};
    int top = lua_gettop(L);
    idx = idx < 0 ? top + idx + 1 : idx;
    if (!lua_istable(L, idx)) {
        snprintf(err, errlen, "%s: expected a table, got %s", d->name, luaL_typename(L, idx));
        return -1;
    }
    int rc = encode_message(&E, idx, d, 0);
    lua_settop(L, top);
    if (rc != 0 && err[0] == '\0')
        snprintf(err, errlen, "%s: out of memory", d->name);
    return rc;
}

/* -------------------------------------------------------------- registry */

const ProtobufCMessageDescriptor *kl_pb_find(const char *full_name)
{
    for (const ProtobufCMessageDescriptor *const *m = kl_pb_all_messages; *m != NULL; m++)
        if (strcmp((*m)->name, full_name) == 0)
            return *m;
    return NULL;
}
