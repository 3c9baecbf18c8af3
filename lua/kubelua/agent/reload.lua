-- kubelua.agent.reload: what SIGHUP does to a running agent (Agent:reload).
--
--   local ok, res = require("kubelua.agent.reload").reload(agent, path, overrides)
--   -- ok: res = { changed keys }; failure: nil, res = { problems }
--
-- Everything is read and checked first: the config file (every problem, as
-- at start) and every policy script it names (kubelua.agent.policy). On any
-- problem nothing changes: the running configuration and policies stay, each
-- problem is logged, and kubelua_config_reload_total{result="failure"} goes
-- up. On success what can change live is applied:
--
--   policies                      the GC's hooks and options, the prober's hooks
--   logFormat                     at once
--   containerGCPeriod             the GC loop restarts (and runs once at once)
--   relistPeriod, crashLoopBackOff  taken by PLEG and pod sync at their next use
--   probeTick                     taken by each probe worker at its next wait
--   staticPodPath, fileCheckFrequency            the file source restarts
--   staticPodURL, staticPodURLHeader, httpCheckFrequency  the URL source restarts
--
-- Any other changed key (runtime endpoints and timeout, healthz address and
-- port, nodeName, podLogsDir, stateDir, kubeconfig, image GC settings, ...)
-- is logged as "restart required for KEY" and keeps its running value.
local core = require "kubelua.core"
local task = require "kubelua.task"
local metrics = require "kubelua.metrics"
local acfg = require "kubelua.agent.config"
local policy = require "kubelua.agent.policy"

local M = {}

-- Configuration keys a reload applies in place; a change to any other key needs a restart.
M.LIVE = {
  policies = true, logFormat = true, containerGCPeriod = true, relistPeriod = true, syncFrequency = true,
  probeTick = true, crashLoopBackOff = true, staticPodPath = true, fileCheckFrequency = true,
  staticPodURL = true, staticPodURLHeader = true, httpCheckFrequency = true,
}

local reloads = metrics.counter{ name = "kubelua_config_reload_total",
  help = "Configuration reloads (SIGHUP), by result.", labels = { "result" } }
local last_success = metrics.gauge{ name = "kubelua_config_last_reload_success_timestamp_seconds",
  help = "When the configuration was last loaded successfully (start or reload), in seconds since the epoch." }
local last_ok = metrics.gauge{ name = "kubelua_config_last_reload_successful",
  help = "1 when the last configuration reload succeeded (or none was tried), 0 when it failed." }

local same = require("kubelua.config").deep_equal -- plain values, tables by contents

local function show(v)
  if type(v) == "table" then
    return require("kubelua.json").encode(v)
  end
  return tostring(v)
end

-- init(agent, loaded): at start, with the policies loaded (and checked) by
-- policy.load(cfg.policies).
function M.init(agent, loaded)
  policy.apply(loaded, { gc = agent.gc, prober = agent.prober })
  agent.policies = loaded
  reloads:inc({ result = "success" }, 0)
  reloads:inc({ result = "failure" }, 0)
  last_success:set(nil, core.now())
  last_ok:set(nil, 1)
  if next(loaded) then
    core.log("I", "policies loaded: " .. policy.describe(loaded))
  end
end

local function on_source_error(e)
  core.log("E", e)
end

-- Stop the source named `name` (its pods leave with it unless a new one
-- with the same name takes over), then start the new one, if any.
local function replace_source(agent, name, start)
  for i, s in ipairs(agent.sources or {}) do
    if s.name == name then
      s:stop()
      table.remove(agent.sources, i)
      break
    end
  end
  local s, err
  if start then
    s, err = start()
  end
  if s then
    table.insert(agent.sources, s)
    return true
  end
  agent.pc:merge(name, { op = "SET", pods = {} })
  return err == nil, err
end

local APPLY = {}

function APPLY.logFormat(agent, cfg)
  core.set_log_format(cfg.logFormat)
end

function APPLY.relistPeriod(agent, cfg)
  agent.pleg.period = cfg.relistPeriod
end

function APPLY.probeTick(agent, cfg)
  agent.prober.tick = cfg.probeTick
