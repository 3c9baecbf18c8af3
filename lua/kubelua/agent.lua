-- kubelua.agent: the node agent — the mechanisms and policies of kubelua
-- wired together the way kubelet wires its own:
--
--   sources (file, URL, API) -> kubelua.config (merge) -> kubelua.podsync
--   kubelua.pleg (relist)   -> podsync:wake(pod)
--   kubelua.prober          -> podsync:on_probe_result(...)
--   kubelua.gc (every containerGCPeriod), kubelua.image_gc (every 5 min)
--   kubelua.health (runtime + PLEG)
--   /healthz, /metrics, /pods on healthzBindAddress:healthzPort
--
--   local agent = require("kubelua.agent").start(cfg)   -- cfg from kubelua.agent.config
--   agent:stop()                                         -- pods keep running
--
-- Stopping leaves the pods running, as kubelet does: a restarted agent
-- adopts them (podsync matches them by labels and spec hash).
local core = require "kubelua.core"
local task = require "kubelua.task"
local cri = require "kubelua.cri"
local config = require "kubelua.config"
local podsync = require "kubelua.podsync"
local cachemod = require "kubelua.cache"
local plegmod = require "kubelua.pleg"
local prober = require "kubelua.prober"
local health = require "kubelua.health"
local gcmod = require "kubelua.gc"
local metrics = require "kubelua.metrics"
local acfg = require "kubelua.agent.config"
local agent_metrics = require "kubelua.agent.metrics"

local M = {}

local Agent = {}
Agent.__index = Agent

local function dur(v, default)
  return v ~= nil and acfg.parse_duration(v) or default
end

