-- kubelua.podsync: pod workers that make the runtime match the desired pods
-- (kubelet's pod workers + SyncPod/computePodActions, behaviour sections
-- 3.4, 6.5, 7.2, 8 and 9).
--
--   local podsync = require "kubelua.podsync"
--   local ps = podsync.new{ client = rt, node = "node-1", pod_logs_dir = "/var/log/pods",
--     backoff = { initial = 10, max = 300, reset = 600 } }
--   pc = config.new{ on_update = function(u) ps:update(u) end }   -- merged updates
--   prober:subscribe(function(u) ps:on_probe_result(u.pod_uid, u.container_name, u.kind, u.result, u.container_id) end)
--   ps:status(uid), ps:pods()        -- desired + actual state, last sync results
--   local uids, gen = ps:changed(gen) -- pods whose status changed since gen (0: all)
--   ps:close()                       -- stop the workers (pods keep running)
--
-- Options of new{}:
--   client        a kubelua.cri client (required)
--   node          the node name (informational)
--   pod_logs_dir  default /var/log/pods
--   backoff       CrashLoopBackOff: { initial = 10, max = 300, reset = 2*max } seconds
--   image_backoff ImagePullBackOff: same shape, default as backoff
--   resync        seconds between a worker's looks at the runtime when nothing
--                 wakes it (default 1, as PLEG's relist); ps:wake(uid) wakes one
--   retry         seconds before a worker retries after a failed sync (10, kubelet's backOffPeriod)
--   clock         { now = fn() -> wall seconds, event = fn() -> ev } (ev:wait(secs), ev:wake())
--   log           fn(level, msg) (default kubelua.core.log)
--   on_sync       fn(uid, res) after every sync or termination step, res its
--                 kubelua.sync_result pod result (metrics)
--   sandbox_image the pause image containerd uses; reported in status only
--                 (containerd picks its own from its config)
--
-- One worker task per pod UID. A worker serializes its pod's work; workers
-- of different pods run concurrently, so a slow runtime call parks only its
-- own pod. Each sync lists the pod's sandboxes and containers by label,
-- decides what to kill and start, applies it and records kubelet's
-- SyncResults (kubelua.sync_result).
--
-- What is ours: every sandbox and container podsync creates carries the
-- label io.kubelua.managed-by=kubelua besides kubelet's labels; every list
-- podsync makes selects on it, so objects without it are never touched.
-- On start (an agent restart), a worker finds the running sandbox and
-- containers of its pod UID by those labels and keeps each container whose
-- io.kubernetes.container.hash annotation equals the current spec's hash:
-- adopted, not duplicated.
--
-- Networking: every sandbox uses the node's network namespace (NODE), the
-- right thing for host-network pods and the only choice on a runtime without
-- a CNI setup; spec.hostNetwork=false pods are run the same way here.
local core = require "kubelua.core"
local task = require "kubelua.task"
local sr = require "kubelua.sync_result"
local sys = require "kubelua.sys"
local L = require "kubelua.podsync.labels"
local backoff = require "kubelua.podsync.backoff"

local M = {}

-- The label (and value) on everything kubelua creates (kubelua.podsync.labels).
M.MANAGED_BY = L.MANAGED_BY
M.MANAGED_BY_VALUE = L.MANAGED_BY_VALUE
M.labels = L

-- Image errors (kubelet's images package)
M.errors = {
  ImagePull = "ErrImagePull",
  ImagePullBackOff = "ImagePullBackOff",
  ImageNeverPull = "ErrImageNeverPull",
  ImageInspect = "ImageInspectError",
}

local PodSync = {}
PodSync.__index = PodSync

local function secs(ns)
  if ns == nil then
    return nil
  end
  local n = tonumber(ns)
  if n == nil or n <= 0 then
    return nil
  end
  return n / 1e9
end

local function plain_results(res)
  local out = {}
  for i, r in ipairs(res.results) do
    out[i] = { action = r.action, target = r.target, error = r.error, message = r.message }
  end
  return out
end

function M.new(opts)
  assert(type(opts) == "table", "kubelua.podsync.new: expects an options table")
  assert(opts.client, "kubelua.podsync.new: option client (a kubelua.cri client) is required")
  local clock = opts.clock or { now = core.now, event = task.waker }
  local b = opts.backoff or {}
  local ib = opts.image_backoff or b
  local self = setmetatable({
    client = opts.client,
    node = opts.node or "",
    pod_logs_dir = opts.pod_logs_dir or "/var/log/pods",
    sandbox_image = opts.sandbox_image,
    clock = clock,
    resync = opts.resync or 1,
    retry = opts.retry or sr.BACKOFF_PERIOD,
    log = opts.log or core.log,
    spawn = opts.spawn or task.spawn,
    on_sync = opts.on_sync,
    workers = {}, -- uid -> worker
    gen = 0, -- bumped by every change status() can show (see changed())
    closed = false,
  }, PodSync)
  self.backoff = backoff.new{ initial = b.initial or 10, max = b.max or 300, reset = b.reset, now = clock.now }
  self.image_backoff = backoff.new{ initial = ib.initial or 10, max = ib.max or 300, reset = ib.reset, now = clock.now }
  return self
end

-- ------------------------------------------------------------- observation

-- Record that what status(w.uid) shows may have changed (see changed()).
local function touch(self, w)
  self.gen = self.gen + 1
  w.gen = self.gen
end

-- A container's spec hash, computed once per container spec table: specs are
-- replaced, never edited in place (kubelua.config copies a changed spec), so
-- the weak-keyed cache follows them. Hashing every spec at every resync was a
-- visible share of the agent's idle CPU (bench/agent).
local function container_hash(w, c)
  local h = w.hashes[c]
  if not h then
    h = L.container_hash(c)
    w.hashes[c] = h
  end
  return h
end

-- The runtime's view of one pod: sandboxes (newest first) and containers
-- by name (newest first), each container with its full status (cached per
-- id while its state does not change).
local function observe(self, w, uid)
  local sel = L.pod_selector(uid)
  local sbs, err, code = self.client:list_pod_sandbox{ filter = { label_selector = sel } }
  if not sbs then
    return nil, err, code
  end
  local cs
  cs, err, code = self.client:list_containers{ filter = { label_selector = sel } }
  if not cs then
    return nil, err, code
  end
  local snap = { sandboxes = sbs.items or {}, by_name = {}, containers = cs.containers or {} }
  table.sort(snap.sandboxes, function(a, b)
    return a.created_at > b.created_at
  end)
  local cache, seen = w.cstatus, {}
  for _, c in ipairs(snap.containers) do
    seen[c.id] = true
    local name = c.metadata.name
    local list = snap.by_name[name] or {}
    snap.by_name[name] = list
    list[#list + 1] = c
  end
  for _, list in pairs(snap.by_name) do
    table.sort(list, function(a, b)
      if a.metadata.attempt ~= b.metadata.attempt then
        return a.metadata.attempt > b.metadata.attempt
      end
      return a.created_at > b.created_at
    end)
    -- the newest one's details (exit code, times) decide restarts
    local c = list[1]
    local cached = cache[c.id]
    if not cached or cached.state ~= c.state then
      local st = self.client:container_status{ container_id = c.id }
      if st and st.status then
        cache[c.id] = { state = c.state, status = st.status }
      else
        cache[c.id] = nil
      end
    end
    c.detail = cache[c.id] and cache[c.id].status
  end
  for id in pairs(cache) do
    if not seen[id] then
      cache[id] = nil
    end
  end
  return snap
end

-- ------------------------------------------------------------------ actions

-- grace_for(pod, c, reason_kind) -> seconds a container gets to stop (kubelet's rules, at least MIN_GRACE_PERIOD).
local function grace_for(pod, c, reason_kind)
  local g
  if pod then
    g = pod.metadata.deletionGracePeriodSeconds or L.grace_seconds(pod)
    if reason_kind and c then
      local probe = c[reason_kind .. "Probe"]
      if probe and probe.terminationGracePeriodSeconds then
        g = probe.terminationGracePeriodSeconds
      end
    end
  else
    g = tonumber(c and c.annotations and c.annotations[L.POD_TERMINATION_GRACE]) or 30
  end
  return math.max(g, sr.MIN_GRACE_PERIOD)
end
M.grace_for = grace_for

local function kill_container(self, res, rc, grace, message)
  local r = res:add(sr.new(sr.actions.KillContainer, rc.metadata.name))
  self.log("I", string.format("podsync: killing container %s (%s) with %ds grace: %s", rc.metadata.name,
    rc.id:sub(1, 13), grace, message or ""))
  local ok, err = self.client:stop_container{ container_id = rc.id, timeout = grace }
  if not ok then
    r:fail(sr.errors.KillContainer, err)
  end
  return ok
end

-- Kill several containers at once (each with its own grace), as kubelet does.
local function kill_all(self, res, list)
  if #list == 0 then
    return
  end
  local fns = {}
  for i, k in ipairs(list) do
    fns[i] = function()
      return kill_container(self, res, k.rc, k.grace, k.message)
    end
  end
  task.gather(fns)
end

local function image_present(self, image)
  local st, err, code = self.client:image_status{ image = { image = image } }
  if not st then
    return nil, err, code
  end
  return st.image -- nil when absent
end

-- ensure_image -> image ref | nil, error name, message
local function ensure_image(self, w, pod, c, sandbox)
  local policy = c.imagePullPolicy or "IfNotPresent"
  local img, err = image_present(self, c.image)
  if err then
    return nil, M.errors.ImageInspect, err
  end
  if img and policy ~= "Always" then
    return img.id
  end
  if not img and policy == "Never" then
    return nil, M.errors.ImageNeverPull,
      string.format('Container image "%s" is not present with pull policy of Never', c.image)
  end
  local key = pod.metadata.uid .. "_" .. c.image
  local now = self.clock.now()
  local failed_at = w.pull_failed_at[key]
  if failed_at and self.image_backoff:in_backoff_since(key, failed_at) then
    return nil, M.errors.ImagePullBackOff, string.format('Back-off pulling image "%s"', c.image)
  end
  local r
  -- with the sandbox's config, as kubelet sends it (runtimes use it for
  -- per-pod pull settings and to name the pod in their logs)
  r, err = self.client:pull_image{ image = { image = c.image }, sandbox_config = sandbox and sandbox.config }
  if not r then
    self.image_backoff:next(key, now)
    w.pull_failed_at[key] = now
    return nil, M.errors.ImagePull, err
  end
  w.pull_failed_at[key] = nil
  return r.image_ref
end

local function start_container(self, w, res, pod, sandbox, c, restart_count)
  local r = res:add(sr.new(sr.actions.StartContainer, c.name))
  local image, ename, emsg = ensure_image(self, w, pod, c, sandbox)
  if not image then
    r:fail(ename, emsg)
    w.waiting[c.name] = { reason = ename, message = emsg }
    return false
  end
  local cfg = L.container_config(pod, c, { restart_count = restart_count, image = image })
  local made, err = self.client:create_container{ pod_sandbox_id = sandbox.id, config = cfg,
    sandbox_config = sandbox.config }
  if not made then
    r:fail(sr.errors.RunContainer, err)
    w.waiting[c.name] = { reason = "CreateContainerError", message = err }
    return false
  end
  local ok
  ok, err = self.client:start_container{ container_id = made.container_id }
  if not ok then
    r:fail(sr.errors.RunContainer, err)
    w.waiting[c.name] = { reason = sr.errors.RunContainer, message = err }
    return false
  end
  w.waiting[c.name] = nil
  self.log("I", string.format("podsync: started container %s of pod %s/%s (restart %d)", c.name,
    pod.metadata.namespace, pod.metadata.name, restart_count))
  return true
end

-- ShouldContainerBeRestarted for an exited container (8.1).
local function should_restart(pod, exit_code)
  if pod.metadata.deletionTimestamp then
    return false
  end
  local policy = pod.spec.restartPolicy or "Always"
  if policy == "Never" then
    return false
  elseif policy == "OnFailure" then
    return exit_code ~= 0
  end
  return true
end
M.should_restart = should_restart

local function backoff_key(pod, c, hash)
  local md = pod.metadata
  return string.format("%s_%s_%s_%s_%s", md.name, md.namespace, md.uid, c.name, hash)
end

local function probe_failed(w, kind, rc)
  local e = w.probes[kind][rc.metadata.name]
  return e and e.result == "Failure" and (e.container_id == nil or e.container_id == rc.id)
end

local function is_ready(sb)
  return sb.state == "SANDBOX_READY"
end

-- Does the pod have nothing left to run (restartPolicy says so)?
local function pod_done(pod, snap)
  local any = false
  for _, c in ipairs(pod.spec.containers) do
    local rc = snap.by_name[c.name] and snap.by_name[c.name][1]
    if not rc then
      return false
    end
    any = true
    if rc.state ~= "CONTAINER_EXITED" then
      return false
    end
    if should_restart(pod, rc.detail and rc.detail.exit_code or 0) then
      return false
    end
  end
  return any
end

-- One sync of a desired pod; returns the seconds until the next one.
local function sync_pod(self, w)
  local pod = w.pod
  local md = pod.metadata
  local res = sr.pod()
  w.waiting = w.waiting or {}
  local snap, err = observe(self, w, md.uid)
  if not snap then
    res:fail(err)
    return res, self.retry
  end
  local next_in = self.resync
  -- the sandbox: the newest ready one; other ready ones are killed
  local sandbox, kills = nil, {}
  for _, sb in ipairs(snap.sandboxes) do
    if is_ready(sb) then
      if not sandbox then
        sandbox = sb
      else
        for _, rc in ipairs(snap.containers) do
          if rc.pod_sandbox_id == sb.id and rc.state ~= "CONTAINER_EXITED" then
            kills[#kills + 1] = { rc = rc, grace = grace_for(pod), message = "pod sandbox replaced" }
          end
        end
        w.stale_sandboxes[sb.id] = true
      end
    end
  end
  local fresh = false
  if not sandbox then
    if pod_done(pod, snap) then
      return res, self.resync -- finished for good (Never/OnFailure); no new sandbox (computePodActions)
    end
    -- containers left in a dead sandbox must not run beside the new one
    for _, rc in ipairs(snap.containers) do
      if rc.state ~= "CONTAINER_EXITED" then
        kills[#kills + 1] = { rc = rc, grace = grace_for(pod), message = "pod sandbox changed" }
      end
    end
    kill_all(self, res, kills)
    kills = {}
    local attempt = 0
    for _, sb in ipairs(snap.sandboxes) do
      attempt = math.max(attempt, (sb.metadata.attempt or 0) + 1)
    end
    local cfg = L.sandbox_config(pod, { pod_logs_dir = self.pod_logs_dir, attempt = attempt })
    local r = res:add(sr.new(sr.actions.CreatePodSandbox, md.uid))
    local ok, merr = sys.mkdir_p(cfg.log_directory, 493) -- 0755
    local made
    if ok then
      made, merr = self.client:run_pod_sandbox{ config = cfg }
    end
    if not made then
      r:fail(sr.errors.CreatePodSandbox, "failed to create a sandbox for pod " .. md.name .. ": " .. tostring(merr))
      return res, self.retry
    end
    sandbox = { id = made.pod_sandbox_id, config = cfg, state = "SANDBOX_READY" }
    fresh = true
  else
    sandbox.config = L.sandbox_config(pod, { pod_logs_dir = self.pod_logs_dir, attempt = sandbox.metadata.attempt })
  end
  w.sandbox_id = sandbox.id

  -- containers (computePodActions, 3.4 and 8.1)
  local starts, keep = {}, 0
  for _, c in ipairs(pod.spec.containers) do
    local hash = container_hash(w, c)
    local list = snap.by_name[c.name]
    local rc = list and list[1]
    local restart_count = rc and (rc.metadata.attempt or 0) + 1 or 0
    local in_sandbox = rc and rc.pod_sandbox_id == sandbox.id
    if not rc or fresh or not in_sandbox then
      starts[#starts + 1] = { c = c, hash = hash, rc = rc, restart_count = restart_count }
    elseif rc.state == "CONTAINER_RUNNING" then
      local old_hash = rc.annotations and rc.annotations[L.CONTAINER_HASH]
      local why, kind, restart
      if old_hash ~= hash then
        why, restart = string.format("Container %s definition changed", c.name), true
      elseif probe_failed(w, "liveness", rc) then
        why, kind = string.format("Container %s failed liveness probe", c.name), "liveness"
      elseif probe_failed(w, "startup", rc) then
        why, kind = string.format("Container %s failed startup probe", c.name), "startup"
      end
      if why then
        if kind then
          restart = pod.spec.restartPolicy ~= "Never"
          w.probes[kind][c.name] = nil
        end
        if restart then
          why = why .. ", will be restarted"
          starts[#starts + 1] = { c = c, hash = hash, restart_count = restart_count, after_kill = true }
        end
        kills[#kills + 1] = { rc = rc, grace = grace_for(pod, c, kind), message = why }
      else
        keep = keep + 1
      end
    elseif rc.state == "CONTAINER_EXITED" then
      if should_restart(pod, rc.detail and rc.detail.exit_code or 0) then
        starts[#starts + 1] = { c = c, hash = hash, rc = rc, restart_count = restart_count }
      end
    else -- created or unknown: kill first so two never run at once
      kills[#kills + 1] = { rc = rc, grace = grace_for(pod), message = "container in state " .. tostring(rc.state) }
      starts[#starts + 1] = { c = c, hash = hash, restart_count = restart_count }
    end
  end
  kill_all(self, res, kills)
  if keep == 0 and #starts == 0 and not fresh then
    -- nothing runs and nothing will: kill the sandbox (KillPod)
    local r = res:add(sr.new(sr.actions.KillPodSandbox, md.uid))
    local ok, kerr = self.client:stop_pod_sandbox{ pod_sandbox_id = sandbox.id }
    if not ok then
      r:fail(sr.errors.KillPodSandbox, kerr)
    end
    return res, self.resync
  end
  local now = self.clock.now()
  for _, s in ipairs(starts) do
    local key = backoff_key(pod, s.c, s.hash)
    local ts = s.rc and s.rc.state == "CONTAINER_EXITED" and s.rc.detail and secs(s.rc.detail.finished_at)
    local in_backoff, expiry = false, nil
    if ts then
      in_backoff, expiry = self.backoff:in_backoff_since(key, ts)
    end
    if in_backoff then
      local r = res:add(sr.new(sr.actions.StartContainer, s.c.name))
      local msg = string.format("back-off %gs restarting failed container=%s pod=%s_%s(%s)",
        self.backoff:get(key), s.c.name, md.name, md.namespace, md.uid)
      r:fail(sr.errors.CrashLoopBackOff, msg)
      r.backoff_expiry = expiry
      w.waiting[s.c.name] = { reason = sr.errors.CrashLoopBackOff, message = msg }
      next_in = math.min(next_in, math.max(expiry - now, 0.01))
    else
      if ts then
        self.backoff:next(key, ts)
      end
      if not start_container(self, w, res, pod, sandbox, s.c, s.restart_count) then
        next_in = math.min(next_in, self.retry)
      end
    end
  end
  return res, next_in
end

-- Stop every container (with the pod's grace period), then the sandboxes;
-- remove the sandboxes too when `remove`.
local function terminate_pod(self, w, remove)
  local res = sr.pod()
  local snap, err = observe(self, w, w.uid)
  if not snap then
    res:fail(err)
    return res, false
  end
  local kills = {}
  for _, rc in ipairs(snap.containers) do
    if rc.state ~= "CONTAINER_EXITED" then
      kills[#kills + 1] = { rc = rc, grace = w.pod and grace_for(w.pod) or grace_for(nil, rc),
        message = "pod is being removed" }
    end
  end
  kill_all(self, res, kills)
  local ok_all = res:error() == nil
  for _, sb in ipairs(snap.sandboxes) do
    if sb.state == "SANDBOX_READY" or remove then
      local r = res:add(sr.new(sr.actions.KillPodSandbox, w.uid))
      local ok, kerr = self.client:stop_pod_sandbox{ pod_sandbox_id = sb.id }
      if ok and remove then
        ok, kerr = self.client:remove_pod_sandbox{ pod_sandbox_id = sb.id }
      end
      if not ok then
        r:fail(sr.errors.KillPodSandbox, kerr)
        ok_all = false
      end
    end
  end
  return res, ok_all, snap
end

-- ------------------------------------------------------------- the workers

local function summarize(self, w, snap)
  -- actual state for status(): the newest instance of each container
  local actual = { sandboxes = {}, containers = {} }
  if snap then
    for _, sb in ipairs(snap.sandboxes) do
      actual.sandboxes[#actual.sandboxes + 1] = { id = sb.id, state = sb.state, attempt = sb.metadata.attempt,
        created_at = secs(sb.created_at) }
    end
    for name, list in pairs(snap.by_name) do
      local rc = list[1]
      local d = rc.detail or {}
      actual.containers[name] = {
        id = rc.id, name = name, state = rc.state, sandbox_id = rc.pod_sandbox_id,
        restart_count = tonumber(rc.annotations and rc.annotations[L.RESTART_COUNT]) or rc.metadata.attempt or 0,
        hash = rc.annotations and rc.annotations[L.CONTAINER_HASH],
        image = rc.image and rc.image.image, image_ref = rc.image_ref,
        started_at = secs(d.started_at), finished_at = secs(d.finished_at),
        exit_code = d.exit_code, reason = d.reason, instances = #list,
      }
    end
  end
  w.actual = actual
  touch(self, w)
end

local function run_worker(self, w)
  while not self.closed do
    local ok, res, delay, snap
    if w.removed or w.deleting then
      local done
      ok, res, done, snap = pcall(terminate_pod, self, w, w.removed)
      if not ok then
        self.log("E", "podsync: terminating pod " .. w.uid .. " failed: " .. tostring(res))
        res, done = nil, false
      end
      if res then
        w.last_sync = { time = self.clock.now(), results = plain_results(res), error = res:error() }
        if self.on_sync then
          pcall(self.on_sync, w.uid, res)
        end
      end
      summarize(self, w, snap)
      if done and w.removed then
        if w.readd then -- added again while terminating: start over
          w.pod, w.readd, w.removed, w.deleting = w.readd, nil, false, false
          w.pod.metadata.deletionTimestamp = nil
        else
          break
        end
      else
        w.terminated = done
        w.ev:wait(done and self.resync * 10 or self.retry)
      end
    else
      ok, res, delay = pcall(sync_pod, self, w)
      if not ok then
        self.log("E", "podsync: syncing pod " .. w.uid .. " failed: " .. tostring(res))
        res, delay = nil, self.retry
      end
      if res then
        w.last_sync = { time = self.clock.now(), results = plain_results(res), error = res:error() }
        if self.on_sync then
          pcall(self.on_sync, w.uid, res)
        end
        local e = res:error()
        if e and e ~= w.last_error then
          self.log("W", "podsync: pod " .. w.uid .. ": " .. e)
        end
        w.last_error = e
        -- refresh the actual state after acting (cheap: two list calls)
        local acted = #res.results > 0
        local s = (acted or not w.actual) and observe(self, w, w.uid) or nil
        if s then
          summarize(self, w, s)
        end
      end
      w.syncs = w.syncs + 1
      if not self.closed then
        w.ev:wait(delay)
      end
    end
  end
  if self.workers[w.uid] == w and w.removed then
    self.workers[w.uid] = nil
  end
  w.stopped = true
  w.done:wake()
end

function PodSync:_worker(uid)
  local w = self.workers[uid]
  if w then
    return w
  end
  w = {
    uid = uid, ev = self.clock.event(), done = task.waker(), cstatus = {}, waiting = {},
    probes = { liveness = {}, readiness = {}, startup = {} }, pull_failed_at = {}, stale_sandboxes = {},
    syncs = 0, created = self.clock.now(), hashes = setmetatable({}, { __mode = "k" }),
  }
  self.workers[uid] = w
  touch(self, w)
  self.spawn(function()
    run_worker(self, w)
  end)
  return w
end

local function uid_of(p)
  local uid = p and p.metadata and p.metadata.uid
  assert(type(uid) == "string" and uid ~= "", "kubelua.podsync: a pod needs metadata.uid")
  return uid
end

function PodSync:_desire(p, source)
  local uid = uid_of(p)
  local w = self.workers[uid]
  if w and w.removed then
    w.readd, w.source = p, source
  else
    w = self:_worker(uid)
    w.pod, w.source = p, source or w.source
    w.deleting = p.metadata.deletionTimestamp ~= nil
  end
  touch(self, w)
  w.ev:wake()
end

function PodSync:_remove(uid)
  local w = self.workers[uid]
  if not w then
    return
  end
  w.removed, w.readd = true, nil
  touch(self, w)
  w.ev:wake()
end

-- update(u): consume one merged update {op=, source=, pods=}.
function PodSync:update(u)
  assert(type(u) == "table" and type(u.op) == "string", "kubelua.podsync.update: expects {op=, pods=}")
  assert(not self.closed, "kubelua.podsync.update: closed")
  local op, pods = u.op, u.pods or {}
  if op == "ADD" or op == "UPDATE" or op == "RECONCILE" or op == "DELETE" then
    for _, p in ipairs(pods) do
      if op == "DELETE" then
        p.metadata.deletionTimestamp = p.metadata.deletionTimestamp or os.date("!%Y-%m-%dT%H:%M:%SZ")
      end
      self:_desire(p, u.source)
    end
  elseif op == "REMOVE" then
    for _, p in ipairs(pods) do
      self:_remove(uid_of(p))
    end
  elseif op == "SET" then
    local seen = {}
    for _, p in ipairs(pods) do
      seen[uid_of(p)] = true
      self:_desire(p, u.source)
    end
    for uid, w in pairs(self.workers) do
      if not seen[uid] and w.pod and (u.source == nil or w.source == u.source) then
        self:_remove(uid)
      end
    end
  else
    error("kubelua.podsync.update: unknown op " .. tostring(op))
  end
end

-- Wake a pod's worker now (e.g. on a PLEG event for it).
function PodSync:wake(uid)
  local w = self.workers[uid]
  if w then
    w.ev:wake()
  end
end

-- Wake every pod's worker now (e.g. when the runtime first answers: pods
-- that failed to sync meanwhile do not wait for their retry).
function PodSync:wake_all()
  for _, w in pairs(self.workers) do
    w.ev:wake()
  end
end

-- on_probe_result(uid, container_name, kind, result [, container_id]):
-- kind "liveness" | "readiness" | "startup"; result "Success" | "Failure" |
-- "Unknown". A liveness or startup failure wakes the worker, which kills and
-- (per restartPolicy) restarts the container; readiness only shows in status.
function PodSync:on_probe_result(uid, name, kind, result, container_id)
  local w = self.workers[uid]
  if not w or not w.probes[kind] then
    return
  end
  local prev = w.probes[kind][name]
  if not prev or prev.result ~= result or prev.container_id ~= container_id then
    touch(self, w)
  end
  w.probes[kind][name] = { result = result, container_id = container_id }
  if kind ~= "readiness" and result == "Failure" then
    w.ev:wake()
  end
end

-- Terminate pods we created that no desired pod claims (call once every
-- source has sent its first list, as kubelet's HandlePodCleanups).
-- -> the uids being terminated | nil, err
function PodSync:cleanup_orphans()
  local r, err, code = self.client:list_pod_sandbox{ filter = { label_selector = {
    [L.MANAGED_BY] = L.MANAGED_BY_VALUE } } }
  if not r then
    return nil, err, code
  end
  local uids = {}
  for _, sb in ipairs(r.items or {}) do
    local uid = sb.labels and sb.labels[L.POD_UID]
    if uid and not self.workers[uid] and not uids[uid] then
      uids[uid] = true
      uids[#uids + 1] = uid
      local w = self:_worker(uid)
      w.removed = true
    end
  end
  return uids
end

-- ---------------------------------------------------------------- status

local function phase_of(w, pod)
  if not pod then
    return "Unknown"
  end
  local a = w.actual or { containers = {} }
  local running, all_done, failed, any = 0, true, false, false
  for _, c in ipairs(pod.spec.containers) do
    local ac = a.containers[c.name]
    if ac then
      any = true
      if ac.state == "CONTAINER_RUNNING" then
        running = running + 1
        all_done = false
      elseif ac.state == "CONTAINER_EXITED" then
        if should_restart(pod, ac.exit_code or 0) then
          all_done = false
        elseif (ac.exit_code or 0) ~= 0 then
          failed = true
        end
      else
        all_done = false
      end
    else
      all_done = false
    end
  end
  if any and all_done then
    return failed and "Failed" or "Succeeded"
  end
  if running > 0 then
    return "Running"
  end
  return "Pending"
end

-- status(uid) -> { uid, name, namespace, source, desired (the pod), phase,
--   removed, deleting, terminated, sandbox_id, sandboxes, containers (by
--   name: id, state, restart_count, hash, started_at, finished_at,
--   exit_code, reason, ready, waiting), status (Kubernetes PodStatus shape,
--   times in seconds, as kubelua.prober reads it), last_sync } | nil
function PodSync:status(uid)
  local w = self.workers[uid]
  if not w then
    return nil
  end
  local pod = w.pod
  local a = w.actual or { containers = {}, sandboxes = {} }
  local containers, statuses = {}, {}
  local all_ready = pod ~= nil
  for name, ac in pairs(a.containers) do
    local c = {}
    for k, v in pairs(ac) do
      c[k] = v
    end
    c.waiting = w.waiting[name]
    containers[name] = c
  end
  for _, sc in ipairs(pod and pod.spec.containers or {}) do
    local c = containers[sc.name]
    local has_readiness = sc.readinessProbe ~= nil
    local st = { name = sc.name, image = sc.image, restartCount = 0, ready = false, started = false }
    if c then
      -- without a readiness probe a running container is ready; with one,
      -- only after a Success for this very instance (3.4)
      local rd = w.probes.readiness[sc.name]
      c.ready = c.state == "CONTAINER_RUNNING" and (not has_readiness or (rd ~= nil and rd.result == "Success"
        and (rd.container_id == nil or rd.container_id == c.id)))
      st.containerID, st.restartCount, st.ready = c.id, c.restart_count, c.ready
      st.started = c.state == "CONTAINER_RUNNING"
      if c.state == "CONTAINER_RUNNING" then
        st.state = { running = { startedAt = c.started_at } }
      elseif c.state == "CONTAINER_EXITED" then
        st.state = { terminated = { exitCode = c.exit_code, reason = c.reason, startedAt = c.started_at,
          finishedAt = c.finished_at } }
      end
      if c.waiting then
        st.state = { waiting = c.waiting }
        if c.state == "CONTAINER_EXITED" then
          st.lastState = { terminated = { exitCode = c.exit_code, reason = c.reason, finishedAt = c.finished_at } }
        end
      end
    elseif w.waiting[sc.name] then
      st.state = { waiting = w.waiting[sc.name] }
    else
      st.state = { waiting = { reason = "ContainerCreating" } }
    end
    all_ready = all_ready and st.ready
    statuses[#statuses + 1] = st
  end
  local md = pod and pod.metadata or {}
  local phase = phase_of(w, pod)
  return {
    uid = uid, name = md.name, namespace = md.namespace, source = w.source, desired = pod,
    removed = w.removed or false, deleting = w.deleting or false, terminated = w.terminated or false,
    sandbox_id = w.sandbox_id, sandboxes = a.sandboxes, containers = containers, syncs = w.syncs,
    sandbox_image = self.sandbox_image,
    status = {
      phase = phase,
      conditions = { { type = "Ready", status = all_ready and "True" or "False" } },
      containerStatuses = statuses,
    },
    last_sync = w.last_sync,
  }
end

-- changed(since) -> uids, gen: the pods whose desired pod, observed
-- sandboxes and containers, or probe results changed since changed()
-- returned `since` (0: every pod), and the generation to pass next time
-- (the counters syncs and last_sync are not tracked). A caller that keeps
-- something in step with status() (the agent's prober feed) rebuilds only those.
function PodSync:changed(since)
  local out = {}
  for uid, w in pairs(self.workers) do
    if w.gen > since then
      out[#out + 1] = uid
    end
  end
  return out, self.gen
end

-- pods() -> list of status(uid), sorted by namespace/name.
function PodSync:pods()
  local out, key = {}, {}
  for uid in pairs(self.workers) do
    local st = self:status(uid)
    out[#out + 1] = st
    key[st] = (st.namespace or "") .. "/" .. (st.name or st.uid)
  end
  table.sort(out, function(a, b)
    return key[a] < key[b]
  end)
  return out
end

-- close(): stop every worker after its current runtime call (pods are left
-- running, as kubelet leaves them on shutdown). Call from a task.
function PodSync:close()
  self.closed = true
  local ws = {}
  for _, w in pairs(self.workers) do
    ws[#ws + 1] = w
    w.ev:wake()
  end
  for _, w in ipairs(ws) do
    if not w.stopped then
      w.done:wait()
    end
  end
end

return M
