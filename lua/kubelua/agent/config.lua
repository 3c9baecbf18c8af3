-- kubelua.agent.config: the agent's configuration file (YAML), with
-- KubeletConfiguration's key names and defaults where one exists, plus ours.
-- An invalid file is rejected as a whole, with every problem listed
-- (key, value, why), before anything starts.
--
--   local cfg, problems = require("kubelua.agent.config").load(path, overrides)
--
-- Durations are strings like kubelet's ("2m", "1h30m", "500ms", "20s") or
-- numbers of seconds; they come out as seconds.
local yaml = require "kubelua.yaml"

local M = {}

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname")
  local h = f and f:read("*l")
  if f then
    f:close()
  end
  return (h or "node"):lower()
end

-- key -> { type, default, check }
M.KEYS = {
  -- KubeletConfiguration
  containerRuntimeEndpoint = { "string", "unix:///run/containerd/containerd.sock" },
  imageServiceEndpoint = { "string", "" },
  runtimeRequestTimeout = { "duration", 120 },
  staticPodPath = { "string", "" },
  staticPodURL = { "string", "" },
  staticPodURLHeader = { "table", {} },
  fileCheckFrequency = { "duration", 20 },
  syncFrequency = { "duration", 60 },
  httpCheckFrequency = { "duration", 20 },
  imageGCHighThresholdPercent = { "percent", 85 },
  imageGCLowThresholdPercent = { "percent", 80 },
  imageMinimumGCAge = { "duration", 120 },
  imageMaximumGCAge = { "duration", 0 },
  podLogsDir = { "string", "/var/log/pods" },
  healthzPort = { "port", 10248 },
  healthzBindAddress = { "string", "127.0.0.1" },
  -- ours
  nodeName = { "string", "" },
  stateDir = { "string", "/var/lib/kubelua" },
  controlSocket = { "string", "" }, -- `kubelua attach`: "" = <stateDir>/control.sock, "-" = none
  kubeconfig = { "string", "" },
  relistPeriod = { "duration", 1 },
  probeTick = { "duration", 0.02 }, -- kubelua.prober's tick: probes start on its multiples
  containerGCPeriod = { "duration", 60 },
  crashLoopBackOff = { "table", {} }, -- { initial = "10s", max = "5m", reset = "10m" }
  policies = { "table", {} }, -- { gc = "path.lua", prober = "path.lua" }: kubelua.agent.policy
  logFormat = { "string", "text" }, -- text (klog) | json
}

local UNITS = { ns = 1e-9, us = 1e-6, ["µs"] = 1e-6, ms = 1e-3, s = 1, m = 60, h = 3600 }
-- Go's time.Duration is int64 nanoseconds: about 292 years. Longer is an
-- error there ("invalid duration") and here (timers would overflow).
M.MAX_DURATION = 9223372036.854775

-- parse_duration("1h30m") -> seconds | nil
function M.parse_duration(v)
  if type(v) == "number" then
    return v >= 0 and v <= M.MAX_DURATION and v or nil
  end
  if type(v) ~= "string" or v == "" then
    return nil
  end
  if v == "0" then
    return 0
  end
  local total, rest = 0, v
  while rest ~= "" do
    local num, unit, tail = rest:match("^(%d+%.?%d*)(%a+)(.*)$")
    if not num or not UNITS[unit] then
      return nil
    end
    total = total + tonumber(num) * UNITS[unit]
    rest = tail
  end
  return total <= M.MAX_DURATION and total or nil
end

-- Keys whose values may hold credentials: problems name the key, never the value.
local SECRET = { staticPodURLHeader = true }

