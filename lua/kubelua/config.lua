-- kubelua.config: merging pod sources (kubelet's PodConfig and podStorage,
-- behaviour section 4.2-4.3), as a policy a user can read and replace.
--
--   local config = require "kubelua.config"
--   local pc = config.new{ on_update = function(u) ... end }  -- u = {op=, source=, pods=}
--   pc:add_source("file", function(emit) ... emit{ op = "SET", pods = {...} } ... end)
--   pc:merge("http", { op = "SET", pods = pods })   -- or push updates yourself
--   pc:all_ready()                                  -- every source sent its first SET
--
-- Operations: SET (the source's whole list), ADD / UPDATE / DELETE (pods
-- added or changed), REMOVE (pods gone). Per source, pods are stored by UID.
-- A pod already known is compared semantically (spec, labels, deletion
-- fields and annotations other than the local kubernetes.io/config.source,
-- .seen and .mirror): a real change is an UPDATE, or a DELETE when a
-- deletion timestamp appeared (graceful delete); a change in status alone
-- is a RECONCILE; nothing at all is nothing.
--
-- Notification modes:
--   incremental (kubelet's): after each merge REMOVE, ADD, UPDATE, DELETE,
--     then an empty ADD if this was the source's first SET and nothing was
--     added, updated or deleted (the source is ready), then RECONCILE;
--     empty lists are not sent.
--   snapshot: a SET of every pod of every source on any change.
--   snapshot_and_updates: a SET on adds, removes or a first SET; UPDATE or
--     DELETE otherwise.
--
-- Duplicate full names (name_namespace):
--   * within one update, the first pod wins; the others are dropped with a
--     FailedValidation event (kubelet's rule);
--   * across sources (kubelet leaves this open), the source that has the name
--     keeps it: a pod with a name another source already holds is not
--     stored, and a FailedValidation event names both sources. Sources
--     resend their full list (SET) on every poll or change, so the pod gets
--     in on its source's next SET after the other source drops the name.
local task = require "kubelua.task"

local M = {}

-- Annotations kubelet's pod config sets on every pod it hands on: the source
-- (file, http, api), when it was first seen, the mirror pod marker, the spec hash.
M.SOURCE_ANNOTATION = "kubernetes.io/config.source"
M.SEEN_ANNOTATION = "kubernetes.io/config.seen"
M.MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
M.HASH_ANNOTATION = "kubernetes.io/config.hash"

local LOCAL = { [M.SOURCE_ANNOTATION] = true, [M.SEEN_ANNOTATION] = true, [M.MIRROR_ANNOTATION] = true }

-- ---------------------------------------------------------------- helpers

-- deep_equal(a, b) -> true when two plain values have equal contents (tables by key).
local function deep_equal(a, b)
  if a == b then
    return true
  end
  if type(a) ~= "table" or type(b) ~= "table" then
    return false
  end
  for k, v in pairs(a) do
    if not deep_equal(v, b[k]) then
      return false
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false
    end
  end
  return true
end
M.deep_equal = deep_equal

-- copy(v) -> a deep copy of a plain value (tables copied by key, no cycles).
local function copy(v)
  if type(v) ~= "table" then
    return v
  end
  local t = {}
  for k, x in pairs(v) do
    t[k] = copy(x)
  end
  return t
end
M.copy = copy

local function meta(pod)
  pod.metadata = pod.metadata or {}
  return pod.metadata
end

-- full_name(pod) -> "name_namespace", kubelet's key for a pod across sources.
function M.full_name(pod)
  local md = pod.metadata or {}
  return (md.name or "") .. "_" .. (md.namespace or "")
end

local function uid_of(pod)
  return (pod.metadata or {}).uid
end

local function non_local(annotations)
  local out = {}
  for k, v in pairs(annotations or {}) do
    if not LOCAL[k] then
      out[k] = v
    end
  end
  return out
end

-- Whether two pods differ in anything but status and local annotations.
function M.semantically_different(a, b)
  local ma, mb = a.metadata or {}, b.metadata or {}
  return not (deep_equal(a.spec, b.spec) and deep_equal(ma.labels or {}, mb.labels or {})
    and ma.deletionTimestamp == mb.deletionTimestamp
    and ma.deletionGracePeriodSeconds == mb.deletionGracePeriodSeconds
    and deep_equal(non_local(ma.annotations), non_local(mb.annotations)))
end

-- ----------------------------------------------------------------- storage

local PodConfig = {}
PodConfig.__index = PodConfig

function M.new(opts)
  opts = opts or {}
  local mode = opts.mode or "incremental"
  assert(mode == "incremental" or mode == "snapshot" or mode == "snapshot_and_updates",
    "kubelua.config.new: mode must be incremental, snapshot or snapshot_and_updates")
  return setmetatable({
    mode = mode,
    clock = opts.clock or function()
      return os.date("!%Y-%m-%dT%H:%M:%SZ")
    end,
    on_update = opts.on_update or function() end,
    on_event = opts.on_event or function() end,
    sources = {}, -- registered names, in order
    registered = {},
    pods = {}, -- source -> uid -> pod
    incoming = {}, -- source -> uid -> the table the source last handed in
    seen_set = {}, -- source -> true once it sent a SET
  }, PodConfig)
end

-- Register a source by name (idempotent); its readiness now counts.
function PodConfig:register(source)
  if not self.registered[source] then
    self.registered[source] = true
    self.sources[#self.sources + 1] = source
    self.pods[source] = {}
    self.incoming[source] = {}
  end
end

-- Run a source: fn(emit) in its own task, emit{op=, pods=} per update.
function PodConfig:add_source(source, fn)
  self:register(source)
  task.spawn(function()
    fn(function(update)
      return self:merge(source, update)
    end)
  end)
end

-- True once every registered source has sent a SET (kubelet's SeenAllSources).
function PodConfig:all_ready()
  for _, s in ipairs(self.sources) do
    if not self.seen_set[s] then
      return false
    end
  end
  return #self.sources > 0
end

-- True once the pod's own source is ready, or all are.
function PodConfig:source_ready(source)
  return self.seen_set[source] == true or self:all_ready()
end

function PodConfig:event(kind, reason, pod, message)
  self.on_event({ type = kind, reason = reason, pod = pod and M.full_name(pod), message = message })
end

-- Which other source, if any, holds this full name.
function PodConfig:name_owner(source, name, uid)
  for _, s in ipairs(self.sources) do
    if s ~= source then
      for u, p in pairs(self.pods[s]) do
        if M.full_name(p) == name and u ~= uid then
          return s
        end
      end
    end
  end
end

-- Drop later pods with a full name already in this update or held by
-- another source.
function PodConfig:filter(source, pods)
  local names, out = {}, {}
  for _, pod in ipairs(pods or {}) do
    local name = M.full_name(pod)
    local owner = self:name_owner(source, name, uid_of(pod))
    if names[name] then
      self:event("Warning", "FailedValidation", pod, string.format(
        "Error validating pod %s from %s due to duplicate pod name %q, ignoring", name, source, name))
    elseif owner then
      self:event("Warning", "FailedValidation", pod, string.format(
        "pod %s from %s has the name of a pod from %s, ignoring", name, source, owner))
    elseif not uid_of(pod) then
      self:event("Warning", "FailedValidation", pod, string.format("pod %s from %s has no UID, ignoring", name, source))
    else
      names[name] = true
      out[#out + 1] = pod
    end
  end
  return out
end

-- Store `new` over `existing`: returns "UPDATE" | "DELETE" | "RECONCILE" | nil.
local function check_and_update(existing, new)
  local me, mn = meta(existing), meta(new)
  if not M.semantically_different(existing, new) then
    if not deep_equal(existing.status, new.status) then
      existing.status = copy(new.status)
      return "RECONCILE"
    end
    return nil
  end
  local annotations = copy(mn.annotations) or {}
  for k, v in pairs(me.annotations or {}) do
    if LOCAL[k] then
      annotations[k] = v -- keep config.seen, source, mirror
    end
  end
  existing.spec = copy(new.spec)
  me.labels = copy(mn.labels)
  me.deletionTimestamp = mn.deletionTimestamp
  me.deletionGracePeriodSeconds = mn.deletionGracePeriodSeconds
  me.annotations = annotations
  existing.status = copy(new.status)
  return mn.deletionTimestamp and "DELETE" or "UPDATE"
end

-- merge(source, {op=, pods=}): apply one update; notifies on_update.
function PodConfig:merge(source, update)
  assert(type(update) == "table" and type(update.op) == "string",
    "kubelua.config: an update is {op = \"SET\"|\"ADD\"|\"UPDATE\"|\"DELETE\"|\"REMOVE\", pods = {...}}")
  self:register(source)
  local store = self.pods[source]
  local out = { ADD = {}, UPDATE = {}, DELETE = {}, REMOVE = {}, RECONCILE = {} }
  local first_set = false
  local op = update.op

  local seen_in = self.incoming[source]
  local function upsert(pods, target)
    for _, incoming in ipairs(self:filter(source, pods)) do
      local uid = uid_of(incoming)
      -- A source that hands in the very same table as before (a file that
      -- did not change) has nothing new: skip the deep comparison. Sources
      -- must therefore not mutate a table after handing it in.
      if store[uid] and seen_in[uid] == incoming then
        target[uid] = store[uid]
        goto continue
      end
      seen_in[uid] = incoming
      local pod = copy(incoming)
      local md = meta(pod)
      md.annotations = md.annotations or {}
      md.annotations[M.SOURCE_ANNOTATION] = source
      local existing = store[md.uid]
      if existing then
        local what = check_and_update(existing, pod)
        if what then
          table.insert(out[what], existing)
        end
        target[md.uid] = existing
      else
        md.annotations[M.SEEN_ANNOTATION] = md.annotations[M.SEEN_ANNOTATION] or self.clock()
        table.insert(out.ADD, pod)
        target[md.uid] = pod
      end
      ::continue::
    end
  end

  if op == "ADD" or op == "UPDATE" or op == "DELETE" then
    upsert(update.pods, store)
  elseif op == "REMOVE" then
    for _, pod in ipairs(update.pods or {}) do
      local uid = uid_of(pod)
      if uid and store[uid] then
        table.insert(out.REMOVE, store[uid])
        store[uid] = nil
        seen_in[uid] = nil
      end
    end
  elseif op == "SET" then
    first_set = not self.seen_set[source]
    self.seen_set[source] = true
    local fresh = {}
    upsert(update.pods, fresh)
    local gone = {}
    for uid, pod in pairs(store) do
      if not fresh[uid] then
        gone[#gone + 1] = pod
      end
    end
    table.sort(gone, function(a, b) return uid_of(a) < uid_of(b) end)
    for _, pod in ipairs(gone) do
      table.insert(out.REMOVE, pod)
      seen_in[uid_of(pod)] = nil
    end
    self.pods[source] = fresh
  else
    self:event("Warning", "UnknownOperation", nil, "operation " .. tostring(op) .. " from " .. source .. " ignored")
    return
  end
  self:notify(source, out, first_set)
end

function PodConfig:all_pods()
  local all = {}
  for _, s in ipairs(self.sources) do
    local uids = {}
    for uid in pairs(self.pods[s]) do
      uids[#uids + 1] = uid
    end
    table.sort(uids)
    for _, uid in ipairs(uids) do
      all[#all + 1] = self.pods[s][uid]
    end
  end
  return all
end

function PodConfig:notify(source, out, first_set)
  local function send(op, pods, src)
    self.on_update({ op = op, source = src or source, pods = pods })
  end
  local changed = #out.ADD + #out.UPDATE + #out.DELETE + #out.REMOVE
  if self.mode == "incremental" then
    for _, op in ipairs({ "REMOVE", "ADD", "UPDATE", "DELETE" }) do
      if #out[op] > 0 then
        send(op, out[op])
      end
    end
    if first_set and #out.ADD + #out.UPDATE + #out.DELETE == 0 then
      send("ADD", {}) -- the source is ready
    end
    if #out.RECONCILE > 0 then
      send("RECONCILE", out.RECONCILE)
    end
  elseif self.mode == "snapshot" then
    if changed + #out.RECONCILE > 0 or first_set then
      send("SET", self:all_pods(), "*")
    end
  else -- snapshot_and_updates
    if #out.ADD + #out.REMOVE > 0 or first_set then
      send("SET", self:all_pods(), "*")
    else
      if #out.UPDATE > 0 then
        send("UPDATE", out.UPDATE)
      end
      if #out.DELETE > 0 then
        send("DELETE", out.DELETE)
      end
    end
  end
end

-- A SET of every pod, source "*" (kubelet's Sync).
function PodConfig:sync()
  self.on_update({ op = "SET", source = "*", pods = self:all_pods() })
end

return M
