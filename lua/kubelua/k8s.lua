-- kubelua.k8s: a Kubernetes API client on kubelua.http (JSON through
-- kubelua.k8s.json, lua-cjson underneath).
--
--   local k8s = require "kubelua.k8s"
--   local api = assert(k8s.connect())              -- $KUBECONFIG, in-cluster, ~/.kube/config
--   local api = assert(k8s.connect{ kubeconfig = "/etc/kubelua/kubeconfig" })
--   local api = k8s.new(assert(k8s.config.in_cluster()), { timeout = 10 })
--
--   local pods = assert(api:list("/api/v1/pods", { fieldSelector = "spec.nodeName=node-1" }))
--   for _, p in ipairs(pods.items) do print(p.metadata.namespace, p.metadata.name) end
--   local cm, err, code = api:get(k8s.path("configmaps", "default", "settings"))
--   if code == "NOT_FOUND" then ... end
--   assert(api:create(k8s.path("pods", "default"), pod))
--   assert(api:patch(k8s.path("pods", "default", "web"), { metadata = { labels = { a = "b" } } },
--     { type = "strategic" }))
--   assert(api:delete(k8s.path("pods", "default", "web"), { gracePeriodSeconds = 0 }))
--
--   local w = api:watch("/api/v1/pods", {
--     fieldSelector = "spec.nodeName=node-1",
--     on_event = function(type, obj) end,      -- ADDED / MODIFIED / DELETED
--     on_error = function(err, code) end,
--   })
--   ... w:items(), w:synced(), w.resource_version ...
--   w:stop()
-- (kubelua.k8s.watch describes the watch loop.)
--
-- Every call parks the calling task. Results are decoded objects (tables,
-- see kubelua.k8s.json for numbers and null). Lists gain each item's `kind`
-- and `apiVersion` (the API leaves them out of list items) so that objects
-- from lists and from watch events look alike.
--
-- Errors: nil, "CODE: METHOD url: message", "CODE" [, status] where CODE is
--   a transport code of kubelua.http (CONNECT, TLS, TIMEOUT, CLOSED, ...),
--   DECODE for a body that is not the JSON expected, or, for an HTTP error
--   status, one named after the API's Status reason: BAD_REQUEST,
--   UNAUTHORIZED, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED, ALREADY_EXISTS,
--   CONFLICT, GONE (410: Expired/Gone), UNSUPPORTED_MEDIA_TYPE, INVALID,
--   TOO_MANY_REQUESTS, INTERNAL, UNAVAILABLE, SERVER_TIMEOUT, else
--   HTTP_STATUS. The fourth value is the API's Status object when there is
--   one. The message then reads "... 404 pods \"x\" not found".
-- Credentials never appear in a message, a log line or a printed client:
-- they live in the config's authorization function, and URLs are printed
-- without user:password.
local http = require "kubelua.http"
local json = require "kubelua.k8s.json"
local config = require "kubelua.k8s.config"
local options = require "kubelua.opts"

local M = {}

M.json = json
M.config = config

-- Options connect{} fills in when left out.
M.defaults = {
  timeout = 30, -- seconds for a request (watches set their own)
  max_body = 256 * 1024 * 1024, -- bytes of one response (a big unpaged list)
  user_agent = "kubelua/" .. require("kubelua.core").version .. " (linux)",
}

local REASON_CODES = {
  BadRequest = "BAD_REQUEST", Unauthorized = "UNAUTHORIZED", Forbidden = "FORBIDDEN",
  NotFound = "NOT_FOUND", MethodNotAllowed = "METHOD_NOT_ALLOWED", AlreadyExists = "ALREADY_EXISTS",
  Conflict = "CONFLICT", Gone = "GONE", Expired = "GONE", UnsupportedMediaType = "UNSUPPORTED_MEDIA_TYPE",
  Invalid = "INVALID", TooManyRequests = "TOO_MANY_REQUESTS", InternalError = "INTERNAL",
  ServiceUnavailable = "UNAVAILABLE", ServerTimeout = "SERVER_TIMEOUT", Timeout = "SERVER_TIMEOUT",
  NotAcceptable = "BAD_REQUEST", RequestEntityTooLarge = "TOO_LARGE",
}
local STATUS_CODES = {
  [400] = "BAD_REQUEST", [401] = "UNAUTHORIZED", [403] = "FORBIDDEN", [404] = "NOT_FOUND",
  [405] = "METHOD_NOT_ALLOWED", [409] = "CONFLICT", [410] = "GONE", [413] = "TOO_LARGE",
  [415] = "UNSUPPORTED_MEDIA_TYPE", [422] = "INVALID", [429] = "TOO_MANY_REQUESTS",
  [500] = "INTERNAL", [503] = "UNAVAILABLE", [504] = "SERVER_TIMEOUT",
}

