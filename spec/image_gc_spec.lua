-- Image GC against the test kit's fake runtime: thresholds, order, what is
-- never removed, ages, persistence, exclusions, hooks, reasons.
local t = require "spec.t"
local S = require "spec.support"
local image_gc = require "kubelua.image_gc"
local testing = require "kubelua.testing"

local NOW = 1700000000
local MB = 1000000

-- Images a..f (10 MB each unless said), the filesystem at `avail` MB free of 100.
local function state(o)
  o = o or {}
  local images = o.images or {
    { id = "sha256:aaaa", tags = { "reg.local/app:1" }, size = 10 * MB },
    { id = "sha256:bbbb", tags = { "reg.local/app:2" }, size = 10 * MB },
    { id = "sha256:cccc", tags = { "reg.local/app:3" }, size = 10 * MB },
    { id = "sha256:dddd", tags = { "reg.local/tool:1" }, size = 10 * MB },
    { id = "sha256:eeee", tags = { "reg.local/pause:3.9" }, size = 1 * MB },
    { id = "sha256:ffff", tags = { "reg.local/pinned:1" }, size = 5 * MB, pinned = true },
  }
  return testing.node{ time = NOW, pods = o.pods or {}, images = images,
    fs = { capacity = 100 * MB, available = (o.avail or 10) * MB } }
end

