-- The policy of docs/first-policy.md (examples/policies/first-policy.lua)
-- against the test kit's fake runtime: what it keeps that kubelet's rules
-- would remove, what it still removes, the hold label, and the same plan
-- through `kubelua gc --dry-run --from --policy` as the guide runs it.
local t = require "spec.t"
local S = require "spec.support"
local gc = require "kubelua.gc"
local testing = require "kubelua.testing"

local POLICY = S.ROOT .. "/examples/policies/first-policy.lua"
local NOW = 1700000000

-- The policy as the agent loads it (kubelua.agent.policy checks its shape).
local function policy()
  local p = assert(require("kubelua.agent.policy").load_file("gc", POLICY, { trust = true }))
  return p
end

-- A GC of `state` with the policy's options (or none), logs in a temp dir.
local function new(rt, logs, with_policy)
  local opts = { runtime = rt, pod_logs_dir = logs .. "/pods", container_logs_dir = false }
  if with_policy then
    local p = policy()
    for k, v in pairs(p.options) do
      opts[k] = v
    end
    opts.hooks = p.hooks
  end
  return gc.new(opts)
end

local function ids(list)
  local out = {}
  for _, e in ipairs(list) do
    out[#out + 1] = e.id
  end
  table.sort(out)
  return out
end

-- web: app failed 10 min ago (attempt 0), then exited cleanly (attempt 1),
--      now running (attempt 2);
-- batch: job failed 2 h ago (0), failed 20 min ago (1), failed 5 min ago (2),
--        succeeded (3);
-- held: tool failed a day ago, labelled debug.example.com/hold=true (0),
--       then succeeded (1) and succeeded again (2).
local function node()
  return testing.node{ time = NOW, pods = {
    { uid = "web-uid", name = "web", namespace = "prod", containers = {
      { name = "app", attempt = 0, id = "web-app-0", created = NOW - 900, finished = NOW - 600, exit_code = 1 },
      { name = "app", attempt = 1, id = "web-app-1", created = NOW - 500, finished = NOW - 400, exit_code = 0 },
      { name = "app", attempt = 2, id = "web-app-2", created = NOW - 300, state = "running" },
    } },
    { uid = "batch-uid", name = "batch", namespace = "jobs", containers = {
      { name = "job", attempt = 0, id = "batch-job-0", created = NOW - 7300, finished = NOW - 7200, exit_code = 3 },
      { name = "job", attempt = 1, id = "batch-job-1", created = NOW - 1300, finished = NOW - 1200, exit_code = 3 },
      { name = "job", attempt = 2, id = "batch-job-2", created = NOW - 400, finished = NOW - 300, exit_code = 3 },
      { name = "job", attempt = 3, id = "batch-job-3", created = NOW - 200, finished = NOW - 100, exit_code = 0 },
    } },
    { uid = "held-uid", name = "held", namespace = "ops", containers = {
      { name = "tool", attempt = 0, id = "held-tool-0", created = NOW - 90000, finished = NOW - 86400,
        exit_code = 1, labels = { ["debug.example.com/hold"] = "true" } },
      { name = "tool", attempt = 1, id = "held-tool-1", created = NOW - 600, finished = NOW - 500, exit_code = 0 },
      { name = "tool", attempt = 2, id = "held-tool-2", created = NOW - 60, finished = NOW - 50, exit_code = 0 },
    } },
  } }
end

t.describe("examples/policies/first-policy.lua", function()
  local logs
  t.before_each(function()
    logs = S.tmpdir("firstpolicy")
  end)
  t.after_each(function()
    S.rm(logs)
  end)

  t.it("is a GC policy the agent's loader accepts, with options gc.new accepts", function()
    local p = policy()
    t.eq(type(p.hooks.containers), "function")
    t.eq(p.options.keep_labels, { ["debug.example.com/hold"] = "true" })
    t.ok(new(testing.runtime(node()), logs, true), "gc.new with the policy")
  end)

  t.it("without the policy: kubelet's rule keeps only the newest dead container of each", function()
    local plan = assert(new(testing.runtime(node()), logs, false):plan())
    t.eq(ids(plan.containers), { "batch-job-0", "batch-job-1", "batch-job-2", "held-tool-0", "held-tool-1", "web-app-0" })
  end)

  t.it("keeps each pod's newest failure of the last hour, and held containers", function()
    local plan = assert(new(testing.runtime(node()), logs, true):plan())
    -- web-app-0: the pod's newest failure, 10 min ago: kept.
    -- batch-job-2: the newest failure (5 min ago): kept; job-1 failed within
    --   the hour too but is not the newest: removed; job-0 is 2 h old: removed.
    -- held-tool-0: labelled: kept, though a day old; tool-1: removed.
    t.eq(ids(plan.containers), { "batch-job-0", "batch-job-1", "held-tool-1" })
    for _, c in ipairs(plan.containers) do
      t.eq(c.rule, "max-per-pod-container", c.id .. " goes by kubelet's rule")
    end
    t.eq(plan.summary.protected, { ["keep-label"] = 1 })
  end)

  t.it("an hour after the failure, it goes like any other", function()
    local rt = testing.runtime(node())
    rt.clock:advance(3600)
    local plan = assert(new(rt, logs, true):plan())
    t.eq(ids(plan.containers), { "batch-job-0", "batch-job-1", "batch-job-2", "held-tool-1", "web-app-0" })
  end)

  t.it("a run removes exactly what the plan said", function()
    local rt = testing.runtime(node())
    local res = assert(new(rt, logs, true):run())
    t.eq(ids(res.containers), { "batch-job-0", "batch-job-1", "held-tool-1" })
    t.eq(rt:container_ids(), { "batch-job-2", "batch-job-3", "held-tool-0", "held-tool-2", "web-app-0", "web-app-1",
      "web-app-2" })
  end)

  t.it("asks the runtime for exit codes the GC did not fetch", function()
    -- the hook alone (no keep_labels): entries come without exit codes
    local rt = testing.runtime(node())
    local g = gc.new{ runtime = rt, pod_logs_dir = logs .. "/pods", container_logs_dir = false,
      hooks = policy().hooks }
    local plan = assert(g:plan())
    t.eq(ids(plan.containers), { "batch-job-0", "batch-job-1", "held-tool-0", "held-tool-1" })
    t.ok(rt:count("container_status") > 0, "the hook asked ContainerStatus")
  end)

  t.it("`kubelua gc --dry-run --from REC --policy FILE` gives the same plan", function()
    local rec = logs .. "/node.rec.lua"
    assert(testing.save(rec, node()))
    local exe = S.sh("readlink /proc/$PPID/exe"):gsub("%s+$", "")
    local out = S.sh(string.format("%s gc --dry-run --json --from %s --policy %s --pod-logs-dir %s "
      .. "--container-logs-dir none 2>&1", exe, rec, POLICY, logs .. "/pods"))
    local view = require("kubelua.json").decode(out)
    t.ok(type(view) == "table" and view.containers, "JSON plan: " .. out)
    t.eq(ids(view.containers), { "batch-job-0", "batch-job-1", "held-tool-1" })
  end)
end)
