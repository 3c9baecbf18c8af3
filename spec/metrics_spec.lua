-- kubelua.metrics children (the allocation-free hot path), the renderer's
-- escaping and histogram details, the agent's exporter hooks
-- (kubelua.agent.metrics) and the CRI client's call accounting.
local t = require "spec.t"
local metrics = require "kubelua.metrics"
local am = require "kubelua.agent.metrics"
local cri = require "kubelua.cri"

local function line_of(text, prefix)
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #prefix) == prefix then
      return line
    end
  end
end

t.describe("metrics children", function()
  t.it("a child updates its series; the parent sees the same values", function()
    local reg = metrics.registry()
    local c = metrics.counter{ registry = reg, name = "calls_total", help = "Calls.", labels = { "rpc", "code" } }
    local ok = c:child{ rpc = "Version", code = "OK" }
    ok:inc()
    ok:inc(2)
    t.eq(c:get{ rpc = "Version", code = "OK" }, 3)
    t.eq(ok:get(), 3)
    t.fails(function() ok:inc(-1) end, "cannot be incremented by %-1")
    t.fails(function() ok:set(1) end, "only a gauge child")
    t.fails(function() ok:observe(1) end, "only a histogram child")
    local g = metrics.gauge{ registry = reg, name = "g", labels = { "a" } }:child{ a = "x" }
    g:set(5)
    g:inc(-2)
    t.eq(g:get(), 3)
  end)

  t.it("a child made before any update renders its series at 0", function()
    local reg = metrics.registry()
    metrics.counter{ registry = reg, name = "x_total", labels = { "a" } }:child{ a = "1" }
    t.match(metrics.render(reg), '\nx_total{a="1"} 0\n')
  end)

  t.it("a child survives remove() and reset(): its next update starts the series anew", function()
    local reg = metrics.registry()
    local c = metrics.counter{ registry = reg, name = "y_total", labels = { "a" } }
    local ch = c:child{ a = "1" }
    ch:inc(5)
    c:reset()
    t.eq(c:get{ a = "1" }, 0)
    t.eq(line_of(metrics.render(reg), "y_total{"), nil)
    ch:inc()
    t.eq(c:get{ a = "1" }, 1)
    c:remove{ a = "1" }
    ch:inc(2)
    t.eq(ch:get(), 2)
  end)

  t.it("histogram children observe into cumulative buckets with +Inf, _sum and _count", function()
    local reg = metrics.registry()
    local h = metrics.histogram{ registry = reg, name = "op_seconds", help = "Op.", labels = { "op" },
      buckets = { 0.01, 0.1, 1 } }
    local ch = h:child{ op = "run" }
    for _, v in ipairs({ 0.001, 0.01, 0.05, 0.5, 7 }) do
      ch:observe(v)
    end
    local text = metrics.render(reg)
    t.match(text, '# TYPE op_seconds histogram\n')
    t.match(text, 'op_seconds_bucket{op="run",le="0.01"} 2\n')
    t.match(text, 'op_seconds_bucket{op="run",le="0.1"} 3\n')
    t.match(text, 'op_seconds_bucket{op="run",le="1"} 4\n')
    t.match(text, 'op_seconds_bucket{op="run",le="%+Inf"} 5\n')
    t.match(text, 'op_seconds_sum{op="run"} 7.561\n')
    t.match(text, 'op_seconds_count{op="run"} 5\n')
    t.eq(ch:get().count, 5)
  end)

  t.it("label values with backslash, quote and newline are escaped; HELP escapes backslash and newline", function()
    local reg = metrics.registry()
    local g = metrics.gauge{ registry = reg, name = "v", help = 'a\\b\n"c"', labels = { "l" } }
    g:child{ l = 'x\\y"z"\nw' }:set(1)
    local text = metrics.render(reg)
    t.match(text, '# HELP v a\\\\b\\n"c"\n', "HELP")
    t.eq(line_of(text, "v{"), 'v{l="x\\\\y\\"z\\"\\nw"} 1')
  end)

  t.it("numbers: integers plainly, others in the shortest exact form, infinities and NaN by name", function()
    local reg = metrics.registry()
    local g = metrics.gauge{ registry = reg, name = "n", labels = { "k" } }
    g:set({ k = "a" }, 1e12)
    g:set({ k = "b" }, 0.1)
    g:set({ k = "c" }, math.huge)
    g:set({ k = "d" }, 0 / 0)
    g:set({ k = "e" }, 1 / 3)
    local text = metrics.render(reg)
    t.match(text, 'n{k="a"} 1000000000000\n')
    t.match(text, 'n{k="b"} 0.1\n')
    t.match(text, 'n{k="c"} %+Inf\n')
    t.match(text, 'n{k="d"} NaN\n')
    t.eq(tonumber(line_of(text, 'n{k="e"}'):match(" (%S+)$")), 1 / 3)
  end)
end)

