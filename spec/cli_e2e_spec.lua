-- The crictl-style commands, run as real processes against the private
-- containerd of the test run: every output format (JSON parsed, YAML read,
-- table columns checked), -q output through a shell pipeline, exit codes
-- and stderr for a missing object, a wrong endpoint and bad flags.
local t = require "spec.t"
local S = require "spec.support"
local json = require "kubelua.json"
local task = require "kubelua.task"

local ctd, rt = S.runtime({ timeout = 30 })
local IMAGE = "kubelua.local/busybox:latest"

local KUBELUA = S.kubelua_bin()

local tmp = S.tmpdir("cli")
local logdir = tmp .. "/logs"
S.sh("mkdir -p " .. logdir)
local uid = "cli-" .. tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local PORT = 30000 + math.random(0, 9999) -- httpd in the host network namespace

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Run `kubelua ARGS...` (a list, or a shell snippet string placed after
-- the binary) with CONTAINER_RUNTIME_ENDPOINT set to the test containerd
-- (unless env starts with -u); returns { out, err, code }.
local function kl(args, env)
  local words = type(args) == "table" and {} or { args }
  if type(args) == "table" then
    for i, a in ipairs(args) do
      words[i] = q(a)
    end
  end
  -- env: `env` options and assignments; they come after the endpoint's
  -- assignment unless they start with -u (which must come first)
  env = env or ""
  local ep = "CONTAINER_RUNTIME_ENDPOINT=" .. q(ctd.endpoint)
  local prefix = env:match("^%-u") and (env .. " ") or (ep .. " " .. env)
  local cmd = string.format("env %s %s %s >%s/out 2>%s/err; echo $?", prefix, q(KUBELUA),
    table.concat(words, " "), tmp, tmp)
  local f = assert(io.popen(cmd))
  local code = tonumber(f:read("*a"))
  f:close()
  return { out = S.read_file(tmp .. "/out") or "", err = S.read_file(tmp .. "/err") or "", code = code }
end

local function ok(r, what)
  t.ok(r.code == 0, (what or "command") .. " exited " .. tostring(r.code) .. "; stderr: " .. r.err)
  return r
end

