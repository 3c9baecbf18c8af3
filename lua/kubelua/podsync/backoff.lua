-- kubelua.podsync.backoff: kubelet's per-key exponential backoff
-- (client-go flowcontrol.Backoff with jitter 0; behaviour section 8.2).
--
--   local backoff = require "kubelua.podsync.backoff"
--   local b = backoff.new{ initial = 10, max = 300, reset = 600, now = os.time }
--   if b:in_backoff_since(key, finished_at) then ... else b:next(key, finished_at) end
--
-- `reset` is the age (seconds between the event time and the last update)
-- after which an entry starts over; kubelet's is 2*max.
local M = {}

local Backoff = {}
Backoff.__index = Backoff

function M.new(opts)
  opts = opts or {}
  local initial, max = opts.initial or 10, opts.max or 300
  assert(type(initial) == "number" and initial > 0, "kubelua.podsync.backoff: option initial must be > 0")
  assert(type(max) == "number" and max >= initial, "kubelua.podsync.backoff: option max must be >= initial")
  return setmetatable({
    initial = initial,
    max = max,
    reset = opts.reset or 2 * max,
    now = assert(opts.now, "kubelua.podsync.backoff: option now (a clock function) is required"),
    entries = {},
  }, Backoff)
end

local function expired(self, e, t)
  return t - e.last_update > self.reset
end

-- The current delay for key (0 when none).
function Backoff:get(key)
  local e = self.entries[key]
  return e and e.backoff or 0
end

-- in_backoff_since(key, t) -> true, expiry | false: whether `now - t` is still
-- inside the key's current delay; expiry = t + delay.
function Backoff:in_backoff_since(key, t)
  local e = self.entries[key]
  if not e or expired(self, e, t) then
    return false
  end
  if self.now() - t < e.backoff then
    return true, t + e.backoff
  end
  return false
end

-- next(key, t): the first delay, or double the last (capped at max).
function Backoff:next(key, t)
  local e = self.entries[key]
  if not e or expired(self, e, t) then
    e = { backoff = self.initial }
    self.entries[key] = e
  else
    e.backoff = math.min(e.backoff * 2, self.max)
  end
  e.last_update = self.now()
  return e.backoff
end

function Backoff:reset_key(key)
  self.entries[key] = nil
end

-- Drop entries not updated for `reset` seconds.
function Backoff:gc()
  local now = self.now()
  for k, e in pairs(self.entries) do
    if now - e.last_update > self.reset then
      self.entries[k] = nil
    end
  end
end

return M
