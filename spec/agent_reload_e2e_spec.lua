-- SIGHUP, systemd notifications and JSON logs of a real agent process
-- against the fixture containerd: a good change applies (logs, /metrics, the
-- new GC policy runs); a broken policy (syntax, shape, permissions) or
-- config keeps the old ones, logs every problem and counts a failure;
-- READY=1 / WATCHDOG=1 / RELOADING=1 / STOPPING=1 reach a NOTIFY_SOCKET
-- receiver; logFormat json gives parseable lines.
local t = require "spec.t"
local S = require "spec.support"
local http = require "kubelua.http"
local json = require "kubelua.json"

local ctd = assert(S.containerd(), "KUBELUA_TEST_CTD_DIR is not set (run through ctest)")
local KUBELUA = S.sh("readlink -f /proc/" .. S.sh("echo $PPID") .. "/exe")
local RECV = "/usr/bin/python3 " .. S.ROOT .. "/tests/support/notify_recv.py"
local dir = S.tmpdir("reload")
S.sh(string.format("mkdir -p '%s/manifests' '%s/logs' '%s/state' '%s/pol'", dir, dir, dir, dir))
local NODE = "reload-e2e-" .. tostring(os.time() % 100000)
local port = 30000 + require("kubelua.sys").getpid() % 20000 -- not math.random: unseeded, other specs pick the same
local cfgfile, gcfile = dir .. "/agent.yaml", dir .. "/pol/gc.lua"
local log, notes = dir .. "/agent.log", dir .. "/notify.out"

local function write(path, text, mode)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  S.sh(string.format("chmod %s '%s'", mode or "0644", path))
end

local function config(extra)
  write(cfgfile, string.format([[
containerRuntimeEndpoint: %s
staticPodPath: %s/manifests
podLogsDir: %s/logs
stateDir: %s/state
nodeName: %s
healthzPort: %d
relistPeriod: 1s
containerGCPeriod: %s
fileCheckFrequency: %s
policies:
  gc: %s
%s]], extra and extra.endpoint or ctd.endpoint, dir, dir, dir, NODE, port, extra and extra.gc_period or "1m", extra and extra.file_check or "20s", gcfile, extra and extra.more or ""))
end

