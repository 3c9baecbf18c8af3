-- kubelua.podsync.labels: the CRI configs kubelet would send for a pod and
-- its containers, with kubelet's labels and annotations (behaviour 6.5),
-- plus the label that marks what kubelua created.
--
--   local L = require "kubelua.podsync.labels"
--   local cfg = L.sandbox_config(pod, { pod_logs_dir = "/var/log/pods", attempt = 0 })
--   local ccfg = L.container_config(pod, container, { restart_count = 0, image = "sha256:..." })
--   L.container_hash(container)   --> 16 hex digits
local json = require "kubelua.json"
local podlib = require "kubelua.pod"

local M = {}

-- The labels kubelet puts on every sandbox and container it creates.
M.POD_NAME = "io.kubernetes.pod.name"
M.POD_NAMESPACE = "io.kubernetes.pod.namespace"
M.POD_UID = "io.kubernetes.pod.uid"
M.CONTAINER_NAME = "io.kubernetes.container.name"
M.CONTAINER_HASH = "io.kubernetes.container.hash"
M.RESTART_COUNT = "io.kubernetes.container.restartCount"
M.TERMINATION_MESSAGE_PATH = "io.kubernetes.container.terminationMessagePath"
M.TERMINATION_MESSAGE_POLICY = "io.kubernetes.container.terminationMessagePolicy"
M.CONTAINER_PORTS = "io.kubernetes.container.ports"
M.POD_TERMINATION_GRACE = "io.kubernetes.pod.terminationGracePeriod"
M.POD_DELETION_GRACE = "io.kubernetes.pod.deletionGracePeriod"
-- Ours: set on every sandbox and container kubelua creates; podsync never
-- touches an object without it.
M.MANAGED_BY = "io.kubelua.managed-by"
M.MANAGED_BY_VALUE = "kubelua"

-- The spec hash of a container: 64 bits of a hash over a canonical rendering
-- of the (defaulted) container spec, as hex. Any spec change changes it.
function M.container_hash(c)
  return podlib.hash(podlib.canonical(c)):sub(1, 16)
end

-- pod_log_dir(root, pod) -> "<root>/<namespace>_<name>_<uid>", the pod's log folder.
function M.pod_log_dir(pod_logs_dir, pod)
  local md = pod.metadata
  return string.format("%s/%s_%s_%s", pod_logs_dir, md.namespace, md.name, md.uid)
end

-- Selector matching every object of one pod that we created.
function M.pod_selector(uid)
  return { [M.POD_UID] = uid, [M.MANAGED_BY] = M.MANAGED_BY_VALUE }
end

local function namespace_options()
  -- host network on this machine's runtime (see podsync.lua)
  return { network = "NODE", pid = "CONTAINER", ipc = "POD" }
end

function M.sandbox_config(pod, opts)
  local md = pod.metadata
  local labels = {}
  for k, v in pairs(md.labels or {}) do
    labels[k] = tostring(v)
  end
  labels[M.POD_NAME], labels[M.POD_NAMESPACE], labels[M.POD_UID] = md.name, md.namespace, md.uid
  labels[M.MANAGED_BY] = M.MANAGED_BY_VALUE
  local annotations = {}
  for k, v in pairs(md.annotations or {}) do
    annotations[k] = tostring(v)
  end
  return {
    metadata = { name = md.name, namespace = md.namespace, uid = md.uid, attempt = opts.attempt or 0 },
    log_directory = M.pod_log_dir(opts.pod_logs_dir, pod),
    labels = labels,
    annotations = annotations,
    linux = {
      cgroup_parent = "/kubelua/pod" .. md.uid,
      security_context = { namespace_options = namespace_options() },
    },
  }
end

-- grace_seconds(pod) -> terminationGracePeriodSeconds, 30 when unset.
local function grace_seconds(pod)
  return pod.spec.terminationGracePeriodSeconds or 30
end
M.grace_seconds = grace_seconds

function M.container_config(pod, c, opts)
  local md = pod.metadata
  local rc = opts.restart_count or 0
  local envs = {}
  for _, e in ipairs(c.env or {}) do
    if e.value ~= nil or e.valueFrom == nil then
      envs[#envs + 1] = { key = e.name, value = tostring(e.value or "") }
    end
  end
  local annotations = {
    [M.CONTAINER_HASH] = M.container_hash(c),
    [M.RESTART_COUNT] = tostring(rc),
    [M.TERMINATION_MESSAGE_PATH] = c.terminationMessagePath or "/dev/termination-log",
    [M.TERMINATION_MESSAGE_POLICY] = c.terminationMessagePolicy or "File",
    [M.POD_TERMINATION_GRACE] = tostring(grace_seconds(pod)),
  }
  if c.ports and #c.ports > 0 then
    annotations[M.CONTAINER_PORTS] = json.encode(json.array(c.ports))
  end
  if md.deletionGracePeriodSeconds then
    annotations[M.POD_DELETION_GRACE] = tostring(md.deletionGracePeriodSeconds)
  end
  return {
    metadata = { name = c.name, attempt = rc },
    image = { image = opts.image or c.image, user_specified_image = c.image },
    command = c.command,
    args = c.args,
    working_dir = c.workingDir,
    envs = envs,
    labels = {
      [M.POD_NAME] = md.name,
      [M.POD_NAMESPACE] = md.namespace,
      [M.POD_UID] = md.uid,
      [M.CONTAINER_NAME] = c.name,
      [M.MANAGED_BY] = M.MANAGED_BY_VALUE,
    },
    annotations = annotations,
    log_path = string.format("%s/%d.log", c.name, rc),
    stdin = c.stdin or false,
    stdin_once = c.stdinOnce or false,
    tty = c.tty or false,
    linux = { security_context = { namespace_options = namespace_options() } },
  }
end

return M
