-- kubelua.prober.fakeclock: a clock for testing probe policies without
-- waiting. It implements the clock interface kubelua.prober takes
-- (`now()`, `event()`), and time moves only when the test says so.
--
--   local fakeclock = require "kubelua.prober.fakeclock"
--   local clock = fakeclock.new(1000)              -- now() starts at 1000
--   local mgr = prober.new{ clock = clock, probe = my_fake_probe, random = function() return 0 end }
--   mgr:add_pod(pod)
--   clock:advance(10)    -- wakes every wait that ends within 10 s, in time order,
--                        -- letting each woken task run before moving on
--
-- An event's wait(secs) parks its task (on a kubelua.core waker) until the
-- fake time reaches now + secs, or until ev:wake(). advance() and settle()
-- must be called from a task (a spec's test body is one).
local core = require "kubelua.core"

local M = {}

local Clock = {}
Clock.__index = Clock

local Event = {}
Event.__index = Event

function M.new(start)
  local c = setmetatable({ t = start or 0, waits = {}, seq = 0 }, Clock)
  c.now = function()
    return c.t
  end
  c.event = function()
    return setmetatable({ clock = c, pending = false }, Event)
  end
  return c
end

-- ev:wait(secs) -> true when woken, false when the fake time ran out
function Event:wait(secs)
  if self.pending then
    self.pending = false
    return true
  end
  if self.waiting then
    error("kubelua.prober.fakeclock: another task is already waiting on this event", 2)
  end
  local c = self.clock
  c.seq = c.seq + 1
  local w = { ev = self, waker = core.waker(), at = secs and (c.t + secs) or math.huge, seq = c.seq }
  self.waiting = w
  c.waits[w] = true
  w.waker:wait()
  return w.woken
end

function Event:wake()
  local w = self.waiting
  if w then
    self.waiting = nil
    self.clock.waits[w] = nil
    w.woken = true
    w.waker:wake()
  else
    self.pending = true
  end
end

-- Let woken tasks run until they park again (a few loop turns).
function Clock:settle(turns)
  for _ = 1, turns or 4 do
    core.sleep(0)
  end
end

-- How many tasks wait on this clock.
function Clock:waiting()
  local n = 0
  for _ in pairs(self.waits) do
    n = n + 1
  end
  return n
end

-- Move the time forward by `secs`, firing due waits in order.
function Clock:advance(secs)
  local target = self.t + secs
  self:settle()
  while true do
    local first
    for w in pairs(self.waits) do
      if w.at <= target and (not first or w.at < first.at or (w.at == first.at and w.seq < first.seq)) then
        first = w
      end
    end
    if not first then
      break
    end
    self.waits[first] = nil
    first.ev.waiting = nil
    if first.at > self.t then
      self.t = first.at
    end
    first.woken = false
    first.waker:wake()
    self:settle()
  end
  self.t = target
  self:settle()
end

return M
