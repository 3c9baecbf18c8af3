/* kubelua.grpc: channels, unary calls and server streams for Lua.
 *
 *   local grpc = require "kubelua.grpc"
 *   local ch = grpc.channel("unix:///run/containerd/containerd.sock")
 *   local m = grpc.methods()["/runtime.v1.RuntimeService/Version"]
 *   local resp, err, code = ch:unary(m, {}, 2)      -- parks the task
 *   local st = ch:stream(m2, {}, 0); local msg = st:recv()
 *
 * grpc.MAX_MESSAGE: the largest message accepted in either direction
 * (bytes; RESOURCE_EXHAUSTED beyond).
 *
 * Requests that do not fit their message type throw (a programming
 * mistake); everything the server or the network does comes back as
 * nil, "CODE: message", "CODE".
 */
#include "grpc/grpc.h"
#include "host/host.h"

#include <stdlib.h>
#include <string.h>

#define CHANNEL_MT "kubelua.grpc.channel"
#define STREAM_MT "kubelua.grpc.stream"

typedef struct {
    const ProtobufCMessageDescriptor *in, *out;
    int streaming;
    char path[128];
} method;

typedef struct {
    kl_grpc_channel *ch;
} channel_ud;

static method *check_method(lua_State *L, int idx)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "id");
    method *m = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (m == NULL)
        luaL_error(L, "kubelua.grpc: not a method entry (use grpc.methods())");
    return m;
}

static kl_grpc_channel *check_channel(lua_State *L, int idx)
{
    channel_ud *u = luaL_checkudata(L, idx, CHANNEL_MT);
    if (u->ch == NULL)
        luaL_error(L, "kubelua.grpc: channel is closed");
    return u->ch;
}

/* Encode the request table behind 5 reserved bytes; throws on a bad table. */
static void encode_request(lua_State *L, const method *m, int idx, kl_buf *b)
{
    char err[512] = "";
    if (kl_buf_reserve(b, 5) != 0)
        luaL_error(L, "out of memory");
    b->len = 5;
    if (!lua_isnoneornil(L, idx) &&
        kl_pb_encode(L, kl_pb_context(L), idx, m->in, b, err, sizeof err) != 0) {
        kl_buf_free(b);
        luaL_error(L, "%s: %s", m->path, err);
    }
}

/* ------------------------------------------------------------ unary calls */

typedef struct {
    kl_park *park;
    lua_State *co;
    const method *m;
    kl_grpc_call *call;
    int base;
    int decoded;
    int raw; /* deliver the response bytes, undecoded */
    char decode_err[512];
} unary;

static void unary_on_message(void *ud, const uint8_t *msg, size_t len)
{
    unary *u = ud;
    if (u->decoded || u->decode_err[0])
        return;
    u->base = lua_gettop(u->co);
    if (u->raw) {
        lua_pushlstring(u->co, (const char *)msg, len);
        u->decoded = 1;
        return;
    }
    if (kl_pb_decode(u->co, kl_pb_context(u->co), u->m->out, msg, len, u->decode_err,
                     sizeof u->decode_err) == 0)
        u->decoded = 1;
}

static void unary_on_done(void *ud, int code, const char *message)
{
    unary *u = ud;
    lua_State *co = u->co;
    int nres = 1;
    if (code == KL_GRPC_OK && u->decoded) {
        /* the table is on the stack */
    } else {
        if (u->decoded)
            lua_settop(co, u->base);
        if (code == KL_GRPC_OK && u->decode_err[0]) {
            nres =
                kl__push_error(co, "INTERNAL", "%s: cannot decode %s", u->m->path, u->decode_err);
        } else if (code == KL_GRPC_OK) {
            nres = kl__push_error(co, "INTERNAL", "%s: the server sent no response message",
                                  u->m->path);
        } else {
            nres = kl__push_error(co, kl_grpc_code_name(code), "%s: %s", u->m->path,
                                  message && *message ? message : "(no message)");
        }
    }
    kl__park_resume(u->park, nres);
    free(u);
}

static const kl_grpc_call_ops unary_ops = {unary_on_message, unary_on_done};

static void unary_cancel(void *ud)
{
    unary *u = ud;
    kl_grpc_call_cancel(u->call);
    free(u);
}

