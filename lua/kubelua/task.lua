-- kubelua.task: tasks over the scheduler's primitives.
--
--   local task = require "kubelua.task"
--   task.spawn(fn, ...)            -- run fn(...) concurrently, from the next loop turn
--   task.sleep(0.5)                -- park this task for half a second
--   local res = task.gather({f1, f2, ...})  -- run all concurrently, wait for all;
--                                  -- res[i] = {ok, ...} as from pcall
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

return M
