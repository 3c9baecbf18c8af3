/* Shared by the fuzz targets: a fresh Lua state with the JIT off (Debian's
 * LuaJIT miscompiles rarely under fuzzing churn, and the targets aim at our
 * C code, not at LuaJIT's trace compiler), and the abort used for findings. */
#ifndef KL_FUZZ_LUA_H
#define KL_FUZZ_LUA_H

#include <lauxlib.h>
#include <luajit.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>

static inline lua_State *fuzz_new_state(void)
{
    lua_State *L = luaL_newstate();
    if (L == NULL)
        abort();
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    luaL_openlibs(L);
    return L;
}

#ifdef KL_FUZZ_LUA_DIR
/* Point require at the project's Lua modules and push the target's check
 * script `src` (chunk name `name`), compiled; a syntax error is thrown. */
static inline void fuzz_push_check(lua_State *L, const char *src, size_t len, const char *name)
{
    lua_getglobal(L, "package");
    lua_pushstring(L, KL_FUZZ_LUA_DIR "/?.lua");
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    if (luaL_loadbuffer(L, src, len, name) != 0)
        lua_error(L);
}
#endif

/* A finding: say what broke, then abort so libFuzzer saves the input. */
#define FUZZ_FAIL(...)                                                                             \
    do {                                                                                           \
        fprintf(stderr, "FUZZ FINDING: " __VA_ARGS__);                                             \
        fputc('\n', stderr);                                                                       \
        abort();                                                                                   \
    } while (0)

#endif
