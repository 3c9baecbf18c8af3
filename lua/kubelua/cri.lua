-- kubelua.cri: a CRI (runtime.v1) client.
--
--   local cri = require "kubelua.cri"
--   local rt = assert(cri.connect())                 -- $CONTAINER_RUNTIME_ENDPOINT or containerd's
--   local v = assert(rt:version{})
--   local r = assert(rt:list_containers{ filter = { state = { state = "CONTAINER_EXITED" } } })
--   for _, c in ipairs(r.containers) do print(c.id, c.metadata.name) end
--
-- Every RPC of RuntimeService and ImageService is a method named in
-- snake_case (ListPodSandbox -> list_pod_sandbox). Unary methods return the
-- response table, or nil, "CODE: /runtime.v1.X/Y: message", "CODE" with the
-- gRPC status name as CODE. Server-streaming methods return a stream: call
-- it (or use it in a generic for) to get the next message, nil at the end;
-- after the loop, `s.err`/`s.code` tell whether it ended with an error; or
-- pass a callback as second argument (return false from it to stop).
--
-- Deadlines follow kubelet's CRI client: `timeout` (default 2 min) for most
-- calls, twice that for RunPodSandbox, timeout + the grace period for
-- StopContainer, timeout + the command's timeout for ExecSync (none when
-- that is 0), none for PullImage and streams. `opts.timeout` overrides.
--
-- Call accounting: `rt.on_call = function(rpc, code, seconds)` is told of
-- every call made through this client (rpc: "RunPodSandbox"; code: the gRPC
-- status name, "OK" on success; seconds: until the answer, or until a stream
-- opened). It is nil unless set (the agent sets it for /metrics): then a call
-- costs one field look-up more. Its errors are ignored.
local grpc = require "kubelua.grpc"
local monotime = require("kubelua.core").monotime

local M = {}

