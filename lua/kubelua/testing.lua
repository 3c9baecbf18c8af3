-- kubelua.testing: the policy test kit. A recorded (or hand-written) node
-- served as a fake CRI runtime with a clock the test sets, so GC and probe
-- policies get specs that run anywhere in milliseconds.
--
--   local testing = require "kubelua.testing"
--   local rec = assert(testing.load("node.rec.lua"))     -- from `kubelua record FILE`
--   local rt = testing.runtime(rec)                      -- same methods as a CRI client
--   rt.clock:advance(3600)                               -- an hour later
--   local g = require("kubelua.gc").new{ runtime = rt }  -- policies take it as their runtime
--   rt:fail("remove_container", "UNKNOWN", "disk on fire", { times = 1 })
--   rt:count("remove_container"), rt.calls               -- what the policy did
--
-- A state (a recording, or a table written by hand) holds:
--   time        seconds since the epoch when it was taken (the clock's start)
--   sandboxes   CRI PodSandbox tables      containers  CRI Container tables
--   statuses    { [container id] = fields of a CRI ContainerStatus: finished_at,
--               started_at, exit_code, reason, message, log_path } (optional)
--   images      CRI Image tables           image_fs    a CRI ImageFsInfoResponse
--   fs          { [mountpoint] = { capacity =, available = } }  (statvfs figures)
--   runtime_status  a CRI StatusResponse (default: runtime and network ready)
--   stats       { [container id] = writable layer bytes } (optional)
-- Times are CRI's: int64 nanoseconds (numbers or boxed integers). The
-- compact builder testing.node{} writes all of that from a few lines.
--
-- The fake follows containerd 1.6 as checked here: removing a running
-- container or a ready sandbox stops it first; removing a sandbox removes its
-- containers; removing something unknown succeeds; stopping or asking the
-- status of something unknown is NOT_FOUND; list filters (id or ID prefix,
-- state, pod sandbox, label selector, image) are honoured. Removing an image
-- gives its size back to the image filesystem (used bytes and available).
-- exec_sync answers through rt:on_exec(fn) (for probe policies). Every
-- call is logged in rt.calls as { method =, req = }.
local ffi = require "ffi"
local config = require "kubelua.config"
local store = require "kubelua.gc.store"

local M = {}

M.FORMAT = "kubelua-recording/1" -- the format tag of recordings this version reads and writes

local UID_LABEL = "io.kubernetes.pod.uid"
local NAME_LABEL = "io.kubernetes.pod.name"
local NS_LABEL = "io.kubernetes.pod.namespace"
local CONTAINER_LABEL = "io.kubernetes.container.name"

-- ------------------------------------------------------------------ values

local copy = config.copy
-- copy(v) -> a deep copy of a plain value (kubelua.config's).
M.copy = copy

-- Seconds (a float) -> CRI nanoseconds, exact to the nanosecond, as a boxed
-- int64 like the runtime's.
function M.ns(secs)
  local whole = math.floor(secs)
  return ffi.new("int64_t", whole) * 1000000000 + math.floor((secs - whole) * 1e9 + 0.5)
end

-- CRI nanoseconds (number or boxed) -> seconds (float).
function M.secs(ns)
  return (tonumber(ns) or 0) / 1e9
end

-- A settable clock: clock() -> seconds; clock:set(t), clock:advance(dt).
local Clock = {}
Clock.__index = Clock
Clock.__call = function(self)
  return self.t
end
function Clock:set(t)
  self.t = t
  return t
end
function Clock:advance(dt)
  self.t = self.t + dt
  return self.t
end
function Clock:now()
  return self.t
end

-- clock(t0) -> a settable clock (c:now(), c:advance(s), c:set(t)), starting at t0 seconds.
function M.clock(t0)
  return setmetatable({ t = t0 or 1700000000 }, Clock)
end

-- Lua data files (recordings): kubelua.gc.store.
M.serialize = store.serialize
M.write_atomic = store.write_atomic
M.read_data = store.read_data

-- ------------------------------------------------------------- recordings

-- Take a recording of what `client` (a CRI client) sees now. `opts.statvfs`
-- (default kubelua.sys.statvfs) measures the image filesystems.
-- Returns the recording or nil, err, code (the first listing that failed).
function M.record(client, opts)
  opts = opts or {}
  local task = require "kubelua.task"
  local statvfs = opts.statvfs or require("kubelua.sys").statvfs
  local clock = opts.clock or task.now
  local rec = { format = M.FORMAT, time = clock(), statuses = {}, fs = {}, stats = {} }
  local res = task.gather({
    function() return client:list_pod_sandbox{} end,
    function() return client:list_containers{} end,
    function() return client:list_images{} end,
    function() return client:image_fs_info{} end,
    function() return client:status{} end,
    function() return client:version{} end,
  })
  for i, r in ipairs(res) do
    if not r[1] then
      error(r[2], 0)
    elseif r[2] == nil and i <= 4 then
      return nil, r[3], r[4]
    end
  end
  rec.sandboxes = res[1][2].items
  rec.containers = res[2][2].containers
  rec.images = res[3][2].images
  rec.image_fs = res[4][2]
  rec.runtime_status = res[5][2] -- nil when the call failed
  rec.version = res[6][2]
  -- Exit times and codes are only in ContainerStatus.
  local fns = {}
  for _, c in ipairs(rec.containers) do
    if c.state ~= "CONTAINER_RUNNING" then
      fns[#fns + 1] = function()
        local st = client:container_status{ container_id = c.id }
        if st and st.status then
          local s = st.status
          rec.statuses[c.id] = { started_at = s.started_at, finished_at = s.finished_at, exit_code = s.exit_code,
            reason = s.reason, message = s.message, log_path = s.log_path }
        end
      end
    end
  end
  for i = 1, #fns, 32 do
    task.gather({ unpack(fns, i, math.min(i + 31, #fns)) })
  end
  for _, fs in ipairs(rec.image_fs.image_filesystems or {}) do
    local mp = fs.fs_id and fs.fs_id.mountpoint
    if mp and mp ~= "" then
      local st = statvfs(mp)
      if st then
        rec.fs[mp] = { capacity = st.capacity, available = st.available }
      end
    end
  end
  local stats = client:list_container_stats{}
  for _, s in ipairs(stats and stats.stats or {}) do
    local wl = s.writable_layer
    if s.attributes and wl and wl.used_bytes then
      rec.stats[s.attributes.id] = tonumber(wl.used_bytes.value)
    end
  end
  return rec
end

-- save(path, rec) -> true | nil, err: write a recording atomically.
function M.save(path, rec)
  return M.write_atomic(path, M.serialize(rec))
end

function M.load(path)
  return M.read_data(path)
end

-- --------------------------------------------------------- compact builder

-- testing.node{ time =, pods = {...}, images = {...}, fs = {...} } -> a state.
--   pod: { uid =, name =, namespace =, ready = true|false, created = secs,
--          sandboxes = { { ready =, created = secs, id = }, ... } (default: one),
--          containers = { { name =, attempt =, state = "exited"|"running"|"created"|"unknown",
--                           created = secs, finished = secs, exit_code =, image =, id =,
--                           labels = {}, sandbox = index }, ... } }
--   image: { id =, tags = {}, digests = {}, size =, pinned = }
--   fs: { capacity =, available =, mountpoint = } (the image filesystem)
-- IDs are made up when not given (deterministic: from pod UID, name and attempt).
local STATES = { exited = "CONTAINER_EXITED", running = "CONTAINER_RUNNING", created = "CONTAINER_CREATED",
  unknown = "CONTAINER_UNKNOWN" }

-- hexid(s) -> a 64-hex-digit ID derived from s (stable names for hand-written nodes).
local function hexid(s)
  -- 64 hex digits derived from s (not a hash anyone relies on; just unique for unique s).
  local h1, h2 = 5381, 52711
  for i = 1, #s do
    local b = s:byte(i)
    h1 = (h1 * 33 + b) % 4294967296
    h2 = (h2 * 31 + b * 7) % 4294967296
  end
  local core = string.format("%08x%08x", h1, h2)
  local hexed = s:gsub(".", function(c) return string.format("%02x", c:byte()) end)
  return (core .. hexed .. string.rep("0", 64)):sub(1, 64)
end
M.hexid = hexid

function M.node(spec)
  local now = spec.time or 1700000000
  local state = { format = M.FORMAT, time = now, sandboxes = {}, containers = {}, statuses = {}, images = {},
    stats = {}, fs = {} }
  for pi, p in ipairs(spec.pods or {}) do
    local uid = p.uid or ("pod-" .. pi)
    local name, ns = p.name or uid, p.namespace or "default"
    local sbs = p.sandboxes or { { ready = p.ready ~= false, created = p.created } }
    local sb_ids = {}
    for si, s in ipairs(sbs) do
      local id = s.id or hexid("sb/" .. uid .. "/" .. si)
      sb_ids[si] = id
      state.sandboxes[#state.sandboxes + 1] = {
        id = id,
        metadata = { name = name, namespace = ns, uid = uid, attempt = si - 1 },
        state = s.ready == false and "SANDBOX_NOTREADY" or "SANDBOX_READY",
        created_at = M.ns(s.created or p.created or (now - 3600)),
        labels = { [UID_LABEL] = uid, [NAME_LABEL] = name, [NS_LABEL] = ns },
        annotations = {},
        runtime_handler = "",
      }
    end
    for _, c in ipairs(p.containers or {}) do
      local attempt = c.attempt or 0
      local id = c.id or hexid("c/" .. uid .. "/" .. c.name .. "/" .. attempt .. "/" .. #state.containers)
      local labels = { [UID_LABEL] = uid, [NAME_LABEL] = name, [NS_LABEL] = ns, [CONTAINER_LABEL] = c.name }
      for k, v in pairs(c.labels or {}) do
        labels[k] = v
      end
      local image = c.image or "kubelua.local/busybox:latest"
      local created = c.created or (now - 600)
      state.containers[#state.containers + 1] = {
        id = id,
        pod_sandbox_id = sb_ids[c.sandbox or #sb_ids] or "",
        metadata = { name = c.name, attempt = attempt },
        image = { image = image, annotations = {} },
        image_ref = c.image_ref or image,
        image_id = "",
        state = STATES[c.state or "exited"] or c.state,
        created_at = M.ns(created),
        labels = labels,
        annotations = {},
      }
      local st = STATES[c.state or "exited"] or c.state
      if st == "CONTAINER_EXITED" then
        state.statuses[id] = { started_at = M.ns(created + 0.1), finished_at = M.ns(c.finished or (created + 1)),
          exit_code = c.exit_code or 0, reason = (c.exit_code or 0) == 0 and "Completed" or "Error" }
      end
      if c.bytes then
        state.stats[id] = c.bytes
      end
    end
  end
  local total = 0
  for ii, img in ipairs(spec.images or {}) do
    local id = img.id or ("sha256:" .. hexid("img/" .. ii))
    state.images[#state.images + 1] = { id = id, repo_tags = img.tags or {}, repo_digests = img.digests or {},
      size = img.size or 1000000, username = "", pinned = img.pinned or false,
      spec = { image = id, annotations = img.annotations or {} } }
    total = total + (img.size or 1000000)
  end
  local fs = spec.fs or {}
  local mp = fs.mountpoint or "/fake/image-fs"
  state.image_fs = { image_filesystems = { { timestamp = M.ns(now), fs_id = { mountpoint = mp },
    used_bytes = { value = fs.used or total }, inodes_used = { value = 0 } } }, container_filesystems = {} }
  state.fs[mp] = { capacity = fs.capacity or 100e9, available = fs.available or (fs.capacity or 100e9) - total }
  return state
end

-- ----------------------------------------------------------- the fake runtime

local Fake = {}
Fake.__index = Fake

local function rpc_path(method)
  local service = (method:match("image") and method ~= "list_container_stats") and "ImageService"
    or "RuntimeService"
  local camel = method:gsub("^%l", string.upper):gsub("_(%l)", string.upper)
  return "/runtime.v1." .. service .. "/" .. camel
end

function M.runtime(state, opts)
  opts = opts or {}
  state = copy(state or {})
  local self = setmetatable({
    clock = opts.clock or M.clock(state.time or 1700000000),
    sandboxes = state.sandboxes or {},
    containers = state.containers or {},
    statuses = state.statuses or {},
    images = state.images or {},
    image_fs = state.image_fs or { image_filesystems = {}, container_filesystems = {} },
    fs = state.fs or {},
    stats = state.stats or {},
    runtime_status = state.runtime_status,
    version_info = state.version,
    calls = {},
    failures = {},
    copy_out = opts.copy ~= false,
  }, Fake)
  return self
end

-- Make `method` fail with code/message: every call, or `opts.times` calls,
-- and only those for which opts.when(req) is true.
function Fake:fail(method, code, message, opts)
  opts = opts or {}
  self.failures[method] = { code = code, message = message or "injected failure", times = opts.times,
    when = opts.when }
end

-- rt:heal(method): undo rt:fail(method, ...).
function Fake:heal(method)
  self.failures[method] = nil
end

function Fake:count(method)
  local n = 0
  for _, c in ipairs(self.calls) do
    if c.method == method then
      n = n + 1
    end
  end
  return n
end

-- The requests of every call to `method`, in order.
function Fake:requests(method)
  local out = {}
  for _, c in ipairs(self.calls) do
    if c.method == method then
      out[#out + 1] = c.req
    end
  end
  return out
end

local function call(self, method, req)
  self.calls[#self.calls + 1] = { method = method, req = req }
  local f = self.failures[method]
  if f and (not f.when or f.when(req or {})) and (f.times == nil or f.times > 0) then
    if f.times then
      f.times = f.times - 1
    end
    return f.code .. ": " .. rpc_path(method) .. ": " .. f.message, f.code
  end
end

local function out(self, v)
  if self.copy_out then
    return copy(v)
  end
  return v
end

local function err(self, method, code, message)
  return nil, code .. ": " .. rpc_path(method) .. ": " .. message, code
end

local function prefix_match(id, want)
  return want == nil or want == "" or id:sub(1, #want) == want
end

local function labels_match(labels, sel)
  if sel then
    for k, v in pairs(sel) do
      if labels[k] ~= v then
        return false
      end
    end
  end
  return true
end

local function find(list, id)
  for i, x in ipairs(list) do
    if x.id == id then
      return x, i
    end
  end
end

-- the clock, as CRI nanoseconds
local function now_ns(self)
  return M.ns(self.clock())
end

-- The CRI methods the fake serves, answering as containerd 1.6 does:
--   rt:version()                   -- runtime name "kubelua-fake" (or rt.version_info)
--   rt:status()                    -- rt.runtime_status (default: runtime and network ready)
--   rt:list_pod_sandbox(req)       -- sandboxes, with filters (id, state, labels)
--   rt:pod_sandbox_status(req)     -- one sandbox; NOT_FOUND when unknown
--   rt:list_containers(req)        -- containers, with filters (id or prefix, state, sandbox, labels)
--   rt:container_status(req)       -- one container with its exit code and times; NOT_FOUND when unknown
--   rt:list_container_stats(req)   -- writable layer bytes from the state's stats
--   rt:stop_container(req)         -- running -> exited; NOT_FOUND when unknown
--   rt:remove_container(req)       -- stops it first; unknown IDs succeed
--   rt:stop_pod_sandbox(req)       -- ready -> not ready, its containers exited
--   rt:remove_pod_sandbox(req)     -- with its containers; unknown IDs succeed
--   rt:exec_sync(req)              -- answered by rt:on_exec(fn)
--   rt:list_images(req)            -- images of the state
--   rt:image_status(req)           -- one image by ID or reference, or no image
--   rt:image_fs_info(req)          -- the image filesystem's usage
--   rt:remove_image(req)           -- gives its size back to the image filesystem
function Fake:version()
  local e, code = call(self, "version")
  if e then
    return nil, e, code
  end
  return out(self, self.version_info or { version = "0.1.0", runtime_name = "kubelua-fake",
    runtime_version = "1.0", runtime_api_version = "v1" })
end

function Fake:status()
  local e, code = call(self, "status")
  if e then
    return nil, e, code
  end
  return out(self, self.runtime_status or { status = { conditions = {
    { type = "RuntimeReady", status = true, reason = "", message = "" },
    { type = "NetworkReady", status = true, reason = "", message = "" },
  } }, info = {} })
end

function Fake:list_pod_sandbox(req)
  local e, code = call(self, "list_pod_sandbox", req)
  if e then
    return nil, e, code
  end
  local f = req and req.filter or {}
  local want_state = f.state and f.state.state
  local items = {}
  for _, s in ipairs(self.sandboxes) do
    if prefix_match(s.id, f.id) and (not want_state or s.state == want_state) and labels_match(s.labels, f.label_selector) then
      items[#items + 1] = out(self, s)
    end
  end
  return { items = items }
end

function Fake:pod_sandbox_status(req)
  local e, code = call(self, "pod_sandbox_status", req)
  if e then
    return nil, e, code
  end
  local s = find(self.sandboxes, req.pod_sandbox_id)
  if not s then
    return err(self, "pod_sandbox_status", "NOT_FOUND", "an error occurred when try to find sandbox \""
      .. tostring(req.pod_sandbox_id) .. "\": not found")
  end
  return { status = out(self, { id = s.id, metadata = s.metadata, state = s.state, created_at = s.created_at,
    labels = s.labels, annotations = s.annotations, runtime_handler = s.runtime_handler }), info = {} }
end

function Fake:list_containers(req)
  local e, code = call(self, "list_containers", req)
  if e then
    return nil, e, code
  end
  local f = req and req.filter or {}
  local want_state = f.state and f.state.state
  local list = {}
  for _, c in ipairs(self.containers) do
    if prefix_match(c.id, f.id) and prefix_match(c.pod_sandbox_id, f.pod_sandbox_id)
      and (not want_state or c.state == want_state) and labels_match(c.labels, f.label_selector) then
      list[#list + 1] = out(self, c)
    end
  end
  return { containers = list }
end

function Fake:container_status(req)
  local e, code = call(self, "container_status", req)
  if e then
    return nil, e, code
  end
  local c = find(self.containers, req.container_id)
  if not c then
    return err(self, "container_status", "NOT_FOUND", "an error occurred when try to find container \""
      .. tostring(req.container_id) .. "\": not found")
  end
  local st = self.statuses[c.id] or {}
  return { status = out(self, {
    id = c.id, metadata = c.metadata, state = c.state, created_at = c.created_at,
    started_at = st.started_at or 0, finished_at = st.finished_at or 0, exit_code = st.exit_code or 0,
    image = c.image, image_ref = c.image_ref, image_id = c.image_id or "", reason = st.reason or "",
    message = st.message or "", labels = c.labels, annotations = c.annotations, mounts = {},
    log_path = st.log_path or "",
  }), info = {} }
end

function Fake:list_container_stats(req)
  local e, code = call(self, "list_container_stats", req)
  if e then
    return nil, e, code
  end
  local stats = {}
  for _, c in ipairs(self.containers) do
    local used = self.stats[c.id]
    if used then
      stats[#stats + 1] = { attributes = { id = c.id, metadata = out(self, c.metadata), labels = {}, annotations = {} },
        writable_layer = { used_bytes = { value = used } } }
    end
  end
  return { stats = stats }
end

local function stop(self, c)
  if c.state == "CONTAINER_RUNNING" or c.state == "CONTAINER_UNKNOWN" or c.state == "CONTAINER_CREATED" then
    local st = self.statuses[c.id] or {}
    self.statuses[c.id] = st
    st.finished_at = now_ns(self)
    st.exit_code = c.state == "CONTAINER_RUNNING" and 137 or (st.exit_code or 0)
    st.reason = st.exit_code == 0 and "Completed" or "Error"
    c.state = "CONTAINER_EXITED"
  end
end

function Fake:stop_container(req)
  local e, code = call(self, "stop_container", req)
  if e then
    return nil, e, code
  end
  local c = find(self.containers, req.container_id)
  if not c then
    return err(self, "stop_container", "NOT_FOUND", "an error occurred when try to find container \""
      .. tostring(req.container_id) .. "\": not found")
  end
  stop(self, c)
  return {}
end

local function drop_container(self, id)
  local c, i = find(self.containers, id)
  if c then
    table.remove(self.containers, i)
    self.statuses[id] = nil
    self.stats[id] = nil
  end
end

function Fake:remove_container(req)
  local e, code = call(self, "remove_container", req)
  if e then
    return nil, e, code
  end
  drop_container(self, req.container_id)
  return {}
end

function Fake:stop_pod_sandbox(req)
  local e, code = call(self, "stop_pod_sandbox", req)
  if e then
    return nil, e, code
  end
  local s = find(self.sandboxes, req.pod_sandbox_id)
  if not s then
    return err(self, "stop_pod_sandbox", "NOT_FOUND", "an error occurred when try to find sandbox \""
      .. tostring(req.pod_sandbox_id) .. "\": not found")
  end
  for _, c in ipairs(self.containers) do
    if c.pod_sandbox_id == s.id then
      stop(self, c)
    end
  end
  s.state = "SANDBOX_NOTREADY"
  return {}
end

function Fake:remove_pod_sandbox(req)
  local e, code = call(self, "remove_pod_sandbox", req)
  if e then
    return nil, e, code
  end
  local s, i = find(self.sandboxes, req.pod_sandbox_id)
  if s then
    local ids = {}
    for _, c in ipairs(self.containers) do
      if c.pod_sandbox_id == s.id then
        ids[#ids + 1] = c.id
      end
    end
    for _, id in ipairs(ids) do
      drop_container(self, id)
    end
    table.remove(self.sandboxes, i)
  end
  return {}
end

-- exec_sync: what fake:on_exec(fn) answers (fn(req, container) -> a CRI
-- ExecSyncResponse, or nil, err, code); by default exit 0 with no output.
-- Like containerd, a container that is not running answers UNKNOWN.
function Fake:on_exec(fn)
  self.exec_handler = fn
end

function Fake:exec_sync(req)
  local e, code = call(self, "exec_sync", req)
  if e then
    return nil, e, code
  end
  local c = find(self.containers, req.container_id)
  if not c then
    return err(self, "exec_sync", "NOT_FOUND", "an error occurred when try to find container \""
      .. tostring(req.container_id) .. "\": not found")
  end
  if c.state ~= "CONTAINER_RUNNING" then
    return err(self, "exec_sync", "UNKNOWN", "container is in " .. c.state .. " state")
  end
  if self.exec_handler then
    return self.exec_handler(req, out(self, c))
  end
  return { stdout = "", stderr = "", exit_code = 0 }
end

local function image_matches(img, ref)
  if img.id == ref then
    return true
  end
  for _, t in ipairs(img.repo_tags or {}) do
    if t == ref then
      return true
    end
  end
  for _, d in ipairs(img.repo_digests or {}) do
    if d == ref then
      return true
    end
  end
  return false
end

function Fake:list_images(req)
  local e, code = call(self, "list_images", req)
  if e then
    return nil, e, code
  end
  local want = req and req.filter and req.filter.image and req.filter.image.image
  local list = {}
  for _, img in ipairs(self.images) do
    if want == nil or want == "" or image_matches(img, want) then
      list[#list + 1] = out(self, img)
    end
  end
  return { images = list }
end

function Fake:image_status(req)
  local e, code = call(self, "image_status", req)
  if e then
    return nil, e, code
  end
  local ref = req and req.image and req.image.image
  for _, img in ipairs(self.images) do
    if image_matches(img, ref) then
      return { image = out(self, img), info = {} }
    end
  end
  return { info = {} }
end

function Fake:image_fs_info(req)
  local e, code = call(self, "image_fs_info", req)
  if e then
    return nil, e, code
  end
  return out(self, self.image_fs)
end

function Fake:remove_image(req)
  local e, code = call(self, "remove_image", req)
  if e then
    return nil, e, code
  end
  local ref = req and req.image and req.image.image
  for i, img in ipairs(self.images) do
    if image_matches(img, ref) then
      table.remove(self.images, i)
      local size = tonumber(img.size) or 0
      local fs1 = self.image_fs.image_filesystems[1]
      if fs1 then
        local used = fs1.used_bytes and tonumber(fs1.used_bytes.value) or 0
        fs1.used_bytes = { value = math.max(0, used - size) }
        local mp = fs1.fs_id and fs1.fs_id.mountpoint
        local st = mp and self.fs[mp]
        if st then
          st.available = math.min(st.capacity, st.available + size)
        end
      end
      break
    end
  end
  return {}
end

-- statvfs of the fake's filesystems (what image GC measures capacity with):
-- the figures recorded for `path`, else for the one filesystem recorded.
function Fake:statvfs(path)
  local st = self.fs[path]
  if not st then
    local only, n = nil, 0
    for _, v in pairs(self.fs) do
      only, n = v, n + 1
    end
    st = n == 1 and only or nil
  end
  if not st then
    return nil, "ENOENT: statvfs " .. tostring(path) .. ": no such file or directory", "ENOENT"
  end
  return { capacity = st.capacity, available = st.available, free = st.available }
end

-- The fake's current state, as a recording (for saving or comparing).
function Fake:snapshot()
  return copy({ format = M.FORMAT, time = self.clock(), sandboxes = self.sandboxes, containers = self.containers,
    statuses = self.statuses, images = self.images, image_fs = self.image_fs, fs = self.fs, stats = self.stats,
    runtime_status = self.runtime_status, version = self.version_info })
end

-- IDs of the containers / sandboxes / images left, sorted (handy in specs).
local function ids(list)
  local out_ = {}
  for _, x in ipairs(list) do
    out_[#out_ + 1] = x.id
  end
  table.sort(out_)
  return out_
end
-- rt:container_ids(), rt:sandbox_ids(), rt:image_ids() -> sorted IDs of what is left.
function Fake:container_ids()
  return ids(self.containers)
end
function Fake:sandbox_ids()
  return ids(self.sandboxes)
end
function Fake:image_ids()
  return ids(self.images)
end

M.Fake = Fake
return M
