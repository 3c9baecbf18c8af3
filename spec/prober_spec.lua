-- kubelua.prober: kubelet's probe policy, driven by a fake clock
-- (kubelua.prober.fakeclock) and a scripted probe function, plus one run on
-- the real clock with real TCP probes.
local t = require "spec.t"
local prober = require "kubelua.prober"
local fakeclock = require "kubelua.prober.fakeclock"
local metrics = require "kubelua.metrics"
local core = require "kubelua.core"

local T0 = 1000

local function pod_with(probes, opts)
  opts = opts or {}
  local c = { name = "app", ports = { { name = "http", containerPort = 8080 } } }
  for k, v in pairs(probes) do
    c[k] = v
  end
  return {
    metadata = { uid = "uid-1", name = "web", namespace = "default" },
    spec = { containers = { c }, restartPolicy = opts.restartPolicy or "Always" },
    status = opts.status,
  }
end

local function running(id, started_at, extra)
  local cs = { name = "app", containerID = id, state = { running = { startedAt = started_at } } }
  for k, v in pairs(extra or {}) do
    cs[k] = v
  end
  return { phase = "Running", podIP = "127.0.0.1", containerStatuses = { cs } }
end

local function count(calls, kind)
  local n = 0
  for _, c in ipairs(calls) do
    if c.kind == kind then
      n = n + 1
    end
  end
  return n
end

