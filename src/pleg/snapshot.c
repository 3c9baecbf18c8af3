/* kubelua.pleg.core: the relist fast path.
 *
 * A relist only needs, for every container and sandbox, its ID, its pod,
 * its state and its creation time. Building full Lua tables for 200
 * containers (labels, annotations, images...) costs more than containerd
 * spends serving the list, so this module reads the raw ListContainers and
 * ListPodSandbox responses directly, keeps a compact snapshot in C, and
 * diffs two snapshots. Only the changes reach Lua, where the PLEG policy
 * (lua/kubelua/pleg.lua) turns them into events.
 *
 *   local snap = core.snapshot(containers_bytes, sandboxes_bytes)  -- or nil, err
 *   local changes = core.diff(old_snap_or_nil, snap)
 *     -- { {id=, pod=, kind="container"|"sandbox", old=STATE|nil, new=STATE|nil}, ... }
 *   snap:size(), snap:pods() -> { [uid] = number of entries }
 *
 * The pod of a container is its io.kubernetes.pod.uid label, else the uid
 * of its sandbox, else the sandbox ID; a sandbox's pod is its metadata uid
 * (else its ID).
 */
#include "host/host.h"
#include "pb/pb.h"

#include <stdlib.h>
#include <string.h>

#define SNAPSHOT_MT "kubelua.pleg.snapshot"
#define POD_UID_LABEL "io.kubernetes.pod.uid"

enum { KIND_CONTAINER = 0, KIND_SANDBOX = 1 };

typedef struct {
    const char *id;
    const char *pod;
    const char *sandbox; /* containers: their sandbox's ID */
    int kind;
    int state;
    int64_t created_at;
} entry;

typedef struct {
    entry *e;
    size_t n, cap;
    char *arena; /* every string of the snapshot */
    size_t used, size;
} snapshot;

/* Field numbers, read from the descriptors once (module upvalue). */
typedef struct {
    uint32_t list_containers, list_items;
    uint32_t c_id, c_sandbox, c_state, c_created, c_labels;
    uint32_t s_id, s_meta, s_state, s_created;
    uint32_t meta_uid;
    const ProtobufCEnumDescriptor *c_states, *s_states;
} fields;

static const char *arena_copy(snapshot *s, const uint8_t *p, size_t n)
{
    if (s->used + n + 1 > s->size)
        return NULL;
    char *d = s->arena + s->used;
    memcpy(d, p, n);
    d[n] = '\0';
    s->used += n + 1;
    return d;
}

static entry *push_entry(snapshot *s)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        entry *e = realloc(s->e, cap * sizeof *e);
        if (e == NULL)
            return NULL;
        s->e = e;
        s->cap = cap;
    }
    entry *e = &s->e[s->n++];
    memset(e, 0, sizeof *e);
    return e;
}

/* A cursor over the fields of one message. */
typedef struct {
    const uint8_t *p, *end;
    uint32_t num;
    int wt;
    uint64_t v;         /* varint fields */
    const uint8_t *val; /* length-delimited fields */
    size_t len;
    int bad;
} wire_it;

static wire_it wire_at(const uint8_t *p, const uint8_t *end)
{
    wire_it it = {.p = p, .end = end};
    return it;
}

static int wire_next(wire_it *it)
{
    uint64_t tag;
    if (it->p >= it->end)
        return 0;
    if ((it->p = kl_pb_read_varint(it->p, it->end, &tag)) == NULL) {
        it->bad = 1;
        return 0;
    }
    it->num = (uint32_t)(tag >> 3);
    it->wt = (int)(tag & 7);
    if (it->wt == 0)
        it->p = kl_pb_read_varint(it->p, it->end, &it->v);
    else
        it->p = kl_pb_skip_value(it->p, it->end, it->wt, &it->val, &it->len);
    if (it->p == NULL) {
        it->bad = 1;
        return 0;
    }
    return 1;
}

static int parse_sandbox(snapshot *s, const fields *F, const uint8_t *p, const uint8_t *end)
{
    entry *e = push_entry(s);
    if (e == NULL)
        return -1;
    e->kind = KIND_SANDBOX;
    wire_it it = wire_at(p, end);
    while (wire_next(&it)) {
        if (it.num == F->s_id && it.wt == 2) {
            e->id = arena_copy(s, it.val, it.len);
        } else if (it.num == F->s_state && it.wt == 0) {
            e->state = (int)it.v;
        } else if (it.num == F->s_created && it.wt == 0) {
            e->created_at = (int64_t)it.v;
        } else if (it.num == F->s_meta && it.wt == 2) {
            wire_it m = wire_at(it.val, it.val + it.len);
            while (wire_next(&m))
                if (m.num == F->meta_uid && m.wt == 2 && m.len > 0)
                    e->pod = arena_copy(s, m.val, m.len);
        }
    }
    if (it.bad || e->id == NULL)
        return -1;
    if (e->pod == NULL)
        e->pod = e->id;
    return 0;
}