end

function APPLY.syncFrequency(agent, cfg)
  agent.sync.resync = cfg.syncFrequency -- each worker's next wait
end

function APPLY.crashLoopBackOff(agent, cfg)
  local b, clb = agent.sync.backoff, cfg.crashLoopBackOff or {}
  b.initial = clb.initial and acfg.parse_duration(clb.initial) or 10
  b.max = clb.max and acfg.parse_duration(clb.max) or 300
  b.reset = clb.reset and acfg.parse_duration(clb.reset) or 2 * b.max
end

function APPLY.containerGCPeriod(agent, cfg)
  local old = agent.gc:stop()
  -- a run in progress finishes first: never two runs at once
  while old and not old.done do
    task.sleep(0.05)
  end
  agent.gc:start{ period = cfg.containerGCPeriod }
end

function APPLY.file(agent, cfg)
  return replace_source(agent, "file", cfg.staticPodPath ~= "" and function()
    return require("kubelua.sources.file").start(agent.pc, { path = cfg.staticPodPath,
      node = cfg.nodeName, rescan = cfg.fileCheckFrequency, on_error = on_source_error })
  end)
end

function APPLY.http(agent, cfg)
  return replace_source(agent, "http", cfg.staticPodURL ~= "" and function()
    return require("kubelua.sources.http").start(agent.pc, { url = cfg.staticPodURL,
      node = cfg.nodeName, headers = cfg.staticPodURLHeader, period = cfg.httpCheckFrequency,
      on_error = on_source_error })
  end)
end

local GROUP = {
  staticPodPath = "file", fileCheckFrequency = "file",
  staticPodURL = "http", staticPodURLHeader = "http", httpCheckFrequency = "http",
}

local function fail(problems)
  for _, p in ipairs(problems) do
    core.log("E", "config reload: " .. p)
  end
  core.log("E", string.format("config reload failed (%d problem%s); the running configuration and policies stay",
    #problems, #problems == 1 and "" or "s"))
  reloads:inc{ result = "failure" }
  last_ok:set(nil, 0)
  return nil, problems
end

-- reload(agent, path, overrides) -> true, changed | nil, problems
function M.reload(agent, path, overrides)
  local cfg, problems = acfg.load(path, overrides)
  if not cfg then
    local out = {}
    for i, p in ipairs(problems) do
      out[i] = (path or "config") .. ": " .. p
    end
    return fail(out)
  end
  local loaded, perrs = policy.load(cfg.policies)
  if not loaded then
    return fail(perrs)
  end

  local old = agent.cfg
  local changed, groups, keys = {}, {}, {}
  for k in pairs(cfg) do
    keys[#keys + 1] = k
  end
  for k in pairs(old) do
    if cfg[k] == nil then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    if not same(old[k], cfg[k]) then
      if M.LIVE[k] then
        changed[#changed + 1] = k
      else
        core.log("W", string.format("config reload: restart required for %s (%s -> %s); it keeps %s until then",
          k, show(old[k]), show(cfg[k]), show(old[k])))
        cfg[k] = old[k]
      end
    end
  end

  -- Policies are re-read every time (the files may have changed, not the paths).
  policy.apply(loaded, { gc = agent.gc, prober = agent.prober })
  agent.policies = loaded
  agent.cfg = cfg
  local errs = {}
  for _, k in ipairs(changed) do
    if APPLY[k] then
      APPLY[k](agent, cfg)
    elseif GROUP[k] and not groups[GROUP[k]] then
      groups[GROUP[k]] = true
      local ok, err = APPLY[GROUP[k]](agent, cfg)
      if not ok then
        errs[#errs + 1] = err
        core.log("E", "config reload: " .. GROUP[k] .. " source: " .. tostring(err))
      end
    end
  end
  reloads:inc{ result = "success" }
  last_success:set(nil, core.now())
  last_ok:set(nil, 1)
  core.log("I", string.format("config reloaded%s: changed: %s; policies: %s", path and (" from " .. path) or "",
    #changed > 0 and table.concat(changed, ", ") or "nothing", policy.describe(loaded)))
  return true, changed
end

return M
