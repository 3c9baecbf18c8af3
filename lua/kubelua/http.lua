-- kubelua.http: an HTTP(S) client on the host's loop (libcurl multi, no thread).
--
--   local http = require "kubelua.http"
--   local resp, err, code = http.request{ url = "http://127.0.0.1:10248/healthz", timeout = 1 }
--   if resp then print(resp.status, resp.headers["content-type"], #resp.body) end
--   local r = assert(http.get("http://127.0.0.1:8080/", { max_body = 4096, truncate = true }))
--
-- A request parks the calling task until the transfer ends; many tasks can
-- have requests in flight at once. It must run in a task (a script started by
-- `kubelua run`, or kubelua.task.spawn).
--
-- Options (all optional but url; unknown names and wrong types throw):
--   url               string: http:// or https:// (other schemes give URL)
--   method            "GET" (default), "HEAD", "POST", "PUT", any token
--   headers           { ["Name"] = "value", ... } or { "Name: value", ... };
--                     a map value "" sends an empty header; an array line
--                     "Name:" (no value) removes a header curl would add
--   body              string sent as the request body (any method but HEAD);
--                     no Content-Type is added unless given in headers
--   timeout           seconds for the whole request (default 10; 0 = none)
--   connect_timeout   seconds to connect (default: up to timeout)
--   max_body          bytes of response body accepted (default 10 MiB)
--   truncate          false (default): a longer body fails with TOO_LARGE;
--                     true: the first max_body bytes, resp.truncated = true
--   follow_redirects  false (default): a 3xx is the response
--   max_redirects     when following (default 10)
--   verify_tls        true (default): check the server's certificate and name
--   ca_file, cert_file, key_file   PEM files: CA bundle, client certificate/key
--   unix_socket       connect to this unix socket path instead (the URL's
--                     host is only the Host header)
--   keepalive         true (default): reuse connections between requests;
--                     false: a new connection, closed afterwards
--   proxy             proxy URL; by default none (the environment's
--                     http_proxy & co. are never used)
--   stream            false (default): the whole body in resp.body;
--                     true: return once the final response's headers are
--                     in, and read the body piecewise (below)
--
-- The response: { status = 200, headers = { ["content-type"] = "...", ... },
--   body = "...", url = "effective URL", truncated = false, redirects = 0,
--   reused = false, timings = { dns =, connect =, tls =, first_byte =, total = } }
-- Header names are lowercased; a repeated header's values are joined with
-- ", ". `reused` is true when no new connection was made (keep-alive).
-- Timings come from curl's *_TIME_T figures: seconds from the start of the
-- request to the end of each phase. A phase that did not happen (tls on
-- http://, dns and connect on a reused connection) ends with the phase
-- before it, so always dns <= connect <= tls <= first_byte <= total, and
-- tls - connect is the handshake time, first_byte - tls the server's.
-- An HTTP status, 404 or 500 included, is a response, never an error. A failure
-- returns nil, "CODE: METHOD url: message", "CODE" with CODE one of:
--   TIMEOUT    timeout or connect_timeout expired
--   CONNECT    connection refused or unreachable
--   DNS        host name not resolved
--   PROXY      proxy not resolved or failed
--   TLS        handshake, certificate or key problem
--   HTTP2      HTTP/2 (or HTTP/3) framing or stream error
--   TOO_LARGE  body over max_body (without truncate), or headers over 1 MiB
--   REDIRECTS  more than max_redirects redirects
--   URL        malformed URL or a scheme other than http/https
--   CLOSED     the server closed the connection before a complete response
--   IO         send or receive failed
--   PROTOCOL   the server's reply is not valid HTTP (or bad content encoding)
--   ERROR      anything else (out of memory, ...)
--   CANCELLED  (streams) read on a stream that was closed
--
-- Streams: with `stream = true` the response has no `body`; instead
--   resp:read()   -> the bytes received since the last read (a non-empty
--                    string; parks while none are there), then nil once the
--                    body ended, or nil, "CODE: METHOD url: message", "CODE"
--                    when the transfer failed after the headers (the bytes
--                    received before the failure are read first)
--   resp:close()  ends the transfer at once (a task parked in read() gets
--                    nil, "CANCELLED: ...", "CANCELLED"); closing twice is fine
--   resp:done()   -> true once the transfer ended (bytes may still be queued)
-- `max_body` then bounds the bytes received and not read yet: when that
-- many wait, the transfer pauses (the peer is held back by TCP) until the
-- next read. `timeout` still covers the whole transfer (0: none). One task
-- at a time waits on a stream. A stream dropped without close() is ended
-- when it is collected. Errors before the headers are returned by request()
-- as usual.
--
-- open(opts) -> s: the same stream, returned at once (it never parks, so
-- another task can close() it in any phase): the transfer starts on the
-- next loop turn; s:response() parks until the headers are in and returns
-- the response table (or nil, err, code); s:read(), s:close(), s:done() as
-- above. A failure to start (a bad option value curl refuses) is what
-- s:response() returns. `stream` is implied.
local core = require "kubelua.http.core"
local opts_check = require("kubelua.opts").check

local M = {}

-- Every CODE a request can fail with (the third result), CURLcode numbers mapped by code_name.
M.CODES = { "TIMEOUT", "CONNECT", "DNS", "PROXY", "TLS", "HTTP2", "TOO_LARGE", "REDIRECTS", "URL",
  "CLOSED", "IO", "PROTOCOL", "ERROR", "CANCELLED" }

-- Options request{} and open{} fill in when a call leaves them out.
M.defaults = {
  method = "GET",
  timeout = 10,
  max_body = 10 * 1024 * 1024,
  truncate = false,
  follow_redirects = false,
  max_redirects = 10,
  verify_tls = true,
  keepalive = true,
  user_agent = "kubelua/" .. require("kubelua.core").version,
}

local OPTIONS = {
  url = "string", method = "string", headers = "table", body = "string", timeout = "number",
  connect_timeout = "number", max_body = "number", truncate = "boolean",
  follow_redirects = "boolean", max_redirects = "number", verify_tls = "boolean",
  ca_file = "string", cert_file = "string", key_file = "string", unix_socket = "string",
  keepalive = "boolean", proxy = "string", stream = "boolean",
}

local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"

-- Errors are raised without position here (`where` names the function the
-- caller called) and re-raised by request/get/open at the caller's line.
local function bad(where, msg)
  error(where .. ": " .. msg, 0)
end

local function no_ctl(where, s)
  if s:find("[\r\n%z]") then
    bad(where, "option headers: a header contains CR, LF or NUL")
  end
end

-- { "Name: value", ... } from the map or array form; `given` collects the
-- lowercased names so defaults do not override them.
local function header_lines(where, h, given)
  local lines, names = {}, {}
  for k, v in pairs(h) do
    if type(k) == "number" then
      if type(v) ~= "string" then
        bad(where, "option headers: entry " .. k .. " must be a \"Name: value\" string, got " .. type(v))
      end
      local name = v:match("^([^:;]*)[:;]")
      if not name or not name:find(TOKEN) then
        -- the line may carry a credential: say where, not what
        bad(where, string.format("option headers: entry %d (%d bytes) is not a \"Name: value\" line", k, #v))
      end
      no_ctl(where, v)
      lines[#lines + 1] = v
      given[name:lower()] = true
    elseif type(k) == "string" then
      if not k:find(TOKEN) then
        bad(where, string.format("option headers: %q is not a valid header name", k))
      end
      if type(v) ~= "string" and type(v) ~= "number" then
        bad(where, string.format("option headers: value of %q must be a string or number, got %s", k,
          type(v)))
      end
      v = tostring(v)
      no_ctl(where, v)
      names[#names + 1] = k
      given[k:lower()] = true
    else
      bad(where, "option headers: keys must be header names or array indexes, got " .. type(k))
    end
  end
  table.sort(names)
  for _, k in ipairs(names) do
    local v = tostring(h[k])
    -- curl's syntax: "Name;" sends an empty header, "Name:" would remove it
    lines[#lines + 1] = v == "" and (k .. ";") or (k .. ": " .. v)
  end
  return lines
end

-- Check `opts` and build the table kubelua.http.core takes; errors name
-- `where` (kubelua.http.request, .get or .open).
local function prepare(where, opts)
  local o = {}
  for k, v in pairs(opts_check(opts, OPTIONS, where, 0)) do
    if OPTIONS[k] == "number" and (v < 0 or v ~= v or v == math.huge) then
      bad(where, "option " .. k .. " must be a non-negative number, got " .. tostring(v))
    end
    o[k] = v
  end
  if o.url == nil then
    bad(where, "option url is required")
  end
  for k, v in pairs(M.defaults) do
    if o[k] == nil and OPTIONS[k] then
      o[k] = v
    end
  end
  if not o.method:find(TOKEN) then
    bad(where, string.format("option method %q is not an HTTP method", o.method))
  end
  if o.method == "HEAD" and o.body ~= nil then
    bad(where, "option body is not allowed with method HEAD")
  end
  if o.stream and o.truncate then
    bad(where, "option truncate is not allowed with stream")
  end
  if o.max_redirects ~= math.floor(o.max_redirects) then
    bad(where, "option max_redirects must be an integer")
  end
  local given = {}
  local lines = o.headers and header_lines(where, o.headers, given) or {}
  if not given["user-agent"] and M.defaults.user_agent then
    lines[#lines + 1] = "User-Agent: " .. M.defaults.user_agent
  end
  if o.body ~= nil or o.method == "POST" then
    -- What is sent is what was given: no form Content-Type made up by curl,
    -- and no "Expect: 100-continue" round trip for large bodies.
    if not given["content-type"] then
      lines[#lines + 1] = "Content-Type:"
    end
    if not given["expect"] then
      lines[#lines + 1] = "Expect:"
    end
  end
  o.headers = lines
  return o
end

-- A streamed response: resp:read(), resp:close(), resp:done() on resp.stream.
local stream_resp = {
  __index = {
    read = function(self)
      return self.stream:read()
    end,
    close = function(self)
      return self.stream:close()
    end,
    done = function(self)
      return self.stream:done()
    end,
  },
}

local function send(o)
  if not o.stream then
    return core.request(o)
  end
  o.stream = nil
  local s = core.open(o)
  local resp, err, code = s:response()
  if not resp then
    s:close()
    return nil, err, code
  end
  resp.stream = s
  return setmetatable(resp, stream_resp)
end

-- request(opts) -> resp | nil, err, code   (parks the task)
function M.request(opts)
  local ok, o = pcall(prepare, "kubelua.http.request", opts)
  if not ok then
    error(o, 2)
  end
  return send(o)
end

-- get(url, opts) -> resp | nil, err, code
function M.get(url, opts)
  if type(url) ~= "string" then
    error("kubelua.http.get: url must be a string, got " .. type(url), 2)
  end
  local o = {}
  if opts ~= nil then
    for k, v in pairs(opts_check(opts, OPTIONS, "kubelua.http.get", 2)) do
      o[k] = v
    end
  end
  o.url = url
  local ok, p = pcall(prepare, "kubelua.http.get", o)
  if not ok then
    error(p, 2)
  end
  return send(p)
end

-- open(opts) -> stream (see above); bad options throw as for request
function M.open(opts)
  local ok, o = pcall(prepare, "kubelua.http.open", opts)
  if not ok then
    error(o, 2)
  end
  if o.truncate then
    error("kubelua.http.open: option truncate is not allowed with open", 2)
  end
  o.stream = nil
  return core.open(o)
end

-- code_name(curlcode) -> the CODE a libcurl CURLcode number maps to
M.code_name = core.code_name
-- curl_version() -> libcurl's version string (the libcurl.so.4 loaded on first use).
M.curl_version = core.version

return M
