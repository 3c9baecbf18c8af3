-- Hostile input at every entry point that needs no container runtime: the
-- agent's config file, static pod manifests, URL source bodies, the API
-- server's watch stream, CLI flags, the REPL, and what Lua policies return.
-- Each table row is an input and the clear error it must give (what and
-- where: file:line, field, URL, path); after each table the component is
-- shown to still work on good input. spec/hostile_e2e_spec.lua does the same
-- against a running agent. This spec also runs under valgrind (spec/tests.cmake).
local t = require "spec.t"
local S = require "spec.support"
local yaml = require "kubelua.yaml"
local json = require "kubelua.json"
local task = require "kubelua.task"
local acfg = require "kubelua.agent.config"
local config = require "kubelua.config"
local filesrc = require "kubelua.sources.file"
local httpsrc = require "kubelua.sources.http"
local apisrc = require "kubelua.sources.api"
local server = require "kubelua.server"
local hook = require "kubelua.gc.hook"
local prober = require "kubelua.prober"
local fakeclock = require "kubelua.prober.fakeclock"

local DIR = S.tmpdir("hostile")
local SECRET = "s3cr3t-Zq9-" .. tostring(os.time())

local KUBELUA = S.kubelua_bin() -- under valgrind /proc/PID/exe is valgrind's: $KUBELUA_TEST_BIN
local write = S.write_file

-- A billion-laughs document: 9 levels of 9 aliases to the level below.
local function bomb(prefix)
  local s = (prefix or "") .. 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
  local prev = "a"
  for n in ("bcdefghi"):gmatch(".") do
    s = s .. n .. ": &" .. n .. " [" .. ("*" .. prev .. ","):rep(8) .. "*" .. prev .. "]\n"
    prev = n
  end
  return s
end

local function deep(n)
  return "x: " .. ("["):rep(n) .. ("]"):rep(n) .. "\n"
end

local function any_match(list, pattern)
  for _, s in ipairs(list) do
    if s:find(pattern) then
      return true
    end
  end
  return false
end

-- ------------------------------------------------------------ config file

