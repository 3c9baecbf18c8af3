-- kubelua.sources.api: pods bound to this node from the Kubernetes API
-- (kubelet's API source, behaviour section 4.6), fed into a kubelua.config
-- merger.
--
--   local api = require("kubelua.k8s").connect{ kubeconfig = path }
--   local src = require("kubelua.sources.api").start(pc, { client = api, node = "node-1" })
--   src:stop()
--
-- A list-watch of /api/v1/pods with fieldSelector spec.nodeName=<node>
-- (kubelua.k8s.watch: list, watch from its resourceVersion, relist on 410,
-- resume after a lost connection). Every change of the store sends the
-- source's whole list as a SET, sorted by namespace/name. API pods already
-- carry their UIDs; they are not defaulted like static pods (the API server
-- did that), only marked with the source annotation by the merger.
-- An object that is no pod the agent can run (another kind, no name or UID,
-- no containers: a broken or hostile server) is reported once per
-- resourceVersion and left out.
local core = require "kubelua.core"

local M = {}

-- why(obj) -> nil for a usable pod, else what is wrong with it
function M.check(obj)
  if type(obj) ~= "table" then
    return "not an object"
  end
  if obj.kind ~= nil and obj.kind ~= "Pod" then
    return string.format("an object of kind %q, not a Pod", tostring(obj.kind))
  end
  local md = obj.metadata
  if type(md) ~= "table" or type(md.name) ~= "string" or md.name == "" then
    return "no metadata.name"
  end
  if type(md.uid) ~= "string" or md.uid == "" then
    return "no metadata.uid"
  end
  if type(obj.spec) ~= "table" or type(obj.spec.containers) ~= "table" or obj.spec.containers[1] == nil then
    return "no spec.containers"
  end
end

local Source = {}
Source.__index = Source

function M.start(pc, opts)
  assert(type(opts) == "table" and opts.client, "kubelua.sources.api: opts.client (a kubelua.k8s client) is required")
  assert(type(opts.node) == "string", "kubelua.sources.api: opts.node (the node name) is required")
  local self = setmetatable({
    pc = pc,
    name = opts.name or "api",
    node = opts.node,
    sets = 0,
    reported = {}, -- "ns/name@rv" of objects already reported as unusable
    on_error = opts.on_error or function(err)
      core.log("E", "api source: " .. tostring(err))
    end,
  }, Source)
  pc:register(self.name)
  local function send()
    local pods, reported = {}, {}
    for _, obj in ipairs(self.watch:items()) do
      local why = M.check(obj)
      if why then
        local md = type(obj) == "table" and type(obj.metadata) == "table" and obj.metadata or {}
        local key = string.format("%s/%s@%s", tostring(md.namespace), tostring(md.name), tostring(md.resourceVersion))
        if not self.reported[key] then
          self.on_error(string.format("INVALID: /api/v1/pods: %s/%s: %s; ignored", tostring(md.namespace),
            tostring(md.name), why), "INVALID")
        end
        reported[key] = true
      else
        pods[#pods + 1] = obj
      end
    end
    self.reported = reported
    table.sort(pods, function(a, b)
      local ma, mb = a.metadata or {}, b.metadata or {}
      return (ma.namespace or "") .. "/" .. (ma.name or "") < (mb.namespace or "") .. "/" .. (mb.name or "")
    end)
    self.sets = self.sets + 1
    self.pc:merge(self.name, { op = "SET", pods = pods })
  end
  self.watch = opts.client:watch("/api/v1/pods", {
    fieldSelector = "spec.nodeName=" .. opts.node,
    on_sync = function()
      send()
    end,
    on_event = function()
      send()
    end,
    on_error = function(err, code)
      self.on_error(err, code)
    end,
    log = false,
  })
  return self
end

function Source:stop()
  if self.watch then
    self.watch:stop()
    self.watch = nil
  end
end

return M
