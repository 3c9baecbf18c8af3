-- The CRI client against the real, private containerd of the test run.
local t = require "spec.t"
local S = require "spec.support"
local cri = require "kubelua.cri"
local task = require "kubelua.task"

local ctd = assert(S.containerd(), "KUBELUA_TEST_CTD_DIR is not set (run through ctest)")
local IMAGE = "kubelua.local/busybox:latest"
local rt = assert(cri.connect(ctd.endpoint, { timeout = 30 }))

local function pod_config(name, uid, logdir)
  return {
    metadata = { name = name, uid = uid, namespace = "kubelua-test", attempt = 0 },
    log_directory = logdir,
    labels = { ["io.kubernetes.pod.name"] = name, ["io.kubernetes.pod.uid"] = uid, suite = "cri_e2e" },
    linux = {
      cgroup_parent = "/kubelua-test/pod" .. uid,
      security_context = { namespace_options = { network = "NODE", pid = "CONTAINER", ipc = "POD" } },
    },
  }
end

t.describe("runtime info", function()
  t.it("version", function()
    local v = assert(rt:version{})
    t.eq(v.runtime_name, "containerd")
    t.eq(v.runtime_api_version, "v1")
    t.match(v.runtime_version, "^v?1%.")
  end)
  t.it("status reports RuntimeReady", function()
    local st = assert(rt:status{ verbose = false })
    local ready = {}
    for _, c in ipairs(st.status.conditions) do
      ready[c.type] = c.status
    end
    t.eq(ready.RuntimeReady, true)
  end)
  t.it("images: list, status, filesystem info", function()
    local imgs = assert(rt:list_images{})
    local found
    for _, img in ipairs(imgs.images) do
      for _, tag in ipairs(img.repo_tags) do
        if tag == IMAGE then
          found = img
        end
      end
    end
    t.ok(found, "the busybox image is listed")
    t.match(found.id, "^sha256:")
    t.ok(found.size > 0)
    local st = assert(rt:image_status{ image = { image = IMAGE } })
    t.eq(st.image.id, found.id)
    local missing = assert(rt:image_status{ image = { image = "kubelua.local/none:1" } })
    t.eq(missing.image, nil, "an absent image has no status")
    local fs = assert(rt:image_fs_info{})
    t.ok(#fs.image_filesystems >= 1)
    -- containerd samples usage periodically: present, but may still be 0
    t.eq(type(fs.image_filesystems[1].used_bytes.value), "number")
    t.match(fs.image_filesystems[1].fs_id.mountpoint, "^/")
  end)
end)

t.describe("pod lifecycle", function()
  local logdir = S.tmpdir("logs")
  local uid = "e2e-" .. tostring(os.time()) .. "-" .. tostring(math.random(1e6))
  local config = pod_config("lifecycle", uid, logdir)
  local pod, cid

  t.it("runs a sandbox", function()
    local r = assert(rt:run_pod_sandbox{ config = config })
    pod = r.pod_sandbox_id
    t.match(pod, "^%x+$")
    local st = assert(rt:pod_sandbox_status{ pod_sandbox_id = pod })
    t.eq(st.status.state, "SANDBOX_READY")
    t.eq(st.status.metadata.uid, uid)
    t.eq(st.status.labels.suite, "cri_e2e")
  end)

  t.it("creates and starts a container that logs", function()
    local r = assert(rt:create_container{
      pod_sandbox_id = pod,
      config = {
        metadata = { name = "app", attempt = 0 },
        image = { image = IMAGE },
        -- ignores SIGTERM, so a stop must wait out the grace period and kill
        command = { "/bin/sh", "-c", "trap '' TERM; echo hello from app; while true; do sleep 1; done" },
        log_path = "app/0.log",
        labels = { ["io.kubernetes.container.name"] = "app" },
      },
      sandbox_config = config,
    })
    cid = r.container_id
    assert(rt:start_container{ container_id = cid })
    local st = assert(rt:container_status{ container_id = cid })
    t.eq(st.status.state, "CONTAINER_RUNNING")
    t.eq(type(st.status.started_at), "cdata", "nanosecond timestamps stay exact (boxed int64)")
    t.ok(S.wait_for(function()
      local log = S.read_file(logdir .. "/app/0.log")
      return log and log:find("stdout F hello from app", 1, true)
    end, 10), "the container's log is written in CRI format")
  end)

  t.it("exec_sync returns output and exit codes", function()
    local r = assert(rt:exec_sync{ container_id = cid, cmd = { "echo", "hi there" }, timeout = 10 })
    t.eq(r.stdout, "hi there\n")
    t.eq(r.exit_code, 0)
    r = assert(rt:exec_sync{ container_id = cid, cmd = { "sh", "-c", "echo oops >&2; exit 3" }, timeout = 10 })
    t.eq(r.stderr, "oops\n")
    t.eq(r.exit_code, 3)
  end)

  t.it("lists with filters", function()
    local all = assert(rt:list_containers{ filter = { pod_sandbox_id = pod } })
    t.eq(#all.containers, 1)
    t.eq(all.containers[1].id, cid)
    t.eq(all.containers[1].metadata.name, "app")
    local running = assert(rt:list_containers{ filter = { state = { state = "CONTAINER_RUNNING" },
      label_selector = { ["io.kubernetes.container.name"] = "app" }, pod_sandbox_id = pod } })
    t.eq(#running.containers, 1)
    local exited = assert(rt:list_containers{ filter = { state = { state = "CONTAINER_EXITED" }, pod_sandbox_id = pod } })
    t.eq(#exited.containers, 0)
    local pods = assert(rt:list_pod_sandbox{ filter = { label_selector = { suite = "cri_e2e" } } })
    t.ok(#pods.items >= 1)
    local stats = assert(rt:container_stats{ container_id = cid })
    t.eq(stats.stats.attributes.id, cid)
  end)

  t.it("stops (grace period honoured), removes", function()
    local started = task.monotime()
    assert(rt:stop_container{ container_id = cid, timeout = 1 })
    local took = task.monotime() - started
    t.ok(took >= 0.9 and took < 10, "stop took " .. took .. " s")
    local st = assert(rt:container_status{ container_id = cid })
    t.eq(st.status.state, "CONTAINER_EXITED")
    t.eq(st.status.exit_code, 137)
    local exited = assert(rt:list_containers{ filter = { state = { state = "CONTAINER_EXITED" }, pod_sandbox_id = pod } })
    t.eq(#exited.containers, 1)
    assert(rt:remove_container{ container_id = cid })
    local _, err, code = rt:container_status{ container_id = cid }
    t.eq(code, "NOT_FOUND")
    t.match(err, "^NOT_FOUND: /runtime%.v1%.RuntimeService/ContainerStatus: ")
    assert(rt:stop_pod_sandbox{ pod_sandbox_id = pod })
    assert(rt:remove_pod_sandbox{ pod_sandbox_id = pod })
    local gone = assert(rt:list_pod_sandbox{ filter = { id = pod } })
    t.eq(#gone.items, 0)
    S.rm(logdir)
  end)
end)

t.describe("every RPC", function()
  t.it("the client has a method for each of the 43 RPCs in the wire table", function()
    local n = 0
    for name in pairs(cri.methods) do
      n = n + 1
      t.eq(type(cri.Client[name]), "function", name)
    end
    t.eq(n, 43)
  end)
  t.it("each answers with a response or a gRPC status, never a transport error", function()
    local harmless = { remove_container = true, remove_pod_sandbox = true, stop_pod_sandbox = true }
    local seen = {}
    for name, m in pairs(cri.methods) do
      local req = {}
      if name:match("^remove_") or name:match("^stop_") then
        req = harmless[name] and {} or nil
      end
      if req and name ~= "update_runtime_config" then
        local resp, err, code
        if m.streaming then
          local s
          s, err, code = rt[name](rt, req, { timeout = 5 })
          if s then
            resp = s()
            err, code = s.err, s.code
            s:cancel()
          end
        else
          resp, err, code = rt[name](rt, req, { timeout = 10 })
        end
        t.ok(resp ~= nil or (code and code ~= "UNAVAILABLE" and code ~= "INTERNAL"),
          name .. ": " .. tostring(err))
        if code then
          t.match(err, "^" .. code .. ": " .. m.path:gsub("%.", "%%."), name)
        end
        seen[code or "OK"] = true
      end
    end
    t.ok(seen.UNIMPLEMENTED, "containerd 1.6 has UNIMPLEMENTED RPCs")
  end)
  t.it("UNIMPLEMENTED is a clean nil, err", function()
    local r, err, code = rt:list_metric_descriptors{}
    t.eq(r, nil)
    t.eq(code, "UNIMPLEMENTED")
    local events = assert(rt:get_container_events{})
    t.eq(events(), nil)
    t.eq(events.code, "UNIMPLEMENTED")
    local ok, err2, code2 = rt:get_container_events({}, function() end)
    t.eq(ok, nil)
    t.eq(code2, "UNIMPLEMENTED")
    t.match(err2, "GetContainerEvents")
  end)
end)

t.describe("multiplexing", function()
  t.it("100 concurrent calls share one connection", function()
    local client = assert(cri.connect(ctd.endpoint))
    local fns = {}
    for i = 1, 100 do
      fns[i] = function()
        if i % 2 == 0 then
          return assert(client:version{}).runtime_name
        end
        return #assert(client:list_images{}).images
      end
    end
    local res = task.gather(fns)
    for i = 1, 100 do
      t.ok(res[i][1], tostring(res[i][2]))
    end
    local st = client:stats()
    t.eq(st.connects, 1)
    t.eq(st.calls, 100)
    t.ok(st.writes < 100, "writes are coalesced (" .. st.writes .. " writes for 100 calls)")
    client:close()
  end)
end)

t.describe("runtime restart", function()
  t.it("calls fail with UNAVAILABLE while containerd is down, then work again", function()
    local client = assert(cri.connect(ctd.endpoint))
    assert(client:version{})
    local _, ok = S.sh("bash '" .. ctd.script .. "' kill '" .. ctd.dir .. "'")
    t.ok(ok, "containerd killed")
    local r, err, code = client:version{}
    t.eq(r, nil)
    t.eq(code, "UNAVAILABLE")
    t.match(err, "UNAVAILABLE: /runtime%.v1%.RuntimeService/Version: ")
    _, err, code = client:list_images{}
    t.eq(code, "UNAVAILABLE", err)
    local out
    out, ok = S.sh("bash '" .. ctd.script .. "' start '" .. ctd.dir .. "'")
    t.ok(ok, out)
    local took = S.wait_for(function()
      return client:version{} ~= nil
    end, 15, 0.1)
    t.ok(took, "the same client works again after the restart")
    t.ok(client:stats().connects >= 2)
    client:close()
  end)
end)
