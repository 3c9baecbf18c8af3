-- kubelua.sync_result: what a pod sync did, in kubelet's words
-- (kubelet-behaviour.md 7.2), and container references for events.
--
--   local sr = require "kubelua.sync_result"
--   local pod_res = sr.pod()
--   local r = sr.new(sr.actions.StartContainer, "app")
--   r:fail(sr.errors.CrashLoopBackOff, "back-off 20s restarting failed container=app pod=web_default(uid)")
--   pod_res:add(r)
--   pod_res:error()  --> `failed to "StartContainer" for "app" with CrashLoopBackOff: "back-off ..."`
--   local ref = sr.container_ref(pod, "app")   -- the event's involvedObject
local M = {}

-- SyncAction values.
M.actions = {
  StartContainer = "StartContainer",
  KillContainer = "KillContainer",
  InitContainer = "InitContainer",
  CreatePodSandbox = "CreatePodSandbox",
  ConfigPodSandbox = "ConfigPodSandbox",
  KillPodSandbox = "KillPodSandbox",
  ResizePodInPlace = "ResizePodInPlace",
  RemoveContainer = "RemoveContainer",
}

-- Error values, keyed by kubelet's Go names without the Err prefix.
M.errors = {
  CrashLoopBackOff = "CrashLoopBackOff",
  ContainerNotFound = "no matching container",
  RunContainer = "RunContainerError",
  KillContainer = "KillContainerError",
  CreatePodSandbox = "CreatePodSandboxError",
  ConfigPodSandbox = "ConfigPodSandboxError",
  KillPodSandbox = "KillPodSandboxError",
  ResizePodInPlace = "ResizePodInPlaceError",
  RemoveContainer = "RemoveContainerError",
}

-- Other timings the pod sync loop uses.
M.BACKOFF_PERIOD = 10 -- requeue after a sync error
M.HOUSEKEEPING_PERIOD = 2 -- seconds between housekeeping passes
M.MIN_GRACE_PERIOD = 2 -- minimumGracePeriodInSeconds

local Result = {}
Result.__index = Result

-- new(action, target) -> a SyncResult { action =, target =, error = nil, message = nil }
function M.new(action, target)
  assert(M.actions[action] == action, "kubelua.sync_result.new: unknown action " .. tostring(action))
  return setmetatable({ action = action, target = target }, Result)
end

-- fail(err, message): err is one of M.errors (or any string).
function Result:fail(err, message)
  self.error = err
  self.message = message or ""
  return self
end

function Result:ok()
  return self.error == nil
end

-- quote(s) -> s quoted as Go's %q would, as kubelet's messages show names.
local function go_quote(s)
  s = tostring(s)
  return '"' .. s:gsub('[\\"]', "\\%0"):gsub("\n", "\\n"):gsub("\t", "\\t") .. '"'
end
M.quote = go_quote

-- `failed to "ACTION" for "TARGET" with ERROR: "MESSAGE"`
function Result:describe()
  return string.format("failed to %s for %s with %s: %s", go_quote(self.action), go_quote(self.target),
    tostring(self.error), go_quote(self.message or ""))
end

local Pod = {}
Pod.__index = Pod

-- pod() -> a PodSyncResult { results = {}, sync_error = nil }
function M.pod()
  return setmetatable({ results = {} }, Pod)
end

function Pod:add(r)
  self.results[#self.results + 1] = r
  return r
end

-- Merge another pod result's results (and its sync error, if this has none).
function Pod:add_pod(other)
  for _, r in ipairs(other.results) do
    self.results[#self.results + 1] = r
  end
  if not self.sync_error then
    self.sync_error = other.sync_error
  end
end

function Pod:fail(err)
  self.sync_error = err
end

-- The aggregated error text (nil when everything succeeded): the sync error
-- as "failed to SyncPod: ...", then each failed result; several errors are
-- joined as Go's aggregate prints them ("[a, b]").
function Pod:error()
  local errs = {}
  if self.sync_error then
    errs[#errs + 1] = "failed to SyncPod: " .. tostring(self.sync_error)
  end
  for _, r in ipairs(self.results) do
    if r.error then
      errs[#errs + 1] = r:describe()
    end
  end
  if #errs == 0 then
    return nil
  elseif #errs == 1 then
    return errs[1]
  end
  return "[" .. table.concat(errs, ", ") .. "]"
end

-- ------------------------------------------------------------ backoff errors

local Backoff = {}
Backoff.__index = Backoff
Backoff.__tostring = function(e)
  return e.message
end

-- A backoff error carries when the backoff expires (seconds).
function M.backoff_error(message, expiry)
  return setmetatable({ message = message, expiry = expiry, backoff = true }, Backoff)
end

-- The earliest backoff expiry found in err: a backoff error, a pod result
-- (its sync error and the errors of its results), or a list of those.
-- -> expiry | nil
function M.min_backoff_expiration(err)
  local best
  local function walk(e, depth)
    if depth > 16 or type(e) ~= "table" then
      return
    end
    if getmetatable(e) == Backoff then
      if not best or e.expiry < best then
        best = e.expiry
      end
      return
    end
    if getmetatable(e) == Pod then
      walk(e.sync_error, depth + 1)
      for _, r in ipairs(e.results) do
        walk(r.error, depth + 1)
      end
      return
    end
    for _, x in ipairs(e) do
      walk(x, depth + 1)
    end
  end
  walk(err, 0)
  return best
end

-- ------------------------------------------------------- container references

-- The field path of a container in a pod spec (camelCase API fields):
-- spec.containers{name}, spec.initContainers{name},
-- spec.ephemeralContainers{name}; [index] when the name is empty.
function M.field_path(pod, name)
  local spec = pod.spec or {}
  for _, f in ipairs({ "containers", "initContainers", "ephemeralContainers" }) do
    for i, c in ipairs(spec[f] or {}) do
      if (c.name or "") == name then
        if name == "" then
          return string.format("spec.%s[%d]", f, i - 1)
        end
        return string.format("spec.%s{%s}", f, name)
      end
    end
  end
  return nil, string.format("container %q not found in pod %s/%s", name, (pod.metadata or {}).namespace or "",
    (pod.metadata or {}).name or "")
end

-- Prefix of the message for a container a pod needs but does not declare.
M.IMPLICIT_CONTAINER_PREFIX = "implicitly required container "

-- container_ref(pod, container) -> an ObjectReference as kubelet's
-- GenerateContainerRef forms it; container is a name or a table with .name.
-- A container not in the spec (the sandbox) gets the field path
-- "implicitly required container NAME".
function M.container_ref(pod, container)
  local name = type(container) == "table" and (container.name or "") or tostring(container)
  local md = pod.metadata or {}
  local path = M.field_path(pod, name)
  return {
    kind = "Pod",
    apiVersion = pod.apiVersion or "v1",
    name = md.name or "",
    namespace = md.namespace or "",
    uid = md.uid or "",
    resourceVersion = md.resourceVersion or "",
    fieldPath = path or (M.IMPLICIT_CONTAINER_PREFIX .. name),
  }
end

return M
