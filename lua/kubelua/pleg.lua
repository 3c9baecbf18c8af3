-- kubelua.pleg: pod lifecycle events (kubelet's PLEG, behaviour section 5).
--
--   local pleg = require("kubelua.pleg").new{ client = rt, cache = cache }
--   pleg:subscribe(function(ev) print(ev.type, ev.pod, ev.id) end)
--   pleg:start()              -- relists every second in its own task
--   pleg:healthy()            -- true | false, reason
--   pleg:stop()
--
-- Generic mode (default): every `period` the runtime's containers and
-- sandboxes are listed as raw bytes, reduced to a compact snapshot in C
-- (kubelua.pleg.core) and diffed against the previous one; only changes
-- reach this file. Each change becomes events by kubelet's rules:
--   -> running: ContainerStarted      -> exited: ContainerDied
--   -> unknown: ContainerChanged       -> gone: ContainerRemoved, preceded
--                                         by ContainerDied unless it had exited
-- (sandboxes count as containers). Pods with events, or left from a failed
-- inspection, are inspected (cache:inspect) and their status stored in the
-- cache; if that fails the pod's events are held back and the pod is
-- inspected again on the next relist. After the pods, the cache's global
-- time moves to the relist's timestamp (taken before listing).
--
-- Evented mode (`mode = "evented"`): consumes GetContainerEvents; every
-- stream failure forces a relist and retries; after 5 failures, or at once
-- on UNIMPLEMENTED (containerd 1.6), it falls back to generic relisting.
--
-- Events are { type =, pod = <uid>, id = <container or sandbox ID>,
-- kind = "container" | "sandbox" }; subscribers run in the relist task (a
-- subscriber that needs to wait should spawn a task) and their errors are
-- logged, never fatal.
local core = require "kubelua.core"
local snap = require "kubelua.pleg.core"
local grpc = require "kubelua.grpc"
local task = require "kubelua.task"

local M = {}
M.RELIST_PERIOD = 1 -- seconds between relists
M.RELIST_THRESHOLD = 180 -- 3 min
M.EVENTED_MAX_RETRIES = 5 -- event stream failures before falling back to relisting
M.LOG_REPEAT = 60 -- seconds before the same relist error is logged again

local methods = grpc.methods()
local LIST_CONTAINERS = methods["/runtime.v1.RuntimeService/ListContainers"]
local LIST_SANDBOXES = methods["/runtime.v1.RuntimeService/ListPodSandbox"]

-- kubelet's container states as the PLEG sees them
local PLEG_STATE = {
  CONTAINER_CREATED = "unknown",
  CONTAINER_RUNNING = "running",
  CONTAINER_EXITED = "exited",
  CONTAINER_UNKNOWN = "unknown",
  SANDBOX_READY = "running",
  SANDBOX_NOTREADY = "exited",
}

-- Events for one change (old/new are CRI state names, nil when absent).
function M.events_for(change)
  local old = change.old and (PLEG_STATE[change.old] or "unknown") or "non-existent"
  local new = change.new and (PLEG_STATE[change.new] or "unknown") or "non-existent"
  if old == new then
    return {}
  end
  local function ev(t)
    return { type = t, pod = change.pod, id = change.id, kind = change.kind }
  end
  if new == "running" then
    return { ev("ContainerStarted") }
  elseif new == "exited" then
    return { ev("ContainerDied") }
  elseif new == "unknown" then
    return { ev("ContainerChanged") }
  elseif old == "exited" then
    return { ev("ContainerRemoved") }
  end
  return { ev("ContainerDied"), ev("ContainerRemoved") }
end

local Pleg = {}
Pleg.__index = Pleg

function M.new(opts)
  assert(type(opts) == "table" and opts.client, "kubelua.pleg.new: opts.client (a CRI client) is required")
  return setmetatable({
    client = opts.client,
    cache = opts.cache,
    mode = opts.mode or "generic",
    period = opts.period or M.RELIST_PERIOD,
    threshold = opts.threshold or M.RELIST_THRESHOLD,
    timeout = opts.timeout or opts.client.timeout,
    on_relist = opts.on_relist, -- fn(seconds, ok) after every relist (metrics)
    clock = opts.clock or task.now,
    subscribers = {},
    snap = nil,
    held = {}, -- uid -> events held back by a failed inspection
    last_relist = nil,
    last_error = nil,
    stream_failures = 0,
    running = false,
    stats = { relists = 0, failures = 0, events = 0 },
  }, Pleg)
end

-- subscribe(fn) -> unsubscribe()
function Pleg:subscribe(fn)
  assert(type(fn) == "function", "kubelua.pleg: subscribe(fn) needs a function")
  self.subscribers[fn] = true
  return function()
    self.subscribers[fn] = nil
  end
end

function Pleg:emit(ev)
  self.stats.events = self.stats.events + 1
  for fn in pairs(self.subscribers) do
    local ok, err = xpcall(fn, debug.traceback, ev)
    if not ok then
      core.log("E", "pleg subscriber failed: " .. tostring(err))
    end
  end
end

-- One relist; returns true or nil, err, code (and then changes nothing).
local function relist(self)
  local t = self.clock()
  local raw = task.gather({
    function() return self.client:unary_raw(LIST_CONTAINERS, {}, self.timeout) end,
    function() return self.client:unary_raw(LIST_SANDBOXES, {}, self.timeout) end,
  })
  for _, r in ipairs(raw) do
    if not r[1] or r[2] == nil then
      local err = r[1] and r[3] or ("INTERNAL: " .. tostring(r[2]))
      self.stats.failures = self.stats.failures + 1
      self.last_error = err
      return nil, err, r[1] and r[4] or "INTERNAL"
    end
  end
  local now, err, code = snap.snapshot(raw[1][2], raw[2][2])
  if not now then
    self.stats.failures = self.stats.failures + 1
    self.last_error = err
    return nil, err, code
  end
  self.last_relist = t
  self.stats.relists = self.stats.relists + 1

  -- events per pod, in change order
  local by_pod, order = {}, {}
  for uid, evs in pairs(self.held) do
    by_pod[uid], order[#order + 1] = evs, uid
  end
  self.held = {}
  for _, change in ipairs(snap.diff(self.snap, now)) do
    local evs = M.events_for(change)
    if #evs > 0 then
      if not by_pod[change.pod] then
        by_pod[change.pod], order[#order + 1] = {}, change.pod
      end
      for _, e in ipairs(evs) do
        table.insert(by_pod[change.pod], e)
      end
    end
  end
  self.snap = now
  table.sort(order)
  local present = now:pods()
  for _, uid in ipairs(order) do
    local ok = true
    if self.cache then
      if present[uid] then
        local status, ierr = self.cache:inspect(uid)
        if status then
          self.cache:set_status(uid, status, t)
        else
          ok = false
          self.held[uid] = by_pod[uid] -- inspect again next relist, events then
          core.log("W", "pleg: inspecting pod " .. uid .. " failed, will retry: " .. tostring(ierr))
        end
      else
        self.cache:delete_status(uid)
      end
    end
    if ok then
      for _, e in ipairs(by_pod[uid]) do
        self:emit(e)
      end
    end
  end
  if self.cache then
    self.cache:update_time(t)
  end
  return true
end

function Pleg:relist()
  local t0 = task.monotime()
  local ok, err, code = relist(self)
  if self.on_relist then
    pcall(self.on_relist, task.monotime() - t0, ok == true)
  end
  return ok, err, code
end

-- true | false, reason (kubelet's wording)
function Pleg:healthy()
  if self.mode == "evented" and self.evented_active then
    return true
  end
  if not self.last_relist then
    return false, "pleg has yet to be successful"
  end
  local since = self.clock() - self.last_relist
  if since > self.threshold then
    return false, string.format("pleg was last seen active %.1fs ago; threshold is %.0fs", since, self.threshold)
  end
  return true
end

-- Evented mode: events from the runtime's stream, as long as it holds.
local EVENT_TYPES = {
  CONTAINER_STOPPED_EVENT = { "ContainerDied" },
  CONTAINER_STARTED_EVENT = { "ContainerStarted" },
  CONTAINER_DELETED_EVENT = { "ContainerDied", "ContainerRemoved" },
  CONTAINER_CREATED_EVENT = {},
}

function Pleg:consume_events()
  local stream, err, code = self.client:get_container_events{}
  if not stream then
    return nil, err, code
  end
  self.stream = stream
  for ev in stream do
    self.evented_active = true
    local ps = ev.pod_sandbox_status
    if ps and ps.metadata then
      local uid = ps.metadata.uid
      if self.cache then
        self.cache:set_status(uid, { uid = uid, sandbox = ps, containers = ev.containers_statuses }, tonumber(ev.created_at) / 1e9)
      end
      local kind = ev.container_id == ps.id and "sandbox" or "container"
      for _, t in ipairs(EVENT_TYPES[ev.container_event_type] or {}) do
        self:emit({ type = t, pod = uid, id = ev.container_id, kind = kind })
      end
      if ev.container_event_type == "CONTAINER_DELETED_EVENT" and kind == "sandbox" and self.cache then
        self.cache:delete_status(uid)
      end
    end
    if not self.running then
      break
    end
  end
  self.stream = nil
  self.evented_active = false
  return nil, stream.err or "UNAVAILABLE: the event stream ended", stream.code or "UNAVAILABLE"
end

function Pleg:start()
  if self.running then
    return
  end
  self.running = true
  self.wake = task.waker()
  task.spawn(function()
    if self.mode == "evented" then
      while self.running and self.stream_failures < M.EVENTED_MAX_RETRIES do
        local _, err, code = self:consume_events()
        if not self.running then
          break
        end
        self.stream_failures = self.stream_failures + 1
        core.log("W", "pleg: container event stream failed (" .. self.stream_failures .. "): " .. tostring(err))
        self:relist()
        if code == "UNIMPLEMENTED" then
          break
        end
        self.wake:wait(self.period)
      end
      if self.running then
        core.log("I", "pleg: falling back to relisting every " .. self.period .. "s")
        self.mode = "generic"
      end
    end
    -- Failures are logged as kubelet's logreduction does: the same error
    -- (the client's "retrying in" hint aside) at most once a minute, and one
    -- line when relisting works again (kubernetes#101056 asks for it).
    local failing, logged_at, failures = nil, 0, 0
    while self.running do
      local ok, err = self:relist()
      if not ok then
        failures = failures + 1
        local key = tostring(err):gsub(" %(retrying in at most %d+ ms%)$", "")
        local now = task.monotime()
        if key ~= failing or now - logged_at >= M.LOG_REPEAT then
          core.log("E", "pleg: relist failed: " .. tostring(err))
          failing, logged_at = key, now
        end
      else
        if failing then
          core.log("I", string.format("pleg: relisting works again after %d failed relists", failures))
        end
        failing, failures = nil, 0
      end
      self.wake:wait(self.period)
    end
    self.done = true
  end)
end

function Pleg:stop()
  self.running = false
  if self.stream then
    self.stream:cancel()
  end
  if self.wake then
    self.wake:wake()
  end
end

return M
