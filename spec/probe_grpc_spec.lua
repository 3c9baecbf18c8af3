-- kubelua.probe.grpc against tests/support/probe_grpc_server.py (python3-grpcio
-- with a hand-written grpc.health.v1.Health) on 127.0.0.1.
local t = require "spec.t"
local S = require "spec.support"
local probe = require "kubelua.probe"

local server = assert(io.popen("exec /usr/bin/python3 " .. S.ROOT .. "/tests/support/probe_grpc_server.py"))
local line = server:read("*l") or ""
local PORT, BARE, HUNG, CLOSED, PID = line:match("^(%d+) (%d+) (%d+) (%d+) (%d+)$")
assert(PORT, "the gRPC test server did not start: " .. line)
PORT, BARE, HUNG, CLOSED = tonumber(PORT), tonumber(BARE), tonumber(HUNG), tonumber(CLOSED)

t.describe("gRPC health probe", function()
  t.it("SERVING is success: service healthy", function()
    local r, out, d = probe.grpc{ port = PORT }
    t.eq(r, "success")
    t.eq(out, "service healthy")
    t.eq(d.status, "SERVING")
    t.eq(probe.grpc{ host = "127.0.0.1", port = PORT, service = "app" }, "success")
  end)
  t.it("NOT_SERVING and SERVICE_UNKNOWN fail with kubelet's reason", function()
    local r, out = probe.grpc{ port = PORT, service = "down" }
    t.eq(r, "failure")
    t.eq(out, 'service unhealthy (responded with "NOT_SERVING")')
    r, out = probe.grpc{ port = PORT, service = "unknown" }
    t.eq(r, "failure")
    t.eq(out, 'service unhealthy (responded with "SERVICE_UNKNOWN")')
  end)
  t.it("an RPC error (NOT_FOUND) fails: health rpc probe failed", function()
    local r, out, d = probe.grpc{ port = PORT, service = "missing" }
    t.eq(r, "failure")
    t.eq(d.code, "NOT_FOUND")
    t.match(out, "^error: health rpc probe failed: NOT_FOUND: .*unknown service")
  end)
  t.it("a server without the health service: UNIMPLEMENTED explained", function()
    local r, out = probe.grpc{ port = BARE }
    t.eq(r, "failure")
    t.match(out, "^error: this server does not implement the grpc health protocol %(grpc%.health%.v1%.Health%): ")
  end)
  t.it("a hanging handler times out within the probe's timeout", function()
    local r, out, d = probe.grpc{ port = PORT, service = "hang", timeout = 0.5 }
    t.eq(r, "failure")
    t.eq(out, "timeout: health rpc did not complete within 500ms")
    t.ok(d.duration >= 0.45 and d.duration < 1.5, "took " .. d.duration)
  end)
  t.it("a hung accept times out too", function()
    local r, out, d = probe.grpc{ port = HUNG, timeout = 0.3 }
    t.eq(r, "failure")
    t.match(out, "^timeout: ")
    t.ok(d.duration < 1.5, "took " .. d.duration)
  end)
  t.it("a closed port: failed to connect", function()
    local r, out = probe.grpc{ port = CLOSED }
    t.eq(r, "failure")
    t.match(out, '^error: failed to connect service at "127%.0%.0%.1:' .. CLOSED .. '": .*refused')
  end)
  t.it("each probe is a new connection, so a failed one does not affect the next", function()
    t.eq(probe.grpc{ port = CLOSED }, "failure")
    t.eq(probe.grpc{ port = PORT }, "success")
    t.eq(probe.grpc{ port = PORT, service = "down" }, "failure")
    t.eq(probe.grpc{ port = PORT }, "success")
  end)
  t.it("bad options throw", function()
    t.fails(function() probe.grpc{ port = 70000 } end, "option 'port'")
    t.fails(function() probe.grpc{ port = PORT, tls = true } end, "unknown option 'tls'")
  end)
  t.it("stops the server", function()
    S.kill(tonumber(PID))
    server:close()
    local _, alive = S.sh("kill -0 " .. PID)
    t.ok(not alive)
  end)
end)
