/* kubelua: argument handling and dispatch only; the commands live in Lua
 * (lua/kubelua/main.lua and lua/kubelua/cli/). */
#include "kubelua.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

int luaopen_kubelua_term(lua_State *L);
void kl_term_install_sigint(kl_host *h);

int main(int argc, char **argv)
{
    kl_host *h = kl_host_new(NULL);
    if (h == NULL) {
        fprintf(stderr, "kubelua: cannot create the host\n");
        return 1;
    }
    kl_host_preload(h, "kubelua.term", luaopen_kubelua_term);
    kl_term_install_sigint(h);

    lua_State *L = kl_host_lua(h);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "kubelua.main");
    if (lua_pcall(L, 1, 1, 0) != 0) {
        fprintf(stderr, "kubelua: %s\n", lua_tostring(L, -1));
        kl_host_free(h);
        return 1;
    }
    lua_getfield(L, -1, "main");
    lua_remove(L, -2);
    lua_createtable(L, argc, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    kl_host_spawn(h, 1);
    int failed = kl_host_run(h);
    int code = failed ? 1 : kl_host_exit_code(h);
    kl_host_free(h);
    return code;
}
