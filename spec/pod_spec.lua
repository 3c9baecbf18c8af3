-- Pod defaulting, UIDs and validation shared by every pod source.
local t = require "spec.t"
local pod = require "kubelua.pod"

local function manifest()
  return {
    apiVersion = "v1", kind = "Pod",
    metadata = { name = "web" },
    spec = {
      hostNetwork = true,
      containers = { {
        name = "httpd", image = "kubelua.local/busybox:latest",
        ports = { { name = "http", containerPort = 8080 } },
        livenessProbe = { httpGet = { port = "http", host = "127.0.0.1" } },
      } },
    },
  }
end

t.describe("defaults", function()
  t.it("apply kubelet's pod, container and probe defaults", function()
    local p = assert(pod.prepare(manifest(), { source = "file", location = "/etc/kubelua/pods/web.yaml", node = "Node-1" }))
    t.eq(p.metadata.name, "web-node-1")
    t.eq(p.metadata.namespace, "default")
    t.match(p.metadata.uid, "^%x+$")
    t.eq(#p.metadata.uid, 32)
    t.eq(p.metadata.annotations["kubernetes.io/config.hash"], p.metadata.uid)
    t.eq(p.spec.nodeName, "Node-1")
    t.eq(p.spec.restartPolicy, "Always")
    t.eq(p.spec.terminationGracePeriodSeconds, 30)
    t.eq(p.spec.tolerations, { { operator = "Exists", effect = "NoExecute" } })
    t.eq(p.status.phase, "Pending")
    local c = p.spec.containers[1]
    t.eq(c.imagePullPolicy, "Always")
    t.eq(c.terminationMessagePath, "/dev/termination-log")
    t.eq(c.ports[1], { name = "http", containerPort = 8080, hostPort = 8080, protocol = "TCP" })
    t.eq(c.livenessProbe, { httpGet = { port = "http", host = "127.0.0.1", path = "/", scheme = "HTTP" },
      timeoutSeconds = 1, periodSeconds = 10, successThreshold = 1, failureThreshold = 3, initialDelaySeconds = 0 })
  end)
  t.it("pull policy follows the tag", function()
    for image, want in pairs({ ["busybox"] = "Always", ["busybox:latest"] = "Always", ["busybox:1.36"] = "IfNotPresent",
      ["reg:5000/busybox"] = "Always", ["reg:5000/busybox:1"] = "IfNotPresent",
      ["busybox@sha256:" .. string.rep("a", 64)] = "IfNotPresent" }) do
      local m = manifest()
      m.spec.containers[1].image = image
      t.eq(assert(pod.prepare(m, { source = "http", location = "u", node = "n" })).spec.containers[1].imagePullPolicy, want, image)
    end
  end)
  t.it("the http source gets no file toleration", function()
    local p = assert(pod.prepare(manifest(), { source = "http", location = "http://127.0.0.1/pods", node = "n" }))
    t.eq(p.spec.tolerations, nil)
  end)
end)

t.describe("UIDs", function()
  local function uid(m, loc, node)
    return assert(pod.prepare(m or manifest(), { source = "file", location = loc or "/a.yaml", node = node or "n" })).metadata.uid
  end
  t.it("are deterministic", function()
    t.eq(uid(), uid())
  end)
  t.it("depend on node, location and content", function()
    local base = uid()
    t.ok(uid(nil, "/b.yaml") ~= base, "location")
    t.ok(uid(nil, nil, "m") ~= base, "node")
    local m = manifest()
    m.spec.containers[1].image = "other"
    t.ok(uid(m) ~= base, "content")
  end)
  t.it("a UID in the manifest is kept", function()
    local m = manifest()
    m.metadata.uid = "given-uid"
    t.eq(uid(m), "given-uid")
  end)
end)

t.describe("validation", function()
  local function err_of(mutate)
    local m = manifest()
    mutate(m)
    local p, err = pod.prepare(m, { source = "file", location = "pods/web.yaml", node = "n" })
    t.eq(p, nil)
    return err
  end
  t.it("names the file and the field", function()
    t.eq(err_of(function(m) m.spec.containers[1].image = nil end),
      "pods/web.yaml: invalid pod: spec.containers[1].image: required value")
  end)
  t.it("catches each kind of mistake", function()
    t.match(err_of(function(m) m.metadata.name = nil end), "name is needed for the pod")
    t.match(err_of(function(m) m.kind = "Deployment" end), 'kind "Deployment", expected Pod')
    t.match(err_of(function(m) m.metadata.name = "Web_1" end), 'metadata.name: invalid value "Web_1%-n"')
    t.match(err_of(function(m) m.spec.containers[2] = { name = "httpd", image = "x" } end),
      'spec.containers%[2%].name: duplicate value "httpd"')
    t.match(err_of(function(m) m.spec.containers[1].ports[1].containerPort = 70000 end),
      "ports%[1%]%.containerPort: must be between 1 and 65535")
    t.match(err_of(function(m) m.spec.containers[1].livenessProbe = { periodSeconds = 5 } end),
      "livenessProbe: must specify a handler type")
    t.match(err_of(function(m) m.spec.containers[1].livenessProbe.tcpSocket = { port = 1 } end),
      "livenessProbe: may not specify more than 1 handler type")
    t.match(err_of(function(m) m.spec.containers[1].livenessProbe.successThreshold = 2 end),
      "livenessProbe.successThreshold: must be 1")
    t.match(err_of(function(m) m.spec.restartPolicy = "Sometimes" end), 'unsupported value "Sometimes"')
    t.match(err_of(function(m) m.spec.containers = {} end), "spec.containers: required value")
    t.match(err_of(function(m) m.spec = nil end), "spec: required value")
  end)
  t.it("reports every problem at once", function()
    local err = err_of(function(m)
      m.spec.containers[1].image = nil
      m.spec.containers[1].ports[1].containerPort = 0
    end)
    t.match(err, "image: required value; .*containerPort")
  end)
end)
