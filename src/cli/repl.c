/* kubelua.term: line input for the REPL without blocking the loop.
 *
 * On a terminal, libedit's callback interface reads keys as they arrive on
 * a uv_poll of stdin, so tasks (CRI calls, timers) keep running while the
 * user types. Elsewhere (pipes, files) lines are read with plain stdio.
 *
 * Ctrl-C: while an evaluation runs, a count hook raises "interrupted" in
 * it; at the prompt, the line being typed is dropped. A signal handler can
 * only reach the host through process-wide state, so this file keeps the
 * one static pointer of the program (set once, by the CLI).
 */
#include "host/host.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef KL_HAVE_LIBEDIT
#include <editline/readline.h>
#endif

typedef struct {
    kl_host *h;
    int sigpipe[2];
    uv_poll_t sig_poll;
    uv_poll_t in_poll;
    int in_poll_active;
    kl_park *waiter;
    lua_State *waiter_co;
    char prompt[256];
    int completer_ref;
    int active; /* the REPL loaded kubelua.term: Ctrl-C is ours to handle */
    int has_in_poll;
    int open_handles;
} term;

/* The program's one piece of process-wide state: signal handlers get no
 * user pointer. */
static term *g_term;

static void interrupt_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted");
}

static void on_sigint(int sig)
{
    (void)sig;
    term *t = g_term;
    if (t == NULL || !t->active) { /* not a REPL: Ctrl-C ends the program */
        signal(SIGINT, SIG_DFL);
        raise(SIGINT);
        return;
    }
    if (t->h->interruptible) { /* an evaluation is running: stop it */
        lua_sethook(t->h->L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
        return;
    }
    int saved = errno; /* at the prompt: the loop drops the line */
    ssize_t n = write(t->sigpipe[1], "i", 1);
    (void)n;
    errno = saved;
}

#ifdef KL_HAVE_LIBEDIT
static void line_done(char *line);

static void deliver(term *t, const char *line, int eof)
{
    if (t->waiter == NULL)
        return;
    kl_park *p = t->waiter;
    t->waiter = NULL;
    if (t->in_poll_active) {
        uv_poll_stop(&t->in_poll);
        t->in_poll_active = 0;
    }
    rl_callback_handler_remove();
    if (eof)
        lua_pushnil(t->waiter_co);
    else
        lua_pushstring(t->waiter_co, line);
    kl__park_resume(p, 1);
}

static void line_done(char *line)
{
    term *t = g_term;
    deliver(t, line, line == NULL);
    free(line);
}

static void on_stdin(uv_poll_t *p, int status, int events)
{
    (void)p;
    (void)events;
    if (status < 0) {
        deliver(g_term, NULL, 1);
        return;
    }
    rl_callback_read_char();
}

static char *complete_entry(const char *text, int state)
{
    static lua_State *L;
    static int idx, n;
    term *t = g_term;
    if (t->completer_ref == LUA_NOREF)
        return NULL;
    L = t->h->L;
    if (state == 0) {
        lua_settop(L, 0);
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->completer_ref);
        lua_pushstring(L, text);
        lua_pushstring(L, rl_line_buffer ? rl_line_buffer : "");
        if (lua_pcall(L, 2, 1, 0) != 0 || !lua_istable(L, -1)) {
            lua_settop(L, 0);
            return NULL;
        }
        idx = 0;
        n = (int)lua_objlen(L, -1);
    }
    if (idx >= n || !lua_istable(L, 1))
        return NULL;
    lua_rawgeti(L, 1, ++idx);
    const char *s = lua_tostring(L, -1);
    char *r = s ? strdup(s) : NULL;
    lua_pop(L, 1);
    if (idx >= n)
        lua_settop(L, 0);
    return r;
}
#endif

static void on_sig_readable(uv_poll_t *p, int status, int events)
{
    (void)p;
    (void)status;
    (void)events;
    term *t = g_term;
    char buf[64];
    while (read(t->sigpipe[0], buf, sizeof buf) > 0)
        ;
#ifdef KL_HAVE_LIBEDIT
    if (t->waiter != NULL) { /* at the prompt: drop the line, show a new prompt */
        fputs("^C\n", stdout);
        rl_callback_handler_remove();
        rl_callback_handler_install(t->prompt, line_done);
    }
#endif
}

static void term_cancel(void *ud)
{
    term *t = ud;
    t->waiter = NULL;
    if (t->in_poll_active) {
        uv_poll_stop(&t->in_poll);
        t->in_poll_active = 0;
    }
}

