-- kubelua.probe.http and .tcp against real servers on loopback: a private
-- nginx (tests/support/probe_nginx.sh) for the plain cases, and
-- tests/support/probe_http_server.py for the odd ones (statuses nginx will
-- not send, redirect chains, slow peers, a hung accept, HTTPS with a
-- self-signed certificate made here with the openssl CLI).
local t = require "spec.t"
local S = require "spec.support"
local probe = require "kubelua.probe"
local core = require "kubelua.core"

local ROOT = S.ROOT
local dir = S.tmpdir("probe-http")

local function free_port()
  return tonumber((S.sh("/usr/bin/python3 -c 'import socket; s=socket.socket(); " ..
    "s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])'")))
end

-- a self-signed certificate for 127.0.0.1 / localhost
local _, cert_ok = S.sh(string.format("openssl req -x509 -newkey rsa:2048 -nodes -days 2 " ..
  "-subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost " ..
  "-keyout %s/key.pem -out %s/cert.pem", dir, dir))
assert(cert_ok, "openssl could not make a certificate")

local server = assert(io.popen(string.format("exec /usr/bin/python3 %s/tests/support/probe_http_server.py " ..
  "--cert %s/cert.pem --key %s/key.pem", ROOT, dir, dir)))
local line = server:read("*l") or ""
local PORT, TLS_PORT, HUNG, CLOSED, PID = line:match("^(%d+) (%d+) (%d+) (%d+) (%d+)$")
assert(PORT, "the probe test server did not start: " .. line)
PORT, TLS_PORT, HUNG, CLOSED = tonumber(PORT), tonumber(TLS_PORT), tonumber(HUNG), tonumber(CLOSED)
local BASE = "http://127.0.0.1:" .. PORT

local NGX_PORT = free_port()
local _, ngx_ok = S.sh(string.format("bash %s/tests/support/probe_nginx.sh start %s/nginx %d",
  ROOT, dir, NGX_PORT))
local NGX = "http://127.0.0.1:" .. NGX_PORT

local function cleanup()
  S.sh(string.format("bash %s/tests/support/probe_nginx.sh stop %s/nginx", ROOT, dir))
  if PID then
    S.kill(tonumber(PID))
    PID = nil
    server:close()
  end
  S.rm(dir)
end

local function nginx_it(name, fn)
  if ngx_ok then
    t.it(name, fn)
  else
    t.skip(name, "nginx did not start (is the nginx package installed?)")
  end
end

t.describe("HTTP against nginx", function()
  nginx_it("200 is success with the body as output", function()
    local r, out, d = probe.http{ url = NGX .. "/healthz" }
    t.eq(r, "success")
    t.eq(out, "ok\n")
    t.eq(d.status, 200)
    t.eq(d.redirects, 0)
  end)
  nginx_it("host/port/path/scheme build the URL; the scheme is case-insensitive", function()
    local r, out, d = probe.http{ port = NGX_PORT, path = "healthz", scheme = "HTTP" }
    t.eq(r, "success", out)
    t.eq(d.url, NGX .. "/healthz")
  end)
  nginx_it("kubelet's request: User-Agent kube-probe, Accept */*, no keep-alive, no compression", function()
    local r, out = probe.http{ url = NGX .. "/echo" }
    t.eq(r, "success")
    t.eq(out, "host=[127.0.0.1] accept=[*/*] ua=[kube-probe/" .. probe.KUBE_VERSION ..
      "] conn=[close] enc=[]\n")
  end)
  nginx_it("given headers win; an empty Accept removes it; Host sets the request host", function()
    local r, out = probe.http{ url = NGX .. "/echo", headers = {
      { name = "Accept", value = "" }, { name = "User-Agent", value = "mine/1" },
      { name = "Host", value = "health.example" } } }
    t.eq(r, "success")
    t.eq(out, "host=[health.example] accept=[] ua=[mine/1] conn=[close] enc=[]\n")
    r, out = probe.http{ url = NGX .. "/echo", headers = { Accept = "text/plain" } }
    t.match(out, "accept=%[text/plain%]")
  end)
  nginx_it("204 success; 404, 500 and 503 failures naming the code, without the body", function()
    t.eq(probe.http{ url = NGX .. "/status/204" }, "success")
    for _, code in ipairs({ 404, 500, 503 }) do
      local r, out = probe.http{ url = NGX .. "/status/" .. code }
      t.eq(r, "failure")
      t.eq(out, "HTTP probe failed with statuscode: " .. code)
    end
  end)
  nginx_it("a same-host redirect is followed", function()
    local r, out, d = probe.http{ url = NGX .. "/redirect" }
    t.eq(r, "success")
    t.eq(out, "ok\n")
    t.eq(d.redirects, 1)
    t.eq(d.url, NGX .. "/healthz")
  end)
  nginx_it("each probe opens a new connection", function()
    for _ = 1, 3 do
      local _, _, d = probe.http{ url = NGX .. "/healthz" }
      t.eq(d.status, 200)
    end
    local active = S.sh("ss -tn state established '( dport = :" .. NGX_PORT .. " )' | tail -n +2 | wc -l")
    t.eq(tonumber(active), 0, "no connection left open to nginx")
  end)
end)