/* ch:unary(method, request, timeout_s) -> response | nil, err, code
 * ch:unary_raw(...) -> the response's bytes (decode later, or walk them in C) */
static int unary_call(lua_State *L, int raw)
{
    kl_grpc_channel *ch = check_channel(L, 1);
    method *m = check_method(L, 2);
    double timeout = luaL_optnumber(L, 4, 0);
    if (!kl__in_task(L)) /* checked before the call starts: it must be able to park */
        return luaL_error(L, "this call does I/O and must run in a task (kubelua.spawn, or a "
                             "script started by kubelua run)");
    kl_buf b = {0};
    encode_request(L, m, 3, &b);
    unary *u = calloc(1, sizeof *u);
    if (u == NULL) {
        kl_buf_free(&b);
        return luaL_error(L, "out of memory");
    }
    u->co = L;
    u->m = m;
    u->raw = raw;
    int code;
    char err[512];
    u->call =
        kl_grpc_call_start(ch, m->path, &b, timeout, 0, &unary_ops, u, &code, err, sizeof err);
    if (u->call == NULL) { /* failed at once: return directly, the task never parks */
        free(u);
        return kl__push_error(L, kl_grpc_code_name(code), "%s: %s", m->path, err);
    }
    /* No callback can run before we yield, so parking after the start is safe. */
    kl_park *p = kl__park_new(L);
    u->park = p;
    kl__park_set_cancel(p, unary_cancel, u);
    return kl__park_yield(L, p);
}

static int l_unary(lua_State *L)
{
    return unary_call(L, 0);
}

static int l_unary_raw(lua_State *L)
{
    return unary_call(L, 1);
}

/* --------------------------------------------------------- server streams */

typedef struct msgq {
    struct msgq *next;
    size_t len;
    uint8_t data[];
} msgq;

typedef struct {
    const method *m;
    kl_grpc_call *call;
    msgq *head, *tail;
    int done;
    int code;
    char message[512];
    kl_park *waiter;
    lua_State *waiter_co;
} stream;

/* Push the next result of recv() on L; returns the count. */
static int stream_push_next(lua_State *L, stream *s)
{
    if (s->head != NULL) {
        msgq *q = s->head;
        s->head = q->next;
        if (s->head == NULL)
            s->tail = NULL;
        char err[512];
        int rc = kl_pb_decode(L, kl_pb_context(L), s->m->out, q->data, q->len, err, sizeof err);
        free(q);
        if (rc != 0)
            return kl__push_error(L, "INTERNAL", "%s: cannot decode %s", s->m->path, err);
        return 1;
    }
    if (s->code == KL_GRPC_OK) {
        lua_pushnil(L);
        return 1;
    }
    return kl__push_error(L, kl_grpc_code_name(s->code), "%s: %s", s->m->path,
                          s->message[0] ? s->message : "(no message)");
}

static void stream_wake(stream *s)
{
    if (s->waiter == NULL)
        return;
    kl_park *p = s->waiter;
    s->waiter = NULL;
    kl__park_resume(p, stream_push_next(s->waiter_co, s));
}

static void stream_on_message(void *ud, const uint8_t *msg, size_t len)
{
    stream *s = ud;
    msgq *q = malloc(sizeof *q + len);
    if (q == NULL)
        return;
    q->next = NULL;
    q->len = len;
    memcpy(q->data, msg, len);
    if (s->tail)
        s->tail->next = q;
    else
        s->head = q;
    s->tail = q;
    stream_wake(s);
}

static void stream_on_done(void *ud, int code, const char *message)
{
    stream *s = ud;
    s->done = 1;
    s->call = NULL;
    s->code = code;
    snprintf(s->message, sizeof s->message, "%s", message ? message : "");
    stream_wake(s);
}

static const kl_grpc_call_ops stream_ops = {stream_on_message, stream_on_done};

