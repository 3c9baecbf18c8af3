-- kubelua.watch.http: poll a URL and report its content when it changes (the
-- mechanism under kubelet's HTTP pod source, reference section 4.5).
--
--   local http_watch = require "kubelua.watch.http"
--   local poller = http_watch.start {
--     url = "http://config.local/pods.yaml",
--     headers = { ["X-Node"] = "node-1" },    -- kubelet's staticPodURLHeader
--     on_change = function(body, resp) end,    -- the new content, and the response
--     on_error = function(err, code) end,      -- "CODE: GET url: ...", CODE
--   }
--   ...
--   poller:stop()
--
-- Each poll GETs the URL (no redirects followed, TLS verified) with a
-- `timeout` (10 s) for the whole request and at most `max_body` bytes of
-- body (10 MiB, kubelet's maxConfigLength); the next poll starts `period`
-- seconds (20, kubelet's httpCheckFrequency) after the previous one ended.
-- The first poll runs at once.
--
-- What a poll reports:
--   status 200, a body different from the last body received
--                           -> on_change(body, resp) (resp without body)
--   status 200, the same body   -> nothing (compared byte for byte)
--   status 200, an empty body   -> on_error("EMPTY: GET url: zero-length data
--                              received", "EMPTY") every time, as kubelet does,
--                              and on_change("", resp) when that is a change
--   any other status        -> on_error("HTTP_STATUS: GET url: 404", "HTTP_STATUS")
--   a body over max_body    -> on_error("TOO_LARGE: GET url: response body
--                              exceeds max_body (N bytes)", "TOO_LARGE")
--   a transport failure     -> on_error with kubelua.http's message and code
--                              (TIMEOUT, CONNECT, TLS, CLOSED, ...)
-- After an error the last good body stays the reference, so the same content
-- coming back is not a change. The poller keeps going whatever happens.
-- URLs in messages have any user:password replaced by ***.
--
-- Callbacks run in the poller's task, one at a time; an error they throw is
-- logged with its traceback and the poller goes on. Errors are also logged
-- (klog "W"): the first 3 in a row, then one in 20, as kubelet quiets a
-- failing source (log = false turns this off).
--
-- poller:stop() ends a request in flight at once and returns when the
-- poller's task has finished (so nothing is left parked); called from a
-- callback it does not wait. poller.stats counts polls, changes, unchanged
-- and errors; poller.body is the last body received; poller.job is the
-- polling task (a kubelua.task job: poller.job.running is false once it has
-- finished).
local core = require "kubelua.core"
local http = require "kubelua.http"
local options = require "kubelua.opts"
local task = require "kubelua.task"

local M = {}

-- Options new{} fills in when left out.
M.defaults = {
  period = 20,
  timeout = 10,
  max_body = 10 * 1024 * 1024,
  log = true,
}

local OPTIONS = {
  url = "string", headers = "table", period = "number", timeout = "number", max_body = "number",
  on_change = "function", on_error = "function", log = "boolean", verify_tls = "boolean",
  ca_file = "string", cert_file = "string", key_file = "string", unix_socket = "string",
}

local Poller = {}
Poller.__index = Poller

-- The callback opts[name](...), protected (see task.job's call).
local function call(p, name, ...)
  p.job:call(name, p.opts[name], ...)
end

local function report(p, err, code)
  p.stats.errors = p.stats.errors + 1
  p.failures = p.failures + 1
  if p.log and (p.failures <= 3 or p.failures % 20 == 0) then
    core.log("W", err .. (p.failures > 3 and string.format(" (%d failures in a row)", p.failures) or ""))
  end
  call(p, "on_error", err, code)
end

-- One GET: body, resp | nil, err, code (nil, nil when stopped).
local function fetch(p)
  local o = p.request
  local s = http.open(o)
  p.stream = s
  local function done(...)
    s:close()
    if p.stream == s then
      p.stream = nil
    end
    if p.job.stopped then
      return nil
    end
    return ...
  end
  local resp, err, code = s:response()
  if not resp then
    return done(nil, err, code)
  end
  if resp.status ~= 200 then
    return done(nil, string.format("HTTP_STATUS: %s: %d", p.label, resp.status), "HTTP_STATUS")
  end
  local parts, n = {}, 0
  while true do
    local data, rerr, rcode = s:read()
    if not data then
      if rerr then
        return done(nil, rerr, rcode)
      end
      break
    end
    n = n + #data
    if n > p.max_body then
      return done(nil, string.format("TOO_LARGE: %s: response body exceeds max_body (%d bytes)", p.label,
        p.max_body), "TOO_LARGE")
    end
    parts[#parts + 1] = data
  end
  return done(table.concat(parts), resp)
end

local function poll(p)
  p.stats.polls = p.stats.polls + 1
  local body, resp, code = fetch(p)
  if p.job.stopped then
    return
  end
  if body == nil then
    report(p, resp, code)
    return
  end
  if body == "" then
    report(p, string.format("EMPTY: %s: zero-length data received", p.label), "EMPTY")
  else
    p.failures = 0
  end
  if body == p.body then
    p.stats.unchanged = p.stats.unchanged + 1
    return
  end
  p.body = body
  p.stats.changes = p.stats.changes + 1
  call(p, "on_change", body, resp)
end

-- start(opts) -> poller. opts: url (required), headers, period, timeout,
-- max_body, on_change, on_error, log, and the TLS options of kubelua.http
-- (verify_tls, ca_file, cert_file, key_file) and unix_socket. Unknown names
-- and wrong types throw.
function M.start(opts)
  if type(opts) ~= "table" then
    error("kubelua.watch.http: start expects a table of options, got " .. type(opts), 2)
  end
  options.check(opts, OPTIONS, "kubelua.watch.http", 2)
  for k, v in pairs(opts) do
    if OPTIONS[k] == "number" and not (v > 0 and v < math.huge) then
      error(string.format("kubelua.watch.http: option %s must be a positive number, got %s", k,
        tostring(v)), 2)
    end
  end
  if not opts.url then
    error("kubelua.watch.http: option url is required", 2)
  end
  local max_body = opts.max_body or M.defaults.max_body
  local request = {
    url = opts.url, method = "GET", headers = opts.headers,
    timeout = opts.timeout or M.defaults.timeout,
    max_body = math.min(max_body + 1, 1024 * 1024), -- read-ahead; fetch caps the total
    verify_tls = opts.verify_tls, ca_file = opts.ca_file, cert_file = opts.cert_file,
    key_file = opts.key_file, unix_socket = opts.unix_socket,
  }
  http.open(request):close() -- bad header names or values throw here, in the caller
  local p = setmetatable({
    opts = opts,
    request = request,
    label = "GET " .. opts.url:gsub("^(%a+://)[^/@]*@", "%1***@"),
    period = opts.period or M.defaults.period,
    max_body = max_body,
    log = opts.log ~= false and M.defaults.log,
    failures = 0,
    stats = { polls = 0, changes = 0, unchanged = 0, errors = 0 },
  }, Poller)
  -- p.job: the polling task; cancelling it also ends the request in flight.
  p.job = task.job(function(j)
    while not j.stopped do
      poll(p)
      j:pause(p.period)
    end
  end, {
    name = "watch.http " .. p.label,
    on_cancel = function()
      if p.stream then
        p.stream:close()
      end
    end,
  })
  return p
end

-- stop(): no poll after this; returns once the poller's task has finished.
function Poller:stop()
  self.job:stop()
end

function Poller:__tostring()
  return "watch.http " .. self.label
end

return M
