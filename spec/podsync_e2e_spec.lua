-- Pod workers (kubelua.podsync) against the real, private containerd.
local t = require "spec.t"
local S = require "spec.support"
local task = require "kubelua.task"
local podlib = require "kubelua.pod"
local podsync = require "kubelua.podsync"

local _, rt = S.runtime({ timeout = 30 })
local IMAGE = "kubelua.local/busybox:latest"
local SUITE = "podsync_e2e"
local PREFIX = string.format("psync-%d-%d-", os.time(), math.random(1e6))
local logs = S.tmpdir("podsync-logs")

-- A prepared pod of this spec (a 2 s grace period unless `spec` says).
local function make_pod(name, containers, spec)
  local p = { metadata = { name = name, uid = PREFIX .. name, labels = { suite = SUITE } },
    spec = { containers = containers, terminationGracePeriodSeconds = 2 } }
  for k, v in pairs(spec or {}) do
    p.spec[k] = v
  end
  for _, c in ipairs(containers) do
    c.image = c.image or IMAGE
    c.imagePullPolicy = c.imagePullPolicy or "IfNotPresent" -- no registry here
  end
  return assert(podlib.prepare(p, { source = "file", location = "test", node = "node1" }))
end

local function sh(script)
  return { "/bin/sh", "-c", script }
end

-- Runs body(ps) with a fresh podsync, closing it whatever happens.
local function with_podsync(opts, body)
  local o = { client = rt, node = "node1", pod_logs_dir = logs, resync = 0.1, retry = 0.5,
    backoff = { initial = 0.2, max = 1 } }
  for k, v in pairs(opts or {}) do
    o[k] = v
  end
  local ps = podsync.new(o)
  local ok, err = xpcall(body, debug.traceback, ps)
  ps:close()
  if not ok then
    error(err, 0)
  end
end

local function containers_of(uid, name)
  local r = assert(rt:list_containers{ filter = { label_selector = { ["io.kubernetes.pod.uid"] = uid,
    ["io.kubernetes.container.name"] = name } } })
  table.sort(r.containers, function(a, b)
    return a.metadata.attempt < b.metadata.attempt
  end)
  return r.containers
end

local function sandboxes_of(uid)
  return assert(rt:list_pod_sandbox{ filter = { label_selector = { ["io.kubernetes.pod.uid"] = uid } } }).items
end

local LOOP = "while true; do sleep 1; done"

-- A pod whose one container, "app", runs `sh -c cmd`.
local function app_pod(name, cmd, spec)
  return make_pod(name, { { name = "app", command = sh(cmd) } }, spec)
end

-- ps:update from the file source: op ADD, UPDATE or REMOVE of `pods`.
local function update(ps, op, pods)
  ps:update{ op = op, source = "file", pods = pods }
end

-- Removes `pod` through ps; t.ok that its sandbox is gone within `secs`.
local function remove(ps, pod, secs)
  update(ps, "REMOVE", { pod })
  t.ok(S.wait_for(function()
    return #sandboxes_of(pod.metadata.uid) == 0
  end, secs or 10), "sandbox removed")
end

-- Waits (up to `secs`) until ps reports the pod `uid` in phase `phase`.
local function in_phase(ps, uid, phase, secs)
  return S.wait_for(function()
    local st = ps:status(uid)
    return st and st.status.phase == phase
  end, secs)
end

local function running(uid, name)
  for _, c in ipairs(containers_of(uid, name)) do
    if c.state == "CONTAINER_RUNNING" then
      return c
    end
  end
end

local function wait_running(uid, name, timeout, not_id)
  local c
  S.wait_for(function()
    c = running(uid, name)
    return c and c.id ~= not_id
  end, timeout or 10)
  return c and c.id ~= not_id and c or nil
end

