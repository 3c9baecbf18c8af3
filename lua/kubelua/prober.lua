-- kubelua.prober: kubelet's probe policy (kubelet-behaviour.md 3.1-3.5): one
-- worker per (pod, container, probe kind), thresholds, startup gating,
-- on-hold after a liveness/startup failure, jitter after agent start, and a
-- results manager that publishes changes only.
--
--   local prober = require "kubelua.prober"
--   local mgr = prober.new{ runtime = rt }        -- rt: a kubelua.cri client (exec probes)
--   mgr:subscribe(function(u) print(u.kind, u.container_id, u.result, u.reason) end)
--   mgr:add_pod(pod)          -- a pod as a table shaped like the Kubernetes API object
--   mgr:set_status(pod.metadata.uid, status)   -- each time the pod's status changes
--   ...
--   mgr:remove_pod(uid)
--
-- Pods are plain tables with the API's field names:
--   pod.metadata = { uid, name, namespace, deletionTimestamp }
--   pod.spec = { restartPolicy, containers = { { name, ports = { { name, containerPort } },
--     env = { { name, value } }, livenessProbe, readinessProbe, startupProbe } } }
--   probe = { httpGet = { host, port, path, scheme, httpHeaders = { { name, value } } }
--           | tcpSocket = { host, port } | exec = { command = {...} } | grpc = { port, service },
--     timeoutSeconds, periodSeconds, successThreshold, failureThreshold, initialDelaySeconds }
--   status = { phase, podIP, containerStatuses = { { name, containerID, started,
--     state = { running = { startedAt = <seconds, on clock.now()'s scale> } | terminated = {...} } } },
--     initContainerStatuses = {...} }
-- Results are "Success", "Failure" or "Unknown" (kubelet's cache values).
--
-- prober.new{...} options (all optional):
--   clock    { now = fn() -> seconds, event = fn() -> ev } where ev:wait(secs)
--            parks until ev:wake() (-> true) or the time is up (-> false).
--            Default: wall clock and kubelua.probe.core events. Tests pass
--            kubelua.prober.fakeclock.
--   probe    fn(kind, spec, ctx) -> result, output, details: runs one probe
--            (default prober.run_probe: kubelua.probe by handler). `kind` is
--            "liveness" | "readiness" | "startup"; ctx = { pod, container,
--            status (the container's), container_id, worker, runtime }.
--   random   fn() -> [0, 1) for the start-up jitter (default math.random)
--   spawn    fn(f) runs f in a new task (default kubelua.task.spawn)
--   runtime  a kubelua.cri client, for exec probes
--   metrics  a kubelua.metrics registry (default metrics.default), or false
--   log      fn(level, msg) (default kubelua.core.log); every failure and
--            warning is logged, not only the first of a run
--   policy   hooks, see below; mgr:set_policy(p) swaps them at run time
--   tick     seconds (default prober.TICK, 0.02): every probe starts on a
--            multiple of the tick in use on the clock, so workers due within
--            one tick share one wake-up of the loop (at 600 probes/s a
--            wake-up each cost about a third of a probe's CPU, bench/probe).
--            The tick in use shrinks as probes get more frequent, to about
--            prober.TICK_BATCH probes a wake-up (prober.tick_for): at
--            thousands a second wake-ups are shared anyway, and bigger
--            bursts only delay probes. 0: off.
--
-- Policy hooks (each optional; unknown names throw):
--   wrap_probe(next, kind, spec, ctx) -> result, output, details
--       Runs around every probe; call next(kind, spec, ctx) for the default.
--       E.g. a body check:
--         wrap_probe = function(next, kind, spec, ctx)
--           local r, out, d = next(kind, spec, ctx)
--           if r == "success" and spec.httpGet and not out:find("ready") then
--             return "failure", "body lacks 'ready'", d
--           end
--           return r, out, d
--         end
--   next_delay(w, period) -> seconds until the worker's next probe. E.g. back
--       off a crash-looping container: `return period * 2 ^ math.min(w.restarts, 5)`.
--       The default keeps kubelet's fixed period (a ticker: late probes do not
--       push the schedule).
-- A worker `w` (read-only for hooks): kind, pod_uid, container_name,
-- container_id, restarts (container IDs seen after the first), last_result,
-- result_run, on_hold, last_output, last_reason, probes (runs so far).
--
-- Updates to subscribers: { kind, container_id, pod_uid, container_name,
-- result, reason } - only when a container's result changes or is first set.
local core = require "kubelua.core"
local task = require "kubelua.task"

local M = {}

local RESULTS = { success = true, warning = true, failure = true, unknown = true }

M.KINDS = { "startup", "readiness", "liveness" } -- kubelet's creation order
local FIELD = { liveness = "livenessProbe", readiness = "readinessProbe", startup = "startupProbe" }
local LABEL = { liveness = "Liveness", readiness = "Readiness", startup = "Startup" }
-- 3.3: initial values when a new container ID is first seen
M.INITIAL = { readiness = "Failure", liveness = "Success", startup = "Unknown" }
-- 3.2: API defaults
M.DEFAULTS = { timeoutSeconds = 1, periodSeconds = 10, successThreshold = 1, failureThreshold = 3,
  initialDelaySeconds = 0 }
M.TICK = 0.02 -- see the tick option
M.TICK_BATCH = 16
M.MAX_RETRIES = 3 -- kubelet's maxProbeRetries: only probes that errored are re-run

local HOOKS = { wrap_probe = true, next_delay = true }

------------------------------------------------------------------ helpers

-- 3.5: an int port as is; a name from container.ports (containerPort); else
-- a number in a string. nil, "invalid port number: X" outside 1..65535.
function M.resolve_port(port, container)
  local n
  if type(port) == "number" then
    n = port
  elseif type(port) == "string" then
    for _, p in ipairs(container and container.ports or {}) do
      if p.name == port then
        n = p.containerPort
        break
      end
    end
    n = n or tonumber(port)
  end
  if type(n) ~= "number" or n ~= math.floor(n) or n < 1 or n > 65535 then
    return nil, "invalid port number: " .. tostring(port)
  end
  return n
end

-- $(VAR) from the container's static env; $$ escapes a $; an undefined
-- $(VAR) stays as written (3.8).
function M.expand(s, env)
  local vars = {}
  for _, e in ipairs(env or {}) do
    if e.name and e.value ~= nil and e.valueFrom == nil then
      vars[e.name] = tostring(e.value)
    end
  end
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = s:sub(i, i)
    if c == "$" and s:sub(i + 1, i + 1) == "$" then
      out[#out + 1] = "$"
      i = i + 2
    elseif c == "$" and s:sub(i + 1, i + 1) == "(" then
      local close = s:find(")", i + 2, true)
      local name = close and s:sub(i + 2, close - 1)
      if name and vars[name] then
        out[#out + 1] = vars[name]
        i = close + 1
      elseif close then
        out[#out + 1] = s:sub(i, close)
        i = close + 1
      else
        out[#out + 1] = s:sub(i)
        i = n + 1
      end
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
  return table.concat(out)
end

-- A probe spec with kubelet's defaults filled in (a copy).
function M.with_defaults(spec)
  local s = {}
  for k, v in pairs(spec) do
    s[k] = v
  end
  for k, v in pairs(M.DEFAULTS) do
    if s[k] == nil or s[k] == 0 and k ~= "initialDelaySeconds" then
      s[k] = v
    end
  end
  return s
end

-- The default probe runner: kubelua.probe by handler.
function M.run_probe(kind, spec, ctx)
  local probe = require "kubelua.probe"
  local pod, container = ctx.pod, ctx.container
  local pod_ip = pod.status and pod.status.podIP
  if pod_ip == nil or pod_ip == "" then
    pod_ip = "127.0.0.1"
  end
  local timeout = spec.timeoutSeconds
  local function invalid(msg)
    return "unknown", msg, { error = msg, duration = 0 }
  end
  if spec.httpGet then
    local h = spec.httpGet
    local port, err = M.resolve_port(h.port, container)
    if not port then
      return invalid(err)
    end
    local host = h.host
    if host == nil or host == "" then
      host = pod_ip
    end
    return probe.http{ host = host, port = port, path = h.path or "/", scheme = h.scheme,
      headers = h.httpHeaders, timeout = timeout }
  elseif spec.tcpSocket then
    local port, err = M.resolve_port(spec.tcpSocket.port, container)
    if not port then
      return invalid(err)
    end
    local host = spec.tcpSocket.host
    if host == nil or host == "" then
      host = pod_ip
    end
    return probe.tcp{ host = host, port = port, timeout = timeout }
  elseif spec.grpc then
    local port, err = M.resolve_port(spec.grpc.port, container)
    if not port then
      return invalid(err)
    end
    return probe.grpc{ host = pod_ip, port = port, service = spec.grpc.service, timeout = timeout }
  elseif spec.exec then
    if not ctx.runtime then
      return invalid("exec probe needs a CRI client (prober.new{ runtime = ... })")
    end
    local cmd = {}
    for i, a in ipairs(spec.exec.command or {}) do
      cmd[i] = M.expand(tostring(a), container.env)
    end
    if #cmd == 0 then
      return invalid("exec probe has an empty command")
    end
    return probe.exec{ client = ctx.runtime, container_id = ctx.container_id, command = cmd,
      timeout = timeout }
  end
  return invalid(string.format("missing probe handler for %s:%s",
    pod.metadata and pod.metadata.name or "?", container.name or "?"))
end

---------------------------------------------------------------- results

local Results = {}
Results.__index = Results

-- results(log) -> a results manager: the latest result per container and probe kind,
-- with subscribers told of changes (kubelet's results.Manager).
function M.results(log)
  return setmetatable({ map = { liveness = {}, readiness = {}, startup = {} }, subs = {},
    log = log or core.log }, Results)
end

function Results:get(kind, container_id)
  local e = self.map[kind][container_id]
  return e and e.result, e and e.reason
end

-- Set and publish when the value changed or was absent (3.1).
function Results:set(kind, container_id, result, info)
  local m = self.map[kind]
  local old = m[container_id]
  if old and old.result == result then
    old.reason = info.reason
    return false
  end
  m[container_id] = { result = result, reason = info.reason }
  local u = { kind = kind, container_id = container_id, result = result, reason = info.reason,
    pod_uid = info.pod_uid, container_name = info.container_name }
  for _, fn in ipairs(self.subs) do
    local ok, err = pcall(fn, u)
    if not ok then
      self.log("E", "prober: a results subscriber failed: " .. tostring(err))
    end
  end
  return true
end

function Results:remove(kind, container_id)
  self.map[kind][container_id] = nil
end

-- subscribe(fn) -> unsubscribe()
function Results:subscribe(fn)
  assert(type(fn) == "function", "kubelua.prober: subscribe expects a function")
  table.insert(self.subs, fn)
  return function()
    for i, f in ipairs(self.subs) do
      if f == fn then
        table.remove(self.subs, i)
        return
      end
    end
  end
end

---------------------------------------------------------------- metrics

local function make_metrics(reg)
  if reg == false then
    return nil
  end
  local metrics = require "kubelua.metrics"
  reg = reg or metrics.default
  return {
    total = metrics.counter{ registry = reg, name = "prober_probe_total",
      help = "Cumulative number of a liveness, readiness or startup probe for a container by result.",
      labels = { "probe_type", "result", "container", "pod", "namespace" } },
    duration = metrics.histogram{ registry = reg, name = "prober_probe_duration_seconds",
      help = "Duration in seconds for a probe response.",
      labels = { "probe_type", "container", "pod", "namespace" } },
  }
end

----------------------------------------------------------------- workers

local Manager = {}
Manager.__index = Manager

local function worker_key(uid, name, kind)
  return uid .. "\0" .. name .. "\0" .. kind
end

local function find_status(status, name)
  for _, list in ipairs({ status.containerStatuses or {}, status.initContainerStatuses or {} }) do
    for _, cs in ipairs(list) do
      if cs.name == name then
        return cs
      end
    end
  end
end

-- Whether the container has started (3.3 UpdatePodStatus): running, and a
-- Success startup result, or no startup worker.
function Manager:started(uid, name, cs)
  if cs.started ~= nil then
    return cs.started
  end
  if not (cs.state and cs.state.running) then
    return false
  end
  if self.results:get("startup", cs.containerID) == "Success" then
    return true
  end
  return self.workers[worker_key(uid, name, "startup")] == nil
end

local function set_result(w, result, reason)
  w.mgr.results:set(w.kind, w.container_id, result, { reason = reason, pod_uid = w.pod_uid,
    container_name = w.container_name })
end

-- One run of the probe, kubelet's retries for errors included; the mapped
-- result ("Success" | "Failure") and reason, or nil, reason when it errored.
local function run_once(w, pod, cs)
  local mgr = w.mgr
  local ctx = { pod = pod, container = w.container, status = cs, container_id = cs.containerID,
    worker = w, runtime = mgr.runtime }
  local wrap = mgr.policy.wrap_probe
  local result, output, details
  for _ = 1, M.MAX_RETRIES do
    local t0 = mgr.clock.now()
    local ok
    if wrap then
      ok, result, output, details = pcall(wrap, mgr.probe, w.kind, w.spec, ctx)
    else
      ok, result, output, details = pcall(mgr.probe, w.kind, w.spec, ctx)
    end
    if not ok then
      result, output, details = "unknown", tostring(result), { error = tostring(result) }
    elseif wrap and not (RESULTS[result] and (output == nil or type(output) == "string")
      and (details == nil or type(details) == "table")) then
      -- a policy's garbage is an error of that probe run, never a verdict
      local why = string.format("policy wrap_probe returned %s, %s, %s (want a result of success, warning,"
        .. " failure or unknown, an output string, a details table)", type(result) == "string"
        and string.format("%q", result:sub(1, 40)) or type(result), type(output), type(details))
      result, output, details = "unknown", why, { error = why }
    end
    details = details or {}
    output = output or ""
    local m = mgr.metrics
    if m then
      local meta = pod.metadata or {}
      local labels = { probe_type = LABEL[w.kind], container = w.container_name,
        pod = meta.name, namespace = meta.namespace }
      w.metric_labels = w.metric_labels or { probe_type = labels.probe_type, container = labels.container,
        pod = labels.pod, namespace = labels.namespace }
      m.duration:observe(labels, details.duration or (mgr.clock.now() - t0))
      labels.result = (details.error and "unknown") or
        ((result == "success" or result == "warning") and "successful") or
        (result == "failure" and "failed") or "unknown"
      m.total:inc(labels)
    end
    if not details.error or details.skipped then
      break
    end
  end
  w.probes = w.probes + 1
  w.last_output = output
  local what = LABEL[w.kind]
  if details.error then
    return nil, what .. " probe errored: " .. tostring(details.error)
  elseif result == "success" then
    return "Success", ""
  elseif result == "warning" then
    local reason = what .. " probe warning: " .. output
    mgr.log("W", string.format("%s/%s: %s", w.pod_name, w.container_name, reason))
    return "Success", reason
  end
  local reason = what .. " probe failed: " .. output
  mgr.log("W", string.format("%s/%s: %s", w.pod_name, w.container_name, reason))
  return "Failure", reason
end

-- kubelet's doProbe (3.3), in its order; false stops the worker.
local function do_probe(w)
  local mgr = w.mgr
  local pod = mgr.pods[w.pod_uid]
  local status = pod and pod.status
  if not status then
    return true
  end
  if status.phase == "Failed" or status.phase == "Succeeded" then
    return false
  end
  local cs = find_status(status, w.container_name)
  if not cs or (cs.containerID or "") == "" then
    return true
  end
  if w.container_id ~= cs.containerID then
    if w.container_id then
      mgr.results:remove(w.kind, w.container_id)
      w.restarts = w.restarts + 1
    end
    w.container_id = cs.containerID
    set_result(w, M.INITIAL[w.kind], "initial value")
    w.on_hold = false
    w.last_result, w.result_run = nil, 0
  end
  if w.on_hold then
    return true
  end
  local state = cs.state or {}
  if not state.running then
    set_result(w, "Failure", "container is not running")
    return not (state.terminated and pod.spec and pod.spec.restartPolicy == "Never")
  end
  if pod.metadata.deletionTimestamp and (w.kind == "liveness" or w.kind == "startup") then
    set_result(w, "Success", "pod is being deleted")
    return false
  end
  local started_at = tonumber(state.running.startedAt) or 0
  if math.floor(mgr.clock.now() - started_at) < w.spec.initialDelaySeconds then
    return true
  end
  local started = mgr:started(w.pod_uid, w.container_name, cs)
  if w.kind == "startup" then
    if started then
      return true -- idle; kept for a restarted container
    end
  elseif not started then
    return true -- gated by the startup probe
  end
  local result, reason = run_once(w, pod, cs)
  w.last_reason = reason
  if result == nil then
    mgr.log("W", string.format("%s/%s: %s", w.pod_name, w.container_name, reason))
    return true -- discarded: no state change
  end
  if w.last_result == result then
    w.result_run = w.result_run + 1
  else
    w.last_result, w.result_run = result, 1
  end
  if (result == "Failure" and w.result_run < w.spec.failureThreshold) or
      (result == "Success" and w.result_run < w.spec.successThreshold) then
    return true
  end
  set_result(w, result, reason)
  if result == "Failure" and (w.kind == "liveness" or w.kind == "startup") then
    w.on_hold = true -- until a new container ID
    w.result_run = 0
  end
  return true
end

-- on_tick(t, tick) -> the first multiple of tick at or after t (t when tick
-- is 0): when a worker due at t starts its probe.
function M.on_tick(t, tick)
  if not tick or tick <= 0 then
    return t
  end
  -- the slack keeps a t already on a multiple there (10 / 0.02 is not
  -- exactly 500 in binary) and is 2 µs at a 20 ms tick
  local at = math.ceil(t / tick - 1e-4) * tick
  return at < t and t or at -- never before t
end

-- tick_for(rate, tick) -> the tick to use when probes run `rate` times a
-- second in all: `tick`, or shorter so that about TICK_BATCH probes share
-- a tick.
function M.tick_for(rate, tick)
  if rate <= 0 or tick <= 0 then
    return tick
  end
  return math.min(tick, M.TICK_BATCH / rate)
end

local function worker_loop(w)
  local mgr = w.mgr
  local clock = mgr.clock
  local period = w.spec.periodSeconds
  local rate = period > 0 and 1 / period or 0
  mgr.rate = mgr.rate + rate
  -- 3.3 jitter: just after the agent starts, the first probe waits a random
  -- part of the period so all workers do not probe at once.
  if period > clock.now() - mgr.started_at then
    local now = clock.now()
    w.ev:wait(M.on_tick(now + mgr.random() * period, M.tick_for(mgr.rate, mgr.tick)) - now)
  end
  local next_at = clock.now()
  while not w.stopped do
    local ok, keep = pcall(do_probe, w)
    if not ok then
      mgr.log("E", string.format("prober: %s/%s %s worker: %s", w.pod_name, w.container_name, w.kind,
        tostring(keep)))
      keep = true
    end
    if not keep or w.stopped then
      break
    end
    local delay = period
    if mgr.policy.next_delay then
      local okd, d = pcall(mgr.policy.next_delay, w, period)
      if okd and type(d) == "number" and d >= 0 and d < math.huge then
        delay = d
      elseif not okd then
        mgr.log("E", "prober: policy next_delay failed: " .. tostring(d))
      else
        mgr.log("E", string.format("prober: policy next_delay returned %s, not a number of seconds >= 0;"
          .. " using the period (%g s)", type(d) == "number" and tostring(d) or type(d), period))
      end
    end
    -- A ticker: the next run is due one delay after the last due time,
    -- skipping periods already past; a manual trigger (run before its time)
    -- leaves the schedule as it was.
    local now = clock.now()
    if next_at <= now then
      next_at = next_at + delay
      if next_at <= now then
        next_at = now + (delay > 0 and (delay - (now - next_at) % delay) or 0)
      end
    end
    while not w.stopped do
      -- never a negative wait: the event reads it as "no limit", and the
      -- clock can pass next_at between the check above and this call (or a
      -- next_delay of 0 makes next_at = now), which parked the worker for
      -- good (seen with 100 pods in bench/agent)
      local at = M.on_tick(next_at, M.tick_for(mgr.rate, mgr.tick))
      local woken = w.ev:wait(math.max(0, at - clock.now()))
      if woken or clock.now() >= at then
        break -- a manual trigger, a stop, or the time is up
      end
    end
  end
  mgr.rate = mgr.rate - rate
  if w.container_id then
    mgr.results:remove(w.kind, w.container_id)
  end
  if mgr.workers[w.key] == w then
    mgr.workers[w.key] = nil
  end
  -- A removed pod's series go with its worker, as kubelet deletes them when
  -- a probe worker stops: with pods churning they otherwise pile up (about
  -- 15 lines of /metrics per probe; bench/soak saw memory and /metrics grow).
  local m, l = mgr.metrics, w.metric_labels
  if m and l and not mgr.workers[w.key] then
    m.duration:remove(l)
    for _, r in ipairs({ "successful", "failed", "unknown" }) do
      m.total:remove({ probe_type = l.probe_type, result = r, container = l.container, pod = l.pod,
        namespace = l.namespace })
    end
  end
  w.exited = true
end

------------------------------------------------------------------ manager

function M.new(opts)
  opts = opts or {}
  local tick = opts.tick
  if tick ~= nil and not (type(tick) == "number" and tick >= 0 and tick < math.huge) then
    error("kubelua.prober.new: option tick must be a number of seconds >= 0, got " .. tostring(tick), 2)
  end
  local clock = opts.clock or {
    now = core.now,
    event = require("kubelua.probe.core").event,
  }
  local mgr = setmetatable({
    clock = clock,
    probe = opts.probe or M.run_probe,
    random = opts.random or math.random,
    tick = opts.tick or M.TICK,
    rate = 0, -- probes a second the running workers make, by their periods
    spawn = opts.spawn or task.spawn,
    runtime = opts.runtime,
    log = opts.log or core.log,
    metrics = make_metrics(opts.metrics),
    pods = {},
    workers = {},
    policy = {},
  }, Manager)
  mgr.results = M.results(mgr.log)
  mgr.started_at = clock.now()
  if opts.policy then
    mgr:set_policy(opts.policy)
  end
  return mgr
end

function Manager:set_policy(p)
  assert(type(p) == "table", "kubelua.prober: set_policy expects a table of hooks")
  for k, v in pairs(p) do
    if not HOOKS[k] then
      error("kubelua.prober: unknown policy hook '" .. tostring(k) .. "'", 2)
    end
    if type(v) ~= "function" then
      error("kubelua.prober: policy hook '" .. k .. "' must be a function", 2)
    end
  end
  self.policy = p
end

function Manager:subscribe(fn)
  return self.results:subscribe(fn)
end

-- result(kind, container_id) -> "Success" | "Failure" | "Unknown" | nil, reason
function Manager:result(kind, container_id)
  return self.results:get(kind, container_id)
end

-- Start workers for the pod's probes: per container, startup, readiness,
-- liveness (3.3). A worker that exists already is left alone.
function Manager:add_pod(pod)
  assert(type(pod) == "table" and pod.metadata and pod.metadata.uid,
    "kubelua.prober: add_pod expects a pod with metadata.uid")
  local uid = pod.metadata.uid
  self.pods[uid] = pod
  for _, c in ipairs(pod.spec and pod.spec.containers or {}) do
    for _, kind in ipairs(M.KINDS) do
      local spec = c[FIELD[kind]]
      local key = worker_key(uid, c.name, kind)
      if spec and not self.workers[key] then
        local w = { mgr = self, key = key, kind = kind, pod_uid = uid, pod_name = pod.metadata.name or uid,
          container_name = c.name, container = c, spec = M.with_defaults(spec), ev = self.clock.event(),
          restarts = 0, result_run = 0, on_hold = false, probes = 0, stopped = false }
        self.workers[key] = w
        self.spawn(function()
          worker_loop(w)
        end)
      end
    end
  end
end

-- The pod's latest status (and spec/metadata, if a whole pod is given).
function Manager:set_status(uid, status)
  local pod = self.pods[uid]
  if pod then
    pod.status = status
  end
end

function Manager:update_pod(pod)
  if self.pods[pod.metadata.uid] then
    self.pods[pod.metadata.uid] = pod
  end
end

local function stop_worker(w)
  w.stopped = true
  w.ev:wake()
end

-- Run a worker's probe now (kubelet's manual trigger; non-blocking).
function Manager:trigger(uid, name, kind)
  local w = self.workers[worker_key(uid, name, kind)]
  if w then
    w.ev:wake()
  end
end

function Manager:stop_liveness_and_startup(uid)
  for _, w in pairs(self.workers) do
    if w.pod_uid == uid and (w.kind == "liveness" or w.kind == "startup") then
      stop_worker(w)
    end
  end
end

function Manager:remove_pod(uid)
  for _, w in pairs(self.workers) do
    if w.pod_uid == uid then
      stop_worker(w)
    end
  end
  self.pods[uid] = nil
end

-- Stop the workers of pods not in `desired` (a set of UIDs).
function Manager:cleanup_pods(desired)
  for uid in pairs(self.pods) do
    if not desired[uid] then
      self:remove_pod(uid)
    end
  end
end

function Manager:stop()
  for _, w in pairs(self.workers) do
    stop_worker(w)
  end
end

-- How many workers run.
function Manager:count()
  local n = 0
  for _ in pairs(self.workers) do
    n = n + 1
  end
  return n
end

-- Park until every worker has exited (after stop/remove_pod), or `timeout`
-- seconds of real time; true when none is left.
function Manager:join(timeout)
  local deadline = core.monotime() + (timeout or 10)
  while next(self.workers) ~= nil and core.monotime() < deadline do
    core.sleep(0.001)
  end
  return next(self.workers) == nil
end

-- Fill in `started` and `ready` of each container status (3.3
-- UpdatePodStatus); a not-ready container with a readiness worker gets its
-- probe triggered.
function Manager:update_pod_status(uid, status)
  for _, cs in ipairs(status.containerStatuses or {}) do
    local running = cs.state and cs.state.running
    local started
    if not running then
      started = false
    elseif self.results:get("startup", cs.containerID) == "Success" then
      started = true
    else
      started = self.workers[worker_key(uid, cs.name, "startup")] == nil
    end
    cs.started = started
    if started then
      local ready
      if not running then
        ready = false
      elseif self.results:get("readiness", cs.containerID) == "Success" then
        ready = true
      else
        local w = self.workers[worker_key(uid, cs.name, "readiness")]
        ready = w == nil
        if w then
          w.ev:wake()
        end
      end
      cs.ready = ready
    else
      cs.ready = false
    end
  end
  for _, cs in ipairs(status.initContainerStatuses or {}) do
    local term = cs.state and cs.state.terminated
    cs.ready = term ~= nil and tonumber(term.exitCode) == 0
  end
  return status
end

return M
