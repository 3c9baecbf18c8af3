-- Decode 1,000 small pod manifests and report the milliseconds it takes:
-- from strings in memory (parse + conversion to Lua tables) and from files
-- in a temporary folder (open + read + parse + convert).
--   ./build/kubelua run bench/yaml/load.lua [COUNT] [ROUNDS]
-- Issue 4's target is 200 ms for parse + default + validate + merge of
-- 1,000 manifests; this is the parse part. Results: bench/yaml/README.md.
local yaml = require "kubelua.yaml"
local task = require "kubelua.task"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

local COUNT = tonumber(arg and arg[1]) or 1000
local ROUNDS = tonumber(arg and arg[2]) or 7

-- A small static pod, as people write them (about 1 KiB).
local function manifest(i)
  return string.format([[
apiVersion: v1
kind: Pod
metadata:
  name: web-%d
  namespace: default
  labels:
    app: web
    tier: frontend
    index: "%d"
  annotations:
    example.com/owner: team-%d
spec:
  hostNetwork: false
  restartPolicy: Always
  terminationGracePeriodSeconds: 30
  containers:
  - name: nginx
    image: registry.example.com/nginx:1.25.%d
    imagePullPolicy: IfNotPresent
    command: ["nginx", "-g", "daemon off;"]
    args:
    - --port=8080
    - --workers=%d
    env:
    - name: MODE
      value: production
    - name: REPLICA
      value: "%d"
    ports:
    - name: http
      containerPort: 8080
      protocol: TCP
    readinessProbe:
      httpGet:
        host: 127.0.0.1
        path: /healthz
        port: http
      periodSeconds: 5
      failureThreshold: 3
    livenessProbe:
      tcpSocket:
        port: 8080
      initialDelaySeconds: 10
    resources:
      requests:
        cpu: 100m
        memory: 64Mi
      limits:
        memory: 128Mi
    volumeMounts:
    - name: html
      mountPath: /usr/share/nginx/html
      readOnly: true
  volumes:
  - name: html
    hostPath:
      path: /srv/www/%d
      type: Directory
]], i, i, i % 7, i % 10, 1 + i % 4, i, i)
end

local texts, bytes = {}, 0
for i = 1, COUNT do
  texts[i] = manifest(i)
  bytes = bytes + #texts[i]
end

local dir = assert(io.popen("mktemp -d /tmp/kubelua-bench-yaml.XXXXXX")):read("*l")
local paths = {}
for i = 1, COUNT do
  paths[i] = string.format("%s/pod-%04d.yaml", dir, i)
  local f = assert(io.open(paths[i], "wb"))
  f:write(texts[i])
  f:close()
end

local function median(xs)
  local s = {}
  for i, v in ipairs(xs) do
    s[i] = v
  end
  table.sort(s)
  return s[math.floor((#s + 1) / 2)]
end

-- One round: wall and CPU milliseconds to load every manifest.
local function run_once(load, check)
  collectgarbage()
  local w0, c0 = task.monotime(), task.cputime()
  for i = 1, COUNT do
    local pod = load(i)
    if check ~= false and (type(pod) ~= "table" or pod.metadata.name ~= "web-" .. i) then
      error("bad decode of manifest " .. i)
    end
  end
  return { wall = (task.monotime() - w0) * 1000, cpu = (task.cputime() - c0) * 1000 }
end

-- The median and the best of the rounds.
local function summary(rounds)
  local wall, cpu = {}, {}
  for i, r in ipairs(rounds) do
    wall[i], cpu[i] = r.wall, r.cpu
  end
  return { wall = median(wall), wall_min = math.min(unpack(wall)), cpu = median(cpu), cpu_min = math.min(unpack(cpu)) }
end

local function report(what, r, floor)
  print(string.format("%-26s wall %6.1f ms (best %6.1f)  cpu %6.1f ms (best %6.1f)  %5.1f us/manifest%s",
    what, r.wall, r.wall_min, r.cpu, r.cpu_min, r.wall * 1000 / COUNT,
    floor and string.format("  x%.2f of the floor", r.cpu / floor.cpu) or ""))
end

-- The floor: libyaml's event parser alone in C over the same files
-- (bench/yaml/floor.c, built here with the system's cc).
local floor_bin = dir .. "/floor"
local floor_cmd = floor_bin .. " " .. dir .. "/pod-*.yaml"

local ok, err = pcall(function()
  assert(os.execute(string.format("cc -O2 -o '%s' '%s/floor.c' -lyaml", floor_bin, here)) == 0,
    "cannot build bench/yaml/floor.c")
  local floor, strings, files = {}, {}, {}
  -- interleaved, so that the machine's ups and downs hit all three alike
  local parts = {}
  for _ = 1, ROUNDS do
    local out = assert(io.popen(floor_cmd)):read("*a")
    local ms = tonumber(out:match("^(%S+)"))
    assert(ms, "the floor program failed: " .. out)
    parts[#parts + 1] = { floor, { wall = ms, cpu = ms } }
    parts[#parts + 1] = { strings, run_once(function(i) return assert(yaml.decode(texts[i])) end) }
    parts[#parts + 1] = { files, run_once(function(i) return assert(yaml.decode_file(paths[i])) end) }
  end
  for _, p in ipairs(parts) do
    table.insert(p[1], p[2])
  end
  floor, strings, files = summary(floor), summary(strings), summary(files)
  print(string.format("%d manifests, %.0f KiB in all; median of %d rounds", COUNT, bytes / 1024, ROUNDS))
  report("libyaml events only (C)", floor)
  report("decode (strings)", strings, floor)
  report("decode_file (files)", files, floor)
end)
os.execute("rm -rf '" .. dir .. "'")
if not ok then
  error(err, 0)
end
