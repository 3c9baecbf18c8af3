-- kubelua.image_gc: image garbage collection, as policy. Behaviour:
-- kubelet-behaviour.md section 2, plus what users ask for (ecosystem.md C):
-- state kept across restarts, exclusions, keep-N per repository, reasons.
--
--   local image_gc = require "kubelua.image_gc"
--   local ig = image_gc.new{ runtime = rt, state_dir = "/var/lib/kubelua" }
--   local plan = ig:plan()              -- dry run: which images, why, bytes, usage
--   local res, err = ig:run()           -- the same, then done
--   ig:start() ... ig:stop()            -- every 5 minutes (kubelet's period)
--
-- Options of image_gc.new (all optional but runtime):
--   runtime         a CRI client, or a kubelua.testing fake
--   high, low       usage thresholds in percent (85, 80): at or above `high`,
--                   free images until usage would be down to `low`
--   min_age         seconds since an image was first seen before it may go (120)
--   max_age         seconds unused after which an image goes whatever the usage (0: off)
--   state_dir       folder where first-seen and last-used times are kept
--                   (image_gc.state, written atomically); nil: in memory only
--   keep            Lua patterns; an image any of whose tags, digests or ID
--                   (full, or the 12 hex digits) matches one is kept
--   keep_annotations { [key] = value | true }: images whose spec carries one are kept
--   keep_newest     keep the N most recently first-seen images of each repository
--                   (0: off; every image of the repository counts, in use or not)
--   sandbox_image   an image reference counted as always in use (the pause image),
--                   or function() -> reference | nil, asked at every detection
--   image_fs_path   the path measured for capacity (default: the mountpoint
--                   ImageFsInfo reports)
--   usage           "statvfs" (kubelet: available from the filesystem, which counts
--                   every file on it) or "image_fs_info" (available = capacity -
--                   the bytes ImageFsInfo says images use)
--   statvfs         function(path) -> { capacity =, available = } (default:
--                   the runtime's own if it has one (fakes), else kubelua.sys.statvfs)
--   hooks           { images = function(candidates, chosen, ctx) -> final } (kubelua.gc.hook)
--   clock           function() -> seconds (default: the runtime's clock, else task.now)
--   on_event(kind, reason, message)  ImageGCFailed, FreeDiskSpaceFailed, InvalidDiskCapacity
--   on_result(res)  after every run that is not a dry run (metrics)
--
-- Never removed: an image any container uses (running or exited: the ID in
-- its image_ref or image_id, or its image name), the sandbox image, an image
-- the runtime pins. Order: least recently used first (never used first),
-- then first seen first. Passes: age (only once GC has run longer than
-- max_age; ignores min_age), then space. The bytes the age pass frees count
-- toward the space target.
--
-- The result (the plan of a dry run):
--   { dry_run =, time =, disabled =, bytes = (bytes of the images chosen),
--     images = { { id =, tags =, size =, last_used =, first_seen =, rule = "max-age" |
--                  "space" | "policy", done =, error = }, ... },
--     usage = { path =, capacity =, available =, used_bytes =, percent =, high =, low =,
--               to_free = (0 when below high) },
--     kept = { [reason] = { count =, bytes = } }  (in-use, pinned, sandbox-image,
--            keep-pattern, keep-annotation, keep-newest, min-age, not-needed),
--     why = "..." when the space target cannot be met, errors = { ... } }
-- run() returns it, or nil, err, code, result with code POLICY (a hook
-- failed; nothing was removed), INVALID_CAPACITY, FREE_FAILED (not enough
-- could be freed; `why` says what stood in the way) or IMAGE_GC_FAILED.
local hook = require "kubelua.gc.hook"
local store = require "kubelua.gc.store"

local M = {}

M.PERIOD = 300 -- ImageGCPeriod
-- State file name under state_dir and its format tag; option values new() uses when not given.
M.STATE_FILE = "image_gc.state"
M.STATE_FORMAT = "kubelua-image-gc/1"
M.DEFAULTS = { high = 85, low = 80, min_age = 120, max_age = 0, keep_newest = 0, usage = "statvfs" }

local OPTIONS = {
  runtime = "table", high = "number", low = "number", min_age = "number", max_age = "number",
  state_dir = "string", keep = "table", keep_annotations = "table", keep_newest = "number",
  sandbox_image = "string|function", image_fs_path = "string", usage = "string", statvfs = "function",
  hooks = "table", clock = "function|table", on_event = "function", on_result = "function",
}

local function check_options(opts)
  require("kubelua.opts").check(opts, OPTIONS, "kubelua.image_gc.new", 3)
  if opts.runtime == nil then
    error("kubelua.image_gc.new: option runtime (a CRI client) is required", 3)
  end
  local high = opts.high or M.DEFAULTS.high
  local low = opts.low or M.DEFAULTS.low
  -- kubelet's validation messages
  if high < 0 or high > 100 then
    error(string.format("invalid HighThresholdPercent %d, must be in range [0-100]", high), 3)
  end
  if low < 0 or low > 100 then
    error(string.format("invalid LowThresholdPercent %d, must be in range [0-100]", low), 3)
  end
  if low > high then
    error(string.format("LowThresholdPercent %d can not be higher than HighThresholdPercent %d", low, high), 3)
  end
  if opts.usage and opts.usage ~= "statvfs" and opts.usage ~= "image_fs_info" then
    error("kubelua.image_gc.new: option usage must be \"statvfs\" or \"image_fs_info\"", 3)
  end
  for k in pairs(opts.hooks or {}) do
    if k ~= "images" or type(opts.hooks[k]) ~= "function" then
      error("kubelua.image_gc.new: hooks." .. tostring(k) .. ": only an images function is known", 3)
    end
  end
end

local IGC = {}
IGC.__index = IGC

function M.new(opts)
  check_options(opts)
  local self = setmetatable({ hooks = opts.hooks or {}, records = {} }, IGC)
  for k, v in pairs(M.DEFAULTS) do
    self[k] = v
  end
  for k, v in pairs(opts) do
    if k ~= "hooks" then
      self[k] = v
    end
  end
  local rt = opts.runtime
  self.clock = opts.clock or rt.clock or require("kubelua.task").now
  if not self.statvfs then
    if type(rt.statvfs) == "function" then
      self.statvfs = function(path)
        return rt:statvfs(path)
      end
    else
      self.statvfs = require("kubelua.sys").statvfs
    end
  end
  self.loaded_err = nil
  if self.state_dir then
    self:load()
  end
  return self
end

-- Disabled entirely, as kubelet: high = 100 and no maximum age.
function IGC:disabled()
  return self.high >= 100 and self.max_age <= 0
end

-- ------------------------------------------------------------ persistence

-- ig:state_path() -> the state file's path; ig:save() -> true | nil, err: write the times kept.
function IGC:state_path()
  return self.state_dir and (self.state_dir .. "/" .. M.STATE_FILE)
end

-- Read the times kept by an earlier agent. A missing file is a fresh start;
-- an unreadable one is reported (load_err) and ignored.
function IGC:load()
  local data, err, code = store.read_data(self:state_path())
  if not data then
    if code ~= "ENOENT" then
      self.load_err = err
    end
    return nil, err, code
  end
  if data.format ~= M.STATE_FORMAT or type(data.images) ~= "table" then
    self.load_err = "EINVAL: " .. self:state_path() .. ": not an image GC state file"
    return nil, self.load_err, "EINVAL"
  end
  for id, r in pairs(data.images) do
    if type(id) == "string" and type(r) == "table" and type(r.first_seen) == "number" then
      self.records[id] = { first_seen = r.first_seen, last_used = tonumber(r.last_used) or 0, size = 0,
        pinned = false }
    end
  end
  return true
end

function IGC:save()
  if not self.state_dir then
    return true
  end
  local made, merr, mcode = require("kubelua.sys").mkdir_p(self.state_dir, 448) -- 0700
  if not made then
    return nil, merr, mcode
  end
  local images = {}
  for id, r in pairs(self.records) do
    images[id] = { first_seen = r.first_seen, last_used = r.last_used }
  end
  return store.write_atomic(self:state_path(), store.serialize({ format = M.STATE_FORMAT, images = images }))
end

-- ---------------------------------------------------------------- detection

local function names_of(img)
  local out = {}
  for _, t in ipairs(img.repo_tags or {}) do
    out[#out + 1] = t
  end
  for _, d in ipairs(img.repo_digests or {}) do
    out[#out + 1] = d
  end
  return out
end

-- The repository of a tag or digest reference: "reg:5000/a/b:tag" and
-- "reg:5000/a/b@sha256:..." -> "reg:5000/a/b" (a ":" in the last path
-- component starts the tag; one before it is a registry port).
local function repository(ref)
  local name = ref:match("^([^@]*)@") or ref
  local head, last = name:match("^(.*/)([^/]*)$")
  if not head then
    head, last = "", name
  end
  return head .. (last:match("^([^:]*):") or last)
end
M.repository = repository

-- detect(now): refresh the image records (kubelet's detectImages): new
-- images are first seen now, images in use are used now, records of images
-- gone are dropped; the state is saved. -> images, in_use | nil, err, code
function IGC:detect(now)
  now = now or self.clock()
  local res, err, code = require("kubelua.task").all({
    function() return self.runtime:list_images{} end,
    function() return self.runtime:list_containers{} end,
  })
  if not res then
    return nil, err, code
  end
  local images = res[1].images
  local by_name = {}
  for _, img in ipairs(images) do
    by_name[img.id] = img.id
    for _, n in ipairs(names_of(img)) do
      by_name[n] = img.id
    end
  end
  local in_use = {}
  local function use(ref, why)
    local id = ref and ref ~= "" and by_name[ref]
    if id and not in_use[id] then
      in_use[id] = why
    end
  end
  for _, c in ipairs(res[2].containers) do
    use(c.image_ref, "in-use")
    use(c.image_id, "in-use")
    use(c.image and c.image.image, "in-use")
  end
  local sandbox_image = self.sandbox_image
  if type(sandbox_image) == "function" then
    sandbox_image = sandbox_image()
  end
  if sandbox_image then
    use(sandbox_image, "sandbox-image")
  end
  local seen = {}
  for _, img in ipairs(images) do
    local r = self.records[img.id]
    if not r then
      r = { first_seen = now, last_used = 0 }
      self.records[img.id] = r
    end
    if in_use[img.id] then
      r.last_used = now
    end
    r.size = tonumber(img.size) or 0
    r.pinned = img.pinned == true
    seen[img.id] = true
  end
  for id in pairs(self.records) do
    if not seen[id] then
      self.records[id] = nil
    end
  end
  local saved, serr = self:save()
  self.save_err = not saved and serr or nil
  return images, in_use
end

-- ------------------------------------------------------------------ planning

local function kept_add(kept, why, size)
  local k = kept[why]
  if not k then
    k = { count = 0, bytes = 0 }
    kept[why] = k
  end
  k.count = k.count + 1
  k.bytes = k.bytes + size
end

local function matches_keep(self, img)
  for _, pat in ipairs(self.keep or {}) do
    if img.id:find(pat) or img.id:gsub("^sha256:", ""):sub(1, 12):find(pat) then
      return true
    end
    for _, n in ipairs(names_of(img)) do
      if n:find(pat) then
        return true
      end
    end
  end
  return false
end

local function matches_annotation(self, img)
  local ann = img.spec and img.spec.annotations
  if not (self.keep_annotations and ann) then
    return false
  end
  for k, v in pairs(self.keep_annotations) do
    if ann[k] ~= nil and (v == true or ann[k] == v) then
      return true
    end
  end
  return false
end

-- The images protected as the keep_newest newest of a repository.
local function newest_per_repo(self, entries)
  local keep = {}
  if self.keep_newest <= 0 then
    return keep
  end
  local repos = {}
  for _, e in ipairs(entries) do
    local mine = {}
    for _, n in ipairs(e.names) do
      local repo = repository(n)
      if not mine[repo] then
        mine[repo] = true
        repos[repo] = repos[repo] or {}
        table.insert(repos[repo], e)
      end
    end
  end
  for _, list in pairs(repos) do
    table.sort(list, function(a, b)
      if a.first_seen ~= b.first_seen then
        return a.first_seen > b.first_seen
      end
      return a.id > b.id
    end)
    for i = 1, math.min(self.keep_newest, #list) do
      keep[list[i].id] = true
    end
  end
  return keep
end

-- kubelet 2.4: least recently used first, then first seen first (ID for ties).
local function eviction_order(a, b)
  if a.last_used ~= b.last_used then
    return a.last_used < b.last_used
  end
  if a.first_seen ~= b.first_seen then
    return a.first_seen < b.first_seen
  end
  return a.id < b.id
end

local function fmt_bytes(n)
  return string.format("%d bytes", n)
end

-- Why the space target cannot be met, from what was kept.
local function explain(kept, to_free, eligible, usage)
  local parts = {}
  local labels = {
    { "in-use", "in use by a container" },
    { "sandbox-image", "the sandbox image" },
    { "pinned", "pinned by the runtime" },
    { "min-age", "younger than the minimum age" },
    { "keep-pattern", "kept by a pattern" },
    { "keep-annotation", "kept by an annotation" },
    { "keep-newest", "among the newest of their repository" },
    { "policy", "kept by the policy hook" },
  }
  for _, l in ipairs(labels) do
    local k = kept[l[1]]
    if k then
      parts[#parts + 1] = string.format("%d %s (%s)", k.count, l[2], fmt_bytes(k.bytes))
    end
  end
  local s = string.format("Failed to garbage collect required amount of images. Attempted to free %d bytes, "
    .. "but only found %d bytes eligible to free.", to_free, eligible)
  if #parts > 0 then
    s = s .. " Not eligible: " .. table.concat(parts, ", ") .. "."
  else
    s = s .. " There are no other images."
  end
  -- (containerd samples used bytes every few seconds; 0 means not yet)
  if usage.used_bytes and usage.used_bytes > 0 and usage.used_bytes < to_free then
    s = s .. string.format(" Images use %d bytes of %s; the rest of the filesystem is other files.",
      usage.used_bytes, usage.path or "the image filesystem")
  end
  return s
end

-- Capacity and usage of the image filesystem (kubelet 2.5 steps 3-4).
local function measure(self, res)
  local fsinfo, err, code = self.runtime:image_fs_info{}
  if not fsinfo then
    return nil, err, code
  end
  local fs1 = fsinfo.image_filesystems and fsinfo.image_filesystems[1]
  local path = self.image_fs_path or (fs1 and fs1.fs_id and fs1.fs_id.mountpoint)
  if not path or path == "" then
    return nil, "INVALID_CAPACITY: the runtime reports no image filesystem", "INVALID_CAPACITY"
  end
  local st, serr, scode = self.statvfs(path)
  if not st then
    return nil, serr, scode
  end
  local used = fs1 and fs1.used_bytes and tonumber(fs1.used_bytes.value) or nil
  local capacity = tonumber(st.capacity) or 0
  local available = tonumber(st.available) or 0
  if self.usage == "image_fs_info" then
    available = capacity - (used or 0)
  end
  if available > capacity then
    available = capacity
  end
  if available < 0 then
    available = 0
  end
  local u = { path = path, capacity = capacity, available = available, used_bytes = used, high = self.high,
    low = self.low, to_free = 0 }
  res.usage = u
  if capacity == 0 then
    return nil, "INVALID_CAPACITY: invalid capacity 0 on image filesystem", "INVALID_CAPACITY"
  end
  u.percent = 100 - math.floor(available * 100 / capacity)
  return u
end

local function make_plan(self, res)
  local now = res.time
  local images, in_use, dcode = self:detect(now)
  if not images then
    return nil, in_use, dcode
  end
  self.began = self.began or now
  local kept = res.kept
  local entries, candidates = {}, {}
  for _, img in ipairs(images) do
    local r = self.records[img.id]
    local e = { kind = "image", id = img.id, tags = img.repo_tags or {}, digests = img.repo_digests or {},
      names = names_of(img), size = r.size, pinned = r.pinned, first_seen = r.first_seen, last_used = r.last_used,
      image = img }
    entries[#entries + 1] = e
  end
  local newest = newest_per_repo(self, entries)
  for _, e in ipairs(entries) do
    local why = in_use[e.id]
    if not why and e.pinned then
      why = "pinned"
    end
    if not why and matches_keep(self, e.image) then
      why = "keep-pattern"
    end
    if not why and matches_annotation(self, e.image) then
      why = "keep-annotation"
    end
    if not why and newest[e.id] then
      why = "keep-newest"
    end
    e.protected = why
    e.image = nil
    candidates[#candidates + 1] = e
  end
  local order = {}
  for _, e in ipairs(candidates) do
    if not e.protected then
      order[#order + 1] = e
    else
      kept_add(kept, e.protected, e.size)
    end
  end
  table.sort(order, eviction_order)

  local chosen, freed = {}, 0
  -- age pass: only once GC has run for longer than max_age
  if self.max_age > 0 and now - self.began > self.max_age then
    for _, e in ipairs(order) do
      if now - e.last_used > self.max_age then
        e.rule = "max-age"
        chosen[#chosen + 1] = e
        freed = freed + e.size
      end
    end
  end
  -- space pass
  local usage, err, code = measure(self, res)
  if not usage then
    return nil, err, code
  end
  if usage.percent >= self.high then
    local target = math.floor(usage.capacity * (100 - self.low) / 100) - usage.available
    usage.to_free = target
    local need = target - freed
    local got = 0
    for _, e in ipairs(order) do
      if got >= need then
        if not e.rule then
          kept_add(kept, "not-needed", e.size)
        end
      elseif not e.rule then
        if e.last_used >= now then
          e.protected = "in-use"
          kept_add(kept, "in-use", e.size)
        elseif now - e.first_seen < self.min_age then
          e.protected = "min-age"
          kept_add(kept, "min-age", e.size)
        else
          e.rule = "space"
          chosen[#chosen + 1] = e
          got = got + e.size
        end
      end
    end
    if got < need then
      res.short = { to_free = target, eligible = got + freed }
    end
  end
  local ctx = { now = now, usage = usage, policy = self, records = self.records }
  local final = chosen
  if self.hooks.images then
    local ferr
    final, ferr = hook.run("images", self.hooks.images, candidates, chosen, ctx, {
      forbidden = function(e)
        if e.protected == "in-use" or e.protected == "sandbox-image" then
          return "it is in use"
        elseif e.protected == "pinned" then
          return "it is pinned"
        end
      end,
    })
    if not final then
      return nil, ferr, "POLICY"
    end
    local in_final = {}
    for _, e in ipairs(final) do
      in_final[e] = true
    end
    for _, e in ipairs(chosen) do
      if not in_final[e] then
        kept_add(kept, "policy", e.size)
      end
    end
    res.short = nil
    if usage.to_free > 0 then
      local sum = 0
      for _, e in ipairs(final) do
        sum = sum + e.size
      end
      if sum < usage.to_free then
        res.short = { to_free = usage.to_free, eligible = sum }
      end
    end
  end
  res.images = final
  local bytes = 0
  for _, e in ipairs(final) do
    bytes = bytes + e.size
  end
  res.bytes = bytes
  if res.short then
    res.why = explain(kept, res.short.to_free, res.short.eligible, usage)
  end
  return res
end

local function finish(self, res)
  if #res.errors == 0 then
    return res
  end
  res.err = res.code .. ": " .. table.concat(res.errors, "; ")
  if self.on_event and not res.dry_run and not res.quiet then
    local reason = res.code == "FREE_FAILED" and "FreeDiskSpaceFailed"
      or res.code == "INVALID_CAPACITY" and "InvalidDiskCapacity" or "ImageGCFailed"
    self.on_event("Warning", reason, res.err)
  end
  return nil, res.err, res.code, res
end

-- ig:run{ dry_run =, quiet = (no events) } -> result | nil, err, code, result
local function run(self, opts)
  opts = opts or {}
  local res = { dry_run = opts.dry_run and true or false, quiet = opts.quiet, time = self.clock(), images = {},
    kept = {}, errors = {}, bytes = 0 }
  if self:disabled() then
    res.disabled = true
    return res
  end
  local ok, err, code = make_plan(self, res)
  if not ok then
    res.images = {}
    res.errors = { err }
    res.code = code
    if code == "POLICY" then
      res.policy_error = err
    end
    return finish(self, res)
  end
  if not res.dry_run then
    local failed = {}
    for _, e in ipairs(res.images) do
      local done, rerr = self.runtime:remove_image{ image = { image = e.id } }
      if done then
        e.done = true
        self.records[e.id] = nil
      else
        e.done, e.error = false, rerr
        failed[#failed + 1] = e.id:sub(1, 19) .. ": " .. tostring(rerr)
      end
    end
    if #failed > 0 then
      local freed = 0
      for _, e in ipairs(res.images) do
        if e.done then
          freed = freed + e.size
        end
      end
      res.errors[#res.errors + 1] = string.format("wanted to free %d bytes, but freed %d bytes space with errors "
        .. "in image deletion: %s", res.bytes, freed, table.concat(failed, "; "))
      res.code = "IMAGE_GC_FAILED"
    end
    local saved, serr = self:save()
    self.save_err = not saved and serr or nil
  end
  if self.save_err then
    res.errors[#res.errors + 1] = "could not save the image GC state: " .. tostring(self.save_err)
    res.code = res.code or "IMAGE_GC_FAILED"
  end
  if res.why then
    res.errors[#res.errors + 1] = res.why
    res.code = res.code or "FREE_FAILED"
  end
  return finish(self, res)
end

-- on_result(res) (an option) sees every run that was not a dry run, failed
-- ones included (their partial result).
function IGC:run(opts)
  return hook.report(self, run, opts)
end

function IGC:plan()
  return self:run{ dry_run = true }
end

-- Detect every 5 minutes and collect every `period` (300) seconds until
-- stop(); failures become events through on_event (the first one is only
-- remembered, as kubelet does: stats may not be ready yet).
function IGC:start(opts)
  local task = require "kubelua.task"
  assert(not self.loop, "kubelua.image_gc: already started")
  local failures = 0
  self.loop = task.every(opts and opts.period or M.PERIOD, function()
    -- kubelet only logs the first failure (stats may not be ready yet);
    -- consecutive ones become events
    local res, _, _, partial = self:run{ quiet = failures == 0 }
    self.last = res or partial
    failures = res and 0 or failures + 1
  end)
end

function IGC:stop()
  local loop = self.loop
  self.loop = nil
  return loop and loop:stop()
end

M.ImageGC = IGC
return M
