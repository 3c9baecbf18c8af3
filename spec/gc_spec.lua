-- Container, sandbox and log GC: the algorithm on synthetic nodes (expected
-- removals worked out by hand), and the GC object against the test kit's
-- fake runtime (kubelua.testing).
local t = require "spec.t"
local S = require "spec.support"
local choose = require "kubelua.gc.select"
local gc = require "kubelua.gc"
local testing = require "kubelua.testing"
local config = require "kubelua.config"

local NOW = 1700000000

-- ------------------------------------------------------------ the algorithm

-- A dead container of unit (pod, name) created at `created`.
local function E(pod, name, created, state)
  return { id = pod .. "/" .. name .. "/" .. created, pod_uid = pod, name = name, created = created,
    state = state or "CONTAINER_EXITED", sandbox_id = "sb-" .. pod }
end

-- The chosen entries as "id=rule", sorted.
local function removed(chosen)
  local out = {}
  for _, e in ipairs(chosen) do
    out[#out + 1] = e.id .. "=" .. e.rule
  end
  table.sort(out)
  return out
end

local function R(rule, ...)
  local out = {}
  for _, id in ipairs({ ... }) do
    out[#out + 1] = id .. "=" .. rule
  end
  return out
end

local function concat(...)
  local out = {}
  for _, l in ipairs({ ... }) do
    for _, x in ipairs(l) do
      out[#out + 1] = x
    end
  end
  table.sort(out)
  return out
end

local CASES = {
  {
    name = "defaults: one dead container kept per (pod, name), the newest",
    entries = { E("a", "app", 10), E("a", "app", 30), E("a", "app", 20), E("a", "side", 5), E("b", "app", 1) },
    p = {},
    want = R("max-per-pod-container", "a/app/10", "a/app/20"),
  },
  {
    name = "running containers are never candidates and do not count",
    entries = { E("a", "app", 40, "CONTAINER_RUNNING"), E("a", "app", 10), E("a", "app", 20) },
    p = {},
    want = R("max-per-pod-container", "a/app/10"),
  },
  {
    name = "created and unknown containers are dead too",
    entries = { E("a", "app", 10, "CONTAINER_CREATED"), E("a", "app", 20, "CONTAINER_UNKNOWN"), E("a", "app", 30) },
    p = {},
    want = R("max-per-pod-container", "a/app/10", "a/app/20"),
  },
  {
    name = "min_age: strictly newer than now - min_age is too young (and not counted)",
    entries = { E("a", "app", 10), E("a", "app", 50), E("a", "app", 60), E("a", "app", 70) },
    p = { now = 100, min_age = 50, max_per_pod_container = 0 },
    want = R("max-per-pod-container", "a/app/10", "a/app/50"),
  },
  {
    name = "max_per_pod_container < 0 and no node cap: nothing goes",
    entries = { E("a", "app", 10), E("a", "app", 20), E("a", "app", 30) },
    p = { max_per_pod_container = -1 },
    want = {},
  },
  {
    name = "deleted pods lose everything once sources are ready",
    entries = { E("gone", "app", 10), E("gone", "app", 20), E("gone", "x", 5), E("live", "app", 1) },
    p = { sources_ready = true, removable = function(uid) return uid == "gone" and "deleted-pod" or nil end },
    want = R("deleted-pod", "gone/app/10", "gone/app/20", "gone/x/5"),
  },
  {
    name = "deleted pods are left to the per-unit rule while sources are not ready",
    entries = { E("gone", "app", 10), E("gone", "app", 20), E("gone", "x", 5) },
    p = { sources_ready = false, removable = function() return "deleted-pod" end },
    want = R("max-per-pod-container", "gone/app/10"),
  },
  {
    name = "node cap: an equal share per unit (4 / 3 units = 1 each) is enough",
    entries = { E("a", "x", 1), E("a", "x", 2), E("a", "x", 3), E("a", "x", 4), E("a", "x", 5),
      E("b", "x", 6), E("b", "x", 7), E("b", "x", 8), E("c", "x", 9) },
    p = { max_per_pod_container = -1, max_containers = 4 },
    want = R("max-containers-share", "a/x/1", "a/x/2", "a/x/3", "a/x/4", "b/x/6", "b/x/7"),
  },
  {
    name = "node cap below the number of units: share 1, then the oldest across the node",
    entries = { E("u1", "x", 10), E("u1", "x", 15), E("u2", "x", 20), E("u2", "x", 25), E("u3", "x", 30),
      E("u3", "x", 35), E("u4", "x", 40), E("u4", "x", 45), E("u5", "x", 50), E("u5", "x", 55) },
    p = { max_per_pod_container = -1, max_containers = 2 },
    want = concat(R("max-containers-share", "u1/x/10", "u2/x/20", "u3/x/30", "u4/x/40", "u5/x/50"),
      R("max-containers", "u1/x/15", "u2/x/25", "u3/x/35")),
  },
  {
    name = "node cap of 0 after the per-unit rule: everything dead goes",
    entries = { E("a", "x", 1), E("a", "x", 2), E("b", "y", 3) },
    p = { max_containers = 0 },
    want = concat(R("max-per-pod-container", "a/x/1"), R("max-containers", "a/x/2", "b/y/3")),
  },
  {
    name = "node cap not exceeded: no node-wide removal",
    entries = { E("a", "x", 1), E("a", "x", 2), E("b", "y", 3) },
    p = { max_per_pod_container = -1, max_containers = 3 },
    want = {},
  },
  {
    name = "a protected container is not evictable and not counted",
    entries = { E("a", "x", 1), E("a", "x", 2), E("a", "x", 3) },
    p = { protect = function(e) return e.created == 3 and "keep-label" or nil end },
    want = R("max-per-pod-container", "a/x/1"),
  },
}

t.describe("container GC algorithm (kubelua.gc.select)", function()
  for _, case in ipairs(CASES) do
    t.it(case.name, function()
      local p = case.p
      p.now = p.now or 1000
      local chosen = choose.containers(case.entries, p)
      t.eq(removed(chosen), case.want)
    end)
  end

  -- 300 units (100 pods x 3 names); unit k has n = k % 5 + 1 dead containers
  -- created at k*10 + j, j = 1..n, so the newest of unit k is k*10 + n and
  -- units order by k across the node.
  local function node300(unknown_every)
    local entries, units = {}, {}
    local k = 0
    for pod = 1, 100 do
      for _, name in ipairs({ "a", "b", "c" }) do
        k = k + 1
        local n = k % 5 + 1
        units[k] = { pod = "p" .. pod, name = name, n = n }
        for j = 1, n do
          local e = E("p" .. pod, name, k * 10 + j)
          if unknown_every and #entries % unknown_every == 0 then
            e.state = "CONTAINER_UNKNOWN"
          end
          entries[#entries + 1] = e
        end
      end
    end
    return entries, units
  end

  t.it("300 units: at most 2 per unit keeps each unit's 2 newest (360 removed)", function()
    local entries, units = node300()
    t.eq(#entries, 900)
    local want = {}
    for k, u in ipairs(units) do
      for j = 1, u.n - 2 do
        want[#want + 1] = u.pod .. "/" .. u.name .. "/" .. (k * 10 + j) .. "=max-per-pod-container"
      end
    end
    table.sort(want)
    t.eq(#want, 360, "by hand: 60 groups of 5 units remove 0+0+1+2+3")
    t.eq(removed(choose.containers(entries, { now = 1e6, max_per_pod_container = 2 })), want)
  end)

  t.it("300 units, node cap 400: share floor(400/300) = 1 per unit; 600 removed", function()
    local entries, units = node300()
    local want = {}
    for k, u in ipairs(units) do
      for j = 1, u.n - 1 do
        want[#want + 1] = u.pod .. "/" .. u.name .. "/" .. (k * 10 + j) .. "=max-containers-share"
      end
    end
    table.sort(want)
    t.eq(#want, 600)
    t.eq(removed(choose.containers(entries, { now = 1e6, max_per_pod_container = -1, max_containers = 400 })), want)
  end)

  t.it("300 units, node cap 250: share 1, then the 50 oldest newest-of-unit (units 1..50); 650 removed", function()
    local entries, units = node300(7) -- every 7th unknown: they count as dead like the rest
    local want = {}
    for k, u in ipairs(units) do
      for j = 1, u.n - 1 do
        want[#want + 1] = u.pod .. "/" .. u.name .. "/" .. (k * 10 + j) .. "=max-containers-share"
      end
      if k <= 50 then
        want[#want + 1] = u.pod .. "/" .. u.name .. "/" .. (k * 10 + u.n) .. "=max-containers"
      end
    end
    table.sort(want)
    t.eq(#want, 650)
    local chosen, candidates, live = choose.containers(entries, { now = 1e6, max_per_pod_container = -1,
      max_containers = 250 })
    t.eq(removed(chosen), want)
    t.eq(#candidates, 900)
    local left = 0
    for _, u in ipairs(live) do
      left = left + #u.list
    end
    t.eq(left, 250, "exactly the cap remains")
  end)

  t.it("sandboxes: all inactive but the newest per pod; all of a removed pod; active ones stay", function()
    local sbs = {
      { id = "a1", pod_uid = "a", state = "SANDBOX_NOTREADY", created = 1 },
      { id = "a2", pod_uid = "a", state = "SANDBOX_NOTREADY", created = 2 },
      { id = "a3", pod_uid = "a", state = "SANDBOX_NOTREADY", created = 3 },
      { id = "a4", pod_uid = "a", state = "SANDBOX_READY", created = 4 },
      { id = "b1", pod_uid = "b", state = "SANDBOX_NOTREADY", created = 1 },
      { id = "b2", pod_uid = "b", state = "SANDBOX_NOTREADY", created = 2 },
      { id = "g1", pod_uid = "gone", state = "SANDBOX_NOTREADY", created = 1 },
      { id = "g2", pod_uid = "gone", state = "SANDBOX_NOTREADY", created = 2 },
      { id = "g3", pod_uid = "gone", state = "SANDBOX_READY", created = 3 },
    }
    local containers = { { id = "c", sandbox_id = "a2" } } -- keeps a2 active
    local chosen = choose.sandboxes(sbs, containers, {
      removable = function(uid) return uid == "gone" and "deleted-pod" or nil end })
    t.eq(removed(chosen), concat(R("older-sandbox", "a1", "a3", "b1"), R("deleted-pod", "g1", "g2")))
  end)

  t.it("log folder and link names", function()
    t.eq(choose.log_dir_uid("ns_web-0_1234-abcd"), "1234-abcd")
    t.eq(choose.log_dir_uid("1234-abcd"), "1234-abcd", "the older layout: the UID alone")
    t.eq(choose.log_link_container("web-0_ns_app-" .. string.rep("ab", 32) .. ".log"), string.rep("ab", 32))
    t.eq(choose.log_link_container("README"), nil)
  end)
end)

-- ------------------------------------------------- the GC object, fake runtime

local function ids_of(list)
  local out = {}
  for _, e in ipairs(list) do
    out[#out + 1] = e.id or e.path
  end
  table.sort(out)
  return out
end

local function mutations(rt)
  local out = {}
  for _, c in ipairs(rt.calls) do
    if c.method:match("^remove") or c.method:match("^stop") then
      out[#out + 1] = c.method .. " " .. (c.req.container_id or c.req.pod_sandbox_id or "")
    end
  end
  return out
end

-- A node: pod "web" (live) with 4 exited app containers and a running one,
-- pod "old" (no source knows it) with two exited containers and two
-- stopped sandboxes, pod "unk" with an unknown-state container.
local function node()
  return testing.node{ time = NOW, pods = {
    { uid = "web-uid", name = "web", namespace = "prod", containers = {
      { name = "app", attempt = 0, created = NOW - 400, id = "web-app-0" },
      { name = "app", attempt = 1, created = NOW - 300, id = "web-app-1" },
      { name = "app", attempt = 2, created = NOW - 200, id = "web-app-2", exit_code = 1, finished = NOW - 150 },
      { name = "app", attempt = 3, created = NOW - 100, id = "web-app-3", state = "running" },
      { name = "init", attempt = 0, created = NOW - 500, id = "web-init-0" },
    } },
    { uid = "old-uid", name = "old", namespace = "prod", ready = false,
      sandboxes = { { ready = false, created = NOW - 900, id = "old-sb-1" }, { ready = false, created = NOW - 800, id = "old-sb-2" } },
      containers = {
        { name = "job", attempt = 0, created = NOW - 850, id = "old-job-0", sandbox = 1 },
        { name = "job", attempt = 1, created = NOW - 750, id = "old-job-1", sandbox = 2 },
      } },
    { uid = "unk-uid", name = "unk", namespace = "prod", containers = {
      { name = "x", attempt = 0, created = NOW - 600, id = "unk-x-0", state = "unknown" },
      { name = "x", attempt = 1, created = NOW - 60, id = "unk-x-1" },
    } },
  } }
end

-- A PodConfig whose one source knows `uids` (and has sent its first SET).
local function sources(uids, ready)
  local pc = config.new{}
  pc:register("file")
  if ready ~= false then
    local pods = {}
    for _, uid in ipairs(uids) do
      pods[#pods + 1] = { metadata = { uid = uid, name = uid, namespace = "prod" }, spec = {} }
    end
    pc:merge("file", { op = "SET", pods = pods })
  end
  return pc
end

t.describe("GC object against the fake runtime", function()
  local logs
  t.before_each(function()
    logs = S.tmpdir("gclogs")
  end)
  t.after_each(function()
    S.rm(logs)
  end)

  local function new(rt, opts)
    opts = opts or {}
    opts.runtime = rt
    opts.pod_logs_dir = opts.pod_logs_dir or (logs .. "/pods")
    if opts.container_logs_dir == nil then
      opts.container_logs_dir = logs .. "/containers"
    end
    return gc.new(opts)
  end

  t.it("defaults: per-unit removal, unknown containers killed first, then removed", function()
    local rt = testing.runtime(node())
    local res = assert(new(rt):run())
    t.eq(ids_of(res.containers), { "old-job-0", "unk-x-0", "web-app-0", "web-app-1" })
    t.eq(rt:container_ids(), { "old-job-1", "unk-x-1", "web-app-2", "web-app-3", "web-init-0" })
    local m = mutations(rt)
    local stop_at, remove_at
    for i, x in ipairs(m) do
      if x == "stop_container unk-x-0" then
        stop_at = i
      elseif x == "remove_container unk-x-0" then
        remove_at = i
      end
    end
    t.ok(stop_at and remove_at and stop_at < remove_at, "stopped before removal: " .. table.concat(m, ", "))
    t.eq(rt:count("stop_container"), 1, "only the unknown one is stopped")
    -- sandboxes: old-sb-1 lost its last container, and is not the newest: it goes
    t.eq(ids_of(res.sandboxes), { "old-sb-1" })
    t.eq(res.sandboxes[1].rule, "older-sandbox")
  end)

  t.it("an unknown container whose kill fails is not removed; the error is reported, the rest goes on", function()
    local rt = testing.runtime(node())
    rt:fail("stop_container", "UNKNOWN", "shim gone")
    local res, err, code, partial = new(rt):run()
    t.eq(res, nil)
    t.eq(code, "GC_FAILED")
    t.match(err, "failed to kill container unk%-x%-0: UNKNOWN: /runtime.v1.RuntimeService/StopContainer: shim gone")
    t.eq(rt:count("remove_container"), 3, "the other three were removed")
    local failed
    for _, c in ipairs(partial.containers) do
      if c.id == "unk-x-0" then
        failed = c
      end
    end
    t.eq(failed.done, false)
    t.match(failed.error, "^failed to kill")
    t.eq(rt:container_ids(), { "old-job-1", "unk-x-0", "unk-x-1", "web-app-2", "web-app-3", "web-init-0" })
    t.eq(#partial.sandboxes, 1, "the sandbox step still ran")
  end)

  t.it("deleted pods: nothing of them goes until all sources are ready, then everything", function()
    local rt = testing.runtime(node())
    local pc = sources({ "web-uid", "unk-uid" }, false)
    local g = new(rt, { config = pc })
    local plan = assert(g:plan())
    t.eq(plan.sources_ready, false)
    for _, c in ipairs(plan.containers) do
      t.ok(c.rule ~= "deleted-pod", c.id)
    end
    pc:merge("file", { op = "SET", pods = { { metadata = { uid = "web-uid", name = "web", namespace = "prod" } },
      { metadata = { uid = "unk-uid", name = "unk", namespace = "prod" } } } })
    plan = assert(g:plan())
    t.eq(plan.sources_ready, true)
    local rules = {}
    for _, c in ipairs(plan.containers) do
      rules[c.id] = c.rule
    end
    t.eq(rules["old-job-0"], "deleted-pod")
    t.eq(rules["old-job-1"], "deleted-pod")
    t.eq(ids_of(plan.sandboxes), { "old-sb-1", "old-sb-2" }, "every sandbox of a removed pod")
    t.eq(plan.sandboxes[1].rule, "deleted-pod")
    t.eq(rt:count("remove_container") + rt:count("remove_pod_sandbox"), 0, "a plan touches nothing")
  end)

  t.it("a pod with a deletion timestamp goes once nothing of it runs; evict_non_deleted adds terminated pods", function()
    local rt = testing.runtime(node())
    local pc = config.new{}
    pc:register("file")
    pc:merge("file", { op = "SET", pods = {
      { metadata = { uid = "web-uid", name = "web", namespace = "prod", deletionTimestamp = "2023-11-14T22:00:00Z" } },
      { metadata = { uid = "old-uid", name = "old", namespace = "prod" }, status = { phase = "Succeeded" } },
      { metadata = { uid = "unk-uid", name = "unk", namespace = "prod" } },
    } })
    local g = new(rt, { config = pc })
    local plan = assert(g:plan())
    local rules = {}
    for _, c in ipairs(plan.containers) do
      rules[c.id] = c.rule
    end
    t.eq(rules["web-app-0"], "max-per-pod-container", "web still runs a container: not removed as a pod")
    t.eq(rules["old-job-0"], "max-per-pod-container", "a succeeded pod is not deleted")
    t.eq(rules["old-job-1"], nil)
    plan = assert(g:plan{ evict_non_deleted = true })
    rules = {}
    for _, c in ipairs(plan.containers) do
      rules[c.id] = c.rule
    end
    t.eq(rules["old-job-0"], "terminated-pod")
    t.eq(rules["old-job-1"], "terminated-pod")
    t.eq(rules["web-init-0"], nil, "still runs: not terminated")
  end)

  t.it("log folders of removed pods only, once sources are ready; dangling links of exited containers", function()
    local rt = testing.runtime(node())
    local pods, links = logs .. "/pods", logs .. "/containers"
    S.sh(string.format("mkdir -p %s/prod_web_web-uid/app %s/prod_old_old-uid/job %s/old-uid %s/prod_x_x-uid %s",
      pods, pods, pods, pods, links))
    S.sh(string.format("printf 'twelve bytes' > %s/prod_old_old-uid/job/0.log; printf 'abc' > %s/old-uid/1.log", pods, pods))
    local exited = string.rep("e", 64)
    local function link(name, target)
      S.sh(string.format("ln -s %s %s/%s", target, links, name))
    end
    link("old_prod_job-" .. exited .. ".log", pods .. "/gone.log") -- dangling, container unknown to the runtime
    link("web_prod_app-web-app-3.log", pods .. "/nope.log") -- not a hex ID: ignored
    S.sh("echo hi > " .. pods .. "/prod_web_web-uid/app/0.log")
    link("web_prod_app-" .. string.rep("a", 64) .. ".log", pods .. "/prod_web_web-uid/app/0.log") -- target exists
    local g = new(rt, { config = sources({ "web-uid", "unk-uid", "x-uid" }) })
    local plan = assert(g:plan())
    t.eq(ids_of(plan.log_dirs), { pods .. "/old-uid", pods .. "/prod_old_old-uid" })
    t.eq(plan.log_dirs[1].bytes + plan.log_dirs[2].bytes, 15)
    t.eq(ids_of(plan.log_links), { links .. "/old_prod_job-" .. exited .. ".log" })
    t.ok(S.exists(pods .. "/prod_old_old-uid"), "a plan removes nothing")
    assert(g:run())
    t.ok(not S.exists(pods .. "/prod_old_old-uid"))
    t.ok(not S.exists(pods .. "/old-uid"))
    t.ok(S.exists(pods .. "/prod_web_web-uid/app/0.log"))
    t.ok(S.exists(pods .. "/prod_x_x-uid"))
    t.ok(not S.exists(links .. "/old_prod_job-" .. exited .. ".log"))
    t.ok(S.exists(links .. "/web_prod_app-" .. string.rep("a", 64) .. ".log"))
    -- sources not ready: no log folder is touched
    S.sh("mkdir -p " .. pods .. "/prod_old_old-uid")
    plan = assert(new(testing.runtime(node()), { config = sources({}, false) }):plan())
    t.eq(plan.log_dirs, {})
  end)

  t.it("a dangling link of a container that is not exited stays (log rotation)", function()
    local id = string.rep("c", 64)
    local state = testing.node{ time = NOW, pods = { { uid = "p", containers = {
      { name = "app", id = id, state = "running" } } } } }
    local links = logs .. "/containers"
    S.sh(string.format("mkdir -p %s && ln -s /nonexistent/x.log %s/p_default_app-%s.log", links, links, id))
    local plan = assert(new(testing.runtime(state)):plan())
    t.eq(plan.log_links, {})
  end)

  t.it("exited_grace protects containers that exited recently, whatever their creation time", function()
    local rt = testing.runtime(node())
    local g = new(rt, { exited_grace = 3600 })
    local plan = assert(g:plan())
    t.eq(plan.containers, {}, "everything exited less than an hour ago")
    t.eq(plan.summary.protected["exited-grace"], 8, "all 8 dead containers")
    rt.clock:advance(3600)
    plan = assert(g:plan())
    t.eq(ids_of(plan.containers), { "old-job-0", "unk-x-0", "web-app-0", "web-app-1" })
  end)

  t.it("keep_failed keeps a failed container and its pod's logs; then they go", function()
    local rt = testing.runtime(node())
    local pods = logs .. "/pods"
    S.sh("mkdir -p " .. pods .. "/prod_web_web-uid/app")
    local g = new(rt, { keep_failed = 600, max_per_pod_container = 0, config = sources({ "old-uid", "unk-uid" }) })
    local plan = assert(g:plan())
    local ids = ids_of(plan.containers)
    t.ok(not table.concat(ids, ","):find("web-app-2", 1, true), "the failed one stays: " .. table.concat(ids, ","))
    t.ok(table.concat(ids, ","):find("web-app-1", 1, true), "its successful siblings go (web is deleted)")
    t.eq(plan.summary.protected["keep-failed"], 1)
    t.eq(plan.log_dirs, {}, "the deleted pod keeps its logs while a failed container is kept")
    rt.clock:advance(600)
    plan = assert(g:plan())
    t.ok(table.concat(ids_of(plan.containers), ","):find("web-app-2", 1, true))
    t.eq(#plan.log_dirs, 1)
  end)

  t.it("keep_labels", function()
    local state = testing.node{ time = NOW, pods = { { uid = "p", containers = {
      { name = "data", attempt = 0, created = NOW - 30, labels = { ["kubelua.io/keep"] = "yes" } },
      { name = "data", attempt = 1, created = NOW - 20 },
      { name = "data", attempt = 2, created = NOW - 10 },
    } } } }
    local plan = assert(new(testing.runtime(state), { keep_labels = { ["kubelua.io/keep"] = true } }):plan())
    t.eq(#plan.containers, 1)
    t.eq(plan.containers[1].attempt, 1)
  end)

  t.it("a hook gets candidates and the default choice and returns the final list", function()
    local rt = testing.runtime(node())
    local seen
    local g = new(rt, { hooks = {
      containers = function(candidates, chosen, ctx)
        seen = { candidates = #candidates, chosen = #chosen, step = ctx.step, now = ctx.now }
        local out = {}
        for _, c in ipairs(chosen) do
          if c.pod_uid ~= "web-uid" then -- spare web
            out[#out + 1] = c
          end
        end
        out[#out + 1] = "web-init-0" -- and take this one, by ID
        return out
      end,
    } })
    local res = assert(g:run())
    t.eq(seen, { candidates = 8, chosen = 4, step = "containers", now = NOW })
    t.eq(ids_of(res.containers), { "old-job-0", "unk-x-0", "web-init-0" })
    local rules = {}
    for _, c in ipairs(res.containers) do
      rules[c.id] = c.rule
    end
    t.eq(rules, { ["old-job-0"] = "max-per-pod-container", ["unk-x-0"] = "max-per-pod-container",
      ["web-init-0"] = "policy" })
    t.eq(rt:container_ids(), { "old-job-1", "unk-x-1", "web-app-0", "web-app-1", "web-app-2", "web-app-3" })
  end)

  t.it("a hook that errors: nothing is deleted, the error comes with its traceback", function()
    local rt = testing.runtime(node())
    local g = new(rt, { hooks = {
      sandboxes = function()
        local x = nil
        return x.boom
      end,
    } })
    local res, err, code, partial = g:run()
    t.eq(res, nil)
    t.eq(code, "POLICY")
    t.match(err, "POLICY: sandboxes hook failed: .*attempt to index")
    t.match(err, "stack traceback")
    t.eq(partial.containers, {})
    t.eq(mutations(rt), {}, "not even the containers the step before chose")
  end)

  t.it("a hook may not remove a running container or an active sandbox", function()
    local rt = testing.runtime(node())
    local _, err, code = new(rt, { hooks = { containers = function() return { "web-app-3" } end } }):run()
    t.eq(code, "POLICY")
    t.match(err, "not a candidate")
    local sb
    for _, s in ipairs(rt.sandboxes) do
      if s.metadata.uid == "web-uid" then
        sb = s.id
      end
    end
    _, err, code = new(rt, { hooks = { sandboxes = function() return { sb } end } }):run()
    t.eq(code, "POLICY")
    t.match(err, "may not be removed: it is active")
    _, err = new(rt, { hooks = { logs = function() return "all" end } }):run()
    t.match(err, "returned string, not a list")
    t.eq(mutations(rt), {})
  end)

  t.it("a dry run's plan is exactly what the real run then does", function()
    local pods = logs .. "/pods"
    S.sh("mkdir -p " .. pods .. "/prod_old_old-uid")
    local rt = testing.runtime(node())
    local pc = sources({ "web-uid", "unk-uid" })
    local plan = assert(new(rt, { config = pc }):plan())
    t.eq(mutations(rt), {})
    local res = assert(new(rt, { config = pc }):run())
    local function shape(r)
      local out = {}
      for _, k in ipairs({ "containers", "sandboxes", "log_dirs", "log_links" }) do
        for _, e in ipairs(r[k]) do
          out[#out + 1] = k .. " " .. (e.id or e.path) .. " " .. e.rule
        end
      end
      table.sort(out)
      return out
    end
    t.eq(shape(res), shape(plan))
    t.ok(#shape(plan) >= 6)
    for _, c in ipairs(res.containers) do
      t.eq(c.done, true)
    end
  end)

  t.it("every step runs and errors are collected", function()
    local rt = testing.runtime(node())
    rt:fail("remove_container", "UNKNOWN", "disk on fire", { when = function(req) return req.container_id == "old-job-0" end })
    local pods = logs .. "/pods"
    S.sh("mkdir -p " .. pods .. "/prod_old_old-uid")
    local g = new(rt, { config = sources({ "web-uid", "unk-uid" }) })
    local res, err, code, partial = g:run()
    t.eq(res, nil)
    t.eq(code, "GC_FAILED")
    t.match(err, "failed to remove container old%-job%-0: UNKNOWN: .*disk on fire")
    -- old-sb-1 still holds old-job-0: listed again, it is active, so it stays
    local skipped
    for _, s in ipairs(partial.sandboxes) do
      if s.id == "old-sb-1" then
        skipped = s.skipped
      end
    end
    t.eq(skipped, "became active")
    t.ok(not S.exists(pods .. "/prod_old_old-uid"), "the log step ran")
    local left = table.concat(rt:sandbox_ids(), ",")
    t.ok(left:find("old-sb-1", 1, true), "the sandbox that became active is still there")
    t.ok(not left:find("old-sb-2", 1, true), "the other sandbox of the deleted pod went")
  end)

  t.it("a failed listing still lets the log step run", function()
    local rt = testing.runtime(node())
    rt:fail("list_containers", "UNAVAILABLE", "connection refused")
    local pods = logs .. "/pods"
    S.sh("mkdir -p " .. pods .. "/prod_old_old-uid")
    local _, err, code = new(rt, { config = sources({ "web-uid", "unk-uid" }) }):run()
    t.eq(code, "UNAVAILABLE")
    t.match(err, "failed to list the runtime: UNAVAILABLE")
    t.ok(not S.exists(pods .. "/prod_old_old-uid"))
  end)

  t.it("bad options are programming errors that name the option", function()
    local rt = testing.runtime(node())
    t.fails(function() gc.new{ runtime = rt, max_per_pod = 1 } end, "unknown option max_per_pod")
    t.fails(function() gc.new{ runtime = rt, min_age = -1 } end, "invalid minimum garbage collection age: %-1")
    t.fails(function() gc.new{ runtime = rt, hooks = { images = function() end } } end, "unknown hook images")
    t.fails(function() gc.new{} end, "option runtime")
  end)

  t.it("start/stop: runs periodically and reports failures as ContainerGCFailed events", function()
    local rt = testing.runtime(node())
    rt:fail("remove_container", "UNKNOWN", "nope")
    local events = {}
    local g = new(rt, { on_event = function(kind, reason, msg) events[#events + 1] = reason .. ": " .. msg end })
    g:start{ period = 0.01 }
    t.ok(S.wait_for(function() return #events >= 2 end, 5))
    local loop = g:stop()
    t.ok(S.wait_for(function() return loop.done end, 5))
    t.match(events[1], "^ContainerGCFailed: GC_FAILED: failed to remove container")
  end)
end)

t.describe("plans for people and programs", function()
  t.it("a plan counts the bytes it would free: writable layers and log folders", function()
    local dir = S.tmpdir("gcbytes")
    local state = testing.node{ time = NOW, pods = { { uid = "p", name = "web", namespace = "prod", containers = {
      { name = "app", attempt = 0, created = NOW - 30, bytes = 4096 },
      { name = "app", attempt = 1, created = NOW - 20, bytes = 1000 },
      { name = "app", attempt = 2, created = NOW - 10, bytes = 7 },
    } } } }
    S.sh("mkdir -p " .. dir .. "/prod_old_gone-uid && printf 0123456789 > " .. dir .. "/prod_old_gone-uid/0.log")
    local rt = testing.runtime(state)
    local g = gc.new{ runtime = rt, pod_logs_dir = dir, container_logs_dir = false, sources_ready = true,
      pod_removed = function(uid) return uid == "gone-uid" end, pod_terminated = function() return false end }
    local plan = assert(g:plan())
    t.eq(plan.bytes, 4096 + 1000 + 10)
    t.eq(plan.containers[1].pod, "prod/web", "derived from the CRI table")
    t.eq(plan.containers[1].attempt, 0)
    local res = assert(g:run())
    t.eq(res.bytes, 10, "a real run does not ask for container sizes unless told to")
    S.rm(dir)
  end)

  t.it("JSON: arrays, objects with sorted keys, escapes, exact 64-bit integers", function()
    local json = require "kubelua.json"
    t.eq(json.encode({ b = 1, a = { 1, 2.5, "x" }, e = json.array({}), o = {} }), '{"a":[1,2.5,"x"],"b":1,"e":[],"o":{}}')
    t.eq(json.encode("q\"\\\n\1"), '"q\\"\\\\\\n\\u0001"')
    t.eq(json.encode({ ns = 1700000000000000123LL, f = false }), '{"f":false,"ns":1700000000000000123}')
    t.fails(function() json.encode({ n = 0 / 0 }) end, "cannot encode nan")
    t.fails(function() json.encode({ f = print }) end, "cannot encode")
  end)

  t.it("the table names every removal, its rule and the totals", function()
    local report = require "kubelua.gc.report"
    local rt = testing.runtime(node())
    local plan = assert(gc.new{ runtime = rt, pod_logs_dir = "/nonexistent", container_logs_dir = false }:plan())
    local text = report.text(report.view(plan))
    t.match(text, "CONTAINER +POD +NAME +ATTEMPT +STATE +AGE +RULE")
    t.match(text, "web%-app%-0 +prod/web +app +0 +EXITED +6m +max%-per%-pod%-container")
    t.match(text, "unk%-x%-0 +prod/unk +x +0 +UNKNOWN +10m +max%-per%-pod%-container +kill, %-")
    t.match(text, "would remove 4 containers, 1 sandboxes, 0 log folders, 0 log links, 0 images")
    t.match(text, "pod sources are not ready")
    local view = report.view(plan)
    t.eq(view.containers[1].bytes, nil, "unknown sizes are absent, not false")
    t.eq(view.containers[1].kill_first, false)
  end)
end)

t.describe("the test kit", function()
  t.it("records round-trip through a file, exact to the nanosecond", function()
    local dir = S.tmpdir("rec")
    local state = node()
    state.images = { { id = "sha256:x", repo_tags = { "a:1" }, repo_digests = {}, size = 5, pinned = false } }
    state.sandboxes[1].labels["end"] = "a keyword key"
    state.sandboxes[1].labels["with \"quotes\"\nand newline"] = "\0binary\255"
    assert(testing.save(dir .. "/r.lua", state))
    local back = assert(testing.load(dir .. "/r.lua"))
    t.eq(tostring(back.containers[1].created_at), tostring(state.containers[1].created_at))
    t.eq(type(back.containers[1].created_at), "cdata")
    t.eq(testing.serialize(back), testing.serialize(state))
    t.eq(S.sh("ls " .. dir), "r.lua", "no temporary file left")
    -- a data file cannot run code
    local f = io.open(dir .. "/evil.lua", "w")
    f:write("return { x = os.exit(3) }")
    f:close()
    local v, err, code = testing.load(dir .. "/evil.lua")
    t.eq(v, nil)
    t.eq(code, "EINVAL")
    t.match(err, "os")
    S.rm(dir)
  end)

  t.it("serves filters, not-found errors and containerd's removal rules", function()
    local rt = testing.runtime(node())
    t.eq(#assert(rt:list_containers{ filter = { state = { state = "CONTAINER_RUNNING" } } }).containers, 1)
    t.eq(#assert(rt:list_containers{ filter = { id = "web-app" } }).containers, 4, "ID prefix")
    t.eq(#assert(rt:list_containers{ filter = { label_selector = { ["io.kubernetes.pod.uid"] = "old-uid" } } }).containers, 2)
    t.eq(#assert(rt:list_pod_sandbox{ filter = { state = { state = "SANDBOX_NOTREADY" } } }).items, 2)
    local _, err, code = rt:container_status{ container_id = "nope" }
    t.eq(code, "NOT_FOUND")
    t.match(err, "^NOT_FOUND: /runtime.v1.RuntimeService/ContainerStatus: ")
    _, _, code = rt:stop_pod_sandbox{ pod_sandbox_id = "nope" }
    t.eq(code, "NOT_FOUND")
    t.ok(rt:remove_container{ container_id = "nope" }, "removing something unknown succeeds")
    assert(rt:remove_pod_sandbox{ pod_sandbox_id = "old-sb-2" })
    t.eq(#assert(rt:list_containers{ filter = { label_selector = { ["io.kubernetes.pod.uid"] = "old-uid" } } }).containers, 1,
      "a sandbox takes its containers with it")
    local st = assert(rt:container_status{ container_id = "web-app-2" }).status
    t.eq(st.exit_code, 1)
    t.eq(testing.secs(st.finished_at), NOW - 150)
    t.eq(select(3, rt:exec_sync{ container_id = "web-app-2", cmd = { "true" } }), "UNKNOWN", "not running")
    rt:on_exec(function(req, c) return { stdout = c.metadata.name .. ":" .. req.cmd[1], stderr = "", exit_code = 3 } end)
    t.eq(assert(rt:exec_sync{ container_id = "web-app-3", cmd = { "x" } }), { stdout = "app:x", stderr = "", exit_code = 3 })
    rt.clock:advance(10)
    assert(rt:stop_container{ container_id = "web-app-3" })
    st = assert(rt:container_status{ container_id = "web-app-3" }).status
    t.eq(st.state, "CONTAINER_EXITED")
    t.eq(testing.secs(st.finished_at), NOW + 10)
    rt:fail("version", "UNAVAILABLE", "down", { times = 1 })
    t.eq(select(3, rt:version()), "UNAVAILABLE")
    t.ok(rt:version(), "times = 1")
    local c = assert(rt:list_containers{}).containers[1]
    c.metadata.name = "changed"
    t.ok(assert(rt:list_containers{}).containers[1].metadata.name ~= "changed", "callers get copies")
  end)
end)
