-- File-event latency: from rename() (or an in-place write) to the Lua callback
-- of kubelua.watch, on one monotonic clock, in one process.
--
--   ./build/kubelua run bench/watch/latency.lua [N [BASE]]
--
-- N events per case (200 by default), in a fresh folder under BASE (/tmp by
-- default; /dev/shm for tmpfs).
--
-- For each case a watcher runs on a fresh folder under /tmp. A second task
-- writes the new text to a temporary dotfile, lets the loop settle, takes
-- t0 = monotime(), calls os.rename(temp, "pod.yaml") and waits on a waker; the
-- watcher's callback takes t1 = monotime() when it sees "pod.yaml" and wakes
-- it. Latency = t1 - t0: the rename itself, the inotify event, the loop turn,
-- the stat and the compare, the resume of the watcher's task and the callback.
-- The time the rename (or write) call itself took is also reported on its
-- own ("syscall"), and the rest ("after"): on ext4 a rename over an existing
-- file starts writeback of the new file's data (auto_da_alloc), which makes
-- the call itself the largest part.
-- The "write" cases rewrite pod.yaml in place (open with O_TRUNC, write,
-- close) instead: they wait for the debounce, the renames do not.
local watch = require "kubelua.watch"
local task = require "kubelua.task"

local N = tonumber(arg and arg[1]) or 200
local BASE = arg and arg[2] or "/tmp"

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function pct(sorted, p)
  return sorted[math.max(1, math.ceil(p * #sorted))]
end

local function run(mode, debounce)
  local p = assert(io.popen("mktemp -d " .. BASE .. "/kubelua-watchbench.XXXXXX"))
  local dir = p:read("*l")
  p:close()
  local target, tmp = dir .. "/pod.yaml", dir .. "/.pod.yaml.tmp"
  write(target, "v0")
  local woken, t1 = task.waker(), nil
  local w = assert(watch.dir(dir, { debounce = debounce, initial = false, rescan = 3600 }, function(ev)
    if ev.name == "pod.yaml" and ev.kind == "changed" then
      t1 = task.monotime()
      woken:wake()
    end
  end))
  local settle = debounce + 0.01
  local lat, sys, after = {}, {}, {}
  for i = -9, N do -- 10 warm-up rounds, not counted
    local text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p" .. i .. "\n"
    local t0, ta
    if mode == "rename" then
      write(tmp, text)
      task.sleep(settle) -- the temp file's own events are out of the way
      t0 = task.monotime()
      assert(os.rename(tmp, target))
      ta = task.monotime()
    else
      task.sleep(settle)
      t0 = task.monotime()
      write(target, text)
      ta = task.monotime()
    end
    woken:wait()
    if i > 0 then
      lat[#lat + 1] = (t1 - t0) * 1000
      sys[#sys + 1] = (ta - t0) * 1000
      after[#after + 1] = (t1 - ta) * 1000
    end
  end
  w:close()
  os.execute("rm -rf '" .. dir .. "'")
  table.sort(lat)
  table.sort(sys)
  table.sort(after)
  return lat, sys, after
end

print(string.format("kubelua.watch latency, %d events per case, folder in %s (ms, monotonic clock)", N, BASE))
print(string.format("%-7s %-8s | %-31s | %-17s | %-17s", "change", "debounce", "total: call to callback", "the call itself", "after the call"))
print(string.format("%-7s %-8s | %7s %7s %7s %7s | %8s %8s | %8s %8s", "", "", "min", "median", "p99", "max",
  "median", "p99", "median", "p99"))
for _, case in ipairs({
  { "rename", watch.defaults.debounce },
  { "rename", 0 },
  { "write", watch.defaults.debounce },
  { "write", 0 },
}) do
  local lat, sys, after = run(case[1], case[2])
  print(string.format("%-7s %-8s | %7.3f %7.3f %7.3f %7.3f | %8.3f %8.3f | %8.3f %8.3f", case[1], case[2] .. " s",
    lat[1], pct(lat, 0.5), pct(lat, 0.99), lat[#lat], pct(sys, 0.5), pct(sys, 0.99), pct(after, 0.5), pct(after, 0.99)))
end

-- The cost of the periodic rescan: a folder of 1,000 files rescanned every
-- 10 ms for 2 s with nothing changing (readdir + one lstat per name + compare).
do
  local p = assert(io.popen("mktemp -d " .. BASE .. "/kubelua-watchbench.XXXXXX"))
  local dir = p:read("*l")
  p:close()
  for i = 1, 1000 do
    write(dir .. "/f" .. i .. ".yaml", "x")
  end
  local events = 0
  local w = assert(watch.dir(dir, { rescan = 0.01, initial = false }, function()
    events = events + 1
  end))
  task.sleep(0.1)
  local c0, r0 = task.cputime(), w:info().rescans
  task.sleep(2)
  local c1, r1 = task.cputime(), w:info().rescans
  w:close()
  os.execute("rm -rf '" .. dir .. "'")
  print(string.format("rescan of 1,000 unchanged files: %.3f ms CPU each (%d rescans, %d events)",
    (c1 - c0) * 1000 / (r1 - r0), r1 - r0, events))
end
