-- The gRPC transport against a fake server (tests/support/fake_cri.py) that
-- produces what a real containerd cannot: hangs, oversized and truncated
-- messages, malformed frames, missing statuses, abrupt closes, streams.
-- After every fault the same client must keep working.
local t = require "spec.t"
local S = require "spec.support"
local cri = require "kubelua.cri"
local task = require "kubelua.task"

local dir = S.tmpdir("fake")
local sock = dir .. "/fake.sock"
local FAKE = "/usr/bin/python3 " .. S.ROOT .. "/tests/support/fake_cri.py --quiet --unix " .. sock
local pid

local function start_fake()
  pid = S.spawn(FAKE, dir .. "/fake.log")
  assert(S.wait_for(function()
    return S.exists(sock)
  end, 15), "the fake server did not start: " .. tostring(S.read_file(dir .. "/fake.log")))
end
start_fake()

local rt = assert(cri.connect("unix://" .. sock, { timeout = 10 }))

local function still_serving()
  local v, err = rt:version{}
  t.ok(v, "the client still works after the fault: " .. tostring(err))
  t.eq(v.runtime_name, "fake")
end

t.describe("faults", function()
  t.it("a healthy call", function()
    local v = assert(rt:version{})
    t.eq(v, { version = "0.1.0", runtime_name = "fake", runtime_version = "1.0", runtime_api_version = "v1" })
  end)

  t.it("a deadline that expires gives DEADLINE_EXCEEDED on time", function()
    local t0 = task.monotime()
    local r, err, code = rt:status({}, { timeout = 0.3 })
    local took = task.monotime() - t0
    t.eq(r, nil)
    t.eq(code, "DEADLINE_EXCEEDED")
    t.match(err, "^DEADLINE_EXCEEDED: /runtime%.v1%.RuntimeService/Status: deadline exceeded")
    t.ok(took >= 0.29 and took < 1.5, "took " .. took .. " s")
    still_serving()
  end)

  t.it("an oversized response is RESOURCE_EXHAUSTED", function()
    local r, err, code = rt:list_containers{}
    t.eq(r, nil)
    t.eq(code, "RESOURCE_EXHAUSTED")
    t.match(err, "response message of 17825792 bytes exceeds the limit of 16777216 bytes")
    still_serving()
  end)

  t.it("an oversized request is refused before it is sent", function()
    local r, err, code = rt:exec_sync{ container_id = "x", cmd = { string.rep("a", 17 * 1024 * 1024) } }
    t.eq(r, nil)
    t.eq(code, "RESOURCE_EXHAUSTED")
    t.match(err, "request message of %d+ bytes exceeds the limit")
    still_serving()
  end)

  t.it("a malformed frame fails the call with a clear error", function()
    local r, err, code = rt:list_pod_sandbox{}
    t.eq(r, nil)
    t.eq(code, "UNAVAILABLE")
    t.match(err, "HTTP/2")
    still_serving()
  end)

  t.it("a stream that ends mid-message is INTERNAL, never a success", function()
    local r, err, code = rt:image_fs_info{}
    t.eq(r, nil)
    t.eq(code, "INTERNAL")
    t.match(err, "stream ended in the middle of a message %(10 of 100 bytes%)")
    still_serving()
  end)

  t.it("trailers without grpc-status are an error", function()
    local r, err, code = rt:list_images{}
    t.eq(r, nil)
    t.eq(code, "INTERNAL")
    t.match(err, "without a grpc%-status")
    still_serving()
  end)

  t.it("a trailers-only status arrives with its message", function()
    local r, err, code = rt:pull_image{ image = { image = "x" } }
    t.eq(r, nil)
    t.eq(code, "NOT_FOUND")
    t.eq(err, 'NOT_FOUND: /runtime.v1.ImageService/PullImage: image "x" not found')
  end)

  t.it("a message split into 1-byte frames is reassembled", function()
    local r = assert(rt:exec_sync{ container_id = "c", cmd = { "true" } })
    t.eq(r.stdout, "hello\n")
    t.eq(r.exit_code, 3)
  end)

  t.it("an HTTP error status maps to a gRPC code", function()
    local r, err, code = rt:remove_container{ container_id = "c" }
    t.eq(r, nil)
    t.eq(code, "UNAVAILABLE")
    t.match(err, "HTTP status 503")
    still_serving()
  end)

  t.it("a connection closed mid-call is UNAVAILABLE, and the next call reconnects", function()
    local before = rt:stats().connects
    local r, err, code = rt:stop_container{ container_id = "c", timeout = 1 }
    t.eq(r, nil)
    t.eq(code, "UNAVAILABLE")
    t.match(err, "closed by the server")
    still_serving()
    t.ok(rt:stats().connects > before)
  end)

  t.it("an unknown method is UNIMPLEMENTED", function()
    local r, err, code = rt:list_metric_descriptors{}
    t.eq(r, nil)
    t.eq(code, "UNIMPLEMENTED")
    t.match(err, "unknown method")
  end)

  t.it("calls in flight during a fault fail alone; the others complete", function()
    local res = task.gather({
      function() return rt:list_pod_sandbox{} end, -- kills its connection
      function() return rt:status({}, { timeout = 0.5 }) end,
    })
    t.eq(res[1][2], nil)
    t.eq(res[2][2], nil)
    t.ok(res[2][4] == "UNAVAILABLE" or res[2][4] == "DEADLINE_EXCEEDED", tostring(res[2][3]))
    still_serving()
  end)
end)

