-- Helpers for specs that need real processes, sockets and folders.
-- (They block the loop briefly while a shell command runs: fine in tests.)
local task = require "kubelua.task"

local M = {}

M.ROOT = (arg and arg[0] or "spec/runner.lua"):match("^(.*)/spec/[^/]*$") or "."

-- Run a shell command; returns its stdout (trailing newline stripped) and
-- whether it succeeded.
function M.sh(cmd)
  local f = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"::rc=$?\""))
  local out = f:read("*a")
  f:close()
  local body, rc = out:match("^(.-)\n?::rc=(%d+)\n?$")
  return body, tonumber(rc) == 0
end

-- A fresh temporary folder, removed with M.rm.
function M.tmpdir(tag)
  local out = M.sh("mktemp -d /tmp/kubelua-" .. (tag or "spec") .. ".XXXXXX")
  return out
end

function M.rm(path)
  if path and path:match("^/tmp/kubelua%-") then
    M.sh("rm -rf '" .. path .. "'")
  end
end

-- Start a background process; returns its pid.
function M.spawn(cmd, log)
  local pid = M.sh(string.format("(%s) > '%s' 2>&1 & echo $!", cmd, log or "/dev/null"))
  return tonumber(pid)
end

function M.kill(pid, sig)
  if pid then
    M.sh(string.format("kill -%s %d; for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 %d 2>/dev/null || break; sleep 0.1; done",
      sig or "TERM", pid, pid))
  end
end

function M.exists(path)
  local _, ok = M.sh("test -e '" .. path .. "'")
  return ok
end

-- Wait (parking the task) until pred() is true; returns the seconds taken or nil.
function M.wait_for(pred, timeout, step)
  local start = task.monotime()
  while task.monotime() - start < (timeout or 10) do
    if pred() then
      return task.monotime() - start
    end
    task.sleep(step or 0.05)
  end
  return nil
end

-- The whole file as a string, or nil (and why) when it cannot be read.
M.read_file = require("kubelua.gc.store").read_file

-- Writes `text` to `path` (replacing the file); returns the path.
function M.write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- The private containerd of the test run (started by the ctest fixture).
function M.containerd()
  local dir = os.getenv("KUBELUA_TEST_CTD_DIR")
  if not dir or dir == "" then
    return nil
  end
  return { dir = dir, endpoint = "unix://" .. dir .. "/containerd.sock",
    script = M.ROOT .. "/tests/support/containerd.sh" }
end