-- Endpoint when neither the argument nor $CONTAINER_RUNTIME_ENDPOINT gives one,
-- and the runtime request timeout in seconds (kubelet's 2 min).
M.DEFAULT_ENDPOINT = "unix:///run/containerd/containerd.sock"
M.DEFAULT_TIMEOUT = 120

local SERVICES = {
  ["runtime.v1.RuntimeService"] = "runtime",
  ["runtime.v1.ImageService"] = "image",
}

local EMPTY = setmetatable({}, { __newindex = function()
  error("kubelua.cri: the shared empty request is read-only", 2)
end })

-- snake_case of a CamelCase RPC name: ImageFsInfo -> image_fs_info
function M.snake(name)
  return (name:gsub("(%u)(%u%l)", "%1_%2"):gsub("(%l)(%u)", "%1_%2"):lower())
end

-- Endpoint rules as kubelet's: a bare path means a unix socket; unix and
-- (for tests and remote tooling) host:port TCP are accepted.
function M.normalize_endpoint(ep)
  if ep == nil or ep == "" then
    ep = os.getenv("CONTAINER_RUNTIME_ENDPOINT")
    if ep == nil or ep == "" then
      ep = M.DEFAULT_ENDPOINT
    end
  end
  if ep:sub(1, 1) == "/" then
    return "unix://" .. ep
  end
  local scheme = ep:match("^(%a[%w+.-]*)://")
  if scheme == nil or scheme == "unix" or scheme == "tcp" then
    return ep
  end
  return nil, string.format("INVALID_ARGUMENT: endpoint %q: protocol %q not supported", ep, scheme),
    "INVALID_ARGUMENT"
end

-- Deadline rules (kubelet's remote runtime client), by method.
local deadline = {
  run_pod_sandbox = function(t)
    return 2 * t
  end,
  stop_container = function(t, req)
    return t + (tonumber(req.timeout) or 0)
  end,
  exec_sync = function(t, req)
    local cmd = tonumber(req.timeout) or 0
    return cmd == 0 and 0 or t + cmd
  end,
  pull_image = function()
    return 0
  end,
  checkpoint_container = function(t, req)
    return math.max(tonumber(req.timeout) or 0, t)
  end,
}

-- Response checks kubelet's client makes; each returns a reason or nil.
local verify = {
  version = function(r)
    for _, f in ipairs({ "version", "runtime_name", "runtime_version", "runtime_api_version" }) do
      if r[f] == "" then
        return "not all fields are set in VersionResponse (missing " .. f .. ")"
      end
    end
  end,
  run_pod_sandbox = function(r)
    if r.pod_sandbox_id == "" then
      return "PodSandboxId is not set"
    end
  end,
  create_container = function(r)
    if r.container_id == "" then
      return "ContainerId is not set"
    end
  end,
  status = function(r)
    if r.status == nil or #r.status.conditions < 2 then
      return "RuntimeReady or NetworkReady condition are not set"
    end
  end,
  exec = function(r)
    if r.url == "" then
      return "URL is not set"
    end
  end,
}
verify.attach = verify.exec
verify.port_forward = verify.exec

local Client = {}
Client.__index = Client

local Stream = {}
Stream.__index = Stream
Stream.__call = function(self)
  local msg, err, code = self.st:recv()
  if msg == nil and err then
    self.err, self.code = err, code
  end
  return msg
end
function Stream:cancel()
  self.st:cancel()
end

local function unary_method(m, snake, service)
  local rule, check = deadline[snake], verify[snake]
  return function(self, req, opts)
    req = req or EMPTY
    local timeout = opts and opts.timeout
    if timeout == nil then
      timeout = rule and rule(self.timeout, req) or self.timeout
    end
    local on_call = self.on_call
    local t0 = on_call and monotime()
    local resp, err, code = self[service]:unary(m, req, timeout)
    if resp and check then
      local why = check(resp, req)
      if why then
        resp, err, code = nil, "INTERNAL: " .. m.path .. ": " .. why, "INTERNAL"
      end
    end
    if on_call then
      pcall(on_call, m.name, code or "OK", monotime() - t0)
    end
    return resp, err, code
  end
end

local function stream_method(m, service)
  return function(self, req, opts_or_fn)
    local fn, timeout = nil, 0
    if type(opts_or_fn) == "function" then
      fn = opts_or_fn
    elseif type(opts_or_fn) == "table" then
      timeout = opts_or_fn.timeout or 0
    end
    local on_call = self.on_call
    local t0 = on_call and monotime()
    local st, err, code = self[service]:stream(m, req or EMPTY, timeout)
    if on_call then
      pcall(on_call, m.name, code or "OK", monotime() - t0)
    end
    if not st then
      return nil, err, code
    end
    local s = setmetatable({ st = st }, Stream)
    if not fn then
      return s
    end
    for msg in s do
      if fn(msg) == false then
        s:cancel()
        return true
      end
    end
    if s.err then
      return nil, s.err, s.code
    end
    return true
  end
end

-- One method per RPC of the compiled services, generated from descriptors.
M.methods = {}
for path, m in pairs(grpc.methods()) do
  local service = SERVICES[m.service]
  if service then
    local snake = M.snake(m.name)
    Client[snake] = m.streaming and stream_method(m, service) or unary_method(m, snake, service)
    M.methods[snake] = { rpc = m.name, path = path, service = m.service, streaming = m.streaming,
      input = m.input, output = m.output }
  end
end

-- cri.connect(endpoint, {image_endpoint=, timeout=seconds}) -> client | nil, err, code
-- Connecting is lazy: the first call opens the connection.
function M.connect(endpoint, opts)
  opts = opts or {}
  local ep, err, code = M.normalize_endpoint(endpoint)
  if not ep then
    return nil, err, code
  end
  local rt
  rt, err, code = grpc.channel(ep, opts.channel)
  if not rt then
    return nil, err, code
  end
  local img = rt
  if opts.image_endpoint and opts.image_endpoint ~= "" then
    local iep
    iep, err, code = M.normalize_endpoint(opts.image_endpoint)
    if not iep then
      return nil, err, code
    end
    img, err, code = grpc.channel(iep, opts.channel)
    if not img then
      return nil, err, code
    end
  end
  return setmetatable({
    endpoint = ep,
    runtime = rt,
    image = img,
    timeout = opts.timeout or M.DEFAULT_TIMEOUT,
  }, Client)
end

-- rt:close(): close the connection(s); later calls reconnect.
function Client:close()
  self.runtime:close()
  if self.image ~= self.runtime then
    self.image:close()
  end
end

-- rt:unary_raw(m, req, timeout) -> the response's bytes | nil, err, code: a
-- unary call (m from kubelua.grpc.methods()) left undecoded, for callers that
-- walk the bytes in C (the PLEG's relist); accounted as every other call.
function Client:unary_raw(m, req, timeout)
  local on_call = self.on_call
  local t0 = on_call and monotime()
  local ch = SERVICES[m.service] == "image" and self.image or self.runtime
  local bytes, err, code = ch:unary_raw(m, req or EMPTY, timeout or self.timeout)
  if on_call then
    pcall(on_call, m.name, code or "OK", monotime() - t0)
  end
  return bytes, err, code
end

-- Transport counters of the runtime connection: {connects, writes, calls}.
function Client:stats()
  return self.runtime:stats()
end

M.Client = Client
return M
