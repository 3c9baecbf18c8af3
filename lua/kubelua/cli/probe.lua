-- kubelua probe: one probe, run now, with its result and phase timings.
--
--   kubelua probe http://127.0.0.1:8080/healthz     HTTP GET, kubelet's rules
--   kubelua probe tcp://127.0.0.1:5432              TCP connect
--   kubelua probe grpc://127.0.0.1:9090 --service x grpc.health.v1 Check
--
-- The probe engine is kubelua.probe (kubelet's semantics: HTTP 200-399 is
-- success, 3xx to another host a warning; TLS not verified). Output is
-- text by default, or -o json|yaml with every detail. Exit status 0 for
-- success (and warning), 1 for failure or a probe that could not run.
local common = require "kubelua.cli.common"

local M = {}

-- (kind, options) for a target, or nil, message.
function M.target(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  scheme = scheme and scheme:lower()
  if scheme == "http" or scheme == "https" then
    return "http", { url = url }
  elseif scheme == "tcp" or scheme == "grpc" then
    local host, port = rest:match("^%[(.-)%]:(%d+)/?$")
    if not host then
      host, port = rest:match("^([^:/]+):(%d+)/?$")
    end
    port = tonumber(port)
    if not host or not port or port < 1 or port > 65535 then
      return nil, string.format("%q: want %s://HOST:PORT", url, scheme)
    end
    return scheme, { host = host, port = port }
  end
  return nil, string.format("%q: want http://..., https://..., tcp://HOST:PORT or grpc://HOST:PORT", url)
end

-- Phases as durations (seconds) from kubelua.http's cumulative timings:
-- resolve, connect, tls, processing (to the first byte), transfer.
function M.phases(t)
  if not t then
    return nil
  end
  local function us(s) -- whole microseconds: curl's resolution
    return math.floor(s * 1e6 + 0.5) / 1e6
  end
  local dns, connect = t.dns or 0, t.connect or 0
  local tls, first = t.tls or connect, t.first_byte or 0
  return { resolve = us(dns), connect = us(connect - dns), tls = us(tls - connect),
    processing = us(first - tls), transfer = us((t.total or first) - first) }
end

local PHASE_ORDER = { "resolve", "connect", "tls", "processing", "transfer" }

local function ms(s)
  return string.format("%.3f ms", s * 1000)
end

M.cmd = common.command{
  name = "probe",
  args = "[OPTIONS] URL|tcp://HOST:PORT|grpc://HOST:PORT",
  summary = "Run one probe now (kubelet's semantics) and show its result and timings.",
  own_timeout = true,
  flags = {
    { "timeout", nil, "number", "seconds the probe may take (default 1, kubelet's)", default = 1, arg = "SECONDS" },
    { "output", "o", "string", "output format: text, json or yaml", default = "text", arg = "FORMAT" },
    { "method", "X", "string", "HTTP method (default GET)", arg = "METHOD" },
    { "header", "H", "list", "HTTP header 'Name: value' (repeatable)", arg = "HEADER" },
    { "body", "d", "string", "HTTP request body", arg = "BODY" },
    { "service", nil, "string", "gRPC health service name (default \"\": the whole server)", arg = "NAME" },
  },
  run = function(ctx)
    local f = ctx.flags
    local format = ctx:format({ "text", "json", "yaml" })
    if not format then
      return
    end
    if #ctx.args ~= 1 then
      return ctx:usage(#ctx.args == 0 and "no target given" or "give exactly one target")
    end
    if f.timeout <= 0 then
      return ctx:usage("--timeout must be positive")
    end
    local kind, opts = M.target(ctx.args[1])
    if not kind then
      return ctx:usage(opts)
    end
    opts.timeout = f.timeout
    if kind == "http" then
      opts.method, opts.body = f.method, f.body
      if #f.header > 0 then
        opts.headers = {}
        for _, h in ipairs(f.header) do
          local name, value = h:match("^([^:]+):%s*(.*)$")
          if not name then
            return ctx:usage(string.format("bad header %q: want 'Name: value'", h))
          end
          opts.headers[#opts.headers + 1] = { name = name, value = value }
        end
      end
    elseif f.method or f.body or #f.header > 0 then
      return ctx:usage("--method, --header and --body are for http(s) targets")
    end
    if kind == "grpc" then
      opts.service = f.service
    elseif f.service then
      return ctx:usage("--service is for grpc targets")
    end
    local ok, probe = pcall(require, "kubelua.probe")
    if not ok then
      return ctx:fail("UNAVAILABLE: the probe engine (kubelua.probe) cannot be loaded: " .. tostring(probe))
    end
    local result, output, details = probe[kind](opts)
    details = details or {}
    local phases = M.phases(details.timings)
    if format ~= "text" then
      local json = require "kubelua.json"
      local doc = { target = ctx.args[1], kind = kind, result = result, output = output,
        duration = details.duration, status = details.status, code = details.code, error = details.error,
        redirects = details.redirects, url = details.url, phases = phases }
      if details.headers then
        doc.headers = json.object(details.headers)
      end
      ctx:emit(doc, format)
    else
      local head = result
      if details.status then
        head = head .. " " .. tostring(details.status)
      end
      ctx:line(head .. " " .. ctx.args[1] .. " in " .. ms(details.duration or 0))
      if output and output ~= "" then
        ctx:line("output: " .. (output:gsub("\n+$", ""):gsub("\n", "\n        ")))
      end
      if phases then
        for _, p in ipairs(PHASE_ORDER) do
          ctx:line(string.format("  %-11s %s", p, ms(phases[p])))
        end
      end
    end
    if result ~= "success" and result ~= "warning" then
      ctx.status = math.max(ctx.status, common.EXIT_ERROR)
    end
  end,
}
M.main, M.run, M.spec = M.cmd.main, M.cmd.run, M.cmd.spec
return M
