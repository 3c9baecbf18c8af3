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

/* A finding: say what broke, then abort so libFuzzer saves the input. */
#define FUZZ_FAIL(...)                                                                             \
    do {                                                                                           \
        fprintf(stderr, "FUZZ FINDING: " __VA_ARGS__);                                             \
        fputc('\n', stderr);                                                                       \
        abort();                                                                                   \
    } while (0)

#endif
