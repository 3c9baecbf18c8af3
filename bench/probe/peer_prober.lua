-- bench/probe peer: the whole probe policy, not only the engine. N pods,
-- each with one container and an HTTP readiness probe (period 1 s, timeout
-- 1 s) on its own loopback address, run by a kubelua.prober manager with its
-- defaults: one worker per probe, thresholds, the results manager, probe
-- metrics in the default registry, the tick. What it adds over peer_kubelua
-- is what an agent's prober costs per probe beyond kubelua.probe.http.
--   kubelua run bench/probe/peer_prober.lua URL N SECONDS WARMUP [NADDR]
-- URL gives the port and path; pod i's IP is 127.0.0.<1 + (i-1) % NADDR>.
-- Lag is not measured here (a worker's due time is internal): "-".
local prober = require "kubelua.prober"
local core = require "kubelua.core"

local url, n, secs, warmup = arg[1], tonumber(arg[2]), tonumber(arg[3] or 15), tonumber(arg[4] or 3)
local naddr = tonumber(arg[5] or 1)
local port, path = url:match("^http://127%.0%.0%.1:(%d+)(/.*)$")
assert(port, "URL must be http://127.0.0.1:PORT/PATH")

local mgr = prober.new{ log = function() end }
local ok, fail, measuring = 0, 0, false
local run = mgr.probe
mgr.probe = function(kind, spec, ctx) -- counts results; the default probe does the work
  local r, out, details = run(kind, spec, ctx)
  if measuring then
    if r == "success" then
      ok = ok + 1
    else
      fail = fail + 1
    end
  end
  return r, out, details
end

local started = core.now() - 60 -- containers up for a minute: no initial delay
for i = 1, n do
  local ip = "127.0.0." .. (1 + (i - 1) % naddr)
  local uid = "uid-" .. i
  mgr:add_pod{
    metadata = { uid = uid, name = "pod-" .. i, namespace = "bench" },
    spec = { restartPolicy = "Always", containers = { { name = "app", readinessProbe = {
      httpGet = { port = tonumber(port), path = path }, periodSeconds = 1, timeoutSeconds = 1 } } } },
  }
  mgr:set_status(uid, { phase = "Running", podIP = ip, containerStatuses = { { name = "app",
    containerID = "containerd://c" .. i, ready = false, state = { running = { startedAt = started } } } } })
end

core.sleep(warmup)
measuring = true
local cpu0, m0 = core.cputime(), core.monotime()
core.sleep(secs)
local cpu, wall = core.cputime() - cpu0, core.monotime() - m0
measuring = false
local f = io.open("/proc/self/status")
local hwm = tonumber(f:read("*a"):match("VmHWM:%s*(%d+)")) / 1024
f:close()
mgr:stop()
mgr:join(5)

local probes = ok + fail
print(string.format("RESULT peer=prober n=%d probes_per_s=%.0f ok=%d fail=%d missed=0 lag_p50_ms=- " ..
  "lag_p99_ms=- cpu_us_per_probe=%.1f cpu_cores=%.2f rss_mb=%.1f",
  n, probes / wall, ok, fail, cpu / probes * 1e6, cpu / wall, hwm))
