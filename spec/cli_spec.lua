-- The crictl-style commands against a fake runtime, in process: flag
-- forms, the order of usage checks (output format, then arguments, before
-- any runtime call), the selection flags of ps/pods/inspect/inspectp, and
-- the inspect family's output (one object, an array, a failed ID among
-- good ones). cli_e2e_spec.lua runs the same commands against containerd.
local t = require "spec.t"
local json = require "kubelua.json"
local common = require "kubelua.cli.common"

local NOW_NS = 1700000000 * 1e9

-- stdout/stderr stand-ins (objects with :write and :flush).
local function capture()
  local buf = {}
  return {
    write = function(self, ...)
      for i = 1, select("#", ...) do
        buf[#buf + 1] = select(i, ...)
      end
      return self
    end,
    flush = function()
      return true
    end,
    text = function()
      return table.concat(buf)
    end,
  }
end

local function container(id, name, state, extra)
  local c = {
    id = id,
    pod_sandbox_id = "pod-" .. id,
    metadata = { name = name, attempt = 0 },
    image = { image = "busybox:1" },
    image_ref = "sha256:busybox",
    state = state,
    created_at = NOW_NS,
    labels = { [common.POD_NAME_LABEL] = "p", [common.POD_NAMESPACE_LABEL] = "ns-" .. name },
    annotations = {},
  }
  for k, v in pairs(extra or {}) do
    c[k] = v
  end
  return c
end

local function pod(id, name, namespace, created)
  return { id = id, metadata = { name = name, namespace = namespace, uid = "u-" .. id, attempt = 0 },
    state = "SANDBOX_READY", created_at = created, labels = {}, annotations = {}, runtime_handler = "" }
end

-- A fake CRI client: canned answers, and every call recorded as
-- { method, request }.
local function fake()
  local f = { calls = {} }
  local containers = {
    container("c1", "web", "CONTAINER_RUNNING", { created_at = NOW_NS - 2e9 }),
    container("c2", "db", "CONTAINER_RUNNING", { created_at = NOW_NS - 1e9 }),
    container("c3", "job", "CONTAINER_EXITED", { created_at = NOW_NS - 3e9 }),
  }
  local pods = { pod("p1", "alpha", "one", NOW_NS - 2e9), pod("p2", "beta", "two", NOW_NS - 1e9) }
  local function record(name, req)
    f.calls[#f.calls + 1] = { name, req }
  end
  function f:list_containers(req)
    record("list_containers", req)
    local out = {}
    for _, c in ipairs(containers) do
      local st = req.filter and req.filter.state
      if not st or st.state == c.state then
        out[#out + 1] = c
      end
    end
    return { containers = out }
  end
  function f:list_pod_sandbox(req)
    record("list_pod_sandbox", req)
    return { items = pods }
  end
  function f:container_status(req)
    record("container_status", req)
    for _, c in ipairs(containers) do
      if c.id == req.container_id then
        local st = { id = c.id, metadata = c.metadata, state = c.state, created_at = c.created_at,
          started_at = c.created_at, finished_at = 0, exit_code = 0, labels = { app = c.metadata.name },
          annotations = {} }
        return { status = st, info = req.verbose and { pid = "42" } or {} }
      end
    end
    return nil, "NOT_FOUND: no container " .. req.container_id, "NOT_FOUND"
  end
  function f:pod_sandbox_status(req)
    record("pod_sandbox_status", req)
    for _, p in ipairs(pods) do
      if p.id == req.pod_sandbox_id then
        return { status = { id = p.id, metadata = p.metadata, state = p.state, created_at = p.created_at,
          labels = { tier = "x" }, annotations = {} }, info = req.verbose and { sandbox = '"yes"' } or {} }
      end
    end
    return nil, "NOT_FOUND: no pod " .. req.pod_sandbox_id, "NOT_FOUND"
  end
  function f:list_images(req)
    record("list_images", req)
    return { images = { { id = "sha256:aaa", repo_tags = { "busybox:1" }, repo_digests = {}, size = 1500 } } }
  end
  function f:image_status(req)
    record("image_status", req)
    if req.image.image == "sha256:aaa" or req.image.image == "busybox:1" then
      return { image = { id = "sha256:aaa", repo_tags = { "busybox:1" }, repo_digests = {}, size = 1500 },
        info = req.verbose and { info = '{"a":1}' } or {} }
    end
    return {}
  end
  function f:status(req)
    record("status", req)
    return { status = { conditions = { { type = "RuntimeReady", status = true } } }, runtime_handlers = {},
      info = req.verbose and { config = '{"x":1}' } or {} }
  end
  function f:image_fs_info(req)
    record("image_fs_info", req)
    local fs = { timestamp = 5, fs_id = { mountpoint = "/var/lib/x" }, used_bytes = { value = 2000 },
      inodes_used = { value = 7 } }
    return { image_filesystems = { fs }, container_filesystems = {} }
  end
  function f:version(req)
    record("version", req)
    return { version = "0.1.0", runtime_name = "fake", runtime_version = "1", runtime_api_version = "v1" }
  end
  function f:get_container_events(req)
    record("get_container_events", req)
    local events = { { container_id = "c1", container_event_type = "CONTAINER_STARTED_EVENT", created_at = 9 } }
    local i = 0
    return setmetatable({ err = "UNIMPLEMENTED: not here", code = "UNIMPLEMENTED", cancel = function() end }, {
      __call = function()
        i = i + 1
        return events[i]
      end,
    })
  end
  return f
end

-- Run `kubelua NAME ARGS...` in process: { out, err, status, calls }.
local function run(name, args, client)
  client = client or fake()
  local out, err = capture(), capture()
  local status = require("kubelua.cli." .. name).run(args, { client = client, stdout = out, stderr = err })
  return { out = out.text(), err = err.text(), status = status, calls = client.calls }
end

local function call_names(r)
  local names = {}
  for i, c in ipairs(r.calls) do
    names[i] = c[1]
  end
  return names
end

t.describe("flag parsing", function()
  local spec = {
    { "output", "o", "string", "", default = "table" },
    { "quiet", "q", "bool", "" },
    { "last", "n", "int", "" },
    { "label", nil, "list", "" },
  }
  t.it("long flags: --name value, --name=value, an empty inline value, a missing value", function()
    t.eq(common.parse({ "--output", "json" }, spec).output, "json")
    t.eq(common.parse({ "--output=yaml" }, spec).output, "yaml")
    t.eq(common.parse({ "--output=", "x" }, spec).output, "", "an inline empty value is the value")
    t.eq(select(2, common.parse({ "--output=" }, spec)), {}, "and takes no positional argument")
    t.eq({ common.parse({ "a", "--output" }, spec) }, { nil, "flag needs an argument: --output" })
    t.eq({ common.parse({ "--last", "x" }, spec) }, { nil, 'invalid value "x" for flag --last: not an integer' })
    t.eq({ common.parse({ "--last=1.5" }, spec) }, { nil, 'invalid value "1.5" for flag --last: not an integer' })
    t.eq(common.parse({ "--quiet=false" }, spec).quiet, false)
    t.eq(common.parse({ "--label", "a=1", "--label=b=2" }, spec).label, { "a=1", "b=2" })
  end)
  t.it("short flags: -o v, -ov, -o=v, -o= takes the next argument, combined booleans", function()
    t.eq(common.parse({ "-o", "json" }, spec).output, "json")
    t.eq(common.parse({ "-ojson" }, spec).output, "json")
    t.eq(common.parse({ "-o=json" }, spec).output, "json")
    local f, pos = common.parse({ "-o=", "yaml", "rest" }, spec)
    t.eq(f.output, "yaml")
    t.eq(pos, { "rest" })
    f = common.parse({ "-qn3" }, spec)
    t.eq({ f.quiet, f.last }, { true, 3 })
    t.eq({ common.parse({ "-qo" }, spec) }, { nil, "flag needs an argument: -o" })
    t.eq({ common.parse({ "-n", "two" }, spec) }, { nil, 'invalid value "two" for flag -n: not an integer' })
    t.eq({ common.parse({ "-x" }, spec) }, { nil, "unknown flag: -x" })
  end)
  t.it("positional arguments, --, and stop_at_positional", function()
    local f, pos = common.parse({ "a", "-q", "--", "-o", "b" }, spec)
    t.eq({ f.quiet, f.output, pos }, { true, "table", { "a", "-o", "b" } })
    f, pos = common.parse({ "-q", "cmd", "-o", "x" }, spec, { stop_at_positional = true })
    t.eq({ f.quiet, f.output, pos }, { true, "table", { "cmd", "-o", "x" } })
    t.eq(select(2, common.parse({ "-1" }, spec)), { "-1" }, "a negative number is an argument")
  end)
end)

t.describe("usage checks come before any runtime call", function()
  local HINT = "\nRun 'kubelua %s --help' for usage.\n"
  for _, name in ipairs({ "events", "info", "imagefsinfo", "version", "ps", "pods" }) do
    t.it(name .. ": a bad format first, then an unexpected argument", function()
      local r = run(name, { "-o", "xml", "extra" })
      t.eq(r.status, common.EXIT_USAGE)
      t.match(r.err, '^kubelua ' .. name .. ': unsupported output format "xml" %(one of: ')
      t.eq(r.out, "")
      t.eq(#r.calls, 0)
      r = run(name, { "extra" })
      t.eq(r.status, common.EXIT_USAGE)
      t.eq(r.err, "kubelua " .. name .. ": unexpected argument extra" .. HINT:format(name))
      t.eq(#r.calls, 0)
    end)
  end
  t.it("ps/pods: a bad label or regular expression before the runtime is asked", function()
    for _, name in ipairs({ "ps", "pods" }) do
      local r = run(name, { "--label", "nokey" })
      t.eq(r.status, common.EXIT_USAGE, name)
      t.match(r.err, "incorrectly specified label: nokey", name)
      t.eq(#r.calls, 0, name)
      r = run(name, { "--namespace", "(" })
      t.eq(r.status, common.EXIT_USAGE, name)
      t.match(r.err, 'invalid regular expression "%(" for %-%-namespace', name)
      t.eq(#r.calls, 0, name)
    end
  end)
end)

t.describe("runtime commands", function()
  t.it("info: conditions and parsed info; -q asks for no verbose info", function()
    local r = run("info", {})
    t.eq(r.status, 0, r.err)
    local v = json.decode(r.out)
    t.eq(v.config, { x = 1 })
    t.eq(v.status.conditions[1].type, "RuntimeReady")
    t.eq(r.calls[1], { "status", { verbose = true } })
    r = run("info", { "-q", "-o", "yaml" })
    t.eq(r.calls[1], { "status", { verbose = false } })
    t.match(r.out, "^status:\n  conditions:\n")
  end)
  t.it("imagefsinfo: json and table", function()
    local r = run("imagefsinfo", {})
    t.eq(r.status, 0, r.err)
    t.eq(json.decode(r.out).status.imageFilesystems[1].fsId.mountpoint, "/var/lib/x")
    r = run("imagefsinfo", { "-o", "table" })
    t.eq(r.out, "Container Filesystem \nImage Filesystem \nTimeStamp[0]: 5\nDisk[0]: 2kB\nInodes[0]: 7\n" ..
      "Mountpoint[0]: /var/lib/x\n")
  end)
  t.it("events: each event as it comes, then the stream's error", function()
    local r = run("events", {})
    t.eq(r.status, common.EXIT_ERROR)
    t.eq(json.decode(r.out).containerId, "c1")
    t.match(r.err, "^kubelua events: UNIMPLEMENTED: not here %(this runtime does not stream")
    r = run("events", { "-o", "yaml" })
    t.match(r.out, "^%-%-%-\ncontainerEventType: CONTAINER_STARTED_EVENT\n")
  end)
  t.it("version: text and json", function()
    local r = run("version", {})
    t.eq(r.out, "Version:  0.1.0\nRuntimeName:  fake\nRuntimeVersion:  1\nRuntimeApiVersion:  v1\n")
    t.eq(json.decode(run("version", { "-o", "json" }).out).runtimeName, "fake")
    r = run("version", { "--client" })
    t.eq(#r.calls, 0)
    t.match(r.out, "^kubelua ")
  end)
end)

t.describe("selection", function()
  t.it("ps: running by default, newest first; -a; --name and --namespace; -q", function()
    local r = run("ps", { "-q" })
    t.eq(r.out, "c2\nc1\n")
    t.eq(r.calls[1], { "list_containers", { filter = { state = { state = "CONTAINER_RUNNING" } } } })
    t.eq(run("ps", { "-aq" }).out, "c2\nc1\nc3\n")
    t.eq(run("ps", { "-aq", "--name", "^(web|job)$" }).out, "c1\nc3\n")
    t.eq(run("ps", { "-aq", "--namespace", "db" }).out, "c2\n")
    t.eq(run("ps", { "-q", "--name", "nothing" }).out, "")
    r = run("ps", { "-q", "--label", "a=1", "--last", "1" })
    t.eq(r.out, "c2\n")
    t.eq(r.calls[1], { "list_containers", { filter = { label_selector = { a = "1" } } } })
  end)
  t.it("pods: --name, --namespace, --label, --latest; -q", function()
    local r = run("pods", { "-q" })
    t.eq(r.out, "p2\np1\n")
    t.eq(r.calls[1], { "list_pod_sandbox", { filter = {} } })
    t.eq(run("pods", { "-q", "--name", "^al" }).out, "p1\n")
    t.eq(run("pods", { "-q", "--namespace", "two" }).out, "p2\n")
    r = run("pods", { "-q", "--label", "k=v", "--state", "ready", "--latest" })
    t.eq(r.out, "p2\n")
    t.eq(r.calls[1], { "list_pod_sandbox", { filter = { label_selector = { k = "v" },
      state = { state = "SANDBOX_READY" } } } })
    t.eq(run("pods", { "--state", "gone" }).status, common.EXIT_USAGE)
  end)
end)

t.describe("inspect family", function()
  t.it("inspect: one ID is an object, several an array; a missing one fails, the others print", function()
    local r = run("inspect", { "c1" })
    t.eq(r.status, 0, r.err)
    local v = json.decode(r.out)
    t.eq({ v.status.id, v.pid }, { "c1", "42" })
    r = run("inspect", { "c1", "nope", "c2" })
    t.eq(r.status, common.EXIT_ERROR)
    t.eq(r.err, "kubelua inspect: NOT_FOUND: no container nope\n")
    v = json.decode(r.out)
    t.eq({ #v, v[1].status.id, v[2].status.id }, { 2, "c1", "c2" })
    r = run("inspect", { "-q", "c1" })
    t.eq(r.calls[1], { "container_status", { container_id = "c1", verbose = false } })
    t.eq(json.decode(r.out).pid, nil)
    r = run("inspect", { "nope" })
    t.eq({ r.status, r.out }, { common.EXIT_ERROR, "" })
  end)
  t.it("inspect: without IDs, the filter flags select; without either, a usage error", function()
    local r = run("inspect", {})
    t.eq(r.status, common.EXIT_USAGE)
    t.match(r.err, "^kubelua inspect: no container ID given\n")
    t.eq(#r.calls, 0)
    r = run("inspect", { "--name", "db" })
    t.eq(r.status, 0, r.err)
    t.eq(json.decode(r.out).status.id, "c2")
    t.eq(call_names(r), { "list_containers", "container_status" })
    r = run("inspect", { "-a", "-o", "table" })
    t.match(r.out, "^ID: c2\nName: db\nState: CONTAINER_RUNNING\nCreated: [^\n]+ ago\nStarted: [^\n]+ ago\n" ..
      "Labels:\n\tapp %-> db\nAnnotations:\nInfo: map%[pid:42%]\nID: c1\n")
  end)
  t.it("inspectp: IDs, selection, table", function()
    local r = run("inspectp", { "p1", "p2" })
    t.eq(r.status, 0, r.err)
    local v = json.decode(r.out)
    t.eq({ #v, v[1].status.id, v[2].sandbox }, { 2, "p1", "yes" })
    r = run("inspectp", {})
    t.eq(r.status, common.EXIT_USAGE)
    t.match(r.err, "^kubelua inspectp: no pod ID given\n")
    r = run("inspectp", { "--namespace", "one", "-o", "table" })
    t.eq(r.out, "ID: p1\nName: alpha\nUID: u-p1\nNamespace: one\nAttempt: 0\nStatus: SANDBOX_READY\n" ..
      "Created: 2023-11-14T22:13:18Z\nLabels:\n\ttier -> x\nAnnotations:\nInfo: map[sandbox:\"yes\"]\n")
    r = run("inspectp", { "p1", "gone", "-q", "-o", "yaml" })
    t.eq(r.status, common.EXIT_ERROR)
    t.match(r.out, "^status:\n")
    t.eq(r.err, "kubelua inspectp: NOT_FOUND: no pod gone\n")
  end)
  t.it("inspecti: by reference, every image without one, a missing image", function()
    local r = run("inspecti", { "busybox:1" })
    t.eq(r.status, 0, r.err)
    local v = json.decode(r.out)
    t.eq({ v.status.id, v.info }, { "sha256:aaa", { a = 1 } })
    r = run("inspecti", {})
    t.eq(call_names(r), { "list_images", "image_status" })
    r = run("inspecti", { "busybox:1", "none:1", "-o", "table" })
    t.eq(r.status, common.EXIT_ERROR)
    t.eq(r.out, "ID: sha256:aaa\nTag: busybox:1\nSize: 1.5kB\nInfo: map[info:{\"a\":1}]\n")
    t.eq(r.err, 'kubelua inspecti: NOT_FOUND: no such image "none:1" present\n')
  end)
  t.it("rm/rmp/stop/stopp --all: a failed listing is reported with the runtime's error", function()
    for _, case in ipairs({ { "rm", "list_containers" }, { "rmp", "list_pod_sandbox" },
      { "stop", "list_containers" }, { "stopp", "list_pod_sandbox" } }) do
      local name, method = case[1], case[2]
      local f = fake()
      f[method] = function()
        return nil, "UNAVAILABLE: runtime gone", "UNAVAILABLE"
      end
      local r = run(name, { "--all" }, f)
      t.eq(r.status, common.EXIT_ERROR, name)
      t.eq(r.err, "kubelua " .. name .. ": UNAVAILABLE: runtime gone\n", name)
    end
  end)
end)
