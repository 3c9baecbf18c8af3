-- Runtime health against a real containerd of this spec's own (not the
-- shared fixture): killed, the runtime is reported down with the reason
-- once no good status came for longer than the threshold; restarted, it
-- recovers. A failing Lua check appears among the reasons.
local t = require "spec.t"
local S = require "spec.support"
local cri = require "kubelua.cri"
local task = require "kubelua.task"
local health = require "kubelua.health"

local SCRIPT = S.ROOT .. "/tests/support/containerd.sh"
local dir = S.tmpdir("health")
local ctd = dir .. "/ctd"

local function has(list, pattern)
  for _, s in ipairs(list) do
    if s:find(pattern) then
      return s
    end
  end
end

t.describe("runtime health against a private containerd", function()
  local rt, h
  local disk_full = false

  t.it("starts its containerd; a good status makes the runtime ready (the network is not: no CNI here)", function()
    -- (one retry: containerd.sh's image check can fail spuriously, see the report)
    local out, ok = S.sh("bash " .. SCRIPT .. " start " .. ctd)
    if not ok then
      out, ok = S.sh("bash " .. SCRIPT .. " start " .. ctd)
    end
    t.ok(ok, out)
    rt = assert(cri.connect("unix://" .. ctd .. "/containerd.sock", { timeout = 2 }))
    h = health.new{ runtime = rt, period = 0.1, threshold = 1 }
    h:add_check("disk", function()
      return not disk_full, "image filesystem full"
    end)
    h:start()
    t.allow_parked(1) -- the poll loop runs until the last test stops it
    t.ok(S.wait_for(function() return h:state().runtime_ok end, 10), "runtime ready")
    local st = h:state()
    t.eq(st.runtime, {})
    t.match(st.network[1], "^container runtime network not ready: RuntimeCondition{Type:NetworkReady,Status:false,"
      .. "Reason:NetworkPluginNotReady,Message:Network plugin returns error: cni plugin not initialized,}$")
    t.eq(st.ok, false, "network errors count in the whole answer")
  end)

  t.it("a failing Lua check appears among the reasons", function()
    assert(h, "no health object: the first test failed")
    disk_full = true
    t.eq(h:state().runtime, { "disk is not healthy: image filesystem full" })
    disk_full = false
    t.eq(h:state().runtime, {})
  end)

  t.it("containerd killed: down only after the threshold, with the last error", function()
    assert(h, "no health object: the first test failed")
    local killed_at = task.monotime()
    local out, ok = S.sh("bash " .. SCRIPT .. " kill " .. ctd)
    t.ok(ok, out)
    local waited = S.wait_for(function() return not h:state().runtime_ok end, 10, 0.02)
    t.ok(waited, "reported down")
    local down_after = task.monotime() - killed_at
    t.ok(down_after >= 0.8, string.format("not before the 1 s threshold (%.2f s after the kill)", down_after))
    local st = h:state()
    local reason = has(st.runtime, "^container runtime is down")
    t.ok(reason, table.concat(st.runtime, "; "))
    t.match(reason, "^container runtime is down: UNAVAILABLE: /runtime.v1.RuntimeService/Status: ")
    t.ok(h:state().reasons[1] == reason, "first among all reasons")
  end)

  t.it("containerd back: the runtime recovers with the next good status", function()
    assert(h, "no health object: the first test failed")
    local out, ok = S.sh("bash " .. SCRIPT .. " start " .. ctd)
    if not ok then
      out, ok = S.sh("bash " .. SCRIPT .. " start " .. ctd)
    end
    t.ok(ok, out)
    t.ok(S.wait_for(function() return h:state().runtime_ok end, 15), "recovered")
    t.eq(h:state().last_error, nil)
  end)

  t.it("stops and cleans up", function()
    local loop = h and h:stop()
    if loop then
      t.allow_parked(-1)
      t.ok(S.wait_for(function() return loop.done end, 5))
    end
    if rt then
      rt:close()
    end
    local out, ok = S.sh("bash " .. SCRIPT .. " clean " .. ctd)
    S.rm(dir)
    t.ok(ok, out)
    t.ok(not S.exists(dir))
  end)
end)
