-- kubelua.agent.metrics: what the agent exports on /metrics, besides the
-- prober's own series (prober_probe_total, prober_probe_duration_seconds).
--
--   local am = require "kubelua.agent.metrics"
--   local ex = am.new()                    -- registers its families in metrics.default
--   rt.on_call = ex.on_call                -- CRI calls (kubelua.cri)
--   podsync.new{ ..., on_sync = ex.on_sync, log = ex.logger("podsync") }
--   prober.new{ ..., log = ex.logger("prober") }
--   pleg.new{ ..., on_relist = ex.on_relist }
--   gc.new{ ..., on_result = ex.on_gc }; image_gc.new{ ..., on_result = ex.on_image_gc }
--   ex.collect(agent)                      -- before each render: the gauges read at scrape
--
-- Names follow kubelet's where the meaning is the same (kubelet_running_pods,
-- kubelet_runtime_operations_*, kubelet_pleg_*, kubelet_started_*), the
-- Prometheus client conventions for process_*, and kubelua_* otherwise.
-- The hooks run on hot paths and allocate nothing once a label set has been
-- seen; everything that can be read from the agent's objects is computed at
-- scrape time instead (pods, containers, restarts, PLEG last seen, memory).
local core = require "kubelua.core"
local metrics = require "kubelua.metrics"
local cri = require "kubelua.cri"
local read_file = require("kubelua.gc.store").read_file

local M = {}

-- kubelet's runtime operation buckets: ExponentialBuckets(0.005, 2.5, 14)
M.RUNTIME_BUCKETS = {}
for i = 1, 14 do
  M.RUNTIME_BUCKETS[i] = 0.005 * 2.5 ^ (i - 1)
end

-- kubelet's container_state label values
local CONTAINER_STATE = {
  CONTAINER_CREATED = "created",
  CONTAINER_RUNNING = "running",
  CONTAINER_EXITED = "exited",
  CONTAINER_UNKNOWN = "unknown",
}

-- sync result errors that mean a container start was tried and failed
-- (kubelet_started_containers_errors_total); back-offs and image errors
-- are not starts
local START_ERRORS = { RunContainerError = true, CreateContainerError = true,
  CreateContainerConfigError = true }

-- kubelet's operation_type for an RPC: snake case, "podsandbox" in one word
-- (RunPodSandbox -> run_podsandbox, ImageFsInfo -> image_fs_info)
function M.operation_type(rpc)
  return (cri.snake(rpc):gsub("pod_sandbox", "podsandbox"))
end

-- Clock ticks per second, for /proc/self/stat's start time (sysconf through
-- the FFI; 100, the Linux value everywhere in practice, if that fails).
local function clock_ticks()
  local ok, ffi = pcall(require, "ffi")
  if ok then
    pcall(ffi.cdef, "long sysconf(int name);")
    local okc, v = pcall(function() return tonumber(ffi.C.sysconf(2)) end) -- _SC_CLK_TCK
    if okc and v and v > 0 then
      return v
    end
  end
  return 100
end

-- process_start_time_seconds: boot time + the process's start in ticks.
local function start_time()
  local stat, pstat = read_file("/proc/stat"), read_file("/proc/self/stat")
  local btime = stat and tonumber(stat:match("\nbtime (%d+)"))
  local rest = pstat and pstat:match("%) (.*)$")
  if not (btime and rest) then
    return nil
  end
  -- after "pid (comm) ", field 3 (state) is the first; starttime is field 22
  local i, ticks = 3, nil
  for f in rest:gmatch("%S+") do
    if i == 22 then
      ticks = tonumber(f)
      break
    end
    i = i + 1
  end
  return ticks and btime + ticks / clock_ticks()
end

