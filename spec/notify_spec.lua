-- systemd notifications without libsystemd: kubelua.sys.notify against a
-- real AF_UNIX datagram receiver (path and abstract names, errors), and
-- kubelua.agent.notify's messages, watchdog rules and timer.
local t = require "spec.t"
local S = require "spec.support"
local task = require "kubelua.task"
local send = require("kubelua.sys.notify").send
local notify = require "kubelua.agent.notify"
local sys = require "kubelua.sys"

local dir = S.tmpdir("notify")
local RECV = "/usr/bin/python3 " .. S.ROOT .. "/tests/support/notify_recv.py"

-- start a receiver on addr; returns its pid and output file
local function receiver(addr, name)
  local out = dir .. "/" .. name .. ".out"
  local log = dir .. "/" .. name .. ".log"
  local pid = S.spawn(string.format("%s '%s' '%s' 30", RECV, addr, out), log)
  assert(S.wait_for(function() return (S.read_file(log) or ""):find("ready") end, 10), "receiver did not start")
  return pid, out
end

local function lines(out)
  local r = {}
  for l in (S.read_file(out) or ""):gmatch("[^\n]+") do
    r[#r + 1] = l
  end
  return r
end

t.describe("kubelua.sys.notify", function()
  t.it("sends one datagram to a socket path, with our credentials", function()
    local path = dir .. "/notify.sock"
    local pid, out = receiver(path, "path")
    t.eq(send(path, "READY=1\nSTATUS=up"), true)
    t.ok(S.wait_for(function() return #lines(out) == 1 end, 5))
    t.eq(lines(out)[1], string.format("%d READY=1|STATUS=up", sys.getpid()))
    send(path, "QUIT")
    S.kill(pid)
  end)

  t.it("sends to an abstract name written @name", function()
    local name = "@kubelua-notify-spec-" .. sys.getpid()
    local pid, out = receiver(name, "abstract")
    t.eq(send(name, "WATCHDOG=1"), true)
    t.ok(S.wait_for(function() return #lines(out) == 1 end, 5))
    t.match(lines(out)[1], " WATCHDOG=1$")
    send(name, "QUIT")
    S.kill(pid)
  end)

  t.it("returns errors as nil, err, code", function()
    local ok, err, code = send(dir .. "/absent.sock", "READY=1")
    t.eq(ok, nil)
    t.eq(code, "ENOENT")
    t.match(err, "^ENOENT: notify .*absent%.sock")
    ok, err, code = send("@kubelua-nobody-listens-" .. sys.getpid(), "READY=1")
    t.eq(code, "ECONNREFUSED", err)
    ok, err, code = send("relative.sock", "READY=1")
    t.eq(code, "EINVAL")
    ok, err, code = send("/" .. string.rep("x", 200), "READY=1")
    t.eq(code, "EINVAL")
    t.fails(function() send(nil, "x") end)
  end)
end)

-- a notifier with a recording send and a given environment
local function fake(env, pid)
  local sent = {}
  local n = notify.new{
    env = function(k) return env[k] end,
    send = function(addr, msg)
      sent[#sent + 1] = addr .. " " .. msg
      return true
    end,
    pid = pid or 100,
    monotime = function() return 12.5 end,
  }
  return n, sent
end

t.describe("kubelua.agent.notify", function()
  t.it("without NOTIFY_SOCKET does nothing", function()
    local n, sent = fake{}
    t.eq(n:ready("x"), false)
    t.eq(n:start_watchdog(), false)
    t.eq(#sent, 0)
  end)

  t.it("writes systemd's assignments, one STATUS line", function()
    local n, sent = fake{ NOTIFY_SOCKET = "@sd" }
    n:ready("up\nand running")
    n:status("busy")
    n:reloading()
    n:stopping("bye")
    t.eq(sent[1], "@sd READY=1\nSTATUS=up and running")
    t.eq(sent[2], "@sd STATUS=busy")
    t.eq(sent[3], "@sd RELOADING=1\nMONOTONIC_USEC=12500000")
    t.eq(sent[4], "@sd STOPPING=1\nSTATUS=bye")
  end)

  t.it("the watchdog follows WATCHDOG_USEC and WATCHDOG_PID", function()
    t.eq(fake{ NOTIFY_SOCKET = "/s", WATCHDOG_USEC = "3000000" }:watchdog_period(), 1.5)
    t.eq(fake({ NOTIFY_SOCKET = "/s", WATCHDOG_USEC = "3000000", WATCHDOG_PID = "100" }, 100):watchdog_period(), 1.5)
    t.eq(fake({ NOTIFY_SOCKET = "/s", WATCHDOG_USEC = "3000000", WATCHDOG_PID = "7" }, 100):watchdog_period(), nil)
    t.eq(fake{ NOTIFY_SOCKET = "/s", WATCHDOG_USEC = "0" }:watchdog_period(), nil)
    t.eq(fake{ WATCHDOG_USEC = "3000000" }:watchdog_period(), nil)
  end)

  t.it("pings WATCHDOG=1 every half period until stopped", function()
    local n, sent = fake{ NOTIFY_SOCKET = "/s", WATCHDOG_USEC = "200000" }
    task.sleep(0) -- a loop turn: the loop's clock is stale after the blocking shell calls above
    t.eq(n:start_watchdog(), true)
    task.sleep(0.45)
    n:stop_watchdog()
    local count = #sent
    t.ok(count >= 4 and count <= 6, "pings in 0.45 s at 0.1 s: " .. count)
    t.eq(sent[1], "/s WATCHDOG=1")
    task.sleep(0.25)
    t.eq(#sent, count, "no ping after stop")
  end)

  t.it("a failed send is logged once per kind and returned", function()
    local logged = {}
    local n = notify.new{ env = function(k) return k == "NOTIFY_SOCKET" and dir .. "/none.sock" or nil end,
      log = function(_, m) logged[#logged + 1] = m end }
    local ok, err = n:ready()
    t.eq(ok, nil)
    t.match(err, "ENOENT")
    n:ready()
    n:status("x")
    t.eq(#logged, 2, table.concat(logged, "\n"))
    t.match(logged[1], "systemd notify: ENOENT")
  end)

  t.it("cleanup", function()
    S.rm(dir)
  end)
end)
