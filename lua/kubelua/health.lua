-- kubelua.health: runtime health as kubelet keeps it (kubelet-behaviour.md
-- 7.1), with health checks that Lua adds, each with its own threshold.
--
--   local health = require "kubelua.health"
--   local h = health.new{ runtime = rt, pleg = pleg }       -- 5 s polls, 30 s threshold
--   h:add_check("disk", function() return free() > 1e9, "less than 1 GB free" end, { threshold = 60 })
--   h:start()
--   local st = h:state()   -- { ok =, reasons = { ... }, runtime =, network =, checks =, ... }
--   h:stop()
--
-- Options: runtime (a CRI client or a kubelua.testing fake), period (5: the
-- Status poll), threshold (30: no good status for that long means the
-- runtime is down), timeout (of each Status call; default: the client's),
-- pleg (a kubelua.pleg; adds the "PLEG" check), clock (function() ->
-- seconds; default task.monotime), on_ready (called once, at the first good
-- status: kubelet's one-time start of runtime-dependent modules).
--
-- A poll (update) calls Status. On an error nothing changes (the time of the
-- last good status stays, so the runtime is down once it is older than the
-- threshold). NetworkReady missing or false sets the network error;
-- RuntimeReady missing or false sets the runtime error; otherwise the
-- runtime error is cleared and the last good status is now.
--
-- Health checks are cheap Lua functions returning ok, reason (or throwing);
-- they must not call the runtime. A check that fails counts only once it
-- has not succeeded for longer than its threshold (0: at once). The reasons
-- use kubelet's words:
--   container runtime status check may not have completed yet
--   container runtime is down (here followed by the last Status error)
--   NAME is not healthy: REASON
--   container runtime not ready: RuntimeCondition{...}
--   container runtime network not ready: RuntimeCondition{...}
local task = require "kubelua.task"

local M = {}

M.PERIOD = 5 -- seconds between runtime Status polls
M.THRESHOLD = 30 -- maxWaitForContainerRuntime

local H = {}
H.__index = H

function M.new(opts)
  assert(type(opts) == "table" and opts.runtime, "kubelua.health.new: option runtime (a CRI client) is required")
  for _, k in ipairs({ "period", "threshold", "timeout" }) do
    if opts[k] ~= nil and (type(opts[k]) ~= "number" or opts[k] < 0) then
      error("kubelua.health.new: option " .. k .. " must be a non-negative number", 2)
    end
  end
  local self = setmetatable({
    runtime = opts.runtime,
    period = opts.period or M.PERIOD,
    threshold = opts.threshold or M.THRESHOLD,
    timeout = opts.timeout,
    clock = opts.clock or task.monotime,
    on_ready = opts.on_ready,
    checks = {}, -- in the order added
    last_sync = nil, -- time of the last good status
    runtime_error = nil,
    network_error = "network state unknown", -- kubelet starts with ErrNetworkUnknown
    storage_error = nil,
    last_error = nil, -- of the last Status call, if it failed
    conditions = {},
    polls = 0,
  }, H)
  if opts.pleg then
    local pleg = opts.pleg
    self:add_check("PLEG", function()
      return pleg:healthy()
    end)
  end
  return self
end

-- add_check(name, fn, {threshold = seconds}): fn() -> ok, reason. Adding a
-- name again replaces that check.
function H:add_check(name, fn, opts)
  assert(type(name) == "string" and name ~= "", "kubelua.health: add_check: name must be a non-empty string")
  assert(type(fn) == "function", "kubelua.health: add_check: fn must be a function")
  local threshold = opts and opts.threshold or 0
  assert(type(threshold) == "number" and threshold >= 0, "kubelua.health: add_check: option threshold must be >= 0")
  local c = { name = name, fn = fn, threshold = threshold, last_ok = self.clock() }
  for i, old in ipairs(self.checks) do
    if old.name == name then
      self.checks[i] = c
      return
    end
  end
  self.checks[#self.checks + 1] = c
end

function H:remove_check(name)
  for i, c in ipairs(self.checks) do
    if c.name == name then
      table.remove(self.checks, i)
      return true
    end
  end
  return false
end

function H:set_storage_error(err)
  self.storage_error = err
end

-- Go's %v of a *RuntimeCondition, as kubelet's messages print it.
local function describe(c)
  if not c then
    return "<nil>"
  end
  return string.format("RuntimeCondition{Type:%s,Status:%s,Reason:%s,Message:%s,}", c.type, tostring(c.status),
    c.reason or "", c.message or "")
end

-- One poll of the runtime's Status (kubelet's updateRuntimeUp).
-- -> true | nil, err, code (the call failed or the runtime is not ready)
function H:update()
  self.polls = self.polls + 1
  local opts = self.timeout and { timeout = self.timeout } or nil
  local st, err, code = self.runtime:status({}, opts)
  if not st then
    self.last_error = err
    return nil, err, code
  end
  if not st.status then
    self.last_error = "empty status"
    return nil, "UNKNOWN: the runtime returned an empty status", "UNKNOWN"
  end
  self.last_error = nil
  local conds = {}
  for _, c in ipairs(st.status.conditions or {}) do
    conds[c.type] = c
  end
  self.conditions = conds
  local net = conds.NetworkReady
  if not net or not net.status then
    self.network_error = "container runtime network not ready: " .. describe(net)
  else
    self.network_error = nil
  end
  local rt = conds.RuntimeReady
  if not rt or not rt.status then
    self.runtime_error = "container runtime not ready: " .. describe(rt)
    return nil, "UNAVAILABLE: " .. self.runtime_error, "UNAVAILABLE"
  end
  self.runtime_error = nil
  local first = self.last_sync == nil
  self.last_sync = self.clock()
  if first and self.on_ready then
    self.on_ready()
  end
  return true
end

local function traceback(e)
  return debug.traceback(tostring(e), 2)
end

-- Evaluate the checks now: -> list of { name =, ok =, reason =, failing_for = }
function H:check_results()
  local now = self.clock()
  local out = {}
  for _, c in ipairs(self.checks) do
    local ok, good, reason = xpcall(c.fn, traceback)
    if not ok then
      good, reason = false, "check failed: " .. tostring(good)
    end
    local r = { name = c.name, threshold = c.threshold }
    if good then
      c.last_ok = now
      r.ok = true
    else
      r.failing_for = now - c.last_ok
      r.reason = reason ~= nil and tostring(reason) or "unhealthy"
      r.ok = r.failing_for <= c.threshold and c.threshold > 0
      r.pending = r.ok -- failing, but not yet for longer than its threshold
    end
    out[#out + 1] = r
  end
  return out
end

-- kubelet's runtimeErrors(), in its order.
function H:runtime_errors(results)
  local errs = {}
  if not self.last_sync then
    errs[#errs + 1] = "container runtime status check may not have completed yet"
  elseif self.last_sync + self.threshold <= self.clock() then
    local e = "container runtime is down"
    if self.last_error then
      e = e .. ": " .. self.last_error
    end
    errs[#errs + 1] = e
  end
  for _, r in ipairs(results or self:check_results()) do
    if not r.ok then
      errs[#errs + 1] = string.format("%s is not healthy: %s", r.name, r.reason)
    end
  end
  if self.runtime_error then
    errs[#errs + 1] = self.runtime_error
  end
  return errs
end

function H:network_errors()
  return { self.network_error }
end

function H:storage_errors()
  return { self.storage_error }
end

-- Everything in one answer:
-- { ok =, runtime_ok =, network_ok =, reasons = { every reason }, runtime =, network =,
--   storage =, checks = { [name] = result }, conditions =, last_sync =, last_error = }
function H:state()
  local results = self:check_results()
  local runtime, network, storage = self:runtime_errors(results), self:network_errors(), self:storage_errors()
  local reasons = {}
  for _, list in ipairs({ runtime, network, storage }) do
    for _, e in ipairs(list) do
      reasons[#reasons + 1] = e
    end
  end
  local checks = {}
  for _, r in ipairs(results) do
    checks[r.name] = r
  end
  return {
    ok = #reasons == 0,
    runtime_ok = #runtime == 0,
    network_ok = #network == 0,
    reasons = reasons,
    runtime = runtime,
    network = network,
    storage = storage,
    checks = checks,
    conditions = self.conditions,
    last_sync = self.last_sync,
    last_error = self.last_error,
  }
end

-- Poll every period until stop().
function H:start()
  assert(not self.loop, "kubelua.health: already started")
  self.loop = task.every(self.period, function()
    self:update()
  end)
end

function H:stop()
  local loop = self.loop
  self.loop = nil
  return loop and loop:stop()
end

return M