/* readline(prompt) -> line | nil at end of input */
static int l_readline(lua_State *L)
{
    term *t = g_term;
    const char *prompt = luaL_optstring(L, 1, "> ");
#ifdef KL_HAVE_LIBEDIT
    if (t->has_in_poll) {
        if (t->waiter != NULL)
            return luaL_error(L, "kubelua.term: readline already in progress");
        snprintf(t->prompt, sizeof t->prompt, "%s", prompt);
        kl_park *p = kl__park_new(L);
        t->waiter = p;
        t->waiter_co = L;
        kl__park_set_cancel(p, term_cancel, t);
        rl_callback_handler_install(t->prompt, line_done);
        uv_poll_start(&t->in_poll, UV_READABLE, on_stdin);
        t->in_poll_active = 1;
        return kl__park_yield(L, p);
    }
#endif
    if (isatty(0)) {
        fputs(prompt, stdout);
        fflush(stdout);
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        lua_pushnil(L);
        return 1;
    }
    if (n > 0 && line[n - 1] == '\n')
        line[--n] = '\0';
    lua_pushlstring(L, line, (size_t)n);
    free(line);
    return 1;
}

/* add_history(line): append a line to the in-memory history. */
static int l_add_history(lua_State *L)
{
#ifdef KL_HAVE_LIBEDIT
    add_history(luaL_checkstring(L, 1));
#endif
    return 0;
}

/* read_history(path): load history from a file (a missing file is fine). */
static int l_read_history(lua_State *L)
{
#ifdef KL_HAVE_LIBEDIT
    read_history(luaL_checkstring(L, 1));
#endif
    return 0;
}

/* write_history(path [, max]) -> true | nil, err: save the last `max` (1000) lines. */
static int l_write_history(lua_State *L)
{
#ifdef KL_HAVE_LIBEDIT
    const char *path = luaL_checkstring(L, 1);
    stifle_history((int)luaL_optinteger(L, 2, 1000));
    if (write_history(path) != 0)
        return kl__push_error(L, "EIO", "cannot write history to %s", path);
#endif
    lua_pushboolean(L, 1);
    return 1;
}

/* set_completer(fn(word, line) -> {candidates}) */
static int l_set_completer(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    term *t = g_term;
    luaL_unref(L, LUA_REGISTRYINDEX, t->completer_ref);
    lua_pushvalue(L, 1);
    t->completer_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* interruptible(on): whether Ctrl-C raises "interrupted" in running Lua code */
static int l_interruptible(lua_State *L)
{
    kl_host *h = kl__host(L);
    h->interruptible = lua_toboolean(L, 1);
    if (!h->interruptible)
        lua_sethook(L, NULL, 0, 0);
    return 0;
}

/* isatty([fd]) -> whether fd (0) is a terminal. */
static int l_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_optinteger(L, 1, 0)));
    return 1;
}

static void term_handle_closed(uv_handle_t *h)
{
    term *t = h->data;
    if (--t->open_handles == 0) {
        close(t->sigpipe[0]);
        close(t->sigpipe[1]);
        free(t);
    }
}

/* The term state outlives the Lua state: its handles close on the loop. */
static int term_gc(lua_State *L)
{
    term *t = *(term **)lua_touserdata(L, 1);
    g_term = NULL;
    if (t->sigpipe[0] < 0) {
        free(t);
        return 0;
    }
    t->open_handles = 1;
    t->sig_poll.data = t;
    uv_close((uv_handle_t *)&t->sig_poll, term_handle_closed);
    if (t->has_in_poll) {
        t->open_handles++;
        t->in_poll.data = t;
        uv_close((uv_handle_t *)&t->in_poll, term_handle_closed);
    }
#ifdef KL_HAVE_LIBEDIT
    if (t->has_in_poll)
        rl_callback_handler_remove();
#endif
    return 0;
}

static void term_setup(lua_State *L, term *t)
{
    if (t->sigpipe[0] >= 0 || pipe(t->sigpipe) != 0)
        return;
    t->active = 1;
    uv_poll_init(t->h->loop, &t->sig_poll, t->sigpipe[0]);
    uv_poll_start(&t->sig_poll, UV_READABLE, on_sig_readable);
    uv_unref((uv_handle_t *)&t->sig_poll);
    if (isatty(0) && uv_poll_init(t->h->loop, &t->in_poll, 0) == 0)
        t->has_in_poll = 1;
#ifdef KL_HAVE_LIBEDIT
    rl_readline_name = "kubelua";
    rl_completion_entry_function = complete_entry;
    rl_basic_word_break_characters = " \t\n\"'(),=+-*/<>{}[];";
#endif
    (void)L;
}

int luaopen_kubelua_term(lua_State *L)
{
    term_setup(L, g_term);
    static const luaL_Reg fns[] = {{"readline", l_readline},
                                   {"add_history", l_add_history},
                                   {"read_history", l_read_history},
                                   {"write_history", l_write_history},
                                   {"set_completer", l_set_completer},
                                   {"interruptible", l_interruptible},
                                   {"isatty", l_isatty},
                                   {0, 0}};
    luaL_newlib(L, fns);
    return 1;
}

void kl_term_install_sigint(kl_host *h)
{
    lua_State *L = kl_host_lua(h);
    term *t = calloc(1, sizeof *t);
    if (t == NULL)
        return;
    *(term **)lua_newuserdata(L, sizeof t) = t;
    t->h = h;
    t->sigpipe[0] = t->sigpipe[1] = -1;
    t->completer_ref = LUA_NOREF;
    lua_newtable(L);
    lua_pushcfunction(L, term_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, "kubelua.term.state");
    g_term = t;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
}
