/* Fuzz target: the YAML loader, through its Lua API (lua/kubelua/yaml.lua
 * over src/yaml/yaml.c). decode, decode_all and decode with tight limits
 * (depth 4, 20 alias nodes, omit_null) must return a value or
 * nil, "YAML: ...", "YAML" and never throw; a decoded value must encode,
 * and encoding what that decodes to must give the same text. */
#include "fuzz_lua.h"

#include <stdint.h>
#include <string.h>

int luaopen_kubelua_yaml_core(lua_State *L);

static const char CHECK[] =
    "local yaml = require 'kubelua.yaml'\n"
    "local function fail(fmt, ...) error('FUZZ FINDING: ' .. string.format(fmt, ...), 0) end\n"
    "local function roundtrip(v, what)\n"
    "  local ok, text = pcall(yaml.encode, v)\n"
    "  if not ok then fail('%s: a decoded value does not encode: %s', what, text) end\n"
    "  local v2, err = yaml.decode(text)\n"
    "  if v2 == nil then fail('%s: our own output does not decode: %s\\n%s', what, err, text) end\n"
    "  local text2 = yaml.encode(v2)\n"
    "  if text2 ~= text then fail('%s: round trip not stable:\\n%s\\n---- then\\n%s', what, text, "
    "text2) end\n"
    "end\n"
    "local tight = { max_depth = 4, max_alias_nodes = 20, omit_null = true }\n"
    "return function(s)\n"
    "  for _, all in ipairs { false, true, 'tight' } do\n"
    "    local f = all == true and yaml.decode_all or yaml.decode\n"
    "    local v, err, code = f(s, all == 'tight' and tight or nil)\n"
    "    if v == nil then\n"
    "      if type(err) ~= 'string' or not err:match('^YAML: ') or code ~= 'YAML' then\n"
    "        fail('bad error shape: %s %s', tostring(err), tostring(code))\n"
    "      end\n"
    "    elseif all == true then\n"
    "      for i, doc in ipairs(v) do roundtrip(doc, 'document ' .. i) end\n"
    "    else\n"
    "      roundtrip(v, 'decode')\n"
    "    end\n"
    "  end\n"
    "end\n";

static int run(lua_State *L)
{
    const char *data = lua_touserdata(L, 1);
    size_t size = *(const size_t *)lua_touserdata(L, 2);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_kubelua_yaml_core);
    lua_setfield(L, -2, "kubelua.yaml.core");
    lua_settop(L, 2);
    fuzz_push_check(L, CHECK, sizeof CHECK - 1, "=fuzz.yaml");
    lua_call(L, 0, 1);
    lua_pushlstring(L, data, size);
    lua_call(L, 1, 0);
    return 0;
}

/* lua_cpcall passes one pointer; the size goes in a second one. */
typedef struct {
    const uint8_t *data;
    size_t size;
} input;

static int run_input(lua_State *L)
{
    input *in = lua_touserdata(L, 1);
    lua_settop(L, 0);
    lua_pushlightuserdata(L, (void *)in->data);
    lua_pushlightuserdata(L, &in->size);
    return run(L);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input in = {data, size};
    lua_State *L = fuzz_new_state();
    if (lua_cpcall(L, run_input, &in) != 0) {
        const char *msg = lua_tostring(L, -1);
        if (msg == NULL || strstr(msg, "not enough memory") == NULL)
            FUZZ_FAIL("yaml threw: %s", msg ? msg : "(not a string)");
    }
    lua_close(L);
    return 0;
}
