-- core.set_log_format / core.log: klog text by default; JSON lines with ts,
-- level, pid, caller and msg, escaped so any message stays one valid JSON
-- object (quotes, backslashes, control characters, invalid UTF-8, long
-- messages cut), checked by kubelua.json and by Python's json module.
local t = require "spec.t"
local S = require "spec.support"
local json = require "kubelua.json"

local KUBELUA = S.sh("readlink -f /proc/" .. S.sh("echo $PPID") .. "/exe")
local dir = S.tmpdir("logfmt")

-- run a chunk in a fresh kubelua; returns its stderr lines
local function stderr_of(code)
  local f = assert(io.open(dir .. "/chunk.lua", "w"))
  f:write(code)
  f:close()
  S.sh(string.format("%s run %s/chunk.lua 2> %s/err >/dev/null", KUBELUA, dir, dir))
  local out = {}
  for l in (S.read_file(dir .. "/err") or ""):gmatch("[^\n]+") do
    out[#out + 1] = l
  end
  return out
end

t.describe("log format", function()
  t.it("is klog text by default", function()
    local l = stderr_of('require("kubelua.core").log("W", "careful")\n')
    t.eq(#l, 1)
    t.match(l[1], "^W%d%d%d%d %d%d:%d%d:%d%d%.%d%d%d%d%d%d +%d+ kubelua%] careful$")
  end)

  t.it("json: one object a line with ts, level, pid, caller, msg", function()
    local l = stderr_of([[
local core = require "kubelua.core"
t = core.set_log_format("json")
core.log("I", "hello")
core.log("E", "bad")
core.log("X", "unknown levels are info")
]])
    t.eq(#l, 3)
    local o = json.decode(l[1])
    t.match(o.ts, "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%dZ$")
    t.eq(o.level, "info")
    t.eq(o.msg, "hello")
    t.eq(o.caller, "chunk.lua:3")
    t.eq(type(o.pid), "number")
    t.eq(json.decode(l[2]).level, "error")
    t.eq(json.decode(l[3]).level, "info")
  end)

  t.it("json: hostile messages stay valid JSON (kubelua.json and Python agree)", function()
    local l = stderr_of([[
local core = require "kubelua.core"
core.set_log_format("json")
core.log("W", 'q"uote \\back\nnew\tline\r\0nul\1\31\127 é ✓ 😀')
core.log("W", "bad utf8: \255\254 \192\175 \237\160\128 \240\130\130\172 cut \226\130")
core.log("W", string.rep("x", 10000))
core.spawn(function() error("a task failure is logged in the same format") end)
]])
    t.eq(#l, 4, table.concat(l, "\n"))
    for i = 1, 4 do
      t.ok(l[i]:find('^{"ts":'), "a JSON line: " .. l[i]:sub(1, 200))
    end
    t.eq(json.decode(l[1]).msg, 'q"uote \\back\nnew\tline\r\0nul\1\31\127 é ✓ 😀')
    local m2 = json.decode(l[2]).msg
    t.eq(m2, "bad utf8: \239\191\189\239\191\189 \239\191\189\239\191\189 \239\191\189\239\191\189\239\191\189 "
      .. "\239\191\189\239\191\189\239\191\189\239\191\189 cut \239\191\189\239\191\189")
    local m3 = json.decode(l[3]).msg
    t.ok(m3:find("^x+$"), "only the message's bytes")
    t.eq(#m3, 4096, "cut at 4096 bytes")
    local o4 = json.decode(l[4])
    t.eq(o4.level, "error")
    t.match(o4.msg, "a task failure is logged in the same format")
    -- Python's strict parser on the same bytes
    local out, ok = S.sh(string.format([[/usr/bin/python3 -c '
import json, sys
for line in open(sys.argv[1], "rb"):
    json.loads(line.decode("utf-8"))
print("all valid")' %s/err]], dir))
    t.ok(ok, out)
    t.eq(out, "all valid")
  end)

  t.it("set_log_format returns the old format and refuses unknown ones", function()
    local core = require "kubelua.core"
    t.eq(core.set_log_format("text"), "text")
    t.fails(function() core.set_log_format("xml") end, "invalid option")
  end)

  t.it("cleanup", function()
    S.rm(dir)
  end)
end)
