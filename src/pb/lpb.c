/* kubelua.pb: the converter and the descriptors, as Lua sees them. */
#include "host/host.h"
#include "pb/pb.h"

#include <stdlib.h>
#include <string.h>

static const ProtobufCMessageDescriptor *check_message(lua_State *L, int idx)
{
    const char *name = luaL_checkstring(L, idx);
    const ProtobufCMessageDescriptor *d = kl_pb_find(name);
    if (d == NULL)
        luaL_error(L, "kubelua.pb: unknown message type \"%s\"", name);
    return d;
}

/* encode(type, table) -> bytes; a table that does not fit the type throws. */
static int l_encode(lua_State *L)
{
    const ProtobufCMessageDescriptor *d = check_message(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    kl_buf b = {0};
    char err[512] = "";
    if (kl_pb_encode(L, kl_pb_context(L), 2, d, &b, err, sizeof err) != 0) {
        kl_buf_free(&b);
        return luaL_error(L, "%s", err);
    }
    lua_pushlstring(L, b.p ? (const char *)b.p : "", b.len);
    kl_buf_free(&b);
    return 1;
}

/* decode(type, bytes) -> table | nil, "INVALID_ARGUMENT: why", "INVALID_ARGUMENT" */
static int l_decode(lua_State *L)
{
    const ProtobufCMessageDescriptor *d = check_message(L, 1);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    char err[512];
    if (kl_pb_decode(L, kl_pb_context(L), d, (const uint8_t *)s, n, err, sizeof err) != 0)
        return kl__push_error(L, "INVALID_ARGUMENT", "%s", err);
    return 1;
}

static const char *type_name(const ProtobufCFieldDescriptor *fd)
{
    static const char *const names[] = {"int32",    "sint32", "sfixed32", "int64",  "sint64",
                                        "sfixed64", "uint32", "fixed32",  "uint64", "fixed64",
                                        "float",    "double", "bool",     "enum",   "string",
                                        "bytes",    "message"};
    return (unsigned)fd->type < sizeof names / sizeof names[0] ? names[fd->type] : "?";
}

/* fields(type) -> array of {name, number, label, type, type_name, map, values} */
static int l_fields(lua_State *L)
{
    const ProtobufCMessageDescriptor *d = check_message(L, 1);
    lua_createtable(L, (int)d->n_fields, 0);
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *fd = &d->fields[i];
        lua_createtable(L, 0, 7);
        lua_pushstring(L, fd->name);
        lua_setfield(L, -2, "name");
        lua_pushinteger(L, (lua_Integer)fd->id);
        lua_setfield(L, -2, "number");
        lua_pushstring(L, fd->label == PROTOBUF_C_LABEL_REPEATED ? "repeated" : "optional");
        lua_setfield(L, -2, "label");
        lua_pushstring(L, type_name(fd));
        lua_setfield(L, -2, "type");
        if (fd->type == PROTOBUF_C_TYPE_MESSAGE) {
            const ProtobufCMessageDescriptor *md = fd->descriptor;
            lua_pushstring(L, md->name);
            lua_setfield(L, -2, "type_name");
            size_t n = strlen(md->name);
            int is_map = fd->label == PROTOBUF_C_LABEL_REPEATED && md->n_fields == 2 && n > 5 &&
                         strcmp(md->name + n - 5, "Entry") == 0;
            lua_pushboolean(L, is_map);
            lua_setfield(L, -2, "map");
        } else if (fd->type == PROTOBUF_C_TYPE_ENUM) {
            const ProtobufCEnumDescriptor *ed = fd->descriptor;
            lua_pushstring(L, ed->name);
            lua_setfield(L, -2, "type_name");
            lua_createtable(L, (int)ed->n_values, 0);
            for (unsigned k = 0; k < ed->n_values; k++) {
                lua_pushstring(L, ed->values[k].name);
                lua_rawseti(L, -2, (int)k + 1);
            }
            lua_setfield(L, -2, "values");
        }
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* messages() -> array of every message type name (map entries excluded) */
static int l_messages(lua_State *L)
{
    lua_newtable(L);
    int n = 0;
    for (const ProtobufCMessageDescriptor *const *m = kl_pb_all_messages; *m != NULL; m++) {
        size_t len = strlen((*m)->name);
        if (len > 5 && strcmp((*m)->name + len - 5, "Entry") == 0)
            continue;
        lua_pushstring(L, (*m)->name);
        lua_rawseti(L, -2, ++n);
    }
    return 1;
}

int luaopen_kubelua_pb(lua_State *L)
{
    static const luaL_Reg fns[] = {{"encode", l_encode},
                                   {"decode", l_decode},
                                   {"fields", l_fields},
                                   {"messages", l_messages},
                                   {0, 0}};
    luaL_newlib(L, fns);
    return 1;
}