-- The CODE for an HTTP error status and its Status object (if any).
function M.status_code(status, st)
  local reason = type(st) == "table" and st.reason or nil
  return REASON_CODES[reason] or STATUS_CODES[status] or "HTTP_STATUS"
end

-- ------------------------------------------------------------------ paths

-- escape(s) -> s percent-encoded for one path segment or query value.
local function escape(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end
M.escape = escape

-- "?a=1&b=2" from a table (sorted keys; nil and false left out), or "".
function M.query_string(q)
  if not q then
    return ""
  end
  local keys = {}
  for k, v in pairs(q) do
    if v ~= nil and v ~= false then
      keys[#keys + 1] = k
    end
  end
  if #keys == 0 then
    return ""
  end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do
    parts[i] = escape(k) .. "=" .. escape(q[k] == true and "true" or q[k])
  end
  return "?" .. table.concat(parts, "&")
end

-- path(resource, namespace, name, subresource) for core/v1 resources, or
-- path{group=, version=, resource=, namespace=, name=, subresource=}.
--   k8s.path("pods")                        -> /api/v1/pods (all namespaces)
--   k8s.path("pods", "default", "web")      -> /api/v1/namespaces/default/pods/web
--   k8s.path{ group = "apps", version = "v1", resource = "deployments", namespace = "x" }
function M.path(resource, namespace, name, sub)
  local group, version = nil, "v1"
  if type(resource) == "table" then
    local t = resource
    group, version, resource = t.group, t.version or "v1", t.resource
    namespace, name, sub = t.namespace, t.name, t.subresource
  end
  if type(resource) ~= "string" or resource == "" then
    error("kubelua.k8s: path needs a resource name", 2)
  end
  local p = (group and group ~= "") and ("/apis/" .. escape(group) .. "/" .. escape(version))
      or ("/api/" .. escape(version))
  if namespace and namespace ~= "" then
    p = p .. "/namespaces/" .. escape(namespace)
  end
  p = p .. "/" .. escape(resource)
  if name and name ~= "" then
    p = p .. "/" .. escape(name)
    if sub and sub ~= "" then
      p = p .. "/" .. escape(sub)
    end
  end
  return p
end

-- "namespace/name" (or "name" for cluster objects): the informers' key.
function M.key(obj)
  local m = type(obj) == "table" and obj.metadata
  if type(m) ~= "table" or type(m.name) ~= "string" then
    return nil
  end
  if type(m.namespace) == "string" and m.namespace ~= "" then
    return m.namespace .. "/" .. m.name
  end
  return m.name
end

-- ----------------------------------------------------------------- client

local Client = {}
Client.__index = Client

-- The options of `where` (a method name) checked against `types` (see
-- kubelua.opts), nil as {}. Misuse is blamed on the method's caller, `level`
-- (3, the default) counting as for error() from check_opts's own frame.
local function check_opts(where, opts, types, level)
  level = level or 3
  if opts == nil then
    return {}
  end
  if type(opts) ~= "table" then
    error(string.format("kubelua.k8s: %s expects a table of options, got %s", where, type(opts)), level)
  end
  options.check(opts, types, "kubelua.k8s: " .. where, level)
  return opts
end

local function check_path(where, path, level)
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    error(string.format("kubelua.k8s: %s expects an API path starting with '/', got %s", where,
      type(path) == "string" and string.format("%q", path) or type(path)), level or 3)
  end
end

-- new(config, {timeout=, max_body=, user_agent=}) -> client
function M.new(cfg, opts)
  if type(cfg) ~= "table" or type(cfg.server) ~= "string" then
    error("kubelua.k8s: new expects a config (see kubelua.k8s.config), got " .. type(cfg), 2)
  end
  opts = check_opts("new", opts, { timeout = "number", max_body = "number", user_agent = "string" })
  local self = setmetatable({
    server = cfg.server:gsub("/+$", ""),
    namespace = cfg.namespace or "default",
    source = cfg.source,
    timeout = opts.timeout or M.defaults.timeout,
    max_body = opts.max_body or M.defaults.max_body,
    user_agent = opts.user_agent or M.defaults.user_agent,
  }, Client)
  local tls = { verify_tls = not cfg.insecure, ca_file = cfg.ca_file, cert_file = cfg.cert_file,
    key_file = cfg.key_file, proxy = cfg.proxy }
  local auth = cfg.authorization
  -- Verification is on unless the kubeconfig says insecure-skip-tls-verify:
  -- true; say so whenever a client is made without it (or without TLS).
  if cfg.insecure then
    require("kubelua.core").log("W", string.format("k8s: %s: insecure-skip-tls-verify is set: the API server's "
      .. "certificate is not verified", tostring(cfg.source or self.server)))
  elseif self.server:find("^http://") and auth then
    require("kubelua.core").log("W", string.format("k8s: %s: credentials are sent over plain HTTP to %s",
      tostring(cfg.source or "config"), self.server))
  end
  -- The request options a call starts from; the credentials stay in this
  -- closure, out of the client table.
  function self._base(timeout, extra_headers)
    local h = { Accept = "application/json", ["User-Agent"] = self.user_agent }
    local a = auth and auth()
    if a then
      h.Authorization = a
    end
    for k, v in pairs(extra_headers or {}) do
      h[k] = v
    end
    return {
      headers = h, timeout = timeout, verify_tls = tls.verify_tls, ca_file = tls.ca_file,
      cert_file = tls.cert_file, key_file = tls.key_file, proxy = tls.proxy,
    }
  end
  return self
end

-- connect(opts) -> client | nil, err, "CONFIG"
-- opts: kubeconfig=, context=, in_cluster={...} (see config.load) and the
-- client options of new().
function M.connect(opts)
  opts = opts or {}
  local cfg, err, code = config.load(opts)
  if not cfg then
    return nil, err, code
  end
  return M.new(cfg, { timeout = opts.timeout, max_body = opts.max_body, user_agent = opts.user_agent })
end

-- "METHOD url" as http messages print it (no user:password).
local function label(method, url)
  return method .. " " .. url:gsub("^(%a+://)[^/@]*@", "%1***@")
end

-- Turn an HTTP result into a decoded object or the error triple (+ Status).
local function outcome(method, url, status, body)
  if status >= 200 and status < 300 then
    if body == "" then
      return {}
    end
    local obj, err = json.decode(body)
    if obj == nil then
      return nil, string.format("DECODE: %s: %s", label(method, url), err), "DECODE"
    end
    return obj
  end
  local st = json.decode(body)
  if type(st) ~= "table" or st.kind ~= "Status" then
    st = nil
  end
  local code = M.status_code(status, st)
  local msg = st and st.message or body:sub(1, 200):gsub("%s+$", "")
  return nil, string.format("%s: %s: %d %s", code, label(method, url), status, msg), code, st
end
M._outcome = outcome

-- Read a stream to its end, up to `max` bytes -> body | nil, err, code
local function read_all(s, max, method, url)
  local parts, n = {}, 0
  while true do
    local data, err, code = s:read()
    if not data then
      if err then
        return nil, err, code
      end
      return table.concat(parts)
    end
    n = n + #data
    if n > max then
      s:close()
      return nil, string.format("TOO_LARGE: %s: response body exceeds %d bytes", label(method, url),
        max), "TOO_LARGE"
    end
    parts[#parts + 1] = data
  end
end

-- request{method=, path=, query=, body=, content_type=, timeout=, holder=}
--   -> object | nil, err, code [, status]
-- body: a table (JSON-encoded) or a string sent as is. holder: a table
-- whose `stream` field holds the transfer while it runs, so that another
-- task can end it with holder.stream:close() (the watch loop's stop()).
function Client:request(opts)
  if type(opts) ~= "table" then
    error("kubelua.k8s: request expects a table of options, got " .. type(opts), 2)
  end
  check_path("request", opts.path)
  local method = opts.method or "GET"
  local url = self.server .. opts.path .. M.query_string(opts.query)
  local body = opts.body
  if type(body) == "table" then
    local err
    body, err = json.encode(body)
    if not body then
      error("kubelua.k8s: request body: " .. err, 2)
    end
  end
  local extra = body and { ["Content-Type"] = opts.content_type or "application/json" } or nil
  local o = self._base(opts.timeout or self.timeout, extra)
  o.url, o.method, o.body = url, method, body
  local status, text, err, code
  if opts.holder then
    o.max_body = 4 * 1024 * 1024 -- the read-ahead; read_all caps the total
    local s = http.open(o)
    opts.holder.stream = s
    local resp
    resp, err, code = s:response()
    if resp then
      status = resp.status
      text, err, code = read_all(s, self.max_body, method, url)
    end
    s:close()
    if opts.holder.stream == s then
      opts.holder.stream = nil
    end
  else
    o.max_body = self.max_body
    local resp
    resp, err, code = http.request(o)
    if resp then
      status, text = resp.status, resp.body
    end
  end
  if not text then
    return nil, err, code
  end
  return outcome(method, url, status, text)
end

-- List query parameters and their types (numbers and strings both go into a
-- query string).
local QUERY = { labelSelector = "string", fieldSelector = "string", limit = "number|string",
  resourceVersion = "string|number", resourceVersionMatch = "string", timeoutSeconds = "number|string",
  continue = "string" }

-- list(path, {labelSelector=, fieldSelector=, limit=, resourceVersion=,
--   resourceVersionMatch=, timeoutSeconds=, continue=, page_only=, holder=})
--   -> list | nil, err, code
-- With `limit`, pages of that size are fetched until the list is complete
-- (the result holds every item and the first page's resourceVersion: one
-- consistent snapshot). When a continue token expires mid-way (410), the
-- list is fetched again whole, without paging, as client-go's pager does.
-- page_only = true returns just the one page (metadata.continue tells where
-- to go on, with `continue`).
function Client:list(path, opts)
  check_path("list", path)
  opts = check_opts("list", opts, setmetatable({ page_only = "boolean", holder = "table" }, { __index = QUERY }))
  local q = {}
  for k in pairs(QUERY) do
    q[k] = opts[k]
  end
  local first, items = nil, {}
  while true do
    local page, err, code, st = self:request { path = path, query = q, holder = opts.holder }
    if not page then
      if code == "GONE" and q.continue and not opts.page_only and not opts.continue then
        q.continue, q.limit, first, items = nil, nil, nil, {}
      else
        return nil, err, code, st
      end
    else
      if type(page.items) ~= "table" then
        return nil, string.format("DECODE: GET %s%s: the list has no items", self.server, path), "DECODE"
      end
      first = first or page
      local kind = type(page.kind) == "string" and page.kind:gsub("List$", "") or nil
      for _, it in ipairs(page.items) do
        if type(it) == "table" then
          it.kind = it.kind or kind
          it.apiVersion = it.apiVersion or page.apiVersion
        end
        items[#items + 1] = it
      end
      local cont = type(page.metadata) == "table" and page.metadata.continue or nil
      if opts.page_only or not cont or cont == "" then
        break
      end
      q.continue = cont
    end
  end
  first.items = items
  if not opts.page_only and type(first.metadata) == "table" then
    first.metadata.continue = nil
    first.metadata.remainingItemCount = nil
  end
  return first
end

-- get(path, {resourceVersion=}) -> object | nil, err, code
function Client:get(path, opts)
  check_path("get", path)
  opts = check_opts("get", opts, { resourceVersion = QUERY.resourceVersion })
  return self:request { path = path, query = { resourceVersion = opts.resourceVersion } }
end

local WRITE_QUERY = { fieldManager = "string", dryRun = "string", fieldValidation = "string" }

local function write_query(opts)
  return { fieldManager = opts.fieldManager, dryRun = opts.dryRun, fieldValidation = opts.fieldValidation }
end

-- The arguments of create() and update() -> opts; misuse is blamed on
-- their caller.
local function check_write(where, path, obj, opts)
  check_path(where, path, 4)
  opts = check_opts(where, opts, WRITE_QUERY, 4)
  if type(obj) ~= "table" and type(obj) ~= "string" then
    error("kubelua.k8s: " .. where .. " expects an object (a table or JSON text), got " .. type(obj), 3)
  end
  return opts
end

-- create(collection_path, object, {fieldManager=, dryRun=}) -> object | nil, err, code
function Client:create(path, obj, opts)
  opts = check_write("create", path, obj, opts)
  return self:request { method = "POST", path = path, body = obj, query = write_query(opts) }
end

-- update(path, object, {fieldManager=, dryRun=}) -> object | nil, err, code (PUT)
function Client:update(path, obj, opts)
  opts = check_write("update", path, obj, opts)
  return self:request { method = "PUT", path = path, body = obj, query = write_query(opts) }
end

-- Content types of patch{type=}: merge, strategic, json and apply.
M.PATCH_TYPES = {
  merge = "application/merge-patch+json",
  strategic = "application/strategic-merge-patch+json",
  json = "application/json-patch+json",
  apply = "application/apply-patch+yaml",
}

-- patch(path, patch, {type = "merge"|"strategic"|"json"|"apply", fieldManager=,
--   force=, dryRun=}) -> object | nil, err, code
-- patch: a table (JSON-encoded; a JSON patch is an array of operations) or
-- text sent as is. The default type is "merge" (RFC 7386), which every
-- resource accepts; "strategic" is kubectl's default for built-in types.
-- "apply" (server-side apply) needs fieldManager.
function Client:patch(path, p, opts)
  check_path("patch", path)
  opts = check_opts("patch", opts, setmetatable({ type = "string", force = "boolean" }, { __index = WRITE_QUERY }))
  local ctype = M.PATCH_TYPES[opts.type or "merge"]
  if not ctype then
    error("kubelua.k8s: patch: option type must be merge, strategic, json or apply, got " ..
      tostring(opts.type), 2)
  end
  if type(p) ~= "table" and type(p) ~= "string" then
    error("kubelua.k8s: patch expects a patch (a table or JSON text), got " .. type(p), 2)
  end
  if opts.type == "json" and type(p) == "table" then
    p = json.array(p)
  end
  local q = write_query(opts)
  q.force = opts.force
  return self:request { method = "PATCH", path = path, body = p, content_type = ctype, query = q }
end

-- delete(path, {gracePeriodSeconds=, propagationPolicy=, preconditions={uid=, resourceVersion=},
--   dryRun=}) -> the API's answer (the object or a Status) | nil, err, code
function Client:delete(path, opts)
  check_path("delete", path)
  opts = check_opts("delete", opts, { gracePeriodSeconds = "number", propagationPolicy = "string",
    preconditions = "table", dryRun = "string" })
  local body
  if next(opts) ~= nil then
    body = { kind = "DeleteOptions", apiVersion = "v1", gracePeriodSeconds = opts.gracePeriodSeconds,
      propagationPolicy = opts.propagationPolicy, preconditions = opts.preconditions }
    if opts.dryRun then
      body.dryRun = json.array { opts.dryRun }
    end
  end
  return self:request { method = "DELETE", path = path, body = body }
end

-- watch(path, opts) -> watcher (kubelua.k8s.watch.start)
function Client:watch(path, opts)
  check_path("watch", path)
  return require("kubelua.k8s.watch").start(self, path, opts)
end

function Client:__tostring()
  return string.format("k8s client %s (%s)", self.server, tostring(self.source))
end

M.Client = Client

return M
