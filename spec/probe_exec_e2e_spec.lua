-- kubelua.probe.exec in a real container of the private containerd (the
-- `containerd` ctest fixture): exit codes, output cap, timeout, a missing
-- binary, and one exec probe in flight per container.
local t = require "spec.t"
local S = require "spec.support"
local probe = require "kubelua.probe"
local task = require "kubelua.task"
local core = require "kubelua.core"

local _, rt = S.runtime({ timeout = 30 })
local uid = "probe-exec-" .. os.time() .. "-" .. math.random(1e6)
local config = {
  metadata = { name = "probe-exec", uid = uid, namespace = "kubelua-test", attempt = 0 },
  labels = { suite = "probe_exec_e2e" },
  linux = {
    cgroup_parent = "/kubelua-test/pod" .. uid,
    security_context = { namespace_options = { network = "NODE", pid = "CONTAINER", ipc = "POD" } },
  },
}
local pod, cid

local function run(cmd, opts)
  local o = { client = rt, container_id = cid, command = cmd, timeout = 2 }
  for k, v in pairs(opts or {}) do
    o[k] = v
  end
  return probe.exec(o)
end

t.describe("exec probes in a container", function()
  t.it("starts a pod", function()
    pod = assert(rt:run_pod_sandbox{ config = config }).pod_sandbox_id
    cid = assert(rt:create_container{ pod_sandbox_id = pod, sandbox_config = config, config = {
      metadata = { name = "app", attempt = 0 },
      image = { image = "kubelua.local/busybox:latest" },
      command = { "/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done" },
    } }).container_id
    assert(rt:start_container{ container_id = cid })
  end)

  for _, c in ipairs { -- the test, the command, its result, output and details
    { "exit 0 is success with the output", { "sh", "-c", "echo ready" }, "success", "ready\n", { exit_code = 0 } },
    { "exit 1 is failure with stdout then stderr as output", { "sh", "-c", "echo out; echo err >&2; exit 1" },
      "failure", "out\nerr\n", { exit_code = 1 } },
    { "a silent non-zero exit still has a readable reason", { "false" }, "failure",
      'command "false" exited with code 1', {} },
  } do
    t.it(c[1], function()
      local r, out, d = run(c[2])
      t.eq(r, c[3])
      t.eq(out, c[4])
      for k, v in pairs(c[5]) do
        t.eq(d[k], v, k)
      end
    end)
  end

  t.it("output is capped at 10 KiB", function()
    local r, out, d = run({ "sh", "-c", "head -c 50000 /dev/zero | tr '\\0' a" })
    t.eq(r, "success")
    t.eq(#out, 10 * 1024)
    t.eq(d.truncated, true)
  end)

  t.it("a command that sleeps past the timeout fails, and the timeout holds", function()
    local t0 = core.monotime()
    local r, out = run({ "sleep", "10" }, { timeout = 1 })
    local took = core.monotime() - t0
    t.eq(r, "failure")
    t.eq(out, 'command "sleep 10" timed out after 1s')
    t.ok(took >= 0.9 and took < 1 + probe.EXEC_GRACE + 0.5, "took " .. took)
  end)

  t.it("a missing binary is unknown (the runtime's error, discarded by the worker)", function()
    local r, out, d = run({ "/no/such/binary" })
    t.eq(r, "unknown")
    t.match(out, "no such file or directory")
    t.ok(d.error, "details.error is set")
  end)

  -- Starts a 1 s exec (3 s timeout) in a task and lets it begin; returns a
  -- function giving its results once it has ended (nil before).
  local function in_flight()
    local first
    task.spawn(function()
      first = { run({ "sleep", "1" }, { timeout = 3 }) }
    end)
    task.sleep(0.2)
    return function()
      return first
    end
  end

  t.it("one exec in flight per container: a second one is skipped by default", function()
    local first = in_flight()
    local t0 = core.monotime()
    local r, out, d = run({ "true" })
    t.eq(r, "unknown")
    t.eq(d.skipped, true)
    t.match(out, "previous exec probe still running")
    t.ok(core.monotime() - t0 < 0.1, "skipped at once")
    t.ok(S.wait_for(function() return first() ~= nil end, 5), "the first one ends")
    t.eq(first()[1], "success")
    t.eq(run({ "true" }), "success", "the container is free again")
  end)

  t.it("busy = \"wait\" waits for the one in flight, within its own timeout", function()
    local first = in_flight()
    local r, _, d = run({ "true" }, { busy = "wait", timeout = 0.3 })
    t.eq(r, "unknown", "gave up waiting after its timeout")
    t.eq(d.skipped, true)
    local t0 = core.monotime()
    r = run({ "true" }, { busy = "wait", timeout = 5 })
    t.eq(r, "success")
    t.ok(core.monotime() - t0 >= 0.3, "it waited for the first")
    t.eq(first() and first()[1], "success")
  end)

  t.it("stops and removes the pod", function()
    assert(rt:stop_container{ container_id = cid, timeout = 1 })
    assert(rt:remove_container{ container_id = cid })
    assert(rt:stop_pod_sandbox{ pod_sandbox_id = pod })
    assert(rt:remove_pod_sandbox{ pod_sandbox_id = pod })
    local left = assert(rt:list_pod_sandbox{ filter = { label_selector = { suite = "probe_exec_e2e" } } })
    t.eq(#left.items, 0)
  end)
end)
