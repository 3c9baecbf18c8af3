-- Image GC against real images in the real containerd: small distinct images
-- built by tests/support/mkimage.sh (each with its own random file, so its
-- own layer), imported in stages so their first-seen times differ, some used
-- by containers; capacity measured on a small tmpfs standing in for the
-- image filesystem, filled to set the usage. The GC sees only this spec's
-- images (a filtered view of ListImages), so other specs' images are safe.
local t = require "spec.t"
local S = require "spec.support"
local task = require "kubelua.task"
local image_gc = require "kubelua.image_gc"
local testing = require "kubelua.testing"
local sys = require "kubelua.sys"

local ctd, rt = S.runtime({ timeout = 30 })
local RUN = tostring(os.time()) .. math.random(1000, 9999)
local PREFIX = "kubelua.local/gc" .. RUN .. "-"
local function ref(name)
  return PREFIX .. name
end

-- ListImages limited to this spec's images; everything else is the runtime.
local view = S.runtime_view(rt)
function view.list_images(_, req, opts)
  local r, err, code = rt:list_images(req, opts)
  if not r then
    return nil, err, code
  end
  local mine = {}
  for _, img in ipairs(r.images) do
    for _, tag in ipairs(img.repo_tags) do
      if tag:sub(1, #PREFIX) == PREFIX then
        mine[#mine + 1] = img
        break
      end
    end
  end
  return { images = mine }
end

local dir = S.tmpdir("igce2e")
local fs = dir .. "/imagefs"
local NAMES = { "a:1", "b:1", "c:1", "pause:1", "app:1", "app:2", "app:3", "used:1", "run:1" }
local id = {} -- name -> image ID
local size = {} -- name -> bytes
local name_of = {} -- image ID -> name
local pod, podcfg
local clock = testing.clock(task.now())
local t0 = clock()

local function import(names)
  local cmds = {}
  for _, n in ipairs(names) do
    cmds[#cmds + 1] = string.format("bash %s ctr %s images import %s/%s.tar >/dev/null &", ctd.script, ctd.dir, dir,
      n:gsub(":", "-"))
  end
  local out, ok = S.sh(table.concat(cmds, " ") .. " wait")
  assert(ok, out)
  local r = assert(view:list_images{})
  for _, img in ipairs(r.images) do
    local n = img.repo_tags[1]:sub(#PREFIX + 1)
    id[n], size[n], name_of[img.id] = img.id, tonumber(img.size), n
  end
end

local function names(list)
  local out = {}
  for _, e in ipairs(list) do
    out[#out + 1] = name_of[e.id] or e.id
  end
  return out
end

local function present()
  local out = {}
  for _, img in ipairs(assert(view:list_images{}).images) do
    out[#out + 1] = name_of[img.id]
  end
  table.sort(out)
  return out
end

-- Fill the tmpfs so that the GC has `bytes` to free (usage above 85%).
local function need(bytes)
  local st = assert(sys.statvfs(fs))
  local want_available = math.floor(st.capacity * 20 / 100) - bytes
  S.sh("rm -f " .. fs .. "/fill")
  local cur = assert(sys.statvfs(fs)).available
  local fill = cur - want_available
  assert(fill > 0 and fill <= cur, "tmpfs too small for the test")
  S.sh(string.format("head -c %d /dev/zero > %s/fill", fill, fs))
end

local function new(opts)
  opts.runtime = view
  opts.clock = clock
  opts.image_fs_path = fs
  opts.sandbox_image = ref("pause:1")
  return image_gc.new(opts)
end

t.describe("image GC against containerd", function()
  t.it("builds and imports distinct images in stages; uses some in containers", function()
    -- build every image at once (each has its own random file: distinct layers)
    local cmds = {}
    for _, n in ipairs(NAMES) do
      local file = dir .. "/" .. n:gsub(":", "-")
      cmds[#cmds + 1] = string.format("(head -c 200000 /dev/urandom > %s.bin && bash %s/tests/support/mkimage.sh %s.tar %s"
        .. " %s.bin:/data/blob >/dev/null) &", file, S.ROOT, file, ref(n), file)
    end
    local out, ok = S.sh(table.concat(cmds, " ") .. " wait; ls " .. dir .. "/*.tar | wc -l")
    t.ok(ok, out)
    t.eq(out, tostring(#NAMES), "every archive built")
    S.sh("mkdir -p " .. fs .. " && mount -t tmpfs -o size=16m kubelua-igc " .. fs)
    t.eq(assert(sys.statvfs(fs)).capacity, 16 * 1024 * 1024)
    -- stage 1 at t0: c is used (then its container goes), used and run stay in use
    import({ "a:1", "c:1", "pause:1", "app:1", "used:1", "run:1" })
    local uid = "igc-" .. RUN
    podcfg = { metadata = { name = "igc", uid = uid, namespace = "gc-test" },
      labels = { ["io.kubernetes.pod.uid"] = uid },
      linux = { cgroup_parent = "/kubelua-test/pod" .. uid, security_context = { namespace_options = { network = "NODE" } } } }
    pod = assert(rt:run_pod_sandbox{ config = podcfg }).pod_sandbox_id
    local function container(name, image, cmd, start)
      local cid = assert(rt:create_container{ pod_sandbox_id = pod, sandbox_config = podcfg, config = {
        metadata = { name = name }, image = { image = ref(image) }, command = cmd,
        labels = { ["io.kubernetes.pod.uid"] = uid } } }).container_id
      if start then
        assert(rt:start_container{ container_id = cid })
      end
      return cid
    end
    local temp = container("temp", "c:1", { "true" }, false)
    container("used", "used:1", { "true" }, true) -- exits at once: still "in use"
    container("run", "run:1", { "sleep", "3600" }, true)
    local ig = new{ state_dir = dir .. "/state" }
    assert(ig:detect())
    assert(rt:remove_container{ container_id = temp })
    clock:advance(10)
    import({ "b:1", "app:2" })
    assert(ig:detect())
    clock:advance(10)
    import({ "app:3" })
    assert(ig:detect())
    t.eq(#present(), #NAMES)
    t.eq(ig.records[id["c:1"]].last_used, t0)
    t.eq(ig.records[id["a:1"]].last_used, 0)
    t.eq(ig.records[id["b:1"]].first_seen, t0 + 10)
    t.eq(ig.records[id["app:3"]].first_seen, t0 + 20)
    t.eq(S.sh("ls " .. dir .. "/state"), "image_gc.state", "the state folder was made, and holds one file")
  end)

  t.it("after a restart without the state, every image is young again: nothing goes, and it says why", function()
    clock:set(t0 + 300)
    need(1.5 * size["a:1"])
    local fresh = new{}
    local res, err, code, partial = fresh:run()
    t.eq(res, nil)
    t.eq(code, "FREE_FAILED")
    t.match(err, "younger than the minimum age")
    t.eq(partial.images, {})
    t.eq(#present(), #NAMES)
  end)

  t.it("with the state folder: least recently used first; in use, sandbox image and kept ones stay", function()
    local ig = new{ state_dir = dir .. "/state", keep = { "%-app:" } }
    local plan = assert(ig:plan())
    t.eq(names(plan.images), { "a:1", "b:1" }, "never used, by first seen; c was used")
    t.eq(#present(), #NAMES, "the plan removed nothing")
    local res = assert(ig:run())
    t.eq(names(res.images), names(plan.images), "the run did what the plan said")
    t.ok(res.bytes >= res.usage.to_free)
    t.eq(present(), { "app:1", "app:2", "app:3", "c:1", "pause:1", "run:1", "used:1" })
    -- again: only c is left to take, which is not enough
    need(1.5 * size["c:1"])
    local ok, err, code, partial = ig:run()
    t.eq(ok, nil)
    t.eq(code, "FREE_FAILED")
    t.eq(names(partial.images), { "c:1" })
    t.match(err, "2 in use by a container %(%d+ bytes%), 1 the sandbox image %(%d+ bytes%)")
    t.match(err, "3 kept by a pattern")
    t.eq(present(), { "app:1", "app:2", "app:3", "pause:1", "run:1", "used:1" })
  end)

  t.it("keep the newest image of each repository", function()
    local ig = new{ state_dir = dir .. "/state", keep_newest = 1 }
    need(2.5 * size["app:1"])
    local _, _, code, partial = ig:run()
    t.eq(code, "FREE_FAILED", "only two eligible")
    t.eq(names(partial.images), { "app:1", "app:2" })
    t.eq(partial.kept["keep-newest"].count, 1)
    t.eq(present(), { "app:3", "pause:1", "run:1", "used:1" })
  end)

  t.it("cleans up", function()
    if pod then
      rt:stop_pod_sandbox{ pod_sandbox_id = pod }
      rt:remove_pod_sandbox{ pod_sandbox_id = pod }
    end
    for _, n in ipairs(NAMES) do
      rt:remove_image{ image = { image = ref(n) } }
    end
    local left = present()
    S.sh("umount " .. fs)
    S.rm(dir)
    t.eq(left, {})
    t.ok(not S.exists(dir))
  end)
end)
