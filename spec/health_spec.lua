-- Runtime health against the test kit's fake runtime with a set clock, and
-- kubelet's sync results and container references.
local t = require "spec.t"
local S = require "spec.support"
local health = require "kubelua.health"
local sr = require "kubelua.sync_result"
local testing = require "kubelua.testing"

local function ready_status(runtime_ready, network_ready)
  return { status = { conditions = {
    { type = "RuntimeReady", status = runtime_ready, reason = runtime_ready and "" or "Broken", message = runtime_ready and "" or "runc gone" },
    { type = "NetworkReady", status = network_ready, reason = network_ready and "" or "NetworkPluginNotReady",
      message = network_ready and "" or "cni plugin not initialized" },
  } } }
end

t.describe("runtime health (fake runtime, set clock)", function()
  local rt, clock, h
  t.before_each(function()
    rt = testing.runtime({})
    clock = testing.clock(1000)
    h = health.new{ runtime = rt, clock = clock, threshold = 30 }
  end)

  t.it("before any good status: the check may not have completed yet; the network is unknown", function()
    local st = h:state()
    t.eq(st.ok, false)
    t.eq(st.runtime, { "container runtime status check may not have completed yet" })
    t.eq(st.network, { "network state unknown" })
  end)

  t.it("a good status makes the runtime and the network ready", function()
    assert(h:update())
    local st = h:state()
    t.eq(st.ok, true)
    t.eq(st.reasons, {})
    t.eq(st.last_sync, 1000)
  end)

  t.it("no good status for longer than the threshold: the runtime is down, with the last error", function()
    assert(h:update())
    rt:fail("status", "UNAVAILABLE", "connection refused")
    clock:advance(29)
    t.eq(h:update(), nil)
    t.eq(h:state().runtime_ok, true, "29 s: still within the threshold")
    clock:advance(1)
    local st = h:state()
    t.eq(st.runtime_ok, false)
    t.eq(st.runtime, { "container runtime is down: UNAVAILABLE: /runtime.v1.RuntimeService/Status: connection refused" })
    rt:heal("status")
    assert(h:update())
    t.eq(h:state().ok, true, "recovers with the next good status")
  end)

  t.it("conditions: RuntimeReady and NetworkReady false, as kubelet words them", function()
    rt.runtime_status = ready_status(false, false)
    local ok, err, code = h:update()
    t.eq(ok, nil)
    t.eq(code, "UNAVAILABLE")
    t.match(err, "container runtime not ready")
    local st = h:state()
    t.eq(st.network, { "container runtime network not ready: RuntimeCondition{Type:NetworkReady,Status:false,"
      .. "Reason:NetworkPluginNotReady,Message:cni plugin not initialized,}" })
    t.eq(st.runtime, { "container runtime status check may not have completed yet",
      "container runtime not ready: RuntimeCondition{Type:RuntimeReady,Status:false,Reason:Broken,Message:runc gone,}" })
    rt.runtime_status = { status = { conditions = {} } }
    h:update()
    st = h:state()
    t.eq(st.runtime[2], "container runtime not ready: <nil>", "a missing condition")
    t.eq(st.network[1], "container runtime network not ready: <nil>")
  end)

  t.it("named checks, each with its own threshold; PLEG; a throwing check", function()
    assert(h:update())
    local disk_ok, flaky_ok = true, true
    h:add_check("disk", function() return disk_ok, "less than 1 GB free" end)
    h:add_check("flaky", function() return flaky_ok, "no answer" end, { threshold = 10 })
    h:add_check("buggy", function() error("nil index") end)
    local pleg_ok = true
    local h2 = health.new{ runtime = rt, clock = clock, pleg = { healthy = function()
      if pleg_ok then return true end
      return false, "pleg was last seen active 200.0s ago; threshold is 180s"
    end } }
    assert(h2:update())
    t.eq(h2:state().ok, true)
    pleg_ok = false
    t.eq(h2:state().runtime, { "PLEG is not healthy: pleg was last seen active 200.0s ago; threshold is 180s" })

    disk_ok, flaky_ok = false, false
    local st = h:state()
    t.eq(st.runtime[1], "disk is not healthy: less than 1 GB free")
    t.match(st.runtime[2], "^buggy is not healthy: check failed: .*nil index")
    t.eq(#st.runtime, 2, "flaky fails, but not for longer than 10 s yet")
    t.eq(st.checks.flaky.pending, true)
    clock:advance(11)
    assert(h:update())
    st = h:state()
    t.eq(st.runtime[2], "flaky is not healthy: no answer")
    flaky_ok = true
    t.eq(#h:state().runtime, 2, "disk and buggy")
    t.eq(h:remove_check("buggy"), true)
    disk_ok = true
    t.eq(h:state().ok, true)
  end)

  t.it("polls every period until stopped; on_ready runs once", function()
    local ready = 0
    local hh = health.new{ runtime = rt, period = 0.01, on_ready = function() ready = ready + 1 end }
    hh:start()
    t.ok(S.wait_for(function() return hh.polls >= 3 end, 5))
    local loop = hh:stop()
    t.ok(S.wait_for(function() return loop.done end, 5))
    t.eq(ready, 1)
  end)
end)

t.describe("sync results", function()
  t.it("kubelet's action and error names", function()
    t.eq(sr.actions.StartContainer, "StartContainer")
    t.eq(sr.actions.KillPodSandbox, "KillPodSandbox")
    t.eq(sr.errors.CrashLoopBackOff, "CrashLoopBackOff")
    t.eq(sr.errors.RunContainer, "RunContainerError")
    t.eq(sr.errors.KillContainer, "KillContainerError")
    t.eq(sr.errors.CreatePodSandbox, "CreatePodSandboxError")
    t.eq(sr.errors.ContainerNotFound, "no matching container")
    t.fails(function() sr.new("Start", "x") end, "unknown action Start")
  end)

  t.it("a pod result aggregates like kubelet's", function()
    local p = sr.pod()
    t.eq(p:error(), nil)
    p:add(sr.new(sr.actions.StartContainer, "app")):fail(sr.errors.CrashLoopBackOff,
      "back-off 20s restarting failed container=app pod=web_default(uid)")
    t.eq(p:error(), 'failed to "StartContainer" for "app" with CrashLoopBackOff: '
      .. '"back-off 20s restarting failed container=app pod=web_default(uid)"')
    p:add(sr.new(sr.actions.KillContainer, "side")) -- succeeded: not listed
    local q = sr.pod()
    q:add(sr.new(sr.actions.CreatePodSandbox, "web_default(uid)")):fail(sr.errors.CreatePodSandbox, 'say "hi"')
    p:add_pod(q)
    p:fail("context deadline exceeded")
    t.eq(p:error(), '[failed to SyncPod: context deadline exceeded, failed to "StartContainer" for "app" with '
      .. 'CrashLoopBackOff: "back-off 20s restarting failed container=app pod=web_default(uid)", '
      .. 'failed to "CreatePodSandbox" for "web_default(uid)" with CreatePodSandboxError: "say \\"hi\\""]')
  end)

  t.it("the earliest backoff expiry among nested errors", function()
    local p = sr.pod()
    p:add(sr.new(sr.actions.StartContainer, "a")):fail(sr.backoff_error("back-off 10s", 110))
    p:add(sr.new(sr.actions.StartContainer, "b")):fail(sr.backoff_error("back-off 40s", 140))
    local outer = sr.pod()
    outer:fail(sr.backoff_error("back-off 5s", 105))
    t.eq(sr.min_backoff_expiration(p), 110)
    t.eq(sr.min_backoff_expiration({ p, outer }), 105)
    t.eq(sr.min_backoff_expiration("plain"), nil)
    t.eq(tostring(sr.backoff_error("back-off 10s", 1)), "back-off 10s")
  end)

  t.it("container references as kubelet forms them", function()
    local pod = { metadata = { name = "web", namespace = "prod", uid = "u-1", resourceVersion = "42" },
      spec = { containers = { { name = "app" }, { name = "" } }, initContainers = { { name = "setup" } },
        ephemeralContainers = { { name = "debug" } } } }
    t.eq(sr.container_ref(pod, "app"), { kind = "Pod", apiVersion = "v1", name = "web", namespace = "prod",
      uid = "u-1", resourceVersion = "42", fieldPath = "spec.containers{app}" })
    t.eq(sr.container_ref(pod, { name = "setup" }).fieldPath, "spec.initContainers{setup}")
    t.eq(sr.container_ref(pod, "debug").fieldPath, "spec.ephemeralContainers{debug}")
    t.eq(sr.container_ref(pod, "").fieldPath, "spec.containers[1]")
    t.eq(sr.container_ref(pod, "POD").fieldPath, "implicitly required container POD")
  end)
end)
