-- kubelua.server: the HTTP server (real requests from kubelua.http, curl and
-- raw sockets on 127.0.0.1) and the unix control socket (python3 clients,
-- one of them running as nobody).
local t = require "spec.t"
local S = require "spec.support"
local task = require "kubelua.task"
local core = require "kubelua.core"
local http = require "kubelua.http"
local server = require "kubelua.server"

local PY = "/usr/bin/python3"
local dir -- per-test temp folder
local seq = 0

t.before_each(function() dir = S.tmpdir("server") end)
t.after_each(function() S.rm(dir) dir = nil end)

local function write(path, s)
  local f = assert(io.open(path, "w"))
  f:write(s)
  f:close()
end

-- Run a shell command in the background (the server lives in this process,
-- so a blocking command would deadlock it). bg_start returns a function that
-- parks until the command ends and returns its output and exit status.
local function bg_start(cmd, timeout)
  seq = seq + 1
  local out = string.format("%s/bg%d.out", dir, seq)
  local pid = S.spawn(string.format("%s; echo $? > %s.rc", cmd, out), out)
  return function()
    local took = S.wait_for(function() return S.exists(out .. ".rc") end, timeout or 20, 0.02)
    if not took then
      S.kill(pid, "KILL")
      return nil, "timed out: " .. cmd
    end
    return S.read_file(out), tonumber((S.read_file(out .. ".rc") or ""):match("%d+"))
  end
end

local function bg(cmd, timeout)
  return bg_start(cmd, timeout)()
end

-- raw.py PORT FILE: send FILE's bytes, half-close, print all received.
local RAW = [[
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(open(sys.argv[2], "rb").read())
try:
    s.shutdown(socket.SHUT_WR)
except OSError:
    pass
buf = b""
try:
    while True:
        d = s.recv(65536)
        if not d:
            break
        buf += d
except OSError as e:
    buf += ("\nEXC %s" % e).encode()
sys.stdout.write(buf.decode("latin-1"))
]]

-- fuzz.py PORT N: N connections of random bytes; prints how many got an answer.
local FUZZ = [[
import random, socket, sys
random.seed(7)
port, n, answered = int(sys.argv[1]), int(sys.argv[2]), 0
pieces = [b"GET ", b"/ ", b"HTTP/1.1", b"\r\n", b"\n", b":", b" ", b"\x00", b"\xff",
          b"Content-Length: 5", b"Content-Length: -1", b"Host: x", b"\r\n\r\n"]
for i in range(n):
    if i % 2:
        data = bytes(random.getrandbits(8) for _ in range(random.randint(1, 3000)))
    else:
        data = b"".join(random.choice(pieces) for _ in range(random.randint(1, 40)))
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        if s.recv(16):
            answered += 1
    except OSError:
        pass
    s.close()
print("answered", answered)
]]

-- ctl.py PATH LINE...: connect, send each line, print each line received
-- until as many lines came back as were sent (or EOF).
local CTL = [[
import socket, sys
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(sys.argv[1])
    try:
        for line in sys.argv[2:]:
            s.sendall((line + "\n").encode())
    except BrokenPipeError:
        pass  # refused peers are closed at once; read what was said
    buf = b""
    while buf.count(b"\n") < max(1, len(sys.argv) - 2):
        d = s.recv(4096)
        if not d:
            break
        buf += d
    sys.stdout.write(buf.decode())
except OSError as e:
    print("EXC", e.__class__.__name__, e)
]]

local function script(name, body)
  local path = dir .. "/" .. name
  write(path, body)
  return path
end

local function raw(port, bytes)
  local req = dir .. "/req" .. (seq + 1)
  write(req, bytes)
  return bg(string.format("%s %s %d %s", PY, script("raw.py", RAW), port, req))
end