t.describe("connection rollover", function()
  t.it("a new connection is opened before stream IDs run out; no call is lost", function()
    -- Client streams are odd numbers: with a cap of 7, four calls fit a connection.
    local c = assert(cri.connect("unix://" .. sock, { channel = { max_stream_id = 7 } }))
    for i = 1, 10 do
      t.eq(assert(c:version{}).runtime_name, "fake", "call " .. i)
    end
    local res = task.gather({
      function() return c:version{} end, function() return c:version{} end,
      function() return c:version{} end, function() return c:version{} end,
      function() return c:version{} end, function() return c:version{} end,
    })
    for i = 1, 6 do
      t.ok(res[i][2], tostring(res[i][3]))
    end
    t.ok(c:stats().connects >= 4, "connections: " .. c:stats().connects)
    c:close()
  end)
end)

t.describe("server streaming", function()
  t.it("an iterator yields each message, then ends cleanly", function()
    local events = assert(rt:get_container_events{})
    local got = {}
    for ev in events do
      got[#got + 1] = ev
    end
    t.eq(events.err, nil)
    t.eq(#got, 3)
    t.eq(got[1].container_id, "c1")
    t.eq(got[2].container_event_type, "CONTAINER_STARTED_EVENT")
    t.eq(got[3].container_event_type, "CONTAINER_STOPPED_EVENT")
    t.eq(tostring(got[3].created_at), "1700000000000000002LL")
  end)
  t.it("a callback gets each message; returning false stops the stream", function()
    local n = 0
    t.eq(rt:get_container_events({}, function() n = n + 1 end), true)
    t.eq(n, 3)
    n = 0
    t.eq(rt:get_container_events({}, function() n = n + 1 return false end), true)
    t.eq(n, 1)
  end)
  t.it("a stream deadline is DEADLINE_EXCEEDED", function()
    local events = assert(rt:get_container_events({}, { timeout = 0.06 }))
    local n = 0
    for _ in events do
      n = n + 1
    end
    t.ok(n < 3)
    t.eq(events.code, "DEADLINE_EXCEEDED")
  end)
end)

t.describe("server gone", function()
  t.it("calls fail fast with UNAVAILABLE, then succeed once it is back", function()
    S.kill(pid)
    S.sh("rm -f '" .. sock .. "'")
    -- the first call may still find the old connection (EOF or EPIPE)
    local r, err, code = rt:version{}
    t.eq(r, nil)
    t.eq(code, "UNAVAILABLE")
    t.match(err, "^UNAVAILABLE: /runtime%.v1%.RuntimeService/Version: ")
    if not err:match("connect to") then
      r, err, code = rt:version{}
      t.eq(code, "UNAVAILABLE")
    end
    t.match(err, "connect to unix://.* failed: no such file or directory")
    -- within the backoff a call fails at once, without trying to connect
    local connects = rt:stats().connects
    r, err, code = rt:version{}
    t.eq(code, "UNAVAILABLE")
    t.match(err, "retrying in at most %d+ ms")
    t.eq(rt:stats().connects, connects)
    start_fake()
    t.ok(S.wait_for(function()
      return rt:version{} ~= nil
    end, 10, 0.1), "reconnected within the backoff cap")
  end)
  t.it("cleanup", function()
    rt:close()
    S.kill(pid)
    S.rm(dir)
  end)
end)