local function check(key, spec, v, problems)
  local kind = spec[1]
  local function bad(why)
    if SECRET[key] then
      problems[#problems + 1] = string.format("%s: (a %s, not shown): %s", key, type(v), why)
      return
    end
    problems[#problems + 1] = string.format("%s: %s: %s", key, yaml.encode(v):gsub("\n$", ""), why)
  end
  if kind == "string" then
    if type(v) ~= "string" then
      return bad("must be a string")
    end
    return v
  elseif kind == "table" then
    if type(v) ~= "table" then
      return bad("must be a mapping")
    end
    return v
  elseif kind == "duration" then
    local d = M.parse_duration(v)
    if not d then
      return bad('not a duration (like "20s", "2m", "1h30m")')
    end
    return d
  elseif kind == "percent" then
    if type(v) ~= "number" or v < 0 or v > 100 or v ~= math.floor(v) then
      return bad("must be a whole number from 0 to 100")
    end
    return v
  elseif kind == "port" then
    if type(v) ~= "number" or v < 0 or v > 65535 or v ~= math.floor(v) then
      return bad("must be a port number from 0 to 65535 (0: disabled)")
    end
    return v
  end
end

-- validate(table) -> config | nil, problems (array of strings)
function M.validate(raw)
  local problems, cfg = {}, {}
  if type(raw) ~= "table" or raw[1] ~= nil then
    return nil, { "the configuration must be a mapping" .. (type(raw) == "table" and ", not a list" or "") }
  end
  for k in pairs(raw) do
    if not M.KEYS[k] and k ~= "apiVersion" and k ~= "kind" then
      problems[#problems + 1] = string.format("%s: unknown key", tostring(k))
    end
  end
  for key, spec in pairs(M.KEYS) do
    local v = raw[key]
    if v == nil or v == yaml.null then
      cfg[key] = spec[1] == "duration" and M.parse_duration(spec[2]) or spec[2]
    else
      cfg[key] = check(key, spec, v, problems)
    end
  end
  if cfg.imageGCLowThresholdPercent and cfg.imageGCHighThresholdPercent
    and cfg.imageGCLowThresholdPercent > cfg.imageGCHighThresholdPercent then
    problems[#problems + 1] = string.format(
      "imageGCLowThresholdPercent: %d: must not be above imageGCHighThresholdPercent (%d)",
      cfg.imageGCLowThresholdPercent, cfg.imageGCHighThresholdPercent)
  end
  -- a tick delays each probe by up to its length: beyond a second it would
  -- be a change of the probes' periods, not a way to share wake-ups
  if cfg.probeTick and cfg.probeTick > 1 then
    problems[#problems + 1] = string.format("probeTick: %s: must be at most 1s", tostring(raw.probeTick))
  end
  for _, k in ipairs({ "initial", "max", "reset" }) do
    local v = cfg.crashLoopBackOff and cfg.crashLoopBackOff[k]
    if v ~= nil and not M.parse_duration(v) then
      problems[#problems + 1] = string.format("crashLoopBackOff.%s: %s: not a duration", k, tostring(v))
    end
  end
  for k in pairs(cfg.crashLoopBackOff or {}) do
    if k ~= "initial" and k ~= "max" and k ~= "reset" then
      problems[#problems + 1] = string.format("crashLoopBackOff.%s: unknown key (initial, max, reset)", tostring(k))
    end
  end
  -- kubelet's map[string][]string: a header name -> a value or a list of
  -- values; values are credentials as often as not, so never echoed.
  if type(cfg.staticPodURLHeader) == "table" then
    local lines = {}
    for name, vals in pairs(cfg.staticPodURLHeader) do
      local at = "staticPodURLHeader." .. tostring(name)
      if type(name) ~= "string" or not name:find("^[%w!#$%%&'*+%-.^_`|~]+$") then
        problems[#problems + 1] = string.format("staticPodURLHeader: %q: not a header name", tostring(name))
      else
        vals = type(vals) == "table" and vals or { vals }
        if next(vals) == nil then
          problems[#problems + 1] = at .. ": needs a value"
        end
        for k, val in pairs(vals) do
          if type(k) ~= "number" or type(val) ~= "string" or val:find("[%c]") then
            problems[#problems + 1] = at .. ": (not shown): must be a string or a list of strings, without control characters"
            break
          end
          lines[#lines + 1] = name .. ": " .. val
        end
      end
    end
    table.sort(lines)
    cfg.staticPodURLHeader = lines -- "Name: value" lines, as kubelua.http takes them
  end
  if cfg.nodeName and cfg.nodeName ~= "" and (#cfg.nodeName > 253
    or not cfg.nodeName:find("^[a-z0-9][-a-z0-9.]*$") or not cfg.nodeName:find("[a-z0-9]$")) then
    problems[#problems + 1] = string.format("nodeName: %q: must be a lower-case RFC 1123 subdomain (at most 253 characters)",
      #cfg.nodeName > 80 and cfg.nodeName:sub(1, 80) .. "..." or cfg.nodeName)
  end
  for name, path in pairs(cfg.policies or {}) do
    if name ~= "gc" and name ~= "prober" then
      problems[#problems + 1] = string.format("policies.%s: unknown policy (gc, prober)", tostring(name))
    elseif type(path) ~= "string" then
      problems[#problems + 1] = string.format("policies.%s: must be a file path", tostring(name))
    end
  end
  if cfg.logFormat and cfg.logFormat ~= "text" and cfg.logFormat ~= "json" then
    problems[#problems + 1] = string.format("logFormat: %s: must be text or json", cfg.logFormat)
  end
  if cfg.nodeName == "" then
    cfg.nodeName = hostname()
  end
  table.sort(problems)
  if #problems > 0 then
    return nil, problems
  end
  return cfg
end

-- load(path | nil, overrides) -> config | nil, problems. Overrides (from
-- flags and the environment) win over the file.
function M.load(path, overrides)
  local raw = {}
  if path then
    local doc, err = yaml.decode_file(path)
    if doc == nil then
      return nil, { err }
    end
    raw = doc == yaml.null and {} or doc
    if type(raw) ~= "table" then
      return nil, { path .. ": the configuration must be a mapping" }
    end
  end
  for k, v in pairs(overrides or {}) do
    raw[k] = v
  end
  return M.validate(raw)
end

return M
