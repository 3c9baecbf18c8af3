-- kubelua.task: tasks over the scheduler's primitives.
--
--   local task = require "kubelua.task"
--   task.spawn(fn, ...)            -- run fn(...) concurrently, from the next loop turn
--   task.sleep(0.5)                -- park this task for half a second
--   local res = task.gather({f1, f2, ...})  -- run all concurrently, wait for all;
--                                  -- res[i] = {ok, ...} as from pcall
--   local loop = task.every(5, fn)  -- fn(loop) now, then every 5 s until loop:stop()
--   task.now(), task.monotime(), task.cputime()  -- wall clock, monotonic and CPU seconds
--   local w = task.waker()         -- w:wait(timeout?) parks until w:wake() (true) or the timeout (false)
local core = require "kubelua.core"

local M = {
  spawn = core.spawn,
  sleep = core.sleep,
  now = core.now,
  monotime = core.monotime,
  cputime = core.cputime,
  waker = core.waker,
}

function M.gather(fns)
  local n, left, results = #fns, #fns, {}
  if n == 0 then
    return results
  end
  local done = core.waker()
  for i = 1, n do
    core.spawn(function()
      results[i] = { pcall(fns[i]) }
      left = left - 1
      if left == 0 then
        done:wake()
      end
    end)
  end
  done:wait()
  return results
end

-- every(period, fn) -> loop: runs fn(loop) in a task of its own at once and
-- then every `period` seconds (fn may return another delay for the next
-- wait), until loop:stop(), which also cuts a wait short. An error in fn
-- is logged with its traceback and the loop goes on. loop.done is true once
-- the task has finished; loop:stop() returns the loop.
function M.every(period, fn)
  local loop = { stopped = false, done = false, waker = core.waker() }
  function loop.stop(self)
    self.stopped = true
    self.waker:wake()
    return self
  end
  core.spawn(function()
    while not loop.stopped do
      local ok, delay = xpcall(fn, debug.traceback, loop)
      if not ok then
        core.log("E", "periodic task failed: " .. tostring(delay))
        delay = nil
      end
      if loop.stopped then
        break
      end
      loop.waker:wait(tonumber(delay) or period)
    end
    loop.done = true
  end)
  return loop
end

return M
