-- kubelua.server: an HTTP/1.1 server and a unix control socket, for the
-- agent's operator surface (healthz, metrics, `kubelua attach`).
--
--   local server = require "kubelua.server"
--   local srv = assert(server.http{
--     host = "127.0.0.1",            -- default; a numeric IPv4/IPv6 address
--     port = 0,                      -- 0: any free port, see srv:port()
--     routes = {
--       ["/healthz"] = function(req) return 200, "ok", { ["Content-Type"] = "text/plain" } end,
--     },
--   })
--   print(srv:port()); ...; srv:close()
--
-- Each request runs its handler in its own task: handler(req) ->
-- status, body (string, default ""), headers ({ Name = "value" }, optional).
-- req = { method = "GET", target = "/a?b=1", path = "/a", query = "b=1" (or nil),
--         version = "HTTP/1.1", headers = { ["lower-case-name"] = "value" },
--         body = "...", peer = "127.0.0.1:54321", conn = <connection id> }
-- Repeated request headers are joined with ", ". Routes match the path
-- exactly; anything else gets 404. A handler that throws (or returns a bad
-- status or header) gets a 500 "internal error" answer; the error and its
-- traceback are logged and the server keeps serving. Content-Length and
-- Connection are set by the server (keep-alive unless the client says close
-- or speaks HTTP/1.0 without keep-alive); a HEAD request gets no body.
-- Protocol errors are answered by the C core and close the connection:
-- 400 malformed request, 413 body over 1 MiB, 431 head over 8 KiB or over
-- 100 header fields, 501 Transfer-Encoding (bodies need Content-Length),
-- 505 other HTTP versions. Idle connections close after 60 s.
-- srv:close() stops listening and drops open connections at once.
-- Failure to listen: nil, "BIND: ...", "BIND".
--
--   local ctl = assert(server.control{
--     path = "/run/kubelua/control.sock",
--     on_connection = function(conn)
--       conn:write("hello\n")
--       while true do
--         local line, err, code = conn:read_line()   -- parks; no newline
--         if not line then break end                 -- code: EOF, CLOSED, TOO_LARGE
--         conn:write(line .. "\n")                   -- parks until written
--       end
--     end,
--   })
--   ctl:path(); ctl:close()
--
-- The socket file is created with mode 0600 before it accepts anyone (a
-- stale socket file left by a dead server is replaced; a live one is BIND).
-- Peers are checked with SO_PEERCRED: root and the agent's own uid are
-- served, others get one "ERR permission denied ..." line and are closed.
-- Each connection runs on_connection(conn) in its own task and is closed
-- when it returns or throws (logged with traceback). conn:peer() -> uid, pid.
-- ctl:close() removes the socket file and closes every open connection,
-- which ends their parked read_line() with nil, "CLOSED: ...", "CLOSED".
local core = require "kubelua.core"
local httpd = require "kubelua.server.core"
local control = require "kubelua.server.control"
local opts_check = require("kubelua.opts").check

local M = {}

local function traceback(err)
  return debug.traceback(tostring(err), 2)
end

local function respond_error(l, req, status, msg)
  l:respond(req.conn, status, { ["Content-Type"] = "text/plain" }, msg .. "\n")
end

local function handle(l, routes, req)
  req.path, req.query = req.target:match("^([^?]*)%??(.*)$")
  if req.query == "" and not req.target:find("?", 1, true) then
    req.query = nil
  end
  local fn = routes[req.path]
  if not fn then
    return respond_error(l, req, 404, "not found: " .. req.path)
  end
  local res = { xpcall(fn, traceback, req) }
  if not res[1] then
    core.log("E", "http server: handler for " .. req.path .. " failed: " .. tostring(res[2]))
    return respond_error(l, req, 500, "internal error")
  end
  local status, body, headers = res[2], res[3], res[4]
  if body == nil then
    body = ""
  end
  local hdrs = {}
  if type(headers) == "table" then
    for k, v in pairs(headers) do
      hdrs[k] = type(v) == "number" and tostring(v) or v
    end
  end
  local ok, err = pcall(l.respond, l, req.conn, status, hdrs, body)
  if not ok then
    core.log("E", "http server: handler for " .. req.path .. " returned a bad response: "
      .. tostring(err))
    respond_error(l, req, 500, "internal error")
  end
end

function M.http(opts)
  opts_check(opts, { host = "string", port = "number", routes = "table" }, "server.http", 2)
  local host = opts.host or "127.0.0.1"
  local port = opts.port or 0
  local routes = opts.routes or {}
  if port < 0 or port > 65535 or port % 1 ~= 0 then
    error("server.http: port must be an integer 0..65535", 2)
  end
  for path, fn in pairs(routes) do
    if type(path) ~= "string" or type(fn) ~= "function" then
      error("server.http: routes must map path strings to functions (" .. tostring(path) .. ")", 2)
    end
  end
  local l, err, code = httpd.listen(host, port)
  if not l then
    return nil, err, code
  end
  core.spawn(function()
    while true do
      local req = l:next()
      if not req then
        return
      end
      core.spawn(handle, l, routes, req)
    end
  end)
  local srv = {}
  function srv:port() return l:port() end
  function srv:connections() return l:connections() end
  function srv:close() l:close() end
  return srv
end

function M.control(opts)
  opts_check(opts, { path = "string", on_connection = "function" }, "server.control", 2)
  if opts.path == nil then
    error("server.control: option path is required", 2)
  end
  if opts.on_connection == nil then
    error("server.control: option on_connection is required", 2)
  end
  local l, err, code = control.listen(opts.path)
  if not l then
    return nil, err, code
  end
  local open = {} -- connections handed to Lua and not yet finished
  local closed = false
  local on_connection = opts.on_connection
  local function serve(conn)
    if closed then
      return conn:close()
    end
    open[conn] = true
    local ok, e = xpcall(on_connection, traceback, conn)
    if not ok then
      core.log("E", "control server " .. opts.path .. ": connection handler failed: " .. tostring(e))
    end
    open[conn] = nil
    conn:close()
  end
  core.spawn(function()
    while true do
      local conn = l:accept()
      if not conn then
        return
      end
      core.spawn(serve, conn)
    end
  end)
  local ctl = {}
  function ctl:path() return l:path() end
  function ctl:connections()
    local n = 0
    for _ in pairs(open) do n = n + 1 end
    return n
  end
  function ctl:close()
    closed = true
    l:close()
    for conn in pairs(open) do
      conn:close()
    end
  end
  return ctl
end

return M
