-- kubelua.agent.notify: systemd's service notification protocol (Type=notify)
-- without libsystemd: datagrams to $NOTIFY_SOCKET through kubelua.sys.notify.
--
--   local n = require("kubelua.agent.notify").new()   -- reads the environment
--   n:ready("running 3 pods")        -- READY=1 (+ STATUS=...)
--   n:status("syncing")              -- STATUS=...
--   n:reloading() ... n:ready()      -- RELOADING=1 + MONOTONIC_USEC, then READY=1
--   n:stopping()                     -- STOPPING=1
--   n:start_watchdog()               -- WATCHDOG=1 every WATCHDOG_USEC/2
--   n:stop_watchdog()
--
-- Without NOTIFY_SOCKET every call is a no-op (returns false). With it, a
-- failed send is logged once per kind of failure and never stops the agent.
-- WATCHDOG_USEC applies only when WATCHDOG_PID is unset or is our pid, as
-- sd_watchdog_enabled() decides. Options of new{} (for specs): env =
-- function(name) (default os.getenv), send = function(addr, msg), pid =,
-- log = function(level, msg), monotime = function() -> seconds.
local core = require "kubelua.core"
local task = require "kubelua.task"

local M = {}

local Notifier = {}
Notifier.__index = Notifier

-- One STATUS= line: systemd reads the datagram as newline-separated
-- assignments, so a newline inside a value would start another one.
local function one_line(s)
  return (tostring(s):gsub("[\r\n]+", " "))
end

function M.new(opts)
  opts = opts or {}
  local getenv = opts.env or os.getenv
  local sys = require "kubelua.sys"
  local self = setmetatable({
    addr = getenv("NOTIFY_SOCKET"),
    send_fn = opts.send or require("kubelua.sys.notify").send,
    log = opts.log or core.log,
    monotime = opts.monotime or core.monotime,
    failed = {},
    sent = {},
  }, Notifier)
  if self.addr == "" then
    self.addr = nil
  end
  local usec = tonumber(getenv("WATCHDOG_USEC") or "")
  local wpid = getenv("WATCHDOG_PID")
  local pid = opts.pid or sys.getpid()
  if usec and usec > 0 and (wpid == nil or wpid == "" or tonumber(wpid) == pid) then
    self.watchdog_usec = usec
  end
  return self
end

-- send(text) -> true | false (no socket) | nil, err
function Notifier:send(text)
  if not self.addr then
    return false
  end
  local ok, err, code = self.send_fn(self.addr, text)
  if not ok then
    local kind = text:match("^[A-Z_]+") .. ":" .. tostring(code)
    if not self.failed[kind] then
      self.failed[kind] = true
      self.log("W", "systemd notify: " .. tostring(err))
    end
    return nil, err
  end
  self.sent[#self.sent + 1] = text
  if #self.sent > 64 then
    table.remove(self.sent, 1)
  end
  return true
end

function Notifier:ready(status)
  return self:send("READY=1" .. (status and ("\nSTATUS=" .. one_line(status)) or ""))
end

function Notifier:status(status)
  return self:send("STATUS=" .. one_line(status))
end

-- RELOADING=1 carries CLOCK_MONOTONIC in microseconds, which Type=notify-reload
-- requires (and plain Type=notify ignores).
function Notifier:reloading(status)
  return self:send(string.format("RELOADING=1\nMONOTONIC_USEC=%d%s", math.floor(self.monotime() * 1e6),
    status and ("\nSTATUS=" .. one_line(status)) or ""))
end

function Notifier:stopping(status)
  return self:send("STOPPING=1" .. (status and ("\nSTATUS=" .. one_line(status)) or ""))
end

-- The watchdog period in seconds (half of WATCHDOG_USEC), or nil when off.
function Notifier:watchdog_period()
  return self.addr and self.watchdog_usec and self.watchdog_usec / 2e6 or nil
end

-- start_watchdog(): pings from a task of its own, so a long policy step in
-- another task does not delay them unless it blocks the whole loop - which
-- is what the watchdog is there to notice.
function Notifier:start_watchdog()
  local period = self:watchdog_period()
  if not period or self.watchdog then
    return false
  end
  self.watchdog = task.every(period, function()
    self:send("WATCHDOG=1")
  end)
  return true
end

function Notifier:stop_watchdog()
  if self.watchdog then
    self.watchdog:stop()
    self.watchdog = nil
  end
end

return M
