/* Fuzz target: the Kubernetes watch-stream decoder (lua/kubelua/k8s/watch.lua
 * over lua/kubelua/k8s/json.lua and lua-cjson): the line splitting, the line
 * cap and the event handling of one watch request. The real module runs with
 * fakes for kubelua.core (tasks run at once, waits return at once) and
 * kubelua.http (a stream whose reads hand out the fuzz bytes); the watch
 * starts from a resourceVersion, so the first thing it does is watch, and
 * the next request (a relist or a new watch) stops it.
 *
 * Input: [flags][nsplits][split sizes...][stream bytes...]
 *   flags bit 0: line cap 64 bytes (else 4096)
 *         bit 1: the stream ends with a read error (else a clean end)
 *         bit 2: a path under /secrets (messages must not quote lines)
 * The stream is fed twice: in one read, then cut where the split sizes say.
 * Checks: no error escapes the watch's task (core.log "E"); every event is
 * ADDED/MODIFIED/DELETED with an object that has metadata.name; every
 * on_error message is "CODE: watch PATH: ..." with that CODE; for /secrets
 * no message quotes the stream; both feeds give the same events, errors,
 * resourceVersion and store; the Lua heap stays small. Lua lines run are
 * coverage (fuzz_lua_cov.h). */
#include "fuzz_lua.h"
#include "fuzz_lua_cov.h"

#include <stdint.h>
#include <string.h>

