-- kubelua.sources.http: static pods from a URL (kubelet's HTTP source,
-- behaviour section 4.5), fed into a kubelua.config merger.
--
--   local src = require("kubelua.sources.http").start(pc, {
--     url = "http://127.0.0.1:8080/pods", node = "node-1",
--     headers = { Authorization = "..." }, period = 20,
--     on_error = function(err) ... end,
--   })
--   src:stop()
--
-- Every `period` (kubelet's httpCheckFrequency, 20 s) the URL is fetched
-- (10 s timeout, at most 10 MiB). A status other than 200 is an error; an
-- empty body sends an empty SET and is reported; a body identical to the
-- last good one changes nothing; otherwise it must decode (YAML or JSON) as
-- one Pod or a PodList whose pods all validate, and then a SET is sent.
-- Anything invalid is reported with the URL and nothing is sent.
local http = require "kubelua.http"
local yaml = require "kubelua.yaml"
local pod = require "kubelua.pod"
local core = require "kubelua.core"
local task = require "kubelua.task"

local M = {}
-- Poll period and request timeout in seconds, and the largest body read.
M.PERIOD = 20
M.TIMEOUT = 10
M.MAX_SIZE = 10 * 1024 * 1024

local Source = {}
Source.__index = Source

-- parse(body, url, node) -> pods | nil, err
function M.parse(body, url, node)
  local obj, err = yaml.decode(body)
  if type(obj) ~= "table" then -- nil (an error), yaml.null, or a scalar such as an HTML page
    return nil, string.format("%s: received %q, but couldn't parse as single or multiple pods (%s)",
      url, body:sub(1, 80), err or (obj == yaml.null and "empty document") or ("a " .. type(obj) .. ", not an object")),
      "INVALID"
  end
  if type(obj) == "table" and obj[1] ~= nil then
    return nil, string.format("%s: a list of %d entries; expected a Pod or a PodList (kind: PodList, items: [...])",
      url, #obj), "INVALID"
  end
  local items
  if type(obj) == "table" and obj.kind == "PodList" then
    items = (obj.items == nil or obj.items == yaml.null) and {} or obj.items
    if type(items) ~= "table" or (next(items) ~= nil and items[1] == nil) then
      -- not an empty SET: that would remove every pod of the source
      return nil, string.format("%s: a PodList whose items is not a list", url), "INVALID"
    end
  else
    items = { obj }
  end
  local pods = {}
  for i, item in ipairs(items) do
    local where = #items > 1 and string.format("%s: items[%d]", url, i) or url
    local p, perr = pod.prepare(item, { source = "http", location = url, node = node })
    if not p then
      return nil, perr:gsub("^" .. url:gsub("%p", "%%%0"), where, 1), "INVALID"
    end
    pods[#pods + 1] = p
  end
  return pods
end

function M.start(pc, opts)
  assert(type(opts) == "table" and type(opts.url) == "string", "kubelua.sources.http: opts.url is required")
  assert(type(opts.node) == "string", "kubelua.sources.http: opts.node (the node name) is required")
  local self = setmetatable({
    pc = pc,
    name = opts.name or "http",
    url = opts.url,
    node = opts.node,
    headers = opts.headers,
    period = opts.period or M.PERIOD,
    on_error = opts.on_error or function(err)
      core.log("E", "http source: " .. err)
    end,
    last = nil,
    polls = 0,
  }, Source)
  pc:register(self.name)
  self.loop = task.every(self.period, function()
    self:poll()
  end)
  return self
end

function Source:poll()
  self.polls = self.polls + 1
  local resp, err = http.request{ url = self.url, headers = self.headers, timeout = M.TIMEOUT,
    max_body = M.MAX_SIZE }
  if not resp then
    return self.on_error(err)
  end
  if resp.status ~= 200 then
    return self.on_error(string.format("%s: %d", self.url, resp.status))
  end
  if resp.body == "" then
    self.last = ""
    self.pc:merge(self.name, { op = "SET", pods = {} })
    return self.on_error("zero-length data received from " .. self.url)
  end
  if resp.body == self.last then
    return
  end
  local pods, perr = M.parse(resp.body, self.url, self.node)
  if not pods then
    return self.on_error(perr)
  end
  self.last = resp.body
  self.pc:merge(self.name, { op = "SET", pods = pods })
end

-- stop(); src.loop.done tells when the polling task has finished.
function Source:stop()
  self.loop:stop()
end

return M
