-- kubelua.cache: the node's pods as the runtime sees them (kubelet's runtime
-- cache, behaviour section 5.1), and the pod status cache that pod workers wait
-- on (GetNewerThan).
--
--   local cache = require("kubelua.cache").new{ client = rt, period = 2 }
--   local pods, err = cache:get_pods{ all = true }   -- served from cache while fresh
--   cache:force_update_if_older(t)                   -- refresh iff taken before t
--   local status = cache:get_newer_than(uid, t)      -- parks until newer than t
--
-- A pod is { uid=, name=, namespace=, sandboxes = {...}, containers = {...} }:
-- the runtime's sandboxes and containers (CRI tables), grouped by the
-- io.kubernetes.pod.uid label (else the sandbox's metadata uid, else the
-- sandbox ID). `all = false` keeps running containers and ready sandboxes,
-- and only pods that still have one.
--
-- A refresh takes its timestamp before listing, so the cache never claims
-- to be newer than its data; a failed refresh returns the error, never
-- stale data passed off as fresh; callers arriving during a refresh share
-- its CRI round trip.
local task = require "kubelua.task"

local M = {}
M.DEFAULT_PERIOD = 2 -- seconds between cache refreshes when no period is given

local UID_LABEL = "io.kubernetes.pod.uid"
local NAME_LABEL = "io.kubernetes.pod.name"
local NS_LABEL = "io.kubernetes.pod.namespace"

local Cache = {}
Cache.__index = Cache

function M.new(opts)
  assert(type(opts) == "table" and opts.client, "kubelua.cache.new: opts.client (a CRI client) is required")
  return setmetatable({
    client = opts.client,
    period = opts.period or M.DEFAULT_PERIOD,
    clock = opts.clock or task.now,
    pods = nil, -- the last listing (all pods)
    time = nil, -- when it was taken
    refreshing = nil, -- wakers of callers sharing the refresh in flight
    status = {}, -- uid -> { status = ..., time = ... }
    global_time = nil, -- every pod's status is at least this new (set by the PLEG)
    waiters = {}, -- uid -> { {t=, waker=}, ... }
  }, Cache)
end

