-- The spec runner: `kubelua run spec/runner.lua spec/NAME_spec.lua`.
--
-- A spec file gets its API with `local t = require "spec.t"`:
--   t.describe(name, fn)  t.it(name, fn)  t.skip(name, reason)
--   t.before_each(fn) t.after_each(fn)  (within the current describe)
--   t.eq(a, b, msg)  deep equality      t.ok(v, msg)
--   t.match(s, pattern, msg)            t.fails(fn, pattern) -> message
-- Every test runs in the runner's task, so I/O parks it like any script.
-- After each test the runner collects garbage and fails the test when a
-- task is still parked (an operation left armed) beyond what the spec has
-- declared with t.allow_parked(n) (a service started in one test and
-- stopped in a later one: +1 when started, -1 when stopped).
local core = require "kubelua.core"
local pretty = require "kubelua.pretty"

local file = assert(arg[1], "usage: runner.lua SPEC_FILE")
-- Specs pick ports and names with math.random: seed it per process so two
-- specs (or two runs) do not draw the same numbers.
math.randomseed(os.time() * 1000 + require("kubelua.sys").getpid() % 1000)
package.path = file:match("^(.*)/[^/]*$") .. "/../?.lua;" .. package.path

local t = {}
local root = { name = "", children = {}, before = {}, after = {} }
local current = root

local function fail(msg, level)
  error(msg, (level or 1) + 1)
end

function t.describe(name, fn)
  local node = { name = name, children = {}, before = {}, after = {}, parent = current }
  table.insert(current.children, node)
  local saved = current
  current = node
  fn()
  current = saved
end

function t.it(name, fn)
  table.insert(current.children, { name = name, fn = fn, parent = current })
end

function t.skip(name, reason)
  table.insert(current.children, { name = name, skip = reason or "skipped", parent = current })
end

function t.before_each(fn)
  table.insert(current.before, fn)
end

function t.after_each(fn)
  table.insert(current.after, fn)
end

local function deep_eq(a, b, path, seen)
  if a == b then
    return true
  end
  if type(a) ~= "table" or type(b) ~= "table" then
    return false, path
  end
  seen = seen or {}
  if seen[a] == b then
    return true
  end
  seen[a] = b
  for k, v in pairs(a) do
    local ok, where = deep_eq(v, b[k], path .. "." .. tostring(k), seen)
    if not ok then
      return false, where
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false, path .. "." .. tostring(k)
    end
  end
  return true
end

function t.eq(got, want, msg)
  local ok, where = deep_eq(got, want, "")
  if not ok then
    fail(string.format("%sexpected %s\n     got %s%s", msg and (msg .. ": ") or "",
      pretty.format(want), pretty.format(got), where ~= "" and ("\n   (differs at " .. where .. ")") or ""), 2)
  end
end

function t.ok(v, msg)
  if not v then
    fail(msg or "expected a true value", 2)
  end
  return v
end

function t.match(s, pattern, msg)
  if type(s) ~= "string" or not s:find(pattern) then
    fail(string.format("%s%s does not match %q", msg and (msg .. ": ") or "", pretty.format(s), pattern), 2)
  end
end

local allowed_parked = 0
function t.allow_parked(n)
  allowed_parked = allowed_parked + n
end

function t.fails(fn, pattern)
  local ok, err = pcall(fn)
  if ok then
    fail("expected an error", 2)
  end
  if pattern and not tostring(err):find(pattern) then
    fail(string.format("error %q does not match %q", tostring(err), pattern), 2)
  end
  return tostring(err)
end

package.loaded["spec.t"] = t

local chunk = assert(loadfile(file))
chunk()

local passed, failed, skipped = 0, 0, 0

local function full_name(node)
  local parts = {}
  while node and node.name ~= "" do
    table.insert(parts, 1, node.name)
    node = node.parent
  end
  return table.concat(parts, " / ")
end

local function hooks(node, key, out)
  if node.parent then
    hooks(node.parent, key, out)
  end
  for _, f in ipairs(node[key] or {}) do
    out[#out + 1] = f
  end
  return out
end

local function tb(e)
  return debug.traceback(tostring(e), 2)
end

local function run(node)
  for _, child in ipairs(node.children) do
    if child.children then
      run(child)
    elseif child.skip then
      skipped = skipped + 1
      io.stdout:write("SKIP  ", full_name(child), " (", child.skip, ")\n")
    else
      local started = core.monotime()
      local ok, err = true, nil
      for _, h in ipairs(hooks(node, "before", {})) do
        if ok then
          ok, err = xpcall(h, tb)
        end
      end
      if ok then
        ok, err = xpcall(child.fn, tb)
      end
      local afters = hooks(node, "after", {})
      for i = #afters, 1, -1 do
        local aok, aerr = xpcall(afters[i], tb)
        if ok and not aok then
          ok, err = false, aerr
        end
      end
      collectgarbage()
      local parked = core.parked_count()
      if ok and parked > allowed_parked then
        ok, err = false, string.format("%d task(s) still parked after the test (an operation left armed)",
          parked - allowed_parked)
      end
      if ok then
        passed = passed + 1
        io.stdout:write(string.format("PASS  %s (%.0f ms)\n", full_name(child), (core.monotime() - started) * 1000))
      else
        failed = failed + 1
        io.stdout:write("FAIL  ", full_name(child), "\n      ", tostring(err):gsub("\n", "\n      "), "\n")
      end
      io.stdout:flush()
    end
  end
end

run(root)
io.stdout:write(string.format("%d passed, %d failed, %d skipped\n", passed, failed, skipped))
core.set_exit_code(failed > 0 and 1 or 0)
