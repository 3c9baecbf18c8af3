-- The demo `make demo` runs: a tour of the CRI client against the private
-- containerd it starts. Run it yourself with
--   CONTAINER_RUNTIME_ENDPOINT=unix:///path/to/containerd.sock kubelua run examples/demo.lua
local cri = require "kubelua.cri"
local task = require "kubelua.task"

local IMAGE = "kubelua.local/busybox:latest"
local rt = assert(cri.connect())

local v = assert(rt:version{})
print(("runtime: %s %s (CRI %s) at %s"):format(v.runtime_name, v.runtime_version,
  v.runtime_api_version, rt.endpoint))

local uid = "demo-" .. os.time()
local logdir = os.tmpname() .. ".logs"
os.execute("mkdir -p " .. logdir)
local config = {
  metadata = { name = "web", namespace = "demo", uid = uid },
  log_directory = logdir,
  labels = { ["io.kubernetes.pod.name"] = "web", ["io.kubernetes.pod.uid"] = uid },
  linux = {
    cgroup_parent = "/kubelua-demo/pod" .. uid,
    security_context = { namespace_options = { network = "NODE" } },
  },
}
local pod = assert(rt:run_pod_sandbox{ config = config }).pod_sandbox_id
print("sandbox " .. pod:sub(1, 13) .. " ready")

local ids = {}
for i, spec in ipairs({
  { name = "httpd", cmd = { "httpd", "-f", "-p", "127.0.0.1:18480", "-h", "/etc" } },
  { name = "ticker", cmd = { "sh", "-c", "for i in $(seq 1 1000); do echo tick $i; sleep 1; done" } },
}) do
  local id = assert(rt:create_container{
    pod_sandbox_id = pod,
    config = { metadata = { name = spec.name }, image = { image = IMAGE }, command = spec.cmd,
      log_path = spec.name .. ".log", labels = { ["io.kubernetes.container.name"] = spec.name } },
    sandbox_config = config,
  }).container_id
  assert(rt:start_container{ container_id = id })
  ids[i] = id
end
task.sleep(1.5)

print("\ncontainers:")
for _, c in ipairs(assert(rt:list_containers{ filter = { pod_sandbox_id = pod } }).containers) do
  print(("  %-13s  %-8s  %s"):format(c.id:sub(1, 13), c.metadata.name, c.state))
end

local r = assert(rt:exec_sync{ container_id = ids[1], cmd = { "wget", "-qO-", "http://127.0.0.1:18480/hostname" }, timeout = 5 })
print("\nexec wget in httpd -> exit " .. r.exit_code .. ", body: " .. (r.stdout:gsub("\n", "")))

-- 50 concurrent calls, one connection
local t0 = task.monotime()
local calls = {}
for i = 1, 50 do
  calls[i] = function() return assert(rt:container_status{ container_id = ids[1 + i % 2] }) end
end
task.gather(calls)
print(("50 concurrent ContainerStatus calls in %.1f ms over %d connection(s)"):format(
  (task.monotime() - t0) * 1000, rt:stats().connects))

local log = io.open(logdir .. "/ticker.log"):read("*a")
print("\nticker log (CRI format):\n  " .. log:gsub("\n$", ""):gsub("\n", "\n  "))

for _, id in ipairs(ids) do
  assert(rt:stop_container{ container_id = id, timeout = 2 })
  assert(rt:remove_container{ container_id = id })
end
assert(rt:stop_pod_sandbox{ pod_sandbox_id = pod })
assert(rt:remove_pod_sandbox{ pod_sandbox_id = pod })
os.execute("rm -rf " .. logdir)
print("\ncleaned up: containers and sandbox removed")
