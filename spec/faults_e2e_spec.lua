-- Fault injection end to end: a real agent (and the CLI) talking to the real
-- containerd through tests/support/cri_proxy.py, which forwards every RPC and,
-- per the rules this spec writes to its control file, delays a call, answers
-- with a status, drops the connection, cuts or garbles a message, inflates a
-- list past 16 MiB, or stops accepting connections altogether.
--
-- Cases (each asserts what happens, on both sides of the proxy):
--   forwarding      no rules: the same answers as containerd's own, a 600 KB
--                   request and a streaming RPC included
--   runtime down at start   the agent starts, /healthz says the runtime
--                   status check has not completed, no READY=1 to systemd,
--                   nothing is created, one log line for the failing relists;
--                   once the proxy listens: healthy, READY=1, the static pod
--                   runs, a log line says relisting works again
--   runtime restarted under load   the proxy is killed (SIGKILL) while pods
--                   are being created and comes back: the agent reconnects,
--                   one ready sandbox and one running container per pod
--   ExecSync hung   that exec probe fails "timed out" at timeout + grace;
--                   the agent's other calls on the same connection, another
--                   pod's exec probe and /healthz are not slowed
--   ListContainers over 16 MiB   RESOURCE_EXHAUSTED naming the RPC (agent
--                   log and CLI); /healthz answers, pods keep running, a new
--                   pod still syncs
--   slow CreateContainer / PullImage   one pod's slow calls never hold up
--                   another pod's sync
--   UNIMPLEMENTED optional RPCs   the CLI says which RPC, exit 1; the agent
--                   carries on
--   garbage, truncated, dropped   a clear error naming the RPC; the next call
--                   works (same connection, or a new one after a drop)
local t = require "spec.t"
local S = require "spec.support"
local cri = require "kubelua.cri"
local http = require "kubelua.http"
local json = require "kubelua.json"
local task = require "kubelua.task"

local ctd = assert(S.containerd(), "KUBELUA_TEST_CTD_DIR is not set (run through ctest)")
local KUBELUA = S.sh("readlink -f /proc/" .. S.sh("echo $PPID") .. "/exe")
local direct = assert(cri.connect(ctd.endpoint, { timeout = 10 }))
local dir = S.tmpdir("faults")
local psock = dir .. "/cri.sock"
local ctl, calls_path = dir .. "/faults.json", dir .. "/calls.jsonl"
local manifests, logs = dir .. "/manifests", dir .. "/logs"
S.sh("mkdir -p '" .. manifests .. "' '" .. logs .. "'")
local NODE = "faults-" .. tostring(os.time() % 100000)
local IMAGE = "kubelua.local/busybox:latest"
local MiB = 1024 * 1024

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

------------------------------------------------------------------ the proxy

local proxy_pid, proxy_starts, gen = nil, 0, 0

local function null_to_nil(e)
  for k, v in pairs(e) do
    if v == json.null then
      e[k] = nil
    end
  end
  return e
end

