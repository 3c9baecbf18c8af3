-- bench/probe peer: N HTTP probe targets at a fixed period through
-- kubelua.probe.http (kubelet's semantics: new connection per probe),
-- scheduled as kubelua.prober's workers are: each probe starts on the
-- prober's tick (prober.on_tick, prober.tick_for), so probes due close
-- together share a wake-up of the loop. Lag is measured against the due
-- time itself.
--   kubelua run bench/probe/peer_kubelua.lua URL N SECONDS WARMUP [NADDR [TICK]]
-- NADDR: target i probes 127.0.0.<1 + (i-1) % NADDR> in place of the URL's
-- 127.0.0.1; TICK: seconds (default prober.TICK; 0: each probe at its own time).
-- Prints one line: RESULT peer=kubelua n=.. probes_per_s=.. ...
local probe = require "kubelua.probe"
local core = require "kubelua.core"
local prober = require "kubelua.prober"

local url, n, secs, warmup = arg[1], tonumber(arg[2]), tonumber(arg[3] or 15), tonumber(arg[4] or 3)
local naddr, tick = tonumber(arg[5] or 1), tonumber(arg[6] or prober.TICK)
local period = 1.0
tick = prober.tick_for(n / period, tick) -- as the prober shortens it for n workers
local start = core.monotime() + 0.2
local t_measure, t_end = start + warmup, start + warmup + secs
local lags, ok, fail, missed = {}, 0, 0, 0
local cpu0
local running = n

for i = 1, n do
  local target = url:gsub("127%.0%.0%.1", "127.0.0." .. (1 + (i - 1) % naddr), 1)
  core.spawn(function()
    local next_t = start + period * (i - 1) / n -- spread evenly, as jitter does
    while true do
      local now = core.monotime()
      local at = prober.on_tick(next_t, tick)
      if at > now then
        core.sleep(at - now)
      end
      now = core.monotime()
      if next_t >= t_end then
        break
      end
      local r = probe.http{ url = target, timeout = 1 }
      if next_t >= t_measure then
        lags[#lags + 1] = now - next_t
        if r == "success" then
          ok = ok + 1
        else
          fail = fail + 1
        end
      end
      next_t = next_t + period
      while next_t < core.monotime() - period do -- a whole tick behind: skip it
        next_t = next_t + period
        missed = missed + 1
      end
    end
    running = running - 1
  end)
end

core.sleep(t_measure - core.monotime())
cpu0 = core.cputime()
local m0 = core.monotime()
core.sleep(t_end - core.monotime())
local cpu = core.cputime() - cpu0
local wall = core.monotime() - m0
while running > 0 do
  core.sleep(0.05)
end

local function status(key)
  local f = io.open("/proc/self/status")
  local s = f:read("*a")
  f:close()
  return tonumber(s:match(key .. ":%s*(%d+)")) / 1024
end

table.sort(lags)
local function pct(p)
  return #lags > 0 and lags[math.max(1, math.ceil(#lags * p))] * 1000 or 0
end
local probes = ok + fail
print(string.format("RESULT peer=kubelua n=%d tick_ms=%g probes_per_s=%.0f ok=%d fail=%d missed=%d lag_p50_ms=%.2f " ..
  "lag_p99_ms=%.2f cpu_us_per_probe=%.1f cpu_cores=%.2f rss_mb=%.1f",
  n, tick * 1000, probes / wall, ok, fail, missed, pct(0.5), pct(0.99), cpu / probes * 1e6, cpu / wall,
  status("VmHWM")))
