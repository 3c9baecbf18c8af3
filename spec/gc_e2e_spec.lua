-- Container, sandbox and log GC against the real containerd: pods whose
-- containers exited (several attempts of one name), several pods, logs
-- written by containerd; GC under several policies, asserting exactly what
-- remains. The GC sees only this spec's pods (a label-scoped view of the
-- shared runtime), so leftovers of other specs are neither touched nor counted.
local t = require "spec.t"
local S = require "spec.support"
local gc = require "kubelua.gc"
local config = require "kubelua.config"

local ctd, rt = S.runtime({ timeout = 30 })
local IMAGE = "kubelua.local/busybox:latest"
local RUN = "gc-e2e-" .. os.time() .. "-" .. math.random(1e6)

-- The runtime as the GC sees it: only containers and sandboxes of this run.
local function scoped()
  local view = S.runtime_view(rt)
  local function scope(req)
    local r = {}
    for k, v in pairs(req or {}) do
      r[k] = v
    end
    r.filter = {}
    for k, v in pairs(req and req.filter or {}) do
      r.filter[k] = v
    end
    local sel = { ["kubelua.test/run"] = RUN }
    for k, v in pairs(r.filter.label_selector or {}) do
      sel[k] = v
    end
    r.filter.label_selector = sel
    return r
  end
  function view.list_containers(_, req, opts)
    return rt:list_containers(scope(req), opts)
  end
  function view.list_pod_sandbox(_, req, opts)
    return rt:list_pod_sandbox(scope(req), opts)
  end
  return view
end

local function labels(uid, name, extra)
  local l = { ["io.kubernetes.pod.uid"] = uid, ["io.kubernetes.pod.name"] = name,
    ["io.kubernetes.pod.namespace"] = "gc-test", ["kubelua.test/run"] = RUN }
  for k, v in pairs(extra or {}) do
    l[k] = v
  end
  return l
end

