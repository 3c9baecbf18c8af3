-- Hostile input against a running agent (a real kubelua process, the real
-- containerd): junk static pod manifests, junk URL source bodies, a junk API
-- server watch stream. Each must give its clear error in the agent's log
-- (naming the file, the URL or the API path), and the agent must go on
-- serving: /healthz answers 200, the pods already running stay as they are,
-- and a new good pod from each source is still started. Credentials (the
-- API token, the URL source's Authorization header) never reach the log.
-- The entry points without a runtime are in spec/hostile_spec.lua.
local t = require "spec.t"
local S = require "spec.support"
local http = require "kubelua.http"
local json = require "kubelua.json"
local k8s = require "kubelua.k8s"
local server = require "kubelua.server"
local task = require "kubelua.task"

local A = S.agent_env("hostile-e2e", "hostile")
A.state = A.dir
local KUBELUA, rt, DIR, PODS, NODE = A.bin, A.rt, A.dir, A.pods, A.node
local TOKEN = "kl-api-token-" .. tostring(os.time()) .. "-Hq4"
local URL_SECRET = "kl-url-secret-" .. tostring(os.time()) .. "-Pw7"
local LOG = DIR .. "/agent.log"
local write = S.write_file

local function manifest(name)
  return S.manifest(name, "trap 'exit 0' TERM; while true; do sleep 1; done", { grace = 1 })
end

-- running containers of a pod (by the pod name the runtime sees)
local function running(pod)
  local r = assert(rt:list_containers{ filter = { state = { state = "CONTAINER_RUNNING" },
    label_selector = { ["io.kubernetes.pod.name"] = pod } } })
  return r.containers
end

local function log()
  return S.read_file(LOG) or ""
end

local function wait_log(pattern, secs)
  return S.wait_for(function() return log():find(pattern) ~= nil end, secs or 20, 0.1)
end

-- ------------------------------------------------------------ the fake peers

-- The API server (HTTPS, bearer token), as in spec/k8s_spec.lua.
local api_srv = S.fake_apiserver(DIR, TOKEN)
local KUBECONFIG = api_srv.kubeconfig("kubeconfig", { ["certificate-authority"] = DIR .. "/ca.crt" })
local api = assert(k8s.connect{ kubeconfig = KUBECONFIG })

local function api_ctl(what, body)
  local v, r = api_srv.control(what, body, 60)
  assert(r.status == 200, r.body)
  return v
end

-- The URL source: served from this process; `url_body` is what it answers.
local url_mode, url_body = "good", manifest("fromurl")
local url_auth
local url_srv = assert(server.http{ port = 0, routes = { ["/pods"] = function(req)
  url_auth = req.headers.authorization
  if url_mode == "good" then
    return 200, url_body, { ["Content-Type"] = "application/yaml" }
  elseif url_mode == "denied" then
    return 401, "denied"
  end
  return 200, url_body, { ["Content-Type"] = "text/html" }
end } })
t.allow_parked(1) -- its accept task, until cleanup
local URL = "http://127.0.0.1:" .. url_srv:port() .. "/pods"

-- a free port for /healthz (math.random is not seeded: ask the kernel)
local PORT
do
  local probe = assert(server.http{ port = 0, routes = {} })
  PORT = probe:port()
  probe:close()
end
local CFG = A.config(PORT, string.format([[
staticPodURL: %s
staticPodURLHeader:
  Authorization: ["Bearer %s"]
httpCheckFrequency: 1s
kubeconfig: %s
relistPeriod: 500ms
containerGCPeriod: 1m
fileCheckFrequency: 5s
]], URL, URL_SECRET, KUBECONFIG))

local pid

local function healthz()
  local r = http.get("http://127.0.0.1:" .. PORT .. "/healthz", { timeout = 5 })
  return r and r.status, r and r.body
end

local function still_serving(what)
  local code, body
  t.ok(S.wait_for(function()
    code, body = healthz()
    return code == 200
  end, 20), what .. ": /healthz " .. tostring(code) .. " " .. tostring(body) .. "\nlog:\n" .. log():sub(-3000))
  t.ok(pid and S.sh("kill -0 " .. pid .. " && echo alive") == "alive", what .. ": the agent process is alive")
end

local web_id -- the static pod running before the hostile files arrive

t.describe("a running agent under hostile input", function()
  t.it("starts with a good pod from each source", function()
    write(PODS .. "/web.yaml", manifest("web"))
    assert(api:create(k8s.path("pods", "default"), { metadata = { name = "fromapi" }, spec = { nodeName = NODE,
      terminationGracePeriodSeconds = 1, containers = { { name = "app", image = "kubelua.local/busybox:latest",
      imagePullPolicy = "IfNotPresent", command = { "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done" } } } } }))
    pid = S.spawn(KUBELUA .. " agent --config " .. CFG, LOG)
    t.ok(S.wait_for(function()
      return #running("web-" .. NODE) == 1 and #running("fromurl-" .. NODE) == 1 and #running("fromapi") == 1
    end, 60), "three pods running; log:\n" .. log():sub(-3000))
    web_id = running("web-" .. NODE)[1].id
    t.eq(url_auth, "Bearer " .. URL_SECRET, "the URL source sent its header")
    still_serving("at start")
  end)

  t.it("static pod manifests: junk files are each reported by name; the agent goes on", function()
    local BAD = {
      { "badyaml.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: x\n", "badyaml%.yaml:4:1: did not find expected" },
      { "deployment.yaml", "kind: Deployment\nmetadata: {name: d}\nspec: {}\n",
        'deployment%.yaml: invalid pod: kind "Deployment", expected Pod' },
      { "noname.yaml", "kind: Pod\nmetadata: {}\nspec: {containers: [{name: a, image: b}]}\n",
        "noname%.yaml: invalid pod: name is needed for the pod" },
      { "dup.yaml", "kind: Pod\nmetadata: {name: dup}\nspec: {containers: [{name: a, image: b}, {name: a, image: c}]}\n",
        'dup%.yaml: invalid pod: spec%.containers%[2%]%.name: duplicate value "a"' },
      { "absurd.yaml", "kind: Pod\nmetadata: {name: absurd}\nspec: {terminationGracePeriodSeconds: -1, "
        .. "containers: [{name: a, image: b, ports: [{containerPort: 999999}]}]}\n",
        "absurd%.yaml: invalid pod: spec%.terminationGracePeriodSeconds: must be a non%-negative number; "
        .. "spec%.containers%[1%]%.ports%[1%]%.containerPort: must be between 1 and 65535" },
      { "huge.yaml", ("#"):rep(10 * 1024 * 1024 + 1), "huge%.yaml: file is 10485761 bytes, more than the limit" },
      { "junk.yaml", "\127ELF\2\1\1\0\0\0\0\0", "junk%.yaml: byte 0: control characters are not allowed" },
      { "laughs.yaml", "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        .. "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
        "laughs%.yaml:%d+:%d+: document contains excessive aliasing" },
    }
    for _, b in ipairs(BAD) do
      write(PODS .. "/" .. b[1], b[2])
    end
    S.sh(string.format("cd '%s' && ln -s loop2 loop1 && ln -s loop1 loop2 && mkfifo fifo.yaml", PODS))
    for _, b in ipairs(BAD) do
      t.ok(wait_log(b[3]), b[1] .. " reported as " .. b[3] .. "\nlog:\n" .. log():sub(-3000))
    end
    t.ok(wait_log("fifo%.yaml: not a regular file, ignoring"), "the FIFO is skipped, never opened")
    still_serving("after junk manifests")
    t.eq(running("web-" .. NODE)[1].id, web_id, "the running static pod was left alone")
    write(PODS .. "/web2.yaml", manifest("web2"))
    t.ok(S.wait_for(function() return #running("web2-" .. NODE) == 1 end, 30), "a new good manifest still runs")
  end)

  t.it("URL source: junk bodies and a 401 are reported with the URL; the last good pods stay", function()
    local url_pat = URL:gsub("%p", "%%%0")
    local before = running("fromurl-" .. NODE)[1].id
    local BODIES = {
      { "<html><body>502 Bad Gateway</body></html>", url_pat .. ': received "<html><body>502 Bad Gateway' },
      { '[{"kind":"Pod"},{"kind":"Pod"}]', url_pat .. ": a list of 2 entries; expected a Pod or a PodList" },
      { '{"kind":"PodList","items":[{"metadata":{"name":"ok"},"spec":{"containers":[{"name":"a","image":"b"}]}},'
        .. '{"metadata":{"name":"Bad"},"spec":{"containers":[{"name":"a","image":"b"}]}}]}',
        url_pat .. ': items%[2%]: invalid pod: metadata%.name: invalid value "Bad%-' },
      { ("x"):rep(10 * 1024 * 1024 + 1), "TOO_LARGE: GET " .. url_pat .. ": response body exceeds max_body" },
    }
    for _, b in ipairs(BODIES) do
      url_mode, url_body = "junk", b[1]
      t.ok(wait_log(b[2]), "reported: " .. b[2] .. "\nlog:\n" .. log():sub(-2000))
    end
    url_mode = "denied"
    t.ok(wait_log(url_pat .. ": 401"), "401 reported")
    still_serving("after junk URL bodies")
    t.eq(running("fromurl-" .. NODE)[1].id, before, "the URL's pod stays as it was")
    url_mode, url_body = "good", manifest("fromurl2")
    t.ok(S.wait_for(function() return #running("fromurl2-" .. NODE) == 1 end, 30), "a good body is taken again")
  end)

  t.it("API watch stream: junk lines, an ERROR event, a Node, an over-long line; then a new pod still runs", function()
    local before = running("fromapi")[1].id
    -- Into the agent's watch, once it is open (after an error it relists
    -- first). A watch the agent is just leaving may still count on the
    -- server's side and swallow the line: then inject again.
    local function inject(body, pattern)
      local ok = S.wait_for(function()
        return api_ctl("inject", body).watches > 0 and wait_log(pattern, 3)
      end, 45, 0.2)
      t.ok(ok, "reported: " .. pattern .. "\nlog:\n" .. log():sub(-2000))
    end
    inject("{not json at all}\n", "DECODE: watch /api/v1/pods: malformed JSON in an event line")
    inject('{"type":"ERROR","object":{"kind":"Status","code":500,"message":"etcd is on fire"}}\n',
      "INTERNAL: watch /api/v1/pods: ERROR event: 500 etcd is on fire")
    inject('{"type":"ADDED","object":{"kind":"Node","metadata":{"name":"evil","namespace":"default","uid":"u-1",'
      .. '"resourceVersion":"999999"}}}\n', 'INVALID: /api/v1/pods: default/evil: an object of kind "Node", not a Pod')
    inject('{"type":"ADDED","object":{"x":"' .. ("y"):rep(16 * 1024 * 1024 + 10) .. '"}}\n',
      "DECODE: watch /api/v1/pods: an event line longer than 16777216 bytes")
    still_serving("after a junk watch stream")
    t.eq(running("fromapi")[1].id, before, "the API's pod stays as it was")
    assert(api:create(k8s.path("pods", "default"), { metadata = { name = "fromapi2" }, spec = { nodeName = NODE,
      terminationGracePeriodSeconds = 1, containers = { { name = "app", image = "kubelua.local/busybox:latest",
      imagePullPolicy = "IfNotPresent", command = { "sleep", "3600" } } } } }))
    t.ok(S.wait_for(function() return #running("fromapi2") == 1 end, 60), "a new API pod still runs; log:\n"
      .. log():sub(-2000))
  end)

  t.it("the API server refusing the token: reported, and the token never reaches the log", function()
    api_ctl("config", json.encode{ fail = { { path = "/api/v1/pods", status = 401, reason = "Unauthorized",
      count = 3 } } })
    t.ok(S.wait_for(function() return api_ctl("disconnect").watches > 0 end, 30, 0.2), "a watch to cut")
    t.ok(wait_log("UNAUTHORIZED"), "the 401 is reported\n" .. log():sub(-2000))
    api_ctl("config", json.encode{ fail = json.array() })
    still_serving("after a 401 from the API server")
    local l = log()
    t.ok(not l:find(TOKEN, 1, true), "the API token is in the agent's log")
    t.ok(not l:find(URL_SECRET, 1, true), "the URL source's Authorization value is in the agent's log")
    t.ok(#l > 2000, "the log has content to look at (" .. #l .. " bytes)")
  end)

  t.it("cleanup", function()
    S.kill(pid, "TERM")
    t.match(log(), "pods are left running")
    url_srv:close()
    t.allow_parked(-1)
    api_srv.stop()
    local sb = assert(rt:list_pod_sandbox{})
    for _, s in ipairs(sb.items) do
      local name = s.metadata and s.metadata.name or ""
      if name:find(NODE, 1, true) or name == "fromapi" or name == "fromapi2" then
        rt:stop_pod_sandbox{ pod_sandbox_id = s.id }
        rt:remove_pod_sandbox{ pod_sandbox_id = s.id }
      end
    end
    S.rm(DIR)
    t.ok(not S.exists(DIR))
  end)
end)