t.describe("the agent's config file", function()
  local CASES = {
    { "bad YAML: file, line and column", "healthzPort: 1\nx: [1, 2\nb: 3\n",
      "^YAML: .*/cfg%d+%.yaml:3:2: did not find expected ',' or ']'" },
    { "a tab in indentation", "a:\n\tb: 1\n", "^YAML: .*/cfg%d+%.yaml:2:1: found character that cannot start any token" },
    { "binary junk", "\0\255\254junk", "^YAML: .*/cfg%d+%.yaml: byte 0: control characters are not allowed" },
    { "a list, not a mapping", "- 1\n- 2\n", "^the configuration must be a mapping, not a list$" },
    { "a scalar", "hello\n", "/cfg%d+%.yaml: the configuration must be a mapping$" },
    { "an unknown key", "staticPodPth: /x\n", "^staticPodPth: unknown key$" },
    { "a number for a string", "staticPodPath: 7\n", "^staticPodPath: 7: must be a string$" },
    { "a list for a string", "healthzBindAddress: [a]\n", "^healthzBindAddress: %- a: must be a string$" },
    { "a quoted port", 'healthzPort: "10248"\n', '^healthzPort: "10248": must be a port number from 0 to 65535' },
    { "a huge port", "healthzPort: 1e300\n", "^healthzPort: 1e%+300: must be a port number" },
    { "NaN for a percent", "imageGCHighThresholdPercent: .nan\n", "^imageGCHighThresholdPercent: .nan: must be a whole number" },
    { "a percent over 100", "imageGCHighThresholdPercent: 120\n", "^imageGCHighThresholdPercent: 120: must be a whole number from 0 to 100$" },
    { "low above high", "imageGCHighThresholdPercent: 50\nimageGCLowThresholdPercent: 60\n",
      "^imageGCLowThresholdPercent: 60: must not be above imageGCHighThresholdPercent %(50%)$" },
    { "a negative duration", "relistPeriod: -1s\n", "^relistPeriod: %-1s: not a duration" },
    { "negative seconds", "fileCheckFrequency: -5\n", "^fileCheckFrequency: %-5: not a duration" },
    { "an infinite duration", "containerGCPeriod: .inf\n", "^containerGCPeriod: .inf: not a duration" },
    { "a duration beyond Go's time.Duration", "runtimeRequestTimeout: 99999999999999999999h\n",
      "^runtimeRequestTimeout: 99999999999999999999h: not a duration" },
    { "a huge number of seconds", "relistPeriod: 1e300\n", "^relistPeriod: 1e%+300: not a duration" },
    { "a unit Go lacks", "relistPeriod: 3d\n", "^relistPeriod: 3d: not a duration" },
    { "a probe tick longer than a second", "probeTick: 2s\n", "^probeTick: 2s: must be at most 1s$" },
    { "a bad backoff", "crashLoopBackOff: {initial: -3s}\n", "^crashLoopBackOff.initial: %-3s: not a duration$" },
    { "an unknown backoff key", "crashLoopBackOff: {initial: 1s, bogus: 1}\n",
      "^crashLoopBackOff.bogus: unknown key %(initial, max, reset%)$" },
    { "an unknown policy", "policies: {gc: /x.lua, foo: /y.lua}\n", "^policies.foo: unknown policy %(gc, prober%)$" },
    { "a policy that is no path", "policies: {gc: 3}\n", "^policies.gc: must be a file path$" },
    { "an upper-case node name", "nodeName: Node_1\n", '^nodeName: "Node_1": must be a lower%-case RFC 1123 subdomain' },
    { "a 100 KB node name", "nodeName: " .. ("n"):rep(100000) .. "\n", '^nodeName: "n+%.%.%.": must be a lower%-case' },
    { "a header value that is a number", "staticPodURLHeader: {Authorization: [Bearer " .. SECRET .. ", 3]}\n",
      "^staticPodURLHeader.Authorization: %(not shown%): must be a string or a list of strings" },
    { "a header that is a string", 'staticPodURLHeader: "Bearer ' .. SECRET .. '"\n',
      "^staticPodURLHeader: %(a string, not shown%): must be a mapping$" },
    { "a header with a newline", 'staticPodURLHeader: {X-A: "a\\nInjected: ' .. SECRET .. '"}\n',
      "^staticPodURLHeader.X%-A: %(not shown%)" },
    { "a header name with a space", "staticPodURLHeader: {\"X Y\": a}\n", '^staticPodURLHeader: "X Y": not a header name$' },
    { "billion laughs", bomb(), "^YAML: .*:%d+:%d+: document contains excessive aliasing" },
    { "deep nesting", deep(10000), "^YAML: .*/cfg%d+%.yaml:1:%d+: nesting deeper than 100 levels %(max_depth%)$" },
    { "a file over 10 MiB", ("#"):rep(10 * 1024 * 1024 + 1), "more than the limit of 10485760 %(max_size%)$" },
    { "a complex key", "? [a, b]\n: 1\n", "^YAML: .*/cfg%d+%.yaml:1:3: invalid map key: a sequence$" },
  }
  for i, c in ipairs(CASES) do
    t.it(c[1], function()
      local path = write(string.format("%s/cfg%d.yaml", DIR, i), c[2])
      local started = task.monotime()
      local cfg, problems = acfg.load(path)
      t.ok(task.monotime() - started < 5, "rejected quickly")
      t.eq(cfg, nil)
      t.ok(any_match(problems, c[3]), "want " .. c[3] .. ", got:\n" .. table.concat(problems, "\n"))
      for _, p in ipairs(problems) do
        t.ok(not p:find(SECRET, 1, true), "a header value was echoed: " .. p)
      end
    end)
  end

  t.it("every problem of a file is listed at once, sorted", function()
    local path = write(DIR .. "/many.yaml", "staticPodPth: /x\nhealthzPort: -1\nrelistPeriod: soon\n")
    local _, problems = acfg.load(path)
    t.eq(#problems, 3)
    t.match(problems[1], "^healthzPort: %-1: must be a port number")
    t.match(problems[2], "^relistPeriod: soon: not a duration")
    t.match(problems[3], "^staticPodPth: unknown key")
  end)

  t.it("good values still load; header values become lines for the HTTP client", function()
    local path = write(DIR .. "/good.yaml", "relistPeriod: 1h30m\nhealthzPort: 0\nnodeName: node-1\n"
      .. "staticPodURLHeader: {Authorization: [Bearer x], X-Node: node-1}\ncrashLoopBackOff: {max: 2m}\n")
    local cfg, problems = acfg.load(path)
    t.ok(cfg, problems and table.concat(problems, "\n"))
    t.eq(cfg.relistPeriod, 5400)
    t.eq(cfg.staticPodURLHeader, { "Authorization: Bearer x", "X-Node: node-1" })
    t.eq(acfg.parse_duration("292y"), nil)
    t.eq(acfg.parse_duration("2562047h"), 2562047 * 3600, "Go's largest whole-hour duration")
  end)

  t.it("the binary: exit status 2 and every problem on stderr; secrets not echoed", function()
    local path = write(DIR .. "/bin.yaml", "healthzPort: x\nstaticPodURLHeader: {A: [" .. SECRET .. ", 1]}\n")
    local out = S.sh(string.format("%s agent --config %s; echo status=$?", KUBELUA, path))
    t.match(out, "kubelua agent: invalid configuration in " .. path:gsub("%p", "%%%0") .. ":\n")
    t.match(out, "\n  healthzPort: x: must be a port number")
    t.match(out, "\n  staticPodURLHeader.A: %(not shown%)")
    t.match(out, "status=2")
    t.ok(not out:find(SECRET, 1, true), out)
  end)
end)

-- ------------------------------------------------------- static pod files

local function pod_yaml(extra_container, extra_spec, name)
  return string.format([[
apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  %s
  containers:
  - name: app
    image: busybox
    %s
]], name or "web", extra_spec or "", extra_container or "")
end

t.describe("static pod manifests", function()
  local MANIFESTS = {
    { "invalid YAML", "apiVersion: v1\nkind: Pod\nmetadata: {name: x\n",
      "^YAML: .*/m%d+%.yaml:4:1: did not find expected ',' or '}' .*, please check config file$" },
    { "binary junk", "\127ELF\2\1\1\0\0\0", "^YAML: .*/m%d+%.yaml: byte %d+: control characters are not allowed" },
    { "not UTF-8", "metadata: {name: \255\254}\n", "^YAML: .*/m%d+%.yaml: byte 17: invalid leading UTF%-8 octet %(#FF%), please check config file$" },
    { "an empty file", "", "^/.*/m%d+%.yaml: empty document, please check config file$" },
    { "a list", "- a\n- b\n", "^.*/m%d+%.yaml: invalid pod: name is needed for the pod$" },
    { "not a Pod", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {}\n",
      '^.*/m%d+%.yaml: invalid pod: kind "Deployment", expected Pod$' },
    { "no name", "apiVersion: v1\nkind: Pod\nmetadata: {}\nspec: {containers: [{name: a, image: b}]}\n",
      "^.*/m%d+%.yaml: invalid pod: name is needed for the pod$" },
    { "a name that is a list", "kind: Pod\nmetadata: {name: [a]}\nspec: {containers: [{name: a, image: b}]}\n",
      "invalid pod: name is needed for the pod$" },
    { "no spec", "kind: Pod\nmetadata: {name: x}\n", "invalid pod: spec: required value$" },
    { "no containers", "kind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n",
      "spec.containers: required value: at least one container" },
    { "duplicate container names", pod_yaml("", nil):gsub("  containers:\n", "  containers:\n  - {name: app, image: x}\n"),
      'spec.containers%[2%]%.name: duplicate value "app"' },
    { "an upper-case name", pod_yaml(nil, nil, "Web_1"), 'metadata.name: invalid value "Web_1%-n1"' },
    { "a 300-character name", pod_yaml(nil, nil, ("a"):rep(300)), "metadata.name: invalid value" },
    { "a port out of range", pod_yaml("ports: [{containerPort: 99999}]"),
      "spec.containers%[1%]%.ports%[1%]%.containerPort: must be between 1 and 65535, inclusive" },
    { "a negative grace period", pod_yaml(nil, "terminationGracePeriodSeconds: -5"),
      "spec.terminationGracePeriodSeconds: must be a non%-negative number" },
    { "a probe with two handlers", pod_yaml("livenessProbe: {tcpSocket: {port: 1}, exec: {command: [x]}}"),
      "livenessProbe: may not specify more than 1 handler type" },
    { "a probe period of 0", pod_yaml("readinessProbe: {tcpSocket: {port: 1}, periodSeconds: -1}"),
      "readinessProbe.periodSeconds: must be greater than or equal to 1" },
    { "an unknown restart policy", pod_yaml(nil, "restartPolicy: Sometimes"),
      'spec.restartPolicy: unsupported value "Sometimes"' },
    { "billion laughs", "kind: Pod\n" .. bomb(), "document contains excessive aliasing" },
    { "deep nesting", deep(1000), "nesting deeper than 100 levels" },
    { "a file over 10 MiB", ("#"):rep(10 * 1024 * 1024 + 1), "more than the limit of 10485760" },
  }
  for i, c in ipairs(MANIFESTS) do
    t.it(c[1], function()
      local path = write(string.format("%s/m%d.yaml", DIR, i), c[2])
      local p, err, code = filesrc.load(path, { node = "n1" })
      t.eq(p, nil)
      t.eq(code, "INVALID")
      t.match(err, c[3])
      t.ok(err:find(path, 1, true), "the error names the file: " .. err)
      t.ok(#err < 2000, "the error is not a dump of the input (" .. #err .. " bytes)")
    end)
  end

  t.it("a symlink loop: ELOOP from the loader, and the directory source treats it as absent", function()
    local d = DIR .. "/loops"
    S.sh(string.format("mkdir -p %s && ln -s a %s/b && ln -s b %s/a && ln -s /nonexistent %s/dangling", d, d, d, d))
    local p, err = filesrc.load(d .. "/a", { node = "n1" })
    t.eq(p, nil)
    t.match(err, "^ELOOP: " .. d:gsub("%p", "%%%0") .. "/a: too many symbolic links")
  end)

  t.it("a directory of hostile files: each reported by name, the good pod still loads", function()
    local d = DIR .. "/pods"
    S.sh("mkdir -p " .. d .. "/sub")
    for i, c in ipairs(MANIFESTS) do
      write(string.format("%s/bad%02d.yaml", d, i), c[2])
    end
    S.sh(string.format("cd %s && ln -s x loop1 && ln -s loop1 x && ln -s /nonexistent dangling && mkfifo fifo "
      .. "&& ln -s /dev/zero zero.yaml", d))
    write(d .. "/zgood.yaml", pod_yaml(nil, nil, "good"))
    local updates, errors = {}, {}
    local pc = config.new{ on_update = function(u) updates[#updates + 1] = u end }
    local src = assert(filesrc.start(pc, { path = d, node = "n1", on_error = function(e)
      errors[#errors + 1] = e
    end }))
    t.ok(S.wait_for(function() return #updates > 0 end, 20), "the source sent its first SET")
    src:stop()
    t.eq(#updates[1].pods, 1)
    t.eq(updates[1].pods[1].metadata.name, "good-n1")
    for i in ipairs(MANIFESTS) do
      t.ok(any_match(errors, string.format("/bad%02d%%.yaml[: ]", i)), "bad" .. i .. " reported")
    end
    t.ok(any_match(errors, "/fifo: not a regular file, ignoring$"), "a FIFO is never opened")
    t.ok(any_match(errors, "/zero%.yaml: not a regular file, ignoring$"), "a device is never read")
    t.ok(any_match(errors, "/sub: is a directory; not recursing$"))
    t.eq(#errors, #MANIFESTS + 3, "one report per bad entry; loops and dangling links count as absent")
    t.ok(S.wait_for(function() return src.stopped end, 5), "the source's task ended")
  end)
end)

-- ------------------------------------------------------ URL source bodies

t.describe("URL source bodies", function()
  local PARSE = {
    { "junk HTML", "<html><body>502 Bad Gateway</body></html>", "couldn't parse as single or multiple pods" },
    { "binary junk", "\0\1\2\3", "couldn't parse as single or multiple pods %(YAML: <string>: byte 0" },
    { "a bare JSON list of pods", json.encode(json.array({ { kind = "Pod" }, { kind = "Pod" } })),
      "^URL: a list of 2 entries; expected a Pod or a PodList" },
    { "a PodList with a bad entry", json.encode({ kind = "PodList", items = json.array({
      { kind = "Pod", metadata = { name = "ok" }, spec = { containers = json.array({ { name = "a", image = "b" } }) } },
      { kind = "Pod", metadata = { name = "bad" }, spec = { containers = json.array({ { name = "A", image = "b" } }) } },
    }) }), "^URL: items%[2%]: invalid pod: spec.containers%[1%]%.name: invalid value \"A\"" },
    { "a PodList whose items is a map", '{"kind":"PodList","items":{"a":{}}}', "^URL: a PodList whose items is not a list$" },
    { "a PodList whose items is a string", '{"kind":"PodList","items":"x"}', "^URL: a PodList whose items is not a list$" },
    { "a Service", '{"kind":"Service","metadata":{"name":"x"}}', '^URL: invalid pod: kind "Service", expected Pod$' },
    { "a JSON bomb of nesting", ("["):rep(5000) .. ("]"):rep(5000), "nesting deeper than 100 levels" },
    { "billion laughs", bomb(), "excessive aliasing" },
  }
  for _, c in ipairs(PARSE) do
    t.it(c[1], function()
      local pods, err, code = httpsrc.parse(c[2], "URL", "n1")
      t.eq(pods, nil)
      t.eq(code, "INVALID")
      t.match(err, c[3])
      t.ok(#err < 2000, "short: " .. #err .. " bytes")
    end)
  end
  t.it("a PodList with items null or [] is an empty list (as kubelet)", function()
    t.eq(assert(httpsrc.parse('{"kind":"PodList","items":null}', "URL", "n1")), {})
    t.eq(assert(httpsrc.parse('{"kind":"PodList","items":[]}', "URL", "n1")), {})
  end)

  t.it("a live server: status, size, time and auth failures are reported; the last good pods stay", function()
    local GOOD = pod_yaml(nil, nil, "fromurl")
    local mode = "good"
    local release = task.waker() -- ends the slow answer
    local auth_seen
    local srv = assert(server.http{ port = 0, routes = { ["/pods"] = function(req)
      auth_seen = req.headers.authorization
      if mode == "good" then
        return 200, GOOD, { ["Content-Type"] = "application/yaml" }
      elseif mode == "html" then
        return 200, "<html>login</html>", { ["Content-Type"] = "text/html" }
      elseif mode == "huge" then
        return 200, ("x"):rep(10 * 1024 * 1024 + 10)
      elseif mode == "slow" then
        release:wait(5)
        return 200, GOOD
      elseif mode == "denied" then
        return 401, "Unauthorized: token " .. tostring(req.headers.authorization)
      elseif mode == "boom" then
        error("handler exploded")
      end
    end } })
    local url = "http://127.0.0.1:" .. srv:port() .. "/pods"
    local sets, errors = {}, {}
    local pc = config.new{ on_update = function(u) sets[#sets + 1] = u end }
    local saved = httpsrc.TIMEOUT
    local src = httpsrc.start(pc, { url = url, node = "n1", period = 3600,
      headers = { "Authorization: Bearer " .. SECRET },
      on_error = function(e) errors[#errors + 1] = e end })
    local ok, err = pcall(function()
      t.ok(S.wait_for(function() return src.polls == 1 and #sets == 1 end, 10), "first poll")
      t.eq(auth_seen, "Bearer " .. SECRET, "the header was sent")
      local EXPECT = {
        { "html", "^" .. url:gsub("%p", "%%%0") .. ': received "<html>login</html>", but couldn\'t parse' },
        { "huge", "^TOO_LARGE: GET " .. url:gsub("%p", "%%%0") .. ": .*" },
        { "slow", "^TIMEOUT: GET " .. url:gsub("%p", "%%%0") .. ": " },
        { "denied", "^" .. url:gsub("%p", "%%%0") .. ": 401$" },
        { "boom", "^" .. url:gsub("%p", "%%%0") .. ": 500$" },
      }
      for _, e in ipairs(EXPECT) do
        mode = e[1]
        httpsrc.TIMEOUT = mode == "slow" and 0.5 or saved -- only the slow answer waits for it
        local n = #errors
        src:poll()
        t.eq(#errors, n + 1, mode .. ": one error: " .. table.concat(errors, "\n", n + 1))
        t.match(errors[#errors] or "", e[2])
      end
      t.eq(#sets, 1, "nothing bad was sent: the pod from the first poll stays")
      mode = "good"
      GOOD = pod_yaml(nil, nil, "fromurl2")
      src:poll()
      local ops = {}
      for i = 2, #sets do
        ops[#ops + 1] = sets[i].op .. " " .. sets[i].pods[1].metadata.name
      end
      table.sort(ops)
      t.eq(ops, { "ADD fromurl2-n1", "REMOVE fromurl-n1" }, "a good body is taken again")
      for _, e in ipairs(errors) do
        t.ok(not e:find(SECRET, 1, true), "the Authorization value is in an error: " .. e)
      end
    end)
    httpsrc.TIMEOUT = saved
    src:stop()
    release:wake()
    srv:close()
    S.wait_for(function() return src.loop.done end, 5)
    task.sleep(0.1) -- the slow handler returns
    assert(ok, err)
  end)
end)

-- ---------------------------------------------- the API server's watch stream

t.describe("the API server's pods (watch stream)", function()
  -- A fake kubelua.k8s client: the watch's callbacks are driven by hand.
  local function fake_client(items)
    local c = {}
    function c:watch(_, opts)
      c.opts = opts
      return { items = function() return items end, stop = function() end }
    end
    return c
  end
  local function good(name)
    return { kind = "Pod", metadata = { name = name, namespace = "default", uid = "uid-" .. name,
      resourceVersion = "1" }, spec = { containers = { { name = "a", image = "b" } } } }
  end
  t.it("objects that are no runnable pod are reported once each, and left out", function()
    local items = {
      good("a"),
      { kind = "Node", metadata = { name = "n1", namespace = "default", uid = "u1", resourceVersion = "7" } },
      { kind = "Pod", metadata = { name = "nouid", namespace = "default", resourceVersion = "8" },
        spec = { containers = { { name = "a", image = "b" } } } },
      { kind = "Pod", metadata = { name = "nospec", namespace = "default", uid = "u3", resourceVersion = "9" } },
    }
    local sets, errors = {}, {}
    local pc = config.new{ on_update = function(u) sets[#sets + 1] = u end }
    local client = fake_client(items)
    local src = apisrc.start(pc, { client = client, node = "n1", on_error = function(e, code)
      errors[#errors + 1] = { e, code }
    end })
    client.opts.on_sync(items)
    t.eq(#sets, 1)
    t.eq(#sets[1].pods, 1)
    t.eq(sets[1].pods[1].metadata.name, "a")
    t.eq(#errors, 3)
    t.eq(errors[1], { 'INVALID: /api/v1/pods: default/n1: an object of kind "Node", not a Pod; ignored', "INVALID" })
    t.eq(errors[2][1], "INVALID: /api/v1/pods: default/nouid: no metadata.uid; ignored")
    t.eq(errors[3][1], "INVALID: /api/v1/pods: default/nospec: no spec.containers; ignored")
    -- the next event: nothing new to report
    items[#items + 1] = good("b")
    client.opts.on_event("ADDED", items[#items])
    t.eq(#errors, 3, "reported once")
    t.eq({ sets[#sets].op, #sets[#sets].pods, sets[#sets].pods[1].metadata.name }, { "ADD", 1, "b" })
    src:stop()
  end)
  t.it("stream faults are covered by spec/k8s_spec.lua", function()
    -- malformed JSON, ERROR events, truncated and cut lines, unknown types and
    -- control bytes: "... : a clear error, then the watch recovers" there.
    local f = assert(io.open(S.ROOT .. "/spec/k8s_spec.lua"))
    local src = f:read("*a")
    f:close()
    for _, name in ipairs({ "malformed JSON", "an ERROR event other than 410", "an unknown event type",
      "a truncated line at the end of the stream" }) do
      t.ok(src:find('bad_input("' .. name, 1, true), name)
    end
    t.eq(require("kubelua.k8s.watch").defaults.max_line, 16 * 1024 * 1024, "the line cap")
  end)
end)

-- ----------------------------------------------------------------- CLI flags

t.describe("CLI flags: exit status 2 and a message naming the flag", function()
  local CLI = {
    { "ps --bogus", "kubelua ps: unknown flag: %-%-bogus" },
    { "ps --name", "kubelua ps: flag needs an argument: %-%-name" },
    { "ps --name '['", 'kubelua ps: invalid regular expression "%[" for %-%-name' },
    { "ps -o xml", 'kubelua ps: unsupported output format "xml" %(one of: table, json, yaml%)' },
    { "ps -n x", 'kubelua ps: invalid value "x" for flag %-n: not an integer' },
    { "ps --state weird", "kubelua ps: %-%-state should be one of" },
    { "images --bogus=1", "kubelua images: unknown flag: %-%-bogus" },
    { "logs", "kubelua logs: no container ID given" },
    { "no-such-command", 'kubelua: unknown command "no%-such%-command"' },
    { "agent --bogus", "kubelua agent: unknown flag: %-%-bogus" },
    { "agent --config", "kubelua agent: flag needs an argument: %-%-config" },
    { "agent --healthz-port abc", "healthzPort: abc: must be a port number" },
    { "agent --node-name Bad_Name", 'nodeName: "Bad_Name": must be a lower%-case RFC 1123 subdomain' },
  }
  for _, c in ipairs(CLI) do
    t.it(c[1], function()
      local out = S.sh(string.format("CONTAINER_RUNTIME_ENDPOINT=unix:///nonexistent %s %s; echo status=$?",
        KUBELUA, c[1]))
      t.match(out, c[2])
      t.match(out, "status=2$")
      t.ok(not out:find("stack traceback", 1, true), out)
    end)
  end
end)

-- ---------------------------------------------------------------------- REPL

t.describe("the REPL", function()
  t.it("bad input gets an error line each; the prompt goes on; os.exit leaves cleanly", function()
    local input = write(DIR .. "/repl.in", table.concat({
      "for", -- a syntax error
      ")",
      "error({code = 1, msg = 'bad'})", -- an error object that is a table
      "error(setmetatable({}, {__tostring = function() error('nested') end}))",
      "return setmetatable({}, {__tostring = function() error('x') end})", -- cannot be shown
      "s = ('x'):rep(2^24)", -- a 16 MiB string
      "return #s",
      "print('alive')",
      "os.exit(3)",
      "print('not reached')",
    }, "\n") .. "\n")
    local hist = DIR .. "/repl.hist"
    local out = S.sh(string.format("HOME=%s KUBELUA_HISTORY=%s %s repl < %s; echo status=$?", DIR, hist,
      KUBELUA, input))
    t.match(out, "error: stdin:2: '<name>' expected near ')'", "'for' continued on the next line, then failed")
    t.match(out, 'error: %(error object%) { code = 1, msg = "bad" }')
    t.ok(not out:find("error in error handling", 1, true), out)
    t.match(out, "\n16777216\n")
    t.match(out, "\nalive\n")
    t.ok(not out:find("not reached", 1, true), "os.exit left the REPL")
    t.match(out, "status=3$")
    t.match(S.read_file(hist) or "", "os.exit%(3%)", "history was written on the way out")
  end)
end)

-- ------------------------------------------------------ policy return values

t.describe("GC policy hooks", function()
  local function candidates()
    return {
      { id = "c1", state = "CONTAINER_EXITED" },
      { id = "c2", state = "CONTAINER_EXITED" },
      { id = "run", state = "CONTAINER_RUNNING" },
    }
  end
  local function forbidden(e)
    return e.state == "CONTAINER_RUNNING" and "it is running" or nil
  end
  local HOOKS = {
    { "returns nil", function() end, "^POLICY: containers hook returned nil, not a list$" },
    { "returns a string", function() return "c1" end, "^POLICY: containers hook returned string, not a list$" },
    { "returns a map", function() return { c1 = true } end,
      '^POLICY: containers hook returned a table with key "c1", not a list$' },
    { "returns a sparse list", function() return { "c1", nil, "c2" } end, "not a list$" },
    { "returns a list with a hole", function()
      local l = { "c1", "c2", "run" }
      l[2] = nil
      return l
    end, "^POLICY: containers hook returned a table with .*, not a list$" },
    { "names no candidate", function() return { "c1", "nope" } end,
      "^POLICY: containers hook: entry 2 %(nope%) is not a candidate$" },
    { "names a running container", function() return { "run" } end,
      "^POLICY: containers hook: run may not be removed: it is running$" },
    { "returns a table that is no candidate", function() return { { id = "nope" } } end,
      "^POLICY: containers hook: entry 1 %(nope%) is not a candidate$" },
    { "throws", function() error("policy bug") end, "^POLICY: containers hook failed: .*policy bug" },
    { "throws a table", function() error({ 1 }) end, "^POLICY: containers hook failed: table" },
  }
  for _, c in ipairs(HOOKS) do
    t.it(c[1] .. ": a policy error, nothing chosen", function()
      local final, err = hook.run("containers", c[2], candidates(), {}, {}, { forbidden = forbidden })
      t.eq(final, nil)
      t.match(err, c[3])
    end)
  end
  t.it("a good hook still works: IDs or entries", function()
    local final = assert(hook.run("containers", function(cands) return { "c2", cands[1] } end, candidates(), {}, {},
      { forbidden = forbidden }))
    t.eq({ final[1].id, final[2].id, final[1].rule }, { "c2", "c1", "policy" })
  end)
end)

t.describe("prober policy hooks", function()
  local T0 = 1000
  local function setup(policy)
    local clock = fakeclock.new(T0)
    local logs = {}
    local mgr = prober.new{ clock = clock, metrics = false, random = function() return 0 end, policy = policy,
      probe = function() return "success", "", { duration = 0 } end,
      log = function(l, m) logs[#logs + 1] = l .. " " .. m end }
    mgr.started_at = T0 - 3600
    mgr:add_pod({ metadata = { uid = "uid-1", name = "web", namespace = "default" },
      spec = { containers = { { name = "app", readinessProbe = { tcpSocket = { port = 1 }, failureThreshold = 1 } } } },
      status = { phase = "Running", containerStatuses = { { name = "app", containerID = "c1",
        state = { running = { startedAt = T0 } } } } } })
    return clock, mgr, logs
  end
  local function finish(clock, mgr)
    mgr:stop()
    clock:settle()
    t.ok(mgr:join(2), "every worker exited")
  end
  local GARBAGE = {
    { "a number", function() return 42 end, "policy wrap_probe returned number, nil, nil" },
    { "an unknown word", function() return "yes" end, 'policy wrap_probe returned "yes", nil, nil' },
    { "a table output", function() return "success", {} end, "policy wrap_probe returned \"success\", table, nil" },
    { "details that are a string", function() return "failure", "x", "d" end, "string %(want a result" },
    { "nothing", function() end, "policy wrap_probe returned nil, nil, nil" },
  }
  for _, c in ipairs(GARBAGE) do
    t.it("wrap_probe returning " .. c[1] .. ": an error of that run, not a verdict; the worker goes on", function()
      local clock, mgr, logs = setup({ wrap_probe = c[2] })
      clock:advance(0)
      local w = select(2, next(mgr.workers))
      t.match(w.last_reason or "", c[3])
      t.eq(mgr:result("readiness", "c1"), "Failure", "still the initial value: garbage is no success")
      clock:advance(30)
      t.ok(w.probes >= 3, "probed again: " .. w.probes)
      t.eq(mgr:count(), 1)
      finish(clock, mgr)
      t.ok(#logs >= 0)
    end)
  end
  for _, c in ipairs({ { "a string", "5" }, { "NaN", 0 / 0 }, { "infinity", math.huge }, { "negative", -1 } }) do
    t.it("next_delay returning " .. c[1] .. ": logged, the period is used", function()
      local clock, mgr, logs = setup({ next_delay = function() return c[2] end })
      clock:advance(0)
      clock:advance(25)
      local w = select(2, next(mgr.workers))
      t.eq(w.probes, 3, "every 10 s (the period)")
      t.ok(any_match(logs, "^E prober: policy next_delay returned .*; using the period %(10 s%)$"), table.concat(logs, "\n"))
      finish(clock, mgr)
    end)
  end
end)

-- ------------------------------------------------------------------ security

t.describe("TLS toward the API server", function()
  local function kubeconfig(name, cluster)
    cluster.server = cluster.server or "https://127.0.0.1:1"
    return write(DIR .. "/" .. name, assert(json.encode({
      apiVersion = "v1", kind = "Config", ["current-context"] = "c",
      clusters = { { name = "c", cluster = cluster } },
      users = { { name = "u", user = { token = SECRET } } },
      contexts = { { name = "c", context = { cluster = "c", user = "u" } } },
    })))
  end
  -- connect in a separate process and return what it printed and logged
  local function connect(path)
    local script = write(DIR .. "/connect.lua", string.format([[
      local api = assert(require("kubelua.k8s").connect{ kubeconfig = %q })
      local o = api._base(5)
      print("verify_tls=" .. tostring(o.verify_tls))
      print(api:get("/api/v1/namespaces/default/pods/x"))
    ]], path))
    return S.sh(string.format("%s run %s", KUBELUA, script))
  end
  t.it("verification is on by default, and nothing is logged about it", function()
    local out = connect(kubeconfig("kc-default", {}))
    t.match(out, "verify_tls=true")
    t.ok(not out:find("insecure", 1, true), out)
    t.ok(not out:find(SECRET, 1, true), "the token is in: " .. out)
  end)
  t.it("only insecure-skip-tls-verify: true turns it off, with a warning in the log", function()
    local out = connect(kubeconfig("kc-insecure", { ["insecure-skip-tls-verify"] = true }))
    t.match(out, "verify_tls=false")
    t.match(out, "W%d+ [%d:.]+ +%d+ kubelua%] k8s: kubeconfig .*kc%-insecure .*: insecure%-skip%-tls%-verify is set")
    for _, v in ipairs({ "yes", "1", "false" }) do
      out = connect(kubeconfig("kc-" .. v, { ["insecure-skip-tls-verify"] = v }))
      t.match(out, "verify_tls=true", v .. " is not true")
    end
  end)
  t.it("a token over plain HTTP is warned about", function()
    local out = connect(kubeconfig("kc-plain", { server = "http://127.0.0.1:1" }))
    t.match(out, "k8s: kubeconfig .*: credentials are sent over plain HTTP to http://127%.0%.0%.1:1")
    t.ok(not out:find(SECRET, 1, true), "the token is in: " .. out)
  end)
end)

t.describe("cleanup", function()
  t.it("removes the temporary folder", function()
    S.rm(DIR)
    t.ok(not S.exists(DIR))
  end)
end)