t.describe("a pod's life", function()
  -- ignores SIGTERM, so removal must wait out the 2 s grace period and kill
  local stubborn = "trap '' TERM; echo hello from app; while true; do sleep 1; done"
  local pod = app_pod("web", stubborn)
  local uid = pod.metadata.uid

  t.it("ADD runs the sandbox and container with kubelet's labels, logs to podLogsDir", function()
    with_podsync(nil, function(ps)
      local t0 = task.monotime()
      update(ps, "ADD", { pod })
      local c = wait_running(uid, "app", 15)
      t.ok(c, "the container runs")
      t.ok(task.monotime() - t0 < 10, "within seconds")
      local sbs = sandboxes_of(uid)
      t.eq(#sbs, 1)
      local sb = sbs[1]
      t.eq(sb.state, "SANDBOX_READY")
      t.eq(sb.labels["io.kubernetes.pod.name"], "web-node1")
      t.eq(sb.labels["io.kubernetes.pod.namespace"], "default")
      t.eq(sb.labels["io.kubernetes.pod.uid"], uid)
      t.eq(sb.labels[podsync.MANAGED_BY], "kubelua")
      t.eq(sb.labels.suite, SUITE)
      t.eq(sb.annotations["kubernetes.io/config.hash"], uid)
      local sst = assert(rt:pod_sandbox_status{ pod_sandbox_id = sb.id, verbose = true })
      t.eq(sst.status.linux.namespaces.options.network, "NODE")
      t.eq(c.labels["io.kubernetes.container.name"], "app")
      t.eq(c.labels["io.kubernetes.pod.uid"], uid)
      t.eq(c.labels[podsync.MANAGED_BY], "kubelua")
      t.eq(c.annotations["io.kubernetes.container.hash"], podsync.labels.container_hash(pod.spec.containers[1]))
      t.match(c.annotations["io.kubernetes.container.hash"], "^%x+$")
      t.eq(c.annotations["io.kubernetes.container.restartCount"], "0")
      t.eq(c.annotations["io.kubernetes.container.terminationMessagePath"], "/dev/termination-log")
      t.eq(c.annotations["io.kubernetes.container.terminationMessagePolicy"], "File")
      t.eq(c.annotations["io.kubernetes.pod.terminationGracePeriod"], "2")
      t.eq(c.pod_sandbox_id, sb.id)
      local path = string.format("%s/default_web-node1_%s/app/0.log", logs, uid)
      t.ok(S.wait_for(function()
        local s = S.read_file(path)
        return s and s:find("hello from app", 1, true)
      end, 10), "log written at " .. path)
      t.ok(in_phase(ps, uid, "Running", 5), "status says Running")
      local st = ps:status(uid)
      t.eq(st.containers.app.id, c.id)
      t.eq(st.status.containerStatuses[1].ready, true)
      t.eq(st.status.containerStatuses[1].containerID, c.id)
      t.eq(#ps:pods(), 1)
      local started = false
      for _, r in ipairs(st.last_sync.results) do
        started = started or (r.action == "StartContainer" and r.target == "app" and r.error == nil)
      end
      t.ok(started or st.syncs > 1, "sync results recorded")
    end)
  end)

  t.it("changed(gen) lists a pod when its state or probe results change, not on quiet resyncs", function()
    with_podsync(nil, function(ps)
      local uids, gen = ps:changed(0)
      t.eq(#uids, 0, "nothing before the first update")
      update(ps, "ADD", { pod }) -- adopts the running container
      uids, gen = ps:changed(gen)
      t.eq(uids, { uid }, "a new pod is a change")
      t.ok(in_phase(ps, uid, "Running", 10), "adopted and Running")
      local syncs = ps:status(uid).syncs
      uids, gen = ps:changed(gen)
      task.sleep(1) -- about ten resyncs at 0.1 s, with nothing to do
      t.ok(ps:status(uid).syncs >= syncs + 3, "the worker kept resyncing")
      uids, gen = ps:changed(gen)
      t.eq(#uids, 0, "quiet resyncs are not changes")
      local id = ps:status(uid).containers.app.id
      ps:on_probe_result(uid, "app", "readiness", "Success", id)
      uids, gen = ps:changed(gen)
      t.eq(uids, { uid }, "a new probe result is a change")
      ps:on_probe_result(uid, "app", "readiness", "Success", id)
      uids, gen = ps:changed(gen)
      t.eq(#uids, 0, "the same result again is not")
      t.eq(ps:status(uid).containers.app.id, id, "still the adopted container")
    end)
  end)

  t.it("a second podsync on the same runtime adopts the pod; UPDATE replaces the container", function()
    with_podsync(nil, function(ps)
      local before = running(uid, "app")
      t.ok(before)
      update(ps, "ADD", { pod })
      t.ok(S.wait_for(function()
        local st = ps:status(uid)
        return st and st.syncs >= 3
      end, 5))
      t.eq(#sandboxes_of(uid), 1, "no second sandbox")
      t.eq(#containers_of(uid, "app"), 1, "no duplicate container")
      t.eq(running(uid, "app").id, before.id, "the running container is adopted")
      t.eq(ps:status(uid).containers.app.id, before.id)

      -- a changed command: killed (2 s grace, TERM ignored) and replaced
      local changed = app_pod("web", (stubborn:gsub("hello", "changed")))
      update(ps, "UPDATE", { changed })
      local c = wait_running(uid, "app", 15, before.id)
      t.ok(c, "a new container runs")
      t.eq(c.annotations["io.kubernetes.container.restartCount"], "1")
      t.eq(c.metadata.attempt, 1)
      t.eq(c.annotations["io.kubernetes.container.hash"], podsync.labels.container_hash(changed.spec.containers[1]))
      local old = assert(rt:container_status{ container_id = before.id })
      t.eq(old.status.state, "CONTAINER_EXITED")
      t.eq(#sandboxes_of(uid), 1, "same sandbox")
      t.ok(S.wait_for(function()
        local s = S.read_file(string.format("%s/default_web-node1_%s/app/1.log", logs, uid))
        return s and s:find("changed from app", 1, true)
      end, 10), "the new instance logs to app/1.log")

      -- REMOVE: the stubborn container is killed after the 2 s grace period
      local t0 = task.monotime()
      remove(ps, changed, 15)
      local took = task.monotime() - t0
      t.ok(took >= 1.9 and took < 8, "removal honoured the 2 s grace period: took " .. took)
      t.ok(S.wait_for(function()
        return ps:status(uid) == nil
      end, 5), "worker gone")
    end)
  end)
end)

t.describe("restarts", function()
  t.it("a crashing container restarts with the scaled CrashLoopBackOff delays", function()
    local pod = make_pod("crash", { { name = "boom", command = sh("echo boom; exit 3") } })
    local uid = pod.metadata.uid
    with_podsync(nil, function(ps)
      update(ps, "ADD", { pod })
      local seen_backoff = false
      t.ok(S.wait_for(function()
        local st = ps:status(uid)
        for _, r in ipairs(st and st.last_sync and st.last_sync.results or {}) do
          if r.error == "CrashLoopBackOff" then
            seen_backoff = true
            t.match(r.message, "^back%-off [%d.]+s restarting failed container=boom pod=crash%-node1_default%(")
            t.eq(r.action, "StartContainer")
          end
        end
        local cs = containers_of(uid, "boom")
        return #cs >= 7 or (#cs == 6 and cs[6].state ~= "CONTAINER_CREATED")
      end, 20), "restart count grows")
      t.ok(seen_backoff, "a CrashLoopBackOff sync result was reported")
      local cs = containers_of(uid, "boom")
      local st = {}
      for i, c in ipairs(cs) do
        st[i] = assert(rt:container_status{ container_id = c.id }).status
        t.eq(c.metadata.attempt, i - 1)
        t.eq(c.annotations["io.kubernetes.container.restartCount"], tostring(i - 1))
      end
      -- kubelet's sequence: the first restart at once, then initial doubling to
      -- max. The lower bound is the back-off; the upper one only says nothing
      -- stalled (it includes PLEG noticing the exit and CreateContainer, which
      -- take a while on a loaded machine).
      local want = { 0, 0.2, 0.4, 0.8, 1 }
      for i = 1, 5 do
        do
          local gap = (tonumber(st[i + 1].started_at) - tonumber(st[i].finished_at)) / 1e9
          t.ok(gap >= want[i] - 0.02 and gap < want[i] + 2,
            string.format("restart %d after %.3f s (want %.1f s)", i, gap, want[i]))
        end
      end
      local s = ps:status(uid)
      t.ok(s.status.phase == "Running" or s.status.phase == "Pending", "phase " .. s.status.phase)
      remove(ps, pod)
    end)
  end)

  t.it("restartPolicy Never: not restarted", function()
    local pod = make_pod("once", { { name = "one", command = sh("exit 1") } }, { restartPolicy = "Never" })
    local uid = pod.metadata.uid
    with_podsync(nil, function(ps)
      update(ps, "ADD", { pod })
      t.ok(in_phase(ps, uid, "Failed", 10), "phase Failed")
      task.sleep(1)
      t.eq(#containers_of(uid, "one"), 1, "one instance only")
      t.eq(ps:status(uid).containers.one.exit_code, 1)
      remove(ps, pod)
    end)
  end)

  t.it("a liveness failure kills and restarts the container; readiness only flips ready", function()
    local pod = make_pod("live", { { name = "app", command = sh(LOOP),
      readinessProbe = { exec = { command = { "true" } } } } })
    local uid = pod.metadata.uid
    with_podsync(nil, function(ps)
      update(ps, "ADD", { pod })
      local c = wait_running(uid, "app", 15)
      t.ok(c)
      t.ok(S.wait_for(function()
        return ps:status(uid).containers.app
      end, 5))
      t.eq(ps:status(uid).status.containerStatuses[1].ready, false, "not ready before a readiness success")
      ps:on_probe_result(uid, "app", "readiness", "Success", c.id)
      t.eq(ps:status(uid).status.containerStatuses[1].ready, true)
      ps:on_probe_result(uid, "app", "readiness", "Failure", c.id)
      task.sleep(0.5)
      t.eq(ps:status(uid).status.containerStatuses[1].ready, false)
      t.eq(running(uid, "app").id, c.id, "readiness failure does not restart")

      ps:on_probe_result(uid, "app", "liveness", "Failure", c.id)
      local n = wait_running(uid, "app", 15, c.id)
      t.ok(n, "restarted after a liveness failure")
      t.eq(n.metadata.attempt, 1)
      t.eq(assert(rt:container_status{ container_id = c.id }).status.state, "CONTAINER_EXITED")
      task.sleep(0.5)
      t.eq(running(uid, "app").id, n.id, "the new instance is not killed by the old result")
      remove(ps, pod)
    end)
  end)
end)

t.describe("ownership", function()
  t.it("never touches a sandbox without our label, even with the pod's uid", function()
    local pod = app_pod("foreign", LOOP)
    local uid = pod.metadata.uid
    local foreign = assert(rt:run_pod_sandbox{ config = {
      metadata = { name = "foreign", uid = uid, namespace = "other", attempt = 0 },
      log_directory = logs .. "/foreign",
      labels = { ["io.kubernetes.pod.uid"] = uid, suite = SUITE },
      linux = { cgroup_parent = "/kubelua-test/foreign" .. uid,
        security_context = { namespace_options = { network = "NODE", pid = "CONTAINER", ipc = "POD" } } },
    } }).pod_sandbox_id
    with_podsync(nil, function(ps)
      update(ps, "ADD", { pod })
      t.ok(wait_running(uid, "app", 15))
      update(ps, "REMOVE", { pod })
      t.ok(S.wait_for(function()
        return ps:status(uid) == nil
      end, 10))
      local left = sandboxes_of(uid)
      t.eq(#left, 1, "only the foreign sandbox is left")
      t.eq(left[1].id, foreign)
      t.eq(left[1].state, "SANDBOX_READY")
    end)
  end)
end)

t.describe("isolation and errors", function()
  t.it("a slow runtime call for one pod does not stall another; a missing image is ErrImagePull", function()
    local slow = app_pod("slow", LOOP)
    local fast = app_pod("fast", LOOP)
    local noimg = make_pod("noimg", { { name = "app", image = "kubelua.local/absent:1", command = sh("true") } })
    -- a client whose RunPodSandbox takes 3 s more for the slow pod
    local proxy = S.runtime_view(rt)
    function proxy.run_pod_sandbox(_, req)
      if req.config.metadata.uid == slow.metadata.uid then
        task.sleep(3)
      end
      return rt:run_pod_sandbox(req)
    end
    with_podsync({ client = proxy }, function(ps)
      local t0 = task.monotime()
      update(ps, "ADD", { slow, noimg })
      task.sleep(0.3)
      update(ps, "ADD", { fast })
      t.ok(wait_running(fast.metadata.uid, "app", 10), "the fast pod runs")
      t.ok(task.monotime() - t0 < 2.5, "while the slow pod's sandbox is still being made")
      t.eq(#sandboxes_of(slow.metadata.uid), 0)
      t.ok(wait_running(slow.metadata.uid, "app", 10), "the slow pod runs later")
      local errs = {}
      t.ok(S.wait_for(function()
        local st = ps:status(noimg.metadata.uid)
        for _, r in ipairs(st and st.last_sync and st.last_sync.results or {}) do
          if r.action == "StartContainer" and r.error then
            errs[r.error] = true
          end
        end
        return errs.ErrImagePull and errs.ImagePullBackOff
      end, 10), "ErrImagePull, then ImagePullBackOff")
      local st = ps:status(noimg.metadata.uid)
      t.match(st.status.containerStatuses[1].state.waiting.reason, "^%u%a+")
      update(ps, "REMOVE", { slow, fast, noimg })
      t.ok(S.wait_for(function()
        return #ps:pods() == 0
      end, 10), "all removed")
    end)
  end)
end)

t.describe("cleanup", function()
  t.it("removes every sandbox this spec created", function()
    local r = assert(rt:list_pod_sandbox{ filter = { label_selector = { suite = SUITE } } })
    for _, sb in ipairs(r.items) do
      rt:stop_pod_sandbox{ pod_sandbox_id = sb.id }
      assert(rt:remove_pod_sandbox{ pod_sandbox_id = sb.id })
    end
    S.rm(logs)
    t.eq(#assert(rt:list_pod_sandbox{ filter = { label_selector = { suite = SUITE } } }).items, 0)
  end)
end)