-- sandbox_image(rt) -> the runtime's pause image reference, or nil: image GC
-- counts it as in use (containerd reports it in Status's verbose info).
function M.sandbox_image(rt)
  local st = rt:status{ verbose = true }
  local conf = st and st.info and st.info.config
  local ok, doc = pcall(require("kubelua.json").decode, conf or "")
  return ok and type(doc) == "table" and type(doc.sandboxImage) == "string" and doc.sandboxImage or nil
end

-- start(cfg) -> agent | nil, err
function M.start(cfg)
  local rt, err, code = cri.connect(cfg.containerRuntimeEndpoint, {
    timeout = cfg.runtimeRequestTimeout,
    image_endpoint = cfg.imageServiceEndpoint ~= "" and cfg.imageServiceEndpoint or nil,
  })
  if not rt then
    return nil, err, code
  end
  local self = setmetatable({ cfg = cfg, rt = rt, stats = { updates = 0, policy_errors = 0 } }, Agent)
  local ex = agent_metrics.new{ registry = metrics.default } -- /metrics collectors and hooks
  self.exporter, rt.on_call = ex, ex.on_call
  local clb = cfg.crashLoopBackOff or {}
  self.sync = podsync.new{
    client = rt, node = cfg.nodeName, pod_logs_dir = cfg.podLogsDir,
    backoff = { initial = dur(clb.initial, 10), max = dur(clb.max, 300), reset = dur(clb.reset, 600) },
    resync = cfg.syncFrequency, on_sync = ex.on_sync, log = ex.logger("podsync"),
  }
  self.prober = prober.new{ runtime = rt, log = ex.logger("prober"), tick = cfg.probeTick }
  self.prober:subscribe(function(u)
    self.sync:on_probe_result(u.pod_uid, u.container_name, u.kind, u.result, u.container_id)
  end)
  self.pc = config.new{
    on_update = function(u)
      self.stats.updates = self.stats.updates + 1
      self.sync:update(u)
      for _, p in ipairs(u.pods) do
        if u.op == "ADD" then
          self.prober:add_pod(p)
        elseif u.op == "REMOVE" then
          self.prober:remove_pod(p.metadata.uid)
        end
      end
    end,
    on_event = function(e)
      core.log("W", string.format("%s: %s", e.reason, e.message))
    end,
  }
  -- Probe workers follow the pods' actual state: each second, the pods
  -- whose state changed (rebuilding every pod's status twice a second was
  -- about 8% of the idle agent's Lua samples with 100 pods; bench/agent).
  local status_gen = 0
  self.status_loop = task.every(1, function()
    local uids
    uids, status_gen = self.sync:changed(status_gen)
    for _, uid in ipairs(uids) do
      local st = self.sync:status(uid)
      if st and st.status then
        self.prober:set_status(uid, st.status)
      end
    end
  end)

  self.cache = cachemod.new{ client = rt }
  self.pleg = plegmod.new{ client = rt, period = cfg.relistPeriod, on_relist = ex.on_relist }
  self.pleg:subscribe(function(ev)
    if ev.type ~= "ContainerRemoved" then
      self.sync:wake(ev.pod)
    end
  end)
  self.pleg:start()

  self.health = health.new{ runtime = rt, pleg = self.pleg, on_ready = function()
    self.sync:wake_all()
  end }
  self.health:start()

  self.gc = gcmod.new{ runtime = rt, config = self.pc, pod_logs_dir = cfg.podLogsDir, on_result = ex.on_gc,
    on_event = function(kind, reason, msg)
      core.log(kind == "Warning" and "W" or "I", reason .. ": " .. tostring(msg))
    end }
  -- Policy scripts (kubelua.agent.policy), applied before the first GC run.
  local pols, perrs = require("kubelua.agent.policy").load(cfg.policies)
  if not pols then
    self:stop()
    return nil, "invalid policies:\n  " .. table.concat(perrs, "\n  ")
  end
  require("kubelua.agent.reload").init(self, pols)
  self.gc:start{ period = cfg.containerGCPeriod }

  -- Image GC every 5 minutes (kubelet's ImageGCPeriod), with kubelet's keys;
  -- first-seen and last-used times kept in stateDir across restarts.
  self.image_gc = require("kubelua.image_gc").new{ runtime = rt, state_dir = cfg.stateDir,
    sandbox_image = function()
      self.sandbox_image = self.sandbox_image or M.sandbox_image(rt)
      return self.sandbox_image
    end,
    high = cfg.imageGCHighThresholdPercent, low = cfg.imageGCLowThresholdPercent,
    min_age = cfg.imageMinimumGCAge, max_age = cfg.imageMaximumGCAge, on_result = ex.on_image_gc,
    on_event = function(kind, reason, msg)
      core.log(kind == "Warning" and "W" or "I", reason .. ": " .. tostring(msg))
    end }
  self.image_gc:start()

  self.sources = {}
  local function on_error(e)
    core.log("E", e)
  end
  if cfg.staticPodPath ~= "" then
    local s, serr = require("kubelua.sources.file").start(self.pc, {
      path = cfg.staticPodPath, node = cfg.nodeName, rescan = cfg.fileCheckFrequency, on_error = on_error })
    if not s then
      self:stop()
      return nil, serr
    end
    self.sources[#self.sources + 1] = s
  end
  if cfg.staticPodURL ~= "" then
    self.sources[#self.sources + 1] = require("kubelua.sources.http").start(self.pc, {
      url = cfg.staticPodURL, node = cfg.nodeName, headers = cfg.staticPodURLHeader,
      period = cfg.httpCheckFrequency, on_error = on_error })
  end
  if cfg.kubeconfig ~= "" then
    local api, aerr = require("kubelua.k8s").connect{ kubeconfig = cfg.kubeconfig }
    if not api then
      self:stop()
      return nil, aerr
    end
    self.sources[#self.sources + 1] = require("kubelua.sources.api").start(self.pc, {
      client = api, node = cfg.nodeName, on_error = on_error })
  end

  if cfg.healthzPort ~= 0 then
    local ok, server = pcall(require, "kubelua.server")
    if ok then
      local srv, serr = server.http{ host = cfg.healthzBindAddress, port = cfg.healthzPort, routes = {
        ["/healthz"] = function() return self:healthz() end,
        ["/metrics"] = function() return self:metrics() end,
        ["/pods"] = function() return self:pods_json() end,
      } }
      if not srv then
        self:stop()
        return nil, serr
      end
      self.server = srv
    end
  end
  -- `kubelua attach`: a REPL inside the agent over <stateDir>/control.sock
  local actl, aerr = require("kubelua.agent.attach").start(self)
  if aerr then
    self:stop()
    return nil, aerr
  end
  self.attach = actl
  core.log("I", string.format("agent started on node %s, runtime %s", cfg.nodeName, rt.endpoint))
  return self
end

-- reload(path, overrides) -> true, changed keys | nil, problems: SIGHUP.
-- Validates the file and the policies first and keeps the running ones on
-- any problem; see kubelua.agent.reload for what applies live.
function Agent:reload(path, overrides)
  return require("kubelua.agent.reload").reload(self, path, overrides)
end

-- healthz() -> status, body: every reason the agent is not healthy: the
-- runtime (and PLEG, and Lua checks), the sources. As kubelet's /healthz,
-- network readiness is not part of it (a node without CNI runs host-network
-- pods fine); it is listed in the body for information.
function Agent:healthz()
  local reasons = {}
  local st = self.health:state()
  for _, r in ipairs(st.runtime or {}) do
    reasons[#reasons + 1] = r
  end
  for _, r in ipairs(st.storage or {}) do
    reasons[#reasons + 1] = r
  end
  if not self.pc:all_ready() then
    reasons[#reasons + 1] = "pod sources are not all ready"
  end
  if #reasons == 0 then
    local info = ""
    for _, r in ipairs(st.network or {}) do
      info = info .. "info: " .. r .. "\n"
    end
    return 200, "ok\n" .. info, { ["Content-Type"] = "text/plain" }
  end
  return 500, table.concat(reasons, "\n") .. "\n", { ["Content-Type"] = "text/plain" }
end

function Agent:pods_json()
  local json = require "kubelua.json"
  local out = {}
  for _, p in ipairs(self.sync:pods()) do
    out[#out + 1] = p
  end
  return 200, json.encode(json.array(out)) .. "\n", { ["Content-Type"] = "application/json" }
end

function Agent:metrics()
  local reg = metrics.default
  if self.exporter then
    self.exporter.collect(self)
  end
  if reg then
    return 200, reg:render(), { ["Content-Type"] = "text/plain; version=0.0.4" }
  end
  return 200, "", {}
end

-- stop(): everything the agent started ends; pods keep running.
function Agent:stop()
  for _, s in ipairs(self.sources or {}) do
    s:stop()
  end
  if self.server then
    self.server:close()
  end
  if self.attach then
    self.attach:close()
  end
  if self.image_gc then
    self.image_gc:stop()
  end
  if self.gc then
    self.gc:stop()
  end
  if self.health then
    self.health:stop()
  end
  if self.pleg then
    self.pleg:stop()
  end
  if self.status_loop then
    self.status_loop:stop()
  end
  if self.prober and self.prober.stop then
    self.prober:stop()
  end
  if self.sync then
    self.sync:close()
  end
  core.log("I", "agent stopped; pods are left running")
end

return M
