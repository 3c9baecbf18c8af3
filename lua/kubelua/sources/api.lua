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
local core = require "kubelua.core"

local M = {}

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
    on_error = opts.on_error or function(err)
      core.log("E", "api source: " .. tostring(err))
    end,
  }, Source)
  pc:register(self.name)
  local function send()
    local pods = self.watch:items()
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
