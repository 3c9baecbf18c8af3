-- Runtime cache and pod lifecycle events against the real containerd, and
-- the evented mode against the fake server's event stream.
local t = require "spec.t"
local S = require "spec.support"
local cri = require "kubelua.cri"
local task = require "kubelua.task"
local cachemod = require "kubelua.cache"
local plegmod = require "kubelua.pleg"

local ctd = assert(S.containerd(), "KUBELUA_TEST_CTD_DIR is not set (run through ctest)")
local IMAGE = "kubelua.local/busybox:latest"
local rt = assert(cri.connect(ctd.endpoint, { timeout = 30 }))

local function pod_config(uid)
  return {
    metadata = { name = "pleg-" .. uid:sub(-6), uid = uid, namespace = "kubelua-test" },
    labels = { ["io.kubernetes.pod.uid"] = uid, ["io.kubernetes.pod.name"] = "pleg-" .. uid:sub(-6),
      ["io.kubernetes.pod.namespace"] = "kubelua-test" },
    linux = { cgroup_parent = "/kubelua-test/pod" .. uid,
      security_context = { namespace_options = { network = "NODE" } } },
  }
end

local function container_config(name, uid, cmd)
  return { metadata = { name = name }, image = { image = IMAGE }, command = cmd,
    labels = { ["io.kubernetes.pod.uid"] = uid, ["io.kubernetes.container.name"] = name } }
end

