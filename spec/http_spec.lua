-- kubelua.http against a real HTTP/1.1 server on 127.0.0.1 (and a unix
-- socket): tests/support/http_server.py, started here and stopped by the last
-- test (it also exits by itself when this process goes away). Nothing here
-- leaves the machine: proxies are off unless asked for, and the one failure
-- that would need a resolver (DNS) is checked through the code mapping only.
local t = require "spec.t"
local S = require "spec.support"
local http = require "kubelua.http"
local core = require "kubelua.core"
local task = require "kubelua.task"

local SOCK = os.tmpname()
os.remove(SOCK)
SOCK = SOCK .. ".sock"

local server = S.python_server("http_server.py", "--unix '" .. SOCK .. "'")
local PORT, CLOSED_PORT = server.port, server.fields[3]
local BASE = "http://127.0.0.1:" .. PORT

local function stats()
  local r = assert(http.get(BASE .. "/stats"))
  local a, b, c, o = r.body:match("^active=(%d+) aborted=(%d+) started=(%d+) open=([%d,]*)$")
  local open = {}
  for port in o:gmatch("%d+") do
    open[port] = true
  end
  return { active = tonumber(a), aborted = tonumber(b), started = tonumber(c), open = open }
end

local function timed(f, ...)
  local t0 = core.monotime()
  local res = { f(...) }
  return core.monotime() - t0, unpack(res, 1, 3)
end

