-- kubelua.probe: the probe engine. One call runs one probe and parks only the
-- calling task; many probes run side by side on the one loop.
--
--   local probe = require "kubelua.probe"
--   local result, output, details = probe.http{ url = "http://127.0.0.1:8080/healthz", timeout = 1 }
--   local result, output = probe.tcp{ host = "127.0.0.1", port = 5432, timeout = 1 }
--   local result, output = probe.exec{ client = rt, container_id = id, command = { "cat", "/tmp/ok" } }
--   local result, output = probe.grpc{ host = "127.0.0.1", port = 9090, service = "" }
--
-- `result` is "success", "warning" (a success with something to say, e.g. a
-- redirect not followed), "failure" or "unknown" (the probe could not be run:
-- the caller should discard it, as kubelet discards probes that errored).
-- `output` is the readable text kubelet would put in its event: the body on
-- success, the reason on failure. `details` is a table: always `duration`
-- (seconds) and, when the probe could not be run, `error`; the rest per kind.
--
-- Defaults follow kubelet (kubelet-behaviour.md section 3); every extra
-- check is opt-in. Bad options (a programming mistake) throw with the option's
-- name.
--
-- http{...}: kubelet's HTTP probe (3.6) on kubelua.http (libcurl):
--   url                       or host (default "127.0.0.1"), port, path ("/"),
--                             scheme ("http"; case-insensitive)
--   headers                   { ["Name"] = "value" } or kubelet's list form
--                             { { name = "Name", value = "v" }, ... } (repeats
--                             allowed). User-Agent "kube-probe/<M.KUBE_VERSION>"
--                             and "Accept: */*" unless given; an empty Accept
--                             removes it; a Host header sets the request host.
--   timeout                   seconds for the whole probe, redirects included (1)
--   -- beyond kubelet (all opt-in):
--   method, body              request method ("GET") and body
--   valid_status              list of codes, or a function(code) -> bool: such a
--                             code is "success", any other "failure" (default:
--                             kubelet's 200-299 success, 300-399 warning)
--   body_match / body_not_match     Lua patterns on the (first 10 KiB of) body
--   header_match              { ["name"] = "lua pattern" }: the header must be
--                             present and match
--   redirects                 "local" (default: kubelet's, same host followed,
--                             at most 10), "all", or "none"
--   verify_tls, ca_file       check the server's certificate (default: not, as kubelet)
--   max_body                  bytes of body read (10 KiB)
--   details: status, url (last requested), redirects, body_bytes, truncated,
--   headers (lowercased), timings = { dns, connect, tls, first_byte, total }
--   (seconds, of the last request; `total` is the whole probe), code (the
--   kubelua.http error code when the request failed).
--
-- tcp{ host, port, timeout }: success once the connection opens; nothing is
--   sent (3.7). A failure's output is Go's: "dial tcp 127.0.0.1:81: connect:
--   connection refused", "dial tcp 127.0.0.1:81: i/o timeout".
--
-- exec{ client, container_id, command, timeout, busy }: CRI ExecSync (3.8);
--   output = stdout then stderr, at most 10 KiB. Exit 0 is success, another
--   exit code failure, a timeout failure ('command "sleep 5" timed out after 1s'), any
--   other runtime error "unknown" (discarded, as kubelet does). The CRI call's
--   deadline is timeout + M.EXEC_GRACE seconds, not kubelet's 2 minutes plus
--   timeout, so a runtime that overruns cannot hold the worker (containerd#9568).
--   At most one exec probe runs per container: `busy` = "skip" (default)
--   returns at once "unknown" with details.skipped = true while another exec
--   probe of the same container is in flight; "wait" waits for it (polling
--   every 10 ms, within this probe's own timeout) and then runs.
--
-- grpc{ host, port, service, timeout }: grpc.health.v1.Health/Check over
--   kubelua.grpc on a new plaintext HTTP/2 connection (3.9). TLS is not
--   supported by the transport (plaintext only, as kubelet). Reasons are
--   kubelet's: "service healthy", "service unhealthy (responded with
--   \"NOT_SERVING\")", "error: this server does not implement the grpc health
--   protocol (grpc.health.v1.Health): ...", "timeout: health rpc did not
--   complete within 1s", "error: failed to connect service at \"H:P\": ...".
local core = require "kubelua.core"
local pcore = require "kubelua.probe.core"
local http_core = require "kubelua.http.core"

local M = {}

M.KUBE_VERSION = "1.33" -- the <major>.<minor> in kube-probe/<ver>
M.MAX_BODY = 10 * 1024 -- kubelet's maxRespBodyLength
M.MAX_OUTPUT = 10 * 1024 -- exec output cap
M.MAX_REDIRECTS = 10 -- redirects an HTTP probe follows (Go's client's limit)
M.EXEC_GRACE = 1 -- seconds the runtime gets beyond an exec probe's timeout

local function bad(kind, name, msg)
  error("kubelua.probe." .. kind .. ": option '" .. name .. "' " .. msg, 3)
end

local function check_opts(kind, opts, allowed)
  if type(opts) ~= "table" then
    error("kubelua.probe." .. kind .. ": expects a table of options, got " .. type(opts), 3)
  end
  for k, v in pairs(opts) do
    local want = allowed[k]
    if want == nil then
      error("kubelua.probe." .. kind .. ": unknown option '" .. tostring(k) .. "'", 3)
    end
    if want ~= "any" and type(v) ~= want and not (want == "list|function" and
        (type(v) == "table" or type(v) == "function")) then
      bad(kind, k, "must be a " .. want .. ", got " .. type(v))
    end
  end
  if opts.timeout ~= nil and not (opts.timeout > 0) then
    bad(kind, "timeout", "must be a positive number of seconds")
  end
end

local function check_port(kind, port)
  if type(port) ~= "number" or port ~= math.floor(port) or port < 1 or port > 65535 then
    bad(kind, "port", "must be an integer in 1..65535, got " .. tostring(port))
  end
end

-- Go's time.Duration text for whole and fractional seconds: 1s, 1.5s, 500ms.
function M.duration_text(secs)
  if secs >= 1 or secs == 0 then
    return (string.format("%.3f", secs):gsub("%.?0+$", "")) .. "s"
  end
  return (string.format("%.3f", secs * 1000):gsub("%.?0+$", "")) .. "ms"
end

-- [host]:port for IPv6 literals, host:port otherwise (Go's JoinHostPort).
local function join_host_port(host, port)
  if host:find(":", 1, true) then
    return "[" .. host .. "]:" .. port
  end
  return host .. ":" .. port
end

local function strip_code(err)
  return (tostring(err):gsub("^[%u_]+: ", "", 1))
end

------------------------------------------------------------------------ URLs

-- scheme, host (without brackets), port or nil, rest ("/path?query")
local function split_url(url)
  local scheme, authority, rest = url:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
  if not scheme then
    return nil
  end
  authority = authority:gsub("^.*@", "")
  local host, port = authority:match("^%[([^%]]*)%]:?(%d*)$")
  if not host then
    host, port = authority:match("^([^:]*):?(%d*)$")
  end
  if rest == "" then
    rest = "/"
  end
  return scheme:lower(), (host or authority):lower(), port ~= "" and tonumber(port) or nil, rest
end
M.split_url = split_url

-- The absolute URL a Location header points to, from the URL it came from.
function M.resolve_location(base, loc)
  if loc:match("^%a[%w+.-]*://") then
    return loc
  end
  local scheme, authority, path = base:match("^(%a[%w+.-]*://)([^/?#]*)([^#]*)")
  if loc:sub(1, 2) == "//" then
    return scheme:sub(1, -3) .. loc
  end
  local origin = scheme .. authority
  if loc:sub(1, 1) == "/" then
    return origin .. loc
  end
  local base_path = path:match("^[^?]*")
  if base_path == "" then
    base_path = "/"
  end
  if loc == "" then
    return origin .. path
  end
  if loc:sub(1, 1) == "?" then
    return origin .. base_path .. loc
  end
  -- relative path: merge with the base's folder, then drop . and ..
  local merged = (base_path:match("^(.*/)") or "/") .. loc
  local p, tail = merged:match("^([^?]*)(.*)$")
  local segs, out = {}, {}
  for seg in (p:sub(2) .. "/"):gmatch("([^/]*)/") do
    segs[#segs + 1] = seg
  end
  for i, seg in ipairs(segs) do
    if seg == ".." then
      out[#out] = nil
    elseif seg ~= "." then
      out[#out + 1] = seg
    end
    if (seg == ".." or seg == ".") and i == #segs then
      out[#out + 1] = ""
    end
  end
  return origin .. "/" .. table.concat(out, "/") .. tail
end

------------------------------------------------------------------------ HTTP

local HTTP_OPTS = {
  url = "string", host = "string", port = "number", path = "string", scheme = "string",
  headers = "table", timeout = "number", method = "string", body = "string",
  valid_status = "list|function", body_match = "string", body_not_match = "string",
  header_match = "table", redirects = "string", verify_tls = "boolean", ca_file = "string",
  max_body = "number",
}

-- Header lines for kubelua.http in its array form (repeats kept, "Name:"
-- removes a header curl would add); `host` is the Host header, if given.
local function header_lines(headers)
  local lines, given, host = {}, {}, nil
  local function add(name, value)
    if type(name) ~= "string" or not name:find("^[%w!#$%%&'*+%-.^_`|~]+$") then
      bad("http", "headers", "has an invalid header name " .. tostring(name))
    end
    value = tostring(value)
    if value:find("[\r\n%z]") then
      bad("http", "headers", "value of " .. name .. " contains CR, LF or NUL")
    end
    local lname = name:lower()
    given[lname] = true
    if lname == "host" then
      host = value
    end
    if value == "" then
      -- kubelet removes an empty Accept; other empty headers are sent empty
      lines[#lines + 1] = lname == "accept" and (name .. ":") or (name .. ";")
    else
      lines[#lines + 1] = name .. ": " .. value
    end
  end
  if headers then
    local names = {}
    for k, v in pairs(headers) do
      if type(k) == "number" then
        if type(v) ~= "table" then
          bad("http", "headers", "entry " .. k .. " must be a { name =, value = } table")
        end
        add(v.name, v.value or "")
      else
        names[#names + 1] = k
      end
    end
    table.sort(names)
    for _, k in ipairs(names) do
      add(k, headers[k])
    end
  end
  if not given["user-agent"] then
    lines[#lines + 1] = "User-Agent: kube-probe/" .. M.KUBE_VERSION
  end
  if not given["accept"] then
    lines[#lines + 1] = "Accept: */*"
  end
  if not given["connection"] then
    lines[#lines + 1] = "Connection: close" -- keep-alives off, as Go says it
  end
  return lines, host
end

-- kubelet's headers when none are given (never modified), rebuilt if
-- M.KUBE_VERSION is changed
local DEFAULT_LINES, DEFAULT_VERSION

local function status_ok(valid, code)
  if type(valid) == "function" then
    return valid(code) and true or false
  end
  for _, v in ipairs(valid) do
    if v == code then
      return true
    end
  end
  return false
end

-- Go follows 301, 302, 303, 307 and 308 when a Location is given.
local FOLLOWED = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }

function M.http(opts)
  check_opts("http", opts, HTTP_OPTS)
  local url = opts.url
  if url == nil then
    if opts.port == nil then
      bad("http", "url", "or 'port' is required")
    end
    check_port("http", opts.port)
    local scheme = (opts.scheme or "http"):lower()
    if scheme == "" then
      scheme = "http"
    end
    local path = opts.path or "/"
    if path:sub(1, 1) ~= "/" then
      path = "/" .. path
    end
    url = scheme .. "://" .. join_host_port(opts.host or "127.0.0.1", opts.port) .. path
  end
  local scheme0, host0 = split_url(url)
  if not scheme0 then
    bad("http", "url", string.format("%q is not an absolute http(s) URL", url))
  end
  local mode = opts.redirects or "local"
  if mode ~= "local" and mode ~= "all" and mode ~= "none" then
    bad("http", "redirects", "must be \"local\", \"all\" or \"none\"")
  end
  local lines, host_header
  if opts.headers == nil and opts.body == nil then
    if DEFAULT_VERSION ~= M.KUBE_VERSION then
      DEFAULT_LINES, DEFAULT_VERSION = header_lines(nil), M.KUBE_VERSION
    end
    lines = DEFAULT_LINES -- the common case: built once, only read below
  else
    lines, host_header = header_lines(opts.headers)
  end
  local timeout = opts.timeout or 1
  local max_body = opts.max_body or M.MAX_BODY
  local method, body = opts.method or "GET", opts.body
  if body ~= nil then
    -- what is sent is what was given: no form type made up by curl, no
    -- "Expect: 100-continue" round trip
    local has = {}
    for _, l in ipairs(lines) do
      has[l:lower():match("^([^:;]+)")] = true
    end
    if not has["content-type"] then
      lines[#lines + 1] = "Content-Type:"
    end
    if not has["expect"] then
      lines[#lines + 1] = "Expect:"
    end
  end

  local t0 = core.monotime()
  local details = { redirects = 0 }
  local resp
  while true do
    local left = timeout - (core.monotime() - t0)
    local err, code
    if left <= 0 then
      err, code = "TIMEOUT: " .. method .. " " .. url .. ": probe timeout of " ..
        M.duration_text(timeout) .. " exceeded", "TIMEOUT"
    else
      -- Straight to kubelua.http.core with options checked above and header
      -- lines built once: this is the hot path (thousands of probes a second),
      -- and kubelua.http's option checking, run this way from thousands of
      -- tasks, lost the url key under LuaJIT 2.1.0-beta3's JIT (bench/probe).
      local req = {}
      req.url = url
      req.method = method
      req.headers = lines
      req.timeout = left
      req.max_body = max_body
      req.truncate = true
      req.follow_redirects = false
      req.keepalive = false
      req.verify_tls = opts.verify_tls or false
      if body ~= nil then
        req.body = body
      end
      if opts.ca_file ~= nil then
        req.ca_file = opts.ca_file
      end
      resp, err, code = http_core.request(req)
    end
    details.url = url
    if not resp then
      details.code = code
      details.duration = core.monotime() - t0
      return "failure", strip_code(err), details
    end
    local loc = resp.headers.location
    if mode == "none" or not FOLLOWED[resp.status] or not loc then
      break
    end
    local next_url = M.resolve_location(url, loc)
    local ns, nh = split_url(next_url)
    if not ns or (ns ~= "http" and ns ~= "https") then
      break -- not something to follow: the 3xx is the answer
    end
    if mode == "local" and nh ~= host0 then
      break -- another host: not followed, the 3xx is returned (a warning)
    end
    if details.redirects + 1 >= M.MAX_REDIRECTS then
      details.status = resp.status
      details.duration = core.monotime() - t0
      details.code = "REDIRECTS"
      return "failure", string.format("%s %q: stopped after %d redirects",
        method:sub(1, 1) .. method:sub(2):lower(), next_url, M.MAX_REDIRECTS), details
    end
    details.redirects = details.redirects + 1
    -- Go: 301/302/303 turn a non-GET/HEAD into GET without a body; a custom
    -- Host is kept only when the Location is relative.
    if resp.status <= 303 and method ~= "GET" and method ~= "HEAD" then
      method, body = "GET", nil
    end
    if host_header and loc:match("^%a[%w+.-]*://") then
      local kept = {}
      for _, l in ipairs(lines) do
        if not l:lower():match("^host[:;]") then
          kept[#kept + 1] = l
        end
      end
      lines, host_header = kept, nil
    end
    url = next_url
  end

  local status = resp.status
  details.status = status
  details.headers = resp.headers
  details.body_bytes = #resp.body
  details.truncated = resp.truncated
  details.timings = resp.timings
  details.duration = core.monotime() - t0
  details.timings.total = details.duration
  local out = resp.body

  local result
  if opts.valid_status then
    if not status_ok(opts.valid_status, status) then
      return "failure", string.format("HTTP probe failed with statuscode: %d", status), details
    end
    result = "success"
  elseif status >= 200 and status < 300 then
    result = "success"
  elseif status >= 300 and status < 400 then
    result = "warning"
    out = "Probe terminated redirects, Response body: " .. resp.body
  else
    return "failure", string.format("HTTP probe failed with statuscode: %d", status), details
  end
  if opts.body_match and not resp.body:find(opts.body_match) then
    return "failure", string.format("HTTP probe failed: body does not match %q", opts.body_match),
      details
  end
  if opts.body_not_match and resp.body:find(opts.body_not_match) then
    return "failure", string.format("HTTP probe failed: body matches %q", opts.body_not_match),
      details
  end
  if opts.header_match then
    local names = {}
    for name in pairs(opts.header_match) do
      names[#names + 1] = name
    end
    table.sort(names)
    for _, name in ipairs(names) do
      local v = resp.headers[name:lower()]
      if v == nil then
        return "failure", string.format("HTTP probe failed: header %s missing", name), details
      elseif not v:find(opts.header_match[name]) then
        return "failure", string.format("HTTP probe failed: header %s %q does not match %q", name,
          v, opts.header_match[name]), details
      end
    end
  end
  return result, out, details
end

------------------------------------------------------------------------- TCP

local TCP_OPTS = { host = "string", port = "number", timeout = "number" }

function M.tcp(opts)
  check_opts("tcp", opts, TCP_OPTS)
  check_port("tcp", opts.port)
  local t0 = core.monotime()
  local ok, err, code = pcore.tcp_connect(opts.host or "127.0.0.1", opts.port, opts.timeout or 1)
  local details = { duration = core.monotime() - t0 }
  if ok then
    return "success", "", details
  end
  details.code = code
  return "failure", strip_code(err), details
end

------------------------------------------------------------------------ exec

local EXEC_OPTS = { client = "table", container_id = "string", command = "table",
  timeout = "number", busy = "string" }

-- container id -> true while an exec probe runs in it
M.exec_in_flight = {}

local function exec_run(opts, timeout, t0, details)
  local secs = math.max(1, math.ceil(timeout)) -- the CRI field is whole seconds
  local r, err, code = opts.client:exec_sync({ container_id = opts.container_id,
    cmd = opts.command, timeout = secs }, { timeout = timeout + M.EXEC_GRACE })
  details.duration = core.monotime() - t0
  if not r then
    details.code = code
    -- a deadline (ours or the runtime's) is the probe's timeout: a failure
    if code == "DEADLINE_EXCEEDED" or (err and err:find("timeout", 1, true) and
        err:find("exceeded", 1, true)) then
      return "failure", string.format("command %q timed out after %s", table.concat(opts.command, " "),
        M.duration_text(opts.timeout or 1)), details
    end
    details.error = err
    return "unknown", strip_code(err), details
  end
  local out = (r.stdout or "") .. (r.stderr or "")
  if #out > M.MAX_OUTPUT then
    out = out:sub(1, M.MAX_OUTPUT)
    details.truncated = true
  end
  details.exit_code = tonumber(r.exit_code)
  if details.exit_code == 0 then
    return "success", out, details
  end
  if out == "" then
    out = string.format("command %q exited with code %d", table.concat(opts.command, " "),
      details.exit_code)
  end
  return "failure", out, details
end

function M.exec(opts)
  check_opts("exec", opts, EXEC_OPTS)
  if not opts.client or type(opts.client.exec_sync) ~= "function" then
    bad("exec", "client", "must be a kubelua.cri client")
  end
  if not opts.container_id or opts.container_id == "" then
    bad("exec", "container_id", "is required")
  end
  if not opts.command or #opts.command == 0 then
    bad("exec", "command", "must be a non-empty list of strings")
  end
  local busy = opts.busy or "skip"
  if busy ~= "skip" and busy ~= "wait" then
    bad("exec", "busy", "must be \"skip\" or \"wait\"")
  end
  local timeout = opts.timeout or 1
  local id = opts.container_id
  local t0 = core.monotime()
  local details = {}
  while M.exec_in_flight[id] do
    if busy == "skip" or core.monotime() - t0 >= timeout then
      details.duration = core.monotime() - t0
      details.skipped = true
      details.error = "previous exec probe still running in container " .. id
      return "unknown", details.error, details
    end
    core.sleep(0.01)
  end
  local left = timeout - (core.monotime() - t0)
  M.exec_in_flight[id] = true
  local ok, result, out = pcall(exec_run, opts, left, t0, details)
  M.exec_in_flight[id] = nil
  if not ok then
    error(result, 0)
  end
  return result, out, details
end

------------------------------------------------------------------------ gRPC

local GRPC_OPTS = { host = "string", port = "number", service = "string", timeout = "number" }

function M.grpc(opts)
  check_opts("grpc", opts, GRPC_OPTS)
  check_port("grpc", opts.port)
  local grpc = require "kubelua.grpc"
  local timeout = opts.timeout or 1
  local service = opts.service or ""
  local target = join_host_port(opts.host or "127.0.0.1", opts.port)
  local t0 = core.monotime()
  local details = {}
  local ch, cerr = grpc.channel(target)
  if not ch then
    details.duration = core.monotime() - t0
    details.error = cerr
    return "unknown", strip_code(cerr), details
  end
  local m = grpc.methods()["/grpc.health.v1.Health/Check"]
  local resp, err, code = ch:unary(m, { service = service }, timeout)
  ch:close()
  details.duration = core.monotime() - t0
  details.code = code
  if resp then
    details.status = resp.status
    if resp.status == "SERVING" then
      return "success", "service healthy", details
    end
    return "failure", string.format("service unhealthy (responded with %q)", tostring(resp.status)),
      details
  end
  local msg = strip_code(err)
  if code == "UNIMPLEMENTED" then
    return "failure", "error: this server does not implement the grpc health protocol " ..
      "(grpc.health.v1.Health): " .. msg, details
  elseif code == "DEADLINE_EXCEEDED" then
    return "failure", "timeout: health rpc did not complete within " .. M.duration_text(timeout),
      details
  elseif code == "UNAVAILABLE" and msg:find("connect to", 1, true) then
    return "failure", string.format("error: failed to connect service at %q: %s", target, msg),
      details
  end
  return "failure", "error: health rpc probe failed: " .. err, details
end

return M
