/*
 * kubelua.h - embed the kubelua host in another C program.
 *
 * A host is one LuaJIT state driven by one libuv loop. Lua code runs in
 * coroutines ("tasks"); bindings that do I/O park their task and the loop
 * resumes it with the result, so scripts read as straight-line code without
 * blocking the loop.
 *
 * Typical use:
 *
 *     kl_host *h = kl_host_new(NULL);           // own loop, default module path
 *     kl_host_register(h, "hello", my_cfunc);   // require("kubelua.ext").hello
 *     kl_host_spawn_file(h, "policy.lua", 0, NULL);
 *     int failed = kl_host_run(h);              // until no task and no I/O is left
 *     kl_host_free(h);
 *
 * All functions must be called from the thread that runs the loop.
 */
#ifndef KUBELUA_H
#define KUBELUA_H

#include <lua.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KUBELUA_VERSION "0.1.0"

typedef struct kl_host kl_host;

typedef struct kl_host_options {
    /* Loop to run on. NULL: the host creates and owns its own loop. */
    uv_loop_t *loop;
    /* Folder holding the kubelua Lua modules (kubelua/cri.lua, ...).
     * NULL: $KUBELUA_LUA_PATH, then the installed modules beside the
     * library (<libdir>/../share/kubelua/lua, found from libkubelua.so's own
     * path), then <exe>/../share/kubelua/lua, then the source tree the
     * library was built from. */
    const char *lua_dir;
} kl_host_options;

/* Create a host. If SIGPIPE still has its default action it is set to
 * ignored, so a peer closing a socket shows up as an error, not an exit.
 * Returns NULL when out of memory or when the loop cannot be
 * initialised. */
kl_host *kl_host_new(const kl_host_options *opts);

/* Cancel every parked task, close every handle the host owns and free it.
 * A loop passed in by the caller is left open (and run once to let handles
 * close); an own loop is closed. */
void kl_host_free(kl_host *h);

lua_State *kl_host_lua(kl_host *h);
uv_loop_t *kl_host_loop(kl_host *h);

/* Make `fn` callable from Lua as require("kubelua.ext")[name]. */
void kl_host_register(kl_host *h, const char *name, lua_CFunction fn);

/* Make `open` available to require(modname). */
void kl_host_preload(kl_host *h, const char *modname, lua_CFunction open);

/* Start a task running a script file or a string; `arg` (argv[0..argc-1])
 * is passed as the chunk's varargs and the global-free table `...`.
 * Returns 0, or -1 when the chunk does not compile (the message is then in
 * kl_host_last_error). The task itself runs when the loop runs. */
int kl_host_spawn_file(kl_host *h, const char *path, int argc, char **argv);
int kl_host_spawn_string(kl_host *h, const char *code, const char *chunkname);

/* Start a task calling the function on top of the Lua stack (popped) with
 * the `nargs` values below it... i.e. push fn, then args, then call this. */
void kl_host_spawn(kl_host *h, int nargs);

/* Run the loop until no task is parked and no I/O is pending, or until
 * kl_host_stop. Returns the number of tasks that ended with an error. */
int kl_host_run(kl_host *h);

/* The exit status a script asked for with kubelua.core.set_exit_code (0 by default). */
int kl_host_exit_code(kl_host *h);

/* Make kl_host_run return after the current loop iteration. */
void kl_host_stop(kl_host *h);

/* The message of the last failure of a kl_host_* call ("" if none). */
const char *kl_host_last_error(kl_host *h);

#ifdef __cplusplus
}
#endif

#endif
