-- kubelua.http streaming mode (request{stream = true}, open()) against a real
-- HTTP/1.1 server on 127.0.0.1: tests/support/poll_server.py, started here
-- and stopped by the last test (it also exits when this process goes away).
local t = require "spec.t"
local S = require "spec.support"
local http = require "kubelua.http"
local core = require "kubelua.core"
local task = require "kubelua.task"

local server = S.python_server("poll_server.py")
local BASE = "http://127.0.0.1:" .. server.port
local CLOSED_PORT = S.free_port()

local function gone()
  return tonumber(assert(http.get(BASE .. "/_gone")).body)
end

-- t.ok that the server sees more than `n` clients gone within 3 s.
local function gone_beyond(n, msg)
  t.ok(S.wait_for(function()
    return gone() > n
  end, 3, 0.02), msg)
end

-- Read a stream to its end: the pieces, then the final (nil, err, code).
local function drain(s)
  local pieces = {}
  while true do
    local data, err, code = s:read()
    if not data then
      return pieces, err, code
    end
    pieces[#pieces + 1] = data
  end
end

t.describe("request{stream = true}", function()
  t.it("returns at the headers; the body comes piece by piece as the server writes it", function()
    local t0 = core.monotime()
    local resp, err = http.request { url = BASE .. "/stream?n=5&interval=0.1", stream = true }
    t.ok(resp, err)
    t.eq(resp.status, 200)
    t.eq(resp.headers["transfer-encoding"], "chunked")
    t.eq(resp.body, nil)
    t.ok(core.monotime() - t0 < 0.1, "the response came before the body")
    local first = resp:read()
    t.eq(first, "line 1\n")
    t.ok(core.monotime() - t0 < 0.3, "the first piece came before the body ended")
    local pieces, err2, code = drain(resp)
    t.eq(table.concat(pieces), "line 2\nline 3\nline 4\nline 5\n")
    t.eq({ err2, code }, {}, "a clean end is a single nil")
    t.ok(core.monotime() - t0 >= 0.4, "the body took the server's time")
    t.eq(resp:done(), true)
    t.eq(resp:read(), nil, "reading past the end stays at the end")
  end)
  t.it("headers with no body yet: the response is there while the server holds the body", function()
    local before = gone()
    local resp = assert(http.request { url = BASE .. "/stream/hold", stream = true })
    t.eq(resp.status, 200)
    t.eq(resp:done(), false)
    resp:close()
    gone_beyond(before, "the server did not see the client go away")
  end)
  t.it("a body with Content-Length streams too", function()
    local resp = assert(http.request { url = BASE .. "/stream/length", stream = true })
    local pieces, err = drain(resp)
    t.eq(err, nil)
    t.eq(table.concat(pieces), ("0123456789"):rep(3))
    t.ok(#pieces >= 2, "read in several pieces (got " .. #pieces .. ")")
  end)
  t.it("an interim 103 response is not taken for the final one", function()
    local resp = assert(http.request { url = BASE .. "/stream/early", stream = true })
    t.eq(resp.status, 200)
    t.eq(resp.headers.link, nil, "the interim response's headers are not the response's")
    t.eq(table.concat((drain(resp))), "line 1\nline 2\nline 3\n")
  end)
  t.it("a followed redirect: the final response and only its body", function()
    local resp = assert(http.request { url = BASE .. "/redirect?to=/stream", stream = true, follow_redirects = true })
    t.eq(resp.status, 200)
    t.eq(resp.redirects, 1)
    t.eq(resp.url, BASE .. "/stream")
    t.eq(table.concat((drain(resp))), "line 1\nline 2\nline 3\n")
  end)
  t.it("a redirect not followed is the response", function()
    local resp = assert(http.request { url = BASE .. "/redirect?to=/stream", stream = true })
    t.eq(resp.status, 302)
    t.eq(table.concat((drain(resp))), "moved")
  end)
  t.it("a connection cut mid-body: the bytes received, then the error", function()
    local resp = assert(http.request { url = BASE .. "/stream/cut?n=3", stream = true })
    local pieces, err, code = drain(resp)
    t.eq(table.concat(pieces), "line 1\nline 2\nline 3\n")
    t.ok(code == "CLOSED" or code == "IO", tostring(err))
    t.match(err, "^" .. code .. ": GET " .. BASE:gsub("%p", "%%%0") .. "/stream/cut%?n=3: ")
  end)
  t.it("a failure before the headers is request()'s result", function()
    local resp, err, code = http.request { url = "http://127.0.0.1:" .. CLOSED_PORT .. "/", stream = true }
    t.eq(resp, nil)
    t.eq(code, "CONNECT")
    t.match(err, "^CONNECT: GET http://127%.0%.0%.1:")
  end)
  t.it("timeout covers the whole transfer", function()
    local resp = assert(http.request { url = BASE .. "/stream/hold", stream = true, timeout = 0.3 })
    local t0 = core.monotime()
    local data, err, code = resp:read()
    t.eq(data, nil)
    t.eq(code, "TIMEOUT", err)
    t.ok(core.monotime() - t0 < 1, "timed out in time")
  end)
  t.it("a slow reader holds the server back (max_body bounds what waits unread)", function()
    local size = 64 * 1024 * 1024
    local resp = assert(http.request { url = BASE .. "/stream/flood?id=bp&size=" .. size, stream = true,
      max_body = 64 * 1024 })
    task.sleep(0.5)
    local written = tonumber(assert(http.get(BASE .. "/_written/bp")).body)
    t.ok(written < 24 * 1024 * 1024, "the server wrote " .. written .. " bytes to a client that read nothing")
    local total, largest = 0, 0
    while true do
      local data, err = resp:read()
      if not data then
        t.eq(err, nil)
        break
      end
      total = total + #data
      largest = math.max(largest, #data)
    end
    t.eq(total, size)
    t.ok(largest <= 64 * 1024 + 64 * 1024, "a read returns about max_body at most (got " .. largest .. ")")
  end)
end)

t.describe("open()", function()
  t.it("returns at once, before any I/O; response() parks until the headers", function()
    local s = http.open { url = BASE .. "/stream?n=2" }
    t.eq(s:done(), false)
    local resp, err = s:response()
    t.ok(resp, err)
    t.eq(resp.status, 200)
    t.eq(table.concat((drain(s))), "line 1\nline 2\n")
    t.eq(s:response().status, 200, "response() again gives the response again")
  end)
  t.it("response() after the transfer ended still gives status, headers and the whole body", function()
    local s = http.open { url = BASE .. "/stream/length" }
    task.sleep(0.3)
    t.eq(s:done(), true)
    local resp = assert(s:response())
    t.eq(resp.status, 200)
    t.eq(resp.headers["content-length"], "30")
    t.eq(resp.url, BASE .. "/stream/length")
    t.eq(table.concat((drain(s))), ("0123456789"):rep(3))
  end)
  t.it("read() before response() waits for the body", function()
    local s = http.open { url = BASE .. "/stream?n=1" }
    t.eq(s:read(), "line 1\n")
    t.eq(s:read(), nil)
    t.eq(s:response().status, 200)
  end)
  t.it("close() while another task waits for the headers: CANCELLED, and the server sees the client go", function()
    local before = gone()
    local s = http.open { url = BASE .. "/stream/nohead" }
    local got
    task.spawn(function()
      got = { s:response() }
    end)
    task.sleep(0.2)
    t.eq(got, nil, "still waiting")
    s:close()
    t.ok(S.wait_for(function()
      return got ~= nil
    end, 3, 0.02), "the waiting task was not resumed")
    t.eq(got[1], nil)
    t.eq(got[3], "CANCELLED")
    t.match(got[2], "^CANCELLED: GET .*/stream/nohead: the stream was closed")
    gone_beyond(before, "the server still has the connection")
  end)
  t.it("close() while another task is parked in read()", function()
    local resp = assert(http.request { url = BASE .. "/stream/hold", stream = true })
    local got
    task.spawn(function()
      got = { resp:read() }
    end)
    task.sleep(0.05)
    t.eq(core.parked_count(), 1)
    resp:close()
    resp:close() -- twice is fine
    t.ok(S.wait_for(function()
      return got ~= nil
    end, 3, 0.02))
    t.eq(got[3], "CANCELLED")
    local data, _, code = resp:read()
    t.eq({ data, code }, { nil, "CANCELLED" }, "reading a closed stream")
    t.eq(resp:done(), true)
  end)
  t.it("one task at a time waits on a stream", function()
    local resp = assert(http.request { url = BASE .. "/stream/hold", stream = true })
    task.spawn(function()
      resp:read()
    end)
    task.sleep(0.05)
    t.fails(function()
      resp:read()
    end, "another task is already waiting on this stream")
    resp:close()
    task.sleep(0)
  end)
  t.it("a failure to connect is what response() and read() return", function()
    local s = http.open { url = "http://127.0.0.1:" .. CLOSED_PORT .. "/" }
    local resp, err, code = s:response()
    t.eq({ resp, code }, { nil, "CONNECT" }, err)
    local data, _, code2 = s:read()
    t.eq({ data, code2 }, { nil, "CONNECT" })
  end)
  t.it("a stream dropped without close() ends its transfer when collected", function()
    local before = gone()
    do
      local resp = assert(http.request { url = BASE .. "/stream/hold", stream = true })
      t.eq(resp.status, 200)
    end
    collectgarbage()
    collectgarbage()
    gone_beyond(before, "the server still has the connection")
  end)
  t.it("bad options throw, naming the option", function()
    t.fails(function()
      http.open { url = BASE, truncate = true }
    end, "kubelua%.http%.open: option truncate is not allowed with open$")
    t.fails(function()
      http.request { url = BASE, stream = true, truncate = true }
    end, "kubelua%.http%.request: option truncate is not allowed with stream$")
    t.fails(function()
      http.open { url = BASE, stream = 1 }
    end, "kubelua%.http%.open: option stream must be a boolean, got number$")
  end)
end)

t.describe("figures", function()
  t.it("latency from the server's write to read() returning (200 lines, 5 ms apart)", function()
    local resp = assert(http.request { url = BASE .. "/stream/stamp?n=200&interval=0.005", stream = true })
    local lat, buf = {}, ""
    while true do
      local data = resp:read()
      if not data then
        break
      end
      local now = core.now()
      buf = buf .. data
      for stamp in buf:gmatch("%d+ ([%d.]+)\n") do
        lat[#lat + 1] = (now - tonumber(stamp)) * 1000
      end
      buf = buf:match("[^\n]*$")
    end
    t.eq(#lat, 200)
    table.sort(lat)
    local med, p99 = lat[100], lat[198]
    io.stdout:write(string.format("      figure: stream write -> read(): median %.3f ms, p99 %.3f ms, max %.3f ms\n",
      med, p99, lat[200]))
    t.ok(med < 50, "median latency " .. med .. " ms")
  end)
end)

-- S.nested_host: a second host in this process, freed while it has streams
-- open (what shutdown does).
t.describe("lifetime", function()
  t.it("freeing a host with a task parked in read(): no resume, connection closed", function()
    local before = gone()
    local n = S.nested_host([[
      local http = require "kubelua.http"
      require("kubelua.core").spawn(function()
        local resp = assert(http.request { url = BASE .. "/stream/hold", stream = true })
        state = "reading"
        local data, err = resp:read()
        state = "resumed: " .. tostring(err) -- must never run
      end)
    ]], { BASE = BASE })
    t.ok(n.drive(function()
      return n.global("state") == "reading"
    end), "the nested stream did not start")
    n.drive(function()
      return false
    end, 0.1)
    t.eq(n.parked(), 1)
    n.free()
    gone_beyond(before, "the server still has the connection")
  end)
  t.it("freeing a host with open streams nobody waits on (headers pending, body pending)", function()
    local before = gone()
    local n = S.nested_host([[
      local http = require "kubelua.http"
      require("kubelua.core").spawn(function()
        held = assert(http.request { url = BASE .. "/stream/hold", stream = true })
        pending = http.open { url = BASE .. "/stream/nohead" }
        state = "open"
      end)
    ]], { BASE = BASE })
    t.ok(n.drive(function()
      return n.global("state") == "open"
    end))
    n.drive(function()
      return false
    end, 0.2)
    t.eq(n.parked(), 0)
    n.free()
    gone_beyond(before + 1, "the server still has a connection") -- both of them gone
  end)
end)

t.describe("test server", function()
  t.it("stops", function()
    local ok = server.stop()
    t.ok(ok ~= nil)
  end)
end)