-- new{ registry = (metrics.default) } -> exporter: a table of hook functions
-- (on_call, on_sync, on_relist, on_gc, on_image_gc, logger, collect), each
-- usable as a plain function value.
function M.new(opts)
  opts = opts or {}
  local reg = opts.registry or metrics.default
  local function counter(name, help, labels)
    return metrics.counter{ registry = reg, name = name, help = help, labels = labels }
  end
  local function gauge(name, help, labels)
    return metrics.gauge{ registry = reg, name = name, help = help, labels = labels }
  end
  local function histogram(name, help, labels, buckets)
    return metrics.histogram{ registry = reg, name = name, help = help, labels = labels, buckets = buckets }
  end

  -- pods and containers (scrape time)
  local desired_pods = gauge("kubelet_desired_pods",
    "The number of pods the agent is being instructed to run. static is true if the pod is not from the API server.",
    { "static" })
  local running_pods = gauge("kubelet_running_pods", "Number of pods that have a running pod sandbox.")
  local running_containers = gauge("kubelet_running_containers",
    "Number of containers of the agent's pods, by state.", { "container_state" })
  local pods_by_phase = gauge("kubelua_pods", "Pods the agent syncs, by phase.", { "phase" })
  local restarts = counter("kubelua_container_restarts_total",
    "Restarts of a container of a pod (its restart count).", { "namespace", "pod", "container" })

  -- pod sync
  local sync_results = counter("kubelua_sync_results_total",
    "Pod sync results by kubelet's SyncAction and result (success, or kubelet's error name).",
    { "action", "result" })
  local started_containers = counter("kubelet_started_containers_total",
    "Cumulative number of containers started.", { "container_type" })
  local started_container_errors = counter("kubelet_started_containers_errors_total",
    "Cumulative number of errors when starting containers.", { "container_type", "code" })
  local started_pods = counter("kubelet_started_pods_total", "Cumulative number of pods started.")
  local started_pod_errors = counter("kubelet_started_pods_errors_total",
    "Cumulative number of errors when starting pods.")

  -- CRI
  local cri_calls = counter("kubelua_cri_calls_total", "CRI calls by RPC and gRPC status code.", { "rpc", "code" })
  local op_duration = histogram("kubelet_runtime_operations_duration_seconds",
    "Duration in seconds of runtime operations. Broken down by operation type.", { "operation_type" },
    M.RUNTIME_BUCKETS)
  local op_total = counter("kubelet_runtime_operations_total",
    "Cumulative number of runtime operations by operation type.", { "operation_type" })
  local op_errors = counter("kubelet_runtime_operations_errors_total",
    "Cumulative number of runtime operation errors by operation type.", { "operation_type" })

  -- PLEG
  local relist_duration = histogram("kubelet_pleg_relist_duration_seconds",
    "Duration in seconds for relisting pods in PLEG.")
  local relist_interval = histogram("kubelet_pleg_relist_interval_seconds",
    "Interval in seconds between relisting in PLEG.")
  local last_seen = gauge("kubelet_pleg_last_seen_seconds",
    "Timestamp in seconds when PLEG was last seen active.")
  local relist_failures = counter("kubelua_pleg_relist_failures_total", "PLEG relists that failed.")

  -- garbage collection
  local gc_runs = counter("kubelua_gc_runs_total", "Garbage collection runs by collector and result.",
    { "collector", "result" })
  local gc_removed = counter("kubelua_gc_removed_total",
    "Objects removed by garbage collection, by kind (container, sandbox, log_dir, log_link, image).", { "kind" })
  local gc_removal_errors = counter("kubelua_gc_removal_errors_total",
    "Garbage collection removals that failed, by kind.", { "kind" })
  local gc_freed = counter("kubelua_gc_freed_bytes_total",
    "Bytes freed by garbage collection, by kind (as far as known: container sizes only when measured).",
    { "kind" })
  local images_collected = counter("kubelet_image_garbage_collected_total",
    "Total number of images garbage collected by the image GC, by reason (age, space, policy).", { "reason" })

  -- policy, memory, process
  local policy_errors = counter("kubelua_policy_errors_total",
    "Errors raised by Lua policy code, by source (gc, image_gc, prober, podsync).", { "source" })
  local lua_memory = gauge("kubelua_lua_memory_bytes", "Memory in use by the agent's Lua state, in bytes.")
  local cpu = counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.")
  local rss = gauge("process_resident_memory_bytes", "Resident memory size in bytes.")
  local vsz = gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.")
  local open_fds = gauge("process_open_fds", "Number of open file descriptors.")
  local max_fds = gauge("process_max_fds", "Maximum number of open file descriptors.")
  local start = gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.")
  start:set(nil, start_time() or core.now())
  -- series without labels exist from the start, at 0
  for _, c in ipairs({ started_pods, started_pod_errors, relist_failures }) do
    c:inc(nil, 0)
  end
  for _, source in ipairs({ "gc", "image_gc", "prober", "podsync" }) do
    policy_errors:inc({ source = source }, 0)
  end

  local ex = {}

  -- ---------------------------------------------------------------- CRI
  -- rpc -> code -> child counter; rpc -> child histogram
  local call_children, dur_children = {}, {}
  function ex.on_call(rpc, code, seconds)
    local by_code = call_children[rpc]
    if by_code == nil then
      by_code = {}
      call_children[rpc] = by_code
      dur_children[rpc] = op_duration:child{ operation_type = M.operation_type(rpc) }
    end
    local c = by_code[code]
    if c == nil then
      c = cri_calls:child{ rpc = rpc, code = code }
      by_code[code] = c
    end
    c:inc()
    dur_children[rpc]:observe(seconds)
  end

  -- ------------------------------------------------------------ pod sync
  function ex.on_sync(_, res)
    for _, r in ipairs(res.results or {}) do
      local err = r.error
      sync_results:inc{ action = r.action, result = err and tostring(err) or "success" }
      if r.action == "StartContainer" then
        if not err then
          started_containers:inc{ container_type = "container" }
        elseif START_ERRORS[err] then
          local code = tostring(r.message or ""):match("(%u[%u_]+): ") or "UNKNOWN"
          started_container_errors:inc{ container_type = "container", code = code }
        end
      elseif r.action == "CreatePodSandbox" then
        if err then
          started_pod_errors:inc()
        else
          started_pods:inc()
        end
      end
    end
  end

  -- logger(source) -> fn(level, msg): core.log, counting errors ("E") as
  -- policy errors of that source (podsync and the prober log exactly the
  -- Lua errors their pcalls catch at that level).
  function ex.logger(source)
    local child = policy_errors:child{ source = source }
    return function(level, msg)
      if level == "E" then
        child:inc()
      end
      return core.log(level, msg)
    end
  end

  -- ---------------------------------------------------------------- PLEG
  local last_start
  function ex.on_relist(seconds, ok)
    local now = core.monotime()
    relist_duration:observe(nil, seconds)
    local began = now - seconds
    if last_start then
      relist_interval:observe(nil, math.max(0, began - last_start))
    end
    last_start = began
    if not ok then
      relist_failures:inc()
    end
  end

  -- ------------------------------------------------------------------ GC
  local function count(kind, list, with_bytes)
    local n, bytes, failed = 0, 0, 0
    for _, e in ipairs(list or {}) do
      if e.done then
        n = n + 1
        if with_bytes and type(e.bytes) == "number" then
          bytes = bytes + e.bytes
        end
      elseif e.error then
        failed = failed + 1
      end
    end
    gc_removed:inc({ kind = kind }, n)
    gc_removal_errors:inc({ kind = kind }, failed)
    if with_bytes then
      gc_freed:inc({ kind = kind }, bytes)
    end
  end

  function ex.on_gc(res)
    gc_runs:inc{ collector = "container", result = res.err and "error" or "success" }
    if res.policy_error then
      policy_errors:inc{ source = "gc" }
    end
    count("container", res.containers, true)
    count("sandbox", res.sandboxes, false)
    count("log_dir", res.log_dirs, true)
    count("log_link", res.log_links, false)
  end

  local IMAGE_REASON = { ["max-age"] = "age", space = "space", policy = "policy" }
  function ex.on_image_gc(res)
    if res.disabled then
      return
    end
    gc_runs:inc{ collector = "image", result = res.err and "error" or "success" }
    if res.policy_error then
      policy_errors:inc{ source = "image_gc" }
    end
    local n, bytes, failed = 0, 0, 0
    for _, e in ipairs(res.images or {}) do
      if e.done then
        n, bytes = n + 1, bytes + (tonumber(e.size) or 0)
        images_collected:inc{ reason = IMAGE_REASON[e.rule] or tostring(e.rule) }
      elseif e.error then
        failed = failed + 1
      end
    end
    gc_removed:inc({ kind = "image" }, n)
    gc_removal_errors:inc({ kind = "image" }, failed)
    gc_freed:inc({ kind = "image" }, bytes)
  end

  -- ----------------------------------------------------------- at scrape
  local function collect_pods(sync)
    desired_pods:reset()
    running_containers:reset()
    pods_by_phase:reset()
    restarts:reset()
    desired_pods:set({ static = "true" }, 0)
    desired_pods:set({ static = "false" }, 0)
    for _, state in pairs(CONTAINER_STATE) do
      running_containers:set({ container_state = state }, 0)
    end
    local running = 0
    for _, p in ipairs(sync:pods()) do
      if p.desired and not p.removed then
        -- the source kubelua.config stamps on each pod (the worker's may be "*")
        local md = p.desired.metadata
        local src = md and md.annotations and md.annotations["kubernetes.io/config.source"] or p.source
        desired_pods:inc{ static = src == "api" and "false" or "true" }
      end
      for _, sb in ipairs(p.sandboxes or {}) do
        if sb.state == "SANDBOX_READY" then
          running = running + 1
          break
        end
      end
      for name, c in pairs(p.containers or {}) do
        running_containers:inc{ container_state = CONTAINER_STATE[c.state] or "unknown" }
        restarts:inc({ namespace = p.namespace, pod = p.name, container = name }, c.restart_count or 0)
      end
      local phase = p.status and p.status.phase
      if phase then
        pods_by_phase:inc{ phase = phase }
      end
    end
    running_pods:set(nil, running)
  end

  local function collect_cri()
    op_total:reset()
    op_errors:reset()
    for rpc, by_code in pairs(call_children) do
      local labels = { operation_type = M.operation_type(rpc) }
      op_total:inc(labels, 0)
      for code, c in pairs(by_code) do
        local n = c:get()
        op_total:inc(labels, n)
        if code ~= "OK" then
          op_errors:inc(labels, n)
        end
      end
    end
  end

  local function collect_process()
    cpu:reset()
    cpu:inc(nil, core.cputime())
    local st = read_file("/proc/self/status")
    if st then
      local r, v = tonumber(st:match("VmRSS:%s*(%d+)")), tonumber(st:match("VmSize:%s*(%d+)"))
      if r then
        rss:set(nil, r * 1024)
      end
      if v then
        vsz:set(nil, v * 1024)
      end
    end
    local ok, sys = pcall(require, "kubelua.sys")
    local fds = ok and sys.readdir("/proc/self/fd")
    if fds then
      open_fds:set(nil, #fds)
    end
    local limits = read_file("/proc/self/limits")
    local nofile = limits and tonumber(limits:match("Max open files%s+(%d+)"))
    if nofile then
      max_fds:set(nil, nofile)
    end
  end

  -- collect(agent): refresh what is read at scrape time. agent is a
  -- kubelua.agent (sync, pleg); either may be missing.
  function ex.collect(agent)
    if agent and agent.sync then
      collect_pods(agent.sync)
    end
    if agent and agent.pleg then
      if agent.pleg.last_relist then
        last_seen:set(nil, agent.pleg.last_relist)
      end
    end
    collect_cri()
    lua_memory:set(nil, collectgarbage("count") * 1024)
    collect_process()
  end

  return ex
end

return M