static int parse_container(snapshot *s, const fields *F, const uint8_t *p, const uint8_t *end)
{
    entry *e = push_entry(s);
    if (e == NULL)
        return -1;
    e->kind = KIND_CONTAINER;
    wire_it it = wire_at(p, end);
    while (wire_next(&it)) {
        if (it.num == F->c_id && it.wt == 2) {
            e->id = arena_copy(s, it.val, it.len);
        } else if (it.num == F->c_sandbox && it.wt == 2) {
            e->sandbox = arena_copy(s, it.val, it.len);
        } else if (it.num == F->c_state && it.wt == 0) {
            e->state = (int)it.v;
        } else if (it.num == F->c_created && it.wt == 0) {
            e->created_at = (int64_t)it.v;
        } else if (it.num == F->c_labels && it.wt == 2 && e->pod == NULL) {
            /* a map entry: key (1), value (2) */
            wire_it m = wire_at(it.val, it.val + it.len);
            const uint8_t *key = NULL, *value = NULL;
            size_t klen = 0, vlen = 0;
            while (wire_next(&m)) {
                if (m.num == 1 && m.wt == 2) {
                    key = m.val;
                    klen = m.len;
                } else if (m.num == 2 && m.wt == 2) {
                    value = m.val;
                    vlen = m.len;
                }
            }
            if (key != NULL && value != NULL && vlen > 0 && klen == sizeof POD_UID_LABEL - 1 &&
                memcmp(key, POD_UID_LABEL, klen) == 0)
                e->pod = arena_copy(s, value, vlen);
        }
    }
    return it.bad || e->id == NULL ? -1 : 0;
}

/* Walk a list response: every `item_field` submessage goes to fn. */
static int parse_list(snapshot *s, const fields *F, const uint8_t *p, size_t n, uint32_t item_field,
                      int (*fn)(snapshot *, const fields *, const uint8_t *, const uint8_t *))
{
    wire_it it = wire_at(p, p + n);
    while (wire_next(&it))
        if (it.num == item_field && it.wt == 2 && fn(s, F, it.val, it.val + it.len) != 0)
            return -1;
    return it.bad ? -1 : 0;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->id, ((const entry *)b)->id);
}

static void snapshot_free(snapshot *s)
{
    free(s->e);
    free(s->arena);
    s->e = NULL;
    s->arena = NULL;
    s->n = s->cap = 0;
}

static int snapshot_gc(lua_State *L)
{
    snapshot_free(luaL_checkudata(L, 1, SNAPSHOT_MT));
    return 0;
}

/* snapshot(containers_bytes, sandboxes_bytes) -> snapshot | nil, err, "INVALID_ARGUMENT" */
static int l_snapshot(lua_State *L)
{
    const fields *F = lua_touserdata(L, lua_upvalueindex(1));
    size_t nc, ns;
    const char *bc = luaL_checklstring(L, 1, &nc);
    const char *bs = luaL_checklstring(L, 2, &ns);
    snapshot *s = lua_newuserdata(L, sizeof *s);
    memset(s, 0, sizeof *s);
    luaL_setmetatable(L, SNAPSHOT_MT);
    s->size = nc + ns + 64;
    s->arena = malloc(s->size);
    if (s->arena == NULL)
        return luaL_error(L, "out of memory");
    if (parse_list(s, F, (const uint8_t *)bs, ns, F->list_items, parse_sandbox) != 0)
        return kl__push_error(L, "INTERNAL",
                              "/runtime.v1.RuntimeService/ListPodSandbox: cannot decode "
                              "runtime.v1.ListPodSandboxResponse (relist fast path)");
    size_t nsand = s->n;
    if (nsand > 1)
        qsort(s->e, nsand, sizeof *s->e, cmp_id);
    if (parse_list(s, F, (const uint8_t *)bc, nc, F->list_containers, parse_container) != 0)
        return kl__push_error(L, "INTERNAL",
                              "/runtime.v1.RuntimeService/ListContainers: cannot decode "
                              "runtime.v1.ListContainersResponse (relist fast path)");
    /* Containers without the pod label belong to their sandbox's pod. */
    for (size_t i = nsand; i < s->n; i++) {
        entry *e = &s->e[i];
        if (e->pod != NULL)
            continue;
        if (e->sandbox != NULL) {
            entry key = {.id = e->sandbox};
            entry *sb = nsand ? bsearch(&key, s->e, nsand, sizeof *s->e, cmp_id) : NULL;
            e->pod = sb != NULL ? sb->pod : e->sandbox;
        } else {
            e->pod = e->id;
        }
    }
    if (s->n > 1)
        qsort(s->e, s->n, sizeof *s->e, cmp_id);
    return 1;
}

static void push_state(lua_State *L, const fields *F, const entry *e)
{
    if (e == NULL) {
        lua_pushnil(L);
        return;
    }
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
        e->kind == KIND_SANDBOX ? F->s_states : F->c_states, e->state);
    if (v != NULL)
        lua_pushstring(L, v->name);
    else
        lua_pushinteger(L, e->state);
}