-- Collects events of one pod; wait(type, id) parks until it arrives.
local function recorder(pleg, uid)
  local r = { events = {} }
  r.unsubscribe = pleg:subscribe(function(ev)
    if ev.pod == uid then
      table.insert(r.events, ev)
    end
  end)
  function r.wait(typ, id, timeout)
    return S.wait_for(function()
      for _, ev in ipairs(r.events) do
        if ev.type == typ and ev.id == id then
          return true
        end
      end
    end, timeout or 10, 0.02)
  end
  -- The event types of one container; a leading ContainerChanged (the
  -- created state, when a relist falls between create and start) is dropped.
  function r.types(id)
    local out = {}
    for _, ev in ipairs(r.events) do
      if ev.id == id then
        out[#out + 1] = ev.type
      end
    end
    if out[1] == "ContainerChanged" then
      table.remove(out, 1)
    end
    return out
  end
  return r
end

t.describe("pleg (generic relist) against containerd", function()
  local uid = "pleg-" .. os.time() .. "-" .. math.random(1e6)
  local cache = cachemod.new{ client = rt }
  local pleg = plegmod.new{ client = rt, cache = cache, period = 0.1 }
  local rec = recorder(pleg, uid)
  local pod, c1, c2
  local config = pod_config(uid)

  t.it("is unhealthy until its first relist", function()
    local ok, why = pleg:healthy()
    t.eq(ok, false)
    t.eq(why, "pleg has yet to be successful")
    pleg:start()
    t.allow_parked(1) -- its relist loop runs until the last test stops it
    t.ok(S.wait_for(function() return pleg:healthy() end, 5), "healthy after a relist")
  end)

  t.it("a new sandbox is ContainerStarted", function()
    pod = assert(rt:run_pod_sandbox{ config = config }).pod_sandbox_id
    t.ok(rec.wait("ContainerStarted", pod), "sandbox started event")
    t.eq(rec.events[1].kind, "sandbox")
  end)

  t.it("started, killed and removed containers give events in order", function()
    local before = task.now()
    c1 = assert(rt:create_container{ pod_sandbox_id = pod, sandbox_config = config,
      config = container_config("app", uid, { "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done" }) }).container_id
    assert(rt:start_container{ container_id = c1 })
    t.ok(rec.wait("ContainerStarted", c1), "started")
    local status = cache:get_newer_than(uid, before, 5)
    t.ok(status, "the pod's status was inspected after the event")
    local found
    for _, c in ipairs(status.containers) do
      found = found or (c.id == c1 and c.state == "CONTAINER_RUNNING")
    end
    t.ok(found, "the cached status shows the running container")
    assert(rt:stop_container{ container_id = c1, timeout = 5 })
    t.ok(rec.wait("ContainerDied", c1), "died")
    assert(rt:remove_container{ container_id = c1 })
    t.ok(rec.wait("ContainerRemoved", c1), "removed")
    t.eq(rec.types(c1), { "ContainerStarted", "ContainerDied", "ContainerRemoved" })
  end)

  t.it("a container that exits by itself is ContainerDied", function()
    c2 = assert(rt:create_container{ pod_sandbox_id = pod, sandbox_config = config,
      config = container_config("oneshot", uid, { "sh", "-c", "sleep 0.3; exit 3" }) }).container_id
    assert(rt:start_container{ container_id = c2 })
    t.ok(rec.wait("ContainerDied", c2), "died on its own")
  end)

  t.it("removing a running pod gives Died then Removed for what had not exited", function()
    local c3 = assert(rt:create_container{ pod_sandbox_id = pod, sandbox_config = config,
      config = container_config("long", uid, { "sleep", "3600" }) }).container_id
    assert(rt:start_container{ container_id = c3 })
    t.ok(rec.wait("ContainerStarted", c3))
    assert(rt:stop_pod_sandbox{ pod_sandbox_id = pod })
    assert(rt:remove_pod_sandbox{ pod_sandbox_id = pod })
    t.ok(rec.wait("ContainerRemoved", pod), "sandbox removed")
    t.ok(rec.wait("ContainerRemoved", c3), "container removed")
    local st = rec.types(c3)
    t.eq(st[#st], "ContainerRemoved")
    t.ok(rec.wait("ContainerRemoved", c2), "the exited one is removed without a second Died")
    t.eq(rec.types(c2), { "ContainerStarted", "ContainerDied", "ContainerRemoved" })
    t.ok(S.wait_for(function() return cache.status[uid] == nil end, 5), "a gone pod leaves the status cache")
  end)

  t.it("reports itself unhealthy when relists stop succeeding past the threshold", function()
    local clock = task.now() + 181
    local p2 = plegmod.new{ client = rt, clock = function() return clock end }
    assert(p2:relist())
    clock = clock + 200
    local ok, why = p2:healthy()
    t.eq(ok, false)
    t.match(why, "^pleg was last seen active 200%.0s ago; threshold is 180s$")
  end)

  t.it("stops cleanly", function()
    rec.unsubscribe()
    pleg:stop()
    t.allow_parked(-1)
    t.ok(S.wait_for(function() return pleg.done end, 5))
  end)
end)

t.describe("runtime cache", function()
  t.it("serves from the cache while fresh; one round trip for concurrent callers", function()
    local c = assert(cri.connect(ctd.endpoint))
    local cache = cachemod.new{ client = c, period = 30 }
    local calls0 = c:stats().calls
    local fns = {}
    for i = 1, 20 do
      fns[i] = function() return assert(cache:get_pods{ all = true }) end
    end
    local res = task.gather(fns)
    for i = 1, 20 do
      t.ok(res[i][1], tostring(res[i][2]))
    end
    t.eq(c:stats().calls - calls0, 2, "one ListPodSandbox + one ListContainers for 20 callers")
    assert(cache:get_pods{})
    t.eq(c:stats().calls - calls0, 2, "fresh: served from the cache")
    local taken = cache.time
    assert(cache:force_update_if_older(taken))
    t.eq(c:stats().calls - calls0, 2, "not older than t: no refresh")
    assert(cache:force_update_if_older(task.now() + 1))
    t.eq(c:stats().calls - calls0, 4, "older than t: refreshed")
    t.ok(cache.time > taken)
    c:close()
  end)

  t.it("groups the runtime's containers into pods by label; all=false keeps running ones", function()
    local uid = "cache-" .. os.time() .. "-" .. math.random(1e6)
    local config = pod_config(uid)
    local pod = assert(rt:run_pod_sandbox{ config = config }).pod_sandbox_id
    local c = assert(rt:create_container{ pod_sandbox_id = pod, sandbox_config = config,
      config = container_config("idle", uid, { "sleep", "3600" }) }).container_id
    local cache = cachemod.new{ client = rt, period = 0 }
    local function find(pods)
      for _, p in ipairs(pods) do
        if p.uid == uid then
          return p
        end
      end
    end
    local p = find(assert(cache:get_pods{ all = true }))
    t.ok(p, "the pod is listed")
    t.eq(#p.sandboxes, 1)
    t.eq(#p.containers, 1)
    t.eq(p.name, "pleg-" .. uid:sub(-6))
    p = find(assert(cache:get_pods{}))
    t.eq(#p.containers, 0, "a created (not running) container is left out of running pods")
    assert(rt:stop_pod_sandbox{ pod_sandbox_id = pod })
    t.eq(find(assert(cache:get_pods{})), nil, "a pod with nothing running is not a running pod")
    assert(rt:remove_container{ container_id = c })
    assert(rt:remove_pod_sandbox{ pod_sandbox_id = pod })
  end)

  t.it("a failed refresh returns the error, not stale data", function()
    local c = assert(cri.connect("unix:///tmp/kubelua-no-such.sock"))
    local cache = cachemod.new{ client = c }
    local pods, err, code = cache:get_pods{}
    t.eq(pods, nil)
    t.eq(code, "UNAVAILABLE")
    t.match(err, "ListPodSandbox")
    c:close()
  end)

  t.it("get_newer_than times out with a clear error", function()
    local cache = cachemod.new{ client = rt }
    local st, err, code = cache:get_newer_than("nobody", task.now(), 0.05)
    t.eq(st, nil)
    t.eq(code, "DEADLINE_EXCEEDED")
    t.match(err, "nobody")
  end)
end)

t.describe("evented mode", function()
  t.it("containerd 1.6 answers UNIMPLEMENTED: falls back to relisting", function()
    local pleg = plegmod.new{ client = rt, mode = "evented", period = 0.1 }
    pleg:start()
    t.ok(S.wait_for(function() return pleg.mode == "generic" and pleg.stats.relists >= 2 end, 5),
      "fell back and relists")
    t.eq(pleg.stream_failures, 1)
    pleg:stop()
    t.ok(S.wait_for(function() return pleg.done end, 5))
  end)

  t.it("consumes the runtime's event stream (fake server)", function()
    local dir = S.tmpdir("pleg")
    local sock = dir .. "/fake.sock"
    local pid = S.spawn("/usr/bin/python3 " .. S.ROOT .. "/tests/support/fake_cri.py --quiet --unix " .. sock, dir .. "/log")
    t.ok(S.wait_for(function() return S.exists(sock) end, 15), "fake server up")
    local c = assert(cri.connect("unix://" .. sock))
    local cache = cachemod.new{ client = c }
    local pleg = plegmod.new{ client = c, cache = cache, mode = "evented", period = 0.05 }
    local got = {}
    pleg:subscribe(function(ev) got[#got + 1] = ev end)
    pleg:start()
    t.ok(S.wait_for(function() return #got >= 2 end, 5), "events from the stream")
    t.eq(got[1], { type = "ContainerStarted", pod = "uid-1", id = "c2", kind = "container" })
    t.eq(got[2], { type = "ContainerDied", pod = "uid-1", id = "c3", kind = "container" })
    t.ok(cache.status["uid-1"], "the event's sandbox status went to the cache")
    t.eq(tostring(cache.status["uid-1"].time), tostring(1700000000.000000002))
    pleg:stop()
    t.ok(S.wait_for(function() return pleg.done end, 5))
    c:close()
    S.kill(pid)
    S.rm(dir)
  end)
end)
