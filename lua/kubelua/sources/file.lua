-- kubelua.sources.file: static pods from a directory or one file (kubelet's
-- file source, behaviour section 4.4), fed into a kubelua.config merger.
--
--   local src = require("kubelua.sources.file").start(pc, {
--     path = "/etc/kubelua/manifests", node = "node-1",
--     on_error = function(err) ... end,         -- "path/x.yaml: invalid pod: ..."
--   })
--   src:stop()
--
-- Every change sends the source's whole list as a SET: one pod per file,
-- files in name order. A file that does not parse or validate is reported
-- (path and reason) and contributes no pod; the others still load. YAML or
-- JSON, one Pod per file, at most 10 MiB. Dotfiles, editor temporaries and
-- subdirectories are skipped. A missing path sends an empty SET (the source
-- still becomes ready) and is watched until it appears. Two files with the
-- same pod name: the merger keeps the first (in file order) and reports the
-- other.
local watch = require "kubelua.watch"
local yaml = require "kubelua.yaml"
local pod = require "kubelua.pod"
local core = require "kubelua.core"
local task = require "kubelua.task"

local M = {}
-- Largest manifest file read.
M.MAX_SIZE = 10 * 1024 * 1024

local Source = {}
Source.__index = Source

-- load(path, opts) -> pod | nil, err: read, decode, default and validate one file.
function M.load(path, opts)
  local obj, err = yaml.decode_file(path, { max_size = M.MAX_SIZE })
  if obj == nil or obj == yaml.null then
    return nil, (err or (path .. ": empty document")) .. ", please check config file", "INVALID"
  end
  return pod.prepare(obj, { source = "file", location = path, node = opts.node })
end

function M.start(pc, opts)
  assert(type(opts) == "table" and type(opts.path) == "string", "kubelua.sources.file: opts.path is required")
  assert(type(opts.node) == "string", "kubelua.sources.file: opts.node (the node name) is required")
  local self = setmetatable({
    pc = pc,
    name = opts.name or "file",
    path = opts.path:gsub("(.)/+$", "%1"),
    node = opts.node,
    on_error = opts.on_error or function(err)
      core.log("E", "file source: " .. err)
    end,
    files = {}, -- file path -> pod (or false when it failed)
  }, Source)
  pc:register(self.name)
  local wopts = { debounce = opts.debounce, rescan = opts.rescan }
  local err
  if opts.single_file then
    self.watcher, err = watch.file(self.path, wopts)
  else
    self.watcher, err = watch.dir(self.path, wopts)
  end
  if not self.watcher then
    return nil, err
  end
  -- One SET per batch of events, however many files changed at once.
  task.spawn(function()
    while true do
      local batch = self.watcher and self.watcher:next()
      if not batch then
        break
      end
      for _, ev in ipairs(batch) do
        self:handle(ev)
      end
      self:send()
    end
    self.stopped = true
  end)
  return self
end

function Source:send()
  local names, pods = {}, {}
  for path, p in pairs(self.files) do
    if p then
      names[#names + 1] = path
    end
  end
  table.sort(names)
  for _, path in ipairs(names) do
    pods[#pods + 1] = self.files[path]
  end
  self.pc:merge(self.name, { op = "SET", pods = pods })
end

function Source:handle(ev)
  if ev.kind == "missing" then
    self.files = {}
    self.on_error(self.path .. ": path does not exist, ignoring")
  elseif ev.kind == "removed" then
    self.files[ev.path] = nil
  elseif ev.kind == "appeared" or ev.kind == "changed" then
    if ev.name == nil then
      return -- the directory came back; its entries follow
    end
    if ev.type == "dir" then
      self.on_error(ev.path .. ": is a directory; not recursing")
      return
    elseif ev.type ~= "file" then
      self.on_error(ev.path .. ": not a regular file, ignoring")
      return
    end
    local p, err = M.load(ev.path, self)
    if p then
      self.files[ev.path] = p
    else
      self.files[ev.path] = false
      self.on_error(err)
    end
  end
end

function Source:stop()
  if self.watcher then
    self.watcher:close()
    self.watcher = nil
  end
end

return M
