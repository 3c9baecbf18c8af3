-- kubelua.k8s.config: where the API server is and how to authenticate, from
-- a kubeconfig file or from inside a pod (service account).
--
--   local config = require "kubelua.k8s.config"
--   local cfg, err, code = config.kubeconfig("/etc/kubelua/kubeconfig", { context = "x" })
--   local cfg, err, code = config.in_cluster()    -- token, CA, KUBERNETES_SERVICE_HOST/PORT
--   local cfg, err, code = config.load()          -- $KUBECONFIG, else in-cluster, else ~/.kube/config
--
-- A config is a table: server ("https://host:port"), ca_file, cert_file,
-- key_file, insecure (insecure-skip-tls-verify), proxy, namespace, source
-- (where it came from, for messages) and authorization, a function that
-- returns the Authorization header value (or nil). Credentials are only
-- reachable through that function: printing a config never shows a token,
-- and no message built here contains one (token files are named by path).
-- Token files (tokenFile, the service account token) are read again when
-- older than 60 s, so rotated tokens are picked up.
--
-- Kubeconfig files: YAML is decoded with require("kubelua.yaml").decode when
-- that module exists; a kubeconfig written as JSON (valid YAML too) works
-- without it. Relative paths are taken from the kubeconfig's folder.
-- *-data fields (base64 PEM) are written to private temporary files (mode
-- 0600), removed when the config is collected or the host closes.
-- Honoured: server, certificate-authority(-data), insecure-skip-tls-verify
-- (only when set; with a CA it is refused, as client-go does), proxy-url,
-- token, tokenFile, client-certificate(-data), client-key(-data),
-- username/password, the context's namespace. Refused with an error: exec
-- and auth-provider credential plugins. Ignored: tls-server-name,
-- extensions, impersonation.
-- Errors: nil, "CONFIG: <what>: <why>", "CONFIG".
local json = require "kubelua.k8s.json"

local M = {}

M.SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount" -- in-cluster token, CA and namespace
M.TOKEN_REREAD = 60 -- seconds a token file is trusted before it is read again

local function fail(fmt, ...)
  return nil, "CONFIG: " .. string.format(fmt, ...), "CONFIG"
end

-- ------------------------------------------------------------------ base64

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local DEC = {}
for i = 1, 64 do
  DEC[B64:byte(i)] = i - 1
end
DEC[("-"):byte()] = 62 -- URL-safe alphabet too
DEC[("_"):byte()] = 63

-- b64decode(s) -> bytes | nil, err  (whitespace ignored, padding optional)
function M.b64decode(s)
  s = s:gsub("[%s=]", "")
  local out, n = {}, 0
  local len = #s
  if len % 4 == 1 then
    return nil, "invalid base64 (length)"
  end
  for i = 1, len, 4 do
    local a, b, c, d = s:byte(i, i + 3)
    local va, vb = DEC[a], DEC[b]
    local vc, vd = c and DEC[c] or 0, d and DEC[d] or 0
    if not va or not vb or (c and not DEC[c]) or (d and not DEC[d]) then
      return nil, "invalid base64 character"
    end
    local v = va * 262144 + vb * 4096 + vc * 64 + vd
    local b1, b2, b3 = math.floor(v / 65536), math.floor(v / 256) % 256, v % 256
    n = n + 1
    if not c then
      out[n] = string.char(b1)
    elseif not d then
      out[n] = string.char(b1, b2)
    else
      out[n] = string.char(b1, b2, b3)
    end
  end
  return table.concat(out)
end

-- b64encode(bytes) -> string (standard alphabet, padded)
function M.b64encode(s)
  local out, n = {}, 0
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local i1, i2 = math.floor(v / 262144) % 64, math.floor(v / 4096) % 64
    local i3, i4 = math.floor(v / 64) % 64, v % 64
    n = n + 1
    out[n] = B64:sub(i1 + 1, i1 + 1) .. B64:sub(i2 + 1, i2 + 1) ..
        (b and B64:sub(i3 + 1, i3 + 1) or "=") .. (c and B64:sub(i4 + 1, i4 + 1) or "=")
  end
  return table.concat(out)
end

-- ------------------------------------------------------------------- files

local function read_file(path, limit)
  local f, err = io.open(path, "rb")
  if not f then
    return nil, err
  end
  local s = f:read(limit or "*a")
  f:close()
  return s or ""
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then
    f:close()
    return true
  end
  return false
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function resolve(base, p)
  if p == nil or p == "" or p:sub(1, 1) == "/" then
    return p
  end
  return base .. "/" .. p
end

