-- kubelua.task: tasks over the scheduler's primitives.
--
--   local task = require "kubelua.task"
--   task.spawn(fn, ...)            -- run fn(...) concurrently, from the next loop turn
--   task.sleep(0.5)                -- park this task for half a second
--   local res = task.gather({f1, f2, ...})  -- run all concurrently, wait for all;
--                                  -- res[i] = {ok, ...} as from pcall
--   local r, err, code = task.all({f1, f2})  -- gather, then r[i] = fi's first result,
--                                  -- or the first failure (in order) as nil, err, code
--   local loop = task.every(5, fn)  -- fn(loop) now, then every 5 s until loop:stop()
--   local j = task.job(fn, { name = "watch x" })  -- fn(j) in a task of its own until it
--                                  -- returns; j:stop() asks it to and waits (see job)
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

-- all(fns) -> { first result of each fn } | nil, err, code: gather(fns),
-- where each fn returns a value or nil, err, code (the CRI calls' shape).
-- The first failure in the list's order is returned: a function that threw
-- as "INTERNAL: <error>", "INTERNAL", one that failed as its nil, err, code.
function M.all(fns)
  local out = {}
  for i, r in ipairs(M.gather(fns)) do
    if not r[1] then
      return nil, "INTERNAL: " .. tostring(r[2]), "INTERNAL"
    elseif r[2] == nil then
      return nil, r[3], r[4]
    end
    out[i] = r[2]
  end
  return out
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

-- A stoppable background task (see job below); its methods.
local Job = {}
Job.__index = Job

local function traceback(e)
  return debug.traceback(tostring(e), 2)
end

-- job(fn [, opts]) -> j: a background task that can be stopped.
-- fn(j) runs in a task of its own (from the next loop turn) until it
-- returns; it should return once j.stopped is true, and wait with
-- j:pause(secs), which j:cancel() cuts short. opts, all optional: name (for
-- log lines; "job"), on_cancel() (called by every cancel(), e.g. to close a
-- stream in flight), on_exit(j) (called in the task once fn has ended,
-- however it ended). An error thrown by fn is logged with its traceback
-- ("NAME: stopped by an error: ...") and ends the job. Fields: j.name;
-- j.stopped (cancel() was called, or fn has ended); j.running (false once
-- fn and on_exit are done).
--   j:pause(secs)   wait secs, or less when cancel() comes; no wait once stopped
--   j:cancel()      set j.stopped, cut a pause short, call on_cancel; no waiting
--   j:stop()        cancel(), then park until the task has ended (from inside
--                   the job's own task it does not wait)
--   j:call(what, f, ...)  f(...) protected, for callbacks: an error is logged
--                   with its traceback ("NAME: WHAT failed: ...") and the job
--                   goes on; a nil f is no call
function M.job(fn, opts)
  opts = opts or {}
  local j = setmetatable({ name = opts.name or "job", stopped = false, running = true, joiners = {},
    on_cancel = opts.on_cancel }, Job)
  core.spawn(function()
    j.co = coroutine.running()
    local ok, err = xpcall(fn, traceback, j)
    if not ok then
      core.log("E", string.format("%s: stopped by an error: %s", j.name, tostring(err)))
    end
    j.stopped = true
    j:call("on_exit", opts.on_exit, j)
    j.running = false
    for _, wk in ipairs(j.joiners) do
      wk:wake()
    end
    j.joiners = {}
  end)
  return j
end

-- The methods of a job, as described above job().
function Job:pause(secs)
  if not self.stopped then
    self.waker = self.waker or core.waker()
    self.waker:wait(secs)
  end
end

function Job:cancel()
  self.stopped = true
  if self.waker then
    self.waker:wake()
  end
  if self.on_cancel then
    self.on_cancel()
  end
end

function Job:stop()
  self:cancel()
  if self.running and coroutine.running() ~= self.co then
    local wk = core.waker()
    self.joiners[#self.joiners + 1] = wk
    wk:wait()
  end
end

function Job:call(what, f, ...)
  if f then
    local ok, err = xpcall(f, traceback, ...)
    if not ok then
      core.log("E", string.format("%s: %s failed: %s", self.name, what, tostring(err)))
    end
  end
end

return M
