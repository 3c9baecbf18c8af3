-- kubelua.watch on real files in temporary folders: inotify, the debounce,
-- atomic saves, dotfiles, a directory that goes away and comes back, a missing
-- path, 1,000 files at once, a change inotify cannot see (a write through a
-- shared mmap) found by the rescan, and closing.
local t = require "spec.t"
local S = require "spec.support"
local task = require "kubelua.task"
local core = require "kubelua.core"
local watch = require "kubelua.watch"
local ffi = require "ffi"

local dirs, watchers, cleanups = {}, {}, {}

local function tmp()
  local d = assert(S.tmpdir("watch"))
  dirs[#dirs + 1] = d
  return d
end

t.after_each(function()
  for i = #watchers, 1, -1 do
    watchers[i]:close()
    watchers[i] = nil
  end
  for i = #cleanups, 1, -1 do
    pcall(cleanups[i])
    cleanups[i] = nil
  end
  for i = #dirs, 1, -1 do
    S.rm(dirs[i])
    dirs[i] = nil
  end
  task.sleep(0) -- let closed watchers' tasks finish
end)

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function append(path, s)
  local f = assert(io.open(path, "ab"))
  f:write(s)
  f:close()
end

-- A watcher whose events land in a list.
local function record(kind, path, opts)
  local evs = {}
  local w = assert(watch[kind](path, opts, function(ev)
    evs[#evs + 1] = ev
  end))
  watchers[#watchers + 1] = w
  return w, evs
end

-- "kind name" for each event from index `from` on.
local function lines(evs, from)
  local out = {}
  for i = from or 1, #evs do
    out[#out + 1] = evs[i].kind .. " " .. (evs[i].name or "<dir>")
  end
  return out
end

local function wait_n(evs, n, secs)
  S.wait_for(function()
    return #evs >= n
  end, secs or 5, 0.01)
end

-- Wait for `n` more events than `from` had, then for a quiet period; returns
-- what arrived (so an extra, duplicate or late event fails the comparison).
local function expect(evs, from, want, quiet)
  wait_n(evs, from + #want)
  task.sleep(quiet or 0.3)
  t.eq(lines(evs, from + 1), want)
  return #evs
end

-- Run a shell script in the background; returns when it has finished (it
-- touches a marker outside the watched folder), while our loop keeps running.
local function sh_bg(script)
  local marker = os.tmpname()
  os.remove(marker)
  cleanups[#cleanups + 1] = function()
    os.remove(marker)
  end
  S.spawn(script .. "; touch '" .. marker .. "'")
  t.ok(S.wait_for(function()
    return S.exists(marker)
  end, 20, 0.02), "background writer finished")
  os.remove(marker)
end

t.describe("watch.dir", function()
  t.it("reports the files present at start, then creation, modification and removal", function()
    local d = tmp()
    write(d .. "/a.yaml", "a")
    local _, evs = record("dir", d, { debounce = 0.05, rescan = 3600 })
    local n = expect(evs, 0, { "appeared a.yaml" })
    t.eq(evs[1].path, d .. "/a.yaml")
    t.eq(evs[1].type, "file")
    t.eq(evs[1].size, 1)
    t.ok(math.abs(evs[1].mtime - os.time()) < 60, "mtime is in epoch seconds")
    write(d .. "/b.yaml", "bb")
    n = expect(evs, n, { "appeared b.yaml" })
    append(d .. "/a.yaml", "more")
    n = expect(evs, n, { "changed a.yaml" })
    t.eq(evs[n].size, 5)
    os.remove(d .. "/b.yaml")
    n = expect(evs, n, { "removed b.yaml" })
    t.eq(evs[n].type, "file")
    t.eq(evs[n].path, d .. "/b.yaml")
  end)

  t.it("initial=false takes what is there as the starting point", function()
    local d = tmp()
    write(d .. "/a.yaml", "a")
    local _, evs = record("dir", d, { debounce = 0.05, initial = false })
    task.sleep(0.2)
    t.eq(#evs, 0)
    os.remove(d .. "/a.yaml")
    expect(evs, 0, { "removed a.yaml" })
  end)

  t.it("coalesces many writes to a file, from another process, into one change", function()
    local d = tmp()
    write(d .. "/f.yaml", "")
    local _, evs = record("dir", d, { debounce = 0.5, max_delay = 10, initial = false })
    -- 40 appends, each its own open/write/close, 5 ms apart: ~0.3 s of events
    local seen
    sh_bg(string.format("for i in $(seq 1 40); do echo $i >> '%s/f.yaml'; sleep 0.005; done", d))
    wait_n(evs, 1)
    seen = S.read_file(d .. "/f.yaml")
    task.sleep(0.7)
    t.eq(lines(evs), { "changed f.yaml" })
    t.eq(select(2, seen:gsub("\n", "")), 40, "reported once the writer was done")
  end)

  t.it("sees an atomic save (temp file + rename) as one change, never the temp file", function()
    local d = tmp()
    write(d .. "/a.yaml", "v1")
    -- a debounce well above the pauses below, even on a loaded machine
    local _, evs = record("dir", d, { debounce = 0.4, rescan = 3600 })
    local n = expect(evs, 0, { "appeared a.yaml" })
    -- a dotfile temp renamed over the target
    write(d .. "/.a.yaml.tmp", "v2")
    os.rename(d .. "/.a.yaml.tmp", d .. "/a.yaml")
    n = expect(evs, n, { "changed a.yaml" }, 0.6)
    t.eq(evs[n].size, 2)
    -- sed -i: a temp named sedXXXXXX (not a dotfile), written, closed, renamed over
    sh_bg("sed -i s/v2/v3/ '" .. d .. "/a.yaml'")
    n = expect(evs, n, { "changed a.yaml" }, 0.6)
    -- vim's way: the original renamed to a backup, the new text written, the backup
    -- removed; the pauses (30 ms, under the debounce) let our loop read each step
    sh_bg(string.format("cd '%s' && mv a.yaml a.yaml~ && sleep 0.03 && printf v4 > a.yaml && sleep 0.03 && rm a.yaml~", d))
    n = expect(evs, n, { "changed a.yaml" }, 0.6)
    -- a temp renamed to a new name
    write(d .. "/.b.tmp", "b")
    os.rename(d .. "/.b.tmp", d .. "/b.yaml")
    n = expect(evs, n, { "appeared b.yaml" }, 0.6)
    -- the same, from another process, 20 times in a row: one change per save
    sh_bg(string.format("cd '%s' && for i in $(seq 1 20); do echo $i > .a.tmp && mv .a.tmp a.yaml && sleep 0.2; done", d))
    local want = {}
    for i = 1, 20 do
      want[i] = "changed a.yaml"
    end
    expect(evs, n, want, 0.6)
    t.eq(S.read_file(d .. "/a.yaml"), "20\n")
  end)

  t.it("ignores dotfiles and editor temporaries unless asked", function()
    local d = tmp()
    local _, evs = record("dir", d, { debounce = 0.05 })
    local _, all = record("dir", d, { debounce = 0.05, dotfiles = true, ignore = false })
    local _, dots = record("dir", d, { debounce = 0.05, dotfiles = true })
    for _, name in ipairs({ ".hidden", ".a.yaml.swp", "a.yaml~", "#a.yaml#", "4913", "pod.yaml" }) do
      write(d .. "/" .. name, "x")
    end
    expect(evs, 0, { "appeared pod.yaml" })
    expect(all, 0, { "appeared #a.yaml#", "appeared .a.yaml.swp", "appeared .hidden", "appeared 4913",
      "appeared a.yaml~", "appeared pod.yaml" }, 0)
    expect(dots, 0, { "appeared .hidden", "appeared pod.yaml" }, 0)
  end)

  t.it("reports a directory removed and re-created, and watches the new one", function()
    local base = tmp()
    local d = base .. "/manifests"
    S.sh("mkdir " .. d .. " && echo a > " .. d .. "/a.yaml && echo b > " .. d .. "/b.yaml")
    local _, evs = record("dir", d, { debounce = 0.05, rescan = 3600, retry = 3600 })
    local n = expect(evs, 0, { "appeared a.yaml", "appeared b.yaml" })
    S.sh("rm -rf " .. d)
    n = expect(evs, n, { "removed a.yaml", "removed b.yaml", "missing <dir>" })
    t.eq(evs[n].path, d)
    t.match(evs[n].err, "^ENOENT: ")
    S.sh("mkdir " .. d .. " && echo c > " .. d .. "/c.yaml")
    n = expect(evs, n, { "appeared <dir>", "appeared c.yaml" })
    append(d .. "/c.yaml", "more") -- through the new inotify watch (rescan and retry are 1 h)
    n = expect(evs, n, { "changed c.yaml" })
    -- renamed away: the watch does not follow it
    S.sh("mv " .. d .. " " .. base .. "/old")
    n = expect(evs, n, { "removed c.yaml", "missing <dir>" })
    append(base .. "/old/c.yaml", "not ours")
    task.sleep(0.2)
    S.sh("mv " .. base .. "/old " .. d)
    expect(evs, n, { "appeared <dir>", "appeared c.yaml" })
  end)

  t.it("reports a path missing at start, parents included, and picks it up when it appears", function()
    local base = tmp()
    local d = base .. "/x/y/z"
    local w, evs = record("dir", d, { debounce = 0.05, rescan = 3600, retry = 3600 })
    local n = expect(evs, 0, { "missing <dir>" })
    t.eq(evs[1].path, d)
    t.ok(w:info().missing)
    local t0 = core.monotime()
    S.sh("mkdir -p " .. d .. " && echo p > " .. d .. "/p.yaml")
    expect(evs, n, { "appeared <dir>", "appeared p.yaml" }, 0.1)
    t.ok(core.monotime() - t0 < 2, "seen through inotify on the parent, not a retry")
    t.ok(w:info().watching)
  end)

  t.it("reports 1,000 files created, changed twice and removed at once: exactly one event each", function()
    local d = tmp()
    -- each file's two appends come microseconds apart; the debounce leaves
    -- room for the writer being descheduled in between on a loaded machine
    local w, evs = record("dir", d, { debounce = 0.5, rescan = 3600 })
    local function check(from, kind)
      wait_n(evs, from + 1000, 15)
      task.sleep(0.7)
      t.eq(#evs - from, 1000, kind .. " events")
      local seen = {}
      for i = from + 1, #evs do
        local ev = evs[i]
        t.eq(ev.kind, kind)
        t.ok(not seen[ev.name], "one event for " .. ev.name)
        seen[ev.name] = true
      end
      for i = 1, 1000 do
        t.ok(seen["f" .. i .. ".yaml"], "an event for f" .. i .. ".yaml")
      end
      return #evs
    end
    sh_bg(string.format("cd '%s' && for i in $(seq 1 1000); do echo x > f$i.yaml; done", d))
    local n = check(0, "appeared")
    sh_bg(string.format("cd '%s' && for i in $(seq 1 1000); do echo a >> f$i.yaml; echo b >> f$i.yaml; done", d))
    n = check(n, "changed")
    sh_bg(string.format("rm '%s'/f*.yaml", d))
    check(n, "removed")
    local info = w:info()
    t.eq(info.entries, 0)
    t.eq(info.pending, 0)
    t.eq(info.overflows, 0)
  end)

  t.it("finds by rescan a change inotify does not report (a write through a shared mmap)", function()
    ffi.cdef [[
      int open(const char *path, int flags, ...);
      int close(int fd);
      void *mmap(void *addr, size_t len, int prot, int flags, int fd, long off);
      int munmap(void *addr, size_t len);
      int msync(void *addr, size_t len, int flags);
    ]]
    local O_RDWR, PROT_READ, PROT_WRITE, MAP_SHARED, MS_SYNC = 2, 1, 2, 1, 4
    local d = tmp()
    write(d .. "/m.dat", string.rep("a", 4096))
    local fd = ffi.C.open(d .. "/m.dat", O_RDWR)
    t.ok(fd >= 0, "open")
    local p = ffi.C.mmap(nil, 4096, PROT_READ + PROT_WRITE, MAP_SHARED, fd, 0)
    t.ok(ffi.cast("intptr_t", p) ~= -1, "mmap")
    -- The mapping holds the file open: no close event until munmap.
    cleanups[#cleanups + 1] = function()
      ffi.C.munmap(p, 4096)
    end
    ffi.C.close(fd)
    local _, control = record("dir", d, { debounce = 0.02, rescan = 3600 })
    local w, evs = record("dir", d, { debounce = 0.02, rescan = 0.2 })
    expect(control, 0, { "appeared m.dat" }, 0.05)
    expect(evs, 0, { "appeared m.dat" }, 0.05)
    task.sleep(0.05) -- a later mtime
    ffi.cast("char *", p)[0] = 98 -- 'b': updates mtime, no inotify event
    ffi.C.msync(p, 4096, MS_SYNC)
    expect(evs, 1, { "changed m.dat" }, 0.5)
    t.eq(#control, 1, "inotify did not report it (the control watcher only rescans hourly)")
    t.ok(w:info().rescans >= 1)
    t.eq(S.read_file(d .. "/m.dat"):sub(1, 1), "b")
  end)

  t.it("re-checks symlinked entries when the directory changes (ConfigMap volume swap)", function()
    local d = tmp()
    S.sh(string.format("cd '%s' && mkdir ..v1 && echo one > ..v1/cm.yaml && ln -s ..v1 ..data && ln -s ..data/cm.yaml cm.yaml", d))
    local _, evs = record("dir", d, { debounce = 0.05, rescan = 3600 })
    local n = expect(evs, 0, { "appeared cm.yaml" })
    t.eq(evs[1].symlink, true)
    t.eq(evs[1].type, "file")
    -- Kubernetes' atomic writer: new timestamped dir, new ..data link renamed over, old dir removed
    S.sh(string.format("cd '%s' && mkdir ..v2 && echo two > ..v2/cm.yaml && ln -s ..v2 ..data_tmp && mv -T ..data_tmp ..data && rm -rf ..v1", d))
    expect(evs, n, { "changed cm.yaml" })
  end)

  t.it("returns the starting state from the first next() at once, even when empty", function()
    local d = tmp()
    write(d .. "/.only-a-dotfile", "x")
    local w = assert(watch.dir(d, { debounce = 0.02 }))
    watchers[#watchers + 1] = w
    local t0 = core.monotime()
    t.eq(w:next(), {})
    t.ok(core.monotime() - t0 < 0.05, "did not wait")
    local got
    task.spawn(function()
      got = w:next()
    end)
    task.sleep(0.1)
    t.eq(got, nil, "the second next() waits for a change")
    write(d .. "/a.yaml", "a")
    S.wait_for(function()
      return got ~= nil
    end, 3, 0.01)
    t.eq(lines(got), { "appeared a.yaml" })
    local missing = assert(watch.dir(d .. "/nope", {}))
    watchers[#watchers + 1] = missing
    t.eq(lines(missing:next()), { "missing <dir>" })
  end)

  t.it("hands a slow reader the net change per name", function()
    local d = tmp()
    write(d .. "/a.yaml", "1")
    write(d .. "/b.yaml", "1")
    local w = assert(watch.dir(d, { debounce = 0.02 }))
    watchers[#watchers + 1] = w
    t.eq(lines(w:next()), { "appeared a.yaml", "appeared b.yaml" })
    for i = 1, 5 do -- each write settles before the next; nobody reads meanwhile
      append(d .. "/a.yaml", tostring(i))
      task.sleep(0.05)
    end
    write(d .. "/tmp.yaml", "gone before anyone looked")
    task.sleep(0.05)
    os.remove(d .. "/tmp.yaml")
    os.remove(d .. "/b.yaml")
    task.sleep(0.05)
    t.eq(lines(w:next()), { "changed a.yaml", "removed b.yaml" })
  end)
end)

t.describe("watch.file", function()
  t.it("follows one file through creation, atomic saves, removal and its folder coming back", function()
    local base = tmp()
    local d = base .. "/etc"
    S.sh("mkdir " .. d)
    local f = d .. "/kubelet.yaml"
    local _, evs = record("file", f, { debounce = 0.05, rescan = 3600, retry = 3600 })
    local n = expect(evs, 0, { "missing kubelet.yaml" })
    t.eq(evs[1].path, f)
    write(d .. "/other.yaml", "not watched")
    write(d .. "/.kubelet.yaml.tmp", "v1")
    os.rename(d .. "/.kubelet.yaml.tmp", f)
    n = expect(evs, n, { "appeared kubelet.yaml" })
    append(f, "+")
    n = expect(evs, n, { "changed kubelet.yaml" })
    write(d .. "/.kubelet.yaml.tmp", "v2")
    os.rename(d .. "/.kubelet.yaml.tmp", f)
    n = expect(evs, n, { "changed kubelet.yaml" })
    os.remove(f)
    n = expect(evs, n, { "removed kubelet.yaml" })
    write(f, "v3")
    n = expect(evs, n, { "appeared kubelet.yaml" })
    S.sh("rm -rf " .. d)
    n = expect(evs, n, { "removed kubelet.yaml" })
    S.sh("mkdir " .. d .. " && echo v4 > " .. f)
    expect(evs, n, { "appeared kubelet.yaml" })
    t.eq(evs[#evs].path, f)
  end)

  t.it("reports the file itself even when it is a dotfile", function()
    local d = tmp()
    write(d .. "/.env", "x")
    local _, evs = record("file", d .. "/.env", { debounce = 0.05 })
    expect(evs, 0, { "appeared .env" })
  end)
end)

t.describe("closing and errors", function()
  t.it("after close: no more events, no task left parked", function()
    local d = tmp()
    write(d .. "/a.yaml", "a")
    local w, evs = record("dir", d, { debounce = 0.02 })
    expect(evs, 0, { "appeared a.yaml" }, 0.05)
    append(d .. "/a.yaml", "pending") -- pending in the debounce when closed
    w:close()
    w:close() -- twice is fine
    write(d .. "/b.yaml", "b")
    task.sleep(0.2)
    t.eq(#evs, 1)
    t.eq(core.parked_count(), 0)
    t.eq(w:next(), nil)
  end)

  t.it("close from the callback stops the rest of the batch", function()
    local d = tmp()
    for i = 1, 3 do
      write(d .. "/f" .. i, "x")
    end
    local evs, w = {}, nil
    w = assert(watch.dir(d, { debounce = 0.02 }, function(ev)
      evs[#evs + 1] = ev
      w:close()
    end))
    watchers[#watchers + 1] = w
    task.sleep(0.2)
    t.eq(lines(evs), { "appeared f1" })
    t.eq(core.parked_count(), 0)
  end)

  t.it("close wakes a task waiting in next() with nil", function()
    local d = tmp()
    local w = assert(watch.dir(d, { debounce = 0.02, initial = false }))
    watchers[#watchers + 1] = w
    local got = "not yet"
    task.spawn(function()
      got = w:next()
    end)
    task.sleep(0.05)
    t.eq(core.parked_count(), 1)
    w:close()
    task.sleep(0)
    t.eq(got, nil)
    t.eq(core.parked_count(), 0)
  end)

  t.it("closed or collected watchers give back their inotify instance", function()
    local d = tmp()
    local pid = S.sh("echo $PPID")
    local function instances()
      return tonumber((S.sh("ls -l /proc/" .. pid .. "/fd | grep -c inotify")))
    end
    local before = instances()
    local w = assert(watch.dir(d, {}, function() end))
    do
      local _ = assert(watch.dir(d, {})) -- no callback, dropped at once
    end
    t.eq(instances(), before + 2)
    w:close()
    collectgarbage()
    collectgarbage()
    task.sleep(0.01) -- the handles close on the next loop turn
    t.eq(instances(), before)
  end)

  t.it("a failing callback is logged and the watcher carries on", function()
    local d = tmp()
    local evs = {}
    local w = assert(watch.dir(d, { debounce = 0.02 }, function(ev)
      evs[#evs + 1] = ev
      if #evs == 1 then
        error("policy bug")
      end
    end))
    watchers[#watchers + 1] = w
    write(d .. "/a", "x")
    wait_n(evs, 1)
    write(d .. "/b", "x")
    expect(evs, 1, { "appeared b" }, 0.05)
  end)

  t.it("a path that is a file is a missing directory, with the reason", function()
    local d = tmp()
    write(d .. "/plain", "x")
    local _, evs = record("dir", d .. "/plain", { debounce = 0.02 })
    expect(evs, 0, { "missing <dir>" }, 0.05)
    t.match(evs[1].err, "^ENOTDIR: ")
  end)

  t.it("bad arguments throw, naming the option", function()
    t.fails(function() watch.dir("/tmp", { debounse = 1 }) end, "watch: unknown option debounse$")
    t.fails(function() watch.dir("/tmp", { debounce = "1" }) end, "watch: option debounce must be a number, got string$")
    t.fails(function() watch.dir("/tmp", { rescan = 0 }) end, "option rescan must be > 0")
    t.fails(function() watch.dir("/tmp", { debounce = -1 }) end, "option debounce must be >= 0")
    t.fails(function() watch.dir("", {}) end, "path must be a non%-empty string")
    t.fails(function() watch.dir("/tmp", {}, 42) end, "on_event must be a function")
    t.fails(function() watch.file("/", {}) end, "is a directory")
  end)

  t.it("trims a trailing slash, as kubelet does", function()
    local d = tmp()
    write(d .. "/a", "x")
    local _, evs = record("dir", d .. "//", { debounce = 0.02 })
    expect(evs, 0, { "appeared a" }, 0.05)
    t.eq(evs[1].path, d .. "/a")
  end)
end)