-- The proxy's log entries (JSON lines), optionally filtered.
local function entries(pred)
  local out = {}
  local f = io.open(calls_path)
  if not f then
    return out
  end
  for line in f:lines() do
    local e = json.decode(line)
    if e and (not pred or pred(null_to_nil(e))) then
      out[#out + 1] = e
    end
  end
  f:close()
  return out
end

-- Replace the rules (atomically) and wait until the proxy has applied them.
local function control(spec)
  gen = gen + 1
  spec.gen = gen
  spec.faults = json.array(spec.faults or {})
  write(ctl .. ".tmp", json.encode(spec))
  assert(os.rename(ctl .. ".tmp", ctl))
  if proxy_pid then
    assert(S.wait_for(function()
      return #entries(function(e) return e.event == "control" and e.gen == gen end) > 0
    end, 5), "the proxy applied control generation " .. gen)
  end
end

local function start_proxy()
  proxy_starts = proxy_starts + 1
  local out = dir .. "/proxy" .. proxy_starts .. ".log"
  proxy_pid = S.spawn(string.format("exec /usr/bin/python3 %s/tests/support/cri_proxy.py --listen %s --upstream %s "
    .. "--control %s --log %s", S.ROOT, psock, ctd.dir .. "/containerd.sock", ctl, calls_path), out)
  assert(S.wait_for(function()
    return (S.read_file(out) or ""):find("READY", 1, true)
  end, 15), "the proxy did not start: " .. tostring(S.read_file(out)))
end

-- Calls the proxy finished since `since` (monotonic), by method.
local function finished(method, since, pred)
  return entries(function(e)
    return e.event == "call" and (not method or e.method == method) and e.start >= (since or 0) and
      (not pred or pred(e))
  end)
end

------------------------------------------------------------------ the agent

-- other specs (and other checkouts' runs) pick ports too: seed by our pid
math.randomseed(os.time() + tonumber((S.sh("echo $PPID"))))
local port = 20000 + math.random(0, 9999)
local agent_pid, notify_pid
local agent_log = dir .. "/agent.log"
-- systemd's notification socket, played by notify_recv.py: READY=1 must wait
-- for the runtime
local notify_sock, notify_out = dir .. "/notify.sock", dir .. "/notify.out"

local function agent_text()
  return S.read_file(agent_log) or ""
end

-- The end of the agent's log, for failure messages.
local function agent_tail()
  local lines = {}
  for line in agent_text():gmatch("[^\n]+") do
    lines[#lines + 1] = line
  end
  return "\nagent log (end):\n" .. table.concat(lines, "\n", math.max(1, #lines - 15))
end

local function agent_alive()
  local _, ok = S.sh("kill -0 " .. agent_pid)
  return ok
end

local function healthz()
  local t0 = task.monotime()
  local r, err = http.get("http://127.0.0.1:" .. port .. "/healthz", { timeout = 5 })
  return r and r.status, r and r.body or err, task.monotime() - t0
end

-- A static pod: `name` (the agent suffixes the node name), a sleeping
-- container, optionally a readiness exec probe and another image.
local function add_pod(name, opts)
  opts = opts or {}
  local probe = ""
  if opts.probe then
    probe = string.format([[
    readinessProbe:
      exec: {command: ["sh", "-c", "echo %s"]}
      periodSeconds: 1
      timeoutSeconds: 1
      failureThreshold: 1
]], opts.probe)
  end
  write(manifests .. "/" .. name .. ".yaml.tmp", string.format([[
apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: %s
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "exec sleep 3600"]
%s]], name, opts.image or IMAGE, probe))
  assert(os.rename(manifests .. "/" .. name .. ".yaml.tmp", manifests .. "/" .. name .. ".yaml"))
end

-- What containerd holds for one of our pods.
local function pod_state(name)
  local sel = { ["io.kubernetes.pod.name"] = name .. "-" .. NODE }
  local sbs = assert(direct:list_pod_sandbox{ filter = { label_selector = sel } })
  local cs = assert(direct:list_containers{ filter = { label_selector = sel } })
  local st = { sandboxes = #sbs.items, ready = 0, running = {}, containers = #cs.containers }
  for _, sb in ipairs(sbs.items) do
    if sb.state == "SANDBOX_READY" then
      st.ready = st.ready + 1
    end
  end
  for _, c in ipairs(cs.containers) do
    if c.state == "CONTAINER_RUNNING" then
      st.running[#st.running + 1] = c.id
    end
  end
  return st
end

local function running(name)
  local st = pod_state(name)
  return st.ready == 1 and #st.running == 1
end

local function wait_running(names, timeout)
  local took = S.wait_for(function()
    for _, n in ipairs(names) do
      if not running(n) then
        return false
      end
    end
    return true
  end, timeout or 20, 0.1)
  return took
end

local cfgfile = dir .. "/agent.yaml"
write(cfgfile, string.format([[
containerRuntimeEndpoint: unix://%s
runtimeRequestTimeout: 20s
staticPodPath: %s
podLogsDir: %s
nodeName: %s
stateDir: %s/state
healthzPort: %d
relistPeriod: 200ms
containerGCPeriod: 3s
fileCheckFrequency: 2s
]], psock, manifests, logs, NODE, dir, port))

-- `kubelua CMD ...` through the proxy: output (stdout and stderr), exit status.
local function cli(args)
  local out = S.sh(string.format("%s %s -r unix://%s -t 10; echo \"::status=$?\"", KUBELUA, args, psock))
  local body, status = out:match("^(.-)\n?::status=(%d+)$")
  return body, tonumber(status)
end

---------------------------------------------------------------------- cases

t.describe("the proxy", function()
  t.it("forwards every answer unchanged when no rule is set", function()
    control{}
    start_proxy()
    local via = assert(cri.connect("unix://" .. psock, { timeout = 10 }))
    for _, m in ipairs({ "version", "status", "list_images", "image_fs_info", "list_pod_sandbox" }) do
      local a, aerr = direct[m](direct, {})
      local b, berr = via[m](via, {})
      t.ok(a and b, m .. ": " .. tostring(aerr or berr))
      if m == "image_fs_info" then -- usage moves between two calls; the filesystems do not
        t.eq(b.image_filesystems[1].fs_id, a.image_filesystems[1].fs_id, m)
      else
        t.eq(b, a, m)
      end
    end
    local a = assert(direct:image_status{ image = { image = IMAGE } })
    t.eq(assert(via:image_status{ image = { image = IMAGE } }), a)
    -- errors and a streaming RPC (containerd 1.6 does not implement it)
    local _, derr, dcode = direct:container_status{ container_id = "nope" }
    local _, perr, pcode = via:container_status{ container_id = "nope" }
    t.eq({ perr, pcode }, { derr, dcode })
    local s1, e1, c1 = direct:get_container_events({}, function() end)
    local s2, e2, c2 = via:get_container_events({}, function() end)
    t.eq({ s2, e2, c2 }, { s1, e1, c1 })
    t.eq(c2, "UNIMPLEMENTED")
    local seen -- (the proxy logs a call just after its last frame)
    t.ok(S.wait_for(function()
      seen = finished(nil, 0)
      return #seen >= 8
    end, 2), "the proxy logged the calls: " .. #seen)
    for _, e in ipairs(seen) do
      t.eq(e.fault, nil)
    end
    via:close()
  end)
end)

t.describe("runtime down at agent start", function()
  t.it("the agent starts, reports the runtime not ready and creates nothing", function()
    control{ down = true }
    t.ok(not S.exists(psock), "the proxy is not listening")
    add_pod("a")
    notify_pid = S.spawn(string.format("exec /usr/bin/python3 %s/tests/support/notify_recv.py %s %s 300", S.ROOT,
      notify_sock, notify_out), dir .. "/notify.log")
    assert(S.wait_for(function() return (S.read_file(dir .. "/notify.log") or ""):find("ready") end, 10))
    agent_pid = S.spawn("NOTIFY_SOCKET=" .. notify_sock .. " " .. KUBELUA .. " agent --config " .. cfgfile, agent_log)
    t.ok(S.wait_for(function() return agent_text():find("agent started", 1, true) end, 10), agent_text())
    task.sleep(1.5)
    t.ok(agent_alive(), "the agent runs without its runtime")
    local code, body = healthz()
    t.eq(code, 500, "healthz: " .. tostring(body))
    t.match(body, "container runtime status check may not have completed yet")
    t.eq(pod_state("a").sandboxes, 0)
    t.match(agent_text(), "UNAVAILABLE: /runtime%.v1%.RuntimeService/%a+: connect to unix://" .. psock:gsub("%p", "%%%0")
      .. " failed")
    -- one relist every 200 ms has failed the same way: logged once (logreduction)
    local _, n = agent_text():gsub("pleg: relist failed", "")
    t.eq(n, 1, "relist failures logged")
    local notes = S.read_file(notify_out) or ""
    t.match(notes, "STATUS=waiting for the runtime: UNAVAILABLE: ")
    t.ok(not notes:find("READY=1", 1, true), "no READY=1 to systemd: " .. notes)
  end)

  t.it("once the runtime answers the agent becomes healthy and the static pod runs", function()
    local t0 = task.monotime()
    control{ down = false }
    local code, body
    local healthy = S.wait_for(function()
      code, body = healthz()
      return code == 200
    end, 20, 0.2)
    t.ok(healthy, "healthy: " .. tostring(body))
    t.ok(wait_running({ "a" }, 20), "pod a runs" .. agent_tail())
    t.match(agent_text(), "pleg: relisting works again after %d+ failed relists")
    t.ok(S.wait_for(function() return (S.read_file(notify_out) or ""):find("READY=1", 1, true) end, 5),
      "READY=1 once the runtime answers")
    -- health polls every 5 s and the client's backoff is at most 3 s
    t.ok(healthy < 9, "healthy " .. tostring(healthy) .. " s after the runtime appeared")
    print(string.format("    # healthy after %.1f s, pod running after %.1f s", healthy, task.monotime() - t0))
    t.ok(agent_alive())
  end)
end)

t.describe("the proxy, with a pod running", function()
  t.it("forwards a 600 KB request and ExecSync's answer unchanged", function()
    local id = pod_state("a").running[1]
    local cmd = { "sh", "-c", 'n=0; for a; do n=$((n + ${#a})); done; echo "$# $n"', "x" }
    for i = 1, 5 do -- one argument may hold at most 128 KiB (MAX_ARG_STRLEN)
      cmd[#cmd + 1] = string.rep(string.char(96 + i), 120000)
    end
    local via = assert(cri.connect("unix://" .. psock, { timeout = 10 }))
    local a = assert(direct:exec_sync{ container_id = id, cmd = cmd, timeout = 5 })
    local b = assert(via:exec_sync{ container_id = id, cmd = cmd, timeout = 5 })
    t.eq(a.stdout, "5 600000\n")
    t.eq(b, a)
    via:close()
  end)
end)

t.describe("runtime restarted under load", function()
  t.it("the proxy dies while pods are being created and comes back: each pod runs once", function()
    local mark = task.monotime()
    for i = 1, 4 do
      add_pod("b" .. i)
    end
    -- kill it as soon as the first of them is being created
    t.ok(S.wait_for(function()
      return #entries(function(e)
        return e.event == "begin" and e.method == "RunPodSandbox" and e.start >= mark
      end) > 0
    end, 10, 0.02), "a RunPodSandbox went through")
    local conns_before = #entries(function(e) return e.event == "conn" end)
    S.kill(proxy_pid, "KILL")
    task.sleep(1.5)
    start_proxy()
    local took = wait_running({ "b1", "b2", "b3", "b4" }, 40)
    t.ok(took, "all four pods run" .. agent_tail())
    t.match(agent_text(), "UNAVAILABLE: /runtime%.v1%.RuntimeService/%a+: connection closed by the server",
      "calls were in flight when the runtime went away")
    t.ok(#entries(function(e) return e.event == "conn" end) > conns_before, "the agent reconnected")
    -- no duplicates, and nothing churns afterwards
    local ids, stale = {}, 0
    for i = 1, 4 do
      local st = pod_state("b" .. i)
      stale = stale + st.sandboxes - st.ready
      t.eq(st.ready, 1, "b" .. i .. ": one ready sandbox")
      t.eq(#st.running, 1, "b" .. i .. ": one running container")
      ids[i] = st.running[1]
    end
    print(string.format("    # all running %.1f s after the restart; %d stale (not ready) sandboxes", took, stale))
    task.sleep(1.5)
    for i = 1, 4 do
      t.eq(pod_state("b" .. i).running, { ids[i] }, "b" .. i .. " is stable")
    end
    t.ok(running("a"), "pod a still runs")
    t.ok(agent_alive())
  end)
end)

t.describe("ExecSync hung", function()
  t.it("that probe times out on our side; other calls and pods are not delayed", function()
    control{ faults = { { method = "ExecSync", match = "hang-me", delay = 30 } } }
    local mark = task.monotime()
    add_pod("h", { probe = "hang-me" })
    add_pod("e", { probe = "fine" })
    t.ok(wait_running({ "h", "e" }, 20), "pods h and e run" .. agent_tail())
    local hung
    t.ok(S.wait_for(function()
      hung = finished("ExecSync", mark, function(e) return e.rule == 1 end)
      return #hung >= 2
    end, 20, 0.2), "two hung exec probes ended" .. agent_tail())
    -- the client gives up at timeoutSeconds + 1 s (probe.EXEC_GRACE)
    for _, e in ipairs(hung) do
      t.eq(e.outcome, "reset", "our client cancelled the call")
      local d = e["end"] - e.start
      t.ok(d >= 1.8 and d < 3, string.format("cancelled after %.2f s", d))
      print(string.format("    # hung ExecSync cancelled by our client after %.2f s", d))
    end
    t.match(agent_text(), "h%-" .. NODE:gsub("%-", "%%-") .. "/app: %a+ probe failed: command \"sh %-c echo hang%-me\" timed out after 1s")
    -- what ran meanwhile on the agent's connection, during the hung calls:
    -- the reads (creating and starting containers take containerd itself
    -- a few hundred ms)
    local READS = { ListContainers = true, ListPodSandbox = true, ContainerStatus = true, PodSandboxStatus = true,
      ImageStatus = true, Status = true, ExecSync = true, Version = true, ListImages = true, ImageFsInfo = true,
      ListContainerStats = true }
    local conn = hung[1].conn
    local during = finished(nil, hung[1].start, function(e)
      return e.conn == conn and e.rule == nil and e["end"] <= hung[#hung]["end"] and READS[e.method]
    end)
    local worst, execs = 0, 0
    for _, e in ipairs(during) do
      worst = math.max(worst, e["end"] - e.start)
      if e.method == "ExecSync" then
        execs = execs + 1
      end
    end
    print(string.format("    # %d other calls during the hung exec probes, slowest %.3f s, %d of them ExecSync",
      #during, worst, execs))
    t.ok(#during >= 10, "other calls went on: " .. #during)
    t.ok(worst < 1, "none was held up behind the hung call (slowest " .. worst .. " s)")
    t.ok(execs >= 1, "pod e's exec probe ran meanwhile")
    local code, _, took = healthz()
    t.eq(code, 200)
    t.ok(took < 0.5, "/healthz answered in " .. took .. " s")
    control{}
  end)
end)

t.describe("ListContainers over 16 MiB", function()
  t.it("is RESOURCE_EXHAUSTED naming the RPC; the agent keeps serving and syncing", function()
    local before = {}
    for _, n in ipairs({ "a", "b1", "e" }) do
      before[n] = pod_state(n).running
    end
    -- every list but a pod worker's (by pod UID) grows past the limit: PLEG's
    -- relist, GC's, the CLI's
    control{ faults = { { method = "ListContainers", not_match = "io.kubernetes.pod.uid", inflate = 17 * MiB } } }
    local mark = task.monotime()
    local out, status = cli("ps")
    t.eq(status, 1)
    t.match(out, "^kubelua ps: RESOURCE_EXHAUSTED: /runtime%.v1%.RuntimeService/ListContainers: response message of "
      .. "%d+ bytes exceeds the limit of 16777216 bytes")
    add_pod("r1")
    t.ok(wait_running({ "r1" }, 20), "a new pod still syncs" .. agent_tail())
    t.ok(S.wait_for(function()
      return agent_text():find("pleg: relist failed: RESOURCE_EXHAUSTED: /runtime.v1.RuntimeService/ListContainers: "
        .. "response message of", 1, true)
    end, 5), "the agent logs the failed relist")
    local code, body, took = healthz()
    t.ok(code ~= nil and took < 1, "/healthz answers (" .. tostring(code) .. ", " .. took .. " s)")
    t.eq(code, 200, body) -- PLEG is still within its threshold
    for n, ids in pairs(before) do
      t.eq(pod_state(n).running, ids, n .. " kept running untouched")
    end
    -- (a 17 MiB answer takes the proxy a while on a loaded machine: wait for them)
    local big = {}
    t.ok(S.wait_for(function()
      big = finished("ListContainers", mark, function(e) return e.rule == 1 end)
      return #big >= 3
    end, 20), "inflated answers: " .. #big)
    control{}
    t.ok(agent_alive())
  end)
end)

t.describe("slow runtime calls for one pod", function()
  t.it("a slow CreateContainer and a slow PullImage never hold up another pod", function()
    local SLOW = 10
    control{ faults = {
      { method = "CreateContainer", match = "slowc-" .. NODE, delay = SLOW },
      -- PullImage requests carry the image only: slowp asks for its own tag
      { method = "PullImage", match = "busybox:slow", delay = SLOW },
    } }
    local mark = task.monotime()
    add_pod("slowc")
    add_pod("slowp", { image = "kubelua.local/busybox:slow" })
    t.ok(S.wait_for(function()
      return #entries(function(e) return e.event == "begin" and e.start >= mark and e.rule end) == 2
    end, 10), "both slow calls are under way" .. agent_tail())
    add_pod("q1")
    local took = wait_running({ "q1" }, SLOW)
    t.ok(took, "q1 runs while the slow calls hang" .. agent_tail())
    t.eq(#finished(nil, mark, function(e) return e.rule ~= nil end), 0, "the slow calls were still pending then")
    print(string.format("    # q1 ran in %.1f s while CreateContainer and PullImage of two other pods hung", took))
    t.ok(wait_running({ "slowc" }, SLOW + 5), "the slow pod runs in the end")
    local c = finished("CreateContainer", mark, function(e) return e.rule == 1 end)[1]
    t.ok(c and c["end"] - c.start >= SLOW, "CreateContainer took its time")
    local p
    t.ok(S.wait_for(function()
      p = finished("PullImage", mark, function(e) return e.rule == 2 end)[1]
      return p
    end, 10), "PullImage ended")
    t.eq(p.outcome, "status 2", "no registry here: UNKNOWN after the delay")
    t.ok(p["end"] - p.start >= SLOW)
    t.eq(pod_state("slowp").containers, 0)
    control{}
  end)
end)

t.describe("UNIMPLEMENTED for optional RPCs", function()
  t.it("the CLI names the RPC (exit 1) or goes on without it and says so; the agent carries on", function()
    control{ faults = {
      { method = "ListContainerStats", status = "UNIMPLEMENTED", message = "unknown method ListContainerStats" },
      { method = "ContainerStats", status = "UNIMPLEMENTED", message = "unknown method ContainerStats" },
      { method = "ListPodSandboxStats", status = "UNIMPLEMENTED", message = "unknown method ListPodSandboxStats" },
      { method = "ListMetricDescriptors", status = "UNIMPLEMENTED", message = "unknown method ListMetricDescriptors" },
    } }
    local mark = task.monotime()
    local out, status = cli("stats")
    t.eq(status, 1)
    t.eq(out, "kubelua stats: UNIMPLEMENTED: /runtime.v1.RuntimeService/ListContainerStats: "
      .. "unknown method ListContainerStats")
    out, status = cli("stats " .. pod_state("a").running[1])
    t.eq(status, 1)
    t.match(out, "^kubelua stats: UNIMPLEMENTED: /runtime%.v1%.RuntimeService/ListContainerStats: unknown method")
    out, status = cli("events")
    t.eq(status, 1)
    t.match(out, "UNIMPLEMENTED: /runtime%.v1%.RuntimeService/GetContainerEvents: ")
    -- a GC plan asks for container sizes (ListContainerStats): it goes on
    -- without them, and says so
    out = S.sh(string.format("%s gc --dry-run --endpoint unix://%s; echo \"::status=$?\"", KUBELUA, psock))
    t.match(out, "\ncontainer sizes unknown, not counted in the bytes: UNIMPLEMENTED: "
      .. "/runtime%.v1%.RuntimeService/ListContainerStats: unknown method ListContainerStats\n")
    t.match(out, "::status=0$")
    t.ok(S.wait_for(function()
      return #finished("ListContainerStats", mark, function(e) return e.rule == 1 end) == 3
    end, 2), "the proxy answered the three calls above")
    -- the agent itself needs none of these RPCs (generic PLEG, sizes only in
    -- dry runs): it carries on
    local code = healthz()
    t.eq(code, 200)
    t.ok(agent_alive())
    control{}
  end)
end)

t.describe("garbage, truncated and dropped responses", function()
  local via
  t.it("garbage: a decode error naming the RPC; the same connection serves the next call", function()
    via = assert(cri.connect("unix://" .. psock, { timeout = 10 }))
    assert(via:version{})
    local connects = via:stats().connects
    control{ faults = { { method = "ListImages", garbage = 200, count = 1 } } }
    local r, err, code = via:list_images{}
    t.eq(r, nil)
    t.eq(code, "INTERNAL")
    t.match(err, "^INTERNAL: /runtime%.v1%.ImageService/ListImages: cannot decode runtime%.v1%.ListImagesResponse: ")
    t.ok(assert(via:list_images{}).images[1], "the next call works")
    t.eq(via:stats().connects, connects, "on the same connection")
    -- the CLI says the same
    control{ faults = { { method = "ListImages", garbage = true } } }
    local out, status = cli("images")
    t.eq(status, 1)
    t.match(out, "^kubelua images: INTERNAL: /runtime%.v1%.ImageService/ListImages: cannot decode ")
  end)

  t.it("the agent's relist survives garbage and recovers", function()
    local mark = task.monotime()
    control{ faults = { { method = "ListPodSandbox", empty_request = true, garbage = true, count = 3 } } }
    t.ok(S.wait_for(function()
      return #finished("ListPodSandbox", mark, function(e) return e.rule == 1 end) == 3
    end, 5), "three garbled relists")
    t.ok(S.wait_for(function()
      return agent_text():find("pleg: relist failed: INTERNAL: /runtime.v1.RuntimeService/ListPodSandbox: cannot decode",
        1, true)
    end, 3), "the agent logs what was wrong")
    local ok = finished("ListPodSandbox", mark, function(e) return e.rule == nil and e.outcome == "status 0" end)
    t.ok(S.wait_for(function()
      ok = finished("ListPodSandbox", mark, function(e) return e.rule == nil and e.outcome == "status 0" end)
      return #ok >= 2
    end, 5), "relists succeed again")
    t.eq(healthz(), 200)
    control{}
  end)

  t.it("truncated: the message is cut, the error says so; the next call works", function()
    local connects = via:stats().connects
    control{ faults = { { method = "ListImages", truncate = true, count = 1 } } }
    local r, err, code = via:list_images{}
    t.eq(r, nil)
    t.eq(code, "INTERNAL")
    t.match(err, "^INTERNAL: /runtime%.v1%.ImageService/ListImages: stream ended in the middle of a message "
      .. "%(%d+ of %d+ bytes%)")
    control{ faults = { { method = "ListImages", truncate = "eof", count = 1 } } }
    r, err, code = via:list_images{}
    t.eq(r, nil)
    t.eq(code, "INTERNAL")
    t.match(err, "^INTERNAL: /runtime%.v1%.ImageService/ListImages: ")
    t.ok(assert(via:list_images{}).images[1], "the next call works")
    t.eq(via:stats().connects, connects, "on the same connection")
  end)

  t.it("dropped mid-call: UNAVAILABLE, and the next call reconnects", function()
    for _, how in ipairs({ "after", "before" }) do
      local connects = via:stats().connects
      control{ faults = { { method = "ListImages", drop = how, count = 1 } } }
      local r, err, code = via:list_images{}
      t.eq(r, nil, how)
      t.eq(code, "UNAVAILABLE", how)
      t.match(err, "^UNAVAILABLE: /runtime%.v1%.ImageService/ListImages: connection closed by the server")
      t.ok(assert(via:list_images{}).images[1], "the next call works")
      t.eq(via:stats().connects, connects + 1, "over a new connection")
    end
    via:close()
    control{}
  end)

  t.it("the agent is still healthy and every pod still runs", function()
    local code, body = healthz()
    t.eq(code, 200, body)
    for _, n in ipairs({ "a", "b1", "b2", "b3", "b4", "h", "e", "r1", "q1", "slowc" }) do
      t.ok(running(n), n .. " runs")
    end
    t.ok(agent_alive())
  end)
end)

t.describe("cleanup", function()
  t.it("stops the agent and the proxy, removes the pods", function()
    if agent_pid then
      S.kill(agent_pid, "TERM")
    end
    if proxy_pid then
      S.kill(proxy_pid, "TERM")
    end
    if notify_pid then
      S.kill(notify_pid, "TERM")
    end
    local r = assert(direct:list_pod_sandbox{})
    for _, sb in ipairs(r.items) do
      local name = sb.labels and sb.labels["io.kubernetes.pod.name"] or ""
      if name:sub(-#NODE - 1) == "-" .. NODE then
        direct:stop_pod_sandbox{ pod_sandbox_id = sb.id }
        direct:remove_pod_sandbox{ pod_sandbox_id = sb.id }
      end
    end
    direct:close()
    if os.getenv("KUBELUA_KEEP_TMP") == nil then -- set it to keep the logs of a failed run
      S.rm(dir)
    end
  end)
end)
