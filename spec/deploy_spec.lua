-- deploy/: the systemd unit and the DaemonSet manifest say what
-- deploy/README.md promises, and their tools accept them.
local t = require "spec.t"
local S = require "spec.support"
local yaml = require "kubelua.yaml"
local acfg = require "kubelua.agent.config"

local ROOT = S.ROOT
local UNIT = ROOT .. "/deploy/systemd/kubelua.service"
local MANIFEST = ROOT .. "/deploy/kubernetes/daemonset.yaml"

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- A unit file as { [section] = { [key] = { values... } } }.
local function parse_unit(text)
  local units, section = {}, nil
  for line in text:gmatch("[^\n]+") do
    local sec = line:match("^%[(%w+)%]$")
    if sec then
      section = sec
      units[sec] = units[sec] or {}
    elseif not line:match("^%s*[#;]") and section then
      local k, v = line:match("^(%w+)=(.*)$")
      if k then
        units[section][k] = units[section][k] or {}
        table.insert(units[section][k], v)
      end
    end
  end
  return units
end

t.describe("deploy/systemd/kubelua.service", function()
  local u = parse_unit(assert(S.read_file(UNIT)))
  local function one(sec, key)
    local v = u[sec] and u[sec][key]
    return v and v[#v]
  end

  t.it("is a notify service that reloads on SIGHUP and leaves pods alone", function()
    t.eq(one("Service", "Type"), "notify")
    t.eq(one("Service", "NotifyAccess"), "main")
    t.eq(one("Service", "ExecReload"), "/bin/kill -HUP $MAINPID")
    t.eq(one("Service", "Restart"), "always")
    t.eq(one("Service", "KillMode"), "process", "a stop must not reach other processes of the cgroup")
    t.match(one("Service", "WatchdogSec") or "", "^%d+s?$", "watchdog on")
    t.eq(one("Service", "StateDirectory"), "kubelua", "/var/lib/kubelua, the agent's default stateDir")
    t.match(one("Service", "ExecStart"), "kubelua agent %-%-config /etc/kubelua/agent%.yaml$")
    t.eq(one("Install", "WantedBy"), "multi-user.target")
  end)

  t.it("keeps what CRI access and LuaJIT need through its hardening", function()
    t.match(one("Service", "RestrictAddressFamilies"), "AF_UNIX", "the CRI socket is a unix socket")
    t.eq(one("Service", "PrivateNetwork"), nil, "probes must reach the node's network")
    t.eq(one("Service", "MemoryDenyWriteExecute"), nil, "LuaJIT's JIT writes and runs code")
    -- ProtectSystem=strict makes / read-only: every path the agent writes
    -- is listed, and nothing hides the runtime's socket directory.
    t.eq(one("Service", "ProtectSystem"), "strict")
    t.match(one("Service", "ReadWritePaths"), "/var/log/pods")
    for _, k in ipairs({ "InaccessiblePaths", "TemporaryFileSystem" }) do
      t.ok(not (one("Service", k) or ""):find("/run", 1, true), k .. " must leave /run/containerd")
    end
  end)

  local analyze = S.sh("command -v systemd-analyze"):gsub("%s+$", "")
  if analyze == "" then
    t.skip("systemd-analyze verify accepts it", "systemd-analyze is not installed")
  else
    t.it("systemd-analyze verify accepts it without a warning", function()
      -- verify checks that ExecStart exists: point it at this build's binary
      local dir = S.tmpdir("unit")
      -- the shell's parent is this kubelua process
      local exe = S.sh("readlink /proc/$PPID/exe"):gsub("%s+$", "")
      local text = S.read_file(UNIT):gsub("/usr/local/bin/kubelua", exe)
      local f = assert(io.open(dir .. "/kubelua.service", "w"))
      f:write(text)
      f:close()
      local out = S.sh(q(analyze) .. " verify " .. q(dir .. "/kubelua.service") .. " 2>&1; echo rc=$?")
      -- a misspelt key ("WatchdgSec") is only a warning with status 0: fail on any output
      local bad = text:gsub("WatchdogSec", "WatchdgSec")
      f = assert(io.open(dir .. "/bad.service", "w"))
      f:write(bad)
      f:close()
      local badout = S.sh(q(analyze) .. " verify " .. q(dir .. "/bad.service") .. " 2>&1")
      S.rm(dir)
      t.eq(out, "rc=0", "verify output")
      t.match(badout, "Unknown key 'WatchdgSec'", "the check notices a misspelt key")
    end)
  end
end)

t.describe("deploy/kubernetes/daemonset.yaml", function()
  local docs = assert(yaml.decode_file(MANIFEST) and yaml.decode_all(S.read_file(MANIFEST)))
  local by_kind = {}
  for _, d in ipairs(docs) do
    by_kind[d.kind] = d
  end
  local ds, cm = by_kind.DaemonSet, by_kind.ConfigMap

  t.it("holds a ConfigMap and a DaemonSet, as python3-yaml reads it too", function()
    t.ok(ds and cm, "both kinds")
    local py = S.sh("/usr/bin/python3 -c " .. q("import sys, yaml; "
      .. "print(' '.join(d['kind'] for d in yaml.safe_load_all(open(sys.argv[1]))))") .. " " .. q(MANIFEST))
    t.eq(py, "ConfigMap DaemonSet")
    t.eq(ds.apiVersion, "apps/v1")
    t.eq(ds.spec.selector.matchLabels, ds.spec.template.metadata.labels, "selector matches the template")
  end)

  local pod = ds.spec.template.spec
  local c = pod.containers[1]
  local mounts, volumes = {}, {}
  for _, m in ipairs(c.volumeMounts) do
    mounts[m.mountPath] = m
  end
  for _, v in ipairs(pod.volumes) do
    volumes[v.name] = v
  end

  t.it("mounts the runtime socket's directory, never a socket file", function()
    local m = mounts["/run/containerd"]
    t.ok(m, "/run/containerd mounted")
    local v = volumes[m.name]
    t.eq(v.hostPath.path, "/run/containerd")
    t.eq(v.hostPath.type, "Directory")
    for _, vol in ipairs(pod.volumes) do
      if vol.hostPath then
        t.ok(not vol.hostPath.path:match("%.sock$"), vol.name .. " mounts a socket file")
        t.ok(vol.hostPath.type ~= "Socket", vol.name .. " is of type Socket")
      end
    end
  end)

  t.it("mounts pod logs, state and the ConfigMap the agent reads", function()
    t.eq(volumes[mounts["/var/log/pods"].name].hostPath.path, "/var/log/pods")
    t.eq(volumes[mounts["/var/lib/kubelua"].name].hostPath.path, "/var/lib/kubelua")
    local cfgm = mounts["/etc/kubelua"]
    t.eq(cfgm.readOnly, true)
    t.eq(volumes[cfgm.name].configMap.name, cm.metadata.name)
    t.eq(cm.metadata.namespace, ds.metadata.namespace)
    -- the args name a key of that ConfigMap
    local args = table.concat(c.args, " ")
    local file = args:match("%-%-config (%S+)")
    t.eq(file, "/etc/kubelua/agent.yaml")
    t.ok(cm.data[file:match("[^/]+$")], "the ConfigMap has " .. file)
  end)

  t.it("ships an agent configuration the agent accepts, matching the probe", function()
    local raw = assert(yaml.decode(cm.data["agent.yaml"]))
    local cfg, problems = acfg.validate(raw)
    t.ok(cfg, "valid: " .. table.concat(problems or {}, "; "))
    local probe = c.livenessProbe.httpGet
    t.eq(probe.path, "/healthz")
    t.eq(probe.port, cfg.healthzPort)
    t.eq(probe.host, cfg.healthzBindAddress, "the probe aims where /healthz listens")
    t.eq(cfg.healthzBindAddress, "127.0.0.1")
    t.eq(pod.hostNetwork, true, "127.0.0.1 is the node's only with hostNetwork")
    t.eq(cfg.containerRuntimeEndpoint, "unix:///run/containerd/containerd.sock")
    t.eq(cfg.podLogsDir, "/var/log/pods")
    t.eq(cfg.stateDir, "/var/lib/kubelua")
  end)

  t.it("runs as root with only the capabilities it needs", function()
    local sc = c.securityContext
    t.eq(sc.runAsUser, 0, "the CRI socket is root's")
    t.eq(sc.capabilities.drop, { "ALL" })
    for _, cap in ipairs(sc.capabilities.add) do
      t.ok(cap ~= "SYS_ADMIN" and cap ~= "NET_ADMIN", "no " .. cap)
    end
    t.eq(sc.readOnlyRootFilesystem, true)
  end)
end)