static const char CHECK[] =
    "local function fail(fmt, ...) error('FUZZ FINDING: ' .. string.format(fmt, ...), 0) end\n"
    "local clock, tasks, opens, current, plan = 0, {}, 0, nil, nil\n"
    "local function nop() end\n"
    "package.loaded['kubelua.core'] = {\n"
    "  version = 'fuzz',\n"
    "  monotime = function() clock = clock + 0.001; return clock end,\n"
    "  spawn = function(f) tasks[#tasks + 1] = f end,\n"
    "  waker = function() return { wait = nop, wake = nop } end,\n"
    "  log = function(level, msg)\n"
    "    if level == 'E' then fail('the watch logged an error: %s', tostring(msg)) end\n"
    "  end,\n"
    "}\n"
    "local function refused()\n"
    "  return { response = function() return nil, 'UNAVAILABLE: GET x: refused', "
    "'UNAVAILABLE' end,\n"
    "    read = function() return nil, 'CANCELLED: closed', 'CANCELLED' end, close = nop }\n"
    "end\n"
    "package.loaded['kubelua.http'] = { open = function(o)\n"
    "  opens = opens + 1\n"
    "  if opens > 1 then current:cancel(); return refused() end\n"
    "  if type(o.url) ~= 'string' or not o.url:find('watch=1', 1, true) then\n"
    "    fail('not a watch request: %s', tostring(o.url))\n"
    "  end\n"
    "  local i, closed = 0, false\n"
    "  return {\n"
    "    response = function() return { status = 200, headers = {} } end,\n"
    "    read = function()\n"
    "      if closed then fail('read after close') end\n"
    "      i = i + 1\n"
    "      if plan.chunks[i] then return plan.chunks[i] end\n"
    "      if plan.cut then return nil, 'RESET: GET x: connection reset', 'RESET' end\n"
    "      return nil\n"
    "    end,\n"
    "    close = function() closed = true end,\n"
    "  }\n"
    "end }\n"
    "local watch = require 'kubelua.k8s.watch'\n"
    "local EVENTS = { ADDED = true, MODIFIED = true, DELETED = true }\n"
    "local function one(p, path)\n"
    "  plan, opens, tasks, clock = p, 0, {}, 0\n"
    "  local seen = {}\n"
    "  local client = { server = 'https://fuzz.invalid:6443',\n"
    "    _base = function() return {} end,\n"
    "    list = function() current:cancel(); return nil, 'UNAVAILABLE: refused', "
    "'UNAVAILABLE' end }\n"
    "  current = watch.start(client, path, {\n"
    "    resource_version = '1', log = false, bookmarks = true, timeout_seconds = 60,\n"
    "    on_event = function(t, obj)\n"
    "      if not EVENTS[t] or type(obj) ~= 'table' or type(obj.metadata) ~= 'table'\n"
    "        or type(obj.metadata.name) ~= 'string' then\n"
    "        fail('bad event %s %s', tostring(t), tostring(obj))\n"
    "      end\n"
    "      seen[#seen + 1] = t .. ' ' .. obj.metadata.name .. ' ' .. "
    "tostring(obj.metadata.resourceVersion)\n"
    "    end,\n"
    "    on_bookmark = function(rv) seen[#seen + 1] = 'BOOKMARK ' .. tostring(rv) end,\n"
    "    on_error = function(err, code)\n"
    "      if type(err) ~= 'string' or type(code) ~= 'string' or err:sub(1, #code + 2) ~= code .. "
    "': '\n"
    "        or not err:find(': watch ' .. path .. ': ', 1, true) then\n"
    "        fail('bad error shape: %s / %s', tostring(err), tostring(code))\n"
    "      end\n"
    "      if p.secret and (code == 'DECODE' or err:find('event line', 1, true))\n"
    "        and not err:find('not shown', 1, true) then\n"
    "        fail('a message quotes a secret stream: %s', err)\n"
    "      end\n"
    "      seen[#seen + 1] = 'ERROR ' .. code\n"
    "    end,\n"
    "  })\n"
    "  for _, f in ipairs(tasks) do f() end\n"
    "  if current.state ~= 'stopped' then fail('the watch did not stop: %s', current.state) end\n"
    "  seen[#seen + 1] = 'rv ' .. tostring(current.resource_version)\n"
    "  seen[#seen + 1] = 'expired ' .. current.stats.expired\n"
    "  for _, obj in ipairs(current:items()) do\n"
    "    seen[#seen + 1] = 'store ' .. obj.metadata.name\n"
    "  end\n"
    "  return table.concat(seen, '\\n')\n"
    "end\n"
    "return function(s, flags, splits)\n"
    "  watch.defaults.max_line = flags % 2 == 1 and 64 or 4096\n"
    "  local cut = math.floor(flags / 2) % 2 == 1\n"
    "  local secret = math.floor(flags / 4) % 2 == 1\n"
    "  local path = secret and '/api/v1/namespaces/ns/secrets' or '/api/v1/pods'\n"
    "  local whole = one({ chunks = { s }, cut = cut, secret = secret }, path)\n"
    "  local chunks, at, i = {}, 1, 0\n"
    "  while at <= #s do\n"
    "    local b = #splits > 0 and splits:byte(i % #splits + 1) or 255\n"
    "    local n = b < 128 and b + 1 or (b - 127) * 61\n"
    "    chunks[#chunks + 1] = s:sub(at, at + n - 1)\n"
    "    at, i = at + n, i + 1\n"
    "  end\n"
    "  local split = one({ chunks = chunks, cut = cut, secret = secret }, path)\n"
    "  if whole ~= split then\n"
    "    fail('the split changes the outcome (%d reads):\\n%s\\n---- split\\n%s', #chunks, whole, "
    "split)\n"
    "  end\n"
    "  collectgarbage()\n"
    "  if collectgarbage('count') > 64 * 1024 then\n"
    "    fail('the Lua heap holds %d KiB', collectgarbage('count'))\n"
    "  end\n"
    "end\n";

typedef struct {
    const uint8_t *data;
    size_t size;
} input;

static int run_input(lua_State *L)
{
    input *in = lua_touserdata(L, 1);
    lua_settop(L, 0);
    fuzz_push_check(L, CHECK, sizeof CHECK - 1, "=fuzz.k8s_watch");
    lua_call(L, 0, 1);
    size_t nsplits = in->data[1];
    if (2 + nsplits > in->size)
        nsplits = in->size - 2;
    const char *splits = (const char *)in->data + 2;
    lua_pushlstring(L, splits + nsplits, in->size - 2 - nsplits);
    lua_pushinteger(L, in->data[0]);
    lua_pushlstring(L, splits, nsplits);
    lua_call(L, 3, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    input in = {data, size};
    lua_State *L = fuzz_new_state();
    fuzz_lua_coverage(L);
    if (lua_cpcall(L, run_input, &in) != 0) {
        const char *msg = lua_tostring(L, -1);
        if (msg == NULL || strstr(msg, "not enough memory") == NULL)
            FUZZ_FAIL("k8s_watch: %s", msg ? msg : "(not a string)");
    }
    lua_close(L);
    return 0;
}