/* ch:stream(method, request, timeout_s) -> stream (never parks) | nil, err, code */
static int l_stream(lua_State *L)
{
    kl_grpc_channel *ch = check_channel(L, 1);
    method *m = check_method(L, 2);
    double timeout = luaL_optnumber(L, 4, 0);
    kl_buf b = {0};
    encode_request(L, m, 3, &b);
    stream *s = lua_newuserdata(L, sizeof *s);
    memset(s, 0, sizeof *s);
    s->m = m;
    luaL_setmetatable(L, STREAM_MT);
    int code;
    char err[512];
    s->call =
        kl_grpc_call_start(ch, m->path, &b, timeout, 1, &stream_ops, s, &code, err, sizeof err);
    if (s->call == NULL) {
        s->done = 1;
        return kl__push_error(L, kl_grpc_code_name(code), "%s: %s", m->path, err);
    }
    return 1;
}

static void stream_cancel_wait(void *ud)
{
    stream *s = ud;
    s->waiter = NULL;
}

/* st:recv() -> message | nil (the stream ended with OK) | nil, err, code */
static int stream_recv(lua_State *L)
{
    stream *s = luaL_checkudata(L, 1, STREAM_MT);
    if (s->waiter != NULL)
        return luaL_error(L, "kubelua.grpc: another task is already receiving on this stream");
    if (s->head != NULL || s->done)
        return stream_push_next(L, s);
    kl_park *p = kl__park_new(L);
    s->waiter = p;
    s->waiter_co = L;
    kl__park_set_cancel(p, stream_cancel_wait, s);
    /* The stream must outlive the wait. */
    lua_pushlightuserdata(L, s);
    lua_pushvalue(L, 1);
    lua_rawset(L, LUA_REGISTRYINDEX);
    int n = kl__park_yield(L, p);
    return n;
}

static void stream_drop(stream *s)
{
    if (s->call != NULL) {
        kl_grpc_call_cancel(s->call);
        s->call = NULL;
    }
    while (s->head != NULL) {
        msgq *q = s->head;
        s->head = q->next;
        free(q);
    }
    s->tail = NULL;
}

/* st:cancel(): stop the stream (RST_STREAM); later recv() gives CANCELLED. */
static int stream_cancel(lua_State *L)
{
    stream *s = luaL_checkudata(L, 1, STREAM_MT);
    if (!s->done) {
        stream_drop(s);
        s->done = 1;
        s->code = KL_GRPC_CANCELLED;
        snprintf(s->message, sizeof s->message, "cancelled by the caller");
        stream_wake(s);
    }
    return 0;
}

static int stream_gc(lua_State *L)
{
    stream *s = luaL_checkudata(L, 1, STREAM_MT);
    stream_drop(s);
    return 0;
}

/* --------------------------------------------------------------- channels */

/* channel(target, {max_message=, max_stream_id=, backoff_base=, backoff_max=}) */
static int l_channel(lua_State *L)
{
    const char *target = luaL_checkstring(L, 1);
    kl_grpc_channel_options o = {0};
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "max_message");
        o.max_message = (size_t)luaL_optnumber(L, -1, 0);
        lua_getfield(L, 2, "max_stream_id");
        o.max_stream_id = (uint32_t)luaL_optnumber(L, -1, 0);
        lua_getfield(L, 2, "backoff_base");
        o.backoff_base_ms = (uint64_t)(luaL_optnumber(L, -1, 0) * 1000);
        lua_getfield(L, 2, "backoff_max");
        o.backoff_max_ms = (uint64_t)(luaL_optnumber(L, -1, 0) * 1000);
        lua_pop(L, 4);
    }
    char err[300];
    kl_grpc_channel *ch = kl_grpc_channel_new(kl__host(L)->loop, target, &o, err, sizeof err);
    if (ch == NULL)
        return kl__push_error(L, "INVALID_ARGUMENT", "%s", err);
    channel_ud *u = lua_newuserdata(L, sizeof *u);
    u->ch = ch;
    luaL_setmetatable(L, CHANNEL_MT);
    return 1;
}

/* ch:close(): drop the connection and fail its calls; the channel is unusable after. */
static int channel_close(lua_State *L)
{
    channel_ud *u = luaL_checkudata(L, 1, CHANNEL_MT);
    if (u->ch != NULL) {
        kl_grpc_channel_free(u->ch);
        u->ch = NULL;
    }
    return 0;
}