t.describe("responses", function()
  t.it("GET gives status, body, lowercased headers and the effective URL", function()
    local r, err = http.get(BASE .. "/hello")
    t.ok(r, err)
    t.eq(r.status, 200)
    t.eq(r.body, "hello world")
    t.eq(r.headers["content-type"], "text/plain")
    t.eq(r.headers["x-test"], "yes")
    t.eq(r.headers["content-length"], "11")
    t.eq(r.url, BASE .. "/hello")
    t.eq(r.truncated, false)
    t.eq(r.redirects, 0)
  end)
  t.it("a 404 (or 500) is a response, not an error", function()
    local r = assert(http.get(BASE .. "/status/404"))
    t.eq(r.status, 404)
    t.eq(r.body, "status 404")
    t.eq(assert(http.get(BASE .. "/status/500")).status, 500)
  end)
  t.it("a header sent twice is joined with \", \"", function()
    t.eq(assert(http.get(BASE .. "/dup")).headers["x-dup"], "a, b")
  end)
  t.it("a chunked body arrives whole", function()
    local r = assert(http.get(BASE .. "/chunked"))
    t.eq(r.body, "chunk-1 chunk-2 chunk-3 ")
    t.eq(r.headers["transfer-encoding"], "chunked")
  end)
  t.it("HEAD gives the headers and no body", function()
    local r = assert(http.request { url = BASE .. "/hello", method = "HEAD" })
    t.eq(r.status, 200)
    t.eq(r.body, "")
    t.eq(r.headers["content-length"], "11")
  end)
  t.it("a body under max_body arrives byte for byte", function()
    local r = assert(http.get(BASE .. "/big?size=3000000"))
    t.eq(#r.body, 3000000)
    t.ok(not r.body:find("[^x]"))
  end)
  t.it("timings are present, in seconds from the start, and ordered", function()
    local function check(r)
      local tm = r.timings
      for _, k in ipairs { "dns", "connect", "tls", "first_byte", "total" } do
        t.eq(type(tm[k]), "number", k)
      end
      t.ok(tm.dns >= 0 and tm.connect >= tm.dns, "connect >= dns")
      t.ok(tm.tls == tm.connect, "no TLS on http://: tls ends with connect")
      t.ok(tm.first_byte >= tm.tls, "first_byte >= tls")
      t.ok(tm.total >= tm.first_byte, "total >= first_byte")
      t.ok(tm.first_byte >= 0.2 and tm.total < 5, "the server's 0.2 s shows in first_byte")
      return tm
    end
    local url = BASE .. "/slow?secs=0.2"
    local fresh = assert(http.get(url, { keepalive = false }))
    t.eq(fresh.reused, false)
    t.ok(check(fresh).connect > 0, "a new connection takes some time")
    assert(http.get(url))
    local again = assert(http.get(url))
    t.eq(again.reused, true)
    t.eq(check(again).connect, again.timings.dns, "nothing to connect on a reused connection")
  end)
end)

t.describe("requests", function()
  t.it("POST sends the body and nothing made up: no form Content-Type, no Expect", function()
    local r = assert(http.request { url = BASE .. "/echo", method = "POST", body = "a=1&b=2" })
    t.eq(r.headers["x-method"], "POST")
    t.eq(r.body, "a=1&b=2")
    t.eq(r.headers["x-req-content-length"], "7")
    t.eq(r.headers["x-req-content-type"], nil)
    t.eq(r.headers["x-req-expect"], nil)
    t.match(r.headers["x-req-user-agent"], "^kubelua/")
  end)
  t.it("a 2 MiB body goes out and comes back whole", function()
    local body = string.rep("0123456789abcdef", 2 * 65536)
    local r = assert(http.request { url = BASE .. "/echo", method = "PUT", body = body })
    t.eq(r.headers["x-method"], "PUT")
    t.ok(r.body == body, "echoed body differs")
  end)
  t.it("other methods, with or without a body", function()
    t.eq(assert(http.request { url = BASE .. "/echo", method = "DELETE" }).headers["x-method"], "DELETE")
    local r = assert(http.request { url = BASE .. "/echo", method = "PATCH", body = "{}",
      headers = { ["Content-Type"] = "application/json" } })
    t.eq(r.headers["x-method"], "PATCH")
    t.eq(r.headers["x-req-content-type"], "application/json")
    t.eq(r.body, "{}")
    t.eq(assert(http.request { url = BASE .. "/echo", method = "POST" }).headers["x-req-content-length"], "0")
  end)
  t.it("custom headers are sent, as a map or as lines", function()
    local r = assert(http.request { url = BASE .. "/echo", headers = {
      ["X-Custom"] = "forty two", ["X-Number"] = 42, ["X-Empty"] = "", ["User-Agent"] = "probe/1",
    } })
    t.eq(r.headers["x-req-x-custom"], "forty two")
    t.eq(r.headers["x-req-x-number"], "42")
    t.eq(r.headers["x-req-x-empty"], "")
    t.eq(r.headers["x-req-user-agent"], "probe/1")
    r = assert(http.request { url = BASE .. "/echo", headers = { "X-One: 1", "X-One: 2", "Accept:" } })
    t.eq(r.headers["x-req-x-one"], "1, 2")
    t.eq(r.headers["x-req-accept"], nil, "\"Accept:\" removes curl's default")
  end)
end)

t.describe("redirects", function()
  t.it("are not followed by default: the 3xx is the response", function()
    for _, code in ipairs { 301, 302 } do
      local r = assert(http.get(BASE .. "/redirect/" .. code))
      t.eq(r.status, code)
      t.eq(r.headers.location, "/hello")
      t.eq(r.redirects, 0)
    end
  end)
  t.it("are followed with follow_redirects", function()
    local r = assert(http.get(BASE .. "/redirect/301", { follow_redirects = true }))
    t.eq(r.status, 200)
    t.eq(r.body, "hello world")
    t.eq(r.url, BASE .. "/hello")
    t.eq(r.redirects, 1)
    t.eq(r.headers.location, nil, "only the last response's headers")
    r = assert(http.get(BASE .. "/redirect/302?to=/status/404", { follow_redirects = true }))
    t.eq(r.status, 404)
  end)
  t.it("too many give REDIRECTS", function()
    local r, err, code = http.get(BASE .. "/loop", { follow_redirects = true, max_redirects = 3 })
    t.eq(r, nil)
    t.eq(code, "REDIRECTS")
    t.match(err, "^REDIRECTS: GET " .. BASE:gsub("%p", "%%%0") .. "/loop: ")
  end)
end)

t.describe("failures", function()
  t.it("a timeout gives TIMEOUT within the bound and closes the connection", function()
    local before = stats()
    local elapsed, r, err, code = timed(http.get, BASE .. "/slow?secs=5", { timeout = 0.3 })
    t.eq(r, nil)
    t.eq(code, "TIMEOUT")
    t.match(err, "^TIMEOUT: GET http://127%.0%.0%.1:" .. PORT .. "/slow%?secs=5: ")
    t.ok(elapsed >= 0.25 and elapsed < 2, "took " .. elapsed .. " s")
    t.ok(S.wait_for(function()
      return stats().aborted > before.aborted
    end, 3, 0.02), "the server never saw the client go away")
  end)
  t.it("connection refused gives CONNECT, naming the URL", function()
    local r, err, code = http.get("http://127.0.0.1:" .. CLOSED_PORT .. "/x")
    t.eq(r, nil)
    t.eq(code, "CONNECT")
    t.match(err, "^CONNECT: GET http://127%.0%.0%.1:" .. CLOSED_PORT .. "/x: ")
  end)
  t.it("a body over max_body gives TOO_LARGE (12 MiB against the 10 MiB default)", function()
    local r, err, code = http.get(BASE .. "/big")
    t.eq(r, nil)
    t.eq(code, "TOO_LARGE")
    t.match(err, "max_body %(10485760 bytes%)")
  end)
  t.it("with truncate, the first max_body bytes and truncated = true", function()
    local r = assert(http.get(BASE .. "/big", { max_body = 1000, truncate = true }))
    t.eq(r.status, 200)
    t.eq(#r.body, 1000)
    t.eq(r.truncated, true)
    r = assert(http.get(BASE .. "/big", { truncate = true }))
    t.eq(#r.body, 10 * 1024 * 1024)
    t.eq(r.truncated, true)
    r = assert(http.get(BASE .. "/hello", { max_body = 11, truncate = true }))
    t.eq(r.body, "hello world")
    t.eq(r.truncated, false, "exactly max_body bytes is not truncated")
  end)
  t.it("TLS to a plain HTTP server gives TLS", function()
    local r, err, code = http.get("https://127.0.0.1:" .. PORT .. "/hello")
    t.eq(r, nil)
    t.eq(code, "TLS")
    t.match(err, "^TLS: GET https://127%.0%.0%.1:")
  end)
  t.it("a connection closed without a response gives CLOSED", function()
    local _, _, code = http.get(BASE .. "/close")
    t.eq(code, "CLOSED")
  end)
  t.it("bad URLs and schemes other than http/https give URL", function()
    for _, url in ipairs { "ftp://127.0.0.1:" .. PORT .. "/", "file:///etc/hostname", "http://[::1/" } do
      local r, err, code = http.get(url)
      t.eq(r, nil, url)
      t.eq(code, "URL", url .. " (" .. tostring(err) .. ")")
    end
  end)
  t.it("user:password in a URL is not repeated in messages", function()
    local _, err = http.get("http://user:secret@127.0.0.1:" .. CLOSED_PORT .. "/")
    t.ok(not err:find("secret"), err)
    t.match(err, "http://%*%*%*@127%.0%.0%.1:")
  end)
  t.it("CURLcodes map to the documented names", function()
    local want = { [6] = "DNS", [7] = "CONNECT", [28] = "TIMEOUT", [35] = "TLS", [60] = "TLS",
      [58] = "TLS", [16] = "HTTP2", [92] = "HTTP2", [47] = "REDIRECTS", [5] = "PROXY", [97] = "PROXY",
      [52] = "CLOSED", [18] = "CLOSED", [55] = "IO", [56] = "IO", [3] = "URL", [1] = "URL",
      [8] = "PROTOCOL", [63] = "TOO_LARGE", [27] = "ERROR", [9999] = "ERROR" }
    local names = {}
    for _, c in ipairs(http.CODES) do
      names[c] = true
    end
    for n, name in pairs(want) do
      t.eq(http.code_name(n), name, "CURLcode " .. n)
      t.ok(names[name], name .. " is in http.CODES")
    end
  end)
  t.skip("an unresolvable host gives DNS", "needs the system resolver; specs stay on loopback (see code_name)")
end)

t.describe("concurrency", function()
  t.it("50 requests in flight at once on the one loop", function()
    local fns = {}
    for i = 1, 50 do
      fns[i] = function()
        return assert(http.get(BASE .. "/slow?secs=0.5"))
      end
    end
    local elapsed, res = timed(task.gather, fns)
    for i = 1, 50 do
      t.ok(res[i][1], "request " .. i .. ": " .. tostring(res[i][2]))
      t.eq(res[i][2].status, 200)
      t.eq(res[i][2].body, "slow done")
    end
    t.ok(elapsed < 5, "50 x 0.5 s took " .. elapsed .. " s: not concurrent")
  end)
  t.it("concurrent requests end independently", function()
    local res = task.gather {
      function()
        return http.get(BASE .. "/slow?secs=5", { timeout = 0.2 })
      end,
      function()
        return http.get(BASE .. "/hello")
      end,
      function()
        return http.get("http://127.0.0.1:" .. CLOSED_PORT .. "/")
      end,
    }
    t.eq(res[1][4], "TIMEOUT")
    t.eq(res[2][2].body, "hello world")
    t.eq(res[3][4], "CONNECT")
  end)
end)

t.describe("connections", function()
  t.it("keepalive reuses the connection; keepalive = false does not", function()
    local a = assert(http.get(BASE .. "/whoami")).body
    local b = assert(http.get(BASE .. "/whoami")).body
    t.eq(a, b, "the same client port twice")
    local c = assert(http.get(BASE .. "/whoami", { keepalive = false })).body
    local d = assert(http.get(BASE .. "/whoami", { keepalive = false })).body
    t.ok(c ~= d, "a new connection each time")
  end)
  t.it("unix_socket talks HTTP over a unix socket", function()
    local r = assert(http.request { url = "http://localhost/hello", unix_socket = SOCK })
    t.eq(r.status, 200)
    t.eq(r.body, "hello world")
    local _, _, code = http.request { url = "http://localhost/hello", unix_socket = SOCK .. ".none" }
    t.eq(code, "CONNECT")
  end)
end)

t.describe("bad arguments throw, naming the option", function()
  local function throws(pattern, f)
    t.match(t.fails(f), pattern)
  end
  t.it("unknown option", function()
    throws("kubelua%.http%.request: unknown option timout$", function()
      http.request { url = BASE, timout = 1 }
    end)
    throws("kubelua%.http%.open: unknown option timout$", function()
      http.open { url = BASE, timout = 1 }
    end)
  end)
  t.it("url missing or not a string", function()
    throws("kubelua%.http%.request: option url is required$", function()
      http.request {}
    end)
    throws("kubelua%.http%.request: option url must be a string, got number$", function()
      http.request { url = 5 }
    end)
    throws("kubelua%.http%.get: url must be a string, got nil$", function()
      http.get(nil)
    end)
  end)
  t.it("wrong types and values", function()
    throws("kubelua%.http%.request: option timeout must be a number, got string$", function()
      http.request { url = BASE, timeout = "1" }
    end)
    throws("kubelua%.http%.request: option timeout must be a non%-negative number, got %-1$", function()
      http.request { url = BASE, timeout = -1 }
    end)
    throws("kubelua%.http%.get: option follow_redirects must be a boolean, got number$", function()
      http.get(BASE, { follow_redirects = 1 })
    end)
    throws("kubelua%.http%.request: option method \"GET /evil\" is not an HTTP method$", function()
      http.request { url = BASE, method = "GET /evil" }
    end)
    throws("kubelua%.http%.request: option body is not allowed with method HEAD$", function()
      http.request { url = BASE, method = "HEAD", body = "x" }
    end)
    throws("kubelua%.http%.request: option max_redirects must be an integer$", function()
      http.request { url = BASE, max_redirects = 1.5 }
    end)
    throws("kubelua%.http%.request: options must be a table, got string$", function()
      http.request(BASE)
    end)
    throws("kubelua%.http%.get: options must be a table, got boolean$", function()
      http.get(BASE, false)
    end)
  end)
  t.it("headers that are not headers", function()
    for _, c in ipairs { -- the error, the headers
      { "option headers: value of \"X%-A\" must be a string or number, got table$", { ["X-A"] = {} } },
      { "option headers: a header contains CR", { ["X-A"] = "1\r\nX-Injected: 1" } },
      { "option headers: a header contains CR", { "X-A: 1\nX-Injected: 1" } },
      { "option headers: \"X A\" is not a valid header name$", { ["X A"] = "1" } },
      { "option headers: entry 1 %(13 bytes%) is not a \"Name: value\" line$", { "no colon here" } },
    } do
      throws(c[1], function()
        http.request { url = BASE, headers = c[2] }
      end)
    end
  end)
  t.it("errors point at the caller's line, once", function()
    local line = debug.getinfo(1, "l").currentline + 2
    throws("^[^:]*http_spec%.lua:" .. line .. ": kubelua%.http%.get: unknown option nope$", function()
      http.get(BASE, { nope = true })
    end)
    line = debug.getinfo(1, "l").currentline + 3
    throws("^[^:]*http_spec%.lua:" .. line .. ": kubelua%.http%.request: option timeout must be a number, got string$",
      function()
        http.request { url = BASE, timeout = "1" }
      end)
    line = debug.getinfo(1, "l").currentline + 2
    throws("^[^:]*http_spec%.lua:" .. line .. ": kubelua%.http%.open: options must be a table, got nil$", function()
      http.open()
    end)
  end)
  t.it("the C core checks the types it reads, too", function()
    local hcore = require "kubelua.http.core"
    throws("option 'timeout' must be a number", function()
      hcore.request { url = BASE, timeout = "1" }
    end)
    throws("option 'headers': entry 1", function()
      hcore.request { url = BASE, headers = { 5 } }
    end)
    throws("option 'url' is required", function()
      hcore.request {}
    end)
  end)
end)

-- S.nested_host: a second host in this process, freed while its task waits
-- (what shutdown does).
t.describe("lifetime", function()
  t.it("an idle keep-alive connection does not keep the loop alive; freeing the host closes it", function()
    local n = S.nested_host([[
      local http = require "kubelua.http"
      require("kubelua.core").spawn(function()
        local a = assert(http.get(BASE .. "/whoami")).body
        local b = assert(http.get(BASE .. "/whoami")).body
        state = a == b and a or "not reused"
      end)
    ]], { BASE = BASE })
    t.ok(n.drive(function()
      return n.global("state") ~= nil and n.alive() == 0
    end), "state " .. tostring(n.global("state")) .. ", loop alive " .. n.alive())
    local port = n.global("state")
    t.match(port, "^%d+$", "the connection stayed open between the requests")
    t.ok(stats().open[port], "the idle connection is open")
    n.free()
    t.ok(S.wait_for(function()
      return not stats().open[port]
    end, 3, 0.02), "freeing the host left the cached connection open")
  end)
  t.it("freeing a host with a task parked in a request cancels it: no resume, socket closed", function()
    local before = stats()
    local n = S.nested_host([[
      local http = require "kubelua.http"
      require("kubelua.core").spawn(function()
        assert(http.get(BASE .. "/hello"))
        state = "waiting"
        local r, err = http.get(BASE .. "/slow?secs=30", { timeout = 60 })
        state = "resumed: " .. tostring(err) -- must never run
      end)
    ]], { BASE = BASE })
    t.ok(n.drive(function()
      return n.global("state") == "waiting" and stats().started > before.started
    end), "the nested request did not reach the server")
    t.eq(n.parked(), 1)
    n.free()
    t.ok(S.wait_for(function()
      return stats().aborted > before.aborted
    end, 3, 0.02), "the server still has the connection: the easy handle was not released")
  end)
end)

t.describe("test server", function()
  t.it("stops", function()
    local ok, how, status = server.stop()
    os.remove(SOCK)
    -- LuaJIT's close of a popen handle returns true, "exit"|"signal", code
    t.ok(ok ~= nil, tostring(how) .. " " .. tostring(status))
  end)
end)