-- Temporary files holding *-data contents, removed when `owner` is collected.
local function temp_files(owner)
  local files = {}
  local proxy = newproxy(true)
  getmetatable(proxy).__gc = function()
    for _, p in ipairs(files) do
      os.remove(p)
    end
  end
  owner._tmp = proxy -- keeps the files as long as the config lives
  return function(bytes)
    local p = os.tmpname() -- created by mkstemp: mode 0600, unique
    local f = io.open(p, "wb")
    if not f then
      return nil
    end
    f:write(bytes)
    f:close()
    files[#files + 1] = p
    return p
  end
end

-- A token function over a file, read again when older than TOKEN_REREAD.
local function token_file_source(path, now)
  local token, read_at
  return function()
    local t = now()
    if token == nil or t - read_at >= M.TOKEN_REREAD then
      local s = read_file(path, 64 * 1024)
      if s then
        s = s:gsub("^%s+", ""):gsub("%s+$", "")
        if s ~= "" then
          token, read_at = s, t
        end
      end
    end
    return token
  end
end

local function monotime()
  local ok, core = pcall(require, "kubelua.core")
  return ok and core.monotime() or os.time()
end

-- ----------------------------------------------------------------- loaders

-- Decode a kubeconfig document: JSON directly, YAML through kubelua.yaml.
function M.decode_document(text, name)
  local first = text:match("^%s*(.)")
  if first == "{" then
    return json.decode(text)
  end
  local ok, yaml = pcall(require, "kubelua.yaml")
  if not ok then
    if tostring(yaml):find("module 'kubelua.yaml' not found", 1, true) then
      return nil, "it is YAML and no YAML decoder is available yet (kubelua.yaml); " ..
          "write the kubeconfig as JSON"
    end
    return nil, "the YAML decoder failed to load: " .. tostring(yaml)
  end
  local v, err = yaml.decode(text, { name = name })
  if v == nil then
    return nil, "invalid YAML: " .. tostring(err)
  end
  return v
end

local function named(list, name, what, path)
  if type(list) ~= "table" then
    return nil
  end
  for _, e in ipairs(list) do
    if type(e) == "table" and e.name == name then
      return e[what]
    end
  end
  return nil
end

local function truthy(v)
  return v == true or v == "true"
end

-- A string field, or nil (absent, null, or not a string).
local function str(v)
  return type(v) == "string" and v ~= "" and v or nil
end

-- kubeconfig(path, {context=}) -> config | nil, "CONFIG: ...", "CONFIG"
function M.kubeconfig(path, opts)
  opts = opts or {}
  local text, err = read_file(path, 16 * 1024 * 1024)
  if not text then
    return fail("kubeconfig %s: %s", path, err)
  end
  local doc, derr = M.decode_document(text, path)
  if type(doc) ~= "table" then
    return fail("kubeconfig %s: %s", path, derr or "not a mapping")
  end
  local base = dirname(path)
  local ctx_name = str(opts.context) or str(doc["current-context"])
  if not ctx_name then
    return fail("kubeconfig %s: no current-context (and no context given)", path)
  end
  local ctx = named(doc.contexts, ctx_name, "context")
  if type(ctx) ~= "table" then
    return fail("kubeconfig %s: context %q not found", path, ctx_name)
  end
  local cluster = named(doc.clusters, ctx.cluster, "cluster")
  if type(cluster) ~= "table" then
    return fail("kubeconfig %s: cluster %q (of context %q) not found", path, tostring(ctx.cluster),
      ctx_name)
  end
  local user = {}
  if str(ctx.user) then
    user = named(doc.users, ctx.user, "user")
    if type(user) ~= "table" then
      return fail("kubeconfig %s: user %q (of context %q) not found", path, tostring(ctx.user),
        ctx_name)
    end
  end
  if not str(cluster.server) or not cluster.server:find("^https?://") then
    return fail("kubeconfig %s: cluster %q: server must be an http(s) URL", path, ctx.cluster)
  end
  local cfg = {
    server = cluster.server:gsub("/+$", ""),
    namespace = str(ctx.namespace) or "default",
    source = string.format("kubeconfig %s (context %s)", path, ctx_name),
    insecure = truthy(cluster["insecure-skip-tls-verify"]),
    proxy = str(cluster["proxy-url"]),
  }
  local write = temp_files(cfg)
  local function data_or_file(t, key, what)
    local d = str(t[key .. "-data"])
    if d then
      local bytes = M.b64decode(d)
      if not bytes then
        return nil, string.format("%s: %s-data is not valid base64", what, key)
      end
      local p = write(bytes)
      if not p then
        return nil, string.format("%s: cannot write %s-data to a temporary file", what, key)
      end
      return p
    end
    local f = str(t[key])
    if f then
      f = resolve(base, f)
      if not exists(f) then
        return nil, string.format("%s: %s %s cannot be read", what, key, f)
      end
      return f
    end
    return false
  end
  local e
  local cluster_what = "cluster " .. tostring(ctx.cluster)
  cfg.ca_file, e = data_or_file(cluster, "certificate-authority", cluster_what)
  if cfg.ca_file == nil then
    return fail("kubeconfig %s: %s", path, e)
  end
  cfg.ca_file = cfg.ca_file or nil
  if cfg.insecure and cfg.ca_file then
    return fail("kubeconfig %s: %s: insecure-skip-tls-verify with a certificate authority is " ..
      "not allowed", path, cluster_what)
  end
  if type(user.exec) == "table" or type(user["auth-provider"]) == "table" then
    return fail("kubeconfig %s: user %s: %s credential plugins are not supported", path,
      tostring(ctx.user), type(user.exec) == "table" and "exec" or "auth-provider")
  end
  local user_what = "user " .. tostring(ctx.user)
  cfg.cert_file, e = data_or_file(user, "client-certificate", user_what)
  if cfg.cert_file == nil then
    return fail("kubeconfig %s: %s", path, e)
  end
  cfg.key_file, e = data_or_file(user, "client-key", user_what)
  if cfg.key_file == nil then
    return fail("kubeconfig %s: %s", path, e)
  end
  cfg.cert_file, cfg.key_file = cfg.cert_file or nil, cfg.key_file or nil
  if (cfg.cert_file == nil) ~= (cfg.key_file == nil) then
    return fail("kubeconfig %s: %s: a client certificate needs its key, and a key its certificate",
      path, user_what)
  end
  local token, token_file = str(user.token), str(user.tokenFile)
  if token then
    cfg.authorization = function()
      return "Bearer " .. token
    end
  elseif token_file then
    token_file = resolve(base, token_file)
    if not exists(token_file) then
      return fail("kubeconfig %s: %s: tokenFile %s cannot be read", path, user_what, token_file)
    end
    local source = token_file_source(token_file, monotime)
    cfg.authorization = function()
      local t = source()
      return t and ("Bearer " .. t) or nil
    end
  elseif str(user.username) then
    local basic = "Basic " .. M.b64encode(user.username .. ":" .. (str(user.password) or ""))
    cfg.authorization = function()
      return basic
    end
  end
  return cfg
end

-- in_cluster{token_file=, ca_file=, namespace_file=, host=, port=}
--   -> config | nil, "CONFIG: ...", "CONFIG"
-- Defaults: the service account folder and $KUBERNETES_SERVICE_HOST/PORT.
function M.in_cluster(opts)
  opts = opts or {}
  local host = opts.host or os.getenv("KUBERNETES_SERVICE_HOST")
  local port = opts.port or os.getenv("KUBERNETES_SERVICE_PORT")
  if not host or host == "" or not port or tostring(port) == "" then
    return fail("not running in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT " ..
      "are not set")
  end
  local dir = M.SERVICE_ACCOUNT_DIR
  local token_file = opts.token_file or (dir .. "/token")
  local ca_file = opts.ca_file or (dir .. "/ca.crt")
  local ns_file = opts.namespace_file or (dir .. "/namespace")
  local source = token_file_source(token_file, monotime)
  if not source() then
    return fail("in-cluster config: the service account token %s cannot be read or is empty",
      token_file)
  end
  if not exists(ca_file) then
    return fail("in-cluster config: the CA file %s cannot be read", ca_file)
  end
  local ns = read_file(ns_file, 1024)
  ns = ns and ns:gsub("%s+", "") or ""
  if host:find(":", 1, true) and not host:find("^%[") then
    host = "[" .. host .. "]" -- an IPv6 address
  end
  return {
    server = "https://" .. host .. ":" .. tostring(port),
    ca_file = ca_file,
    namespace = ns ~= "" and ns or "default",
    insecure = false,
    source = "in-cluster (" .. token_file .. ")",
    authorization = function()
      local t = source()
      return t and ("Bearer " .. t) or nil
    end,
  }
end

-- load{kubeconfig=, context=, in_cluster=} -> config | nil, err, "CONFIG"
-- The first that applies: opts.kubeconfig; $KUBECONFIG (its first existing
-- file; files are not merged); in-cluster when KUBERNETES_SERVICE_HOST is
-- set; ~/.kube/config.
function M.load(opts)
  opts = opts or {}
  if opts.kubeconfig then
    return M.kubeconfig(opts.kubeconfig, opts)
  end
  local env = os.getenv("KUBECONFIG")
  if env and env ~= "" then
    for p in env:gmatch("[^:]+") do
      if exists(p) then
        return M.kubeconfig(p, opts)
      end
    end
    return fail("none of the files in KUBECONFIG (%s) exists", env)
  end
  if (os.getenv("KUBERNETES_SERVICE_HOST") or "") ~= "" then
    return M.in_cluster(opts.in_cluster)
  end
  local home = os.getenv("HOME")
  if home and exists(home .. "/.kube/config") then
    return M.kubeconfig(home .. "/.kube/config", opts)
  end
  return fail("no configuration: no kubeconfig given, KUBECONFIG unset, not in a cluster, " ..
    "and no ~/.kube/config")
end

return M