-- A probe function answering from a script per kind ("success", "failure",
-- ...; the last answer repeats); records (kind, time) of each call.
local function scripted(clock, script)
  local calls = {}
  local fn = function(kind, spec, ctx)
    calls[#calls + 1] = { kind = kind, at = clock.now(), id = ctx.container_id }
    local list = script[kind] or { "success" }
    local r = list[math.min(count(calls, kind), #list)]
    if r == "error" then
      return "unknown", "boom", { error = "boom", duration = 0.01 }
    end
    return r, r == "failure" and "it failed" or "", { duration = 0.01 }
  end
  return fn, calls
end

-- A TCP probe spec (on port 1) with `fields` added.
local function tcp(fields)
  local spec = { tcpSocket = { port = 1 } }
  for k, v in pairs(fields or {}) do
    spec[k] = v
  end
  return spec
end

local live = {} -- managers of the running test

-- A manager on a fake clock, started long ago unless `fresh` (so no jitter).
local function setup(script, opts)
  opts = opts or {}
  local clock = fakeclock.new(T0)
  local probe, calls = scripted(clock, script)
  local updates = {}
  local logs = {}
  local mgr = prober.new{ clock = clock, probe = opts.probe or probe, metrics = opts.metrics or false,
    random = opts.random or function() return 0 end, policy = opts.policy, tick = opts.tick,
    log = function(l, m) logs[#logs + 1] = l .. " " .. m end }
  if not opts.fresh then
    mgr.started_at = T0 - 3600
  end
  mgr:subscribe(function(u) updates[#updates + 1] = u end)
  local env = { clock = clock, mgr = mgr, calls = calls, updates = updates, logs = logs }
  live[env] = true
  return env
end

-- a test that failed half-way still stops its workers
local function stop_leftovers()
  for env in pairs(live) do
    live[env] = nil
    env.mgr:stop()
    env.clock:settle()
    env.mgr:join(1)
  end
end

local function finish(env)
  live[env] = nil
  env.mgr:stop()
  env.clock:settle()
  t.ok(env.mgr:join(2), "every worker exited")
  t.eq(env.clock:waiting(), 0)
end

-- Adds a pod with `probes` to env's manager, its container running (as c1)
-- since `started_at` (default T0); returns the pod.
local function add_running(env, probes, started_at)
  local pod = pod_with(probes, { status = running("c1", started_at or T0) })
  env.mgr:add_pod(pod)
  return pod
end

-- t.describe; after each test the managers it left running are stopped.
local function describe(name, body)
  t.describe(name, function()
    t.after_each(stop_leftovers)
    body()
  end)
end

local function results_of(updates, kind)
  local out = {}
  for _, u in ipairs(updates) do
    if u.kind == kind then
      out[#out + 1] = u.result
    end
  end
  return out
end

describe("defaults and initial values", function()
  t.it("kubelet's defaults fill a probe spec", function()
    local s = prober.with_defaults(tcp())
    t.eq(s.timeoutSeconds, 1)
    t.eq(s.periodSeconds, 10)
    t.eq(s.successThreshold, 1)
    t.eq(s.failureThreshold, 3)
    t.eq(s.initialDelaySeconds, 0)
    t.eq(prober.with_defaults({ periodSeconds = 0 }).periodSeconds, 10, "0 means unset")
  end)
  t.it("readiness starts Failure, liveness Success, startup Unknown", function()
    local env = setup({ startup = { "failure" } })
    add_running(env, { livenessProbe = tcp(), readinessProbe = tcp(), startupProbe = tcp{ failureThreshold = 100 } })
    env.clock:advance(0)
    t.eq(env.mgr:result("readiness", "c1"), "Failure")
    t.eq(env.mgr:result("liveness", "c1"), "Success")
    t.eq(env.mgr:result("startup", "c1"), "Unknown")
    t.eq(#env.updates, 3, "each published once")
    finish(env)
  end)
end)

describe("thresholds", function()
  t.it("liveness fails after failureThreshold failures in a row, then holds", function()
    local env = setup({ liveness = { "failure", "success", "failure", "failure", "failure" } })
    add_running(env, { livenessProbe = tcp{ periodSeconds = 10 } })
    env.clock:advance(0)
    t.eq(count(env.calls, "liveness"), 1)
    env.clock:advance(40) -- probes at +10 (success), +20, +30, +40 (failures)
    t.eq(count(env.calls, "liveness"), 5)
    t.eq(results_of(env.updates, "liveness"), { "Success", "Failure" })
    t.eq(select(2, env.mgr:result("liveness", "c1")), "Liveness probe failed: it failed")
    env.clock:advance(100)
    t.eq(count(env.calls, "liveness"), 5, "on hold: no probes until a new container")
    finish(env)
  end)
  t.it("readiness needs successThreshold successes and is never on hold", function()
    local env = setup({ readiness = { "success", "success", "failure", "failure", "failure", "failure", "success" } })
    add_running(env, { readinessProbe = tcp{ periodSeconds = 1, successThreshold = 2, failureThreshold = 3 } })
    env.clock:advance(0)
    t.eq(env.mgr:result("readiness", "c1"), "Failure")
    env.clock:advance(1)
    t.eq(env.mgr:result("readiness", "c1"), "Success", "after 2 successes")
    env.clock:advance(3) -- failures 1, 2, 3
    t.eq(env.mgr:result("readiness", "c1"), "Failure")
    env.clock:advance(2) -- a 4th failure (no change), then one success (< 2)
    t.eq(env.mgr:result("readiness", "c1"), "Failure")
    t.eq(count(env.calls, "readiness"), 7, "still probing: readiness is never on hold")
    t.eq(results_of(env.updates, "readiness"), { "Failure", "Success", "Failure" }, "changes only")
    finish(env)
  end)
  t.it("a probe that errored is retried (3 attempts) and then discarded", function()
    local env = setup({ liveness = { "error" } })
    add_running(env, { livenessProbe = tcp{ failureThreshold = 1 } })
    env.clock:advance(20)
    t.eq(count(env.calls, "liveness"), 9, "3 ticks x 3 attempts")
    t.eq(env.mgr:result("liveness", "c1"), "Success", "no state change")
    local w = next(env.mgr.workers) and select(2, next(env.mgr.workers))
    t.eq(w.last_reason, "Liveness probe errored: boom")
    finish(env)
  end)
  t.it("unknown without an error counts as Failure; warning as Success", function()
    local env = setup({ readiness = { "warning", "unknown" } })
    add_running(env, { readinessProbe = tcp{ failureThreshold = 1 } })
    env.clock:advance(0)
    t.eq(env.mgr:result("readiness", "c1"), "Success")
    t.match(select(2, env.mgr:result("readiness", "c1")), "^Readiness probe warning: ")
    env.clock:advance(10)
    t.eq(env.mgr:result("readiness", "c1"), "Failure")
    finish(env)
  end)
end)

describe("timing", function()
  t.it("initialDelaySeconds holds probes back from the container's start", function()
    local env = setup({})
    add_running(env, { livenessProbe = tcp{ periodSeconds = 2, initialDelaySeconds = 5 } })
    env.clock:advance(4.9)
    t.eq(count(env.calls, "liveness"), 0)
    env.clock:advance(1.1) -- tick at +6
    t.eq(count(env.calls, "liveness"), 1)
    t.eq(env.calls[1].at, T0 + 6)
    finish(env)
  end)
  t.it("the first probe after agent start waits random() * period (bounds)", function()
    for _, r in ipairs({ 0, 0.5, 0.999 }) do
      local env = setup({}, { fresh = true, random = function() return r end, tick = 0 })
      add_running(env, { livenessProbe = tcp{ periodSeconds = 10 } }, T0 - 100)
      env.clock:advance(math.max(0, 10 * r - 0.001))
      t.eq(count(env.calls, "liveness"), r == 0 and 1 or 0, "not before the jitter, r=" .. r)
      env.clock:advance(r == 0 and 0 or 0.001)
      t.eq(count(env.calls, "liveness"), 1, "at the jitter, r=" .. r)
      t.ok(env.calls[1].at - T0 < 10, "within one period")
      env.clock:advance(10)
      t.eq(count(env.calls, "liveness"), 2, "then every period")
      finish(env)
    end
  end)
  t.it("probes start on the tick: a multiple of it on the clock at or after the due time", function()
    t.eq(prober.on_tick(10, 0.02), 10, "a due time on the grid stays (10 / 0.02 is not 500 in binary)")
    t.eq(prober.on_tick(10.5, 0), 10.5, "tick 0: off")
    t.eq(prober.tick_for(100, 0.02), 0.02, "100 probes/s: the whole tick")
    t.eq(prober.tick_for(0, 0.02), 0.02)
    t.eq(prober.tick_for(prober.TICK_BATCH * 1000, 0.02), 0.001, "shorter as probes get more frequent")
    t.eq(prober.tick_for(5000, 0), 0, "off stays off")
    local wall = 1795000000.013 -- a wall clock's magnitude
    local at = prober.on_tick(wall, 0.02)
    t.ok(at >= wall and at - wall <= 0.02, "at or after, within one tick: " .. (at - wall))
    t.ok(math.abs(at / 0.02 - math.floor(at / 0.02 + 0.5)) < 1e-3, "on the grid")
    -- the default tick (20 ms): jitter 9.99 s starts at 10.00 s, then every period on the grid
    t.eq(prober.TICK, 0.02)
    local env = setup({}, { fresh = true, random = function() return 0.999 end })
    add_running(env, { livenessProbe = tcp{ periodSeconds = 10 } }, T0 - 100)
    env.clock:advance(9.995)
    t.eq(count(env.calls, "liveness"), 0, "not at the jitter itself (9.99 s)")
    env.clock:advance(0.005)
    t.eq(count(env.calls, "liveness"), 1, "at the next tick (10.00 s)")
    env.clock:advance(10)
    t.eq(count(env.calls, "liveness"), 2)
    t.ok(math.abs(env.calls[2].at - (T0 + 20)) < 1e-9, "then every period: " .. env.calls[2].at)
    t.ok(math.abs(env.mgr.rate - 0.1) < 1e-12, "the running workers' rate: one probe per 10 s")
    env.mgr:remove_pod("uid-1")
    env.clock:settle()
    env.mgr:join(1)
    t.ok(math.abs(env.mgr.rate) < 1e-12, "gone with the worker: " .. env.mgr.rate)
    finish(env)
  end)
  t.it("no jitter once the agent has run longer than the period", function()
    local env = setup({}, { fresh = true, random = function() return 0.9 end })
    env.clock:advance(11)
    add_running(env, { livenessProbe = tcp{ periodSeconds = 10 } })
    env.clock:advance(0)
    t.eq(count(env.calls, "liveness"), 1)
    finish(env)
  end)
  t.it("a manual trigger probes at once without moving the schedule", function()
    local env = setup({})
    add_running(env, { readinessProbe = tcp{ periodSeconds = 10 } })
    env.clock:advance(3)
    env.mgr:trigger("uid-1", "app", "readiness")
    env.clock:advance(0)
    t.eq(count(env.calls, "readiness"), 2)
    env.clock:advance(7)
    t.eq(count(env.calls, "readiness"), 3)
    t.eq(env.calls[3].at, T0 + 10, "the period stays on its ticks")
    finish(env)
  end)
end)

describe("startup gating", function()
  t.it("liveness and readiness wait for the startup probe; startup then idles", function()
    local env = setup({ startup = { "failure", "failure", "success" } })
    add_running(env, { startupProbe = tcp{ periodSeconds = 1, failureThreshold = 10 },
      livenessProbe = tcp{ periodSeconds = 1 },
      readinessProbe = tcp{ periodSeconds = 1 } })
    env.clock:advance(1.5)
    t.eq(count(env.calls, "liveness") + count(env.calls, "readiness"), 0, "gated")
    env.clock:advance(1) -- startup succeeds at +2
    t.eq(env.mgr:result("startup", "c1"), "Success")
    env.clock:advance(3)
    t.eq(count(env.calls, "startup"), 3, "startup idles once started")
    t.ok(count(env.calls, "liveness") >= 3, "liveness runs")
    t.ok(count(env.calls, "readiness") >= 3, "readiness runs")
    finish(env)
  end)
  t.it("a startup failure holds until a new container", function()
    local env = setup({ startup = { "failure" } })
    add_running(env, { startupProbe = tcp{ periodSeconds = 1, failureThreshold = 2 } })
    env.clock:advance(5)
    t.eq(env.mgr:result("startup", "c1"), "Failure")
    t.eq(count(env.calls, "startup"), 2)
    finish(env)
  end)
end)

describe("container lifecycle", function()
  t.it("a restarted container (new ID) resets the worker", function()
    local env = setup({ liveness = { "failure" } })
    local pod = add_running(env, { livenessProbe = tcp{ periodSeconds = 1, failureThreshold = 2 } })
    env.clock:advance(3)
    t.eq(env.mgr:result("liveness", "c1"), "Failure")
    local w = select(2, next(env.mgr.workers))
    t.eq(w.on_hold, true)
    env.mgr:set_status("uid-1", running("c2", T0 + 3))
    env.clock:advance(1)
    t.eq(env.mgr:result("liveness", "c1"), nil, "the old result is removed")
    t.eq(env.mgr:result("liveness", "c2"), "Success", "initial value for the new ID")
    t.eq(w.on_hold, false)
    t.eq(w.restarts, 1)
    t.eq(w.result_run, 1, "counting starts again")
    env.clock:advance(1)
    t.eq(env.mgr:result("liveness", "c2"), "Failure")
    t.eq(env.calls[#env.calls].id, "c2")
    finish(env)
  end)
  t.it("a container that is not running is Failure; Never + terminated stops the worker", function()
    local env = setup({})
    local status = running("c1", T0)
    env.mgr:add_pod(pod_with({ readinessProbe = tcp{ periodSeconds = 1 } },
      { status = status, restartPolicy = "Never" }))
    env.clock:advance(1)
    t.eq(env.mgr:result("readiness", "c1"), "Success")
    status.containerStatuses[1].state = { terminated = { exitCode = 1 } }
    env.clock:advance(1)
    t.eq(env.mgr:count(), 0, "the worker stopped")
    t.eq(env.mgr:result("readiness", "c1"), nil, "and removed its result")
    t.eq(results_of(env.updates, "readiness"), { "Failure", "Success", "Failure" })
    finish(env)
  end)
  t.it("a pod that Succeeded or Failed stops its workers", function()
    local env = setup({})
    local status = running("c1", T0)
    env.mgr:add_pod(pod_with({ livenessProbe = tcp{ periodSeconds = 1 } }, { status = status }))
    env.clock:advance(1)
    t.eq(env.mgr:count(), 1)
    status.phase = "Succeeded"
    env.clock:advance(1)
    t.eq(env.mgr:count(), 0)
    finish(env)
  end)
  t.it("a pod being deleted: liveness Success and stop", function()
    local env = setup({ liveness = { "failure" } })
    local pod = add_running(env, { livenessProbe = tcp{ periodSeconds = 1, failureThreshold = 1 } })
    env.clock:advance(0)
    t.eq(env.mgr:result("liveness", "c1"), "Failure")
    env.mgr:set_status("uid-1", running("c2", T0))
    pod.metadata.deletionTimestamp = "2026-01-01T00:00:00Z"
    env.clock:advance(1)
    t.eq(env.mgr:count(), 0)
    finish(env)
  end)
  t.it("no status or no container ID yet: nothing is probed", function()
    local env = setup({})
    local pod = pod_with({ livenessProbe = tcp{ periodSeconds = 1 } })
    env.mgr:add_pod(pod)
    env.clock:advance(2)
    env.mgr:set_status("uid-1", running("", T0))
    env.clock:advance(2)
    t.eq(#env.calls, 0)
    finish(env)
  end)
  t.it("remove_pod and stop_liveness_and_startup stop the right workers", function()
    local env = setup({})
    add_running(env, { livenessProbe = tcp(), readinessProbe = tcp(), startupProbe = tcp() })
    env.clock:advance(0)
    t.eq(env.mgr:count(), 3)
    env.mgr:stop_liveness_and_startup("uid-1")
    env.clock:settle()
    t.eq(env.mgr:count(), 1)
    t.ok(env.mgr.workers["uid-1\0app\0readiness"], "readiness still runs")
    env.mgr:cleanup_pods({})
    env.clock:settle()
    t.eq(env.mgr:count(), 0)
    finish(env)
  end)
end)

describe("pod status", function()
  t.it("started and ready as kubelet computes them; a not-ready container's probe is triggered", function()
    local env = setup({ readiness = { "failure", "success" } })
    add_running(env, { readinessProbe = tcp{ failureThreshold = 1 } })
    env.clock:advance(0)
    local st = env.mgr:update_pod_status("uid-1", running("c1", T0))
    t.eq(st.containerStatuses[1].started, true, "no startup worker")
    t.eq(st.containerStatuses[1].ready, false)
    env.clock:advance(0) -- the trigger runs the probe now, not in 10 s
    t.eq(count(env.calls, "readiness"), 2)
    st = env.mgr:update_pod_status("uid-1", running("c1", T0))
    t.eq(st.containerStatuses[1].ready, true)
    local init = env.mgr:update_pod_status("uid-1", { initContainerStatuses = {
      { name = "i", state = { terminated = { exitCode = 0 } } } } })
    t.eq(init.initContainerStatuses[1].ready, true)
    finish(env)
  end)
end)

describe("swappable policy", function()
  t.it("wrap_probe adds a body check", function()
    local env = setup({}, { probe = function() return "success", "starting", { duration = 0 } end,
      policy = { wrap_probe = function(nxt, kind, spec, ctx)
        local r, out, d = nxt(kind, spec, ctx)
        if r == "success" and not out:find("ready") then
          return "failure", "body lacks 'ready': " .. out, d
        end
        return r, out, d
      end } })
    add_running(env, { readinessProbe = tcp{ failureThreshold = 1 } })
    env.clock:advance(0)
    local r, reason = env.mgr:result("readiness", "c1")
    t.eq(r, "Failure")
    t.eq(reason, "Readiness probe failed: body lacks 'ready': starting")
    finish(env)
  end)
  t.it("next_delay backs off a crash-looping container", function()
    local env = setup({}, { policy = { next_delay = function(w, period)
      return period * 2 ^ math.min(w.restarts, 5)
    end } })
    local pod = add_running(env, { livenessProbe = tcp{ periodSeconds = 1 } })
    local gaps = {}
    for i = 1, 4 do
      local id = "c" .. i
      env.mgr:set_status("uid-1", running(id, env.clock.now()))
      env.clock:advance(40)
      local at = {}
      for _, c in ipairs(env.calls) do
        if c.id == id then
          at[#at + 1] = c.at
        end
      end
      gaps[i] = at[3] - at[2]
    end
    t.eq(gaps, { 1, 2, 4, 8 }, "each restart doubles the period")
    finish(env)
  end)
  t.it("a tick that is not a number of seconds >= 0 is refused", function()
    for _, bad in ipairs({ "20ms", -0.02, 0 / 0, math.huge }) do
      t.fails(function() prober.new{ metrics = false, tick = bad } end,
        "option tick must be a number of seconds >= 0, got " .. tostring(bad):gsub("%p", "%%%0"))
    end
    local mgr = prober.new{ metrics = false, tick = 0 }
    t.eq(mgr.tick, 0, "0 turns it off")
  end)
  t.it("unknown hooks are refused", function()
    local env = setup({})
    t.fails(function() env.mgr:set_policy({ wrap = function() end }) end, "unknown policy hook 'wrap'")
    finish(env)
  end)
  t.it("a probe function that throws is an error result, the worker survives", function()
    local env = setup({}, { probe = function() error("oops") end })
    add_running(env, { livenessProbe = tcp() })
    env.clock:advance(10)
    t.eq(env.mgr:count(), 1)
    t.eq(env.mgr:result("liveness", "c1"), "Success")
    t.match(select(2, next(env.mgr.workers)).last_reason, "oops")
    finish(env)
  end)
end)

describe("ports, commands, metrics", function()
  t.it("named ports resolve through container.ports", function()
    local c = { ports = { { name = "http", containerPort = 8080 } } }
    t.eq(prober.resolve_port("http", c), 8080)
    t.eq(prober.resolve_port(81, c), 81)
    t.eq(prober.resolve_port("82", c), 82)
    t.eq(select(2, prober.resolve_port("nope", c)), "invalid port number: nope")
    t.eq(select(2, prober.resolve_port(70000, c)), "invalid port number: 70000")
  end)
  t.it("exec commands expand $(VAR) from the static env only", function()
    local env = { { name = "A", value = "x" }, { name = "B", valueFrom = { fieldRef = {} } } }
    t.eq(prober.expand("$(A)/$(B)/$$(A)/$(C)", env), "x/$(B)/$(A)/$(C)")
  end)
  t.it("probe runs are counted and timed with kubelet's metric names", function()
    local reg = metrics.registry()
    local env = setup({ liveness = { "success", "failure" } }, { metrics = reg })
    add_running(env, { livenessProbe = tcp() })
    env.clock:advance(10)
    local total = reg:get("prober_probe_total")
    local l = { probe_type = "Liveness", container = "app", pod = "web", namespace = "default" }
    l.result = "successful"
    t.eq(total:get(l), 1)
    l.result = "failed"
    t.eq(total:get(l), 1)
    local text = metrics.render(reg)
    t.match(text, 'prober_probe_total{probe_type="Liveness",result="failed",container="app",pod="web",namespace="default"} 1')
    t.match(text, 'prober_probe_duration_seconds_count{probe_type="Liveness",container="app",pod="web",namespace="default"} 2')
    finish(env)
  end)
  t.it("a removed pod's probe series leave the registry with its workers", function()
    local reg = metrics.registry()
    local env = setup({ liveness = { "success", "failure" } }, { metrics = reg })
    local pod = add_running(env, { livenessProbe = tcp() })
    env.clock:advance(10)
    t.match(metrics.render(reg), 'prober_probe_total{probe_type="Liveness",result="successful"')
    env.mgr:remove_pod(pod.metadata.uid)
    env.clock:advance(1)
    t.eq(env.mgr:count(), 0)
    local text = metrics.render(reg)
    t.eq(text:find('pod="web"', 1, true), nil, "no series of the removed pod:\n" .. text)
    finish(env)
  end)
end)

describe("real clock", function()
  t.it("TCP liveness on a closed port fails after the threshold; a named port works", function()
    local updates = {}
    local mgr = prober.new{ metrics = false, log = function() end }
    mgr:subscribe(function(u) updates[#updates + 1] = u end)
    local pod = pod_with({ livenessProbe = { tcpSocket = { port = "http" }, periodSeconds = 0.05,
      failureThreshold = 2 } }, { status = running("c1", core.now()) })
    pod.spec.containers[1].ports[1].containerPort = 1 -- nothing listens on port 1
    mgr:add_pod(pod)
    local t0 = core.monotime()
    while #updates < 2 and core.monotime() - t0 < 3 do
      core.sleep(0.01)
    end
    t.eq(results_of(updates, "liveness"), { "Success", "Failure" })
    t.match(updates[2].reason, "^Liveness probe failed: dial tcp 127%.0%.0%.1:1: connect: connection refused$")
    mgr:stop()
    t.ok(mgr:join(2))
  end)
  t.it("a next_delay of 0 keeps probing (a due time already past never parks the worker)", function()
    local runs = 0
    local mgr = prober.new{ metrics = false, log = function() end,
      probe = function()
        runs = runs + 1
        return "success", "", {}
      end,
      policy = { next_delay = function() return 0 end } }
    mgr:add_pod(pod_with({ livenessProbe = tcp{ periodSeconds = 0.05 } },
      { status = running("c1", core.now()) }))
    local t0 = core.monotime()
    while runs < 5 and core.monotime() - t0 < 3 do
      core.sleep(0.01)
    end
    t.ok(runs >= 5, "the worker ran " .. runs .. " probes")
    mgr:stop()
    t.ok(mgr:join(2))
  end)
end)
