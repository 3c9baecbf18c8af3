-- PLEG benchmark: relist cost with N containers (kubelua's own CPU beside
-- containerd's CPU for serving the same two list calls, in one run) and
-- event latency from a container's exit to the Lua subscriber.
--   bench/pleg/run.sh   (starts a private containerd, then runs this)
--   kubelua run bench/pleg/relist.lua ENDPOINT CONTAINERD_PID [N_CONTAINERS] [RELISTS]
local cri = require "kubelua.cri"
local task = require "kubelua.task"
local plegmod = require "kubelua.pleg"
local cachemod = require "kubelua.cache"

local endpoint, ctd_pid = arg[1], tonumber(arg[2])
local N, RELISTS = tonumber(arg[3] or 200), tonumber(arg[4] or 300)
local IMAGE = "kubelua.local/busybox:latest"
local rt = assert(cri.connect(endpoint))

local function ctd_cpu() -- containerd's user+sys seconds
  local f = assert(io.open("/proc/" .. ctd_pid .. "/stat"))
  local stat = f:read("*a")
  f:close()
  local fields = {}
  for x in stat:gsub("^.-%) ", ""):gmatch("%S+") do
    fields[#fields + 1] = x
  end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime, stime (ticks, 100 Hz)
end

-- N containers, 10 per pod, labelled and annotated like kubelet's.
local pods = {}
local function populate()
  local made, fns = 0, {}
  for p = 1, math.ceil(N / 10) do
    fns[#fns + 1] = function()
      local uid = string.format("bench-%08x-%04d", os.time(), p)
      local config = {
        metadata = { name = "bench-" .. p, uid = uid, namespace = "bench" },
        labels = { ["io.kubernetes.pod.uid"] = uid, ["io.kubernetes.pod.name"] = "bench-" .. p,
          ["io.kubernetes.pod.namespace"] = "bench", ["kubelua.bench/pleg"] = "1" },
        annotations = { ["kubernetes.io/config.source"] = "file", ["kubernetes.io/config.seen"] = "2026-11-30T00:00:00Z" },
        linux = { cgroup_parent = "/kubelua-bench/pod" .. uid,
          security_context = { namespace_options = { network = "NODE" } } },
      }
      local pod = assert(rt:run_pod_sandbox{ config = config }).pod_sandbox_id
      pods[#pods + 1] = pod
      for c = 1, math.min(10, N - (p - 1) * 10) do
        local id = assert(rt:create_container{ pod_sandbox_id = pod, sandbox_config = config, config = {
          metadata = { name = "c" .. c }, image = { image = IMAGE }, command = { "sleep", "3600" },
          labels = { ["io.kubernetes.pod.uid"] = uid, ["io.kubernetes.pod.name"] = "bench-" .. p,
            ["io.kubernetes.pod.namespace"] = "bench", ["io.kubernetes.container.name"] = "c" .. c },
          annotations = { ["io.kubernetes.container.hash"] = string.format("%08x", p * 100 + c),
            ["io.kubernetes.container.restartCount"] = "0",
            ["io.kubernetes.container.terminationMessagePath"] = "/dev/termination-log",
            ["io.kubernetes.container.terminationMessagePolicy"] = "File",
            ["io.kubernetes.pod.terminationGracePeriod"] = "30" },
        } }).container_id
        assert(rt:start_container{ container_id = id })
        made = made + 1
      end
    end
  end
  -- a few pods at a time
  for i = 1, #fns, 4 do
    local batch = {}
    for j = i, math.min(i + 3, #fns) do
      batch[#batch + 1] = fns[j]
    end
    for _, r in ipairs(task.gather(batch)) do
      assert(r[1], r[2])
    end
  end
  return made
end

local function cleanup()
  for _, pod in ipairs(pods) do
    rt:stop_pod_sandbox({ pod_sandbox_id = pod }, { timeout = 60 })
    rt:remove_pod_sandbox{ pod_sandbox_id = pod }
  end
end

local t0 = task.monotime()
local made = populate()
io.stderr:write(string.format("populated %d containers in %.1f s\n", made, task.monotime() - t0))

local function measure(label, relist_once)
  relist_once() -- warm up
  collectgarbage()
  local k0, c0, w0 = task.cputime(), ctd_cpu(), task.monotime()
  for _ = 1, RELISTS do
    relist_once()
  end
  local k, c, w = task.cputime() - k0, ctd_cpu() - c0, task.monotime() - w0
  print(string.format("| %s | %d | %.0f | %.0f | %.2f | %.1f |", label, made, k / RELISTS * 1e6,
    c / RELISTS * 1e6, k / c, RELISTS / w))
end

print("| relist path | containers | kubelua CPU µs/relist | containerd CPU µs/relist | ratio | relists/s |")
print("|---|---|---|---|---|---|")
local pleg = plegmod.new{ client = rt }
measure("C snapshot + diff (kubelua.pleg)", function() assert(pleg:relist()) end)
local cache = cachemod.new{ client = rt, period = 0 }
measure("full decode to Lua tables (kubelua.cache)", function() assert(cache:refresh()) end)

-- Event latency: container exit (its finished_at, runtime clock) to the subscriber.
local function latency(period)
  local p = plegmod.new{ client = rt, period = period }
  local seen = {}
  p:subscribe(function(ev)
    if ev.type == "ContainerDied" and not seen[ev.id] then
      seen[ev.id] = task.now()
    end
  end)
  p:start()
  local pod = pods[1]
  local lat = {}
  for i = 1, 10 do
    local id = assert(rt:create_container{ pod_sandbox_id = pod, sandbox_config = {
      metadata = { name = "bench-1", uid = "x", namespace = "bench" } }, config = {
      metadata = { name = "exit-" .. period .. "-" .. i }, image = { image = IMAGE },
      command = { "sh", "-c", "sleep 0.2" } } }).container_id
    assert(rt:start_container{ container_id = id })
    while not seen[id] do
      task.sleep(0.01)
    end
    local st = assert(rt:container_status{ container_id = id }).status
    lat[#lat + 1] = seen[id] - tonumber(st.finished_at) / 1e9
    rt:remove_container{ container_id = id }
  end
  p:stop()
  table.sort(lat)
  print(string.format("| exit → subscriber, relist period %.1f s | median %.0f ms | max %.0f ms |",
    period, lat[5] * 1000, lat[10] * 1000))
end
print("\n| event latency | | |\n|---|---|---|")
latency(1)
latency(0.1)
cleanup()
