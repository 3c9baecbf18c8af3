-- bench/probe peer: N HTTP probe targets at a fixed period through
-- kubelua.probe.http (kubelet's semantics: new connection per probe).
--   kubelua run bench/probe/peer_kubelua.lua URL N SECONDS WARMUP
-- Prints one line: RESULT peer=kubelua n=.. probes_per_s=.. ...
local probe = require "kubelua.probe"
local core = require "kubelua.core"

local url, n, secs, warmup = arg[1], tonumber(arg[2]), tonumber(arg[3] or 15), tonumber(arg[4] or 3)
local period = 1.0
local start = core.monotime() + 0.2
local t_measure, t_end = start + warmup, start + warmup + secs
local lags, ok, fail, missed = {}, 0, 0, 0
local cpu0
local running = n

for i = 1, n do
  core.spawn(function()
    local next_t = start + period * (i - 1) / n -- spread evenly, as jitter does
    while true do
      local now = core.monotime()
      if next_t > now then
        core.sleep(next_t - now)
      end
      now = core.monotime()
      if next_t >= t_end then
        break
      end
      local r = probe.http{ url = url, timeout = 1 }
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
print(string.format("RESULT peer=kubelua n=%d probes_per_s=%.0f ok=%d fail=%d missed=%d lag_p50_ms=%.2f " ..
  "lag_p99_ms=%.2f cpu_us_per_probe=%.1f cpu_cores=%.2f rss_mb=%.1f",
  n, probes / wall, ok, fail, missed, pct(0.5), pct(0.99), cpu / probes * 1e6, cpu / wall,
  status("VmHWM")))