t.describe("HTTP status classes (test server)", function()
  t.it("200 and 299 succeed", function()
    t.eq(probe.http{ url = BASE .. "/status/200" }, "success")
    t.eq(probe.http{ url = BASE .. "/status/299" }, "success")
  end)
  t.it("199 (informational only, no final response) fails", function()
    local r, out, d = probe.http{ url = BASE .. "/status/199" }
    t.eq(r, "failure")
    t.ok(d.status == nil or d.status == 199, "no 2xx status: " .. tostring(d.status))
    t.ok(#out > 0, "a reason is given")
  end)
  t.it("300 and 399 are warnings with kubelet's text", function()
    local r, out = probe.http{ url = BASE .. "/status/300" }
    t.eq(r, "warning")
    t.eq(out, "Probe terminated redirects, Response body: status 300")
    t.eq(probe.http{ url = BASE .. "/status/399" }, "warning")
  end)
  t.it("400 and 500 fail", function()
    local r, out = probe.http{ url = BASE .. "/status/400" }
    t.eq(r, "failure")
    t.eq(out, "HTTP probe failed with statuscode: 400")
    t.eq(probe.http{ url = BASE .. "/status/500" }, "failure")
  end)
end)

t.describe("HTTP redirects", function()
  t.it("to the same host: followed", function()
    local r, out, d = probe.http{ url = BASE .. "/redirect?to=/status/200" }
    t.eq(r, "success")
    t.eq(out, "status 200")
    t.eq(d.redirects, 1)
  end)
  t.it("to another host (127.0.0.2): not followed, a warning", function()
    local _, hits = probe.http{ url = BASE .. "/hits" }
    hits = tonumber(hits)
    local r, out, d = probe.http{ url = BASE .. "/redirect?to=http://127.0.0.2:" .. PORT .. "/status/200" }
    t.eq(r, "warning")
    t.eq(out, "Probe terminated redirects, Response body: moved")
    t.eq(d.status, 302)
    t.eq(d.redirects, 0)
    local _, after = probe.http{ url = BASE .. "/hits" }
    t.eq(tonumber(after), hits + 2, "only /redirect and this /hits were asked, not the other host")
  end)
  t.it("a chain of 9 is followed, the 10th redirect fails", function()
    local r, out, d = probe.http{ url = BASE .. "/chain/9" }
    t.eq(r, "success")
    t.eq(out, "end of chain")
    t.eq(d.redirects, 9)
    r, out = probe.http{ url = BASE .. "/chain/10" }
    t.eq(r, "failure")
    t.match(out, "stopped after 10 redirects$")
  end)
  t.it("a loop of redirects fails", function()
    local r, out = probe.http{ url = BASE .. "/loop" }
    t.eq(r, "failure")
    t.eq(out, 'Get "' .. BASE .. '/loop": stopped after 10 redirects')
  end)
  t.it("redirects = \"none\" returns the 3xx", function()
    local r, _, d = probe.http{ url = BASE .. "/redirect?to=/status/200", redirects = "none" }
    t.eq(r, "warning")
    t.eq(d.status, 302)
  end)
  t.it("relative Locations are resolved against the request URL", function()
    t.eq(probe.resolve_location("http://h:1/a/b?x", "c"), "http://h:1/a/c")
    t.eq(probe.resolve_location("http://h:1/a/b", "../c?q"), "http://h:1/c?q")
    t.eq(probe.resolve_location("http://h:1/a/b", "//o/p"), "http://o/p")
    t.eq(probe.resolve_location("http://h:1/a/b", "?q=1"), "http://h:1/a/b?q=1")
    t.eq(probe.resolve_location("http://h:1/a/b", "https://x/y"), "https://x/y")
  end)
end)

t.describe("HTTP slow and odd peers", function()
  t.it("a slow header times out at the probe's timeout", function()
    local t0 = core.monotime()
    local r, out, d = probe.http{ url = BASE .. "/slow-header?secs=3", timeout = 0.5 }
    local took = core.monotime() - t0
    t.eq(r, "failure")
    t.eq(d.code, "TIMEOUT")
    t.match(out, "timed out")
    t.ok(took >= 0.45 and took < 1.5, "took " .. took)
  end)
  t.it("a slow body times out too", function()
    local r, _, d = probe.http{ url = BASE .. "/slow-body?secs=3", timeout = 0.5 }
    t.eq(r, "failure")
    t.eq(d.code, "TIMEOUT")
  end)
  t.it("a 1 MiB body: success, only 10 KiB read", function()
    local r, out, d = probe.http{ url = BASE .. "/big" }
    t.eq(r, "success")
    t.eq(#out, 10 * 1024)
    t.eq(d.truncated, true)
  end)
  t.it("a closed port fails at once with a reason", function()
    local r, out, d = probe.http{ port = CLOSED }
    t.eq(r, "failure")
    t.eq(d.code, "CONNECT")
    t.match(out, "127%.0%.0%.1")
    t.ok(d.duration < 0.5)
  end)
  t.it("a hung accept times out", function()
    local r, _, d = probe.http{ port = HUNG, timeout = 0.3 }
    t.eq(r, "failure")
    t.eq(d.code, "TIMEOUT")
    t.ok(d.duration >= 0.25 and d.duration < 1.5, "took " .. d.duration)
  end)
  t.it("per-phase timings are reported and ordered", function()
    local _, _, d = probe.http{ url = BASE .. "/status/200" }
    local tm = d.timings
    t.ok(tm.dns <= tm.connect and tm.connect <= tm.tls and tm.tls <= tm.first_byte and
      tm.first_byte <= tm.total, "ordered")
    t.ok(tm.total > 0)
  end)
end)

t.describe("HTTPS with a self-signed certificate", function()
  t.it("is not verified by default (kubelet's InsecureSkipVerify)", function()
    local r, out, d = probe.http{ url = "https://127.0.0.1:" .. TLS_PORT .. "/status/200" }
    t.eq(r, "success", out)
    t.ok(d.timings.tls > d.timings.connect, "a TLS handshake was timed")
  end)
  t.it("verify_tls without the CA fails with a TLS reason", function()
    local r, out, d = probe.http{ url = "https://127.0.0.1:" .. TLS_PORT .. "/status/200", verify_tls = true }
    t.eq(r, "failure")
    t.eq(d.code, "TLS")
    t.ok(#out > 0)
  end)
  t.it("verify_tls with the certificate as CA succeeds", function()
    local r, out = probe.http{ url = "https://127.0.0.1:" .. TLS_PORT .. "/status/200", verify_tls = true,
      ca_file = dir .. "/cert.pem" }
    t.eq(r, "success", out)
  end)
end)

t.describe("HTTP checks beyond kubelet (opt-in)", function()
  t.it("valid_status as a list and as a function", function()
    t.eq(probe.http{ url = BASE .. "/status/404", valid_status = { 200, 404 } }, "success")
    local r, out = probe.http{ url = BASE .. "/status/200", valid_status = { 204 } }
    t.eq(r, "failure")
    t.eq(out, "HTTP probe failed with statuscode: 200")
    t.eq(probe.http{ url = BASE .. "/status/302", valid_status = function(c) return c < 400 end }, "success")
  end)
  t.it("body_match / body_not_match", function()
    t.eq(probe.http{ url = BASE .. "/status/200", body_match = "^status %d+$" }, "success")
    local r, out = probe.http{ url = BASE .. "/status/200", body_match = "ready" }
    t.eq(r, "failure")
    t.eq(out, 'HTTP probe failed: body does not match "ready"')
    r = probe.http{ url = BASE .. "/status/200", body_not_match = "200" }
    t.eq(r, "failure")
  end)
  t.it("header_match", function()
    t.eq(probe.http{ url = BASE .. "/status/200", header_match = { ["Content-Length"] = "^10$" } }, "success")
    local r, out = probe.http{ url = BASE .. "/status/200", header_match = { ["X-Ready"] = "yes" } }
    t.eq(r, "failure")
    t.eq(out, "HTTP probe failed: header X-Ready missing")
  end)
  t.it("method and body; a 303 turns a POST into a GET", function()
    local r, out = probe.http{ url = BASE .. "/echo", method = "POST", body = "hi" }
    t.eq(r, "success")
    t.match(out, "^POST /echo HTTP/1%.1")
    r, out = probe.http{ url = BASE .. "/redirect?to=/echo&code=303", method = "POST", body = "x" }
    t.eq(r, "success")
    t.match(out, "^GET /echo HTTP/1%.1")
  end)
  t.it("bad options throw naming the option", function()
    t.fails(function() probe.http{ url = BASE, bogus = 1 } end, "unknown option 'bogus'")
    t.fails(function() probe.http{ port = 0 } end, "option 'port'")
    t.fails(function() probe.http{ url = BASE, timeout = 0 } end, "option 'timeout'")
    t.fails(function() probe.http{ url = BASE, redirects = "some" } end, "option 'redirects'")
  end)
end)

t.describe("TCP", function()
  t.it("an open port succeeds with empty output and sends nothing", function()
    local _, before = probe.http{ url = BASE .. "/hits" }
    local r, out, d = probe.tcp{ host = "127.0.0.1", port = PORT, timeout = 1 }
    t.eq(r, "success")
    t.eq(out, "")
    t.ok(d.duration < 0.5)
    local _, after = probe.http{ url = BASE .. "/hits" }
    t.eq(tonumber(after), tonumber(before) + 1, "no request was made by the TCP probe")
  end)
  t.it("a closed port fails with Go's words", function()
    local r, out, d = probe.tcp{ port = CLOSED }
    t.eq(r, "failure")
    t.eq(out, "dial tcp 127.0.0.1:" .. CLOSED .. ": connect: connection refused")
    t.eq(d.code, "CONNECT")
  end)
  t.it("a hung (filtered) port times out: i/o timeout", function()
    local r, out, d = probe.tcp{ port = HUNG, timeout = 0.3 }
    t.eq(r, "failure")
    t.eq(out, "dial tcp 127.0.0.1:" .. HUNG .. ": i/o timeout")
    t.eq(d.code, "TIMEOUT")
    t.ok(d.duration >= 0.29 and d.duration < 1, "took " .. d.duration)
  end)
  t.it("a name is resolved and reported by address", function()
    local r, out = probe.tcp{ host = "localhost", port = CLOSED }
    t.eq(r, "failure")
    t.match(out, "^dial tcp [%[%]%d.:]+:" .. CLOSED .. ": connect: connection refused$")
  end)
  t.it("many probes side by side", function()
    local task = require "kubelua.task"
    local fns = {}
    for i = 1, 50 do
      fns[i] = function() return probe.tcp{ port = i % 2 == 0 and PORT or CLOSED } end
    end
    local res = task.gather(fns)
    for i = 1, 50 do
      t.eq(res[i][2], i % 2 == 0 and "success" or "failure")
    end
  end)
end)

t.describe("cleanup", function()
  t.it("stops the servers", function()
    cleanup()
    t.ok(not S.exists(dir))
  end)
end)