local function start(routes)
  local srv = assert(server.http{ routes = routes or {
    ["/healthz"] = function() return 200, "ok", { ["Content-Type"] = "text/plain" } end,
    ["/boom"] = function() error("handler exploded") end,
    ["/echo"] = function(req)
      return 201, req.method .. "|" .. req.path .. "|" .. tostring(req.query) .. "|" .. req.body,
        { ["X-Len"] = #req.body, ["X-Test"] = req.headers["x-test"] }
    end,
    ["/peer"] = function(req) return 200, req.peer .. "\n" end,
    ["/slow"] = function() task.sleep(0.2) return 200, "slow" end,
    ["/badheader"] = function() return 200, "x", { ["Bad\nName"] = "v" } end,
  } })
  return srv, "http://127.0.0.1:" .. srv:port()
end

t.describe("server.http", function()
  t.it("serves routes, 404 for unknown paths, query and body reach the handler", function()
    local srv, base = start()
    local ok, err = pcall(function()
      t.ok(srv:port() > 0, "port 0 reports the bound port")
      local r = assert(http.request{ url = base .. "/healthz" })
      t.eq({ r.status, r.body, r.headers["content-type"], r.headers["content-length"] },
        { 200, "ok", "text/plain", "2" })
      r = assert(http.request{ url = base .. "/nope" })
      t.eq(r.status, 404)
      r = assert(http.request{ url = base .. "/echo?a=1&b=2", method = "POST", body = "hello",
        headers = { ["X-Test"] = "yes" } })
      t.eq({ r.status, r.body, r.headers["x-len"], r.headers["x-test"] },
        { 201, "POST|/echo|a=1&b=2|hello", "5", "yes" })
      r = assert(http.request{ url = base .. "/healthz", method = "HEAD" })
      t.eq({ r.status, r.body, r.headers["content-length"] }, { 200, "", "2" })
    end)
    srv:close()
    assert(ok, err)
  end)

  t.it("a handler error is a 500 (logged) and the server keeps serving", function()
    local srv, base = start()
    local ok, err = pcall(function()
      local r = assert(http.request{ url = base .. "/boom" })
      t.eq({ r.status, r.body }, { 500, "internal error\n" })
      r = assert(http.request{ url = base .. "/badheader" })
      t.eq(r.status, 500, "a bad response header is a 500 too")
      r = assert(http.request{ url = base .. "/healthz" })
      t.eq({ r.status, r.body }, { 200, "ok" })
    end)
    srv:close()
    assert(ok, err)
  end)

  t.it("keeps a connection alive across requests (curl, two URLs)", function()
    local srv, base = start()
    local out, rc = bg(string.format("curl -sS --max-time 5 %s/peer %s/peer", base, base))
    srv:close()
    t.eq(rc, 0, out)
    local a, b = (out or ""):match("^(127%.0%.0%.1:%d+)\n(127%.0%.0%.1:%d+)\n$")
    t.ok(a, "two answers: " .. tostring(out))
    t.eq(a, b, "both requests came over one connection")
  end)

  t.it("answers HTTP/1.0 and Connection: close, then closes", function()
    local srv = start()
    local out = raw(srv:port(), "GET /healthz HTTP/1.0\r\n\r\n")
    local out2 = raw(srv:port(), "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    srv:close()
    t.match(out, "^HTTP/1%.1 200 OK\r\n.*Connection: close\r\n\r\nok$")
    t.match(out2, "^HTTP/1%.1 200 OK\r\n.*Connection: close\r\n\r\nok$")
  end)

  t.it("serves pipelined requests in order", function()
    local srv = start()
    local out = raw(srv:port(), "GET /echo?1 HTTP/1.1\r\n\r\nPOST /echo?2 HTTP/1.1\r\n"
      .. "Content-Length: 3\r\n\r\nabcGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    srv:close()
    t.match(out, "GET|/echo|1|.*POST|/echo|2|abc.*\r\n\r\nok$")
  end)

  t.it("rejects bad input with 400/413/431/501/505 and closes", function()
    local srv = start()
    local port = srv:port()
    local cases = {
      { "GARBAGE\r\n\r\n", "^HTTP/1%.1 400 Bad Request\r\n.*malformed request line" },
      { "GET /\0 HTTP/1.1\r\n\r\n", "^HTTP/1%.1 400 " },
      { "GET / HTTP/1.1\r\nNo colon here\r\n\r\n", "^HTTP/1%.1 400 .*malformed header" },
      { "GET / HTTP/1.1\r\n folded: x\r\n\r\n", "^HTTP/1%.1 400 " },
      { "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "^HTTP/1%.1 400 " },
      { "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", "^HTTP/1%.1 400 " },
      { "GET / HTTP/1.1\r\nX-Big: " .. ("a"):rep(9000) .. "\r\n\r\n",
        "^HTTP/1%.1 431 Request Header Fields Too Large\r\n" },
      { "GET / HTTP/1.1\r\n" .. ("X-A: b\r\n"):rep(101) .. "\r\n", "^HTTP/1%.1 431 " },
      { "POST /echo HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n", "^HTTP/1%.1 413 " },
      { "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "^HTTP/1%.1 501 " },
      { "GET / HTTP/2.0\r\n\r\n", "^HTTP/1%.1 505 " },
    }
    local outs = {}
    for i, c in ipairs(cases) do
      outs[i] = raw(port, c[1]) or ""
    end
    local r = http.request{ url = "http://127.0.0.1:" .. port .. "/healthz" }
    srv:close()
    for i, c in ipairs(cases) do
      t.match(outs[i], c[2], "case " .. i)
      t.match(outs[i], "Connection: close\r\n", "case " .. i .. " closes")
    end
    t.eq(r and r.status, 200, "still serving")
  end)

  t.it("accepts a 1 MiB body (curl, Expect: 100-continue)", function()
    local srv, base = start()
    local body = dir .. "/body"
    write(body, ("x"):rep(1024 * 1024))
    local out, rc = bg(string.format(
      "curl -sS --max-time 10 -D - -o /dev/null -H 'Expect: 100-continue' --data-binary @%s %s/echo",
      body, base))
    srv:close()
    t.eq(rc, 0, out)
    t.match(out, "HTTP/1%.1 201 Created")
    t.match(out, "X%-Len: 1048576")
  end)

  t.it("survives random garbage and keeps serving", function()
    local srv, base = start()
    local out = bg(string.format("%s %s %d 200", PY, script("fuzz.py", FUZZ), srv:port()), 40)
    local r = http.request{ url = base .. "/healthz" }
    srv:close()
    t.match(out, "answered %d+")
    t.eq(r and r.status, 200)
  end)

  t.it("serves 100 concurrent requests concurrently", function()
    local srv, base = start()
    local fns = {}
    for i = 1, 100 do
      fns[i] = function()
        return assert(http.request{ url = base .. "/slow", keepalive = false, timeout = 10 })
      end
    end
    local t0 = task.monotime()
    local res = task.gather(fns)
    local took = task.monotime() - t0
    srv:close()
    for i = 1, 100 do
      t.ok(res[i][1], tostring(res[i][2]))
      t.eq(res[i][2].status, 200)
    end
    t.ok(took < 5, "100 x 0.2 s handlers overlapped: took " .. took .. " s")
  end)

  t.it("close ends the accept task and drops connections; a taken port is BIND", function()
    local srv, base = start()
    assert(http.request{ url = base .. "/healthz" })
    local s2, err, code = server.http{ port = srv:port() }
    t.eq({ s2, code }, { nil, "BIND" })
    t.match(err, "^BIND: listen on 127%.0%.0%.1 port %d+")
    srv:close()
    task.sleep(0.05)
    t.eq(core.parked_count(), 0)
    local r, e2, c2 = http.request{ url = base .. "/healthz", timeout = 2 }
    t.eq({ r, c2 }, { nil, "CONNECT" }, e2)
    t.eq(srv:connections(), 0)
  end)

  t.it("an unreferenced listener is closed by the collector", function()
    local l = require("kubelua.server.core").listen("127.0.0.1", 0)
    local port = l:port()
    l = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    task.sleep(0.01)
    local r, _, code = http.request{ url = "http://127.0.0.1:" .. port .. "/", timeout = 2 }
    t.eq({ r, code }, { nil, "CONNECT" })
  end)

  t.it("rejects bad options by name", function()
    t.fails(function() server.http{ prot = 1 } end, "server%.http: unknown option prot$")
    t.fails(function() server.http{ host = 1 } end, "server%.http: option host must be a string, got number$")
    t.fails(function() server.http{ port = "80" } end, "server%.http: option port must be a number, got string$")
    t.fails(function() server.http{ routes = "/" } end, "server%.http: option routes must be a table, got string$")
    t.fails(function() server.http() end, "server%.http: options must be a table, got nil$")
    t.fails(function() server.http{ routes = { ["/"] = 1 } } end, "routes must map")
    t.fails(function() server.http{ port = 70000 } end, "port must be")
    t.fails(function() server.http{ port = 0 / 0 } end, "port must be")
    t.fails(function() server.control{ path = dir .. "/s" } end, "server%.control: option on_connection is required$")
    t.fails(function() server.control{ on_connection = print } end, "server%.control: option path is required$")
    t.fails(function() server.control{ path = dir .. "/s", on_connection = true } end,
      "server%.control: option on_connection must be a function, got boolean$")
    t.fails(function() server.control{ path = dir .. "/s", on_connection = print, mode = 384 } end,
      "server%.control: unknown option mode$")
  end)

  t.it("blames bad options on the caller's line", function()
    local line = debug.getinfo(1, "l").currentline + 1
    local e = t.fails(function() server.http{ host = false } end)
    t.match(e, "^[^:]*server_spec%.lua:" .. line .. ": server%.http: option host must be a string, got boolean$")
    line = debug.getinfo(1, "l").currentline + 1
    e = t.fails(function() server.http{ port = -1 } end)
    t.match(e, "^[^:]*server_spec%.lua:" .. line .. ": server%.http: port must be")
    line = debug.getinfo(1, "l").currentline + 1
    e = t.fails(function() server.control{ path = 7, on_connection = print } end)
    t.match(e, "^[^:]*server_spec%.lua:" .. line .. ": server%.control: option path must be a string, got number$")
  end)
end)

t.describe("server.control", function()
  local function echo_server(path, extra)
    return assert(server.control{ path = path, on_connection = function(conn)
      if extra then extra(conn) end
      while true do
        local line = conn:read_line()
        if not line then return end
        if line == "boom" then error("control handler exploded") end
        conn:write("echo: " .. line .. "\n")
      end
    end })
  end

  t.it("echoes lines; the socket is mode 0600 and removed on close", function()
    local path = dir .. "/ctl.sock"
    local ctl = echo_server(path)
    local mode = S.sh("stat -c '%a %F' " .. path)
    local out = bg(string.format("%s %s %s hello 'two words'", PY, script("ctl.py", CTL), path))
    ctl:close()
    task.sleep(0.05)
    t.eq(mode, "600 socket")
    t.eq(out, "echo: hello\necho: two words\n")
    t.ok(not S.exists(path), "socket file removed")
    t.eq(core.parked_count(), 0)
  end)

  t.it("refuses a user other than root and its own (SO_PEERCRED)", function()
    local _, has = S.sh("command -v setpriv")
    if not has or S.sh("id -u") ~= "0" then
      return t.ok(true, "needs root and setpriv")
    end
    S.sh("chmod 755 " .. dir)
    local path = dir .. "/ctl.sock"
    local seen = 0
    local ctl = echo_server(path, function() seen = seen + 1 end)
    local ctl_py = script("ctl.py", CTL)
    S.sh("chmod 644 " .. ctl_py)
    local as_nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups " .. PY .. " " .. ctl_py
      .. " " .. path .. " hello"
    local denied = bg(as_nobody)
    S.sh("chmod 666 " .. path) -- loosen the file to reach the credential check
    local refused = bg(as_nobody)
    local allowed = bg(string.format("%s %s %s hi", PY, ctl_py, path))
    ctl:close()
    t.match(denied, "EXC PermissionError", "mode 0600 keeps nobody out")
    t.eq(refused, "ERR permission denied: only root and the agent's user may connect\n")
    t.eq(allowed, "echo: hi\n")
    t.eq(seen, 1, "the refused peer never reached Lua")
  end)

  t.it("close ends parked reads; a handler error is logged and closes only its connection", function()
    local path = dir .. "/ctl.sock"
    local reads = {}
    local ctl = assert(server.control{ path = path, on_connection = function(conn)
      local uid = conn:peer()
      conn:write("uid " .. uid .. "\n")
      local line, err, code = conn:read_line()
      if line == "boom" then error("control handler exploded") end
      reads[#reads + 1] = { line, code }
    end })
    local ctl_py = script("ctl.py", CTL)
    local out = bg(string.format("%s %s %s boom", PY, ctl_py, path))
    t.eq(out, "uid " .. S.sh("id -u") .. "\n")
    -- A client that connects and waits: its handler parks in read_line.
    local pid = S.spawn(string.format("%s -c 'import socket,time; s=socket.socket(socket.AF_UNIX);"
      .. " s.connect(\"%s\"); time.sleep(30)'", PY, path))
    local parked = S.wait_for(function() return ctl:connections() == 1 end, 10)
    ctl:close()
    task.sleep(0.05)
    S.kill(pid, "KILL")
    t.ok(parked, "the waiting client reached its handler")
    t.eq(reads, { { nil, "CLOSED" } })
    t.eq(core.parked_count(), 0)
  end)

  t.it("an unreferenced listener with a queued peer is closed by the collector", function()
    local path = dir .. "/ctl.sock"
    local l = assert(require("kubelua.server.control").listen(path))
    local mark = dir .. "/connected"
    local wait = bg_start(string.format("%s -c 'import socket; s=socket.socket(socket.AF_UNIX); "
      .. "s.connect(\"%s\"); open(\"%s\", \"w\").close(); s.settimeout(5); "
      .. "print(repr(s.recv(10)))'", PY, path, mark))
    t.ok(S.wait_for(function() return S.exists(mark) end, 10), "the peer connected")
    task.sleep(0.05) -- and is queued: nobody accepts
    l = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    local out = wait()
    t.eq(out, "b''\n", "the queued peer was closed")
    t.ok(not S.exists(path), "socket file removed")
  end)

  t.it("replaces a stale socket file, refuses a live one", function()
    local path = dir .. "/ctl.sock"
    local ctl = echo_server(path)
    local again, err, code = server.control{ path = path, on_connection = function() end }
    t.eq({ again, code }, { nil, "BIND" })
    t.match(err, "another server is listening")
    ctl:close()
    -- A socket file nobody listens on (as a crashed agent leaves).
    S.sh(PY .. " -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"" .. path .. "\")'")
    t.ok(S.exists(path))
    ctl = echo_server(path)
    local out = bg(string.format("%s %s %s x", PY, script("ctl.py", CTL), path))
    ctl:close()
    t.eq(out, "echo: x\n")
  end)
end)
