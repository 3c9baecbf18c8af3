-- GC planning benchmark on a synthetic node served by the test kit's fake
-- runtime (no containerd needed):
--   * container GC over PODS pods holding DEAD dead containers (two container
--     names per pod, attempts alternating between them) and a running one,
--     one ready sandbox each plus an older stopped one, kubelet's default
--     policy (at most one dead container per pod and name);
--   * image GC over IMAGES images (a quarter in use), above the high threshold.
-- Reports Lua CPU time per plan (median of ROUNDS), for the algorithm alone
-- and for the whole dry run (listing from the fake, entries, every step).
--
--   kubelua run bench/gc/plan.lua [PODS] [DEAD] [IMAGES] [ROUNDS]
local task = require "kubelua.task"
local testing = require "kubelua.testing"
local gc = require "kubelua.gc"
local choose = require "kubelua.gc.select"
local image_gc = require "kubelua.image_gc"

local PODS = tonumber(arg[1]) or 2000
local DEAD = tonumber(arg[2]) or 10000
local IMAGES = tonumber(arg[3]) or 1000
local ROUNDS = tonumber(arg[4]) or 15
local NOW = 1700000000

local function median(xs)
  table.sort(xs)
  return xs[math.floor((#xs + 1) / 2)]
end

-- Lua CPU seconds of fn(), median over ROUNDS (after one warm-up run).
local function measure(fn)
  fn()
  local xs = {}
  for i = 1, ROUNDS do
    collectgarbage()
    local c0 = task.cputime()
    fn()
    xs[i] = task.cputime() - c0
  end
  return median(xs), xs
end

-- ---------------------------------------------------------------- the node
local pods = {}
local per_pod = DEAD / PODS
for p = 1, PODS do
  local containers = {}
  for j = 1, per_pod do
    local name = "c" .. ((j - 1) % 2)
    containers[#containers + 1] = { name = name, attempt = j, created = NOW - 100000 + p + j * 3,
      id = testing.hexid(p .. "/" .. j) }
  end
  containers[#containers + 1] = { name = "c0", attempt = per_pod + 1, state = "running", created = NOW - 10 }
  pods[p] = { uid = "pod-" .. p, name = "p" .. p, namespace = "bench",
    sandboxes = { { ready = false, created = NOW - 200000 }, { ready = true, created = NOW - 100000 } },
    containers = containers }
end
local images = {}
for i = 1, IMAGES do
  images[i] = { id = "sha256:" .. testing.hexid("img" .. i), tags = { "reg.local/repo" .. (i % 97) .. ":" .. i },
    size = 1e6 + i }
  if i % 4 == 0 then -- used by one of the pods
    table.insert(pods[(i % PODS) + 1].containers, { name = "u", attempt = 0, image = images[i].tags[1],
      image_ref = images[i].id, created = NOW - 50000, state = "running" })
  end
end
local state = testing.node{ time = NOW, pods = pods, images = images,
  fs = { capacity = IMAGES * 2e6, available = IMAGES * 2e6 * 0.10 } }

local dead = 0
for _, c in ipairs(state.containers) do
  if c.state ~= "CONTAINER_RUNNING" then
    dead = dead + 1
  end
end
print(string.format("node: %d pods, %d containers (%d dead), %d sandboxes, %d images", PODS, #state.containers, dead,
  #state.sandboxes, #state.images))

-- --------------------------------------------------------- container GC
local rt = testing.runtime(state, { copy = false })
local g = gc.new{ runtime = rt, pod_logs_dir = "/nonexistent", container_logs_dir = false }
local plan = assert(g:plan())
print(string.format("container GC plan: %d containers, %d sandboxes", #plan.containers, #plan.sandboxes))

-- the algorithm alone, on entries built once
local sandboxes, containers = {}, {}
local sb_uid = {}
for i, s in ipairs(state.sandboxes) do
  sb_uid[s.id] = s.metadata.uid
  sandboxes[i] = { id = s.id, pod_uid = s.metadata.uid, state = s.state, created = tonumber(s.created_at) / 1e9 }
end
for i, c in ipairs(state.containers) do
  containers[i] = { id = c.id, name = c.metadata.name, pod_uid = c.labels["io.kubernetes.pod.uid"], state = c.state,
    created = tonumber(c.created_at) / 1e9, sandbox_id = c.pod_sandbox_id }
end
local algo = measure(function()
  local chosen = choose.containers(containers, { now = NOW, min_age = 0, max_per_pod_container = 1,
    max_containers = -1 })
  local gone = {}
  for _, c in ipairs(chosen) do
    gone[c.id] = true
  end
  local left = {}
  for _, c in ipairs(containers) do
    if not gone[c.id] then
      left[#left + 1] = c
    end
  end
  choose.sandboxes(sandboxes, left, {})
end)
local whole = measure(function()
  assert(g:plan())
end)
local capped = measure(function()
  choose.containers(containers, { now = NOW, max_per_pod_container = -1, max_containers = 2500 })
end)
local rt_copy = testing.runtime(state)
local g_copy = gc.new{ runtime = rt_copy, pod_logs_dir = "/nonexistent", container_logs_dir = false }
local whole_copy = measure(function()
  assert(g_copy:plan())
end)

-- ------------------------------------------------------------- image GC
local irt = testing.runtime(state, { copy = false })
local ig = image_gc.new{ runtime = irt }
irt.clock:advance(1000)
assert(ig:detect())
irt.clock:advance(1000)
local iplan = assert(ig:plan())
print(string.format("image GC plan: %d images to remove (%d bytes), usage %d%%", #iplan.images, iplan.bytes,
  iplan.usage.percent))
local image_whole = measure(function()
  assert(ig:plan())
end)

print(string.format("%-58s %8.2f ms", "container GC: selection (containers + sandboxes)", algo * 1e3))
print(string.format("%-58s %8.2f ms", "container GC: selection, node cap 2500 (share + flatten)", capped * 1e3))
print(string.format("%-58s %8.2f ms  (target < 50)", "container GC: whole dry run (fake runtime, no copies)", whole * 1e3))
print(string.format("%-58s %8.2f ms", "container GC: whole dry run (fake runtime copying)", whole_copy * 1e3))
print(string.format("%-58s %8.2f ms  (target < 20)", "image GC: whole dry run (detect + order + plan)", image_whole * 1e3))