local function lines(s)
  local out = {}
  for l in s:gmatch("[^\n]+") do
    out[#out + 1] = l
  end
  return out
end

-- Table cells: columns are separated by at least 3 spaces (Go tabwriter's
-- padding); single spaces stay inside a cell ("2 seconds ago").
local function cells(line)
  local out = {}
  for c in (line .. "   "):gmatch("(.-)   +") do
    out[#out + 1] = c
  end
  return out
end

local function decode(s)
  local v, err = json.decode(s)
  t.ok(v ~= nil, "valid JSON: " .. tostring(err) .. "\n" .. s)
  return v
end

local pod_config = {
  metadata = { name = "cli-pod", uid = uid, namespace = "kubelua-cli", attempt = 0 },
  log_directory = logdir,
  labels = { ["io.kubernetes.pod.name"] = "cli-pod", ["io.kubernetes.pod.namespace"] = "kubelua-cli",
    suite = "cli_e2e" },
  linux = {
    cgroup_parent = "/kubelua-test/pod" .. uid,
    security_context = { namespace_options = { network = "NODE", pid = "CONTAINER", ipc = "POD" } },
  },
}

local pod, ids = nil, {}

local function create(name, command, start)
  local r = assert(rt:create_container{
    pod_sandbox_id = pod,
    config = {
      metadata = { name = name, attempt = 0 },
      image = { image = IMAGE },
      command = command,
      log_path = name .. "/0.log",
      labels = { ["io.kubernetes.container.name"] = name, ["io.kubernetes.pod.name"] = "cli-pod",
        ["io.kubernetes.pod.namespace"] = "kubelua-cli", suite = "cli_e2e" },
    },
    sandbox_config = pod_config,
  })
  if start ~= false then
    assert(rt:start_container{ container_id = r.container_id })
  end
  ids[name] = r.container_id
  return r.container_id
end

local LONG = string.rep("x", 20000) -- longer than the runtime's log line buffer: split into P records

t.describe("setup", function()
  t.it("a pod with containers that log, serve HTTP and tick", function()
    pod = assert(rt:run_pod_sandbox{ config = pod_config }).pod_sandbox_id
    create("app", { "/bin/sh", "-c", "echo hello; echo oops >&2; printf '" .. LONG ..
      "\\n'; echo done; while true; do sleep 1; done" })
    create("web", { "/bin/httpd", "-f", "-p", "127.0.0.1:" .. PORT, "-h", "/etc" })
    create("ticker", { "/bin/sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done" })
    create("idle", { "/bin/true" }, false) -- created, never started
    t.ok(S.wait_for(function()
      local log = S.read_file(logdir .. "/app/0.log")
      return log and log:find("stdout F done", 1, true)
    end, 10), "app logged")
  end)
end)

t.describe("ps", function()
  t.it("table: crictl's columns, truncated IDs, newest first", function()
    local r = ok(kl{ "ps", "--label", "suite=cli_e2e" })
    local l = lines(r.out)
    t.eq(cells(l[1]), { "CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD", "NAMESPACE" })
    t.eq(#l, 4, "three running containers:\n" .. r.out)
    local seen = {}
    for i = 2, #l do
      local c = cells(l[i])
      t.eq(#c, 9, l[i])
      t.eq(#c[1], 13, "truncated container ID")
      t.eq(c[1], ids[c[5]]:sub(1, 13))
      t.eq(c[2], IMAGE)
      t.match(c[3], "ago$")
      t.eq(c[4], "Running")
      t.eq(c[6], "0")
      t.eq(c[7], pod:sub(1, 13))
      t.eq(c[8], "cli-pod")
      t.eq(c[9], "kubelua-cli")
      seen[c[5]] = true
    end
    t.eq(seen, { app = true, web = true, ticker = true })
    t.eq(cells(l[2])[5], "ticker", "newest first")
  end)
  t.it("-a adds the created container; --no-trunc shows full IDs", function()
    local r = ok(kl{ "ps", "-a", "--no-trunc", "--label", "suite=cli_e2e" })
    local l = lines(r.out)
    t.eq(#l, 5)
    local idle = cells(l[2])
    t.eq(idle[5], "idle")
    t.eq(idle[4], "Created")
    t.eq(idle[1], ids.idle)
    t.eq(idle[7], pod)
  end)
  t.it("-o json: crictl's field names, exact 64-bit timestamps", function()
    local v = decode(ok(kl{ "ps", "-o", "json", "--pod", pod }).out)
    t.eq(#v.containers, 3)
    local c = v.containers[1]
    t.eq(c.id, ids.ticker)
    t.eq(c.podSandboxId, pod)
    t.eq(c.metadata, { name = "ticker", attempt = 0 })
    t.eq(c.state, "CONTAINER_RUNNING")
    t.eq(c.labels["io.kubernetes.container.name"], "ticker")
    t.eq(c.annotations, {})
    local want = assert(rt:container_status{ container_id = ids.ticker }).status.created_at
    t.eq(c.createdAt, (tostring(want):gsub("LL$", "")), "createdAt as exact decimal text (protojson)")
  end)
  t.it("-o yaml", function()
    local r = ok(kl{ "ps", "-o", "yaml", "--pod", pod, "--name", "^web$" })
    t.match(r.out, "^containers:\n%- ")
    t.match(r.out, "\n  id: " .. ids.web .. "\n")
    t.match(r.out, "\n  state: CONTAINER_RUNNING\n")
    t.match(r.out, "\n    name: web\n")
    t.match(r.out, '\n  createdAt: "%d+"\n')
  end)
  t.it("filters: --name regex, --label, --state, --latest, --last, --image, -q", function()
    t.eq(ok(kl{ "ps", "-q", "--pod", pod, "--name", "^(app|web)$" }).out, table.concat({ ids.web, ids.app }, "\n") .. "\n")
    t.eq(ok(kl{ "ps", "-q", "--pod", pod, "--label", "io.kubernetes.container.name=app" }).out, ids.app .. "\n")
    t.eq(ok(kl{ "ps", "-q", "--pod", pod, "--state", "created" }).out, ids.idle .. "\n")
    t.eq(ok(kl{ "ps", "-q", "--pod", pod, "--state", "exited" }).out, "")
    t.eq(ok(kl{ "ps", "-q", "--pod", pod, "--latest" }).out, ids.idle .. "\n")
    t.eq(#lines(ok(kl{ "ps", "-q", "--pod", pod, "-n", "2" }).out), 2)
    t.eq(#lines(ok(kl{ "ps", "-q", "--pod", pod, "--image", IMAGE }).out), 3)
    t.eq(ok(kl{ "ps", "-q", "--pod", pod, "--image", "kubelua.local/none:1" }).out, "")
    t.eq(ok(kl{ "ps", "-q", "--label", "suite=cli_e2e", "--namespace", "^kubelua-cl", "--name", "tick" }).out, ids.ticker .. "\n")
  end)
  t.it("-q output feeds a shell pipeline: ps -q | xargs inspect", function()
    local r = ok(kl(string.format("ps -q --pod %s | xargs env CONTAINER_RUNTIME_ENDPOINT=%s %s inspect -q", pod,
      q(ctd.endpoint), q(KUBELUA))))
    local v = decode(r.out)
    t.eq(#v, 3, "an array, one status per container")
    local got = {}
    for _, s in ipairs(v) do
      got[s.status.id] = s.status.metadata.name
      t.eq(s.info, nil, "-q leaves out the verbose info")
    end
    t.eq(got, { [ids.app] = "app", [ids.web] = "web", [ids.ticker] = "ticker" })
  end)
end)

local HAVE_PYYAML = select(2, S.sh("/usr/bin/python3 -c 'import yaml'"))

t.describe("yaml", function()
  local function same(args)
    local j = ok(kl(args .. " -o json"))
    local y = ok(kl(args .. " -o yaml"))
    local jf, yf = io.open(tmp .. "/a.json", "w"), io.open(tmp .. "/a.yaml", "w")
    jf:write(j.out)
    yf:write(y.out)
    jf:close()
    yf:close()
    local out, equal = S.sh(string.format("/usr/bin/python3 -c 'import sys, json, yaml; " ..
      "a = json.load(open(sys.argv[1])); b = yaml.safe_load(open(sys.argv[2])); " ..
      "sys.exit(0 if a == b else \"differ:\\n%%r\\n%%r\" %% (a, b))' %s/a.json %s/a.yaml", tmp, tmp))
    t.ok(equal, args .. ": the YAML does not read back as the JSON: " .. out)
  end
  if HAVE_PYYAML then
    t.it("-o yaml reads back (PyYAML, YAML 1.1) as the same data as -o json", function()
      same("ps -a --pod " .. pod)
      same("pods --id " .. pod)
      same("inspect " .. ids.app)
      same("inspectp " .. pod)
      same("info")
      same("images")
    end)
  else
    t.skip("-o yaml reads back (PyYAML, YAML 1.1) as the same data as -o json", "python3-yaml is not installed")
  end
end)

t.describe("json", function()
  t.it("exact 64-bit integers, arrays vs objects, escaping, sorted keys", function()
    t.eq(json.encode({ b = 1, a = { 1, 2 }, c = {}, d = json.array(), e = "q\"\n\1" }),
      '{"a":[1,2],"b":1,"c":{},"d":[],"e":"q\\"\\n\\u0001"}')
    t.eq(json.encode(1700000000123456789LL), "1700000000123456789")
    t.eq(json.encode(18446744073709551615ULL), "18446744073709551615")
    t.eq(json.encode(0.1), "0.1")
    t.eq(json.encode("\255ok"), '"\239\191\189ok"', "invalid UTF-8 becomes U+FFFD")
    local v = assert(json.decode('{"n": 9007199254740993, "m": -9223372036854775808, "x": [], "s": "\\u00e9\\ud83d\\ude00"}'))
    t.eq(tostring(v.n), "9007199254740993LL")
    t.eq(json.encode(v), '{"m":-9223372036854775808,"n":9007199254740993,"s":"\195\169\240\159\152\128","x":[]}')
    for _, bad in ipairs({ "", "{", "[1,]", "01", "1.", '"abc', '{"a" 1}', "tru", "[1] x", '"\1"' }) do
      local none, err, code = json.decode(bad)
      t.eq(none, nil, bad)
      t.eq(code, "INVALID_ARGUMENT")
      t.match(err, "^INVALID_ARGUMENT: json: .* at byte %d+$")
    end
    t.fails(function() json.encode(0 / 0) end, "NaN")
    local loop = {}
    loop.self = loop
    t.fails(function() json.encode(loop) end, "contains itself")
  end)
end)

t.describe("pods", function()
  t.it("table, json, yaml, -q, filters", function()
    local l = lines(ok(kl{ "pods", "--label", "suite=cli_e2e" }).out)
    t.eq(cells(l[1]), { "POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME" })
    t.eq(#l, 2)
    t.eq(cells(l[2]), { pod:sub(1, 13), cells(l[2])[2], "Ready", "cli-pod", "kubelua-cli", "0", "(default)" })
    t.match(cells(l[2])[2], " ago$")
    local v = decode(ok(kl{ "pods", "-o", "json", "--label", "suite=cli_e2e", "--name", "^cli-pod$" }).out)
    t.eq(#v.items, 1)
    t.eq(v.items[1].id, pod)
    t.eq(v.items[1].metadata.uid, uid)
    t.eq(v.items[1].state, "SANDBOX_READY")
    t.match(ok(kl{ "pods", "-o", "yaml", "--id", pod }).out, "^items:\n%- .*\n  state: SANDBOX_READY\n")
    t.eq(ok(kl{ "pods", "-q", "--label", "suite=cli_e2e", "--namespace", "^kubelua-cli$", "--state", "ready" }).out, pod .. "\n")
    t.eq(ok(kl{ "pods", "-q", "--label", "suite=cli_e2e", "--namespace", "^kubelua-cli$", "--state", "notready" }).out, "")
  end)
end)

t.describe("images", function()
  t.it("table, --digests --pinned, json, -q", function()
    local l = lines(ok(kl{ "images" }).out)
    t.eq(cells(l[1]), { "IMAGE", "TAG", "IMAGE ID", "SIZE" })
    local row
    for i = 2, #l do
      local c = cells(l[i])
      if c[1] == "kubelua.local/busybox" then
        row = c
      end
    end
    t.ok(row, "busybox listed")
    local img = assert(rt:image_status{ image = { image = IMAGE } }).image
    t.eq(row[2], "latest")
    t.eq(row[3], img.id:sub(8, 20))
    t.match(row[4], "^%d[%d.]*[kMG]?B$")
    l = lines(ok(kl{ "images", "--digests", "--pinned", IMAGE }).out)
    t.eq(cells(l[1]), { "IMAGE", "TAG", "DIGEST", "IMAGE ID", "SIZE", "PINNED" })
    t.eq(#l, 2, "the REPOSITORY:TAG argument filters")
    t.eq(cells(l[2])[6], tostring(img.pinned))
    local v = decode(ok(kl{ "images", "-o", "json", IMAGE }).out)
    t.eq(v.images[1].id, img.id)
    t.eq(v.images[1].repoTags, { IMAGE })
    t.eq(v.images[1].size, string.format("%d", img.size))
    t.ok(ok(kl{ "images", "-q" }).out:find(img.id .. "\n", 1, true), "-q lists IDs")
  end)
end)

t.describe("inspect, inspectp, inspecti", function()
  t.it("inspect: json status + info, yaml, table", function()
    local v = decode(ok(kl{ "inspect", ids.app:sub(1, 13) }).out)
    t.eq(v.status.id, ids.app)
    t.eq(v.status.state, "CONTAINER_RUNNING")
    t.eq(v.status.logPath, logdir .. "/app/0.log")
    t.match(v.status.createdAt, "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[.%d]*Z$")
    t.eq(v.status.finishedAt, "0001-01-01T00:00:00Z", "not finished: Go's zero time, as crictl")
    t.eq(type(v.info.pid), "number", "containerd's verbose info is parsed JSON")
    local idle = decode(ok(kl{ "inspect", "-q", ids.idle }).out)
    t.eq(idle.status.startedAt, "0001-01-01T00:00:00Z")
    local y = ok(kl{ "inspect", "-q", "-o", "yaml", ids.web }).out
    t.match(y, "^status:\n")
    t.match(y, "\n  id: " .. ids.web .. "\n")
    local tab = ok(kl{ "inspect", "-o", "table", "-q", ids.web }).out
    t.match(tab, "^ID: " .. ids.web .. "\nName: web\nState: CONTAINER_RUNNING\nCreated: .* ago\nStarted: ")
    t.match(tab, "\tio.kubernetes.container.name %-> web\n")
  end)
  t.it("inspect: a missing container is exit 1 with NOT_FOUND; the others still print", function()
    local r = kl{ "inspect", "nope-not-there" }
    t.eq(r.code, 1)
    t.eq(r.out, "")
    t.match(r.err, "^kubelua inspect: NOT_FOUND: ")
    r = kl{ "inspect", "-q", ids.web, "nope-not-there" }
    t.eq(r.code, 1)
    t.eq(decode(r.out).status.id, ids.web)
    t.match(r.err, "NOT_FOUND")
  end)
  t.it("inspectp and inspecti", function()
    local v = decode(ok(kl{ "inspectp", pod }).out)
    t.eq(v.status.id, pod)
    t.eq(v.status.metadata.name, "cli-pod")
    t.eq(v.status.state, "SANDBOX_READY")
    t.match(v.status.createdAt, "Z$")
    t.ok(v.info ~= nil, "verbose info")
    t.match(ok(kl{ "inspectp", "-o", "table", "-q", pod }).out, "^ID: " .. pod .. "\nName: cli%-pod\nUID: " .. uid:gsub("%-", "%%-") .. "\n")
    t.match(ok(kl{ "inspectp", "-o", "yaml", "-q", pod }).out, "\n  state: SANDBOX_READY\n")
    local r = kl{ "inspectp", "nope-not-there" }
    t.eq(r.code, 1)
    t.match(r.err, "^kubelua inspectp: NOT_FOUND: ")
    local i = decode(ok(kl{ "inspecti", IMAGE }).out)
    t.eq(i.status.repoTags, { IMAGE })
    t.match(i.status.id, "^sha256:")
    t.ok(i.info and i.info.imageSpec, "verbose info holds the image config")
    t.match(ok(kl{ "inspecti", "-o", "table", "-q", IMAGE }).out, "^ID: sha256:%x+\nTag: " .. IMAGE:gsub("%.", "%%.") .. "\n")
    r = kl{ "inspecti", "kubelua.local/none:1" }
    t.eq(r.code, 1)
    t.match(r.err, "^kubelua inspecti: NOT_FOUND: no such image")
  end)
end)

t.describe("runtime", function()
  t.it("info, version, imagefsinfo in every format", function()
    local v = decode(ok(kl{ "info", "-q" }).out)
    t.eq(v.status.conditions[1], { type = "RuntimeReady", status = true, reason = "", message = "" })
    t.eq(v.config, nil)
    local full = decode(ok(kl{ "info" }).out)
    t.eq(type(full.config), "table", "containerd's config, parsed")
    t.match(ok(kl{ "info", "-q", "-o", "yaml" }).out, "^status:\n  conditions:\n  %- message: \"\"\n")
    local ver = ok(kl{ "version" }).out
    t.match(ver, "^Version:  0%.1%.0\nRuntimeName:  containerd\nRuntimeVersion:  [^\n]+\nRuntimeApiVersion:  v1\n$")
    t.eq(decode(ok(kl{ "version", "-o", "json" }).out).runtimeName, "containerd")
    t.match(ok(kl{ "version", "--client" }).out, "^kubelua %d")
    local fs = decode(ok(kl{ "imagefsinfo" }).out)
    t.match(fs.status.imageFilesystems[1].fsId.mountpoint, "^/")
    t.match(fs.status.imageFilesystems[1].usedBytes.value, "^%d+$")
    t.match(ok(kl{ "imagefsinfo", "-o", "yaml" }).out, "^status:\n")
    t.match(ok(kl{ "imagefsinfo", "-o", "table" }).out, "Image Filesystem \nTimeStamp%[0%]: %d+\nDisk%[0%]: ")
  end)
  t.it("events: containerd 1.6 answers UNIMPLEMENTED, exit 1 with a clear message", function()
    local r = kl{ "events" }
    t.eq(r.code, 1)
    t.eq(r.out, "")
    t.match(r.err, "^kubelua events: UNIMPLEMENTED: ")
    t.match(r.err, "does not stream container events")
  end)
end)

t.describe("logs", function()
  t.it("stdout and stderr records to their streams; a long line's parts joined", function()
    local r = ok(kl{ "logs", ids.app })
    t.eq(r.out, "hello\n" .. LONG .. "\ndone\n")
    t.eq(r.err, "oops\n")
    local raw = S.read_file(logdir .. "/app/0.log")
    t.ok(raw:find(" stdout P ", 1, true), "the runtime did split the long line")
  end)
  t.it("-t, --tail, --since, --stream", function()
    -- (stdout and stderr reach the file through separate pipes: their
    -- relative order is not fixed, so each stream is checked on its own)
    local r = ok(kl{ "logs", "-t", "--tail", "1", "--stream", "stdout", ids.app })
    t.match(r.out, "^%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z done\n$")
    t.eq(ok(kl{ "logs", "--tail", "2", "--stream", "stdout", ids.app }).out, LONG .. "\ndone\n")
    r = ok(kl{ "logs", "--stream", "stderr", ids.app })
    t.eq(r.out, "")
    t.eq(r.err, "oops\n")
    t.eq(ok(kl{ "logs", "--since", "1h", "--stream", "stdout", "--tail", "1", ids.app }).out, "done\n")
    t.eq(ok(kl{ "logs", "--since", "2999-01-01T00:00:00Z", ids.app }).out, "", "nothing since the future")
  end)
  t.it("the CRI log format: P parts joined until F, bad lines skipped", function()
    local path = logdir .. "/idle/0.log"
    S.sh("mkdir -p " .. logdir .. "/idle")
    local f = assert(io.open(path, "wb"))
    f:write("2024-05-01T10:00:00.000000001Z stdout P one \n",
      "2024-05-01T10:00:00.000000002Z stderr F err line\n",
      "2024-05-01T10:00:00.000000003Z stdout P two \n",
      "garbage\n",
      "2024-05-01T10:00:00.000000004Z stdout F three\n",
      "2024-05-01T10:00:01Z stdout F \n",
      "2024-05-01T10:00:02+02:00 stdout F zoned\n")
    f:close()
    local r = ok(kl{ "logs", "-t", ids.idle })
    t.eq(r.out, "2024-05-01T10:00:00.000000001Z one two three\n2024-05-01T10:00:01Z \n" ..
      "2024-05-01T10:00:02+02:00 zoned\n")
    t.eq(r.err, "2024-05-01T10:00:00.000000002Z err line\n")
    t.eq(ok(kl{ "logs", "--since", "2024-05-01T10:00:00.5Z", ids.idle }).out, "\n", "offsets count: 08:00:02Z is before")
    t.eq(ok(kl{ "logs", "--since", "2024-05-01T08:00:00Z", "--tail", "1", ids.idle }).out, "zoned\n")
  end)
  t.it("-f follows new lines and ends when the container stops; stop prints the ID", function()
    local out = tmp .. "/follow.out"
    local pid = S.spawn(string.format("env CONTAINER_RUNTIME_ENDPOINT=%s %s logs -f --tail 1 %s; echo \"rc=$?\"",
      q(ctd.endpoint), q(KUBELUA), ids.ticker), out)
    local first
    t.ok(S.wait_for(function()
      first = (S.read_file(out) or ""):match("tick (%d+)")
      return first ~= nil
    end, 10), "the last line shows")
    t.ok(S.wait_for(function()
      local n = 0
      for _ in (S.read_file(out) or ""):gmatch("tick %d+") do
        n = n + 1
      end
      return n >= 3
    end, 10), "new lines follow: " .. tostring(S.read_file(out)))
    local r = ok(kl{ "stop", "-t", "0", ids.ticker })
    t.eq(r.out, ids.ticker .. "\n")
    t.ok(S.wait_for(function()
      return (S.read_file(out) or ""):find("rc=0", 1, true)
    end, 10), "logs -f ended by itself with status 0:\n" .. tostring(S.read_file(out)))
    S.kill(pid)
    local ticks = {}
    for n in S.read_file(out):gmatch("tick (%d+)") do
      ticks[#ticks + 1] = tonumber(n)
    end
    for i = 2, #ticks do
      t.eq(ticks[i], ticks[i - 1] + 1, "no line lost or repeated")
    end
  end)
  t.it("errors: missing container, no argument", function()
    local r = kl{ "logs", "nope-not-there" }
    t.eq(r.code, 1)
    t.match(r.err, "^kubelua logs: NOT_FOUND: ")
    r = kl{ "logs" }
    t.eq(r.code, 2)
    t.match(r.err, "^kubelua logs: no container ID given\nRun 'kubelua logs %-%-help' for usage%.\n$")
    t.eq(kl{ "logs", "--since", "yesterday", ids.app }.code, 2)
  end)
end)

t.describe("exec, stats, probe", function()
  t.it("exec -s: output as is, the command's exit status", function()
    local r = kl{ "exec", "-s", ids.app, "sh", "-c", "echo out; echo err >&2; exit 3" }
    t.eq(r.code, 3)
    t.eq(r.out, "out\n")
    t.eq(r.err, "err\n")
    t.eq(ok(kl{ "exec", "-s", "--timeout", "5", ids.app, "cat", "/etc/passwd" }).out:match("^root:"), "root:")
    r = kl{ "exec", "-s", "--timeout", "1", ids.app, "sleep", "5" }
    t.eq(r.code, 1)
    t.match(r.err, "^kubelua exec: DEADLINE_EXCEEDED: ")
    r = kl{ "exec", ids.app, "true" }
    t.eq(r.code, 2)
    t.match(r.err, "use %-s")
    r = kl{ "exec", "-s", "nope-not-there", "true" }
    t.eq(r.code, 1)
    t.match(r.err, "NOT_FOUND")
  end)
  t.it("stats: table columns and json", function()
    local l = lines(ok(kl{ "stats", "-s", "0.3", "--pod", pod }).out)
    t.eq(cells(l[1]), { "CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES", "SWAP" })
    local names = {}
    for i = 2, #l do
      local c = cells(l[i])
      names[c[2]] = true
      t.eq(#c, 7)
      t.match(c[3], "^%d+%.%d%d$")
      t.match(c[4], "B$")
    end
    t.ok(names.app and names.web, "running containers listed: " .. table.concat(l, "\n"))
    local v = decode(ok(kl{ "stats", "-o", "json", ids.web }).out)
    t.eq(#v.stats, 1)
    t.eq(v.stats[1].attributes.id, ids.web)
    t.match(v.stats[1].cpu.usageCoreNanoSeconds.value, "^%d+$")
  end)
  t.it("probe: http, tcp and a refused port", function()
    local url = "http://127.0.0.1:" .. PORT .. "/passwd"
    t.ok(S.wait_for(function()
      return kl{ "probe", url }.code == 0
    end, 10), "httpd answers")
    local r = ok(kl{ "probe", url })
    t.match(r.out, "^success 200 " .. url:gsub("[.%-]", "%%%0") .. " in [%d.]+ ms\n")
    t.match(r.out, "\n  connect +[%d.]+ ms\n")
    local v = decode(ok(kl{ "probe", "-o", "json", url }).out)
    t.eq(v.result, "success")
    t.eq(v.status, 200)
    t.eq(type(v.phases.processing), "number")
    r = kl{ "probe", "http://127.0.0.1:" .. PORT .. "/missing" }
    t.eq(r.code, 1)
    t.match(r.out, "^failure 404 ")
    t.match(ok(kl{ "probe", "tcp://127.0.0.1:" .. PORT }).out, "^success ")
    r = kl{ "probe", "--timeout", "0.5", "tcp://127.0.0.1:1" }
    t.eq(r.code, 1)
    t.match(r.out, "connection refused")
    t.eq(kl{ "probe", "127.0.0.1:80" }.code, 2)
  end)
end)

t.describe("errors a script can rely on", function()
  t.it("a wrong endpoint: exit 1, UNAVAILABLE on stderr, nothing on stdout", function()
    local r = kl{ "ps", "-r", "unix://" .. tmp .. "/no.sock" }
    t.eq(r.code, 1)
    t.eq(r.out, "")
    t.match(r.err, "^kubelua ps: UNAVAILABLE: ")
    r = kl({ "images" }, "CONTAINER_RUNTIME_ENDPOINT=unix://" .. tmp .. "/no.sock")
    t.eq(r.code, 1)
    t.match(r.err, "^kubelua images: UNAVAILABLE: ")
  end)
  t.it("bad flags and values: exit 2 with the reason and a hint", function()
    local r = kl{ "ps", "--bogus" }
    t.eq(r.code, 2)
    t.eq(r.out, "")
    t.eq(r.err, "kubelua ps: unknown flag: --bogus\nRun 'kubelua ps --help' for usage.\n")
    t.eq(kl{ "ps", "-Z" }.err, "kubelua ps: unknown flag: -Z\nRun 'kubelua ps --help' for usage.\n")
    t.match(kl{ "ps", "-o" }.err, "^kubelua ps: flag needs an argument: %-o\n")
    t.match(kl{ "ps", "-o", "xml" }.err, "^kubelua ps: unsupported output format \"xml\"")
    t.match(kl{ "ps", "--last", "two" }.err, "not an integer")
    t.match(kl{ "ps", "--name", "(" }.err, "invalid regular expression")
    t.match(kl{ "ps", "--label", "novalue" }.err, "incorrectly specified label")
    t.eq(kl{ "ps", "--state", "sleeping" }.code, 2)
    t.eq(kl{ "rm" }.code, 2)
    for cmd, noun in pairs({ rm = "CONTAINER%-ID", stop = "CONTAINER%-ID", rmp = "POD%-ID", stopp = "POD%-ID" }) do
      local none, both = kl{ cmd }, kl{ cmd, "--all", "abc" }
      t.eq(none.code, 2, cmd)
      t.match(none.err, "^kubelua " .. cmd .. ": give at least one " .. noun .. ", or %-%-all\n", cmd)
      t.eq(both.code, 2, cmd)
      t.match(both.err, "^kubelua " .. cmd .. ": cannot give " .. noun .. "s together with %-%-all\n", cmd)
    end
    t.eq(kl{ "nosuchcommand" }.code, 2)
    local h = ok(kl{ "ps", "--help" })
    t.match(h.out, "^usage: kubelua ps ")
    t.match(h.out, "\n  %-q, %-%-quiet ")
  end)
  t.it("flag forms: -aq, -ojson, --output=json, flags after arguments, --", function()
    t.eq(ok(kl{ "ps", "-aq", "--pod=" .. pod }).out, ok(kl{ "ps", "--all", "--quiet", "-p", pod }).out)
    local running = #lines(ok(kl{ "ps", "-q", "--pod", pod }).out)
    t.ok(running >= 2)
    t.eq(#decode(ok(kl{ "ps", "-ojson", "--pod", pod }).out).containers, running)
    t.eq(#decode(ok(kl{ "ps", "--output=json", "--pod", pod }).out).containers, running)
    t.eq(decode(ok(kl{ "inspect", ids.web, "-q" }).out).status.id, ids.web)
    t.eq(decode(ok(kl{ "inspect", "-q", "--", ids.web }).out).status.id, ids.web)
  end)
  t.it("endpoint from a crictl config file (-c, CRI_CONFIG_FILE); the flag wins", function()
    local cfg = tmp .. "/crictl.yaml"
    local f = assert(io.open(cfg, "w"))
    f:write("runtime-endpoint: ", ctd.endpoint, "\nimage-endpoint: \"", ctd.endpoint, "\"\ntimeout: 10 # seconds\ndebug: false\n")
    f:close()
    local function run(words, extra)
      local cmd = string.format("env -u CONTAINER_RUNTIME_ENDPOINT %s %s %s >%s/out 2>%s/err; echo $?", extra or "",
        q(KUBELUA), words, tmp, tmp)
      local p = assert(io.popen(cmd))
      local code = tonumber(p:read("*a"))
      p:close()
      return { out = S.read_file(tmp .. "/out"), err = S.read_file(tmp .. "/err"), code = code }
    end
    t.eq(ok(run("pods -q --id " .. pod .. " -c " .. q(cfg))).out, pod .. "\n")
    t.eq(ok(run("pods -q --id " .. pod, "CRI_CONFIG_FILE=" .. q(cfg))).out, pod .. "\n")
    local r = run("pods -q -r unix://" .. tmp .. "/no.sock -c " .. q(cfg))
    t.eq(r.code, 1, "the flag overrides the file")
    t.match(r.err, "no%.sock")
  end)
  local system_runtime = false
  for _, p in ipairs({ "/run/containerd/containerd.sock", "/run/crio/crio.sock", "/var/run/cri-dockerd.sock" }) do
    system_runtime = system_runtime or S.exists(p)
  end
  if system_runtime then
    t.skip("no endpoint anywhere: exit 1 naming every default tried", "a runtime listens on a default socket here")
  else
    t.it("no endpoint anywhere: exit 1 naming every default tried", function()
      local cfg = tmp .. "/empty.yaml"
      assert(io.open(cfg, "w")):close()
      local r = kl({ "ps" }, "-u CONTAINER_RUNTIME_ENDPOINT -u IMAGE_SERVICE_ENDPOINT CRI_CONFIG_FILE=" .. q(cfg))
      t.eq(r.code, 1)
      t.eq(r.out, "")
      t.match(r.err, "^kubelua ps: UNAVAILABLE: none of the endpoints answered %(unix:///run/containerd/containerd%.sock, " ..
        "unix:///run/crio/crio%.sock, unix:///var/run/cri%-dockerd%.sock%); no endpoint is set: ")
    end)
  end
  t.it("first_answering: the default list in order, UNAVAILABLE meaning try the next", function()
    local c = require "kubelua.cli.common"
    local client = assert(c.first_answering({ "unix://" .. tmp .. "/gone.sock", ctd.endpoint }, { timeout = 5 }))
    t.eq(client.endpoint, ctd.endpoint)
    client:close()
    local none, err, code = c.first_answering({ "unix://" .. tmp .. "/a.sock", "unix://" .. tmp .. "/b.sock" },
      { timeout = 5 })
    t.eq(none, nil)
    t.eq(code, "UNAVAILABLE")
    t.match(err, "a%.sock, .*b%.sock")
  end)
end)

-- rmi --prune against a fake runtime: what must never go.
local function fake_runtime()
  local removed = {}
  local images = {
    { id = "sha256:pinned", repo_tags = { "pause:1" }, repo_digests = {}, pinned = true, size = 1 },
    { id = "sha256:used", repo_tags = { "app:1" }, repo_digests = {}, pinned = false, size = 1 },
    { id = "sha256:byref", repo_tags = { "ref:1" }, repo_digests = {}, pinned = false, size = 1 },
    { id = "sha256:sandbox", repo_tags = { "sandbox:1" }, repo_digests = {}, pinned = false, size = 1 },
    { id = "sha256:unused", repo_tags = { "old:1", "old:2" }, repo_digests = {}, pinned = false, size = 1 },
  }
  local by = {}
  for _, img in ipairs(images) do
    by[img.id] = img
    for _, tag in ipairs(img.repo_tags) do
      by[tag] = img
    end
  end
  local fake = {}
  function fake:list_images()
    return { images = images }
  end
  function fake:list_containers()
    return { containers = {
      { id = "c1", image = { image = "sha256:used" }, image_ref = "sha256:used" },
      { id = "c2", image = { image = "ref:1" }, image_ref = "" }, -- exited, only a reference
    } }
  end
  function fake:image_status(req)
    return { image = by[req.image.image] }
  end
  function fake:status()
    return { info = { config = json.encode({ sandboxImage = "sandbox:1" }) } }
  end
  function fake:remove_image(req)
    removed[#removed + 1] = req.image.image
    return {}
  end
  return fake, removed
end

local function capture()
  local buf = {}
  return { write = function(self, ...)
    for i = 1, select("#", ...) do
      buf[#buf + 1] = select(i, ...)
    end
    return self
  end, flush = function() return true end, text = function() return table.concat(buf) end }
end

t.describe("rmi", function()
  t.it("--prune never removes pinned, in-use or sandbox images (fake runtime)", function()
    local rmi = require "kubelua.cli.rmi"
    local fake, removed = fake_runtime()
    local out, err = capture(), capture()
    local status = rmi.run({ "--prune" }, { client = fake, stdout = out, stderr = err })
    t.eq(status, 0, err.text())
    t.eq(removed, { "sha256:unused" })
    t.eq(out.text(), "Deleted: old:1\nDeleted: old:2\n")
    fake, removed = fake_runtime()
    t.eq(rmi.run({ "-a" }, { client = fake, stdout = capture(), stderr = capture() }), 0)
    t.eq(#removed, 5, "--all removes everything, pinned too")
  end)
  t.it("--prune against containerd: an unused image goes, the one in use stays", function()
    local marker = tmp .. "/marker"
    local f = assert(io.open(marker, "w"))
    f:write(uid, "\n")
    f:close()
    local name = "kubelua.local/cli-prune:" .. tostring(math.random(1e6))
    local out, built = S.sh(string.format("bash %s/tests/support/mkimage.sh %s/prune.tar %s %s:/marker", S.ROOT, tmp,
      name, marker))
    t.ok(built, out)
    local imp, imported = S.sh(string.format("bash %s ctr %s images import %s/prune.tar", ctd.script, ctd.dir, tmp))
    t.ok(imported, imp)
    t.ok(assert(rt:image_status{ image = { image = name } }).image, "imported")
    local r = ok(kl{ "rmi", "--prune" })
    t.ok(r.out:find("Deleted: " .. name .. "\n", 1, true), r.out)
    t.eq(assert(rt:image_status{ image = { image = name } }).image, nil, "pruned")
    t.ok(assert(rt:image_status{ image = { image = IMAGE } }).image, "the image in use is kept")
    r = kl{ "rmi", "kubelua.local/none:1" }
    t.eq(r.code, 1)
    t.match(r.err, "^kubelua rmi: NOT_FOUND: ")
  end)
end)

t.describe("teardown", function()
  t.it("rm: a running container needs -f; logs go with it", function()
    local r = kl{ "rm", ids.web }
    t.eq(r.code, 1)
    t.match(r.err, "^kubelua rm: FAILED_PRECONDITION: container \"" .. ids.web .. "\" is running")
    t.eq(ok(kl{ "rm", "-f", ids.web }).out, ids.web .. "\n")
    t.ok(not S.exists(logdir .. "/web/0.log"), "the log file is removed")
    t.eq(ok(kl{ "rm", "-k", ids.ticker }).out, ids.ticker .. "\n")
    t.ok(S.exists(logdir .. "/ticker/0.log"), "-k keeps the log")
    r = kl{ "rm", ids.web }
    t.eq(r.code, 1)
    t.match(r.err, "NOT_FOUND")
  end)
  t.it("stopp, rmp: a ready pod needs stopping first", function()
    local r = kl{ "rmp", pod }
    t.eq(r.code, 1)
    t.match(r.err, "is running, stop it first")
    t.eq(ok(kl{ "stopp", pod }).out, "Stopped sandbox " .. pod .. "\n")
    t.eq(ok(kl{ "pods", "-q", "--id", pod, "--state", "notready" }).out, pod .. "\n")
    t.eq(ok(kl{ "rmp", pod }).out, "Removed sandbox " .. pod .. "\n")
    t.eq(ok(kl{ "pods", "-q", "--id", pod }).out, "")
    pod = nil
  end)
  t.it("cleans up whatever is left", function()
    if pod then
      rt:stop_pod_sandbox{ pod_sandbox_id = pod }
      rt:remove_pod_sandbox{ pod_sandbox_id = pod }
    end
    rt:close()
    S.rm(tmp)
    t.ok(not S.exists(tmp))
    task.sleep(0)
  end)
end)
