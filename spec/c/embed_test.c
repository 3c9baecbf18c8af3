/* The embedding API from a C program's side: a host on the caller's own
 * loop, a registered C function, a task that parks on a timer, errors
 * reported without stopping the host, and a clean free. */
#include "kubelua.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static int calls;
static char last_arg[64];

static int l_record(lua_State *L)
{
    calls++;
    snprintf(last_arg, sizeof last_arg, "%s", luaL_checkstring(L, 1));
    lua_pushinteger(L, calls);
    return 1;
}

static int tick_count;
static void on_tick(uv_timer_t *t)
{
    (void)t;
    tick_count++;
}

int main(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    /* Something of the caller's own on the same loop. */
    uv_timer_t tick;
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, on_tick, 1, 1);
    uv_unref((uv_handle_t *)&tick);

    kl_host_options opts = {.loop = &loop, .lua_dir = KL_TEST_LUA_DIR};
    kl_host *h = kl_host_new(&opts);
    CHECK(h != NULL, "kl_host_new");
    CHECK(kl_host_loop(h) == &loop, "the host runs on the caller's loop");
    kl_host_register(h, "record", l_record);

    CHECK(kl_host_spawn_string(h,
                               "local ext = require 'kubelua.ext'\n"
                               "local task = require 'kubelua.task'\n"
                               "task.sleep(0.03)\n"
                               "assert(ext.record('after sleep') == 1)\n",
                               "=embed") == 0,
          "spawn a good chunk: %s", kl_host_last_error(h));
    CHECK(kl_host_spawn_string(h, "error('deliberate')", "=bad") == 0, "spawn a failing chunk");
    CHECK(kl_host_spawn_string(h, "this is not lua", "=syntax") == -1,
          "a chunk that does not compile is refused");
    CHECK(strstr(kl_host_last_error(h), "syntax") != NULL, "the error names the chunk: %s",
          kl_host_last_error(h));

    int failed = kl_host_run(h);
    CHECK(failed == 1, "one task failed, got %d", failed);
    CHECK(calls == 1 && strcmp(last_arg, "after sleep") == 0, "the C function ran after the sleep");
    CHECK(tick_count > 0, "the caller's own timer ran on the shared loop (%d)", tick_count);

    /* Push a function and arguments, spawn it as a task. */
    lua_State *L = kl_host_lua(h);
    luaL_loadstring(L, "local a, b = ... ; require('kubelua.ext').record(a .. b)");
    lua_pushstring(L, "x");
    lua_pushstring(L, "y");
    kl_host_spawn(h, 2);
    kl_host_run(h);
    CHECK(calls == 2 && strcmp(last_arg, "xy") == 0, "kl_host_spawn passed the arguments");

    /* A task still parked at free time is cancelled cleanly. */
    kl_host_spawn_string(h, "require('kubelua.task').sleep(3600)", "=parked");
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_run(&loop, UV_RUN_NOWAIT);
    kl_host_free(h);

    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0, "no handle of the host is left on the caller's loop");
    printf("%s\n", failures ? "embed: FAILED" : "embed: ok");
    printf("%d passed, %d failed\n", failures ? 0 : 1, failures ? 1 : 0);
    return failures ? 1 : 0;
}
