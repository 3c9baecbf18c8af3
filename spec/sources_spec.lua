-- Pod sources feeding the merger, on real files and a real HTTP server; the
-- merged update stream is asserted exactly after each step.
local t = require "spec.t"
local S = require "spec.support"
local config = require "kubelua.config"
local filesrc = require "kubelua.sources.file"
local httpsrc = require "kubelua.sources.http"

local NODE = "node-a"

local function manifest(name, image, extra)
  return string.format([[
apiVersion: v1
kind: Pod
metadata:
  name: %s
  labels: {app: %s}
spec:
  hostNetwork: true
  containers:
  - name: main
    image: %s
    command: ["sleep", "3600"]
%s]], name, name, image or "kubelua.local/busybox:latest", extra or "")
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- A merger whose update stream is summarised as "ADD web-node-a; UPDATE ..."
local function merger()
  local m = { updates = {}, errors = {} }
  m.pc = config.new{ on_update = function(u) table.insert(m.updates, u) end }
  function m.take()
    local parts = {}
    for _, u in ipairs(m.updates) do
      local names = {}
      for _, p in ipairs(u.pods) do
        names[#names + 1] = p.metadata.name
      end
      table.sort(names)
      parts[#parts + 1] = u.op .. " " .. table.concat(names, ",")
    end
    m.updates = {}
    return table.concat(parts, "; ")
  end
  function m.wait(want, timeout)
    local got = ""
    local ok = S.wait_for(function()
      if #m.updates > 0 then
        got = (got ~= "" and got .. "; " or "") .. m.take()
      end
      return got == want
    end, timeout or 5, 0.02)
    t.ok(ok, "expected updates " .. want .. "\n     got " .. got)
  end
  function m.on_error(err)
    table.insert(m.errors, err)
  end
  return m
end

t.describe("file source", function()
  local dir = S.tmpdir("src")
  local m = merger()
  local src

  t.it("loads a directory: valid files in, a bad one reported with its path, dotfiles skipped", function()
    write(dir .. "/a-web.yaml", manifest("web"))
    write(dir .. "/b-db.json", '{"apiVersion":"v1","kind":"Pod","metadata":{"name":"db"},'
      .. '"spec":{"containers":[{"name":"main","image":"kubelua.local/busybox:latest"}]}}')
    write(dir .. "/c-broken.yaml", manifest("broken", '""'))
    write(dir .. "/.hidden.yaml", manifest("hidden"))
    src = assert(filesrc.start(m.pc, { path = dir, node = NODE, on_error = m.on_error, debounce = 0.02 }))
    t.allow_parked(2) -- the source's task and its watcher
    m.wait("ADD db-node-a,web-node-a")
    t.ok(m.pc:all_ready())
    t.eq(#m.errors, 1)
    t.match(m.errors[1], "c%-broken%.yaml: invalid pod: spec%.containers%[1%]%.image: required value")
  end)

  t.it("an edit replaces the pod: its UID hashes the content (as kubelet's)", function()
    write(dir .. "/a-web.yaml", manifest("web", "kubelua.local/busybox:v2"))
    m.wait("REMOVE web-node-a; ADD web-node-a")
  end)

  t.it("an atomic save (temp file + rename) is one replacement", function()
    write(dir .. "/.a-web.yaml.tmp", manifest("web", "kubelua.local/busybox:v3"))
    assert(os.rename(dir .. "/.a-web.yaml.tmp", dir .. "/a-web.yaml"))
    m.wait("REMOVE web-node-a; ADD web-node-a")
  end)

  t.it("a manifest with its own UID is UPDATEd in place", function()
    write(dir .. "/h-fixed.yaml", manifest("fixed"):gsub("  name: fixed", "  name: fixed\n  uid: fixed-uid-1"))
    m.wait("ADD fixed-node-a")
    write(dir .. "/h-fixed.yaml", manifest("fixed", "kubelua.local/busybox:v2"):gsub("  name: fixed", "  name: fixed\n  uid: fixed-uid-1"))
    m.wait("UPDATE fixed-node-a")
    os.remove(dir .. "/h-fixed.yaml")
    m.wait("REMOVE fixed-node-a")
  end)

  t.it("renaming a file to another name keeps the same pod (UID from the new path)", function()
    assert(os.rename(dir .. "/b-db.json", dir .. "/d-db.json"))
    m.wait("REMOVE db-node-a; ADD db-node-a")
  end)

  t.it("fixing the broken file adds its pod; deleting a file removes its pod", function()
    write(dir .. "/c-broken.yaml", manifest("broken"))
    m.wait("ADD broken-node-a")
    os.remove(dir .. "/c-broken.yaml")
    m.wait("REMOVE broken-node-a")
  end)

  t.it("two files with the same pod name: the first file wins, the other is reported", function()
    local events = {}
    m.pc.on_event = function(e) table.insert(events, e) end
    write(dir .. "/z-web-again.yaml", manifest("web"))
    S.wait_for(function() return #events > 0 end, 5, 0.02)
    t.eq(#events, 1)
    t.match(events[1].message, 'duplicate pod name "web%-node%-a_default"')
    os.remove(dir .. "/z-web-again.yaml")
  end)

  t.it("a file over 10 MiB, a deeply nested and an alias-bomb document are refused", function()
    m.errors = {}
    local big = manifest("big") .. "#" .. string.rep("x", 10 * 1024 * 1024) .. "\n"
    write(dir .. "/e-big.yaml", big)
    write(dir .. "/f-deep.yaml", string.rep("[", 5000) .. string.rep("]", 5000))
    local bomb = { "a0: &a0 [x, x, x, x, x, x, x, x, x, x]" }
    for i = 1, 9 do
      bomb[#bomb + 1] = string.format("a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]",
        i, i, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1)
    end
    write(dir .. "/g-bomb.yaml", table.concat(bomb, "\n") .. "\n")
    t.ok(S.wait_for(function() return #m.errors >= 3 end, 10, 0.05), "three errors: " .. table.concat(m.errors, " | "))
    local all = table.concat(m.errors, "\n")
    t.match(all, "e%-big%.yaml")
    t.match(all, "f%-deep%.yaml")
    t.match(all, "g%-bomb%.yaml")
    os.remove(dir .. "/e-big.yaml")
    os.remove(dir .. "/f-deep.yaml")
    os.remove(dir .. "/g-bomb.yaml")
    m.updates = {}
  end)

  t.it("the directory removed and re-created: pods go, then come back", function()
    S.sh("rm -rf '" .. dir .. "'")
    m.wait("REMOVE db-node-a,web-node-a")
    S.sh("mkdir -p '" .. dir .. "'")
    write(dir .. "/a-web.yaml", manifest("web"))
    m.wait("ADD web-node-a")
  end)

  t.it("stops", function()
    src:stop()
    t.ok(S.wait_for(function() return src.stopped end, 5))
    t.allow_parked(-2)
    S.rm(dir)
  end)
end)

t.describe("http source", function()
  local dir = S.tmpdir("srv")
  local pid, port

  t.it("serves a Pod, then a PodList; unchanged bodies send nothing; errors are reported", function()
    local portfile = dir .. "/port"
    pid = S.spawn(string.format([[/usr/bin/python3 -c '
import http.server, socketserver, os, sys
os.chdir(%q)
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
s = socketserver.TCPServer(("127.0.0.1", 0), H)
open(%q + ".tmp", "w").write(str(s.server_address[1])); os.rename(%q + ".tmp", %q)
s.serve_forever()']], dir, portfile, portfile, portfile), dir .. "/log")
    t.ok(S.wait_for(function() return S.exists(portfile) end, 10), "server up")
    port = S.read_file(portfile)
    write(dir .. "/pods", manifest("web"))
    local m = merger()
    local src = httpsrc.start(m.pc, { url = "http://127.0.0.1:" .. port .. "/pods", node = NODE,
      period = 0.1, on_error = m.on_error })
    m.wait("ADD web-node-a")
    local polls = src.polls
    S.wait_for(function() return src.polls >= polls + 3 end, 5)
    t.eq(m.take(), "", "unchanged: nothing sent")
    write(dir .. "/pods", [[{"kind":"PodList","items":[]]
      .. '{"metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"i:1"}]}},'
      .. '{"metadata":{"name":"b"},"spec":{"containers":[{"name":"c","image":"i:1"}]}}]}')
    m.wait("REMOVE web-node-a; ADD a-node-a,b-node-a")
    write(dir .. "/pods", '{"kind":"PodList","items":[{"metadata":{"name":"a"},"spec":{}}]}')
    t.ok(S.wait_for(function() return #m.errors > 0 end, 5))
    t.match(m.errors[#m.errors], "/pods: invalid pod: spec.containers: required value")
    t.eq(m.take(), "", "an invalid list sends nothing")
    os.remove(dir .. "/pods")
    t.ok(S.wait_for(function() return m.errors[#m.errors]:match(": 404$") end, 5), "404 reported")
    write(dir .. "/pods", "")
    m.wait("REMOVE a-node-a,b-node-a")
    t.match(m.errors[#m.errors], "^zero%-length data received from")
    src:stop()
    t.ok(S.wait_for(function() return src.loop.done end, 5))
  end)

  t.it("cleanup", function()
    S.kill(pid)
    S.rm(dir)
  end)
end)
