-- kubelua.k8s (client, config, JSON, watch) against tests/support/fake_apiserver.py:
-- HTTPS with its own CA on 127.0.0.1, a bearer token, list/watch with
-- resourceVersions, bookmarks, 410s and control endpoints to cut, end or
-- corrupt watch streams. kubectl checks that the fake is faithful.
local t = require "spec.t"
local S = require "spec.support"
local k8s = require "kubelua.k8s"
local json = require "kubelua.k8s.json"
local config = require "kubelua.k8s.config"
local core = require "kubelua.core"
local task = require "kubelua.task"
local pretty = require "kubelua.pretty"

local TOKEN = "kl-test-token-" .. tostring(os.time()) .. "-ZQ7x"

local DIR = S.tmpdir("k8s")
local server = S.fake_apiserver(DIR, TOKEN)
local PORT, SERVER = server.port, server.url
local write, kubeconfig, stats = S.write_file, server.kubeconfig, server.stats

local KUBECONFIG = kubeconfig("kubeconfig")
local api = assert(k8s.connect { kubeconfig = KUBECONFIG })

-- Every message an error path produced, to look for the token in.
local MESSAGES = {}
local function seen(...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) == "string" then
      MESSAGES[#MESSAGES + 1] = v
    end
  end
  return ...
end

local function ctl(what, body)
  local v, r = server.control(what, body)
  assert(r.status == 200, r.body)
  return v
end

local function watch_requests()
  local out = {}
  for _, r in ipairs(stats().requests) do
    if r.query.watch then
      out[#out + 1] = r
    end
  end
  return out
end

local function pod(name, node, labels, extra)
  local p = { metadata = { name = name, labels = labels }, spec = { nodeName = node,
    containers = { { name = "c", image = "kubelua.local/busybox:latest" } } } }
  for k, v in pairs(extra or {}) do
    p[k] = v
  end
  return p
end

local fresh_ns = S.namer("ns") -- a namespace per test

local function create_pod(ns, name, node, labels)
  return assert(api:create(k8s.path("pods", ns), pod(name, node, labels)))
end

-- A recorder of watch events.
local function recorder()
  local r = { events = {}, errors = {} }
  function r.on_event(typ, obj)
    r.events[#r.events + 1] = { typ, obj.metadata.name, obj.metadata.resourceVersion, t = core.now() }
  end
  function r.on_error(err, code)
    seen(err)
    r.errors[#r.errors + 1] = { err, code }
  end
  function r.names()
    local out = {}
    for i, e in ipairs(r.events) do
      out[i] = e[1] .. " " .. e[2]
    end
    return out
  end
  return r
end

local FAST = { initial = 0.05, max = 0.2, factor = 2, jitter = 0 }

-- Watches started by a test; stopped after it whatever happened.
local WATCHERS = {}
local function watch(path, opts)
  local w = api:watch(path, opts)
  WATCHERS[#WATCHERS + 1] = w
  return w
end

-- A watch of `path` (opts added to its options) reporting to a new recorder:
-- the watch and the recorder.
local function recorded(path, opts)
  local r = recorder()
  local o = { on_event = r.on_event, on_error = r.on_error }
  for k, v in pairs(opts or {}) do
    o[k] = v
  end
  return watch(path, o), r
end
local function stop_watchers()
  for _, w in ipairs(WATCHERS) do
    w:stop()
  end
  WATCHERS = {}
  ctl("config", json.encode { gone_mode = "event", fail = json.array() })
end

local wait_until = S.wait_until

-- Wait until the recorder r has n events.
local function events(r, n)
  wait_until(function()
    return #r.events == n
  end)
end

-- Wait until the server has accepted w's watch request.
local function watching(w)
  wait_until(function()
    return w.state == "watching"
  end, 5, "the watch did not start (state " .. tostring(w.state) .. ")")
end

-- A recorded watch of the pods of a fresh namespace, accepted by the server
-- (and with `first`, a pod of that name created and seen): the namespace,
-- the watch and the recorder.
local function watched(opts, first)
  local ns = fresh_ns()
  local w, r = recorded(k8s.path("pods", ns), opts)
  watching(w)
  if first then
    create_pod(ns, first, "n1")
    events(r, 1)
  end
  return ns, w, r
end

-- --------------------------------------------------------------------- JSON

t.describe("json", function()
  t.it("decodes objects and arrays; null members are left out, null elements are json.null", function()
    local v = json.decode('{"a":1,"b":"x","c":[1,null,true],"d":null,"e":{},"f":[]}')
    t.eq(v.a, 1)
    t.eq(v.b, "x")
    t.eq(v.c[2], json.null)
    t.eq(v.c[3], true)
    t.eq(v.d, nil)
    t.eq(next(v.e), nil)
    t.eq(next(v.f), nil)
  end)
  t.it("integers beyond 2^53 are boxed, never rounded; up to 2^53 plain numbers", function()
    local v = json.decode('[9007199254740992,9007199254740993,-9223372036854775808,' ..
      '18446744073709551615,123456789012345678901,1.5,1e300,"12345678901234567890"]')
    t.eq(v[1], 2 ^ 53)
    t.eq(type(v[1]), "number")
    t.eq(tostring(v[2]), "9007199254740993LL")
    t.eq(tostring(v[3]), "-9223372036854775808LL")
    t.eq(tostring(v[4]), "18446744073709551615ULL")
    t.eq(v[5], "123456789012345678901", "beyond 64 bits: the exact digits")
    t.eq(v[6], 1.5)
    t.eq(v[7], 1e300)
    t.eq(v[8], "12345678901234567890", "strings stay strings")
    t.eq(tostring(json.decode('{"x":{"y":[12345678901234567890]}}').x.y[1]), "12345678901234567890ULL")
  end)
  t.it("encodes integers exactly (cjson alone writes 1e+14 or 14 digits) and fractions round-trip", function()
    t.eq(json.encode { 2 ^ 53, 1e14, 123456789012345, -5, 0 }, "[9007199254740992,100000000000000,123456789012345,-5,0]")
    t.eq(json.encode { 9007199254740993LL, 18446744073709551615ULL, -1LL }, "[9007199254740993,18446744073709551615,-1]")
    local s = json.encode { 0.1, 1 / 3, 1e-300 }
    local back = json.decode(s)
    t.eq(back, { 0.1, 1 / 3, 1e-300 }, s)
  end)
  t.it("empty arrays with json.array(), null with json.null, objects otherwise", function()
    local v = json.decode(json.encode { a = json.array(), b = {}, c = json.null, d = json.array { 1, 2 } })
    t.eq(v.d, { 1, 2 })
    t.match(json.encode { a = json.array() }, '^{"a":%[%]}$')
    t.match(json.encode { c = json.null }, '^{"c":null}$')
  end)
  t.it("refuses what it cannot write faithfully, and bad JSON, with a message", function()
    t.match(select(2, json.encode { 0 / 0 }), "NaN")
    t.match(select(2, json.encode { f = print }), "cannot encode JSON")
    t.match(select(2, json.encode { "\0kubelua-json:1" }), "reserved marker")
    t.match(select(2, json.decode("{bad")), "^invalid JSON: ")
    t.match(select(2, json.decode('{"a":1} x')), "^invalid JSON: ")
    t.match(select(2, json.decode("[0x10]")), "^invalid JSON: ", "no hex numbers")
    t.match(select(2, json.decode('["\\u0000kubelua-json:1", 12345678901234567]')), "reserved marker")
  end)
end)

-- ------------------------------------------------------------------- config

t.describe("config", function()
  t.it("kubeconfig (JSON): server, CA relative to the file, token, namespace", function()
    local cfg = assert(config.kubeconfig(KUBECONFIG))
    t.eq(cfg.server, SERVER)
    t.eq(cfg.ca_file, DIR .. "/ca.crt")
    t.eq(cfg.namespace, "default")
    t.eq(cfg.insecure, false)
    t.eq(cfg.authorization(), "Bearer " .. TOKEN)
    t.ok(not pretty.format(cfg):find(TOKEN, 1, true), "the token is not in the printed config")
    t.ok(assert(k8s.new(cfg):list("/api/v1/pods")).items)
  end)
  t.it("inline *-data and a client certificate instead of a token", function()
    local function b64(path)
      return config.b64encode(assert(S.read_file(path)))
    end
    local path = kubeconfig("kc-data", { ["certificate-authority"] = false,
      ["certificate-authority-data"] = b64(DIR .. "/ca.crt") },
      { ["client-certificate-data"] = b64(DIR .. "/client.crt"), ["client-key-data"] = b64(DIR .. "/client.key") })
    local cfg = assert(config.kubeconfig(path))
    t.eq(cfg.authorization, nil)
    t.eq(S.sh("stat -c %a '" .. cfg.key_file .. "'"), "600", "the key file is private")
    ctl("reset")
    local list, err = k8s.new(cfg):list("/api/v1/pods")
    t.ok(list, err)
    t.eq(stats().requests[1].auth, "cert")
    local key_file = cfg.key_file
    cfg = nil
    collectgarbage()
    collectgarbage()
    t.ok(not S.exists(key_file), "the temporary key file is removed with the config")
  end)
  t.it("YAML goes through kubelua.yaml when it exists", function()
    local path = DIR .. "/kc.yaml"
    write(path, "apiVersion: v1\nkind: Config\n")
    local saved = package.loaded["kubelua.yaml"]
    local got
    package.loaded["kubelua.yaml"] = { decode = function(text)
      got = text
      return json.decode(assert(S.read_file(KUBECONFIG)))
    end }
    local cfg, err = config.kubeconfig(path)
    package.loaded["kubelua.yaml"] = saved
    t.ok(cfg, err)
    t.eq(got, "apiVersion: v1\nkind: Config\n")
    t.eq(cfg.server, SERVER)
  end)
  t.it("YAML without a YAML decoder: a clear CONFIG error (unless kubelua.yaml exists)", function()
    local path = DIR .. "/kc2.yaml"
    write(path, "apiVersion: v1\nkind: Config\n")
    local has_yaml = pcall(require, "kubelua.yaml")
    local cfg, err, code = config.kubeconfig(path)
    if has_yaml then
      t.eq(cfg, nil, "a kubeconfig without contexts is refused")
      t.match(err, "^CONFIG: kubeconfig .*kc2%.yaml: no current%-context")
    else
      t.eq(code, "CONFIG")
      t.match(err, "^CONFIG: kubeconfig .*kc2%.yaml: it is YAML and no YAML decoder")
    end
  end)
  if pcall(require, "kubelua.yaml") then
    t.it("a kubeconfig in YAML (kubelua.yaml), null and empty fields taken as absent", function()
      local path = DIR .. "/kc-real.yaml"
      write(path, table.concat({
        "apiVersion: v1",
        "kind: Config",
        "current-context: fake",
        "preferences: {}",
        "clusters:",
        "- name: fake",
        "  cluster:",
        "    server: " .. SERVER,
        "    certificate-authority: ca.crt",
        "    proxy-url:",
        "contexts:",
        "- name: fake",
        "  context: {cluster: fake, user: u, namespace: ~}",
        "users:",
        "- name: u",
        "  user:",
        "    token: " .. TOKEN,
        "",
      }, "\n"))
      local cfg, err = config.kubeconfig(path)
      t.ok(cfg, err)
      t.eq({ cfg.server, cfg.namespace, cfg.proxy }, { SERVER, "default", nil })
      t.ok(k8s.new(cfg):list("/api/v1/pods"))
      local _, err2, code = config.kubeconfig((function()
        write(DIR .. "/kc-bad.yaml", "clusters: [\n")
        return DIR .. "/kc-bad.yaml"
      end)())
      t.eq(code, "CONFIG")
      t.match(err2, "^CONFIG: kubeconfig .*kc%-bad%.yaml: invalid YAML: ")
    end)
  else
    t.skip("a kubeconfig in YAML (kubelua.yaml)", "kubelua.yaml is not available")
  end
  t.it("refuses exec plugins, insecure with a CA, missing contexts and files", function()
    local _, err, code = config.kubeconfig(kubeconfig("kc-exec", nil, { exec = { command = "x" } }))
    t.eq(code, "CONFIG")
    t.match(err, "exec credential plugins are not supported")
    _, err = config.kubeconfig(kubeconfig("kc-insec", { ["insecure-skip-tls-verify"] = true }))
    t.match(err, "insecure%-skip%-tls%-verify with a certificate authority is not allowed")
    _, err = config.kubeconfig(KUBECONFIG, { context = "nope" })
    t.match(err, 'context "nope" not found')
    _, err = config.kubeconfig(DIR .. "/none")
    t.match(err, "^CONFIG: kubeconfig .*/none: ")
    _, err = config.kubeconfig(kubeconfig("kc-nofile", { ["certificate-authority"] = "missing.crt" }))
    t.match(err, "certificate%-authority .*missing%.crt cannot be read")
  end)
  t.it("insecure-skip-tls-verify, when set, skips verification", function()
    local cfg = assert(config.kubeconfig(kubeconfig("kc-insecure", { ["certificate-authority"] = false,
      ["insecure-skip-tls-verify"] = true })))
    t.eq(cfg.insecure, true)
    t.ok(k8s.new(cfg):list("/api/v1/pods"))
  end)
  t.it("in-cluster: token file, CA file, host and port; the token file is read again", function()
    write(DIR .. "/sa-token", TOKEN .. "\n")
    write(DIR .. "/sa-ns", "kube-system\n")
    local cfg, err = config.in_cluster { token_file = DIR .. "/sa-token", ca_file = DIR .. "/ca.crt",
      namespace_file = DIR .. "/sa-ns", host = "127.0.0.1", port = PORT }
    t.ok(cfg, err)
    t.eq(cfg.server, SERVER)
    t.eq(cfg.namespace, "kube-system")
    local c = k8s.new(cfg)
    t.ok(c:list("/api/v1/pods"))
    write(DIR .. "/sa-token", "rotated-token\n")
    local saved = config.TOKEN_REREAD
    config.TOKEN_REREAD = 0
    local list, err2, code = c:list("/api/v1/pods")
    config.TOKEN_REREAD = saved
    t.eq({ list, code }, { nil, "UNAUTHORIZED" }, "the rotated (wrong) token is used: " .. tostring(err2))
    local v6 = assert(config.in_cluster { token_file = DIR .. "/sa-token", ca_file = DIR .. "/ca.crt",
      host = "fd00::1", port = 443 })
    t.eq(v6.server, "https://[fd00::1]:443")
  end)
  t.it("in-cluster outside a cluster or without its files: CONFIG errors naming them", function()
    local _, err, code = config.in_cluster { host = "", port = "" }
    t.eq(code, "CONFIG")
    t.match(err, "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
    _, err = config.in_cluster { host = "127.0.0.1", port = 1, token_file = DIR .. "/no-token" }
    t.match(err, "token .*/no%-token cannot be read")
  end)
end)

-- ----------------------------------------------------------- TLS and tokens

t.describe("TLS and authentication", function()
  t.it("the server's certificate is verified against the configured CA", function()
    t.ok(api:list("/api/v1/pods"))
    local wrong = assert(config.kubeconfig(kubeconfig("kc-wrongca", { ["certificate-authority"] = "other-ca.crt" })))
    local list, err, code = seen(k8s.new(wrong):list("/api/v1/pods"))
    t.eq({ list, code }, { nil, "TLS" }, err)
    t.match(err, "^TLS: GET https://127%.0%.0%.1:%d+/api/v1/pods: ")
    local none = assert(config.kubeconfig(kubeconfig("kc-noca", { ["certificate-authority"] = false })))
    local _, err2, code2 = seen(k8s.new(none):list("/api/v1/pods"))
    t.eq(code2, "TLS", "no CA given: the system's CAs do not know this server: " .. tostring(err2))
  end)
  t.it("no token or a wrong one: UNAUTHORIZED (401) from the server", function()
    local anon = assert(config.kubeconfig(kubeconfig("kc-anon", nil, {})))
    local _, err, code, st = seen(k8s.new(anon):list("/api/v1/pods"))
    t.eq(code, "UNAUTHORIZED")
    t.match(err, "^UNAUTHORIZED: GET " .. SERVER:gsub("%p", "%%%0") .. "/api/v1/pods: 401 Unauthorized$")
    t.eq(st.code, 401)
    local bad = assert(config.kubeconfig(kubeconfig("kc-bad", nil, { token = "not-" .. TOKEN })))
    local _, err2, code2 = seen(k8s.new(bad):get(k8s.path("pods", "default", "x")))
    t.eq(code2, "UNAUTHORIZED", err2)
    local last = stats().requests
    t.eq(last[#last].auth, "bad")
  end)
end)

-- ----------------------------------------------------------------- requests

t.describe("requests", function()
  t.it("create, get, update, delete; errors carry the API's reason and Status", function()
    local ns = fresh_ns()
    local p = assert(api:create(k8s.path("pods", ns), pod("web", "n1", { app = "web" })))
    t.eq(p.kind, "Pod")
    t.eq(p.metadata.namespace, ns)
    t.match(p.metadata.uid, "^%x+%-")
    t.match(p.metadata.resourceVersion, "^%d+$")
    local _, err, code, st = seen(api:create(k8s.path("pods", ns), pod("web", "n1")))
    t.eq(code, "ALREADY_EXISTS")
    t.match(err, '409 pods "web" already exists')
    t.eq(st.reason, "AlreadyExists")
    local g = assert(api:get(k8s.path("pods", ns, "web")))
    t.eq(g.metadata.uid, p.metadata.uid)
    local _, err2, code2 = seen(api:get(k8s.path("pods", ns, "nope")))
    t.eq(code2, "NOT_FOUND")
    t.match(err2, '^NOT_FOUND: GET https://.*/namespaces/' .. ns .. '/pods/nope: 404 pods "nope" not found$')
    g.metadata.labels.tier = "front"
    local u = assert(api:update(k8s.path("pods", ns, "web"), g))
    t.eq(u.metadata.labels.tier, "front")
    t.ok(tonumber(u.metadata.resourceVersion) > tonumber(g.metadata.resourceVersion))
    local _, err3, code3 = seen(api:update(k8s.path("pods", ns, "web"), g)) -- g has the old version
    t.eq(code3, "CONFLICT", err3)
    local _, _, code4 = seen(api:delete(k8s.path("pods", ns, "web"), { preconditions = { uid = "other" } }))
    t.eq(code4, "CONFLICT")
    local d = assert(api:delete(k8s.path("pods", ns, "web"), { gracePeriodSeconds = 0 }))
    t.eq(d.metadata.name, "web")
    t.eq(select(3, api:delete(k8s.path("pods", ns, "web"))), "NOT_FOUND")
    assert(api:create(k8s.path("configmaps", ns), { metadata = { name = "cm" }, data = { a = "1" } }))
    local st2 = assert(api:delete(k8s.path("configmaps", ns, "cm")))
    t.eq({ st2.kind, st2.status }, { "Status", "Success" })
  end)
  t.it("list with label and field selectors; list items get kind and apiVersion", function()
    local ns = fresh_ns()
    create_pod(ns, "a", "n1", { app = "web", tier = "front" })
    create_pod(ns, "b", "n2", { app = "web" })
    create_pod(ns, "c", "n1", { app = "db" })
    create_pod(ns, "d", "n1")
    local function names(opts)
      local l = assert(api:list(k8s.path("pods", ns), opts))
      local out = {}
      for i, it in ipairs(l.items) do
        out[i] = it.metadata.name
      end
      return out, l
    end
    local all, l = names()
    t.eq(all, { "a", "b", "c", "d" })
    t.eq({ l.kind, l.items[1].kind, l.items[1].apiVersion }, { "PodList", "Pod", "v1" })
    t.match(l.metadata.resourceVersion, "^%d+$")
    t.eq(names { labelSelector = "app=web" }, { "a", "b" })
    t.eq(names { labelSelector = "app in (web,db),!tier" }, { "b", "c" })
    t.eq(names { labelSelector = "app!=web" }, { "c", "d" })
    t.eq(names { fieldSelector = "spec.nodeName=n1" }, { "a", "c", "d" })
    t.eq(names { fieldSelector = "spec.nodeName=n1,metadata.name!=a", labelSelector = "app" }, { "c" })
    local _, err, code = seen(api:list(k8s.path("pods", ns), { fieldSelector = "spec.bogus=1" }))
    t.eq(code, "BAD_REQUEST")
    t.match(err, "field label not supported: spec.bogus")
    t.fails(function()
      api:list("/api/v1/pods", { labelselector = "x" })
    end, "kubelua%.k8s: list: unknown option labelselector$")
    t.fails(function()
      api:list("api/v1/pods")
    end, "an API path starting with '/'")
  end)
  t.it("paging: limit fetches every page; page_only one page; an expired token means one whole list", function()
    local ns = fresh_ns()
    for i = 1, 5 do
      create_pod(ns, "p" .. i, "n1")
    end
    ctl("reset")
    local l = assert(api:list(k8s.path("pods", ns), { limit = 2 }))
    t.eq(#l.items, 5)
    t.eq(l.metadata.continue, nil)
    local reqs = stats().requests
    t.eq(#reqs, 3, "three pages")
    t.eq(reqs[2].query.limit, "2")
    t.ok(reqs[2].query.continue and reqs[3].query.continue, "pages 2 and 3 continue")
    local one = assert(api:list(k8s.path("pods", ns), { limit = 2, page_only = true }))
    t.eq(#one.items, 2)
    t.ok(one.metadata.continue ~= nil and one.metadata.continue ~= "")
    local rest = assert(api:list(k8s.path("pods", ns), { limit = 10, continue = one.metadata.continue, page_only = true }))
    t.eq(#rest.items, 3)
    ctl("config", json.encode { fail = { { path = "continue=", status = 410, reason = "Expired", count = 1 } } })
    ctl("reset")
    local again = assert(api:list(k8s.path("pods", ns), { limit = 2 }))
    t.eq(#again.items, 5)
    reqs = stats().requests
    t.eq(reqs[#reqs].query.limit, nil, "after the 410 the list was taken whole")
    ctl("config", json.encode { fail = json.array() })
  end)
  t.it("patch: merge, strategic (lists merged by name), JSON patch; a failed test op is INVALID", function()
    local ns = fresh_ns()
    local path = k8s.path("pods", ns, "p")
    assert(api:create(k8s.path("pods", ns), pod("p", "n1", { a = "1" })))
    local m = assert(api:patch(path, { metadata = { labels = { b = "2", a = json.null } } }))
    t.eq(m.metadata.labels, { b = "2" })
    local s = assert(api:patch(path, { spec = { containers = { { name = "side", image = "x" } } } }, { type = "strategic" }))
    t.eq(#s.spec.containers, 2, "strategic merge adds a container")
    local m2 = assert(api:patch(path, { spec = { containers = { { name = "only", image = "y" } } } }, { type = "merge" }))
    t.eq(#m2.spec.containers, 1, "merge patch replaces the list")
    local j = assert(api:patch(path, { { op = "add", path = "/metadata/labels/c", value = "3" } }, { type = "json" }))
    t.eq(j.metadata.labels.c, "3")
    local _, err, code = seen(api:patch(path, { { op = "test", path = "/metadata/labels/c", value = "4" } }, { type = "json" }))
    t.eq(code, "INVALID", err)
    local _, _, code2 = seen(api:request { method = "PATCH", path = path, body = "{}", content_type = "text/plain" })
    t.eq(code2, "UNSUPPORTED_MEDIA_TYPE")
    t.fails(function()
      api:patch(path, {}, { type = "yaml" })
    end, "kubelua%.k8s: patch: option type must be merge, strategic, json or apply, got yaml$")
  end)
  t.it("misuse throws, naming the method and the option, blamed on the caller's line", function()
    -- fn is a one-line function: the error must point at that line.
    local function blamed(pattern, fn)
      local line = debug.getinfo(fn, "S").linedefined
      t.match(t.fails(fn), "^[^:]*k8s_spec%.lua:" .. line .. ": kubelua%.k8s: " .. pattern .. "$")
    end
    blamed("create: unknown option fieldmanager",
      function() api:create("/api/v1/pods", {}, { fieldmanager = "x" }) end)
    blamed("update expects an object %(a table or JSON text%), got number",
      function() api:update("/api/v1/pods/x", 42) end)
    blamed("update expects an API path starting with '/', got \"p\"",
      function() api:update("p", {}) end)
    blamed("list: option limit must be a number|string, got table",
      function() api:list("/api/v1/pods", { limit = {} }) end)
    blamed("delete: option gracePeriodSeconds must be a number, got string",
      function() api:delete("/x", { gracePeriodSeconds = "0" }) end)
    blamed("patch: option force must be a boolean, got string",
      function() api:patch("/x", {}, { force = "yes" }) end)
    blamed("get expects a table of options, got string",
      function() api:get("/x", "0") end)
    blamed("new: option timeout must be a number, got string",
      function() k8s.new({ server = "https://x" }, { timeout = "1" }) end)
    blamed("watch: unknown option field_selector",
      function() api:watch("/api/v1/pods", { field_selector = "x" }) end)
    blamed("watch: option on_event must be a function, got boolean",
      function() api:watch("/api/v1/pods", { on_event = true }) end)
  end)
  t.it("int64 beyond 2^53 survive a round trip through the server", function()
    local ns = fresh_ns()
    local p = pod("big", "n1")
    p.spec.activeDeadlineSeconds = 9007199254740993LL
    p.metadata.annotations = { note = "12345678901234567890" }
    assert(api:create(k8s.path("pods", ns), p))
    local g = assert(api:get(k8s.path("pods", ns, "big")))
    t.eq(tostring(g.spec.activeDeadlineSeconds), "9007199254740993LL")
    t.eq(g.metadata.annotations.note, "12345678901234567890")
  end)
end)

-- -------------------------------------------------------------------- watch

t.describe("watch", function()
  t.after_each(stop_watchers)
  t.it("lists, then watches from the list's version: events in order, then stop leaves nothing behind", function()
    local ns = fresh_ns()
    create_pod(ns, "before", "n1")
    ctl("reset")
    local w, r = recorded(k8s.path("pods", ns), { backoff = FAST })
    wait_until(function()
      return w:synced() and w.state == "watching"
    end)
    t.eq(r.names(), { "ADDED before" })
    local reqs = stats().requests
    t.eq(reqs[1].query.resourceVersion, "0", "the first list may come from the cache")
    t.eq(reqs[1].query.limit, "500")
    local wq = reqs[2].query
    t.eq({ wq.watch, wq.resourceVersion, wq.allowWatchBookmarks }, { "1", w.resource_version, "true" })
    local tsecs = tonumber(wq.timeoutSeconds)
    t.ok(tsecs >= 300 and tsecs < 600, "timeoutSeconds " .. tostring(wq.timeoutSeconds))
    for i = 1, 10 do
      create_pod(ns, "p" .. i, "n1")
      if i % 3 == 0 then
        assert(api:patch(k8s.path("pods", ns, "p" .. i), { metadata = { labels = { seen = "yes" } } }))
      end
    end
    assert(api:delete(k8s.path("pods", ns, "p2")))
    events(r, 15)
    local want = { "ADDED before" }
    for i = 1, 10 do
      want[#want + 1] = "ADDED p" .. i
      if i % 3 == 0 then
        want[#want + 1] = "MODIFIED p" .. i
      end
    end
    want[#want + 1] = "DELETED p2"
    t.eq(r.names(), want)
    for i = 2, #r.events do
      t.ok(tonumber(r.events[i][3]) > tonumber(r.events[i - 1][3]), "resourceVersions increase")
    end
    t.eq(#w:items(), 10)
    t.ok(w:get(ns, "p1") and not w:get(ns .. "/p2"))
    t.eq(r.errors, {})
    w:stop()
    t.eq(core.parked_count(), 0)
    wait_until(function()
      return stats().watches == 0
    end, 3, "the server still has the watch")
  end)
  t.it("a field selector: objects moving in and out of it are ADDED and DELETED", function()
    local ns = fresh_ns()
    ctl("reset")
    local w, r = recorded(k8s.path("pods", ns), { fieldSelector = "spec.nodeName=n1", backoff = FAST })
    watching(w)
    create_pod(ns, "mine", "n1")
    create_pod(ns, "other", "n2")
    assert(api:patch(k8s.path("pods", ns, "other"), { spec = { nodeName = "n1" } }))
    assert(api:patch(k8s.path("pods", ns, "mine"), { spec = { nodeName = "n3" } }))
    events(r, 3)
    t.eq(r.names(), { "ADDED mine", "ADDED other", "DELETED mine" })
    t.eq(stats().requests[2].query.fieldSelector, "spec.nodeName=n1")
    w:stop()
  end)
  t.it("bookmarks move the version; a re-watch starts from the bookmark's", function()
    local ns = fresh_ns()
    local bms = {}
    local w, r = recorded(k8s.path("pods", ns), { backoff = FAST, on_bookmark = function(rv)
      bms[#bms + 1] = rv
    end })
    watching(w)
    create_pod(fresh_ns(), "elsewhere", "n1") -- moves the server's version, no event here
    local rv = ctl("bookmark").rv
    wait_until(function()
      return #bms == 1
    end)
    t.eq(bms[1], tostring(rv))
    t.eq(w.resource_version, tostring(rv))
    t.eq(#r.events, 0, "a bookmark is not an event")
    ctl("reset")
    ctl("disconnect")
    wait_until(function()
      return #watch_requests() >= 1
    end)
    t.eq(watch_requests()[1].query.resourceVersion, tostring(rv), "resumed from the bookmark")
    t.eq(w.stats.lists, 1, "no relist")
    w:stop()
  end)
  t.it("a clean end of the stream: watch again at once from the last version, no relist", function()
    local ns, w, r = watched({ backoff = { initial = 5, jitter = 0 } }, "a")
    ctl("reset")
    local t0 = core.monotime()
    ctl("close")
    wait_until(function()
      return #watch_requests() == 1
    end, 2)
    t.ok(core.monotime() - t0 < 1, "no backoff wait after a clean end")
    t.eq(watch_requests()[1].query.resourceVersion, r.events[1][3])
    create_pod(ns, "b", "n1")
    events(r, 2)
    t.eq(w.stats.lists, 1)
    t.eq(r.errors, {})
    w:stop()
  end)
  t.it("an abrupt disconnect: reported, then resumed from the last version; what happened meanwhile arrives", function()
    local ns, w, r = watched({ backoff = { initial = 0.3, jitter = 0 } }, "a")
    ctl("disconnect")
    create_pod(ns, "b", "n1") -- while the client waits to reconnect
    assert(api:delete(k8s.path("pods", ns, "a")))
    events(r, 3)
    t.eq(r.names(), { "ADDED a", "ADDED b", "DELETED a" })
    t.eq(#r.errors, 1)
    t.ok(r.errors[1][2] == "CLOSED" or r.errors[1][2] == "IO", r.errors[1][1])
    t.match(r.errors[1][1], "^%u+: watch /api/v1/namespaces/" .. ns .. "/pods: GET https://")
    t.eq({ w.stats.lists, w.stats.reconnects }, { 1, 1 })
    w:stop()
  end)
  t.it("410 as an ERROR event: relist (consistent read), the differences go out as events", function()
    local ns = fresh_ns()
    create_pod(ns, "keep", "n1")
    create_pod(ns, "change", "n1")
    create_pod(ns, "remove", "n1")
    local r = recorder()
    local syncs = 0
    local w = watch(k8s.path("pods", ns), { on_event = r.on_event, on_error = r.on_error,
      backoff = { initial = 0.4, jitter = 0 }, on_sync = function(items)
        syncs = syncs + 1
        r.synced = #items
      end })
    wait_until(function()
      return w.state == "watching" and #r.events == 3
    end)
    ctl("disconnect")
    -- while the client waits: changes, then the log is compacted away
    assert(api:patch(k8s.path("pods", ns, "change"), { metadata = { labels = { v = "2" } } }))
    assert(api:delete(k8s.path("pods", ns, "remove")))
    create_pod(ns, "new", "n1")
    ctl("compact")
    ctl("reset")
    wait_until(function()
      return syncs == 2
    end)
    t.eq(r.names(), { "ADDED change", "ADDED keep", "ADDED remove", "MODIFIED change", "ADDED new", "DELETED remove" })
    t.eq(r.synced, 3)
    local reqs = stats().requests
    t.eq(reqs[1].query.watch, "1", "it tried to resume first")
    t.eq(reqs[2].query.watch, nil, "then relisted")
    t.eq(reqs[2].query.resourceVersion, "", "a consistent list after a 410")
    t.eq(w.stats.expired, 1)
    w:stop()
  end)
  t.it("410 as an HTTP status: the same relist", function()
    local ns, w, r = watched({ backoff = { initial = 0.3, jitter = 0 } })
    ctl("config", json.encode { gone_mode = "http" })
    ctl("disconnect")
    create_pod(ns, "x", "n1")
    ctl("compact")
    wait_until(function()
      return w.stats.expired == 1 and w.stats.lists == 2 and #r.events == 1
    end)
    ctl("config", json.encode { gone_mode = "event" })
    t.eq(r.names(), { "ADDED x" })
    w:stop()
  end)
  t.it("410 mid-stream (ERROR event on a live watch): relist", function()
    local ns, w, r = watched({ backoff = FAST })
    ctl("expire")
    wait_until(function()
      return w.stats.lists == 2
    end)
    t.eq(w.stats.expired, 1)
    t.eq(r.errors, {}, "a 410 is the protocol, not an error")
    w:stop()
  end)
  local function bad_input(name, body, then_, pattern, code)
    t.it(name .. ": a clear error, then the watch recovers", function()
      local ns, w, r = watched({ backoff = FAST }, "before")
      ctl("inject?then=" .. then_, body)
      wait_until(function()
        return #r.errors == 1
      end)
      t.eq(r.errors[1][2], code)
      t.match(r.errors[1][1], "^" .. code .. ": watch /api/v1/namespaces/" .. ns .. "/pods: ")
      t.match(r.errors[1][1], pattern)
      create_pod(ns, "after", "n1")
      events(r, 2)
      t.eq(r.names(), { "ADDED before", "ADDED after" })
      t.eq(#r.errors, 1)
      w:stop()
    end)
  end
  bad_input("malformed JSON", '{"type":"ADDED","object":{bad json}}\n', "none",
    'malformed JSON in an event line %(invalid JSON: .*%): {"type":"ADDED","object":{bad json}}', "DECODE")
  bad_input("a truncated line at the end of the stream", '{"type":"ADDED","object":{"metadata":{"na', "end",
    'the stream ended inside an event line %(truncated%): {"type":"ADDED","object":{"metadata":{"na$', "DECODE")
  bad_input("a line cut by a disconnect", '{"type":"MODIFIED","obj', "cut",
    'an unfinished event line was dropped: {"type":"MODIFIED","obj$', "CLOSED")
  bad_input("an unknown event type", '{"type":"RENAMED","object":{"metadata":{"name":"x"}}}\n', "none",
    'unknown event type "RENAMED": {"type":"RENAMED"', "DECODE")
  bad_input("an event without an object", '{"type":"ADDED"}\n', "none", "an event needs a type and an object",
    "DECODE")
  bad_input("an ERROR event other than 410", '{"type":"ERROR","object":{"kind":"Status","code":500,' ..
    '"reason":"InternalError","message":"etcd is sad"}}\n', "none", "ERROR event: 500 etcd is sad", "INTERNAL")
  bad_input("control bytes are escaped in the excerpt", '{"x":\1\2}\n', "none", '{"x":\\x01\\x02}', "DECODE")
  t.it("secrets: a bad line is reported by size only, never quoted", function()
    local ns = fresh_ns()
    local w, r = recorded(k8s.path("secrets", ns), { backoff = FAST })
    watching(w)
    ctl("inject", '{"type":"ADDED","object":{"data":{"password":"aHVudGVyMg=="}}\n')
    wait_until(function()
      return #r.errors == 1
    end)
    t.ok(not r.errors[1][1]:find("aHVudGVyMg", 1, true), r.errors[1][1])
    t.match(r.errors[1][1], "%(%d+ bytes, not shown: the path holds secrets%)")
    w:stop()
  end)
  t.it("an HTTP error on the watch or list: reported, retried with growing waits, then it works", function()
    local ns = fresh_ns()
    ctl("config", json.encode { fail = { { path = "/namespaces/" .. ns .. "/pods?", status = 500, count = 3 } } })
    ctl("reset")
    local w, r = recorded(k8s.path("pods", ns), { backoff = { initial = 0.1, factor = 2, max = 1, jitter = 0 } })
    wait_until(function()
      return w:synced() and w.state == "watching"
    end)
    t.eq(#r.errors, 3)
    t.eq(r.errors[1][2], "INTERNAL")
    t.match(r.errors[1][1], "^INTERNAL: watch /api/v1/namespaces/" .. ns .. "/pods: GET https://.*: 500 injected failure$")
    local times = {}
    for _, q in ipairs(stats().requests) do
      times[#times + 1] = q.time
    end
    local gap1, gap2, gap3 = times[2] - times[1], times[3] - times[2], times[4] - times[3]
    t.ok(gap1 >= 0.09 and gap2 >= 0.19 and gap3 >= 0.39 and gap3 < 1,
      string.format("waits %.3f %.3f %.3f: 0.1 doubling", gap1, gap2, gap3))
    w:stop()
  end)
  t.it("an API server that is not there: CONNECT errors, retried with growing waits", function()
    local port = S.free_port()
    local cfg = assert(config.kubeconfig(kubeconfig("kc-down", { server = "https://127.0.0.1:" .. port })))
    local r = recorder()
    local down = k8s.new(cfg)
    local w = down:watch("/api/v1/pods", { on_error = function(err, code)
      r.on_error(err, code)
      r.events[#r.events + 1] = { code, t = core.monotime() }
    end, backoff = { initial = 0.05, factor = 2, max = 0.4, jitter = 0 } })
    WATCHERS[#WATCHERS + 1] = w
    wait_until(function()
      return #r.errors >= 4
    end)
    w:stop()
    t.eq(r.errors[1][2], "CONNECT")
    t.match(r.errors[1][1], "^CONNECT: watch /api/v1/pods: GET https://127%.0%.0%.1:" .. port .. "/api/v1/pods%?")
    local g1 = r.events[2].t - r.events[1].t
    local g3 = r.events[4].t - r.events[3].t
    t.ok(g1 >= 0.045 and g3 >= 0.19, string.format("waits %.3f then %.3f s", g1, g3))
    t.eq(w:synced(), false)
  end)
  t.it("stop() during a backoff wait returns at once and leaves nothing parked", function()
    local ns = fresh_ns()
    ctl("config", json.encode { fail = { { path = "/namespaces/" .. ns .. "/pods?", status = 503, count = 1 } } })
    local r = recorder()
    local w = watch(k8s.path("pods", ns), { on_error = r.on_error, backoff = { initial = 20, jitter = 0 } })
    wait_until(function()
      return #r.errors == 1
    end)
    local t0 = core.monotime()
    w:stop()
    t.ok(core.monotime() - t0 < 0.2, "stop waited " .. (core.monotime() - t0))
    t.eq(core.parked_count(), 0)
    ctl("config", json.encode { fail = json.array() })
  end)
  t.it("resource_version: watch from there without a first list", function()
    local ns = fresh_ns()
    local first = create_pod(ns, "a", "n1")
    create_pod(ns, "b", "n1")
    ctl("reset")
    local w, r = recorded(k8s.path("pods", ns), { backoff = FAST, resource_version = first.metadata.resourceVersion })
    events(r, 1)
    t.eq(r.names(), { "ADDED b" })
    local mine = {}
    for _, q in ipairs(stats().requests) do
      if q.path == "/api/v1/namespaces/" .. ns .. "/pods" then
        mine[#mine + 1] = q
      end
    end
    t.eq({ mine[1].query.watch, mine[1].query.resourceVersion }, { "1", first.metadata.resourceVersion })
    t.eq(w.stats.lists, 0)
    w:stop()
  end)
  t.it("a callback that throws is logged; the watch goes on", function()
    local ns = fresh_ns()
    local n = 0
    local w = watch(k8s.path("pods", ns), { backoff = FAST, on_event = function()
      n = n + 1
      error("policy bug")
    end })
    create_pod(ns, "a", "n1")
    create_pod(ns, "b", "n1")
    wait_until(function()
      return n == 2
    end)
    t.eq(w.stats.errors, 0)
    w:stop()
  end)
  t.it("stop() from inside a callback", function()
    local ns = fresh_ns()
    local w
    w = watch(k8s.path("pods", ns), { backoff = FAST, on_event = function()
      w:stop()
    end })
    create_pod(ns, "a", "n1")
    wait_until(function()
      return not w.job.running
    end)
    t.eq(core.parked_count(), 0)
  end)
  t.it("figure: latency from the server's write to on_event (200 events)", function()
    local ns = fresh_ns()
    local got = {}
    local w = watch(k8s.path("pods", ns), { backoff = FAST, on_event = function(_, obj)
      got[obj.metadata.resourceVersion] = core.now()
    end })
    watching(w)
    ctl("reset")
    for i = 1, 200 do
      create_pod(ns, "p" .. i, "n1")
    end
    wait_until(function()
      return w.stats.events == 200
    end)
    local lat = {}
    for _, wr in ipairs(stats().writes) do
      local at = got[tostring(wr[1])]
      if wr[2] == "ADDED" and at then
        lat[#lat + 1] = (at - wr[3]) * 1000
      end
    end
    t.eq(#lat, 200)
    table.sort(lat)
    io.stdout:write(string.format("      figure: fake API server write -> on_event: median %.3f ms, p99 %.3f ms, max %.3f ms (TLS, 200 events)\n",
      lat[100], lat[198], lat[200]))
    t.ok(lat[100] < 50, "median " .. lat[100] .. " ms")
    w:stop()
  end)
end)

-- ------------------------------------------------------------------ secrecy

t.describe("the token", function()
  t.it("never appears in errors, printed clients or logs", function()
    for _, m in ipairs(MESSAGES) do
      t.ok(not m:find(TOKEN, 1, true), "token in: " .. m)
    end
    t.ok(#MESSAGES > 10, "enough messages were looked at (" .. #MESSAGES .. ")")
    t.ok(not pretty.format(api):find(TOKEN, 1, true))
    t.ok(not tostring(api):find(TOKEN, 1, true))
    -- A separate process with logging on: watch failures, HTTP errors, a bad stream.
    local out, ok = S.run_lua(DIR .. "/noisy.lua", string.format([[
      local k8s = require "kubelua.k8s"
      local task = require "kubelua.task"
      local api = assert(k8s.connect { kubeconfig = %q })
      print(api:get("/api/v1/namespaces/x/pods/missing"))
      print(api:list("/api/v1/pods", { fieldSelector = "bad.field=1" }))
      local w = api:watch("/api/v1/namespaces/noisy/pods", { backoff = { initial = 0.05, jitter = 0 } })
      task.sleep(0.3)
      local http = require "kubelua.http"
      local function ctl(what, body)
        http.request { url = %q .. "/_control/" .. what, method = "POST", body = body, ca_file = %q }
      end
      ctl("inject", "{not json}\n")
      task.sleep(0.3)
      ctl("disconnect", "")
      task.sleep(0.3)
      w:stop()
      print("done")
    ]], KUBECONFIG, SERVER, DIR .. "/ca.crt"))
    t.ok(ok, out)
    t.match(out, "W%d+ [%d:.]+ +%d+ kubelua%] DECODE: watch /api/v1/namespaces/noisy/pods", "the watch logged")
    t.match(out, "NOT_FOUND: GET")
    t.match(out, "done")
    t.ok(not out:find(TOKEN, 1, true), "the token is in the output:\n" .. out)
  end)
end)

-- ------------------------------------------------------------------ kubectl

local function find_kubectl()
  local env = os.getenv("KUBELUA_TEST_KUBECTL")
  if env and env ~= "" then
    return env
  end
  local p, ok = S.sh("command -v kubectl")
  return ok and p ~= "" and p or nil
end
local KUBECTL = find_kubectl()

t.describe("kubectl against the fake (is it faithful?)", function()
  t.after_each(stop_watchers)
  if not KUBECTL then
    t.skip("kubectl get pods", "no kubectl (Debian package kubernetes-client)")
    t.skip("kubectl get pods --watch", "no kubectl (Debian package kubernetes-client)")
    return
  end
  local function kubectl(args)
    return S.sh(string.format("HOME='%s' timeout 20 '%s' --kubeconfig '%s' --cache-dir '%s/kcache' %s",
      DIR, KUBECTL, KUBECONFIG, DIR, args))
  end
  t.it("kubectl get pods", function()
    local ns = fresh_ns()
    create_pod(ns, "web-1", "node-a")
    create_pod(ns, "web-2", "node-b")
    local out, ok = kubectl("get pods -n " .. ns .. " -o wide")
    t.ok(ok, out)
    t.match(out, "NAME +READY +STATUS +RESTARTS +AGE +IP +NODE")
    t.match(out, "\nweb%-1 +0/1 .- node%-a ")
    t.match(out, "\nweb%-2 +0/1 .- node%-b ")
    local j = assert(json.decode((kubectl("get pod web-1 -n " .. ns .. " -o json"))))
    t.eq({ j.kind, j.metadata.name, j.spec.nodeName }, { "Pod", "web-1", "node-a" })
    local sel = kubectl("get pods -A --field-selector spec.nodeName=node-b -o name")
    t.match(sel, "pod/web%-2")
    t.ok(not sel:find("web%-1"), sel)
  end)
  t.it("kubectl get pods --watch", function()
    local ns = fresh_ns()
    create_pod(ns, "first", "node-a")
    local outf = DIR .. "/watch.out"
    local pid = S.spawn(string.format("HOME='%s' exec timeout 20 '%s' --kubeconfig '%s' --cache-dir '%s/kcache' get pods --watch -n %s",
      DIR, KUBECTL, KUBECONFIG, DIR, ns), outf)
    local ok, err = pcall(function()
      wait_until(function()
        return (S.read_file(outf) or ""):find("first", 1, true) and stats().watches >= 1
      end, 15, "kubectl did not list")
      create_pod(ns, "second", "node-a")
      assert(api:patch(k8s.path("pods", ns, "first"), { status = { phase = "Running" } }))
      wait_until(function()
        local o = S.read_file(outf) or ""
        return o:find("second", 1, true) and o:find("first +0/1 +Running")
      end, 10, "kubectl did not print the watch events: " .. tostring(S.read_file(outf)))
    end)
    S.kill(pid)
    t.ok(ok, err)
    local reqs = watch_requests()
    t.ok(#reqs >= 1 and reqs[#reqs].query.resourceVersion, "kubectl watched from a version")
  end)
end)

server.describe_stop()