-- The private containerd (asserted: e2e specs run through ctest) and a CRI
-- client of it (cri.connect's opts).
function M.runtime(opts)
  local ctd = assert(M.containerd(), "KUBELUA_TEST_CTD_DIR is not set (run through ctest)")
  return ctd, assert(require("kubelua.cri").connect(ctd.endpoint, opts))
end

-- A stand-in for the runtime rt: every method goes to rt; a spec sets a
-- field of the view to change one (a filtered list, a delay).
function M.runtime_view(rt)
  return setmetatable({}, { __index = function(_, k)
    local f = rt[k]
    if type(f) == "function" then
      return function(_, ...)
        return f(rt, ...)
      end
    end
  end })
end

-- Stops and removes the sandboxes whose labels include `selector`.
function M.remove_sandboxes(rt, selector)
  local sb = assert(rt:list_pod_sandbox{ filter = { label_selector = selector } })
  for _, s in ipairs(sb.items) do
    rt:stop_pod_sandbox{ pod_sandbox_id = s.id }
    rt:remove_pod_sandbox{ pod_sandbox_id = s.id }
  end
end

-- The kubelua binary under test: $KUBELUA_TEST_BIN when set (the valgrind
-- runs set it: there /proc/PPID/exe is valgrind), else the binary running
-- this spec, else build/kubelua.
function M.kubelua_bin()
  local bin = os.getenv("KUBELUA_TEST_BIN")
  if bin and bin ~= "" then
    return bin
  end
  local exe = M.sh("readlink -f /proc/" .. M.sh("echo $PPID") .. "/exe")
  return exe:match("/kubelua$") and exe or M.ROOT .. "/build/kubelua"
end

-- Writes `code` to `path`, runs it with `kubelua run` (the binary under
-- test) in the repository root: its output and whether it succeeded.
function M.run_lua(path, code)
  M.write_file(path, code)
  return M.sh(string.format("cd '%s' && '%s' run '%s'", M.ROOT, M.kubelua_bin(), path))
end

-- A function giving prefix1, prefix2, ...: fresh names, so tests do not see
-- each other's objects.
function M.namer(prefix)
  local n = 0
  return function()
    n = n + 1
    return prefix .. n
  end
end

-- A loopback TCP port nothing listens on (asked from the kernel).
function M.free_port()
  local out = M.sh([[/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])']])
  return assert(tonumber(out), "no free port: " .. tostring(out))
end

-- t.ok that pred() holds within `secs` (default 5), polled every 10 ms.
function M.wait_until(pred, secs, what)
  require("spec.t").ok(M.wait_for(pred, secs or 5, 0.01), what or "condition not reached in time")
end

-- A static pod manifest (YAML): one container "app" of the test image
-- running `sh -c cmd`; opts.grace (seconds, default 2), opts.restartPolicy.
function M.manifest(name, cmd, opts)
  opts = opts or {}
  return string.format([[
apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  terminationGracePeriodSeconds: %d
%s  containers:
  - name: app
    image: kubelua.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", %q]
]], name, opts.grace or 2, opts.restartPolicy and ("  restartPolicy: " .. opts.restartPolicy .. "\n") or "", cmd)
end

-- What an agent e2e spec starts from: the private containerd and a client of
-- it, the binary under test, a temporary folder (tag) with manifests/ (the
-- static pod path) and logs/, a state folder, and a node name of its own.
function M.agent_env(tag, node_prefix)
  local ctd, rt = M.runtime()
  local dir = M.tmpdir(tag)
  local a = { ctd = ctd, rt = rt, bin = M.kubelua_bin(), dir = dir, pods = dir .. "/manifests", logs = dir .. "/logs",
    state = dir .. "/state", node = node_prefix .. "-" .. tostring(os.time() % 100000) }
  M.sh("mkdir -p '" .. a.pods .. "' '" .. a.logs .. "'")
  -- Writes the agent's config, dir/agent.yaml (returned): the runtime, the
  -- folders, the node and the healthz port, then `extra` (YAML lines).
  function a.config(port, extra)
    return M.write_file(dir .. "/agent.yaml", string.format(
      "containerRuntimeEndpoint: %s\nstaticPodPath: %s\npodLogsDir: %s\nstateDir: %s\nnodeName: %s\nhealthzPort: %d\n%s",
      ctd.endpoint, a.pods, a.logs, a.state, a.node, port, extra or ""))
  end
  return a
end

-- Starts a helper server, the command line `cmd` (run with exec), which
-- prints "PORT PID [more numbers]" on its first line; returns { port, pid,
-- fields (every number, as strings), stop() (kill, then close: its result) }.
function M.start_server(cmd, what)
  local proc = assert(io.popen("exec " .. cmd))
  local line = proc:read("*l")
  assert(line and line:match("^%d+ %d+[ %d]*$"), (what or "the test server") .. " did not start (got " .. tostring(line) .. ")")
  local fields = {}
  for n in line:gmatch("%d+") do
    fields[#fields + 1] = n
  end
  local srv = { port = fields[1], pid = fields[2], fields = fields }
  function srv.stop()
    os.execute("kill " .. srv.pid)
    return proc:close()
  end
  return srv
end

-- M.start_server for tests/support/<script> run by Debian's python3.
function M.python_server(script, args, what)
  return M.start_server(string.format("/usr/bin/python3 '%s/tests/support/%s'%s", M.ROOT, script,
    args and (" " .. args) or ""), what)
end

-- tests/support/fake_apiserver.py: HTTPS on 127.0.0.1 with its own CA (in
-- `dir`, with the rest of its files), accepting the bearer token `token`.
-- Adds to M.start_server's fields: url, dir, ca, kubeconfig(), control(),
-- stats().
function M.fake_apiserver(dir, token)
  local http = require "kubelua.http"
  local json = require "kubelua.k8s.json"
  local srv = M.python_server("fake_apiserver.py", string.format("--dir '%s' --token '%s' --bookmark-interval 3600",
    dir, token), "the fake API server")
  srv.dir, srv.url, srv.ca = dir, "https://127.0.0.1:" .. srv.port, dir .. "/ca.crt"
  -- A JSON kubeconfig at dir/name (returned) for this server and token;
  -- `cluster` and `user` replace the defaults' fields (false removes one),
  -- `extra` sets top-level keys.
  function srv.kubeconfig(name, cluster, user, extra)
    local c = { server = srv.url, ["certificate-authority"] = "ca.crt" }
    for k, v in pairs(cluster or {}) do
      c[k] = v ~= false and v or nil
    end
    local doc = {
      apiVersion = "v1", kind = "Config", ["current-context"] = "fake",
      clusters = { { name = "fake", cluster = c } },
      users = { { name = "u", user = user or { token = token } } },
      contexts = { { name = "fake", context = { cluster = "fake", user = "u", namespace = "default" } } },
    }
    for k, v in pairs(extra or {}) do
      doc[k] = v
    end
    return M.write_file(dir .. "/" .. name, assert(json.encode(doc)))
  end
  -- POST /_control/<what>: the decoded answer, and the response.
  function srv.control(what, body, timeout)
    local r = assert(http.request { url = srv.url .. "/_control/" .. what, method = "POST", body = body or "",
      ca_file = srv.ca, timeout = timeout })
    return json.decode(r.body), r
  end
  -- GET /_control/stats, decoded: requests, watches.
  function srv.stats()
    local r = assert(http.get(srv.url .. "/_control/stats", { ca_file = srv.ca }))
    return assert(json.decode(r.body))
  end
  -- Adds the spec's last test, "fake API server / stops": the server stops
  -- and `dir` is removed.
  function srv.describe_stop()
    local t = require "spec.t"
    t.describe("fake API server", function()
      t.it("stops", function()
        srv.stop()
        M.rm(dir)
        t.ok(not M.exists(dir))
      end)
    end)
  end
  return srv
end

-- A second host in this process, driven through the embedding API with the
-- FFI (the binary exports its symbols): a spec can free it while its tasks
-- are parked, which is what shutdown does. `code` runs in it, after the
-- string globals `globals` are set. Returns { h, loop, global(name) (a string
-- global's value), drive(pred, secs), parked(), alive(), free() }.
local ffi_declared = false
function M.nested_host(code, globals)
  local ffi = require "ffi"
  if not ffi_declared then
    ffi.cdef [[
typedef struct kl_host kl_host;
typedef struct lua_State lua_State;
kl_host *kl_host_new(const void *opts);
void kl_host_free(kl_host *h);
int kl_host_spawn_string(kl_host *h, const char *code, const char *chunkname);
void *kl_host_loop(kl_host *h);
lua_State *kl_host_lua(kl_host *h);
int kl__parked_count(kl_host *h);
int uv_run(void *loop, int mode);
int uv_loop_alive(const void *loop);
void lua_getfield(lua_State *L, int idx, const char *k);
const char *lua_tolstring(lua_State *L, int idx, size_t *len);
void lua_settop(lua_State *L, int idx);
]]
    ffi_declared = true
  end
  local C = ffi.C
  local UV_RUN_NOWAIT, LUA_GLOBALSINDEX = 2, -10002
  local prelude = {}
  for k, v in pairs(globals or {}) do
    prelude[#prelude + 1] = string.format("%s = %q\n", k, v)
  end
  local h = C.kl_host_new(nil)
  assert(h ~= nil)
  assert(C.kl_host_spawn_string(h, table.concat(prelude) .. code, "=nested") == 0)
  local self = { h = h, loop = C.kl_host_loop(h) }
  function self.global(name)
    local L = C.kl_host_lua(h)
    C.lua_getfield(L, LUA_GLOBALSINDEX, name)
    local s = C.lua_tolstring(L, -1, nil)
    s = s ~= nil and ffi.string(s) or nil
    C.lua_settop(L, -2)
    return s
  end
  -- Turns its loop (never blocking) until pred() holds, for up to `secs`
  -- (default 3); M.wait_for's result.
  function self.drive(pred, secs)
    return M.wait_for(function()
      C.uv_run(self.loop, UV_RUN_NOWAIT)
      return pred()
    end, secs or 3, 0.02)
  end
  function self.parked()
    return C.kl__parked_count(h)
  end
  function self.alive()
    return C.uv_loop_alive(self.loop)
  end
  function self.free()
    C.kl_host_free(h)
  end
  return self
end

return M
