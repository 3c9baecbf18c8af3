-- Print the merged pod update stream live while you edit manifests:
--   kubelua run examples/sources.lua DIR [URL]
-- Add, edit, rename or delete files in DIR (and serve a Pod/PodList at URL)
-- and watch the ADD / UPDATE / REMOVE / RECONCILE lines. Ctrl-C to stop.
local config = require "kubelua.config"
local filesrc = require "kubelua.sources.file"
local httpsrc = require "kubelua.sources.http"

local dir, url = arg[1], arg[2]
if not dir then
  io.stderr:write("usage: kubelua run examples/sources.lua DIR [URL]\n")
  os.exit(2)
end
local node = os.getenv("NODE_NAME") or io.popen("hostname"):read("*l") or "node"

local pc = config.new{
  on_update = function(u)
    local names = {}
    for _, p in ipairs(u.pods) do
      names[#names + 1] = p.metadata.namespace .. "/" .. p.metadata.name .. " (" .. p.metadata.uid:sub(1, 8) .. ")"
    end
    print(string.format("%s %-9s %-5s %s", os.date("%H:%M:%S"), u.op, u.source, table.concat(names, ", ")))
    io.stdout:flush()
  end,
  on_event = function(e)
    print(string.format("%s %-9s %s", os.date("%H:%M:%S"), e.reason, e.message))
  end,
}
local function on_error(err)
  print(os.date("%H:%M:%S") .. " error     " .. err)
  io.stdout:flush()
end
assert(filesrc.start(pc, { path = dir, node = node, on_error = on_error }))
if url then
  httpsrc.start(pc, { url = url, node = node, on_error = on_error })
end
print("watching " .. dir .. (url and (" and " .. url) or "") .. " as node " .. node .. " (Ctrl-C to stop)")
