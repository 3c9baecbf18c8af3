-- kubelua.watch.http (the URL poller) against a real HTTP server on
-- 127.0.0.1: tests/support/poll_server.py, whose documents the tests set.
local t = require "spec.t"
local S = require "spec.support"
local http_watch = require "kubelua.watch.http"
local http = require "kubelua.http"
local json = require "kubelua.k8s.json"
local core = require "kubelua.core"

local server = S.python_server("poll_server.py")
local BASE = "http://127.0.0.1:" .. server.port

local N = 0
-- A fresh document name with the given state.
local function doc(state)
  N = N + 1
  local name = "d" .. N
  if state then
    assert(http.request { url = BASE .. "/_set/" .. name, method = "POST", body = assert(json.encode(state)) })
  end
  return name, BASE .. "/doc/" .. name
end

local function set(name, state)
  assert(http.request { url = BASE .. "/_set/" .. name, method = "POST", body = assert(json.encode(state)) })
end

local function hits(name)
  return assert(json.decode(assert(http.get(BASE .. "/_hits/" .. name)).body))
end

local POLLERS = {}
local function start(opts)
  local rec = { changes = {}, errors = {} }
  opts.on_change = opts.on_change or function(body, resp)
    rec.changes[#rec.changes + 1] = { body = body, status = resp.status, resp = resp }
  end
  opts.on_error = opts.on_error or function(err, code)
    rec.errors[#rec.errors + 1] = { err, code }
  end
  if opts.log == nil then
    opts.log = false
  end
  local p = http_watch.start(opts)
  POLLERS[#POLLERS + 1] = p
  return p, rec
end

-- A fresh document with `state`, polled every 50 ms (`opts` added to the
-- poller's options): its name, URL, poller and record.
local function poll(state, opts)
  local name, url = doc(state)
  local o = { url = url, period = 0.05 }
  for k, v in pairs(opts or {}) do
    o[k] = v
  end
  local p, rec = start(o)
  return name, url, p, rec
end

-- Waits until rec has n changes; at least n errors; name has had n polls.
local function changes(rec, n)
  S.wait_until(function()
    return #rec.changes == n
  end)
end
local function errors(rec, n)
  S.wait_until(function()
    return #rec.errors >= n
  end)
end
local function hit(name, n)
  S.wait_until(function()
    return hits(name).hits >= n
  end)
end

t.describe("poller", function()
  t.after_each(function()
    for _, p in ipairs(POLLERS) do
      p:stop()
    end
    POLLERS = {}
  end)
  t.it("reports the content at once, then only when it changes", function()
    local name, _, p, rec = poll { status = 200, body = "v1" }
    changes(rec, 1)
    t.eq(rec.changes[1].body, "v1")
    t.eq(rec.changes[1].status, 200)
    t.eq(rec.changes[1].resp.body, nil, "the body is the first argument")
    hit(name, 5)
    t.eq(#rec.changes, 1, "no change, no report")
    t.ok(p.stats.unchanged >= 3)
    set(name, { body = "v2" })
    changes(rec, 2)
    t.eq(rec.changes[2].body, "v2")
    local h = hits(name).hits
    hit(name, h + 3)
    t.eq(#rec.changes, 2)
    t.eq(rec.errors, {})
  end)
  t.it("sends the headers; waits `period` between polls", function()
    local name = poll({ status = 200, body = "x" }, { period = 0.2, headers = { ["X-Node"] = "node-1" } })
    hit(name, 3)
    local h = hits(name)
    t.eq(h.headers["X-Node"], "node-1")
    t.match(h.headers["User-Agent"], "^kubelua/")
    for i = 2, #h.times do
      t.ok(h.times[i] - h.times[i - 1] >= 0.19, string.format("polls %.3f s apart", h.times[i] - h.times[i - 1]))
    end
  end)
  t.it("a 404 is an error naming the URL and status; the poller goes on", function()
    local name, url, _, rec = poll { status = 404, body = "gone" }
    errors(rec, 2)
    t.eq(rec.errors[1], { "HTTP_STATUS: GET " .. url .. ": 404", "HTTP_STATUS" })
    t.eq(#rec.changes, 0)
    set(name, { status = 200, body = "back" })
    changes(rec, 1)
    t.eq(rec.changes[1].body, "back")
  end)
  t.it("a timeout is an error; the poller goes on", function()
    local name, url, _, rec = poll({ status = 200, body = "slow", delay = 2 }, { timeout = 0.3 })
    local t0 = core.monotime()
    errors(rec, 1)
    t.ok(core.monotime() - t0 < 1, "timed out after about 0.3 s")
    t.eq(rec.errors[1][2], "TIMEOUT")
    t.match(rec.errors[1][1], "^TIMEOUT: GET " .. url:gsub("%p", "%%%0") .. ": ")
    set(name, { delay = 0 })
    changes(rec, 1)
    t.eq(rec.changes[1].body, "slow")
  end)
  t.it("a body over max_body is an error (10 MiB by default); the last good content stays", function()
    local name, url, _, rec = poll { status = 200, body = "small" }
    changes(rec, 1)
    set(name, { size = 10 * 1024 * 1024 + 1 })
    errors(rec, 1)
    t.eq(rec.errors[1], { "TOO_LARGE: GET " .. url .. ": response body exceeds max_body (10485760 bytes)", "TOO_LARGE" })
    set(name, { size = 10 * 1024 * 1024 })
    changes(rec, 2)
    t.eq(#rec.changes[2].body, 10 * 1024 * 1024, "exactly max_body is accepted")
    set(name, { body = "small" })
    changes(rec, 3)
    local _, rec2 = start { url = url, period = 0.05, max_body = 3 }
    errors(rec2, 1)
    t.eq(rec2.errors[1][2], "TOO_LARGE")
  end)
  t.it("an error in between does not make the same content a change", function()
    local name, _, _, rec = poll { status = 200, body = "same" }
    changes(rec, 1)
    set(name, { status = 500 })
    errors(rec, 1)
    set(name, { status = 200 })
    local h = hits(name).hits
    hit(name, h + 3)
    t.eq(#rec.changes, 1)
  end)
  t.it("an empty body: an EMPTY error every time, and one change to \"\"", function()
    local name, url, _, rec = poll { status = 200, body = "full" }
    changes(rec, 1)
    set(name, { body = "" })
    errors(rec, 3)
    t.eq(rec.errors[1], { "EMPTY: GET " .. url .. ": zero-length data received", "EMPTY" })
    t.eq(#rec.changes, 2)
    t.eq(rec.changes[2].body, "")
  end)
  t.it("a server that is not there: CONNECT errors, then it works once it is", function()
    local closed = S.free_port()
    local _, rec = start { url = "http://user:pw@127.0.0.1:" .. closed .. "/x", period = 0.05 }
    errors(rec, 2)
    t.eq(rec.errors[1][2], "CONNECT")
    t.match(rec.errors[1][1], "^CONNECT: GET http://%*%*%*@127%.0%.0%.1:" .. closed .. "/x: ")
    t.ok(not rec.errors[1][1]:find("pw", 1, true), "no password in messages")
  end)
  t.it("stop() during a slow request returns at once; the server sees the client go", function()
    local name, _, p = poll { status = 200, body = "x", delay = 10 }
    S.wait_until(function()
      return hits(name).hits == 1
    end)
    local t0 = core.monotime()
    p:stop()
    t.ok(core.monotime() - t0 < 0.2, "stop took " .. (core.monotime() - t0) .. " s")
    t.eq(core.parked_count(), 0)
    t.eq(p.job.running, false)
  end)
  t.it("stop() between polls, and from inside on_change", function()
    local _, url = doc { status = 200, body = "x" }
    local p = start { url = url, period = 30 }
    S.wait_until(function()
      return p.stats.polls == 1 and p.stream == nil
    end)
    local t0 = core.monotime()
    p:stop()
    t.ok(core.monotime() - t0 < 0.2)
    local q
    q = start { url = url, period = 0.05, on_change = function()
      q:stop()
    end }
    S.wait_until(function()
      return not q.job.running
    end)
    t.eq(q.stats.polls, 1)
  end)
  t.it("an error thrown by a callback is logged; the poller goes on", function()
    local n = 0
    local name = poll({ status = 200, body = "a" }, { on_change = function()
      n = n + 1
      error("policy bug")
    end })
    S.wait_until(function()
      return n == 1
    end)
    set(name, { body = "b" })
    S.wait_until(function()
      return n == 2
    end)
  end)
  t.it("bad options throw, naming the option", function()
    t.fails(function()
      http_watch.start { url = BASE, perod = 1 }
    end, "kubelua%.watch%.http: unknown option perod$")
    t.fails(function()
      http_watch.start { period = 1 }
    end, "kubelua%.watch%.http: option url is required$")
    t.fails(function()
      http_watch.start { url = BASE, period = 0 }
    end, "kubelua%.watch%.http: option period must be a positive number, got 0$")
    t.fails(function()
      http_watch.start { url = BASE, headers = { ["Bad Name"] = "x" } }
    end, "not a valid header name")
  end)
end)

t.describe("test server", function()
  t.it("stops", function()
    t.ok(server.stop() ~= nil)
  end)
end)
