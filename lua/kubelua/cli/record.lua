-- `kubelua record FILE`: save what the runtime holds now (sandboxes,
-- containers with their exit times, images, image filesystem figures) as a
-- Lua data file that kubelua.testing serves as a fake runtime.
local M = {}

M.USAGE = [[
usage: kubelua record FILE [--endpoint EP]

Saves the runtime's sandboxes, containers (with exit times and codes),
images, image filesystem usage and capacity, and status to FILE (a Lua data
file). Specs load it with require("kubelua.testing").load(FILE), and
`kubelua gc --dry-run --from FILE` plans against it.
]]

function M.main(args)
  local core = require "kubelua.core"
  local file, endpoint
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--endpoint" then
      i = i + 1
      endpoint = args[i]
    elseif a:match("^%-%-endpoint=") then
      endpoint = a:match("=(.*)$")
    elseif a == "-h" or a == "--help" then
      io.stdout:write(M.USAGE)
      return
    elseif a:sub(1, 1) == "-" or file then
      io.stderr:write("kubelua record: unexpected argument ", a, "\n", M.USAGE)
      return core.set_exit_code(2)
    else
      file = a
    end
    i = i + 1
  end
  if not file then
    io.stderr:write("kubelua record: missing FILE\n", M.USAGE)
    return core.set_exit_code(2)
  end
  local rt, err = require("kubelua.cri").connect(endpoint)
  if not rt then
    io.stderr:write("kubelua record: ", err, "\n")
    return core.set_exit_code(1)
  end
  local testing = require "kubelua.testing"
  local rec
  rec, err = testing.record(rt)
  rt:close()
  if not rec then
    io.stderr:write("kubelua record: ", err, "\n")
    return core.set_exit_code(1)
  end
  local ok
  ok, err = testing.save(file, rec)
  if not ok then
    io.stderr:write("kubelua record: ", err, "\n")
    return core.set_exit_code(1)
  end
  io.stdout:write(string.format("recorded %d sandboxes, %d containers, %d images to %s\n", #rec.sandboxes,
    #rec.containers, #rec.images, file))
end

return M
