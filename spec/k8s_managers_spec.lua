-- kubelua.k8s.managers (kubelet's ConfigMap and Secret managers: Get, Cache
-- and Watch strategies) against tests/support/fake_apiserver.py.
local t = require "spec.t"
local S = require "spec.support"
local k8s = require "kubelua.k8s"
local json = require "kubelua.k8s.json"
local managers = require "kubelua.k8s.managers"
local core = require "kubelua.core"
local task = require "kubelua.task"

local TOKEN = "kl-managers-token-ZQ7x"
local SECRET_VALUE = "aHVudGVyMi1zZWNyZXQtdmFsdWU=" -- base64 of a made-up password

local DIR = S.tmpdir("k8s-managers")
local server = S.fake_apiserver(DIR, TOKEN)
local SERVER = server.url
local KUBECONFIG = server.kubeconfig("kubeconfig")
local api = assert(k8s.connect { kubeconfig = KUBECONFIG })
local ctl, wait_until = server.control, S.wait_until

local function requests(pred)
  local out = {}
  for _, q in ipairs(server.stats().requests) do
    if not pred or pred(q) then
      out[#out + 1] = q
    end
  end
  return out
end

local function server_watches()
  return server.stats().watches
end

local fresh_ns = S.namer("m") -- a namespace per test

local function configmap(ns, name, data, extra)
  local o = { metadata = { name = name }, data = data or { k = "v" } }
  for k, v in pairs(extra or {}) do
    o[k] = v
  end
  return assert(api:create(k8s.path("configmaps", ns), o))
end

local function pod(ns, name, uid, cms, secrets)
  local env = {}
  for _, c in ipairs(cms or {}) do
    env[#env + 1] = { name = "E" .. #env, valueFrom = { configMapKeyRef = { name = c, key = "k" } } }
  end
  for _, s in ipairs(secrets or {}) do
    env[#env + 1] = { name = "E" .. #env, valueFrom = { secretKeyRef = { name = s, key = "password" } } }
  end
  return { metadata = { namespace = ns, name = name, uid = uid },
    spec = { containers = { { name = "c", image = "x", env = env } } } }
end

local MANAGERS = {}
local function new(kind, opts)
  opts = opts or {}
  if opts.log == nil then
    opts.log = false
  end
  local m = managers[kind](api, opts)
  MANAGERS[#MANAGERS + 1] = m
  return m
end

local function gets_of(ns)
  return requests(function(q)
    return q.method == "GET" and q.path:find("/namespaces/" .. ns .. "/", 1, true) and not q.query.watch
  end)
end

t.describe("references", function()
  t.it("the ConfigMaps and Secrets a pod references, from every place kubelet looks", function()
    local p = {
      metadata = { name = "p" },
      spec = {
        imagePullSecrets = { { name = "pull" } },
        initContainers = { { name = "i", envFrom = { { configMapRef = { name = "cm-init" } }, { secretRef = { name = "s-init" } } } } },
        containers = { { name = "c", env = {
          { name = "A", valueFrom = { configMapKeyRef = { name = "cm-env", key = "k" } } },
          { name = "B", valueFrom = { secretKeyRef = { name = "s-env", key = "k" } } },
          { name = "C", value = "plain" },
        } } },
        ephemeralContainers = { { name = "e", envFrom = { { configMapRef = { name = "cm-eph" } } } } },
        volumes = {
          { name = "v1", configMap = { name = "cm-vol" } },
          { name = "v2", secret = { secretName = "s-vol" } },
          { name = "v3", projected = { sources = { { configMap = { name = "cm-proj" } }, { secret = { name = "s-proj" } } } } },
          { name = "v4", csi = { driver = "d", nodePublishSecretRef = { name = "s-csi" } } },
          { name = "v5", rbd = { secretRef = { name = "s-rbd" } } },
          { name = "v6", azureFile = { secretName = "s-azure" } },
          { name = "v7", emptyDir = {} },
        },
      },
    }
    t.eq(managers.configmap_names(p), { "cm-env", "cm-eph", "cm-init", "cm-proj", "cm-vol" })
    t.eq(managers.secret_names(p), { "pull", "s-azure", "s-csi", "s-env", "s-init", "s-proj", "s-rbd", "s-vol" })
    t.eq(managers.configmap_names { metadata = { name = "empty" } }, {})
  end)
  t.it("the node TTL annotation", function()
    t.eq(managers.node_ttl { metadata = { annotations = { ["node.alpha.kubernetes.io/ttl"] = "15" } } }, 15)
    t.eq(managers.node_ttl { metadata = { annotations = { ["node.alpha.kubernetes.io/ttl"] = "x" } } }, nil)
    t.eq(managers.node_ttl { metadata = {} }, nil)
  end)
end)

t.describe("strategies", function()
  t.after_each(function()
    for _, m in ipairs(MANAGERS) do
      m:stop()
    end
    MANAGERS = {}
    ctl("config", json.encode { fail = json.array() })
  end)

  t.it("Get: every get asks the API server; registration does not matter", function()
    local ns = fresh_ns()
    configmap(ns, "a", { k = "1" })
    local m = new("configmaps", { strategy = "Get" })
    ctl("reset")
    t.eq(assert(m:get(ns, "a")).data.k, "1")
    t.eq(assert(m:get(ns, "a")).data.k, "1")
    t.eq(#gets_of(ns), 2)
    local _, err, code = m:get(ns, "nope")
    t.eq(code, "NOT_FOUND", err)
    m:register_pod(pod(ns, "p", "u1", { "a" }))
    m:unregister_pod(pod(ns, "p", "u1", { "a" }))
    t.ok(m:get(ns, "a"))
  end)

  t.it("Cache: fetched once per TTL; registering a pod refreshes; a refresh may come from the server's cache", function()
    local ns = fresh_ns()
    configmap(ns, "a", { k = "1" })
    local m = new("configmaps", { strategy = "Cache", ttl = 0.3 })
    local _, err, code = m:get(ns, "a")
    t.eq(code, "NOT_REGISTERED")
    t.eq(err, 'NOT_REGISTERED: configmap "' .. ns .. '"/"a": not registered')
    m:register_pod(pod(ns, "p1", "u1", { "a" }))
    ctl("reset")
    t.eq(assert(m:get(ns, "a")).data.k, "1")
    t.eq(assert(m:get(ns, "a")).data.k, "1")
    t.eq(#gets_of(ns), 1, "one fetch within the TTL")
    t.eq(gets_of(ns)[1].query.resourceVersion, nil, "the first fetch is a plain get")
    assert(api:patch(k8s.path("configmaps", ns, "a"), { data = { k = "2" } }))
    t.eq(assert(m:get(ns, "a")).data.k, "1", "still the cached one")
    task.sleep(0.35)
    t.eq(assert(m:get(ns, "a")).data.k, "2", "refreshed after the TTL")
    local reqs = gets_of(ns)
    t.eq(#reqs, 2)
    t.eq(reqs[2].query.resourceVersion, "0", "a refresh may be served from the API server's cache")
    m:register_pod(pod(ns, "p1", "u1", { "a" })) -- the same pod again: no invalidation
    assert(m:get(ns, "a"))
    t.eq(#gets_of(ns), 2)
    assert(api:patch(k8s.path("configmaps", ns, "a"), { data = { k = "3" } }))
    m:register_pod(pod(ns, "p2", "u2", { "a" })) -- a new pod: invalidates
    t.eq(assert(m:get(ns, "a")).data.k, "3")
    t.eq(#gets_of(ns), 3)
    m:unregister_pod(pod(ns, "p1", "u1"))
    t.ok(m:get(ns, "a"), "still referenced by p2")
    m:unregister_pod(pod(ns, "p2", "u2"))
    t.eq(select(3, m:get(ns, "a")), "NOT_REGISTERED")
  end)

  t.it("Cache: get_ttl overrides the TTL (the node annotation's way)", function()
    local ns = fresh_ns()
    configmap(ns, "a")
    local ttl = 100
    local m = new("configmaps", { strategy = "Cache", ttl = 100, get_ttl = function()
      return ttl
    end })
    m:register_pod(pod(ns, "p", "u", { "a" }))
    ctl("reset")
    assert(m:get(ns, "a"))
    assert(m:get(ns, "a"))
    t.eq(#gets_of(ns), 1)
    ttl = 0
    assert(m:get(ns, "a"))
    t.eq(#gets_of(ns), 2)
  end)

  t.it("Cache: not found is fetched again each time; a failed refresh serves the last good object", function()
    local ns = fresh_ns()
    local m = new("configmaps", { strategy = "Cache", ttl = 0.01 })
    m:register_pod(pod(ns, "p", "u", { "a" }))
    ctl("reset")
    t.eq(select(3, m:get(ns, "a")), "NOT_FOUND")
    t.eq(select(3, m:get(ns, "a")), "NOT_FOUND")
    t.eq(#gets_of(ns), 2)
    configmap(ns, "a", { k = "1" })
    t.eq(assert(m:get(ns, "a")).data.k, "1")
    ctl("config", json.encode { fail = { { path = "/namespaces/" .. ns .. "/configmaps/a", status = 500, count = 5 } } })
    task.sleep(0.02)
    local obj, err = m:get(ns, "a")
    t.ok(obj, err)
    t.eq(obj.data.k, "1", "the stale object rather than the error")
    local m2 = new("configmaps", { strategy = "Cache" })
    m2:register_pod(pod(ns, "p", "u", { "a" }))
    local _, err2, code2 = m2:get(ns, "a")
    t.eq(code2, "INTERNAL", "nothing cached: the error")
    t.match(err2, "500 injected failure")
  end)

  t.it("Cache: concurrent gets share one fetch", function()
    local ns = fresh_ns()
    configmap(ns, "a")
    local m = new("configmaps", { strategy = "Cache" })
    m:register_pod(pod(ns, "p", "u", { "a" }))
    ctl("reset")
    local fns = {}
    for i = 1, 8 do
      fns[i] = function()
        return assert(m:get(ns, "a")).metadata.name
      end
    end
    for _, r in ipairs(task.gather(fns)) do
      t.eq({ r[1], r[2] }, { true, "a" })
    end
    t.eq(#gets_of(ns), 1)
  end)

  t.it("Watch: one watch per object (fieldSelector metadata.name), changes arrive, deletion is NOT_FOUND", function()
    local ns = fresh_ns()
    configmap(ns, "a", { k = "1" })
    local m = new("configmaps", { strategy = "Watch" })
    ctl("reset")
    m:register_pod(pod(ns, "p1", "u1", { "a" }))
    m:register_pod(pod(ns, "p2", "u2", { "a" }))
    t.eq(assert(m:get(ns, "a")).data.k, "1")
    local lists = requests(function(q)
      return q.path == "/api/v1/namespaces/" .. ns .. "/configmaps"
    end)
    t.ok(#lists >= 2, "a list and a watch")
    t.eq(lists[1].query.fieldSelector, "metadata.name=a")
    t.eq(m.stats.watches_started, 1, "one watch for two pods")
    assert(api:patch(k8s.path("configmaps", ns, "a"), { data = { k = "2" } }))
    wait_until(function()
      return assert(m:get(ns, "a")).data.k == "2"
    end)
    for _, q in ipairs(gets_of(ns)) do
      t.eq(q.path, "/api/v1/namespaces/" .. ns .. "/configmaps", "only lists, no gets")
    end
    assert(api:delete(k8s.path("configmaps", ns, "a")))
    wait_until(function()
      return select(3, m:get(ns, "a")) == "NOT_FOUND"
    end)
    local _, err = m:get(ns, "a")
    t.eq(err, 'NOT_FOUND: configmap "' .. ns .. '"/"a": configmaps "a" not found')
    configmap(ns, "a", { k = "3" })
    wait_until(function()
      local o = m:get(ns, "a")
      return o and o.data.k == "3"
    end)
    local before = server_watches()
    local w = m.store.items[ns .. "/a"].watch
    m:unregister_pod(pod(ns, "p1", "u1"))
    t.ok(m:get(ns, "a"), "p2 still references it")
    t.ok(w.job.running)
    m:unregister_pod(pod(ns, "p2", "u2"))
    t.eq(select(3, m:get(ns, "a")), "NOT_REGISTERED")
    wait_until(function()
      return not w.job.running and server_watches() <= before - 1
    end, 3, "the watch was not stopped")
  end)

  t.it("Watch: an updated pod starts watches for new references and stops the dropped ones", function()
    local ns = fresh_ns()
    configmap(ns, "a")
    configmap(ns, "b")
    configmap(ns, "c")
    local m = new("configmaps", { strategy = "Watch" })
    m:register_pod(pod(ns, "p", "u", { "a", "b" }))
    t.ok(m:get(ns, "a") and m:get(ns, "b"))
    m:register_pod(pod(ns, "p", "u", { "b", "c" }))
    t.eq(select(3, m:get(ns, "a")), "NOT_REGISTERED")
    t.ok(m:get(ns, "b") and m:get(ns, "c"))
    t.eq(m.stats.watches_started, 3)
  end)

  t.it("Watch: an immutable object is not watched once seen, and is still served", function()
    local ns = fresh_ns()
    configmap(ns, "frozen", { k = "1" }, { immutable = true })
    local m = new("configmaps", { strategy = "Watch" })
    m:register_pod(pod(ns, "p", "u", { "frozen" }))
    t.eq(assert(m:get(ns, "frozen")).data.k, "1")
    local w = m.store.items[ns .. "/frozen"].watch
    wait_until(function()
      return not w.job.running
    end, 3, "the watch of an immutable object was not stopped")
    local function watch_requests()
      return #requests(function(q)
        return q.query.watch and q.path == "/api/v1/namespaces/" .. ns .. "/configmaps"
      end)
    end
    local n = watch_requests()
    task.sleep(0.1)
    t.eq(assert(m:get(ns, "frozen")).data.k, "1")
    t.eq(m.stats.watches_started, 1, "not started again")
    t.eq(watch_requests(), n, "no new watch request")
  end)

  t.it("Watch: a get waits for the first list, at most sync_timeout, and says why", function()
    local ns = fresh_ns()
    configmap(ns, "a")
    ctl("config", json.encode { fail = { { path = "/namespaces/" .. ns .. "/configmaps?", status = 503,
      reason = "ServiceUnavailable", count = 1000 } } })
    local m = new("configmaps", { strategy = "Watch", sync_timeout = 0.3, watch_backoff = { initial = 0.05, jitter = 0 } })
    m:register_pod(pod(ns, "p", "u", { "a" }))
    local t0 = core.monotime()
    local obj, err, code = m:get(ns, "a")
    local took = core.monotime() - t0
    t.eq({ obj, code }, { nil, "TIMEOUT" })
    t.ok(took >= 0.29 and took < 0.6, "waited " .. took .. " s")
    t.match(err, '^TIMEOUT: configmap "' .. ns .. '"/"a": failed to sync the configmaps cache within 0%.3 s %(last error: UNAVAILABLE: ')
    ctl("config", json.encode { fail = json.array() })
    wait_until(function()
      return m:get(ns, "a") ~= nil
    end)
  end)

  t.it("Watch: a watch idle for max_idle is stopped, and the next get starts it again", function()
    local ns = fresh_ns()
    configmap(ns, "a", { k = "1" })
    local m = new("configmaps", { strategy = "Watch", max_idle = 0.2, recycle_period = 0.1 })
    m:register_pod(pod(ns, "p", "u", { "a" }))
    assert(m:get(ns, "a"))
    wait_until(function()
      return m.stats.watches_idled == 1
    end, 3)
    assert(api:patch(k8s.path("configmaps", ns, "a"), { data = { k = "2" } }))
    t.eq(assert(m:get(ns, "a")).data.k, "2", "the restarted watch lists afresh")
    t.eq(m.stats.watches_started, 2)
  end)

  t.it("secrets: the combined manager, and no secret data in any message or log", function()
    local ns = fresh_ns()
    assert(api:create(k8s.path("secrets", ns), { metadata = { name = "db" }, data = { password = SECRET_VALUE } }))
    configmap(ns, "cfg")
    local m = managers.new(api, { strategy = "Watch", log = false })
    MANAGERS[#MANAGERS + 1] = m
    m:register_pod(pod(ns, "p", "u", { "cfg" }, { "db" }))
    t.eq(assert(m:get_secret(ns, "db")).data.password, SECRET_VALUE)
    t.ok(m:get_configmap(ns, "cfg"))
    t.eq(select(3, m:get_secret(ns, "cfg")), "NOT_REGISTERED")
    -- The same with logging on, in a process of its own: a corrupt event line
    -- on the secret's watch, then a failing list.
    local out, ok = S.run_lua(DIR .. "/secret-noise.lua", string.format([[
      local k8s = require "kubelua.k8s"
      local managers = require "kubelua.k8s.managers"
      local http = require "kubelua.http"
      local task = require "kubelua.task"
      local api = assert(k8s.connect { kubeconfig = %q })
      local m = managers.new(api, { strategy = "Watch", watch_backoff = { initial = 0.05, jitter = 0 } })
      m:register_pod { metadata = { namespace = %q, name = "q", uid = "q" },
        spec = { containers = { { name = "c", env = { { name = "P", valueFrom = { secretKeyRef = { name = "db", key = "password" } } } } } } } }
      assert(m:get_secret(%q, "db"))
      local function ctl(what, body)
        http.request { url = %q .. "/_control/" .. what, method = "POST", body = body, ca_file = %q }
      end
      ctl("inject", '{"type":"MODIFIED","object":{"metadata":{"name":"db"},"data":{"password":"%s"}} broken\n')
      task.sleep(0.3)
      ctl("config", '{"fail":[{"path":"/secrets?","status":500,"count":3}]}')
      ctl("disconnect", "")
      task.sleep(0.5)
      print(m:get_secret(%q, "db") and "still served")
      print(m:get_secret(%q, "other"))
      m:stop()
      ctl("config", '{"fail":[]}')
      print("done")
    ]], KUBECONFIG, ns, ns, SERVER, DIR .. "/ca.crt", SECRET_VALUE, ns, ns))
    t.ok(ok, out)
    t.match(out, "DECODE: watch /api/v1/namespaces/" .. ns .. "/secrets: malformed JSON in an event line")
    t.match(out, "not shown: the path holds secrets")
    t.match(out, "still served")
    t.match(out, "done")
    t.ok(not out:find(SECRET_VALUE, 1, true), "secret data in the output:\n" .. out)
    t.ok(not out:find(TOKEN, 1, true), "the token in the output")
  end)

  t.it("stop() ends every watch and leaves nothing parked", function()
    local ns = fresh_ns()
    configmap(ns, "a")
    configmap(ns, "b")
    local m = new("configmaps", { strategy = "Watch", recycle_period = 0.05 })
    m:register_pod(pod(ns, "p", "u", { "a", "b" }))
    assert(m:get(ns, "a"))
    m:stop()
    t.eq(core.parked_count(), 0)
  end)

  t.it("bad options throw", function()
    t.fails(function()
      managers.new(api, { strategy = "Sometimes" })
    end, "kubelua%.k8s%.managers: option strategy must be Get, Cache or Watch, got Sometimes$")
    t.fails(function()
      managers.configmaps(api, { tll = 1 })
    end, "kubelua%.k8s%.managers: unknown option tll$")
    t.fails(function()
      new("configmaps"):register_pod({})
    end, "a pod needs metadata.name")
  end)
end)

server.describe_stop()