static void push_change(lua_State *L, const fields *F, const entry *old, const entry *now, int *n)
{
    const entry *any = now ? now : old;
    lua_createtable(L, 0, 5);
    lua_pushstring(L, any->id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, any->pod);
    lua_setfield(L, -2, "pod");
    lua_pushstring(L, any->kind == KIND_SANDBOX ? "sandbox" : "container");
    lua_setfield(L, -2, "kind");
    push_state(L, F, old);
    lua_setfield(L, -2, "old");
    push_state(L, F, now);
    lua_setfield(L, -2, "new");
    lua_rawseti(L, -2, ++*n);
}

/* diff(old | nil, new) -> array of changes (appeared, disappeared, state changed) */
static int l_diff(lua_State *L)
{
    const fields *F = lua_touserdata(L, lua_upvalueindex(1));
    const snapshot *a = lua_isnil(L, 1) ? NULL : luaL_checkudata(L, 1, SNAPSHOT_MT);
    const snapshot *b = luaL_checkudata(L, 2, SNAPSHOT_MT);
    size_t i = 0, j = 0, na = a ? a->n : 0;
    int n = 0;
    lua_newtable(L);
    while (i < na || j < b->n) {
        int c = i == na ? 1 : j == b->n ? -1 : strcmp(a->e[i].id, b->e[j].id);
        if (c < 0) {
            push_change(L, F, &a->e[i++], NULL, &n);
        } else if (c > 0) {
            push_change(L, F, NULL, &b->e[j++], &n);
        } else {
            if (a->e[i].state != b->e[j].state)
                push_change(L, F, &a->e[i], &b->e[j], &n);
            i++;
            j++;
        }
    }
    return 1;
}

static int snapshot_size(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)((snapshot *)luaL_checkudata(L, 1, SNAPSHOT_MT))->n);
    return 1;
}

/* snap:pods() -> { [pod uid] = entries of that pod } */
static int snapshot_pods(lua_State *L)
{
    const snapshot *s = luaL_checkudata(L, 1, SNAPSHOT_MT);
    lua_newtable(L);
    for (size_t i = 0; i < s->n; i++) {
        lua_getfield(L, -1, s->e[i].pod);
        lua_Integer k = lua_tointeger(L, -1);
        lua_pop(L, 1);
        lua_pushinteger(L, k + 1);
        lua_setfield(L, -2, s->e[i].pod);
    }
    return 1;
}

static uint32_t field_no(const char *msg, const char *name)
{
    const ProtobufCMessageDescriptor *d = kl_pb_find(msg);
    const ProtobufCFieldDescriptor *f =
        d ? protobuf_c_message_descriptor_get_field_by_name(d, name) : NULL;
    return f ? f->id : 0;
}

static const ProtobufCEnumDescriptor *enum_of(const char *msg, const char *name)
{
    const ProtobufCMessageDescriptor *d = kl_pb_find(msg);
    const ProtobufCFieldDescriptor *f =
        d ? protobuf_c_message_descriptor_get_field_by_name(d, name) : NULL;
    return f ? f->descriptor : NULL;
}

int luaopen_kubelua_pleg_core(lua_State *L)
{
    static const luaL_Reg methods[] = {{"size", snapshot_size}, {"pods", snapshot_pods}, {0, 0}};
    kl__new_type(L, SNAPSHOT_MT, methods, snapshot_gc);

    static const luaL_Reg fns[] = {{"snapshot", l_snapshot}, {"diff", l_diff}, {0, 0}};
    lua_newtable(L);
    fields *F = lua_newuserdata(L, sizeof *F);
    F->list_containers = field_no("runtime.v1.ListContainersResponse", "containers");
    F->list_items = field_no("runtime.v1.ListPodSandboxResponse", "items");
    F->c_id = field_no("runtime.v1.Container", "id");
    F->c_sandbox = field_no("runtime.v1.Container", "pod_sandbox_id");
    F->c_state = field_no("runtime.v1.Container", "state");
    F->c_created = field_no("runtime.v1.Container", "created_at");
    F->c_labels = field_no("runtime.v1.Container", "labels");
    F->s_id = field_no("runtime.v1.PodSandbox", "id");
    F->s_meta = field_no("runtime.v1.PodSandbox", "metadata");
    F->s_state = field_no("runtime.v1.PodSandbox", "state");
    F->s_created = field_no("runtime.v1.PodSandbox", "created_at");
    F->meta_uid = field_no("runtime.v1.PodSandboxMetadata", "uid");
    F->c_states = enum_of("runtime.v1.Container", "state");
    F->s_states = enum_of("runtime.v1.PodSandbox", "state");
    if (F->c_states == NULL || F->s_states == NULL)
        return luaL_error(L, "kubelua.pleg.core: CRI descriptors missing");
    luaL_setfuncs(L, fns, 1);
    return 1;
}
