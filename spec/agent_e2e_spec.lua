-- The agent end to end: a real kubelua process, a static pod directory and
-- the real containerd. A manifest dropped in -> pod running; edited ->
-- replaced; removed -> stopped and gone; /healthz and /pods answer; SIGTERM
-- stops the agent and leaves pods running; a bad config is refused whole.
local t = require "spec.t"
local S = require "spec.support"
local http = require "kubelua.http"

local A = S.agent_env("agent", "agent-e2e")
local KUBELUA, rt, dir, pods, NODE = A.bin, A.rt, A.dir, A.pods, A.node
local write = S.write_file

local function manifest(cmd)
  return S.manifest("web", cmd)
end

-- our pod's running containers (by the node-suffixed pod name)
local function running(name)
  local r = assert(rt:list_containers{ filter = { state = { state = "CONTAINER_RUNNING" },
    label_selector = { ["io.kubernetes.pod.name"] = "web-" .. NODE } } })
  local out = {}
  for _, c in ipairs(r.containers) do
    if not name or c.metadata.name == name then
      out[#out + 1] = c
    end
  end
  return out
end

local port = 20000 + math.random(0, 9999)
local cfgfile = A.config(port, "relistPeriod: 200ms\ncontainerGCPeriod: 1m\nfileCheckFrequency: 5s\n")

local pid

t.describe("agent", function()
  t.it("refuses an invalid configuration, listing every problem", function()
    local bad = dir .. "/bad.yaml"
    write(bad, "staticPodPth: /x\nimageGCHighThresholdPercent: 120\nruntimeRequestTimeout: soon\n")
    local out = S.sh(KUBELUA .. " agent --config " .. bad .. "; echo status=$?")
    t.match(out, "staticPodPth: unknown key")
    t.match(out, "imageGCHighThresholdPercent: 120: must be a whole number from 0 to 100")
    t.match(out, 'runtimeRequestTimeout: soon: not a duration')
    t.match(out, "status=2")
  end)

  t.it("starts; a manifest dropped in the directory runs within seconds", function()
    pid = S.spawn(KUBELUA .. " agent --config " .. cfgfile, dir .. "/agent.log")
    write(pods .. "/web.yaml", manifest("echo v1; exec sleep 3600"))
    t.ok(S.wait_for(function() return #running("app") == 1 end, 20),
      "pod running; agent log:\n" .. tostring(S.read_file(dir .. "/agent.log")))
  end)

  t.it("/healthz and /pods answer on loopback", function()
    local r
    t.ok(S.wait_for(function()
      r = http.get("http://127.0.0.1:" .. port .. "/healthz")
      return r and r.status == 200
    end, 15), "healthz: " .. tostring(r and r.body))
    t.match(r.body, "^ok\n")
    local p = assert(http.get("http://127.0.0.1:" .. port .. "/pods"))
    t.eq(p.status, 200)
    t.ok(p.body:find('"name":"web-' .. NODE .. '"', 1, true), "the pod is in /pods")
  end)

  t.it("an edited manifest replaces the pod", function()
    local before = running("app")[1].id
    write(pods .. "/web.yaml", manifest("echo v2; exec sleep 3600"))
    t.ok(S.wait_for(function()
      local now = running("app")
      return #now == 1 and now[1].id ~= before
    end, 30), "replaced")
  end)

  t.it("SIGTERM stops the agent and leaves the pod running; a new agent adopts it", function()
    local id = running("app")[1].id
    S.kill(pid, "TERM")
    t.match(S.read_file(dir .. "/agent.log"), "pods are left running")
    t.eq(running("app")[1].id, id)
    pid = S.spawn(KUBELUA .. " agent --config " .. cfgfile, dir .. "/agent2.log")
    S.wait_for(function() return (S.read_file(dir .. "/agent2.log") or ""):find("agent started") end, 10)
    local task = require "kubelua.task"
    task.sleep(2)
    local now = running("app")
    t.eq(#now, 1, "no duplicate")
    t.eq(now[1].id, id, "adopted, not recreated")
  end)

  t.it("a removed manifest stops the pod", function()
    os.remove(pods .. "/web.yaml")
    t.ok(S.wait_for(function() return #running() == 0 end, 30), "stopped")
  end)

  t.it("cleanup", function()
    S.kill(pid, "TERM")
    S.remove_sandboxes(rt, { ["io.kubernetes.pod.name"] = "web-" .. NODE })
    S.rm(dir)
  end)
end)
