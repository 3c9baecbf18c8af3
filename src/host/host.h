/* Private host interface: the scheduler (park/resume), error helpers and
 * module registration shared by every binding family. */
#ifndef KL_HOST_PRIV_H
#define KL_HOST_PRIV_H

#include "kubelua.h"

#include <lauxlib.h>
#include <stdint.h>

typedef struct kl_park kl_park;

/* Called when the host drops a parked operation (shutdown, task killed).
 * The operation must release its resources and never complete `p`. */
typedef void (*kl_park_cancel_fn)(void *ud);

struct kl_host {
    uv_loop_t *loop;
    uv_loop_t own_loop;
    int owns_loop;
    lua_State *L;
    uv_idle_t idle;     /* runs queued resumes */
    kl_park *parked;    /* every parked task (doubly linked) */
    kl_park *ready;     /* queue of tasks to resume (singly linked, FIFO) */
    kl_park *ready_end; /* tail of ready */
    int parking;        /* set by kl__park_yield, checked after lua_resume */
    int task_errors;
    int exit_code; /* set by kubelua.core.set_exit_code */
    int stopping;
    char lua_dir[1024];
    char last_error[512];
    /* Interrupt support (REPL Ctrl-C, evaluation budgets). */
    volatile int interrupt_pending;
    int interruptible;
    int log_json; /* kubelua.core.set_log_format("json"): JSON lines instead of klog text */
};

/* --- host ------------------------------------------------------------- */

/* The host owning this Lua state (any of its coroutines). */
kl_host *kl__host(lua_State *L);

/* Log a line on stderr in klog style: level is 'I', 'W' or 'E'. */
void kl__log(char level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The same, in h's log format (klog text, or one JSON object per line with
 * ts, level, msg, pid and, when not NULL, caller "file:line"). */
void kl__logh(kl_host *h, char level, const char *caller, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The same with a message of `len` bytes (it may hold NULs), not a format. */
void kl__logh_msg(kl_host *h, char level, const char *caller, const char *msg, size_t len);

/* --- scheduler -------------------------------------------------------- */

/* Begin parking the running task L: raises a Lua error when L is not a
 * host task (the main thread, or a coroutine the host did not start).
 * The returned record keeps the coroutine alive until it is resumed. */
kl_park *kl__park_new(lua_State *L);

/* Whether L is a task the host started (and so may park). */
int kl__in_task(lua_State *L);

/* Install the cancel hook of an armed operation. */
void kl__park_set_cancel(kl_park *p, kl_park_cancel_fn fn, void *ud);

/* Yield the task; the binding returns this value: `return kl__park_yield(L, p);` */
int kl__park_yield(lua_State *L, kl_park *p);

/* The coroutine to push results onto before kl__park_resume. */
lua_State *kl__park_thread(kl_park *p);

/* Queue the task for resumption with the top `nres` values of its stack as
 * the results of the yielding call. Only loop callbacks call this; the
 * resume itself happens from the host's idle handle, never nested. */
void kl__park_resume(kl_park *p, int nres);

/* Start a new task: the function and nargs arguments on top of L's stack
 * are moved into a new coroutine which runs on the next loop turn. */
void kl__spawn(kl_host *h, lua_State *L, int nargs);

/* How many tasks are parked on an operation (for test harnesses). */
int kl__parked_count(kl_host *h);

/* --- errors ------------------------------------------------------------ */

/* Push the I/O error triple (nil, "CODE: message", "CODE"); returns 3. */
int kl__push_error(lua_State *L, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* --- userdata types ---------------------------------------------------- */

/* Create the metatable `tname` for a userdata type: `methods` under
 * __index, `gc` as __gc. Leaves the stack as it was. */
void kl__new_type(lua_State *L, const char *tname, const luaL_Reg *methods, lua_CFunction gc);

/* --- modules ------------------------------------------------------------ */

/* The built-in C modules, generated from every `luaopen_kubelua_*` defined
 * in src/ (cmake/gen_modules.cmake): luaopen_kubelua_http_core is
 * require("kubelua.http.core"). NULL-terminated. */
typedef struct {
    const char *name;
    lua_CFunction open;
} kl__module;
extern const kl__module kl__modules[];

#endif
