/* gc-report: what would container GC remove on this node, and how much
 * space would it free? A small operator tool that embeds the kubelua host
 * through include/kubelua.h only.
 *
 *   gc-report [-r ENDPOINT] [--max-per-pod-container N] [--min-age S] [-v]
 *
 * The endpoint comes from -r/--runtime-endpoint, else
 * $CONTAINER_RUNTIME_ENDPOINT, else kubelua's default (containerd's socket).
 * Nothing is removed: the report is kubelua.gc's plan (a dry run).
 *
 * What it shows of the API:
 *   - a host with its own loop, found Lua modules next to the installed
 *     library (no KUBELUA_LUA_PATH needed);
 *   - C functions added to Lua: require("kubelua.ext").human_bytes and
 *     .node_name;
 *   - the Lua side pushed as a function plus arguments (kl_host_spawn), so
 *     nothing is pasted into source text;
 *   - the exit status the script chose (kl_host_exit_code).
 *
 * Exit status: 0 the plan was printed, 1 the runtime could not be listed or
 * the plan failed, 2 bad usage, 3 the host could not start.
 */
#define _DEFAULT_SOURCE /* gethostname */
#include <kubelua.h>

#include <getopt.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* human_bytes(n) -> "0 B", "512 B", "1.5 KiB", "20.0 MiB", ... (IEC units,
 * one decimal above bytes). n is a number; a negative one is an argument
 * error. */
static int l_human_bytes(lua_State *L)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double n = luaL_checknumber(L, 1);
    if (n < 0)
        return luaL_argerror(L, 1, "negative size");
    int u = 0;
    while (n >= 1024 && u < (int)(sizeof units / sizeof units[0]) - 1) {
        n /= 1024;
        u++;
    }
    if (u == 0)
        lua_pushfstring(L, "%d B", (int)n);
    else {
        char buf[32];
        snprintf(buf, sizeof buf, "%.1f %s", n, units[u]);
        lua_pushstring(L, buf);
    }
    return 1;
}

/* node_name() -> this machine's host name (what kubelet calls the node
 * unless told otherwise). */
static int l_node_name(lua_State *L)
{
    char name[256];
    if (gethostname(name, sizeof name) != 0)
        return luaL_error(L, "gethostname failed");
    name[sizeof name - 1] = '\0';
    lua_pushstring(L, name);
    return 1;
}

/* The tool's policy side. Arguments: endpoint (or nil), max per pod
 * container, min age, verbose. */
static const char report_lua[] =
    "local endpoint, max_per, min_age, verbose = ...\n"
    "local core = require 'kubelua.core'\n"
    "local ext = require 'kubelua.ext'\n"
    "if verbose then\n"
    "  io.stderr:write('gc-report: modules from ', package.searchpath('kubelua.gc', package.path), "
    "'\\n')\n"
    "end\n"
    "local rt, err = require('kubelua.cri').connect(endpoint, { timeout = 30 })\n"
    "if not rt then\n"
    "  io.stderr:write('gc-report: ', err, '\\n')\n"
    "  return core.set_exit_code(1)\n"
    "end\n"
    "local g = require('kubelua.gc').new{ runtime = rt, max_per_pod_container = max_per,\n"
    "  min_age = min_age, container_sizes = true }\n"
    "local plan, perr = g:plan()\n"
    "rt:close()\n"
    "if not plan then\n"
    "  io.stderr:write('gc-report: ', perr, '\\n')\n"
    "  return core.set_exit_code(1)\n"
    "end\n"
    "local function size(b) return b and ext.human_bytes(tonumber(b)) or '?' end\n"
    "print(('node %s: GC dry run, nothing removed'):format(ext.node_name()))\n"
    "for _, c in ipairs(plan.containers) do\n"
    "  print(('container %s %s/%s attempt %s (%s): %s, %s'):format(c.id:sub(1, 13), c.pod,\n"
    "    c.name, tostring(c.attempt), c.state, c.rule, size(c.bytes)))\n"
    "end\n"
    "for _, s in ipairs(plan.sandboxes) do\n"
    "  print(('sandbox %s %s: %s'):format(s.id:sub(1, 13), s.pod, s.rule))\n"
    "end\n"
    "for _, d in ipairs(plan.log_dirs) do\n"
    "  print(('logs %s: %s, %s'):format(d.path, d.rule, size(d.bytes)))\n"
    "end\n"
    "print(('total: %d containers, %d sandboxes, %d log folders; %s freed'):format(\n"
    "  #plan.containers, #plan.sandboxes, #plan.log_dirs, size(plan.bytes)))\n";

static void usage(FILE *to)
{
    fputs("usage: gc-report [-r ENDPOINT] [--max-per-pod-container N] [--min-age S] [-v]\n"
          "  -r, --runtime-endpoint EP    CRI endpoint (default $CONTAINER_RUNTIME_ENDPOINT)\n"
          "  --max-per-pod-container N    dead containers kept per pod and name (1)\n"
          "  --min-age S                  seconds since creation before one may go (0)\n"
          "  -v, --verbose                say where the Lua modules come from\n",
          to);
}

static int parse_number(const char *s, double *out)
{
    char *end;
    *out = strtod(s, &end);
    return end != s && *end == '\0';
}

int main(int argc, char **argv)
{
    const char *endpoint = getenv("CONTAINER_RUNTIME_ENDPOINT");
    double max_per = 1, min_age = 0;
    int verbose = 0;
    static const struct option longopts[] = {
        {"runtime-endpoint", required_argument, NULL, 'r'},
        {"max-per-pod-container", required_argument, NULL, 'm'},
        {"min-age", required_argument, NULL, 'a'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "r:vh", longopts, NULL)) != -1) {
        switch (c) {
        case 'r':
            endpoint = optarg;
            break;
        case 'm':
            if (!parse_number(optarg, &max_per)) {
                fprintf(stderr, "gc-report: --max-per-pod-container: not a number: %s\n", optarg);
                return 2;
            }
            break;
        case 'a':
            if (!parse_number(optarg, &min_age) || min_age < 0) {
                fprintf(stderr, "gc-report: --min-age: not a number of seconds: %s\n", optarg);
                return 2;
            }
            break;
        case 'v':
            verbose = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "gc-report: unexpected argument %s\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    kl_host *h = kl_host_new(NULL);
    if (h == NULL) {
        fputs("gc-report: cannot create the kubelua host\n", stderr);
        return 3;
    }
    kl_host_register(h, "human_bytes", l_human_bytes);
    kl_host_register(h, "node_name", l_node_name);

    lua_State *L = kl_host_lua(h);
    if (luaL_loadbuffer(L, report_lua, sizeof report_lua - 1, "=gc-report") != 0) {
        fprintf(stderr, "gc-report: %s\n", lua_tostring(L, -1));
        kl_host_free(h);
        return 3;
    }
    if (endpoint != NULL && *endpoint != '\0')
        lua_pushstring(L, endpoint);
    else
        lua_pushnil(L);
    lua_pushnumber(L, max_per);
    lua_pushnumber(L, min_age);
    lua_pushboolean(L, verbose);
    kl_host_spawn(h, 4);

    int failed = kl_host_run(h);
    int status = failed ? 1 : kl_host_exit_code(h);
    kl_host_free(h);
    return status;
}