t.describe("agent exporter", function()
  local function fresh()
    local reg = metrics.registry()
    return am.new{ registry = reg }, reg
  end

  t.it("operation types are kubelet's", function()
    t.eq(am.operation_type("RunPodSandbox"), "run_podsandbox")
    t.eq(am.operation_type("ListPodSandbox"), "list_podsandbox")
    t.eq(am.operation_type("PodSandboxStatus"), "podsandbox_status")
    t.eq(am.operation_type("ImageFsInfo"), "image_fs_info")
    t.eq(am.operation_type("ExecSync"), "exec_sync")
    t.eq(am.operation_type("Version"), "version")
  end)

  t.it("CRI calls: counts by RPC and code, kubelet's totals, errors and durations", function()
    local ex, reg = fresh()
    ex.on_call("RunPodSandbox", "OK", 0.2)
    ex.on_call("RunPodSandbox", "OK", 0.3)
    ex.on_call("RunPodSandbox", "DEADLINE_EXCEEDED", 240)
    ex.on_call("Version", "OK", 0.001)
    ex.collect(nil)
    local calls = reg:get("kubelua_cri_calls_total")
    t.eq(calls:get{ rpc = "RunPodSandbox", code = "OK" }, 2)
    t.eq(calls:get{ rpc = "RunPodSandbox", code = "DEADLINE_EXCEEDED" }, 1)
    t.eq(reg:get("kubelet_runtime_operations_total"):get{ operation_type = "run_podsandbox" }, 3)
    t.eq(reg:get("kubelet_runtime_operations_errors_total"):get{ operation_type = "run_podsandbox" }, 1)
    t.eq(reg:get("kubelet_runtime_operations_errors_total"):get{ operation_type = "version" }, 0)
    local h = reg:get("kubelet_runtime_operations_duration_seconds"):get{ operation_type = "run_podsandbox" }
    t.eq(h.count, 3)
    t.eq(h.sum, 240.5)
    -- kubelet's buckets: 0.005 * 2.5^i, 14 of them; 240 s falls in the 298 s one
    t.eq(#h.buckets, 14)
    t.eq(h.buckets[12].le, 0.005 * 2.5 ^ 11)
    t.eq(h.buckets[12].count, 2)
    t.eq(h.buckets[13].count, 3)
    -- scraping twice does not double the derived totals
    ex.collect(nil)
    t.eq(reg:get("kubelet_runtime_operations_total"):get{ operation_type = "run_podsandbox" }, 3)
  end)

  t.it("the CRI hook allocates nothing for a label set already seen", function()
    local ex = fresh()
    local function run(n)
      for _ = 1, n do
        ex.on_call("ListContainers", "OK", 0.001)
      end
    end
    run(10000) -- warm up: the first label set's series, and the JIT's traces (GC objects)
    collectgarbage("collect")
    collectgarbage("stop")
    local before = collectgarbage("count")
    run(10000)
    local grew = collectgarbage("count") - before
    collectgarbage("restart")
    t.ok(grew < 1, "KB allocated by 10000 calls: " .. grew)
  end)

  t.it("sync results by kubelet's names; started containers and pods", function()
    local ex, reg = fresh()
    local sr = require "kubelua.sync_result"
    local res = sr.pod()
    res:add(sr.new(sr.actions.CreatePodSandbox, "uid"))
    res:add(sr.new(sr.actions.StartContainer, "app"))
    res:add(sr.new(sr.actions.StartContainer, "bad")):fail(sr.errors.RunContainer,
      "UNKNOWN: /runtime.v1.RuntimeService/StartContainer: exec failed")
    res:add(sr.new(sr.actions.StartContainer, "loop")):fail(sr.errors.CrashLoopBackOff, "back-off 10s")
    ex.on_sync("uid", res)
    local results = reg:get("kubelua_sync_results_total")
    t.eq(results:get{ action = "StartContainer", result = "success" }, 1)
    t.eq(results:get{ action = "StartContainer", result = "RunContainerError" }, 1)
    t.eq(results:get{ action = "StartContainer", result = "CrashLoopBackOff" }, 1)
    t.eq(results:get{ action = "CreatePodSandbox", result = "success" }, 1)
    t.eq(reg:get("kubelet_started_containers_total"):get{ container_type = "container" }, 1)
    t.eq(reg:get("kubelet_started_containers_errors_total"):get{ container_type = "container", code = "UNKNOWN" }, 1)
    t.eq(reg:get("kubelet_started_pods_total"):get(), 1)
  end)

  t.it("GC results: removals, failures, bytes, runs, policy errors", function()
    local ex, reg = fresh()
    ex.on_gc{ containers = { { done = true, bytes = 100 }, { done = true, bytes = false }, { done = false, error = "x" } },
      sandboxes = { { done = true } }, log_dirs = { { done = true, bytes = 4096 } }, log_links = {} }
    ex.on_gc{ err = "POLICY: boom", policy_error = "boom", containers = {}, sandboxes = {}, log_dirs = {}, log_links = {} }
    ex.on_image_gc{ images = { { done = true, size = 5000, rule = "space" }, { done = true, size = 7, rule = "max-age" },
      { done = false, error = "in use", size = 1 } } }
    ex.on_image_gc{ disabled = true }
    local removed, freed = reg:get("kubelua_gc_removed_total"), reg:get("kubelua_gc_freed_bytes_total")
    t.eq(removed:get{ kind = "container" }, 2)
    t.eq(removed:get{ kind = "sandbox" }, 1)
    t.eq(removed:get{ kind = "log_dir" }, 1)
    t.eq(removed:get{ kind = "image" }, 2)
    t.eq(freed:get{ kind = "container" }, 100)
    t.eq(freed:get{ kind = "log_dir" }, 4096)
    t.eq(freed:get{ kind = "image" }, 5007)
    t.eq(reg:get("kubelua_gc_removal_errors_total"):get{ kind = "container" }, 1)
    t.eq(reg:get("kubelua_gc_removal_errors_total"):get{ kind = "image" }, 1)
    t.eq(reg:get("kubelua_gc_runs_total"):get{ collector = "container", result = "success" }, 1)
    t.eq(reg:get("kubelua_gc_runs_total"):get{ collector = "container", result = "error" }, 1)
    t.eq(reg:get("kubelua_gc_runs_total"):get{ collector = "image", result = "success" }, 1)
    t.eq(reg:get("kubelet_image_garbage_collected_total"):get{ reason = "space" }, 1)
    t.eq(reg:get("kubelet_image_garbage_collected_total"):get{ reason = "age" }, 1)
    t.eq(reg:get("kubelua_policy_errors_total"):get{ source = "gc" }, 1)
  end)

  t.it("loggers count errors as policy errors of their source; PLEG relists are timed", function()
    local ex, reg = fresh()
    local log = ex.logger("prober")
    log("W", "metrics_spec: a warning (expected in this test)")
    log("E", "metrics_spec: an error (expected in this test)")
    local pe = reg:get("kubelua_policy_errors_total")
    t.eq(pe:get{ source = "prober" }, 1)
    t.eq(pe:get{ source = "podsync" }, 0)
    ex.on_relist(0.002, true)
    ex.on_relist(0.004, false)
    local d = reg:get("kubelet_pleg_relist_duration_seconds"):get()
    t.eq(d.count, 2)
    t.ok(math.abs(d.sum - 0.006) < 1e-12)
    t.eq(reg:get("kubelet_pleg_relist_interval_seconds"):get().count, 1)
    t.eq(reg:get("kubelua_pleg_relist_failures_total"):get(), 1)
  end)

  t.it("pods and containers are read at scrape time from podsync", function()
    local ex, reg = fresh()
    local pods = {
      { name = "a", namespace = "ns", source = "file", desired = {}, sandboxes = { { state = "SANDBOX_READY" } },
        containers = { app = { state = "CONTAINER_RUNNING", restart_count = 0 },
          crash = { state = "CONTAINER_EXITED", restart_count = 4 } }, status = { phase = "Running" } },
      { name = "b", namespace = "ns", source = "*", sandboxes = { { state = "SANDBOX_NOTREADY" } },
        desired = { metadata = { annotations = { ["kubernetes.io/config.source"] = "api" } } },
        containers = {}, status = { phase = "Pending" } },
      { name = "c", namespace = "ns", source = "file", removed = true, sandboxes = {}, containers = {} },
    }
    ex.collect{ sync = { pods = function() return pods end } }
    t.eq(reg:get("kubelet_running_pods"):get(), 1)
    t.eq(reg:get("kubelet_desired_pods"):get{ static = "true" }, 1)
    t.eq(reg:get("kubelet_desired_pods"):get{ static = "false" }, 1)
    t.eq(reg:get("kubelet_running_containers"):get{ container_state = "running" }, 1)
    t.eq(reg:get("kubelet_running_containers"):get{ container_state = "exited" }, 1)
    t.eq(reg:get("kubelet_running_containers"):get{ container_state = "created" }, 0)
    t.eq(reg:get("kubelua_container_restarts_total"):get{ namespace = "ns", pod = "a", container = "crash" }, 4)
    t.eq(reg:get("kubelua_pods"):get{ phase = "Running" }, 1)
    -- a pod that went away leaves no series behind at the next scrape
    pods = { pods[2] }
    ex.collect{ sync = { pods = function() return pods end } }
    t.eq(reg:get("kubelet_running_pods"):get(), 0)
    t.eq(line_of(metrics.render(reg), "kubelua_container_restarts_total{"), nil)
    t.ok(reg:get("kubelua_lua_memory_bytes"):get() > 0)
    t.ok(reg:get("process_resident_memory_bytes"):get() > 0)
    t.ok(reg:get("process_open_fds"):get() >= 3)
  end)
end)

t.describe("GC on_result", function()
  t.it("real runs reach the exporter, dry runs do not; a failing hook is a policy error", function()
    local testing = require "kubelua.testing"
    local S = require "spec.support"
    local NOW = 1700000000
    local rt = testing.runtime(testing.node{ time = NOW, pods = {
      { uid = "u", name = "web", namespace = "ns", containers = {
        { name = "app", attempt = 0, created = NOW - 400, id = "app-0" },
        { name = "app", attempt = 1, created = NOW - 300, id = "app-1" },
        { name = "app", attempt = 2, created = NOW - 100, id = "app-2", state = "running" },
      } } } })
    local logs = S.tmpdir("metrics-gc")
    local reg = metrics.registry()
    local ex = am.new{ registry = reg }
    local g = require("kubelua.gc").new{ runtime = rt, pod_logs_dir = logs, container_logs_dir = false,
      on_result = ex.on_gc }
    assert(g:plan())
    t.eq(reg:get("kubelua_gc_runs_total"):get{ collector = "container", result = "success" }, 0, "dry run")
    assert(g:run())
    t.eq(reg:get("kubelua_gc_runs_total"):get{ collector = "container", result = "success" }, 1)
    t.eq(reg:get("kubelua_gc_removed_total"):get{ kind = "container" }, 1, "app-0 (one dead one is kept)")
    g.hooks.containers = function() error("policy bug") end
    t.eq(g:run(), nil)
    t.eq(reg:get("kubelua_policy_errors_total"):get{ source = "gc" }, 1)
    t.eq(reg:get("kubelua_gc_runs_total"):get{ collector = "container", result = "error" }, 1)
    S.rm(logs)
  end)
end)

t.describe("CRI call accounting", function()
  t.it("on_call sees unary, raw and stream calls with their gRPC code", function()
    local rt = assert(cri.connect("unix:///tmp/kubelua-metrics-spec-nonexistent.sock", { timeout = 2 }))
    local seen = {}
    rt.on_call = function(rpc, code, secs)
      seen[#seen + 1] = { rpc = rpc, code = code, ok = type(secs) == "number" and secs >= 0 }
    end
    local v, _, code = rt:version{}
    t.eq(v, nil)
    t.eq(seen[1], { rpc = "Version", code = code, ok = true })
    t.eq(code, "UNAVAILABLE")
    local grpc = require "kubelua.grpc"
    local m = grpc.methods()["/runtime.v1.RuntimeService/ListContainers"]
    local raw, _, rcode = rt:unary_raw(m, {})
    t.eq(raw, nil)
    t.eq(seen[2], { rpc = "ListContainers", code = rcode, ok = true })
    rt:get_container_events({}, function() end)
    t.eq(seen[3].rpc, "GetContainerEvents")
    t.ok(seen[3].code ~= nil)
    -- a failing hook does not break the call
    rt.on_call = function() error("hook bug") end
    local _, _, code2 = rt:version{}
    t.eq(code2, "UNAVAILABLE")
    rt.on_call = nil
    t.eq(#seen, 3)
    rt:close()
  end)
end)
