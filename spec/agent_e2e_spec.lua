-- The agent end to end: a real kubelua process, a static pod directory and
-- the real containerd. A manifest dropped in -> pod running; edited ->
-- replaced; removed -> stopped and gone; /healthz and /pods answer; SIGTERM
-- stops the agent and leaves pods running; a bad config is refused whole.
local t = require "spec.t"
local S = require "spec.support"
local cri = require "kubelua.cri"
local http = require "kubelua.http"

local ctd = assert(S.containerd(), "KUBELUA_TEST_CTD_DIR is not set (run through ctest)")
local KUBELUA = S.sh("readlink -f /proc/" .. S.sh("echo $PPID") .. "/exe")
local rt = assert(cri.connect(ctd.endpoint))
local dir = S.tmpdir("agent")
local pods, logs = dir .. "/manifests", dir .. "/logs"
S.sh("mkdir -p '" .. pods .. "' '" .. logs .. "'")
local NODE = "agent-e2e-" .. tostring(os.time() % 100000)

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function manifest(cmd)
  return string.format([[
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: kubelua.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", %q]
]], cmd)
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
local cfgfile = dir .. "/agent.yaml"
write(cfgfile, string.format([[
containerRuntimeEndpoint: %s
staticPodPath: %s
podLogsDir: %s
stateDir: %s/state
nodeName: %s
healthzPort: %d
relistPeriod: 200ms
containerGCPeriod: 1m
fileCheckFrequency: 5s
]], ctd.endpoint, pods, logs, dir, NODE, port))

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
    local sb = assert(rt:list_pod_sandbox{ filter = { label_selector = { ["io.kubernetes.pod.name"] = "web-" .. NODE } } })
    for _, s in ipairs(sb.items) do
      rt:stop_pod_sandbox{ pod_sandbox_id = s.id }
      rt:remove_pod_sandbox{ pod_sandbox_id = s.id }
    end
    S.rm(dir)
  end)
end)
