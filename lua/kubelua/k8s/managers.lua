-- kubelua.k8s.managers: the ConfigMaps and Secrets the node's pods use, as
-- kubelet's configmap and secret managers keep them (pkg/kubelet/configmap,
-- pkg/kubelet/secret over pkg/kubelet/util/manager), over kubelua.k8s.
--
--   local managers = require "kubelua.k8s.managers"
--   local m = managers.new(api, { strategy = "Watch" })    -- or "Cache", "Get"
--   m:register_pod(pod)                 -- when a pod is added or updated
--   local cm, err, code = m:get_configmap("default", "settings")
--   local sec, err, code = m:get_secret("default", "db-password")
--   m:unregister_pod(pod)               -- when it is gone
--   m:stop()                            -- at shutdown: ends every watch
--
-- The strategy is kubelet's configMapAndSecretChangeDetectionStrategy:
--   "Get"    every get asks the API server; register/unregister do nothing.
--   "Cache"  objects referenced by registered pods are cached for a TTL:
--            `ttl` seconds (60, kubelet's default), or what get_ttl()
--            returns (kubelet reads the node's node.alpha.kubernetes.io/ttl
--            annotation: managers.node_ttl(node) does that). Registering a
--            pod invalidates its objects, so the next get fetches them. A
--            refresh of an object fetched before reads from the API
--            server's cache (resourceVersion "0"); a fetch answering with an
--            older version than the one held is ignored; "not found" is
--            cached like an object; when a fetch fails otherwise, the last
--            good object is served, and with none the error is returned.
--   "Watch"  (kubelet's default) one watch per referenced object
--            (fieldSelector metadata.name=NAME in its namespace), started
--            when a pod first references it and stopped when no registered
--            pod does. A get waits up to `sync_timeout` (1 s) for the
--            watch's first list, then answers from its store. An immutable
--            object (immutable: true) is not watched any more once seen. A
--            watch nobody asked about for `max_idle` seconds (300: 5 times
--            kubelet's 1 min sync period) is stopped, and started again by
--            the next get (checked every `recycle_period`, 60 s).
-- A get for an object no registered pod references (Cache, Watch) fails
-- with NOT_REGISTERED. Which objects a pod references: managers.configmap_names
-- and managers.secret_names (volumes, projected volumes, env and envFrom of
-- every container, image pull secrets, the secretRefs of volume plugins).
--
-- Errors are nil, "CODE: <kind> \"ns\"/\"name\": ...", CODE: NOT_REGISTERED,
-- NOT_FOUND, TIMEOUT (Watch: not synced in time), or the client's codes.
-- Messages name objects only: secret data is never logged or quoted (the
-- watches on secrets withhold event lines too).
local core = require "kubelua.core"
local k8s = require "kubelua.k8s"
local options = require "kubelua.opts"
local task = require "kubelua.task"
local sorted_keys = require("kubelua.pretty").sorted_keys

local M = {}

-- Options configmaps() and secrets() fill in: kubelet's manager strategy and periods.
M.defaults = {
  strategy = "Watch",
  ttl = 60,
  sync_timeout = 1,
  max_idle = 300,
  recycle_period = 60,
}

M.TTL_ANNOTATION = "node.alpha.kubernetes.io/ttl" -- the node annotation kubelet's TTL-based cache reads

-- node_ttl(node) -> seconds from the node's TTL annotation, or nil
function M.node_ttl(node)
  local a = type(node) == "table" and type(node.metadata) == "table" and node.metadata.annotations
  local v = type(a) == "table" and a[M.TTL_ANNOTATION] or nil
  local n = type(v) == "string" and v:match("^%d+$") and tonumber(v) or nil
  return n
end

-- ------------------------------------------------------------ references

local function containers(pod)
  local spec = type(pod.spec) == "table" and pod.spec or {}
  local out = {}
  for _, field in ipairs { "initContainers", "containers", "ephemeralContainers" } do
    for _, c in ipairs(type(spec[field]) == "table" and spec[field] or {}) do
      if type(c) == "table" then
        out[#out + 1] = c
      end
    end
  end
  return out
end

local function add(set, name)
  if type(name) == "string" and name ~= "" then
    set[name] = true
  end
end

local function field(t, ...)
  for i = 1, select("#", ...) do
    if type(t) ~= "table" then
      return nil
    end
    t = t[select(i, ...)]
  end
  return t
end

-- Add to `set` the names of objects of `kind` ("configMap" or "secret")
-- the pod references in the places both kinds share: its containers' env
-- (valueFrom.<kind>KeyRef.name) and envFrom (<kind>Ref.name), and its
-- projected volumes (sources[].<kind>.name).
local function add_shared_refs(set, pod, kind)
  for _, c in ipairs(containers(pod)) do
    for _, e in ipairs(type(c.env) == "table" and c.env or {}) do
      add(set, field(e, "valueFrom", kind .. "KeyRef", "name"))
    end
    for _, e in ipairs(type(c.envFrom) == "table" and c.envFrom or {}) do
      add(set, field(e, kind .. "Ref", "name"))
    end
  end
  for _, v in ipairs(field(pod, "spec", "volumes") or {}) do
    for _, src in ipairs(field(v, "projected", "sources") or {}) do
      add(set, field(src, kind, "name"))
    end
  end
end

-- configmap_names(pod) -> sorted names of the ConfigMaps the pod references
function M.configmap_names(pod)
  local set = {}
  add_shared_refs(set, pod, "configMap")
  for _, v in ipairs(field(pod, "spec", "volumes") or {}) do
    add(set, field(v, "configMap", "name"))
  end
  return sorted_keys(set)
end

-- secret_names(pod) -> sorted names of the Secrets the pod references
function M.secret_names(pod)
  local set = {}
  for _, s in ipairs(field(pod, "spec", "imagePullSecrets") or {}) do
    add(set, field(s, "name"))
  end
  add_shared_refs(set, pod, "secret")
  for _, v in ipairs(field(pod, "spec", "volumes") or {}) do
    add(set, field(v, "secret", "secretName"))
    add(set, field(v, "azureFile", "secretName"))
    add(set, field(v, "csi", "nodePublishSecretRef", "name"))
    for _, plugin in ipairs { "cephfs", "cinder", "flexVolume", "rbd", "scaleIO", "iscsi", "storageos" } do
      add(set, field(v, plugin, "secretRef", "name"))
    end
  end
  return sorted_keys(set)
end

-- ------------------------------------------------------------- the stores

local function fail(kind, ns, name, code, msg)
  return nil, string.format('%s: %s "%s"/"%s": %s', code, kind, ns, name, msg), code
end

-- Is resourceVersion a older than b? (decimal strings; unknown: no)
local function older(a, b)
  if type(a) ~= "string" or type(b) ~= "string" or not a:find("^%d+$") or not b:find("^%d+$") then
    return false
  end
  if #a ~= #b then
    return #a < #b
  end
  return a < b
end

local function rv_of(obj)
  return type(obj) == "table" and type(obj.metadata) == "table" and obj.metadata.resourceVersion or nil
end

-- Run fn once for concurrent callers of the same item: the others wait for
-- its results.
local function shared(item, fn)
  if item.inflight then
    local wk = core.waker()
    table.insert(item.inflight, wk)
    wk:wait()
    return unpack(item.shared_result, 1, 3)
  end
  item.inflight = {}
  local res = { fn() }
  local waiting = item.inflight
  item.inflight = nil
  item.shared_result = res
  for _, wk in ipairs(waiting) do
    wk:wake()
  end
  return unpack(res, 1, 3)
end

-- The stores count the pods referencing each item, keyed "ns/name".
-- add_ref(items, ns, name, new) -> the item, made by new(ns, name) (with
-- refs = 0) when missing, its count raised.
local function add_ref(items, ns, name, new)
  local key = ns .. "/" .. name
  local item = items[key]
  if not item then
    item = new(ns, name)
    items[key] = item
  end
  item.refs = item.refs + 1
  return item
end

-- drop_ref(items, ns, name) -> the item when that was its last reference
-- (it is gone from items), else nil.
local function drop_ref(items, ns, name)
  local key = ns .. "/" .. name
  local item = items[key]
  if item then
    item.refs = item.refs - 1
    if item.refs <= 0 then
      items[key] = nil
      return item
    end
  end
  return nil
end

-- "Cache": TTL-based, as kubelet's objectStore.
local function ttl_store(self)
  local store = { items = {} }
  local function new_item()
    return { refs = 0 }
  end
  function store.add(ns, name)
    add_ref(store.items, ns, name, new_item).data = nil -- the next get fetches
  end
  function store.delete(ns, name)
    drop_ref(store.items, ns, name)
  end
  local function fresh(data)
    local ttl = self.opts.get_ttl and self.opts.get_ttl() or nil
    return core.monotime() < data.updated + (ttl or self.ttl)
  end
  function store.get(ns, name)
    local item = store.items[ns .. "/" .. name]
    if not item then
      return fail(self.kind, ns, name, "NOT_REGISTERED", "not registered")
    end
    return shared(item, function()
      local data = item.data
      if data and not data.err and fresh(data) then
        return data.obj
      end
      -- A periodic refresh of what was fetched fine may come from the API
      -- server's cache.
      local opts = (data and data.obj and not data.err) and { resourceVersion = "0" } or nil
      local obj, err, code = self.client:get(k8s.path(self.resource, ns, name), opts)
      self.stats.fetches = self.stats.fetches + 1
      if not obj and code ~= "NOT_FOUND" and not (data and (data.obj or data.err)) then
        return nil, err, code -- nothing cached to fall back on
      end
      if (obj and not (data and older(rv_of(obj), rv_of(data.obj)))) or code == "NOT_FOUND" then
        data = { obj = obj, err = not obj and { err, code } or nil, updated = core.monotime() }
        if store.items[ns .. "/" .. name] == item then
          item.data = data
        end
      end
      if data.err then
        return nil, data.err[1], data.err[2]
      end
      return data.obj
    end)
  end
  function store.stop()
  end
  return store
end

-- "Watch": one watch per object, as kubelet's objectCache.
local function watch_store(self)
  local store = { items = {}, retired = {} }
  -- A cancelled watch, kept until its task has finished (stop() waits for
  -- the ones still running).
  local function retire(w)
    local keep = {}
    for _, old in ipairs(store.retired) do
      if old.state ~= "stopped" then
        keep[#keep + 1] = old
      end
    end
    keep[#keep + 1] = w
    store.retired = keep
  end
  local function start_watch(item)
    item.watch = self.client:watch(k8s.path(self.resource, item.ns), {
      fieldSelector = "metadata.name=" .. item.name,
      backoff = self.opts.watch_backoff,
      log = self.opts.log,
    })
    item.stopped = false
    self.stats.watches_started = self.stats.watches_started + 1
  end
  local function stop_watch(item)
    if not item.stopped then
      item.stopped = true
      item.watch:cancel()
    end
  end
  local function recycle()
    local now = core.monotime()
    for _, item in pairs(store.items) do
      if not item.stopped and item.watch:synced() and now - item.last_access > self.max_idle then
        stop_watch(item)
        self.stats.watches_idled = self.stats.watches_idled + 1
      end
    end
  end
  local function ensure_recycler()
    store.recycler = store.recycler or task.job(function(j)
      while true do
        j:pause(self.recycle_period)
        if j.stopped then
          return
        end
        recycle()
      end
    end, { name = "k8s.managers: " .. self.resource .. " recycler" })
  end
  local function new_item(ns, name)
    local item = { refs = 0, ns = ns, name = name, last_access = core.monotime() }
    start_watch(item)
    ensure_recycler()
    return item
  end
  function store.add(ns, name)
    add_ref(store.items, ns, name, new_item)
  end
  function store.delete(ns, name)
    local item = drop_ref(store.items, ns, name)
    if item then
      stop_watch(item)
      retire(item.watch)
    end
  end
  function store.get(ns, name)
    local item = store.items[ns .. "/" .. name]
    if not item then
      return fail(self.kind, ns, name, "NOT_REGISTERED", "not registered")
    end
    item.last_access = core.monotime() -- even if this get fails
    if item.stopped and not item.immutable then
      retire(item.watch)
      start_watch(item)
    end
    local w = item.watch
    local deadline = core.monotime() + self.sync_timeout
    while not w:synced() do
      if core.monotime() >= deadline then
        return fail(self.kind, ns, name, "TIMEOUT", string.format(
          "failed to sync the %s cache within %g s%s", self.resource, self.sync_timeout,
          w.last_error and (" (last error: " .. w.last_error .. ")") or ""))
      end
      core.sleep(0.01)
    end
    local obj = w:get(ns, name)
    if not obj then
      return fail(self.kind, ns, name, "NOT_FOUND", string.format('%s "%s" not found', self.resource, name))
    end
    if obj.immutable == true and not item.immutable then
      item.immutable = true
      stop_watch(item) -- its store keeps the object
    end
    return obj
  end
  function store.stop()
    local all = store.retired
    store.retired = {}
    for _, item in pairs(store.items) do
      stop_watch(item)
      all[#all + 1] = item.watch
    end
    for _, w in ipairs(all) do
      w:stop() -- waits for its task
    end
    if store.recycler then
      store.recycler:stop()
    end
    store.recycler = nil
  end
  return store
end

-- "Get": no store at all.
local function get_store(self)
  local store = {}
  function store.add()
  end
  function store.delete()
  end
  function store.get(ns, name)
    self.stats.fetches = self.stats.fetches + 1
    return self.client:get(k8s.path(self.resource, ns, name))
  end
  function store.stop()
  end
  return store
end

-- -------------------------------------------------------------- managers

local Manager = {}
Manager.__index = Manager

local OPTIONS = {
  strategy = "string", ttl = "number", get_ttl = "function", sync_timeout = "number",
  max_idle = "number", recycle_period = "number", watch_backoff = "table", log = "boolean",
}

local function check(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("kubelua.k8s.managers: options must be a table, got " .. type(opts), 3)
  end
  options.check(opts, OPTIONS, "kubelua.k8s.managers", 3)
  local s = (opts.strategy or M.defaults.strategy):lower()
  if s ~= "get" and s ~= "cache" and s ~= "watch" then
    error("kubelua.k8s.managers: option strategy must be Get, Cache or Watch, got " ..
      tostring(opts.strategy), 3)
  end
  return opts, s
end

-- A manager of one kind of object. spec: { kind =, resource =, names = fn(pod) }
local function new_manager(client, spec, opts)
  local o, strategy = check(opts)
  local self = setmetatable({
    client = client,
    kind = spec.kind,
    resource = spec.resource,
    names = spec.names,
    opts = o,
    strategy = strategy,
    ttl = o.ttl or M.defaults.ttl,
    sync_timeout = o.sync_timeout or M.defaults.sync_timeout,
    max_idle = o.max_idle or M.defaults.max_idle,
    recycle_period = o.recycle_period or M.defaults.recycle_period,
    pods = {}, -- "ns/name/uid" -> the registered pod
    stats = { fetches = 0, watches_started = 0, watches_idled = 0 },
  }, Manager)
  local make = ({ get = get_store, cache = ttl_store, watch = watch_store })[strategy]
  self.store = make(self)
  return self
end

local function pod_key(pod)
  local m = type(pod) == "table" and pod.metadata
  if type(m) ~= "table" or type(m.name) ~= "string" then
    error("kubelua.k8s.managers: a pod needs metadata.name", 3)
  end
  return string.format("%s/%s/%s", tostring(m.namespace or ""), m.name, tostring(m.uid or "")),
      m.namespace or ""
end

-- register_pod(pod): take in the objects the pod references (again: an
-- updated pod adds its new references and drops the ones it lost).
function Manager:register_pod(pod)
  local key, ns = pod_key(pod)
  local prev = self.pods[key]
  self.pods[key] = pod
  local names = self.names(pod)
  if not prev then
    for _, n in ipairs(names) do
      self.store.add(ns, n)
    end
    return
  end
  local had, has = {}, {}
  for _, n in ipairs(self.names(prev)) do
    had[n] = true
  end
  for _, n in ipairs(names) do
    has[n] = true
    if not had[n] then
      self.store.add(ns, n)
    end
  end
  for n in pairs(had) do
    if not has[n] then
      self.store.delete(ns, n)
    end
  end
end

-- unregister_pod(pod): drop the pod's references.
function Manager:unregister_pod(pod)
  local key = pod_key(pod)
  local prev = self.pods[key]
  self.pods[key] = nil
  if prev then
    local _, ns = pod_key(prev)
    for _, n in ipairs(self.names(prev)) do
      self.store.delete(ns, n)
    end
  end
end

-- get(namespace, name) -> object | nil, err, code
function Manager:get(ns, name)
  if type(ns) ~= "string" or type(name) ~= "string" then
    error("kubelua.k8s.managers: get expects a namespace and a name (strings)", 2)
  end
  return self.store.get(ns, name)
end

-- stop(): end every watch (Watch); returns once their tasks have finished.
function Manager:stop()
  self.store.stop()
end

-- configmaps(client, opts) / secrets(client, opts) -> a manager of one kind
function M.configmaps(client, opts)
  return new_manager(client, { kind = "configmap", resource = "configmaps", names = M.configmap_names }, opts)
end

-- secrets(client, opts) -> a manager of the node's pods' Secrets (as configmaps()).
function M.secrets(client, opts)
  return new_manager(client, { kind = "secret", resource = "secrets", names = M.secret_names }, opts)
end

local Both = {}
Both.__index = Both

-- new(client, opts) -> both managers behind one object (opts apply to both)
function M.new(client, opts)
  check(opts)
  return setmetatable({ configmaps = M.configmaps(client, opts), secrets = M.secrets(client, opts) }, Both)
end

function Both:register_pod(pod)
  self.configmaps:register_pod(pod)
  self.secrets:register_pod(pod)
end

function Both:unregister_pod(pod)
  self.configmaps:unregister_pod(pod)
  self.secrets:unregister_pod(pod)
end

function Both:get_configmap(ns, name)
  return self.configmaps:get(ns, name)
end

function Both:get_secret(ns, name)
  return self.secrets:get(ns, name)
end

function Both:stop()
  self.configmaps:stop()
  self.secrets:stop()
end

return M
