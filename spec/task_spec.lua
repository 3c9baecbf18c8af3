-- kubelua.task's job: a background task that can be stopped (the lifecycle
-- under kubelua.k8s.watch, kubelua.watch.http and the k8s managers' recycler).
local t = require "spec.t"
local S = require "spec.support"
local task = require "kubelua.task"
local core = require "kubelua.core"

-- Log lines of level "E" written while fn runs (core.log replaced meanwhile).
local function errors_logged(fn)
  local lines, log = {}, core.log
  core.log = function(level, msg)
    if level == "E" then
      lines[#lines + 1] = msg
    else
      log(level, msg)
    end
  end
  local ok, err = pcall(fn)
  core.log = log
  assert(ok, err)
  return lines
end

t.describe("job", function()
  t.it("fn(j) runs in a task of its own, from the next loop turn; running is false once it returned", function()
    local seen
    local j = task.job(function(job)
      seen = job
      task.sleep(0.02)
    end, { name = "short" })
    t.eq({ j.name, j.running, j.stopped, seen }, { "short", true, false, nil })
    t.ok(S.wait_for(function() return not j.running end, 2))
    t.eq(seen, j)
    t.eq(j.stopped, true, "an ended job counts as stopped")
    local t0 = core.monotime()
    j:stop()
    t.ok(core.monotime() - t0 < 0.01, "stop() after the end returns at once")
    t.eq(task.job(function() end).name, "job")
  end)

  t.it("cancel() cuts a pause short without waiting; stop() waits until the task and on_exit are done", function()
    local cancels, exits, log = 0, 0, {}
    local j = task.job(function(job)
      while not job.stopped do
        job:pause(3600)
      end
      log[#log + 1] = "loop ended"
      task.sleep(0.05) -- cleanup that parks: stop() must wait for it
      log[#log + 1] = "fn returned"
    end, {
      on_cancel = function()
        cancels = cancels + 1
      end,
      on_exit = function(job)
        exits = exits + 1
        log[#log + 1] = "on_exit, stopped=" .. tostring(job.stopped)
      end,
    })
    task.sleep(0.02) -- the job is pausing now
    local t0 = core.monotime()
    j:cancel()
    t.ok(core.monotime() - t0 < 0.01, "cancel() does not wait")
    t.eq({ j.stopped, j.running, cancels }, { true, true, 1 })
    j:stop()
    local took = core.monotime() - t0
    t.ok(took >= 0.04 and took < 1, "stop() waited for the cleanup, not the pause: " .. took .. " s")
    t.eq(log, { "loop ended", "fn returned", "on_exit, stopped=true" })
    t.eq({ j.running, cancels, exits }, { false, 2, 1 })
  end)

  t.it("pause waits its time when nobody cancels, and not at all once stopped", function()
    local waited = {}
    local j = task.job(function(job)
      local t0 = core.monotime()
      job:pause(0.03)
      waited[1] = core.monotime() - t0
    end)
    local k = task.job(function(job)
      job:cancel()
      local t0 = core.monotime()
      job:pause(3600)
      waited[2] = core.monotime() - t0
    end)
    t.ok(S.wait_for(function() return not j.running and not k.running end, 2))
    t.ok(waited[1] >= 0.025 and waited[1] < 1, "first pause: " .. tostring(waited[1]))
    t.ok(waited[2] < 0.01, "a pause after cancel: " .. tostring(waited[2]))
  end)

  t.it("stop() before the task has started, and from inside the task, which it does not wait for", function()
    local ran = false
    local early = task.job(function(job)
      ran = not job.stopped
    end)
    early:stop()
    t.eq({ early.running, ran }, { false, false })
    local after
    local j
    j = task.job(function()
      j:stop()
      after = j.running -- still inside fn: the task has not ended
    end)
    t.ok(S.wait_for(function() return not j.running end, 2))
    t.eq(after, true)
  end)

  t.it("an error in fn is logged with the name and its traceback and ends the job; stop() returns", function()
    local lines = errors_logged(function()
      local function inner()
        error("job exploded")
      end
      local j = task.job(function()
        inner()
      end, { name = "watch /x" })
      j:stop()
      t.eq(j.running, false)
    end)
    t.eq(#lines, 1)
    t.match(lines[1], "^watch /x: stopped by an error: .*job exploded\nstack traceback:")
    t.match(lines[1], "in function 'inner'")
  end)

  t.it("call runs a callback protected: an error is logged, the job goes on; nil is no call", function()
    local got = {}
    local lines = errors_logged(function()
      local j = task.job(function(job)
        job:call("on_event", function(a, b)
          got[#got + 1] = a + b
          error("policy bug")
        end, 1, 2)
        job:call("on_sync", nil, 3)
        job:call("on_event", function(a)
          got[#got + 1] = a
        end, "again")
      end, { name = "watch.http GET u" })
      j:stop()
    end)
    t.eq(got, { 3, "again" })
    t.eq(#lines, 1)
    t.match(lines[1], "^watch%.http GET u: on_event failed: .*policy bug\nstack traceback:")
  end)
end)
