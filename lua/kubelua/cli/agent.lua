-- kubelua agent [--config FILE] [--node-name NAME] [--runtime-endpoint EP] [--static-pod-path DIR]
--               [--log-format text|json]
-- Runs the node agent until SIGTERM or SIGINT (pods keep running). SIGHUP
-- reloads the config file and policy scripts (kubelua.agent.reload). With
-- $NOTIFY_SOCKET it speaks systemd's Type=notify (kubelua.agent.notify).
-- CONTAINER_RUNTIME_ENDPOINT and flags override the file. An invalid
-- configuration is rejected before anything starts, with every problem.
local core = require "kubelua.core"
local acfg = require "kubelua.agent.config"

local M = {}

local FLAGS = {
  ["--node-name"] = "nodeName", ["--runtime-endpoint"] = "containerRuntimeEndpoint",
  ["--static-pod-path"] = "staticPodPath", ["--healthz-port"] = "healthzPort",
  ["--pod-logs-dir"] = "podLogsDir", ["--kubeconfig"] = "kubeconfig",
  ["--log-format"] = "logFormat",
}

function M.main(args)
  local path, overrides = nil, {}
  local env = os.getenv("CONTAINER_RUNTIME_ENDPOINT")
  if env and env ~= "" then
    overrides.containerRuntimeEndpoint = env
  end
  local i = 1
  while args[i] do
    local a = args[i]
    if a == "--config" and args[i + 1] then
      path = args[i + 1]
    elseif FLAGS[a] and args[i + 1] then
      overrides[FLAGS[a]] = tonumber(args[i + 1]) or args[i + 1]
      if FLAGS[a] ~= "healthzPort" then
        overrides[FLAGS[a]] = args[i + 1]
      end
    elseif a == "--config" or FLAGS[a] then
      io.stderr:write("kubelua agent: flag needs an argument: ", a, "\n")
      return core.set_exit_code(2)
    else
      io.stderr:write("kubelua agent: unknown flag: ", a, "\n")
      return core.set_exit_code(2)
    end
    i = i + 2
  end
  local cfg, problems = acfg.load(path, overrides)
  if cfg then
    local _, perrs = require("kubelua.agent.policy").load(cfg.policies)
    cfg, problems = not perrs and cfg or nil, perrs
  end
  if not cfg then
    io.stderr:write("kubelua agent: invalid configuration", path and (" in " .. path) or "", ":\n")
    for _, p in ipairs(problems) do
      io.stderr:write("  ", p, "\n")
    end
    return core.set_exit_code(2)
  end
  core.set_log_format(cfg.logFormat)
  local notifier = require("kubelua.agent.notify").new()
  -- Caught from here to the end: a signal during start or during a reload
  -- waits its turn instead of ending the process.
  local signals = core.signal_watch("TERM", "INT", "HUP")
  local agent, err = require("kubelua.agent").start(cfg)
  if not agent then
    signals:close()
    notifier:stopping("failed to start: " .. tostring(err))
    io.stderr:write("kubelua agent: ", tostring(err), "\n")
    return core.set_exit_code(1)
  end
  local stopping, ready = false, false
  if notifier.addr then
    notifier:start_watchdog()
    -- READY=1 once the runtime answers, as systemd should see it
    core.spawn(function()
      while not stopping do
        local v, verr = agent.rt:version{}
        if v then
          notifier:ready(string.format("running on node %s; runtime %s %s", cfg.nodeName,
            v.runtime_name, v.runtime_version))
          ready = true
          return
        end
        notifier:status("waiting for the runtime: " .. tostring(verr))
        core.sleep(1)
      end
    end)
  end
  while true do
    local sig = signals:next()
    if sig ~= "HUP" then
      core.log("I", "received SIG" .. sig .. ", stopping")
      break
    end
    core.log("I", "received SIGHUP, reloading " .. (path or "the configuration (no file: flags only)"))
    notifier:reloading("reloading the configuration")
    local ok, res = agent:reload(path, overrides)
    local status = ok and "configuration reloaded"
      or string.format("reload failed (%d problems); running the previous configuration", #res)
    if ready then
      notifier:ready(status)
    else -- READY=1 waits for the runtime's first answer
      notifier:status(status)
    end
  end
  stopping = true
  signals:close()
  notifier:stopping("stopping; pods are left running")
  notifier:stop_watchdog()
  agent:stop()
end

return M