-- Group sandboxes and containers into pods.
function M.group(sandboxes, containers)
  local by_uid, order, sandbox_uid = {}, {}, {}
  local function pod_for(uid, name, ns)
    local p = by_uid[uid]
    if not p then
      p = { uid = uid, name = name or "", namespace = ns or "", sandboxes = {}, containers = {} }
      by_uid[uid] = p
      order[#order + 1] = p
    end
    if p.name == "" and name then
      p.name, p.namespace = name, ns or p.namespace
    end
    return p
  end
  for _, s in ipairs(sandboxes) do
    local md = s.metadata or {}
    local uid = s.labels[UID_LABEL] or (md.uid ~= "" and md.uid) or s.id
    sandbox_uid[s.id] = uid
    local p = pod_for(uid, md.name or s.labels[NAME_LABEL], md.namespace or s.labels[NS_LABEL])
    p.sandboxes[#p.sandboxes + 1] = s
  end
  for _, c in ipairs(containers) do
    local uid = c.labels[UID_LABEL] or sandbox_uid[c.pod_sandbox_id] or c.pod_sandbox_id
    local p = pod_for(uid, c.labels[NAME_LABEL], c.labels[NS_LABEL])
    p.containers[#p.containers + 1] = c
  end
  return order
end

local function running_only(pods)
  local out = {}
  for _, p in ipairs(pods) do
    local q = { uid = p.uid, name = p.name, namespace = p.namespace, sandboxes = {}, containers = {} }
    for _, s in ipairs(p.sandboxes) do
      if s.state == "SANDBOX_READY" then
        q.sandboxes[#q.sandboxes + 1] = s
      end
    end
    for _, c in ipairs(p.containers) do
      if c.state == "CONTAINER_RUNNING" then
        q.containers[#q.containers + 1] = c
      end
    end
    if #q.sandboxes > 0 or #q.containers > 0 then
      out[#out + 1] = q
    end
  end
  return out
end

-- One CRI round trip, shared by every caller that arrives meanwhile.
function Cache:refresh()
  if self.refreshing then
    local w = task.waker()
    table.insert(self.refreshing, w)
    w:wait()
    return self.last_ok, self.last_err, self.last_code
  end
  self.refreshing = {}
  local t = self.clock() -- before listing
  local res = task.gather({
    function() return self.client:list_pod_sandbox{} end,
    function() return self.client:list_containers{} end,
  })
  local ok, err, code = true, nil, nil
  for _, r in ipairs(res) do
    if not r[1] then
      ok, err, code = false, "INTERNAL: " .. tostring(r[2]), "INTERNAL"
    elseif r[2] == nil and ok then
      ok, err, code = false, r[3], r[4]
    end
  end
  if ok then
    self.pods = M.group(res[1][2].items, res[2][2].containers)
    self.time = t
  end
  self.last_ok, self.last_err, self.last_code = ok, err, code
  local waiting = self.refreshing
  self.refreshing = nil
  for _, w in ipairs(waiting) do
    w:wake()
  end
  return ok, err, code
end

-- get_pods{ all = bool } -> pods, time | nil, err, code
function Cache:get_pods(opts)
  if not self.time or self.clock() - self.time > self.period then
    local ok, err, code = self:refresh()
    if not ok then
      return nil, err, code
    end
  end
  local pods = self.pods
  if not (opts and opts.all) then
    pods = running_only(pods)
  end
  return pods, self.time
end

-- Refresh iff the cached listing was taken before t. Returns true or nil, err, code.
function Cache:force_update_if_older(t)
  if self.time and self.time >= t then
    return true
  end
  return self:refresh()
end

-- ------------------------------------------------------------ pod statuses

-- A pod's status straight from the runtime: its sandboxes and containers,
-- found by the pod UID label (what kubelet's GetPodStatus reads).
function Cache:inspect(uid)
  local res = task.gather({
    function() return self.client:list_pod_sandbox{ filter = { label_selector = { [UID_LABEL] = uid } } } end,
    function() return self.client:list_containers{ filter = { label_selector = { [UID_LABEL] = uid } } } end,
  })
  for _, r in ipairs(res) do
    if not r[1] then
      return nil, "INTERNAL: " .. tostring(r[2]), "INTERNAL"
    elseif r[2] == nil then
      return nil, r[3], r[4]
    end
  end
  return { uid = uid, sandboxes = res[1][2].items, containers = res[2][2].containers }
end

local function notify(self, uid)
  local list = self.waiters[uid]
  if not list then
    return
  end
  local rec = self.status[uid]
  local keep = {}
  for _, w in ipairs(list) do
    local newest = math.max(rec and rec.time or -math.huge, self.global_time or -math.huge)
    if newest > w.t then
      w.waker:wake()
    else
      keep[#keep + 1] = w
    end
  end
  self.waiters[uid] = #keep > 0 and keep or nil
end

-- Record a pod's status as of `t` (nil status: the pod is gone).
function Cache:set_status(uid, status, t)
  self.status[uid] = { status = status, time = t }
  notify(self, uid)
end

function Cache:delete_status(uid)
  self.status[uid] = nil
end

-- Every pod's status is at least as new as t (a relist completed).
function Cache:update_time(t)
  self.global_time = t
  for uid in pairs(self.waiters) do
    notify(self, uid)
  end
end

-- get_newer_than(uid, t [, timeout]) -> status (nil when the pod is gone)
-- once the cache holds a status for uid newer than t; parks until then.
-- With a timeout: nil, "DEADLINE_EXCEEDED: ...", "DEADLINE_EXCEEDED".
function Cache:get_newer_than(uid, t, timeout)
  local function fresh()
    local rec = self.status[uid]
    local newest = math.max(rec and rec.time or -math.huge, self.global_time or -math.huge)
    return newest > t, rec
  end
  local ok, rec = fresh()
  if not ok then
    local w = task.waker()
    self.waiters[uid] = self.waiters[uid] or {}
    table.insert(self.waiters[uid], { t = t, waker = w })
    if not w:wait(timeout) then
      local list = self.waiters[uid] or {}
      for i, x in ipairs(list) do
        if x.waker == w then
          table.remove(list, i)
          break
        end
      end
      if #list == 0 then
        self.waiters[uid] = nil
      end
      return nil, "DEADLINE_EXCEEDED: no status of pod " .. uid .. " newer than " .. t, "DEADLINE_EXCEEDED"
    end
    ok, rec = fresh()
  end
  return rec and rec.status or nil
end

return M
