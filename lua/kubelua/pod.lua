-- kubelua.pod: what every pod source does to a decoded manifest before it is
-- merged: kubelet's defaults (behaviour sections 3.2, 4.7 and 9), a
-- deterministic UID, and validation with messages naming where and what.
--
--   local pod = require "kubelua.pod"
--   local p, err = pod.prepare(decoded, { source = "file", location = path, node = "node-1" })
--   -- err: "static/web.yaml: spec.containers[1].image: required value"
--
-- The UID, when the manifest has none, is a 128-bit hash (two FNV-1a 64
-- streams) of the node, the source location and a canonical rendering of
-- the manifest: deterministic, and different when any of the three differ.
-- It is not byte-compatible with kubelet's (a Go deep-hash); nothing relies
-- on that.
local bit = require "bit"
local pretty = require "kubelua.pretty"

local M = {}

M.HASH_ANNOTATION = "kubernetes.io/config.hash" -- kubelet's config hash: the UID of a static pod

-- ----------------------------------------------------------------- hashing

-- A canonical text of a decoded value: sorted keys, types marked.
local function canonical(v, out, n)
  local tv = type(v)
  if tv == "table" then
    local keys, all_strings = {}, true
    for k in pairs(v) do
      keys[#keys + 1] = k
      all_strings = all_strings and type(k) == "string"
    end
    if all_strings then
      table.sort(keys)
    else
      table.sort(keys, pretty.key_less)
    end
    n = n + 1
    out[n] = "{"
    for i = 1, #keys do
      local k = keys[i]
      n = canonical(k, out, n)
      n = n + 1
      out[n] = "="
      n = canonical(v[k], out, n)
    end
    n = n + 1
    out[n] = "}"
  elseif tv == "string" then
    out[n + 1], out[n + 2], out[n + 3] = "s", #v, ":"
    out[n + 4] = v
    n = n + 4
  else
    out[n + 1], out[n + 2] = tv, tostring(v)
    n = n + 2
  end
  return n
end

local FNV_PRIME = 1099511628211ULL
local function fnv1a64(s, h)
  for i = 1, #s do
    h = bit.bxor(h, s:byte(i)) * FNV_PRIME
  end
  return h
end

-- hash(...) -> 32 lower-case hex digits over the given strings.
function M.hash(...)
  local a, b = 14695981039346656037ULL, 0x84222325CBF29CE4ULL -- two distinct offset bases
  for i = 1, select("#", ...) do
    local s = select(i, ...)
    s = #s .. ":" .. s
    a, b = fnv1a64(s, a), fnv1a64(s, b * 31ULL)
  end
  return bit.tohex(a, 16) .. bit.tohex(b, 16)
end

-- canonical(v) -> a deterministic text of a plain value (sorted keys), the input of hash().
function M.canonical(v)
  local out = {}
  canonical(v, out, 0)
  return table.concat(out)
end

-- ------------------------------------------------------------------ defaults

local function default_pull_policy(image)
  local name = image:match("^[^@]*") -- strip a digest
  local has_digest = image:find("@", 1, true) ~= nil
  local tag = name:match(":([^/:]+)$")
  if tag == "latest" or (tag == nil and not has_digest) then
    return "Always"
  end
  return "IfNotPresent"
end

local function default_probe(p)
  if type(p) ~= "table" then
    return
  end
  p.timeoutSeconds = p.timeoutSeconds or 1
  p.periodSeconds = p.periodSeconds or 10
  p.successThreshold = p.successThreshold or 1
  p.failureThreshold = p.failureThreshold or 3
  p.initialDelaySeconds = p.initialDelaySeconds or 0
  if type(p.httpGet) == "table" then
    p.httpGet.path = p.httpGet.path or "/"
    p.httpGet.scheme = p.httpGet.scheme or "HTTP"
  end
end

local function default_container(c, host_network)
  if type(c) ~= "table" then
    return
  end
  if type(c.image) == "string" then
    c.imagePullPolicy = c.imagePullPolicy or default_pull_policy(c.image)
  end
  c.terminationMessagePath = c.terminationMessagePath or "/dev/termination-log"
  c.terminationMessagePolicy = c.terminationMessagePolicy or "File"
  for _, port in ipairs(type(c.ports) == "table" and c.ports or {}) do
    if type(port) == "table" then
      port.protocol = port.protocol or "TCP"
      if host_network and port.hostPort == nil then
        port.hostPort = port.containerPort
      end
    end
  end
  default_probe(c.livenessProbe)
  default_probe(c.readinessProbe)
  default_probe(c.startupProbe)
end

-- Apply kubelet's defaults in place (section 4.7 applyDefaults + API defaults).
function M.apply_defaults(p, opts)
  local md = p.metadata
  local node = opts.node or ""
  if md.uid == nil or md.uid == "" then
    local where = opts.source == "file" and ("file:" .. (opts.location or "")) or ("url:" .. (opts.location or ""))
    md.uid = M.hash(M.canonical(p), "host:" .. node, where)
  end
  md.name = md.name .. "-" .. node:lower()
  if md.namespace == nil or md.namespace == "" then
    md.namespace = "default"
  end
  md.annotations = md.annotations or {}
  md.annotations[M.HASH_ANNOTATION] = md.uid
  local spec = p.spec
  spec.nodeName = node
  spec.restartPolicy = spec.restartPolicy or "Always"
  spec.terminationGracePeriodSeconds = spec.terminationGracePeriodSeconds or 30
  spec.dnsPolicy = spec.dnsPolicy or "ClusterFirst"
  spec.schedulerName = spec.schedulerName or "default-scheduler"
  spec.securityContext = spec.securityContext or {}
  for _, list in ipairs({ "initContainers", "containers" }) do
    for _, c in ipairs(type(spec[list]) == "table" and spec[list] or {}) do
      default_container(c, spec.hostNetwork == true)
    end
  end
  if opts.source == "file" then
    spec.tolerations = spec.tolerations or {}
    table.insert(spec.tolerations, { operator = "Exists", effect = "NoExecute" })
  end
  p.status = p.status or {}
  p.status.phase = "Pending"
  return p
end

-- ---------------------------------------------------------------- validation

-- lower-case alphanumerics and '-', starting and ending alphanumeric
local function dns_label(s)
  return type(s) == "string" and #s >= 1 and #s <= 63 and s:match("^[a-z0-9][-a-z0-9]*$") ~= nil
    and s:match("[a-z0-9]$") ~= nil
end

local function dns_subdomain(s)
  if type(s) ~= "string" or #s < 1 or #s > 253 then
    return false
  end
  for part in (s .. "."):gmatch("([^.]*)%.") do
    if not dns_label(part) then
      return false
    end
  end
  return true
end

local HANDLERS = { "exec", "httpGet", "tcpSocket", "grpc" }
local RESTART = { Always = true, OnFailure = true, Never = true }

-- validate(pod) -> true | false, { "field: problem", ... }
function M.validate(p)
  local errs = {}
  local function bad(field, msg)
    errs[#errs + 1] = field .. ": " .. msg
  end
  local md, spec = p.metadata or {}, p.spec or {}
  if not dns_subdomain(md.name) then
    bad("metadata.name", string.format("invalid value %q: must be a lower-case RFC 1123 subdomain", tostring(md.name)))
  end
  if not dns_label(md.namespace) then
    bad("metadata.namespace", string.format("invalid value %q: must be a lower-case RFC 1123 label", tostring(md.namespace)))
  end
  if spec.restartPolicy ~= nil and not RESTART[spec.restartPolicy] then
    bad("spec.restartPolicy", string.format("unsupported value %q: Always, OnFailure or Never", tostring(spec.restartPolicy)))
  end
  local tgp = spec.terminationGracePeriodSeconds
  if tgp ~= nil and (type(tgp) ~= "number" or tgp < 0) then
    bad("spec.terminationGracePeriodSeconds", "must be a non-negative number")
  end
  if type(spec.containers) ~= "table" or #spec.containers == 0 then
    bad("spec.containers", "required value: at least one container")
  end
  local names = {}
  for _, list in ipairs({ "initContainers", "containers" }) do
    for i, c in ipairs(type(spec[list]) == "table" and spec[list] or {}) do
      local at = string.format("spec.%s[%d]", list, i)
      if type(c) ~= "table" then
        bad(at, "must be an object")
      else
        if not dns_label(c.name) then
          bad(at .. ".name", string.format("invalid value %q: must be a lower-case RFC 1123 label", tostring(c.name)))
        elseif names[c.name] then
          bad(at .. ".name", string.format("duplicate value %q", c.name))
        end
        names[c.name or ""] = true
        if type(c.image) ~= "string" or c.image == "" then
          bad(at .. ".image", "required value")
        end
        for j, port in ipairs(type(c.ports) == "table" and c.ports or {}) do
          local pat = string.format("%s.ports[%d]", at, j)
          local cp = type(port) == "table" and port.containerPort
          if type(cp) ~= "number" or cp < 1 or cp > 65535 or cp ~= math.floor(cp) then
            bad(pat .. ".containerPort", "must be between 1 and 65535, inclusive")
          end
          local hp = type(port) == "table" and port.hostPort
          if hp ~= nil and (type(hp) ~= "number" or hp < 0 or hp > 65535) then
            bad(pat .. ".hostPort", "must be between 0 and 65535, inclusive")
          end
          if type(port) == "table" and port.name ~= nil and not (#tostring(port.name) <= 15
            and dns_label(port.name) and port.name:match("[a-z]")) then
            bad(pat .. ".name", string.format("invalid port name %q", tostring(port.name)))
          end
        end
        for _, kind in ipairs({ "livenessProbe", "readinessProbe", "startupProbe" }) do
          local probe = c[kind]
          if probe ~= nil then
            local pat = at .. "." .. kind
            local n = 0
            for _, h in ipairs(HANDLERS) do
              if probe[h] ~= nil then
                n = n + 1
              end
            end
            if n == 0 then
              bad(pat, "must specify a handler type (exec, httpGet, tcpSocket or grpc)")
            elseif n > 1 then
              bad(pat, "may not specify more than 1 handler type")
            end
            for _, f in ipairs({ "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold" }) do
              if probe[f] ~= nil and (type(probe[f]) ~= "number" or probe[f] < 1) then
                bad(pat .. "." .. f, "must be greater than or equal to 1")
              end
            end
            if (kind ~= "readinessProbe") and probe.successThreshold ~= nil and probe.successThreshold ~= 1 then
              bad(pat .. ".successThreshold", "must be 1")
            end
          end
        end
      end
    end
  end
  return #errs == 0, errs
end

-- ------------------------------------------------------------------ prepare

-- prepare(decoded, {source=, location=, node=}) -> pod | nil, "LOCATION: problem; problem"
-- The decoded manifest must be a Pod (kind Pod, or no kind) with a name.
function M.prepare(obj, opts)
  local where = opts.location or opts.source or "pod"
  if type(obj) ~= "table" then
    return nil, where .. ": invalid pod: not an object", "INVALID"
  end
  if obj.kind ~= nil and obj.kind ~= "Pod" then
    return nil, string.format("%s: invalid pod: kind %q, expected Pod", where, tostring(obj.kind)), "INVALID"
  end
  if type(obj.metadata) ~= "table" or type(obj.metadata.name) ~= "string" or obj.metadata.name == "" then
    return nil, where .. ": invalid pod: name is needed for the pod", "INVALID"
  end
  if type(obj.spec) ~= "table" then
    return nil, where .. ": invalid pod: spec: required value", "INVALID"
  end
  M.apply_defaults(obj, opts)
  local ok, errs = M.validate(obj)
  if not ok then
    return nil, where .. ": invalid pod: " .. table.concat(errs, "; "), "INVALID"
  end
  return obj
end

return M
