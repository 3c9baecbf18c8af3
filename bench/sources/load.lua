-- Sources benchmark: (1) 1,000 manifests from a directory to the merged
-- update (read, parse, default, validate, merge); (2) the time from a file
-- rename to the merged update reaching a Lua subscriber.
--   kubelua run bench/sources/load.lua [N] [RENAMES]
local config = require "kubelua.config"
local filesrc = require "kubelua.sources.file"
local task = require "kubelua.task"

local N, RENAMES = tonumber(arg[1] or 1000), tonumber(arg[2] or 100)
-- BENCH_DIR picks the filesystem (default /dev/shm: our cost, not the disk's)
local base = os.getenv("BENCH_DIR") or "/dev/shm"
local dir = io.popen("mktemp -d " .. base .. "/kubelua-bench-src.XXXXXX"):read("*l")

local function manifest(i, image)
  return string.format([[
apiVersion: v1
kind: Pod
metadata:
  name: pod-%d
  namespace: bench
  labels: {app: pod-%d, tier: bench}
spec:
  hostNetwork: true
  containers:
  - name: main
    image: %s
    command: ["sh", "-c", "exec httpd -f -p 127.0.0.1:%d"]
    ports: [{name: http, containerPort: %d}]
    livenessProbe: {httpGet: {host: 127.0.0.1, port: http, path: /}, periodSeconds: 5}
    readinessProbe: {tcpSocket: {host: 127.0.0.1, port: http}}
    resources: {limits: {memory: 64Mi}}
]], i, i, image or "kubelua.local/busybox:latest", 20000 + i, 20000 + i)
end

for i = 1, N do
  local f = assert(io.open(string.format("%s/pod-%04d.yaml", dir, i), "w"))
  f:write(manifest(i))
  f:close()
end

local first, renamed, added = nil, {}, 0
local pc = config.new{ on_update = function(u)
  if u.op == "ADD" then
    added = added + #u.pods
  end
  if not first and added >= N then
    first = task.monotime()
  end
  for _, p in ipairs(u.pods) do
    if u.op == "ADD" and renamed[p.metadata.name] then
      renamed[p.metadata.name].got = renamed[p.metadata.name].got or task.monotime()
    end
  end
end }
local t0 = task.monotime()
local c0 = task.cputime()
local src = assert(filesrc.start(pc, { path = dir, node = "bench", debounce = 0 }))
local deadline = task.monotime() + 60
while not first and task.monotime() < deadline do
  task.sleep(0.001)
end
assert(first, "only " .. added .. " of " .. N .. " pods arrived")
print(string.format("| load %d manifests (read, parse, default, validate, merge) | %.0f ms wall | %.0f ms CPU |",
  N, (first - t0) * 1000, (task.cputime() - c0) * 1000))

-- rename -> merged update, one at a time
local lat = {}
for i = 1, RENAMES do
  local name = string.format("pod-%d-bench", i)
  local tmp = string.format("%s/.pod-%04d.tmp", dir, i)
  local f = assert(io.open(tmp, "w"))
  f:write(manifest(i, "kubelua.local/busybox:v" .. i))
  f:close()
  renamed[name] = {}
  local t1 = task.monotime()
  assert(os.rename(tmp, string.format("%s/pod-%04d.yaml", dir, i)))
  local until_t = task.monotime() + 10
  while not renamed[name].got and task.monotime() < until_t do
    task.sleep(0)
  end
  assert(renamed[name].got, "no update for " .. name)
  lat[#lat + 1] = renamed[name].got - t1
end
table.sort(lat)
print(string.format("| rename -> merged update reaches Lua (%d renames, %d pods present) | median %.2f ms | p99 %.2f ms |",
  RENAMES, N, lat[math.ceil(#lat / 2)] * 1000, lat[math.ceil(#lat * 0.99)] * 1000))
src:stop()
os.execute("rm -rf " .. dir)