/* ch:stats() -> { connects =, writes =, calls = }: transport counters of the channel. */
static int channel_stats(lua_State *L)
{
    kl_grpc_stats st;
    kl_grpc_channel_stats(check_channel(L, 1), &st);
    lua_createtable(L, 0, 3);
    lua_pushnumber(L, (lua_Number)st.connects);
    lua_setfield(L, -2, "connects");
    lua_pushnumber(L, (lua_Number)st.writes);
    lua_setfield(L, -2, "writes");
    lua_pushnumber(L, (lua_Number)st.calls);
    lua_setfield(L, -2, "calls");
    return 1;
}

/* methods() -> { ["/pkg.Service/Method"] = {service=, name=, path=, input=,
 *   output=, streaming=, id=} } for every compiled service. */
static int l_methods(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "kubelua.grpc.methods");
    return 1;
}

static int is_streaming(const char *service_short, const char *name)
{
    char key[256];
    snprintf(key, sizeof key, "%s/%s", service_short, name);
    for (const char *const *s = kl_pb_streaming_rpcs; *s != NULL; s++)
        if (strcmp(*s, key) == 0)
            return 1;
    return 0;
}

static void build_methods(lua_State *L)
{
    size_t n = 0;
    for (const ProtobufCServiceDescriptor *const *s = kl_pb_all_services; *s; s++)
        n += (*s)->n_methods;
    /* One userdata owns every entry; the registry keeps it for the state's life. */
    method *all = lua_newuserdata(L, sizeof(method) * (n ? n : 1));
    lua_setfield(L, LUA_REGISTRYINDEX, "kubelua.grpc.method_entries");
    lua_newtable(L);
    size_t k = 0;
    for (const ProtobufCServiceDescriptor *const *s = kl_pb_all_services; *s; s++) {
        for (unsigned i = 0; i < (*s)->n_methods; i++, k++) {
            const ProtobufCMethodDescriptor *md = &(*s)->methods[i];
            method *m = &all[k];
            m->in = md->input;
            m->out = md->output;
            m->streaming = is_streaming((*s)->short_name, md->name);
            snprintf(m->path, sizeof m->path, "/%s/%s", (*s)->name, md->name);
            lua_createtable(L, 0, 7);
            lua_pushstring(L, (*s)->name);
            lua_setfield(L, -2, "service");
            lua_pushstring(L, md->name);
            lua_setfield(L, -2, "name");
            lua_pushstring(L, m->path);
            lua_setfield(L, -2, "path");
            lua_pushstring(L, md->input->name);
            lua_setfield(L, -2, "input");
            lua_pushstring(L, md->output->name);
            lua_setfield(L, -2, "output");
            lua_pushboolean(L, m->streaming);
            lua_setfield(L, -2, "streaming");
            lua_pushlightuserdata(L, m);
            lua_setfield(L, -2, "id");
            lua_setfield(L, -2, m->path);
        }
    }
    lua_setfield(L, LUA_REGISTRYINDEX, "kubelua.grpc.methods");
}

/* code_name(n) -> the gRPC status name of code n (14 -> "UNAVAILABLE"). */
static int l_code_name(lua_State *L)
{
    lua_pushstring(L, kl_grpc_code_name((int)luaL_checkinteger(L, 1)));
    return 1;
}

int luaopen_kubelua_grpc(lua_State *L)
{
    static const luaL_Reg channel_methods[] = {{"unary", l_unary},       {"unary_raw", l_unary_raw},
                                               {"stream", l_stream},     {"close", channel_close},
                                               {"stats", channel_stats}, {0, 0}};
    static const luaL_Reg stream_methods[] = {
        {"recv", stream_recv}, {"cancel", stream_cancel}, {0, 0}};
    kl__new_type(L, CHANNEL_MT, channel_methods, channel_close);
    kl__new_type(L, STREAM_MT, stream_methods, stream_gc);
    build_methods(L);

    static const luaL_Reg fns[] = {
        {"channel", l_channel}, {"methods", l_methods}, {"code_name", l_code_name}, {0, 0}};
    luaL_newlib(L, fns);
    lua_pushnumber(L, KL_GRPC_MAX_MESSAGE);
    lua_setfield(L, -2, "MAX_MESSAGE");
    return 1;
}
