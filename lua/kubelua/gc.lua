-- kubelua.gc: container, sandbox and pod log garbage collection, as policy.
-- Behaviour: kubelet-behaviour.md section 1 (kubelet's algorithm and
-- defaults), plus the options users ask for (ecosystem.md C).
--
--   local gc = require "kubelua.gc"
--   local g = gc.new{ runtime = rt, config = pc }       -- pc: kubelua.config (sources)
--   local plan = g:plan()                                -- dry run: what would go, and why
--   local res, err, code = g:run()                       -- the same, then done
--   g:start()  ...  g:stop()                             -- every minute (kubelet's period)
--
-- Options of gc.new (all optional but runtime):
--   runtime                 a CRI client, or a kubelua.testing fake
--   min_age                 seconds since creation before a dead container may go (0)
--   max_per_pod_container   dead containers kept per (pod UID, container name); < 0: no limit (1)
--   max_containers          dead containers kept on the node; < 0: no limit (-1)
--   exited_grace            seconds after a container *exits* before it may go (0: off)
--   keep_failed             seconds to keep a container that exited non-zero (0: off),
--                           and its pod's log folder with it
--   keep_labels             { [label] = value | true }: containers carrying one never go
--   pod_logs_dir            pod log root, "<ns>_<name>_<uid>" folders ("/var/log/pods")
--   container_logs_dir      legacy log links ("/var/log/containers"); false: skip
--   config                  a kubelua.config PodConfig: sources readiness and known pods
--   sources_ready           boolean or function() overriding config:all_ready()
--   pod_removed(uid)        kubelet's ShouldPodContentBeRemoved, overriding the default
--   pod_terminated(uid)     kubelet's ShouldPodRuntimeBeRemoved, overriding the default
--   hooks                   { containers =, sandboxes =, logs = }: see kubelua.gc.hook
--   kill_grace              seconds given to an unknown-state container's stop (2)
--   concurrency             removals in flight at once (8)
--   container_sizes         ask the runtime for writable layer sizes (bytes of containers):
--                           true, false, or nil (default: in dry runs only)
--   clock                   function() -> seconds (default: the runtime's clock, else task.now)
--   on_event(kind, reason, message)  node events (ContainerGCFailed)
--   on_result(res)          after every run that is not a dry run (metrics)
--   sys                     the file-system primitives (default kubelua.sys; specs may replace them)
--
-- Without config or pod_removed, no pod counts as removed (kubelet's answer
-- before its pod workers have synced), so only the per-unit and node caps
-- apply. With config: a pod no source knows is removed once all sources
-- are ready; a pod with a deletion timestamp is removed once nothing of it
-- runs; pod_terminated also counts pods in phase Succeeded or Failed.
--
-- A run plans every step before removing anything: containers, then
-- sandboxes as they would be once those containers are gone, then log
-- folders. Each step's hook gets the candidates and the default choice and
-- returns the final list. Then the plan is carried out: unknown-state
-- containers are stopped first (skipped if that fails), containers removed;
-- sandboxes are listed again and one that has become active since is left
-- alone; sandboxes are stopped then removed; log folders and dangling log
-- links are deleted. Every step runs; errors are collected.
--
-- The result (also the plan of a dry run):
--   { dry_run =, time =, sources_ready =, bytes = (known bytes freed),
--     sizes_error = (why the runtime gave no container sizes, when asked),
--     containers = { { id =, name =, pod_uid =, sandbox_id =, state =, created = (seconds),
--                      rule =, kill_first =, bytes = (false: unknown), done =, error =,
--                      raw = (the CRI Container), finished =, exit_code = (when fetched);
--                      read from raw on access: attempt, labels, namespace, pod_name,
--                      pod = "ns/name", image, image_ref, unknown }, ... },
--     sandboxes = { { id =, pod_uid =, state =, created =, rule =, raw =, done =, skipped =,
--                     error =; on access: namespace, pod_name, pod, labels } },
--     log_dirs = { { path =, name =, pod_uid =, rule =, bytes =, done =, error = } },
--     log_links = { { path =, container_id =, rule =, done =, error = } },
--     summary = { containers =, dead =, protected = { [reason] = n }, sandboxes = },
--     errors = { "..." } }
-- run() returns it, or nil, err, code, result: code "POLICY" (a hook
-- failed; nothing was removed), "UNAVAILABLE"/... (the runtime could not be
-- listed) or "GC_FAILED" (some removals failed; the rest were done).
local choose = require "kubelua.gc.select"
local hook = require "kubelua.gc.hook"

local M = {}

M.PERIOD = 60 -- ContainerGCPeriod
M.KILL_GRACE = 2 -- minimumGracePeriodInSeconds
-- Option values gc.new uses when they are not given (kubelet's).
M.DEFAULTS = {
  min_age = 0,
  max_per_pod_container = 1,
  max_containers = -1,
  exited_grace = 0,
  keep_failed = 0,
  pod_logs_dir = "/var/log/pods",
  container_logs_dir = "/var/log/containers",
  kill_grace = M.KILL_GRACE,
  concurrency = 8,
}

local UID_LABEL = "io.kubernetes.pod.uid"
local NAME_LABEL = "io.kubernetes.pod.name"
local NS_LABEL = "io.kubernetes.pod.namespace"

local OPTIONS = {
  runtime = "table", min_age = "number", max_per_pod_container = "number", max_containers = "number",
  exited_grace = "number", keep_failed = "number", keep_labels = "table", pod_logs_dir = "string",
  container_logs_dir = "string|boolean", config = "table", sources_ready = "boolean|function",
  pod_removed = "function", pod_terminated = "function", hooks = "table", kill_grace = "number",
  concurrency = "number", clock = "function|table", on_event = "function", sys = "table",
  container_sizes = "boolean", on_result = "function",
}

local function check_options(opts)
  require("kubelua.opts").check(opts, OPTIONS, "kubelua.gc.new", 3)
  if opts.runtime == nil then
    error("kubelua.gc.new: option runtime (a CRI client) is required", 3)
  end
  if opts.min_age and opts.min_age < 0 then
    error("kubelua.gc.new: invalid minimum garbage collection age: " .. opts.min_age, 3)
  end
  for _, h in ipairs({ "containers", "sandboxes", "logs" }) do
    if opts.hooks and opts.hooks[h] ~= nil and type(opts.hooks[h]) ~= "function" then
      error("kubelua.gc.new: hooks." .. h .. " must be a function", 3)
    end
  end
  for k in pairs(opts.hooks or {}) do
    if k ~= "containers" and k ~= "sandboxes" and k ~= "logs" then
      error("kubelua.gc.new: unknown hook " .. tostring(k) .. " (containers, sandboxes, logs)", 3)
    end
  end
end

-- secs(ns) -> seconds (a float) from CRI nanoseconds (number or boxed int64).
local function secs(ns)
  return (tonumber(ns) or 0) / 1e9
end
M.secs = secs

local GC = {}
GC.__index = GC

-- new(opts) -> a collector (g); the options are listed above. Misuse throws.
function M.new(opts)
  check_options(opts)
  local self = setmetatable({ hooks = opts.hooks or {} }, GC)
  for k, v in pairs(M.DEFAULTS) do
    self[k] = v
  end
  for k, v in pairs(opts) do
    if k ~= "hooks" then
      self[k] = v
    end
  end
  self.clock = opts.clock or opts.runtime.clock or require("kubelua.task").now
  self.sys = opts.sys or require "kubelua.sys"
  return self
end

-- ------------------------------------------------------------ pod state

-- g:all_sources_ready() -> whether every pod source has synced (sources_ready, else config).
function GC:all_sources_ready()
  local s = self.sources_ready
  if type(s) == "function" then
    return s() and true or false
  elseif s ~= nil then
    return s
  end
  if self.config then
    return self.config:all_ready()
  end
  return false
end

-- Pod predicates for one run: removed(uid), terminated(uid). `running`:
-- pod UIDs that have a running container or a ready sandbox.
local function pod_predicates(self, sources_ready, running)
  local removed, terminated = self.pod_removed, self.pod_terminated
  if removed and terminated then
    return removed, terminated
  end
  local known
  if self.config then
    known = {}
    for _, pod in ipairs(self.config:all_pods()) do
      local md = pod.metadata or {}
      if md.uid then
        known[md.uid] = pod
      end
    end
  end
  local function default_removed(uid)
    if not known then
      return false
    end
    local pod = known[uid]
    if not pod then
      return sources_ready -- unknown pods: once the sources are synced
    end
    return pod.metadata.deletionTimestamp ~= nil and not running[uid]
  end
  local function default_terminated(uid)
    if not known then
      return false
    end
    local pod = known[uid]
    if not pod then
      return sources_ready
    end
    local phase = pod.status and pod.status.phase
    return (pod.metadata.deletionTimestamp ~= nil or phase == "Succeeded" or phase == "Failed")
      and not running[uid]
  end
  return removed or default_removed, terminated or default_terminated
end

-- ----------------------------------------------------------------- listing

-- Entries: what the policy sees of a container or a sandbox. Built for
-- every container of the node, so they are lean: the fields the algorithm
-- reads, `raw` (the CRI table) and slots filled later; the rest is derived
-- from raw when read (kind, attempt, labels, namespace, pod_name, pod =
-- "namespace/name", image, image_ref, unknown).
local derive = {
  container = {
    kind = function() return "container" end,
    attempt = function(raw) return raw.metadata and raw.metadata.attempt or 0 end,
    labels = function(raw) return raw.labels or {} end,
    namespace = function(raw) return raw.labels and raw.labels[NS_LABEL] or "" end,
    pod_name = function(raw) return raw.labels and raw.labels[NAME_LABEL] or "" end,
    image = function(raw) return raw.image and raw.image.image or "" end,
    image_ref = function(raw) return raw.image_ref or "" end,
    unknown = function(raw) return raw.state == "CONTAINER_UNKNOWN" end,
  },
  sandbox = {
    kind = function() return "sandbox" end,
    namespace = function(raw) return raw.metadata and raw.metadata.namespace or "" end,
    pod_name = function(raw) return raw.metadata and raw.metadata.name or "" end,
    labels = function(raw) return raw.labels or {} end,
  },
}
local function entry_mt(kind)
  local d = derive[kind]
  return { __index = function(e, k)
    if k == "pod" then
      return e.namespace .. "/" .. e.pod_name
    end
    local f = d[k]
    if f then
      return f(rawget(e, "raw"))
    end
  end }
end
local CONTAINER_MT, SANDBOX_MT = entry_mt("container"), entry_mt("sandbox")

local function container_entry(c, sandbox_uid)
  local labels = c.labels
  local md = c.metadata
  local sb = c.pod_sandbox_id or ""
  return setmetatable({
    id = c.id,
    name = md and md.name or "",
    pod_uid = labels and labels[UID_LABEL] or sandbox_uid[sb] or sb,
    sandbox_id = sb,
    state = c.state,
    created = secs(c.created_at),
    raw = c,
    rule = false,
    protected = false,
    kill_first = false,
    bytes = false,
  }, CONTAINER_MT)
end

local function sandbox_entry(s)
  local md = s.metadata or {}
  local uid = md.uid
  if uid == nil or uid == "" then
    uid = s.labels and s.labels[UID_LABEL] or s.id
  end
  return setmetatable({
    id = s.id,
    pod_uid = uid,
    state = s.state,
    created = secs(s.created_at),
    raw = s,
    rule = false,
    active = false,
  }, SANDBOX_MT)
end

-- Containers and sandboxes, as entries. -> sandboxes, containers | nil, err, code
local function list_runtime(self)
  local res, err, code = require("kubelua.task").all({
    function() return self.runtime:list_pod_sandbox{} end,
    function() return self.runtime:list_containers{} end,
  })
  if not res then
    return nil, err, code
  end
  local sandboxes, sandbox_uid = {}, {}
  for i, s in ipairs(res[1].items) do
    local e = sandbox_entry(s)
    sandboxes[i] = e
    sandbox_uid[e.id] = e.pod_uid
  end
  local containers = {}
  for i, c in ipairs(res[2].containers) do
    containers[i] = container_entry(c, sandbox_uid)
  end
  return sandboxes, containers
end

-- Run fns (functions) with at most n in flight.
local function in_batches(fns, n)
  local task = require "kubelua.task"
  for i = 1, #fns, n do
    local batch = {}
    for j = i, math.min(i + n - 1, #fns) do
      batch[#batch + 1] = fns[j]
    end
    if #batch == 1 then
      batch[1]()
    else
      local res = task.gather(batch)
      for _, r in ipairs(res) do
        if not r[1] then
          error(r[2], 0)
        end
      end
    end
  end
end

-- Exit times and codes (only ContainerStatus has them), for the entries
-- that need them.
local function fetch_statuses(self, entries)
  local fns = {}
  for _, e in ipairs(entries) do
    fns[#fns + 1] = function()
      local st = self.runtime:container_status{ container_id = e.id }
      if st and st.status then
        local f = secs(st.status.finished_at)
        e.finished = f > 0 and f or nil
        e.exit_code = st.status.exit_code
        e.reason = st.status.reason
      end
    end
  end
  in_batches(fns, math.max(self.concurrency, 16))
end

-- Writable layer sizes, when the runtime reports them (one call; optional).
-- -> sizes [, err]: err when the runtime answered with an error (e.g.
-- UNIMPLEMENTED), so a plan can say its byte counts lack the containers.
local function fetch_sizes(self)
  local ok, r, err = pcall(self.runtime.list_container_stats, self.runtime, {})
  local sizes = {}
  if ok and not r and err then
    return sizes, tostring(err)
  end
  if ok and r then
    for _, s in ipairs(r.stats or {}) do
      local wl = s.writable_layer
      if s.attributes and wl and wl.used_bytes then
        sizes[s.attributes.id] = tonumber(wl.used_bytes.value)
      end
    end
  end
  return sizes
end

-- -------------------------------------------------------------- planning

local function protector(self, now)
  local grace, keep_failed, keep_labels = self.exited_grace, self.keep_failed, self.keep_labels
  if grace <= 0 and keep_failed <= 0 and not keep_labels then
    return nil
  end
  return function(e)
    if keep_labels then
      for k, v in pairs(keep_labels) do
        local have = e.labels[k]
        if have ~= nil and (v == true or have == v) then
          return "keep-label"
        end
      end
    end
    local ended = e.finished or e.created
    if keep_failed > 0 and e.state == "CONTAINER_EXITED" and (e.exit_code or 0) ~= 0
      and now - ended < keep_failed then
      return "keep-failed"
    end
    if grace > 0 and now - ended < grace then
      return "exited-grace"
    end
  end
end

local function run_hook(self, step, candidates, chosen, ctx, opts)
  local fn = self.hooks[step]
  if not fn then
    return chosen
  end
  return hook.run(step, fn, candidates, chosen, ctx, opts)
end

local function bytes_of(list)
  local n = 0
  for _, e in ipairs(list) do
    n = n + (e.bytes or 0)
  end
  return n
end

-- The plan of one run, made before anything is touched.
-- -> plan | nil, err, code (POLICY)
local function make_plan(self, opts, res)
  local now = res.time
  local sources_ready = res.sources_ready
  local evict_all = opts.evict_non_deleted and true or false
  local sandboxes, containers = res._sandboxes, res._containers

  local running = {}
  for _, s in ipairs(sandboxes) do
    if s.state == "SANDBOX_READY" then
      running[s.pod_uid] = true
    end
  end
  for _, c in ipairs(containers) do
    if c.state == "CONTAINER_RUNNING" then
      running[c.pod_uid] = true
    end
  end
  local removed, terminated = pod_predicates(self, sources_ready, running)
  local memo = {}
  local function removable(uid)
    local r = memo[uid]
    if r == nil then
      if removed(uid) then
        r = "deleted-pod"
      elseif evict_all and terminated(uid) then
        r = "terminated-pod"
      else
        r = false
      end
      memo[uid] = r
    end
    return r or nil
  end
  local function content_removable(uid)
    return removed(uid) and "deleted-pod" or nil
  end
  local ctx = { now = now, sources_ready = sources_ready, evict_non_deleted = evict_all, policy = self,
    removable = removable }

  -- step 1: containers
  local protect = protector(self, now)
  if protect then
    local need = {}
    local cutoff = now - self.min_age
    for _, c in ipairs(containers) do
      if c.state ~= "CONTAINER_RUNNING" and c.created <= cutoff then
        need[#need + 1] = c
      end
    end
    fetch_statuses(self, need)
  end
  local chosen, candidates = choose.containers(containers, {
    now = now, min_age = self.min_age, max_per_pod_container = self.max_per_pod_container,
    max_containers = self.max_containers, sources_ready = sources_ready, removable = removable,
    protect = protect,
  })
  local summary = res.summary
  summary.containers, summary.dead, summary.protected = #containers, #candidates, {}
  for _, c in ipairs(candidates) do
    if c.protected then
      summary.protected[c.protected] = (summary.protected[c.protected] or 0) + 1
    end
  end
  local final, err = run_hook(self, "containers", candidates, chosen, ctx, {
    forbidden = function(e)
      return e.state == "CONTAINER_RUNNING" and "it is running" or nil
    end,
  })
  if not final then
    return nil, err, "POLICY"
  end
  local sizes = res._sizes
  for _, c in ipairs(final) do
    c.kill_first = c.state == "CONTAINER_UNKNOWN"
    c.bytes = sizes[c.id] or false
  end
  res.containers = final

  -- step 2: sandboxes, as they will be once those containers are gone
  -- (exactly the final entries carry a rule: the selection clears it on
  -- every candidate, the hook runner on whatever it drops)
  local remaining, n = {}, 0
  for _, c in ipairs(containers) do
    if not c.rule then
      n = n + 1
      remaining[n] = c
    end
  end
  local sb_chosen, sb_candidates = choose.sandboxes(sandboxes, remaining, { removable = removable })
  summary.sandboxes = #sandboxes
  final, err = run_hook(self, "sandboxes", sb_candidates, sb_chosen, ctx, {
    forbidden = function(s)
      return s.active and "it is active (ready, or a container uses it)" or nil
    end,
  })
  if not final then
    return nil, err, "POLICY"
  end
  res.sandboxes = final

  -- step 3: pod log folders (only once the sources are ready) and legacy links
  local keep_logs
  if self.keep_failed > 0 then
    keep_logs = {}
    for _, c in ipairs(remaining) do
      if c.protected == "keep-failed" then
        keep_logs[c.pod_uid] = "keep-failed"
      end
    end
  end
  local names = {}
  if sources_ready and self.pod_logs_dir then
    local list, lerr = self.sys.readdir(self.pod_logs_dir)
    if list then
      table.sort(list)
      names = list
    elseif not lerr:match("^ENOENT") then
      res.errors[#res.errors + 1] = string.format("failed to read podLogsDirectory %q: %s", self.pod_logs_dir, lerr)
    end
  end
  local ld_chosen, ld_candidates = choose.log_dirs(names, {
    sources_ready = sources_ready, removable = content_removable,
    keep = keep_logs and function(uid) return keep_logs[uid] end,
  })
  for _, d in ipairs(ld_candidates) do
    d.path = self.pod_logs_dir .. "/" .. d.name
    d.kind = "log_dir"
  end
  final, err = run_hook(self, "logs", ld_candidates, ld_chosen, ctx, { key = function(d) return d.name end })
  if not final then
    return nil, err, "POLICY"
  end
  for _, d in ipairs(final) do
    d.bytes = self.sys.du(d.path) or false
  end
  res.log_dirs = final

  res.log_links = {}
  if self.container_logs_dir then
    local by_id = {}
    for _, c in ipairs(remaining) do
      by_id[c.id] = c
    end
    local list = self.sys.readdir(self.container_logs_dir) or {}
    table.sort(list)
    for _, name in ipairs(list) do
      local path = self.container_logs_dir .. "/" .. name
      if name:match("%.log$") then
        local st = self.sys.lstat(path)
        if st and st.type == "link" then
          local _, _, code = self.sys.stat(path)
          if code == "ENOENT" then
            local id = choose.log_link_container(name)
            local c = id and by_id[id]
            -- kubelet asks ContainerStatus: gone (an error) -> remove; not
            -- exited -> keep (rotation briefly leaves the target missing).
            if id and (not c or c.state == "CONTAINER_EXITED") then
              res.log_links[#res.log_links + 1] = { kind = "log_link", path = path, name = name,
                container_id = id or "", rule = "dangling-link" }
            end
          end
        end
      end
    end
  end
  res.bytes = bytes_of(res.containers) + bytes_of(res.log_dirs)
  return res
end

-- --------------------------------------------------------------- carrying out

local function short(id)
  return tostring(id):sub(1, 13)
end

local function remove_containers(self, res)
  local rt, errors = self.runtime, res.errors
  local fns = {}
  for _, c in ipairs(res.containers) do
    fns[#fns + 1] = function()
      if c.kill_first then
        -- kubelet: "Container is in unknown state, try killing it before removal"
        local ok, err = rt:stop_container{ container_id = c.id, timeout = self.kill_grace }
        if not ok then
          c.done, c.error = false, "failed to kill container " .. short(c.id) .. ": " .. tostring(err)
          errors[#errors + 1] = c.error
          return
        end
      end
      local ok, err = rt:remove_container{ container_id = c.id }
      if ok then
        c.done = true
      else
        c.done, c.error = false, "failed to remove container " .. short(c.id) .. ": " .. tostring(err)
        errors[#errors + 1] = c.error
      end
    end
  end
  in_batches(fns, self.concurrency)
end

local function remove_sandboxes(self, res)
  local rt, errors = self.runtime, res.errors
  if #res.sandboxes == 0 then
    return
  end
  -- kubelet lists again before this step; anything that became active since
  -- the plan (a container failed to go, a pod came back) is left alone.
  local sandboxes, containers = list_runtime(self)
  if not sandboxes then
    local err = containers
    for _, s in ipairs(res.sandboxes) do
      s.done, s.skipped = false, "listing failed"
    end
    errors[#errors + 1] = "sandbox GC skipped: " .. tostring(err)
    return
  end
  local state, used = {}, {}
  for _, s in ipairs(sandboxes) do
    state[s.id] = s.state
  end
  for _, c in ipairs(containers) do
    used[c.sandbox_id] = true
  end
  local fns = {}
  for _, s in ipairs(res.sandboxes) do
    if state[s.id] == nil then
      s.done = true -- already gone
    elseif state[s.id] == "SANDBOX_READY" or used[s.id] then
      s.done, s.skipped = false, "became active"
    else
      fns[#fns + 1] = function()
        local ok, err, code = rt:stop_pod_sandbox{ pod_sandbox_id = s.id }
        if not ok and code ~= "NOT_FOUND" then
          s.done, s.error = false, "failed to stop sandbox " .. short(s.id) .. ": " .. tostring(err)
          errors[#errors + 1] = s.error
          return
        end
        ok, err = rt:remove_pod_sandbox{ pod_sandbox_id = s.id }
        if ok then
          s.done = true
        else
          s.done, s.error = false, "failed to remove sandbox " .. short(s.id) .. ": " .. tostring(err)
          errors[#errors + 1] = s.error
        end
      end
    end
  end
  in_batches(fns, self.concurrency)
end

local function remove_logs(self, res)
  local errors = res.errors
  for _, d in ipairs(res.log_dirs) do
    local ok, err = self.sys.remove_all(d.path)
    d.done = ok and true or false
    if not ok then
      d.error = err
      errors[#errors + 1] = "failed to remove pod log folder " .. d.path .. ": " .. tostring(err)
    end
  end
  for _, l in ipairs(res.log_links) do
    local ok, err = os.remove(l.path)
    l.done = ok and true or false
    if not ok then
      l.error = err
      errors[#errors + 1] = "failed to remove log link " .. l.path .. ": " .. tostring(err)
    end
  end
end

local function finish(res)
  res._sandboxes, res._containers, res._sizes = nil, nil, nil
  if #res.errors == 0 then
    return res
  end
  local code = res.code or "GC_FAILED"
  res.err = code .. ": " .. table.concat(res.errors, "; ")
  res.code = code
  return nil, res.err, code, res
end

-- g:run{ dry_run =, evict_non_deleted = } -> result | nil, err, code, result
-- evict_non_deleted: also remove whatever belongs to terminated pods
-- (kubelet's DeleteAllUnusedContainers, used under disk pressure).
local function run(self, opts)
  opts = opts or {}
  local res = {
    dry_run = opts.dry_run and true or false,
    time = self.clock(),
    sources_ready = self:all_sources_ready(),
    containers = {}, sandboxes = {}, log_dirs = {}, log_links = {},
    summary = {}, errors = {}, bytes = 0,
  }
  local sandboxes, containers, lcode = list_runtime(self)
  if not sandboxes then
    -- Neither containers nor sandboxes can be planned; the log step still
    -- can (it needs the pod predicates only), as kubelet's steps are apart.
    res.errors[1] = "failed to list the runtime: " .. tostring(containers)
    res.code = lcode
    sandboxes, containers = {}, {}
  end
  res._sandboxes, res._containers = sandboxes, containers
  -- writable layer sizes: one ListContainerStats call, which makes the
  -- runtime read every running container's stats, so only for plans
  -- unless asked for
  local sizes = self.container_sizes
  if sizes == nil then
    sizes = res.dry_run
  end
  res._sizes = {}
  if sizes and #containers > 0 then
    res._sizes, res.sizes_error = fetch_sizes(self)
  end
  local ok, err, code = make_plan(self, opts, res)
  if not ok then
    res.containers, res.sandboxes, res.log_dirs, res.log_links = {}, {}, {}, {}
    res.policy_error = err
    res.errors = { err }
    res.code = code
    return finish(res)
  end
  if res.dry_run then
    return finish(res)
  end
  remove_containers(self, res)
  remove_sandboxes(self, res)
  remove_logs(self, res)
  return finish(res)
end

-- on_result(res) (an option) sees every run that was not a dry run, failed
-- ones included (their partial result).
function GC:run(opts)
  return hook.report(self, run, opts)
end

-- The plan alone (a dry run): nothing is touched.
function GC:plan(opts)
  local o = {}
  for k, v in pairs(opts or {}) do
    o[k] = v
  end
  o.dry_run = true
  return self:run(o)
end

-- Run every `period` seconds (60) until stop(); failures are reported as
-- ContainerGCFailed events through on_event.
function GC:start(opts)
  local task = require "kubelua.task"
  assert(not self.loop, "kubelua.gc: already started")
  self.loop = task.every(opts and opts.period or M.PERIOD, function()
    local res, err, _, partial = self:run(opts)
    self.last = res or partial
    if not res and self.on_event then
      self.on_event("Warning", "ContainerGCFailed", err)
    end
  end)
end

-- g:stop(): end the periodic runs g:start() began.
function GC:stop()
  local loop = self.loop
  self.loop = nil
  return loop and loop:stop()
end

M.GC = GC
return M
