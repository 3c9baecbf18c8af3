-- kubelua agent [--config FILE] [--node-name NAME] [--runtime-endpoint EP] [--static-pod-path DIR]
-- Runs the node agent until SIGTERM or SIGINT (pods keep running).
-- CONTAINER_RUNTIME_ENDPOINT and flags override the file. An invalid
-- configuration is rejected before anything starts, with every problem.
local core = require "kubelua.core"
local acfg = require "kubelua.agent.config"

local M = {}

local FLAGS = {
  ["--node-name"] = "nodeName", ["--runtime-endpoint"] = "containerRuntimeEndpoint",
  ["--static-pod-path"] = "staticPodPath", ["--healthz-port"] = "healthzPort",
  ["--pod-logs-dir"] = "podLogsDir", ["--kubeconfig"] = "kubeconfig",
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
    else
      io.stderr:write("kubelua agent: unknown flag or missing value: ", a, "\n")
      return core.set_exit_code(2)
    end
    i = i + 2
  end
  local cfg, problems = acfg.load(path, overrides)
  if not cfg then
    io.stderr:write("kubelua agent: invalid configuration", path and (" in " .. path) or "", ":\n")
    for _, p in ipairs(problems) do
      io.stderr:write("  ", p, "\n")
    end
    return core.set_exit_code(2)
  end
  local agent, err = require("kubelua.agent").start(cfg)
  if not agent then
    io.stderr:write("kubelua agent: ", tostring(err), "\n")
    return core.set_exit_code(1)
  end
  local sig = core.wait_signal("TERM", "INT")
  core.log("I", "received SIG" .. sig .. ", stopping")
  agent:stop()
end

return M