-- The node: every container is named by a key ("web/app/2") in `ids`.
--   web   (ready sandbox): app attempts 0..3 exited with codes 0,1,0,2; side running
--   batch (stopped sandbox): job attempts 0,1 and other 0, all exited
--   gone  (two stopped sandboxes): job 0 in the first, job 1 in the second
-- `node` is filled as things are made, so a failure half way leaves what
-- teardown needs.
local function make_node(logroot, node)
  local task = require "kubelua.task"
  node.ids, node.sandboxes, node.uids = {}, {}, {}
  local function pod_config(key, attempt)
    local uid = RUN .. "-" .. key
    node.uids[key] = uid
    return {
      metadata = { name = key, uid = uid, namespace = "gc-test", attempt = attempt },
      log_directory = logroot .. "/gc-test_" .. key .. "_" .. uid,
      labels = labels(uid, key),
      linux = { cgroup_parent = "/kubelua-test/pod" .. uid,
        security_context = { namespace_options = { network = "NODE" } } },
    }
  end
  -- the sandboxes two at a time (the slow part); containers one by one,
  -- so that their creation times follow the order below
  local keys = { "web", "batch", "gone/0", "gone/1" }
  local cfgs = { pod_config("web", 0), pod_config("batch", 0), pod_config("gone", 0), pod_config("gone", 1) }
  local fns
  for _, round in ipairs({ { 1, 3 }, { 2, 4 } }) do -- gone/0 before gone/1
    fns = {}
    for _, i in ipairs(round) do
      fns[#fns + 1] = function()
        node.sandboxes[keys[i]] = assert(rt:run_pod_sandbox{ config = cfgs[i] }).pod_sandbox_id
      end
    end
    for _, r in ipairs(task.gather(fns)) do
      assert(r[1], r[2])
    end
  end
  local function container(i, name, attempt, cmd)
    local cfg, podkey = cfgs[i], cfgs[i].metadata.name
    local id = assert(rt:create_container{ pod_sandbox_id = node.sandboxes[keys[i]], sandbox_config = cfg, config = {
      metadata = { name = name, attempt = attempt },
      image = { image = IMAGE },
      command = cmd,
      log_path = name .. "/" .. attempt .. ".log",
      labels = labels(cfg.metadata.uid, podkey, { ["io.kubernetes.container.name"] = name }),
    } }).container_id
    assert(rt:start_container{ container_id = id })
    node.ids[podkey .. "/" .. name .. "/" .. attempt] = id
  end
  local function exits(code)
    return { "sh", "-c", "echo bye; exit " .. code }
  end
  for attempt, code in ipairs({ 0, 1, 0, 2 }) do
    container(1, "app", attempt - 1, exits(code))
  end
  container(1, "side", 0, { "sleep", "3600" })
  container(2, "job", 0, exits(0))
  container(2, "job", 1, exits(3))
  container(2, "other", 0, exits(0))
  container(3, "job", 0, exits(0))
  container(4, "job", 1, exits(0))
  -- wait until every one but side has exited
  t.ok(S.wait_for(function()
    local r = assert(rt:list_containers{ filter = { label_selector = { ["kubelua.test/run"] = RUN },
      state = { state = "CONTAINER_EXITED" } } })
    return #r.containers == 8
  end, 20), "8 containers exited")
  fns = {}
  for _, key in ipairs({ "batch", "gone/0", "gone/1" }) do
    fns[#fns + 1] = function()
      assert(rt:stop_pod_sandbox{ pod_sandbox_id = node.sandboxes[key] })
    end
  end
  for _, r in ipairs(task.gather(fns)) do
    assert(r[1], r[2])
  end
  node.names = {}
  for key, id in pairs(node.ids) do
    node.names[id] = key
  end
  for key, id in pairs(node.sandboxes) do
    node.names[id] = key
  end
  return node
end

local function remaining(node)
  local cs = assert(rt:list_containers{ filter = { label_selector = { ["kubelua.test/run"] = RUN } } }).containers
  local ss = assert(rt:list_pod_sandbox{ filter = { label_selector = { ["kubelua.test/run"] = RUN } } }).items
  local c, s = {}, {}
  for _, x in ipairs(cs) do
    c[#c + 1] = node.names[x.id] or x.id
  end
  for _, x in ipairs(ss) do
    s[#s + 1] = node.names[x.id] or x.id
  end
  table.sort(c)
  table.sort(s)
  return c, s
end

local function ls(dir)
  local out = S.sh("ls " .. dir .. " 2>/dev/null")
  local names = {}
  for n in out:gmatch("[^\n]+") do
    names[#names + 1] = (n:gsub("^gc%-test_([%w]+)_.*$", "%1"))
  end
  table.sort(names)
  return names
end

local function teardown(node)
  local fns = {}
  for _, sb in pairs(node and node.sandboxes or {}) do
    fns[#fns + 1] = function()
      rt:stop_pod_sandbox{ pod_sandbox_id = sb }
      rt:remove_pod_sandbox{ pod_sandbox_id = sb }
    end
  end
  require("kubelua.task").gather(fns)
end

-- Sources that know `keys` (and are ready).
local function sources(node, keys)
  local pc = config.new{}
  pc:register("file")
  local pods = {}
  for _, k in ipairs(keys) do
    pods[#pods + 1] = { metadata = { uid = node.uids[k], name = k, namespace = "gc-test" }, spec = {} }
  end
  pc:merge("file", { op = "SET", pods = pods })
  return pc
end

t.describe("container GC against containerd", function()
  local logroot, node
  t.before_each(function()
    logroot = S.tmpdir("gce2e")
    node = {}
    make_node(logroot, node)
  end)
  t.after_each(function()
    teardown(node)
    node = nil
    S.rm(logroot)
  end)

  t.it("defaults, sources not ready: one dead container per (pod, name); older inactive sandboxes; no logs", function()
    -- containerd wrote the logs GC will clean
    t.eq(ls(logroot), { "batch", "gone", "web" })
    t.match(S.read_file(S.sh("ls -d " .. logroot .. "/gc-test_web_*") .. "/app/1.log") or "", "stdout F bye")
    local g = gc.new{ runtime = scoped(), pod_logs_dir = logroot, container_logs_dir = false }
    local res = assert(g:run())
    local c, s = remaining(node)
    t.eq(c, { "batch/job/1", "batch/other/0", "gone/job/1", "web/app/3", "web/side/0" })
    t.eq(s, { "batch", "gone/1", "web" }, "gone/0 lost its container and is not the newest")
    t.eq(#res.containers, 5)
    t.eq(ls(logroot), { "batch", "gone", "web" }, "log folders wait for the sources")
  end)

  t.it("a deleted pod goes entirely once the sources are ready: containers, sandboxes, logs", function()
    local g = gc.new{ runtime = scoped(), pod_logs_dir = logroot, container_logs_dir = false,
      config = sources(node, { "web", "batch" }) }
    assert(g:run())
    local c, s = remaining(node)
    t.eq(c, { "batch/job/1", "batch/other/0", "web/app/3", "web/side/0" })
    t.eq(s, { "batch", "web" })
    t.eq(ls(logroot), { "batch", "web" }, "only the removed pod's log folder went")
  end)

  t.it("node-wide cap 2, no per-unit limit: a share of 1 per unit, then the oldest across the node", function()
    local g = gc.new{ runtime = scoped(), pod_logs_dir = logroot, container_logs_dir = false,
      max_per_pod_container = -1, max_containers = 2 }
    local res = assert(g:run())
    local rules = {}
    for _, x in ipairs(res.containers) do
      rules[#rules + 1] = node.names[x.id] .. "=" .. x.rule
    end
    table.sort(rules)
    -- units: web/app (4), batch/job (2), batch/other (1), gone/job (2); share floor(2/4) -> 1;
    -- newest of each by creation: web/app/3 < batch/job/1 < batch/other/0 < gone/job/1
    t.eq(rules, { "batch/job/0=max-containers-share", "batch/job/1=max-containers",
      "gone/job/0=max-containers-share", "web/app/0=max-containers-share", "web/app/1=max-containers-share",
      "web/app/2=max-containers-share", "web/app/3=max-containers" })
    local c, s = remaining(node)
    t.eq(c, { "batch/other/0", "gone/job/1", "web/side/0" })
    t.eq(s, { "batch", "gone/1", "web" })
  end)

  t.it("keep_failed: with no dead container allowed, only the failed ones stay (and the deleted pod's logs)", function()
    local g = gc.new{ runtime = scoped(), pod_logs_dir = logroot, container_logs_dir = false,
      max_per_pod_container = 0, keep_failed = 600, config = sources(node, { "web", "gone" }) }
    assert(g:run())
    local c, s = remaining(node)
    t.eq(c, { "batch/job/1", "web/app/1", "web/app/3", "web/side/0" })
    t.eq(s, { "batch", "gone/1", "web" }, "batch keeps the sandbox its failed container uses")
    t.eq(ls(logroot), { "batch", "gone", "web" }, "batch is deleted but its failed container's logs stay")
  end)

  t.it("a dry run removes nothing, and its plan is what the real run then does", function()
    local opts = { runtime = scoped(), pod_logs_dir = logroot, container_logs_dir = false,
      config = sources(node, { "web" }) }
    local c0, s0 = remaining(node)
    local plan = assert(gc.new(opts):plan())
    local c1, s1 = remaining(node)
    t.eq(c1, c0)
    t.eq(s1, s0)
    t.eq(ls(logroot), { "batch", "gone", "web" })
    local res = assert(gc.new(opts):run())
    local function shape(r)
      local out = {}
      for _, k in ipairs({ "containers", "sandboxes" }) do
        for _, e in ipairs(r[k]) do
          out[#out + 1] = k .. " " .. node.names[e.id] .. " " .. e.rule
        end
      end
      for _, d in ipairs(r.log_dirs) do
        out[#out + 1] = "log " .. d.path .. " " .. d.rule
      end
      table.sort(out)
      return out
    end
    t.eq(shape(res), shape(plan))
    t.eq(#plan.containers, 8, "web/app 0-2 and every container of batch and gone")
    t.eq(#plan.sandboxes, 3, "batch, gone/0, gone/1")
    t.eq(#plan.log_dirs, 2)
    local c, s = remaining(node)
    t.eq(c, { "web/app/3", "web/side/0" })
    t.eq(s, { "web" })
    t.eq(ls(logroot), { "web" })
  end)
end)

t.describe("kubelua gc and record (CLI)", function()
  local dir, node
  t.after_each(function()
    teardown(node)
    S.rm(dir)
  end)
  t.it("record the node, then dry-run a policy against the recording", function()
    dir = S.tmpdir("gccli")
    node = {}
    make_node(dir .. "/logs", node)
    local exe = S.sh("readlink -f /proc/" .. S.sh("echo $PPID") .. "/exe") -- the binary running this spec
    local env = "CONTAINER_RUNTIME_ENDPOINT=" .. ctd.endpoint .. " KUBELUA_LUA_PATH=" .. S.ROOT .. "/lua "
    local out, ok = S.sh(env .. exe .. " record " .. dir .. "/node.rec.lua")
    t.ok(ok, out)
    t.match(out, "^recorded %d+ sandboxes, %d+ containers, %d+ images to ")
    local testing = require "kubelua.testing"
    local rec = assert(testing.load(dir .. "/node.rec.lua"))
    local mine = 0
    for _, c in ipairs(rec.containers) do
      if c.labels["kubelua.test/run"] == RUN then
        mine = mine + 1
        if c.state == "CONTAINER_EXITED" then
          t.ok(rec.statuses[c.id] and rec.statuses[c.id].finished_at ~= 0, "exit time recorded")
        end
      end
    end
    t.eq(mine, 10)
    local before = S.sh(env .. exe .. " -e 'return #require(\"kubelua.cri\").connect():list_containers{}.containers'")
    out, ok = S.sh(env .. exe .. " gc --dry-run --json --from " .. dir .. "/node.rec.lua --container-logs-dir none"
      .. " --pod-logs-dir " .. dir .. "/logs")
    t.ok(ok, out)
    t.match(out, '^{"bytes":')
    t.match(out, '"dry_run":true')
    t.match(out, '"rule":"max%-per%-pod%-container"')
    out, ok = S.sh(env .. exe .. " gc --dry-run --container-logs-dir none --pod-logs-dir " .. dir .. "/logs")
    t.ok(ok, out)
    t.match(out, "CONTAINER +POD +NAME")
    t.match(out, "would remove %d+ containers")
    t.eq(S.sh(env .. exe .. " -e 'return #require(\"kubelua.cri\").connect():list_containers{}.containers'"), before,
      "the dry runs removed nothing")
    -- a policy file: options and a hook that spares the web pod
    local f = assert(io.open(dir .. "/policy.lua", "w"))
    f:write([[
return { gc = { max_per_pod_container = 0, hooks = { containers = function(candidates, chosen)
  local out = {}
  for _, c in ipairs(chosen) do
    if c.pod_name ~= "web" then out[#out + 1] = c end
  end
  return out
end } } }
]])
    f:close()
    out, ok = S.sh(env .. exe .. " gc --dry-run --json --from " .. dir .. "/node.rec.lua --container-logs-dir none"
      .. " --pod-logs-dir " .. dir .. "/logs --policy " .. dir .. "/policy.lua")
    t.ok(ok, out)
    local mine = {}
    for pod in out:gmatch('"pod_uid":"' .. RUN:gsub("%-", "%%-") .. '%-(%w+)"') do
      mine[#mine + 1] = pod
    end
    table.sort(mine)
    -- containers: batch 3, gone 2 (web spared); sandboxes: gone/0 (batch keeps its only one)
    t.eq(mine, { "batch", "batch", "batch", "gone", "gone", "gone" })
    out, ok = S.sh(env .. exe .. " gc --bogus")
    t.ok(not ok)
    t.match(out, "unknown option %-%-bogus")
  end)
end)