local function ids(list)
  local out = {}
  for _, e in ipairs(list) do
    out[#out + 1] = e.id
  end
  return out
end

-- A pod whose (exited) container uses image `ref`.
local function user(uid, ref)
  return { uid = uid, containers = { { name = "c", image = ref, image_ref = ref, id = testing.hexid(uid) } } }
end

t.describe("image GC (fake runtime)", function()
  t.it("validates thresholds with kubelet's messages", function()
    local rt = testing.runtime(state())
    t.fails(function() image_gc.new{ runtime = rt, high = 101 } end, "invalid HighThresholdPercent 101, must be in range %[0%-100%]")
    t.fails(function() image_gc.new{ runtime = rt, low = -1 } end, "invalid LowThresholdPercent %-1")
    t.fails(function() image_gc.new{ runtime = rt, high = 70 } end,
      "LowThresholdPercent 80 can not be higher than HighThresholdPercent 70")
    t.fails(function() image_gc.new{ runtime = rt, kep = {} } end, "unknown option kep")
  end)

  t.it("is disabled at high = 100 without a maximum age", function()
    local rt = testing.runtime(state())
    local res = assert(image_gc.new{ runtime = rt, high = 100, low = 90 }:run())
    t.eq(res.disabled, true)
    t.eq(#rt.calls, 0)
  end)

  t.it("below the high threshold nothing goes; usage uses kubelet's integer formula", function()
    local rt = testing.runtime(state{ avail = 15.5 })
    local res = assert(image_gc.new{ runtime = rt, min_age = 0 }:run())
    t.eq(res.usage.percent, 85, "100 - floor(15.5) = 85 >= high")
    t.eq(res.usage.to_free, 4.5 * MB, "capacity*20/100 - available")
    t.eq(ids(res.images), { "sha256:aaaa" })
    t.eq(res.images[1].rule, "space")
    rt = testing.runtime(state{ avail = 16 })
    res = assert(image_gc.new{ runtime = rt }:run())
    t.eq(res.usage.percent, 84)
    t.eq(res.usage.to_free, 0)
    t.eq(res.images, {})
    t.eq(rt:count("remove_image"), 0)
  end)

  t.it("least recently used first (never used first), then first seen; stops at the target", function()
    local st = state{ avail = 5, pods = { user("ub", "sha256:bbbb"), user("uc", "reg.local/app:3") } }
    local rt = testing.runtime(st)
    local ig = image_gc.new{ runtime = rt }
    assert(ig:detect()) -- t0: b and c in use
    assert(rt:remove_container{ container_id = testing.hexid("ub") })
    rt.clock:advance(100)
    assert(ig:detect()) -- t0+100: c still in use
    assert(rt:remove_container{ container_id = testing.hexid("uc") })
    rt.clock:advance(200)
    -- to free: 20 MB - 5 MB = 15 MB -> a (never used, first by ID), d, then enough
    local res = assert(ig:run())
    t.eq(ids(res.images), { "sha256:aaaa", "sha256:dddd" })
    t.eq(res.bytes, 20 * MB)
    t.eq(rt:image_ids(), { "sha256:bbbb", "sha256:cccc", "sha256:eeee", "sha256:ffff" })
    -- and next time b (used at t0) goes before c (used at t0+100)
    rt.fs["/fake/image-fs"].available = 5 * MB
    res = assert(ig:run())
    t.eq(ids(res.images), { "sha256:eeee", "sha256:bbbb", "sha256:cccc" })
  end)

  t.it("never an image used by a container (running or exited), the sandbox image or a pinned one; says why", function()
    local st = state{ avail = 1, pods = { user("u1", "sha256:aaaa"), user("u2", "reg.local/app:2"),
      { uid = "u3", containers = { { name = "r", state = "running", image = "reg.local/app:3", image_ref = "sha256:cccc" } } },
      user("u4", "reg.local/tool:1") } }
    local rt = testing.runtime(st)
    local events = {}
    local ig = image_gc.new{ runtime = rt, min_age = 0, sandbox_image = "reg.local/pause:3.9",
      on_event = function(_, reason, msg) events[#events + 1] = { reason, msg } end }
    local res, err, code, partial = ig:run()
    t.eq(res, nil)
    t.eq(code, "FREE_FAILED")
    t.eq(partial.images, {})
    t.match(err, "Failed to garbage collect required amount of images%. Attempted to free 19000000 bytes, "
      .. "but only found 0 bytes eligible to free%.")
    t.match(err, "4 in use by a container %(40000000 bytes%), 1 the sandbox image %(1000000 bytes%), "
      .. "1 pinned by the runtime %(5000000 bytes%)")
    t.eq(partial.kept["in-use"], { count = 4, bytes = 40 * MB })
    t.eq(rt:count("remove_image"), 0)
    t.eq(events[1][1], "FreeDiskSpaceFailed")
  end)

  t.it("a filesystem full of other files is named as the reason", function()
    local st = testing.node{ time = NOW, pods = { user("u", "sha256:aaaa") },
      images = { { id = "sha256:aaaa", tags = { "reg.local/app:1" }, size = 1 * MB } },
      fs = { capacity = 100 * MB, available = 5 * MB } }
    local _, err, code = image_gc.new{ runtime = testing.runtime(st) }:run()
    t.eq(code, "FREE_FAILED")
    t.match(err, "1 in use by a container %(1000000 bytes%)%. Images use 1000000 bytes of /fake/image%-fs; "
      .. "the rest of the filesystem is other files%.$")
  end)

  t.it("minimum age: images first seen less than 2 minutes ago stay, and the reason says so", function()
    local rt = testing.runtime(state{ avail = 5 })
    local ig = image_gc.new{ runtime = rt }
    local _, err, code = ig:run()
    t.eq(code, "FREE_FAILED")
    t.match(err, "1 pinned by the runtime %(5000000 bytes%), 5 younger than the minimum age %(41000000 bytes%)")
    t.eq(rt:count("remove_image"), 0)
    rt.clock:advance(120)
    t.ok(ig:run(), "120 s later they may go")
    t.eq(rt:count("remove_image"), 2)
  end)

  t.it("maximum age: only after GC has run that long; unused images go whatever the usage", function()
    local rt = testing.runtime(state{ avail = 90, pods = { user("u1", "sha256:aaaa") } })
    local ig = image_gc.new{ runtime = rt, max_age = 3600 }
    local res = assert(ig:run())
    t.eq(res.images, {}, "GC has not run for max_age yet")
    rt.clock:advance(1800)
    assert(ig:run()) -- a is in use now
    assert(rt:remove_container{ container_id = testing.hexid("u1") })
    rt.clock:advance(1801)
    res = assert(ig:run())
    t.eq(ids(res.images), { "sha256:bbbb", "sha256:cccc", "sha256:dddd", "sha256:eeee" },
      "never used: older than max_age; a was used 1801 s ago; f is pinned")
    t.eq(res.images[1].rule, "max-age")
  end)

  t.it("keep patterns, annotations and the newest N of each repository", function()
    local images = {
      { id = "sha256:a1", tags = { "reg.local:5000/app:1" }, size = 10 * MB },
      { id = "sha256:a2", tags = { "reg.local:5000/app:2" }, size = 10 * MB },
      { id = "sha256:a3", tags = { "reg.local:5000/app:3" }, size = 10 * MB },
      { id = "sha256:t1", tags = { "reg.local/tools:1" }, digests = { "reg.local/tools@sha256:99" }, size = 10 * MB },
      { id = "sha256:k1", tags = { "reg.local/keepme:1" }, size = 10 * MB },
      { id = "sha256:n1", tags = {}, size = 10 * MB, annotations = { ["kubelua.io/keep"] = "1" } },
    }
    local st = state{ images = images, avail = 0 }
    local rt = testing.runtime(st)
    local ig = image_gc.new{ runtime = rt, keep = { "^reg%.local/keepme:" }, keep_newest = 1,
      keep_annotations = { ["kubelua.io/keep"] = true }, min_age = 0 }
    -- first seen one after the other: a3 is the newest app image
    rt.images = { images[1] and st.images[1] }
    assert(ig:detect())
    rt.clock:advance(10)
    rt.images = { st.images[1], st.images[2] }
    assert(ig:detect())
    rt.clock:advance(10)
    rt.images = st.images
    local res = assert(ig:run())
    t.eq(res.usage.to_free, 20 * MB)
    t.eq(ids(res.images), { "sha256:a1", "sha256:a2" }, "the only ones not kept")
    t.eq(res.kept["keep-pattern"], { count = 1, bytes = 10 * MB })
    t.eq(res.kept["keep-annotation"], { count = 1, bytes = 10 * MB })
    t.eq(res.kept["keep-newest"], { count = 2, bytes = 20 * MB }, "a3 and t1, the newest of their repositories")
    t.eq(image_gc.repository("reg.local:5000/a/b:tag"), "reg.local:5000/a/b")
    t.eq(image_gc.repository("reg.local:5000/a/b@sha256:1"), "reg.local:5000/a/b")
    t.eq(image_gc.repository("busybox"), "busybox")
  end)

  t.it("times persist across a restart (atomically written); without a state folder they do not", function()
    local dir = S.tmpdir("igstate")
    local st = state{ avail = 5, pods = { user("ub", "sha256:bbbb") } }
    local rt = testing.runtime(st)
    local ig = image_gc.new{ runtime = rt, state_dir = dir }
    assert(ig:detect())
    t.eq(S.sh("ls " .. dir), "image_gc.state", "one file, no temporary left")
    assert(rt:remove_container{ container_id = testing.hexid("ub") })
    rt.clock:advance(300)
    -- a new agent: without state, every image is first seen now and protected
    local fresh = image_gc.new{ runtime = rt }
    local _, _, code = fresh:plan()
    t.eq(code, "FREE_FAILED")
    -- with the state folder: ages and last use are remembered
    local again = image_gc.new{ runtime = rt, state_dir = dir }
    t.eq(again.records["sha256:bbbb"].last_used, NOW)
    t.eq(again.records["sha256:aaaa"].first_seen, NOW)
    local res = assert(again:run())
    t.eq(ids(res.images), { "sha256:aaaa", "sha256:cccc" })
    local saved = assert(testing.load(dir .. "/image_gc.state"))
    t.eq(saved.images["sha256:aaaa"], nil, "removed images leave the state")
    t.eq(saved.images["sha256:bbbb"], { first_seen = NOW, last_used = NOW })
    -- a damaged file is reported and ignored
    local f = io.open(dir .. "/image_gc.state", "w")
    f:write("return {{{")
    f:close()
    local broken = image_gc.new{ runtime = rt, state_dir = dir }
    t.match(broken.load_err, "^EINVAL")
    t.eq(next(broken.records), nil)
    S.rm(dir)
  end)

  t.it("a state that cannot be saved is an error of the run", function()
    local dir = S.tmpdir("igsave")
    S.sh("touch " .. dir .. "/file")
    local rt = testing.runtime(state{ avail = 50 })
    local ig = image_gc.new{ runtime = rt, state_dir = dir .. "/file/state" }
    local _, err, code = ig:run()
    t.eq(code, "IMAGE_GC_FAILED")
    t.match(err, "could not save the image GC state: ENOTDIR: mkdir ")
    S.rm(dir)
  end)

  t.it("a hook decides the final list; an error or an in-use image in it deletes nothing", function()
    local rt = testing.runtime(state{ avail = 5, pods = { user("u", "sha256:dddd") } })
    local got
    local ig = image_gc.new{ runtime = rt, min_age = 0, hooks = { images = function(candidates, chosen, ctx)
      got = { #candidates, #chosen, ctx.usage.to_free }
      return { "sha256:cccc", chosen[1] }
    end } }
    local res = assert(ig:run())
    t.eq(got, { 6, 2, 15 * MB })
    t.eq(ids(res.images), { "sha256:cccc", "sha256:aaaa" })
    t.eq(res.images[1].rule, "policy")
    t.eq(res.images[2].rule, "space")
    rt = testing.runtime(state{ avail = 5, pods = { user("u", "sha256:dddd") } })
    rt.clock:advance(1000)
    local _, err, code = image_gc.new{ runtime = rt, hooks = { images = function() error("oops") end } }:run()
    t.eq(code, "POLICY")
    t.match(err, "images hook failed: .*oops")
    t.match(err, "stack traceback")
    _, err, code = image_gc.new{ runtime = rt, hooks = { images = function() return { "sha256:dddd" } end } }:run()
    t.eq(code, "POLICY")
    t.match(err, "may not be removed: it is in use")
    _, err = image_gc.new{ runtime = rt, hooks = { images = function() return { "sha256:ffff" } end } }:run()
    t.match(err, "it is pinned")
    t.eq(rt:count("remove_image"), 0)
  end)

  t.it("the plan is what the run does; removal errors are collected", function()
    local rt = testing.runtime(state{ avail = 0 })
    local ig = image_gc.new{ runtime = rt, min_age = 0 }
    local plan = assert(ig:plan())
    t.eq(rt:count("remove_image"), 0)
    t.eq(ids(plan.images), { "sha256:aaaa", "sha256:bbbb" })
    rt:fail("remove_image", "UNKNOWN", "busy", { when = function(req) return req.image.image == "sha256:aaaa" end })
    local res, err, code, partial = ig:run()
    t.eq(res, nil)
    t.eq(code, "IMAGE_GC_FAILED")
    t.eq(ids(partial.images), ids(plan.images))
    t.match(err, "wanted to free 20000000 bytes, but freed 10000000 bytes space with errors in image deletion: "
      .. "sha256:aaaa: UNKNOWN")
    t.ok(ig.records["sha256:aaaa"], "a failed image keeps its record")
    t.eq(ig.records["sha256:bbbb"], nil)
  end)

  t.it("on_result sees every run but plans, failed ones with their partial result", function()
    local rt = testing.runtime(state{ avail = 0 })
    local seen = {}
    local ig = image_gc.new{ runtime = rt, min_age = 0, on_result = function(r)
      seen[#seen + 1] = r
      error("an exporter bug")
    end }
    assert(ig:plan())
    t.eq(#seen, 0, "a plan is not reported")
    rt:fail("remove_image", "UNKNOWN", "busy", { times = 1 })
    local res, _, code, partial = ig:run()
    t.eq({ res, code }, { nil, "IMAGE_GC_FAILED" })
    t.eq(#seen, 1)
    t.ok(seen[1] == partial, "the failed run's partial result")
    res = assert(ig:run(), "an error in on_result does not fail the run")
    t.eq(#seen, 2)
    t.ok(seen[2] == res)
  end)

  t.it("capacity 0 is invalid; usage from ImageFsInfo is an option", function()
    local st = state{ avail = 0 }
    st.fs["/fake/image-fs"].capacity = 0
    local events = {}
    local _, err, code = image_gc.new{ runtime = testing.runtime(st),
      on_event = function(_, reason) events[#events + 1] = reason end }:run()
    t.eq(code, "INVALID_CAPACITY")
    t.match(err, "invalid capacity 0 on image filesystem")
    t.eq(events, { "InvalidDiskCapacity" })
    local st2 = state{ avail = 90 } -- the filesystem is nearly empty, but images "use" 46 of 50 MB
    st2.fs["/fake/image-fs"].capacity = 50 * MB
    st2.fs["/fake/image-fs"].available = 50 * MB
    local rt = testing.runtime(st2)
    local res = assert(image_gc.new{ runtime = rt, usage = "image_fs_info", min_age = 0 }:run())
    t.eq(res.usage.percent, 92)
    t.eq(res.usage.to_free, 6 * MB)
    t.eq(ids(res.images), { "sha256:aaaa" })
  end)

  t.it("detect: a failed or throwing listing is returned, nothing recorded", function()
    local rt = testing.runtime(state())
    local ig = image_gc.new{ runtime = rt }
    rt:fail("list_containers", "UNAVAILABLE", "down", { times = 1 })
    local images, err, code = ig:detect()
    t.eq({ images, code }, { nil, "UNAVAILABLE" })
    t.match(err, "down")
    rt.list_images = function() error("kaput", 0) end
    t.eq({ ig:detect() }, { nil, "INTERNAL: kaput", "INTERNAL" })
    t.eq(next(ig.records), nil)
  end)

  t.it("start: the first failure is only kept, consecutive ones become events", function()
    local rt = testing.runtime(state())
    rt:fail("list_images", "UNAVAILABLE", "down")
    local events = {}
    local ig = image_gc.new{ runtime = rt, on_event = function(_, reason) events[#events + 1] = reason end }
    ig:start{ period = 0.01 }
    t.ok(S.wait_for(function() return rt:count("list_images") >= 3 end, 5))
    local loop = ig:stop()
    t.ok(S.wait_for(function() return loop.done end, 5))
    t.ok(#events >= 1 and #events == rt:count("list_images") - 1, "all but the first")
    t.eq(events[1], "ImageGCFailed")
  end)
end)
