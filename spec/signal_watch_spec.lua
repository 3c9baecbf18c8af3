-- kubelua.core.signal_watch: signals caught for as long as the watcher is
-- open (the agent's SIGHUP loop: a second SIGHUP during a reload is queued,
-- not fatal), in arrival order; close() wakes a waiting task with nil.
local t = require "spec.t"
local S = require "spec.support"
local core = require "kubelua.core"
local task = require "kubelua.task"
local PID = require("kubelua.sys").getpid()

t.describe("core.signal_watch", function()
  t.it("queues signals that arrive while no task waits, oldest first", function()
    local w = core.signal_watch("HUP", "TERM")
    -- one kill per shell: two pending HUPs sent at once would merge into one
    S.sh("kill -HUP " .. PID)
    S.sh("kill -HUP " .. PID)
    S.sh("kill -TERM " .. PID)
    task.sleep(0.05)
    t.eq(w:next(), "HUP")
    t.eq(w:next(), "HUP")
    t.eq(w:next(), "TERM")
    w:close()
  end)

  t.it("parks a task until a signal arrives", function()
    local w = core.signal_watch("HUP")
    local got
    core.spawn(function() got = w:next() end)
    task.sleep(0.05)
    t.eq(got, nil)
    S.sh("kill -HUP " .. PID)
    t.ok(S.wait_for(function() return got ~= nil end, 2))
    t.eq(got, "HUP")
    w:close()
  end)

  t.it("close() wakes the waiting task with nil; next() after close is nil", function()
    local w = core.signal_watch("HUP")
    local done, got = false, "unset"
    core.spawn(function()
      got = w:next()
      done = true
    end)
    task.sleep(0.05)
    w:close()
    t.ok(S.wait_for(function() return done end, 2))
    t.eq(got, nil)
    t.eq(w:next(), nil)
    w:close()
  end)

  t.it("unknown or too many names throw", function()
    t.fails(function() core.signal_watch("USR9") end, 'unknown signal "USR9"')
    t.fails(function() core.signal_watch() end, "give 1 to 4")
  end)
end)
