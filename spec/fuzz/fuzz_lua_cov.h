/* Coverage of Lua code for the targets whose code under test is Lua
 * (k8s_watch, http_probe): libFuzzer only sees the C code it instrumented,
 * which for a pure-Lua module is the target file alone, so it would have no
 * feedback at all. A line hook turns each step from one Lua line to the next
 * (an edge: file, previous line, line) into a hit on libFuzzer's extra
 * counters, which it treats like its own edge counters.
 *
 * The counters, and the previous location, are globals: libFuzzer finds the
 * counters by their section, and the hook has nowhere else to keep state
 * cheaply. Fuzz targets run one input at a time on one thread. */
#ifndef KL_FUZZ_LUA_COV_H
#define KL_FUZZ_LUA_COV_H

#include <lua.h>
#include <stdint.h>
#include <string.h>

#define FUZZ_LUA_COUNTERS (1u << 16)

__attribute__((
    used,
    section("__libfuzzer_extra_counters"))) static uint8_t fuzz_lua_counters[FUZZ_LUA_COUNTERS];
static uint32_t fuzz_lua_prev;

static void fuzz_lua_line_hook(lua_State *L, lua_Debug *ar)
{
    if (lua_getinfo(L, "S", ar) == 0 || ar->source == NULL)
        return;
    uint32_t h = 2166136261u; /* FNV-1a over the chunk name, then the line */
    for (const char *s = ar->source; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    h = (h ^ (uint32_t)ar->currentline) * 16777619u;
    fuzz_lua_counters[(h ^ fuzz_lua_prev) % FUZZ_LUA_COUNTERS]++;
    fuzz_lua_prev = h >> 1; /* shifted, so A->B and B->A differ */
}

/* Start recording the Lua lines `L` runs (the JIT must be off: see
 * fuzz_new_state). */
static inline void fuzz_lua_coverage(lua_State *L)
{
    fuzz_lua_prev = 0;
    lua_sethook(L, fuzz_lua_line_hook, LUA_MASKLINE, 0);
}

#endif
