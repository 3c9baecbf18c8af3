-- The agent's /metrics end to end: a real kubelua agent process with a
-- static pod (a long-running container with an exec readiness probe, and a
-- container that exits at once so it crash-loops), on the real containerd.
-- The scraped text must hold the series with plausible values, pass
-- `promtool check metrics`, and a real Prometheus server on loopback must
-- scrape it (target up) and return kubelua's series through its query API.
-- Prometheus' tools come from Debian's `prometheus` package
-- (tests/support/deps.sh installs it); without them this spec fails.
local t = require "spec.t"
local S = require "spec.support"
local http = require "kubelua.http"
local json = require "kubelua.json"
local task = require "kubelua.task"

local PROMTOOL, PROMETHEUS = "/usr/bin/promtool", "/usr/bin/prometheus"

local A = S.agent_env("agent-metrics", "mx-e2e")
local KUBELUA, rt, dir, pods, NODE = A.bin, A.rt, A.dir, A.pods, A.node
local POD = "mx-" .. NODE
local write, free_port = S.write_file, S.free_port

local function urlencode(s)
  return (s:gsub("[^%w%-_%.~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- The exposition text as families (HELP/TYPE) and samples.
local function parse(text)
  local fam, samples, bad = {}, {}, {}
  for line in text:gmatch("([^\n]*)\n") do
    local kind, name, rest = line:match("^# (%u+) ([%w_:]+) ?(.*)$")
    if kind then
      fam[name] = fam[name] or {}
      fam[name][kind] = rest
    elseif line ~= "" then
      local n, labels, v = line:match("^([%w_:]+)(%b{}) (%S+)$")
      if not n then
        n, v = line:match("^([%w_:]+) (%S+)$")
        labels = ""
      end
      if n and tonumber(v) then
        samples[#samples + 1] = { name = n, labels = labels, value = tonumber(v) }
      else
        bad[#bad + 1] = line
      end
    end
  end
  return { families = fam, samples = samples, bad = bad }
end

-- sum of the samples named `name` whose labels include every k="v" given
local function value(m, name, labels)
  local sum, found = 0, false
  for _, s in ipairs(m.samples) do
    if s.name == name then
      local ok = true
      for k, v in pairs(labels or {}) do
        if not s.labels:find(k .. '="' .. v .. '"', 1, true) then
          ok = false
          break
        end
      end
      if ok then
        sum, found = sum + s.value, true
      end
    end
  end
  return found and sum or nil
end

local port = free_port()
local cfgfile = A.config(port, [[
relistPeriod: 200ms
containerGCPeriod: 2s
fileCheckFrequency: 5s
crashLoopBackOff: {initial: 1s, max: 2s}
]])

local MANIFEST = [[
apiVersion: v1
kind: Pod
metadata: {name: mx}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: kubelua.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "exec sleep 3600"]
    readinessProbe:
      exec: {command: ["true"]}
      periodSeconds: 1
  - name: crash
    image: kubelua.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "exit 3"]
]]

local agent_pid, prom_pid, prom_port
local text, m -- the last scrape

local function scrape()
  local r = http.get("http://127.0.0.1:" .. port .. "/metrics")
  if not r or r.status ~= 200 then
    return nil
  end
  text, m = r.body, parse(r.body)
  return r
end

-- TERM, then KILL if it is still there after 10 s
local function stop(pid)
  if pid then
    S.sh(string.format("kill -TERM %d 2>/dev/null; for i in $(seq 100); do kill -0 %d 2>/dev/null || exit 0; "
      .. "sleep 0.1; done; kill -KILL %d 2>/dev/null; sleep 0.2", pid, pid, pid))
  end
end

local function agent_log()
  return "agent log:\n" .. tostring(S.read_file(dir .. "/agent.log"))
end

local function prom_get(path)
  local r = http.get("http://127.0.0.1:" .. prom_port .. path)
  if not r or r.status ~= 200 then
    return nil
  end
  return json.decode(r.body)
end

t.describe("agent /metrics", function()
  t.it("Prometheus' tools are installed (Debian package prometheus)", function()
    t.ok(S.exists(PROMTOOL), PROMTOOL .. " is missing: run tests/support/deps.sh")
    t.ok(S.exists(PROMETHEUS), PROMETHEUS .. " is missing: run tests/support/deps.sh")
  end)

  t.it("an agent with a static pod serves /metrics", function()
    write(pods .. "/mx.yaml", MANIFEST)
    agent_pid = S.spawn("exec " .. KUBELUA .. " agent --config " .. cfgfile, dir .. "/agent.log")
    t.ok(S.wait_for(function()
      return scrape() and value(m, "kubelet_running_pods") == 1
        and (value(m, "kubelet_running_containers", { container_state = "running" }) or 0) >= 1
    end, 30, 0.2), "kubelet_running_pods 1; " .. agent_log())
    t.eq(value(m, "kubelet_desired_pods", { static = "true" }), 1)
    t.eq(value(m, "kubelet_desired_pods", { static = "false" }), 0)
  end)

  t.it("has every family with HELP and TYPE, and well-formed samples", function()
    t.eq(m.bad, {}, "lines that are not samples")
    for name, f in pairs(m.families) do
      t.ok(f.HELP and f.HELP ~= "", name .. " has HELP")
      t.ok(f.TYPE == "counter" or f.TYPE == "gauge" or f.TYPE == "histogram", name .. " has a TYPE")
    end
    for _, s in ipairs(m.samples) do
      local base = s.name:gsub("_bucket$", ""):gsub("_sum$", ""):gsub("_count$", "")
      t.ok(m.families[s.name] or m.families[base], s.name .. " belongs to a declared family")
    end
    for _, name in ipairs({ "kubelet_running_pods", "kubelet_running_containers", "kubelet_desired_pods",
      "kubelua_container_restarts_total", "prober_probe_total", "prober_probe_duration_seconds",
      "kubelua_gc_removed_total", "kubelua_gc_freed_bytes_total", "kubelua_cri_calls_total",
      "kubelet_runtime_operations_total", "kubelet_runtime_operations_errors_total",
      "kubelet_runtime_operations_duration_seconds", "kubelua_lua_memory_bytes", "kubelua_policy_errors_total",
      "kubelet_pleg_relist_duration_seconds", "kubelet_pleg_last_seen_seconds", "kubelua_sync_results_total",
      "kubelet_started_containers_total", "kubelet_started_pods_total", "process_resident_memory_bytes",
      "process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds" }) do
      t.ok(m.families[name], name .. " is exported")
    end
    t.eq(m.families.kubelet_runtime_operations_duration_seconds.TYPE, "histogram")
    t.eq(m.families.kubelua_cri_calls_total.TYPE, "counter")
    t.eq(m.families.kubelet_running_pods.TYPE, "gauge")
  end)

  t.it("CRI calls are counted by RPC and code, timed by operation type", function()
    local runs = value(m, "kubelua_cri_calls_total", { rpc = "RunPodSandbox", code = "OK" })
    t.ok(runs and runs >= 1, "RunPodSandbox OK counted: " .. tostring(runs))
    t.ok(value(m, "kubelua_cri_calls_total", { rpc = "CreateContainer", code = "OK" }) >= 2)
    -- every PLEG relist makes one raw ListContainers call, counted as any other
    local relists = value(m, "kubelet_pleg_relist_duration_seconds_count")
    t.ok(relists >= 1, "relists: " .. relists)
    t.ok(value(m, "kubelua_cri_calls_total", { rpc = "ListContainers", code = "OK" }) >= relists,
      "the PLEG's raw ListContainers relists are counted too")
    -- kubelet's names: the total is the sum over codes; the histogram's count equals it
    local total = value(m, "kubelet_runtime_operations_total", { operation_type = "run_podsandbox" })
    t.eq(total, value(m, "kubelua_cri_calls_total", { rpc = "RunPodSandbox" }))
    t.eq(value(m, "kubelet_runtime_operations_duration_seconds_count", { operation_type = "run_podsandbox" }), total)
    t.eq(value(m, "kubelet_runtime_operations_duration_seconds_bucket",
      { operation_type = "run_podsandbox", le = "+Inf" }), total)
    local sum = value(m, "kubelet_runtime_operations_duration_seconds_sum", { operation_type = "run_podsandbox" })
    t.ok(sum > 0 and sum < 60 * total, "plausible RunPodSandbox time: " .. sum)
  end)

  t.it("probes, sync results, restarts and the crash loop show", function()
    local ok = S.wait_for(function()
      return scrape() and (value(m, "kubelua_container_restarts_total", { pod = POD, container = "crash" }) or 0) >= 2
        and (value(m, "kubelua_sync_results_total", { action = "StartContainer", result = "CrashLoopBackOff" }) or 0) >= 1
        and (value(m, "prober_probe_total", { probe_type = "Readiness", result = "successful", pod = POD }) or 0) >= 2
    end, 40, 0.3)
    t.ok(ok, "restarts, back-off and probes in /metrics:\n" .. tostring(text) .. agent_log())
    t.eq(value(m, "kubelua_container_restarts_total", { pod = POD, container = "app" }), 0)
    t.ok(value(m, "kubelua_sync_results_total", { action = "CreatePodSandbox", result = "success" }) >= 1)
    t.ok(value(m, "kubelet_started_pods_total") >= 1)
    t.ok(value(m, "kubelet_started_containers_total", { container_type = "container" }) >= 3,
      "app, crash and at least one restart of crash")
    t.ok(value(m, "prober_probe_duration_seconds_count", { probe_type = "Readiness", pod = POD }) >= 2)
    t.ok(value(m, "kubelet_runtime_operations_total", { operation_type = "exec_sync" }) >= 2, "exec probes ran")
    t.ok(value(m, "kubelua_cri_calls_total", { rpc = "ExecSync", code = "OK" }) >= 2)
    local states = 0
    for _, st in ipairs({ "created", "running", "exited", "unknown" }) do
      states = states + value(m, "kubelet_running_containers", { container_state = st })
    end
    t.eq(states, 2, "one newest instance per container name")
  end)

  t.it("GC, PLEG, policy errors, Lua memory and process metrics", function()
    -- the crash container's dead instances beyond one go (maxPerPodContainer 1)
    t.ok(S.wait_for(function()
      return scrape() and (value(m, "kubelua_gc_removed_total", { kind = "container" }) or 0) >= 1
    end, 30, 0.5), "GC removed a dead container:\n" .. tostring(text))
    t.ok(value(m, "kubelua_gc_runs_total", { collector = "container", result = "success" }) >= 1)
    t.ok(value(m, "kubelet_pleg_relist_duration_seconds_count") > 5)
    local seen = value(m, "kubelet_pleg_last_seen_seconds")
    t.ok(math.abs(seen - os.time()) < 10, "PLEG last seen is recent: " .. tostring(seen))
    t.eq(value(m, "kubelua_policy_errors_total"), 0, "no policy errors")
    t.eq(value(m, "kubelua_pleg_relist_failures_total"), 0)
    t.ok(value(m, "kubelua_lua_memory_bytes") > 100000, "Lua memory in bytes")
    local rss = value(m, "process_resident_memory_bytes")
    t.ok(rss > 1e6 and rss < 1e9, "RSS " .. rss)
    t.ok(value(m, "process_open_fds") >= 3)
    local started = value(m, "process_start_time_seconds")
    t.ok(started <= os.time() + 1 and started > os.time() - 300, "start time " .. started)
    t.ok(value(m, "process_cpu_seconds_total") > 0)
  end)

  t.it("promtool check metrics passes on the scraped text", function()
    t.ok(scrape(), "scraped")
    local f = dir .. "/scrape.txt"
    write(f, text)
    local out, ok = S.sh(PROMTOOL .. " check metrics < '" .. f .. "'")
    t.ok(ok, "promtool check metrics: " .. tostring(out))
    t.eq(out, "")
    -- and it does reject a broken exposition (the check has teeth)
    write(f, text .. "# TYPE kubelet_running_pods gauge\n")
    local out2, ok2 = S.sh(PROMTOOL .. " check metrics < '" .. f .. "'")
    t.eq(ok2, false, "a second TYPE line is refused")
    t.match(out2, "second TYPE line")
  end)

  t.it("a Prometheus server on loopback scrapes the agent and answers queries", function()
    prom_port = free_port()
    local pdir = dir .. "/prometheus"
    S.sh("mkdir -p '" .. pdir .. "/data'")
    write(pdir .. "/prometheus.yml", string.format([[
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: kubelua
    static_configs:
      - targets: ["127.0.0.1:%d"]
]], port))
    prom_pid = S.spawn(string.format("exec %s --config.file=%s/prometheus.yml --web.listen-address=127.0.0.1:%d "
      .. "--storage.tsdb.path=%s/data --log.level=warn", PROMETHEUS, pdir, prom_port, pdir), pdir .. "/log")
    local target
    t.ok(S.wait_for(function()
      local r = prom_get("/api/v1/targets")
      target = r and r.data and r.data.activeTargets and r.data.activeTargets[1]
      return target and target.health == "up"
    end, 60, 0.5), "target up: " .. json.encode(target or {}) .. "\nprometheus log:\n"
      .. tostring(S.read_file(pdir .. "/log")))
    t.eq(target.scrapeUrl, "http://127.0.0.1:" .. port .. "/metrics")
    t.eq(target.labels.job, "kubelua")

    local res
    t.ok(S.wait_for(function()
      local r = prom_get("/api/v1/query?query=" .. urlencode('kubelet_running_pods{job="kubelua"}'))
      res = r and r.status == "success" and r.data.result
      return res and #res == 1
    end, 30, 0.5), "query answered: " .. json.encode(res or {}))
    t.eq(res[1].metric.__name__, "kubelet_running_pods")
    t.eq(res[1].metric.instance, "127.0.0.1:" .. port)
    t.eq(res[1].value[2], "1")

    local q = prom_get("/api/v1/query?query=" .. urlencode('kubelua_cri_calls_total{rpc="RunPodSandbox",code="OK"}'))
    t.eq(q.status, "success")
    t.eq(#q.data.result, 1)
    t.ok(tonumber(q.data.result[1].value[2]) >= 1, "RunPodSandbox calls through Prometheus")
    -- a histogram Prometheus computes quantiles of (once two scrapes are in)
    local hq = urlencode("histogram_quantile(0.9, rate(kubelet_pleg_relist_duration_seconds_bucket[1m]))")
    t.ok(S.wait_for(function()
      q = prom_get("/api/v1/query?query=" .. hq)
      return q and q.status == "success" and #q.data.result == 1
    end, 20, 0.5), "histogram_quantile: " .. json.encode(q or {}))
    local p90 = tonumber(q.data.result[1].value[2])
    t.ok(p90 and p90 > 0 and p90 < 10, "p90 relist time " .. tostring(q.data.result[1].value[2]))
    q = prom_get("/api/v1/query?query=" .. urlencode('kubelua_lua_memory_bytes > 0'))
    t.eq(#q.data.result, 1)
  end)

  t.it("cleanup", function()
    stop(prom_pid)
    if prom_pid then
      local _, alive = S.sh("kill -0 " .. prom_pid .. " 2>/dev/null")
      t.eq(alive, false, "prometheus stopped")
    end
    stop(agent_pid)
    os.remove(pods .. "/mx.yaml")
    S.remove_sandboxes(rt, { ["io.kubernetes.pod.name"] = POD })
    task.sleep(0.1)
    S.rm(dir)
  end)
end)
