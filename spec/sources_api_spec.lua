-- The API pod source against the fake API server: pods bound to this node
-- arrive as SETs, through list, watch, a 410 Gone and a cut connection.
local t = require "spec.t"
local S = require "spec.support"
local config = require "kubelua.config"
local k8s = require "kubelua.k8s"
local apisrc = require "kubelua.sources.api"

local TOKEN = "kl-src-token-" .. tostring(os.time())
local DIR = S.tmpdir("apisrc")
local server = S.fake_apiserver(DIR, TOKEN)
local api = assert(k8s.connect{ kubeconfig = server.kubeconfig("kubeconfig") })

local function make_pod(name, node)
  return assert(api:create("/api/v1/namespaces/default/pods", {
    apiVersion = "v1", kind = "Pod", metadata = { name = name },
    spec = { nodeName = node, containers = { { name = "c", image = "kubelua.local/busybox:latest" } } },
  }))
end

t.describe("api source", function()
  local sets = {}
  local pc = config.new{ on_update = function(u) table.insert(sets, u) end }
  local src
  local function names()
    local out = {}
    for _, p in ipairs(pc:all_pods()) do
      out[#out + 1] = p.metadata.name
    end
    table.sort(out)
    return table.concat(out, ",")
  end

  t.it("lists the node's pods only, and is ready after the first SET", function()
    make_pod("mine-1", "node-a")
    make_pod("other", "node-b")
    src = apisrc.start(pc, { client = api, node = "node-a" })
    t.allow_parked(1)
    t.ok(S.wait_for(function() return pc:all_ready() end, 10), "ready")
    t.eq(names(), "mine-1")
    t.eq(pc:all_pods()[1].metadata.annotations["kubernetes.io/config.source"], "api")
  end)

  t.it("watch events become SETs: a new pod, a deleted pod", function()
    make_pod("mine-2", "node-a")
    t.ok(S.wait_for(function() return names() == "mine-1,mine-2" end, 10), names())
    assert(api:delete("/api/v1/namespaces/default/pods/mine-1"))
    t.ok(S.wait_for(function() return names() == "mine-2" end, 10), names())
  end)

  t.it("a 410 Gone in the middle: relist, nothing lost", function()
    server.control("compact")
    server.control("expire")
    make_pod("mine-3", "node-a")
    t.ok(S.wait_for(function() return names() == "mine-2,mine-3" end, 15), names())
  end)

  t.it("a cut connection: resume, nothing lost", function()
    server.control("disconnect")
    make_pod("mine-4", "node-a")
    t.ok(S.wait_for(function() return names() == "mine-2,mine-3,mine-4" end, 15), names())
  end)

  t.it("stops", function()
    src:stop()
    t.allow_parked(-1)
    server.stop()
    S.rm(DIR)
  end)
end)
