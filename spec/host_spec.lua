-- The host and its scheduler: tasks, parking, wakers, errors that do not
-- stop the host, misuse that is reported clearly.
local t = require "spec.t"
local S = require "spec.support"
local task = require "kubelua.task"
local core = require "kubelua.core"

local KUBELUA = S.sh("readlink -f /proc/" .. S.sh("echo $PPID") .. "/exe")

local function run(code)
  local path = S.sh("mktemp /tmp/kubelua-host.XXXXXX")
  local f = assert(io.open(path, "w"))
  f:write(code)
  f:close()
  local out, ok = S.sh(KUBELUA .. " run " .. path)
  os.remove(path)
  return out, ok
end

t.describe("tasks", function()
  t.it("run concurrently and in spawn order; sleep parks only its task", function()
    local order = {}
    local res = task.gather({
      function() task.sleep(0.05) order[#order + 1] = "slow" end,
      function() order[#order + 1] = "fast" end,
    })
    t.eq(order, { "fast", "slow" })
    t.eq(res, { { true }, { true } })
  end)
  t.it("gather returns each function's results and errors", function()
    local res = task.gather({
      function() return 1, 2 end,
      function() error("nope", 0) end,
    })
    t.eq(res[1], { true, 1, 2 })
    t.eq(res[2], { false, "nope" })
  end)
  t.it("all returns each first result, or the first failure in order", function()
    t.eq(task.all({ function() return "a", "x" end, function() return { 2 } end }), { "a", { 2 } })
    t.eq({ task.all({
      function() task.sleep(0.01) return nil, "NOT_FOUND: first", "NOT_FOUND" end,
      function() return nil, "UNAVAILABLE: second", "UNAVAILABLE" end,
    }) }, { nil, "NOT_FOUND: first", "NOT_FOUND" })
    t.eq({ task.all({ function() return 1 end, function() error("boom", 0) end }) },
      { nil, "INTERNAL: boom", "INTERNAL" })
    t.eq(task.all({}), {})
  end)
  t.it("a waker woken before wait() does not park", function()
    local w = core.waker()
    w:wake()
    w:wait()
    t.eq(core.parked_count(), 0)
  end)
  t.it("a waker resumes exactly the waiting task", function()
    local w, got = core.waker(), nil
    task.spawn(function() task.sleep(0.01) got = "woken" w:wake() end)
    w:wait()
    t.eq(got, "woken")
  end)
  t.it("two waiters on one waker is a clear error", function()
    local w = core.waker()
    task.spawn(function() w:wait() end)
    task.sleep(0.01)
    t.fails(function() w:wait() end, "another task is already waiting")
    w:wake()
    task.sleep(0.01)
  end)
end)

t.describe("waits", function()
  t.it("a waker wait with a timeout returns false when nobody wakes it", function()
    local w = core.waker()
    local t0 = core.monotime()
    t.eq(w:wait(0.05), false)
    t.ok(core.monotime() - t0 >= 0.045)
    task.spawn(function() w:wake() end)
    t.eq(w:wait(5), true)
  end)
  t.it("wait_signal returns the signal's name; unknown names throw", function()
    local out = S.sh(KUBELUA .. [[ -e 'return require("kubelua.core").wait_signal("TERM", "HUP")' & sleep 0.3; kill -HUP $!; wait]])
    t.eq(out, '"HUP"')
    t.fails(function() core.wait_signal("USR9") end, 'unknown signal "USR9"')
  end)
end)

t.describe("every", function()
  t.it("runs at once, then every period; an error is logged and the loop goes on; stop cuts the wait", function()
    local runs = 0
    local loop = task.every(0.02, function()
      runs = runs + 1
      if runs == 2 then
        error("deliberate")
      end
    end)
    t.ok(S.wait_for(function() return runs >= 4 end, 5), "kept running after the error")
    local t0 = core.monotime()
    task.every(3600, function() end):stop()
    t.eq(loop:stop(), loop)
    t.ok(S.wait_for(function() return loop.done end, 1))
    t.ok(core.monotime() - t0 < 0.5, "stop does not wait out the period")
    task.sleep(0.05)
    local after = runs
    task.sleep(0.05)
    t.eq(runs, after, "no run after stop")
  end)
  t.it("fn's return value is the next delay", function()
    local times = {}
    local loop = task.every(3600, function()
      times[#times + 1] = core.monotime()
      return 0.01
    end)
    t.ok(S.wait_for(function() return #times >= 3 end, 2), "the short delay was used")
    loop:stop()
    S.wait_for(function() return loop.done end, 1)
  end)
end)

t.describe("errors", function()
  t.it("a failing task is reported with its traceback; the host keeps running", function()
    local out, ok = run([[
      local task = require "kubelua.task"
      local function inner() error("policy exploded") end
      task.spawn(function() inner() end)
      task.sleep(0.05)
      print("still alive")
    ]])
    t.ok(not ok, "exit status says a task failed")
    t.match(out, "task failed: .*policy exploded")
    t.match(out, "in function 'inner'")
    t.match(out, "still alive")
  end)
  t.it("I/O outside a task is a clear error", function()
    local out = S.sh(KUBELUA .. [[ -e 'local co = coroutine.create(function() require("kubelua.task").sleep(0) end); return coroutine.resume(co)']])
    t.match(out, "must run in a task")
  end)
  t.it("a bare coroutine.yield() in a task is reported, not silently lost", function()
    local out, ok = run([[coroutine.yield()]])
    t.ok(not ok)
    t.match(out, "coroutine%.yield%(%) outside a kubelua binding")
  end)
  t.it("a syntax error names the file and line", function()
    local out, ok = run("local x = = 1\n")
    t.ok(not ok)
    t.match(out, "kubelua%-host%.%w+:1: unexpected symbol")
  end)
  t.it("unknown commands and missing arguments exit with status 2 and usage", function()
    local out, ok = S.sh(KUBELUA .. " frobnicate; echo status=$?")
    t.match(out, 'unknown command "frobnicate"')
    t.match(out, "status=2")
    out = S.sh(KUBELUA .. " run; echo status=$?")
    t.match(out, "missing SCRIPT")
    t.match(out, "status=2")
    t.ok(ok)
  end)
end)