-- a GC policy that says which version ran (through the agent's log)
local function gc_policy(version, keep)
  write(gcfile, string.format([[
local core = require "kubelua.core"
return {
  options = { max_per_pod_container = %d },
  containers = function(candidates, chosen, ctx)
    core.log("I", "gc policy %s ran")
    return chosen
  end,
}
]], keep or 1, version))
end

local function logtext()
  return S.read_file(log) or ""
end

local function count(s, plain)
  local n, i = 0, 1
  while true do
    local a, b = s:find(plain, i, true)
    if not a then
      return n
    end
    n, i = n + 1, b + 1
  end
end

local function metric(name_labels)
  local r = http.get("http://127.0.0.1:" .. port .. "/metrics")
  if not r or r.status ~= 200 then
    return nil
  end
  local v = r.body:match("\n" .. name_labels:gsub("%p", "%%%0") .. " ([%d%.e+]+)")
  return tonumber(v)
end

local function notes_list()
  local out = {}
  for l in (S.read_file(notes) or ""):gmatch("[^\n]+") do
    out[#out + 1] = l:match("^%d+ (.*)$") or l
  end
  return out
end

local function has_note(prefix, from)
  for i = from or 1, #notes_list() do
    if notes_list()[i]:sub(1, #prefix) == prefix then
      return i
    end
  end
end

local pid, rpid
local function hup()
  S.sh("kill -HUP " .. pid)
end

-- wait for the n-th "config reload..." outcome line in the log
local function outcome(n)
  S.wait_for(function()
    local s = logtext()
    return count(s, "config reloaded") + count(s, "config reload failed") >= n
  end, 15)
  return logtext()
end

t.describe("agent reload", function()
  t.it("refuses to start with a broken policy, naming the file and the line", function()
    config()
    write(gcfile, "return {\n  containers = function( end\n}\n")
    local out = S.sh(KUBELUA .. " agent --config " .. cfgfile .. "; echo status=$?")
    t.match(out, "policies%.gc %(" .. gcfile:gsub("%p", "%%%0") .. "%): syntax error: .*gc%.lua:2:")
    t.match(out, "status=2")
  end)

  t.it("starts with NOTIFY_SOCKET: READY=1 once the runtime answers, WATCHDOG=1", function()
    gc_policy("v1")
    config({ gc_period = "1m" })
    rpid = S.spawn(string.format("%s '%s/notify.sock' '%s' 120", RECV, dir, notes), dir .. "/recv.log")
    t.ok(S.wait_for(function() return (S.read_file(dir .. "/recv.log") or ""):find("ready") end, 10))
    pid = S.spawn(string.format("NOTIFY_SOCKET=%s/notify.sock WATCHDOG_USEC=400000 exec %s agent --config %s",
      dir, KUBELUA, cfgfile), log)
    t.ok(S.wait_for(function() return has_note("READY=1") end, 20), "READY=1; log:\n" .. logtext())
    t.match(notes_list()[has_note("READY=1")], "^READY=1|STATUS=running on node " .. NODE:gsub("%p", "%%%0") .. "; runtime containerd ")
    t.ok(S.wait_for(function()
      local n = 0
      for _, l in ipairs(notes_list()) do
        n = n + (l == "WATCHDOG=1" and 1 or 0)
      end
      return n >= 3
    end, 5), "WATCHDOG=1 every 0.2 s: " .. table.concat(notes_list(), "; "))
    t.match(logtext(), "policies loaded: gc=" .. gcfile:gsub("%p", "%%%0") .. " %(containers, options%)")
    t.ok(S.wait_for(function() return logtext():find("gc policy v1 ran", 1, true) end, 10), logtext())
    t.ok(S.wait_for(function() return metric('kubelua_config_reload_total{result="success"}') == 0 end, 10))
    t.eq(metric('kubelua_config_reload_total{result="failure"}'), 0)
    t.eq(metric("kubelua_config_last_reload_successful"), 1)
    t.ok(metric("kubelua_config_last_reload_success_timestamp_seconds") > 1.7e9)
  end)

  t.it("SIGHUP with a good change applies it; what needs a restart is said", function()
    local before = metric("kubelua_config_last_reload_success_timestamp_seconds")
    local from = #notes_list() + 1
    gc_policy("v2", 3)
    config({ gc_period = "1s", file_check = "5s", endpoint = "unix:///nowhere.sock", more = "probeTick: 50ms\n" })
    hup()
    local s = outcome(1)
    t.match(s, "config reloaded from " .. cfgfile:gsub("%p", "%%%0") .. ": changed: containerGCPeriod, fileCheckFrequency, probeTick; policies: gc=")
    t.match(s, "restart required for containerRuntimeEndpoint %(" .. ctd.endpoint:gsub("%p", "%%%0")
      .. " %-> unix:///nowhere%.sock%)")
    -- the new policy runs, every second now
    t.ok(S.wait_for(function() return count(logtext(), "gc policy v2 ran") >= 2 end, 10), logtext())
    t.eq(metric('kubelua_config_reload_total{result="success"}'), 1)
    t.eq(metric('kubelua_config_reload_total{result="failure"}'), 0)
    t.ok(metric("kubelua_config_last_reload_success_timestamp_seconds") > before)
    -- systemd saw the reload: RELOADING=1, then READY=1
    local r = has_note("RELOADING=1", from)
    t.ok(r, table.concat(notes_list(), "; "))
    t.match(notes_list()[r], "^RELOADING=1|MONOTONIC_USEC=%d+")
    t.ok(has_note("READY=1", r + 1), "READY=1 after RELOADING=1")
    -- the restarted file source watches the folder: a junk manifest is reported
    write(dir .. "/manifests/junk.yaml", "kind: [unclosed\n")
    t.ok(S.wait_for(function() return logtext():find("manifests/junk.yaml", 1, true) end, 10), logtext())
    os.remove(dir .. "/manifests/junk.yaml")
    -- the runtime connection still is the one it started with
    t.ok(S.wait_for(function()
      local h = http.get("http://127.0.0.1:" .. port .. "/healthz")
      return h and h.status == 200
    end, 15), "healthz")
  end)

  local failures = 0
  local function broken(what, setup, patterns)
    t.it("SIGHUP with " .. what .. " keeps the old ones and logs every problem", function()
      setup()
      local n = count(logtext(), "config reloaded") + count(logtext(), "config reload failed")
      local from = #notes_list() + 1
      hup()
      local s = outcome(n + 1)
      failures = failures + 1
      t.eq(count(s, "config reload failed"), failures, s)
      for _, p in ipairs(patterns) do
        t.match(s, p)
      end
      t.eq(metric('kubelua_config_reload_total{result="failure"}'), failures)
      t.eq(metric('kubelua_config_reload_total{result="success"}'), 1)
      t.eq(metric("kubelua_config_last_reload_successful"), 0)
      -- the old policy still runs
      local v2 = count(logtext(), "gc policy v2 ran")
      t.ok(S.wait_for(function() return count(logtext(), "gc policy v2 ran") > v2 end, 10), "v2 still runs")
      t.eq(count(logtext(), "gc policy v3 ran"), 0)
      local r = has_note("RELOADING=1", from)
      t.ok(r and has_note("READY=1", r + 1), table.concat(notes_list(), "; "))
      t.match(notes_list()[has_note("READY=1", r + 1)], "STATUS=reload failed")
    end)
  end

  broken("a policy with a syntax error", function()
    write(gcfile, "local core = require 'kubelua.core'\nreturn {\n  containers = function(c, chosen)\n"
      .. "    core.log('I', 'gc policy v3 ran')\n    return chosen\n  end\n  logs = 1,\n}\n")
  end, { "config reload: policies%.gc %(.-gc%.lua%): syntax error: .-gc%.lua:7:" })

  broken("a policy of the wrong shape", function()
    write(gcfile, "return { containers = 'all', pods = function() end }\n")
  end, { "policies%.gc %(.-%): containers must be a function, got string",
    "policies%.gc %(.-%): unknown key 'pods'", "config reload failed %(2 problems%)" })

  broken("a policy file writable by others", function()
    gc_policy("v3")
    S.sh("chmod 0646 '" .. gcfile .. "'")
  end, { "policies%.gc %(.-%): refused: .-gc%.lua is writable by others %(mode 0646%)" })

  broken("a broken config", function()
    gc_policy("v3")
    config({ gc_period = "soon", more = "logFormat: xml\nstaticPodPth: /x\n" })
  end, { "config reload: .-agent%.yaml: containerGCPeriod: soon: not a duration",
    "config reload: .-agent%.yaml: logFormat: xml: must be text or json",
    "config reload: .-agent%.yaml: staticPodPth: unknown key", "config reload failed %(3 problems%)" })

  t.it("a fixed config and policy load again; logFormat switches to JSON live", function()
    gc_policy("v4")
    config({ gc_period = "1s", file_check = "5s", more = "logFormat: json\n" })
    local n = count(logtext(), "config reloaded") + count(logtext(), "config reload failed")
    hup()
    outcome(n + 1)
    t.ok(S.wait_for(function() return logtext():find('"msg":"gc policy v4 ran"', 1, true) end, 10), logtext())
    t.eq(metric('kubelua_config_reload_total{result="success"}'), 2)
    t.eq(metric("kubelua_config_last_reload_successful"), 1)
    -- every line from the outcome of this reload on is a JSON object
    local s = logtext()
    local at = s:find('{"ts":[^\n]*"msg":"config reloaded from ')
    t.ok(at, "the outcome in JSON: " .. s)
    local after = s:sub(at)
    local lines = 0
    for l in after:gmatch("[^\n]+") do
      local obj = json.decode(l)
      t.ok(type(obj) == "table" and obj.msg and obj.level and obj.ts, "a JSON line: " .. l)
      lines = lines + 1
    end
    t.ok(lines >= 1)
  end)

  t.it("SIGTERM: STOPPING=1", function()
    S.kill(pid, "TERM")
    t.ok(S.wait_for(function() return has_note("STOPPING=1") end, 5), table.concat(notes_list(), "; "))
    t.match(logtext(), '"msg":"agent stopped; pods are left running"')
  end)

  t.it("--log-format json: every line, from the first, is JSON with ts, level, msg, caller, pid", function()
    gc_policy("v5")
    config({ more = "logFormat: text\n" })
    local jlog = dir .. "/json.log"
    local p = S.spawn(string.format("exec %s agent --config %s --log-format json", KUBELUA, cfgfile), jlog)
    t.ok(S.wait_for(function() return (S.read_file(jlog) or ""):find("agent started", 1, true) end, 15),
      S.read_file(jlog))
    S.kill(p, "TERM")
    local n, started = 0, nil
    for l in (S.read_file(jlog) or ""):gmatch("[^\n]+") do
      local obj = json.decode(l)
      t.ok(type(obj) == "table", "a JSON line: " .. l)
      t.match(obj.ts, "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d+Z$")
      t.ok(obj.level == "info" or obj.level == "warning" or obj.level == "error", l)
      t.eq(type(obj.pid), "number")
      if obj.msg:find("^agent started") then
        started = obj
      end
      n = n + 1
    end
    t.ok(n >= 2, "lines: " .. n)
    t.match(started.caller, "^agent%.lua:%d+$")
  end)

  t.it("cleanup", function()
    S.kill(pid, "KILL")
    if rpid then
      S.kill(rpid)
    end
    S.rm(dir)
  end)
end)
