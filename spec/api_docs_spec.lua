-- scripts/gen_api_docs.lua: the doc-coverage check fails, naming the export
-- and the file, when a Lua module or a C binding exports something without
-- documentation, and when docs/api.md is stale. It runs on a small tree
-- made here; ctest `docs.api` runs the same check on the real one.
local t = require "spec.t"
local S = require "spec.support"

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- the shell's parent is this kubelua process
local KUBELUA = S.sh("readlink /proc/$PPID/exe"):gsub("%s+$", "")
local GEN = S.ROOT .. "/scripts/gen_api_docs.lua"

local function write(path, text)
  S.sh("mkdir -p " .. q(path:match("^(.*)/[^/]*$")))
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- -> stdout+stderr, exit status
local function gen(root, ...)
  local args = { "--root", q(root) }
  for _, a in ipairs({ ... }) do
    args[#args + 1] = q(a)
  end
  local out = S.sh(q(KUBELUA) .. " run " .. q(GEN) .. " " .. table.concat(args, " ") .. " 2>&1; echo rc=$?")
  local body, rc = out:match("^(.-)rc=(%d+)%s*$")
  return body, tonumber(rc)
end

-- A module name no real module has, so the temp tree's copy is the one loaded.
local MOD = "kubelua.zz_docs_check_" .. math.random(1e6)
local FILE = "lua/" .. MOD:gsub("%.", "/") .. ".lua"

local DOCLESS = [[
local M = {}

function M.frob(x)
  return x
end

M.LIMIT = 3

return M
]]

local DOCUMENTED = [[
-- MODNAME: a module for the docs check.
--
--   local z = require "MODNAME"
--   z.frob(x) -> x, unchanged
local M = {}

function M.frob(x)
  return x
end

M.LIMIT = 3 -- how many at most

return M
]]

t.describe("the API docs check", function()
  local root
  t.before_each(function()
    root = S.tmpdir("apidocs")
  end)
  t.after_each(function()
    S.rm(root)
  end)

  t.it("names each undocumented export of a Lua module and its file", function()
    write(root .. "/" .. FILE, DOCLESS)
    local out, rc = gen(root, "--check")
    t.eq(rc, 1, out)
    t.match(out, MOD:gsub("%p", "%%%0") .. "%.frob: exported but not documented in " .. FILE:gsub("%p", "%%%0"))
    t.match(out, MOD:gsub("%p", "%%%0") .. "%.LIMIT: exported but not documented in " .. FILE:gsub("%p", "%%%0"))
  end)

  t.it("names an undocumented export of a C binding", function()
    -- kubelua.sys as built, read against a copy of its source without comments
    local src = assert(S.read_file(S.ROOT .. "/src/sys/statvfs.c"))
    write(root .. "/src/sys/statvfs.c", (src:gsub("/%*.-%*/", "")))
    local out, rc = gen(root, "--check")
    t.eq(rc, 1, out)
    t.match(out, "kubelua%.sys%.statvfs: exported but not documented in src/sys/statvfs%.c")
    t.match(out, "kubelua%.sys%.remove_all: exported but not documented in src/sys/statvfs%.c")
    -- with the real source, every function of kubelua.sys is documented
    write(root .. "/src/sys/statvfs.c", src)
    out = gen(root, "--check")
    t.ok(not out:find("kubelua.sys.", 1, true), out)
  end)

  t.it("passes once documented and generated, and fails when docs/api.md is stale", function()
    write(root .. "/" .. FILE, (DOCUMENTED:gsub("MODNAME", MOD)))
    local out, rc = gen(root)
    t.eq(rc, 0, out)
    local md = assert(S.read_file(root .. "/docs/api.md"))
    t.match(md, "## `" .. MOD:gsub("%p", "%%%0") .. "`\n\na module for the docs check%.")
    t.match(md, "\n%- `z%.frob%(x%) %-> x, unchanged`\n", "the usage line is the signature")
    t.match(md, "\n%- `zz_docs_check_%d+%.LIMIT` — how many at most %*%(number%)%*\n", "a field with its comment")
    out, rc = gen(root, "--check")
    t.eq(rc, 0, out)
    t.match(out, "1 modules, 2 documented exports")
    -- a doc comment changes: the file is stale until regenerated
    write(root .. "/" .. FILE, (DOCUMENTED:gsub("MODNAME", MOD):gsub("how many at most", "the most there can be")))
    out, rc = gen(root, "--check")
    t.eq(rc, 1, out)
    t.match(out, "docs/api%.md is stale")
  end)
end)
