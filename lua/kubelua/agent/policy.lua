-- kubelua.agent.policy: the agent's policy scripts (config key `policies`).
--
--   local policy = require "kubelua.agent.policy"
--   local loaded, problems = policy.load{ gc = "/etc/kubelua/gc.lua", prober = "..." }
--   policy.apply(loaded, { gc = agent.gc, prober = agent.prober })
--
-- The contract. A policy file is a Lua chunk that returns a table:
--
--   gc:      { containers = fn, sandboxes = fn, logs = fn,   -- kubelua.gc.hook hooks
--              options = { min_age =, max_per_pod_container =, max_containers =,
--                          exited_grace =, keep_failed =, keep_labels =,
--                          kill_grace =, concurrency = } }   -- kubelua.gc options
--   prober:  { wrap_probe = fn, next_delay = fn }            -- kubelua.prober set_policy
--
-- Every key is optional; an unknown key or a value of the wrong type is an
-- error. Options not given keep the GC's own values (kubelet's defaults).
--
-- Who may write a policy decides what the agent (often root) runs, so a
-- script is loaded only from the configured path, and only when the file -
-- after following links - is a regular file owned by root or the agent's
-- effective user and not writable by group or others, and the same holds for
-- the folder holding it (and for the folder holding the link, when the
-- configured path is a link). Precompiled bytecode is refused.
--
-- A chunk runs in an environment of its own: globals it sets stay there, and
-- reading a global that exists neither there nor in the agent's is an error
-- (a typo fails loudly, at load or when the hook runs). Loading the chunk
-- has a time budget (LOAD_BUDGET seconds of its own code).
--
-- Problems are strings naming the key and the file, with the line of a
-- syntax or run-time error: "policies.gc (/etc/kubelua/gc.lua): ...".
local sys = require "kubelua.sys"
local bit = require "bit"

local M = {}

M.LOAD_BUDGET = 2 -- seconds

-- Hook names a gc / prober policy may define (the contract above).
M.GC_HOOKS = { containers = true, sandboxes = true, logs = true }
-- option -> { type, minimum }
M.GC_OPTIONS = {
  min_age = { "number", 0 },
  max_per_pod_container = { "number" },
  max_containers = { "number" },
  exited_grace = { "number", 0 },
  keep_failed = { "number", 0 },
  keep_labels = { "table" },
  kill_grace = { "number", 0 },
  concurrency = { "number", 1 },
}
-- The hooks a prober policy may return (kubelua.prober set_policy).
M.PROBER_HOOKS = { wrap_probe = true, next_delay = true }

local function dirname(p)
  local d = p:match("^(.*)/[^/]*$")
  if d == nil then
    return "."
  end
  return d == "" and "/" or d
end

-- why `st` (of `what`) may not hold a policy, or nil
local function unsafe(st, euid)
  if st.uid ~= 0 and st.uid ~= euid then
    return string.format("owned by uid %d, not by root or the agent's user (uid %d)", st.uid, euid)
  end
  if bit.band(st.mode, 18) ~= 0 then -- 022
    return string.format("writable by %s (mode %04o)",
      bit.band(st.mode, 16) ~= 0 and bit.band(st.mode, 2) ~= 0 and "group and others"
        or bit.band(st.mode, 16) ~= 0 and "group" or "others", st.mode)
  end
end

-- check_file(path) -> true | nil, why: the ownership and mode rules above.
function M.check_file(path, euid)
  euid = euid or sys.geteuid()
  local real, err = sys.realpath(path)
  if not real then
    return nil, err
  end
  local st, serr = sys.stat(real)
  if not st then
    return nil, serr
  end
  if st.type ~= "file" then
    return nil, real .. " is not a regular file"
  end
  local why = unsafe(st, euid)
  if why then
    return nil, real .. " is " .. why
  end
  local dirs = { dirname(real) }
  local lst = sys.lstat(path)
  if lst and lst.type == "link" then
    dirs[2] = dirname(path)
  end
  for _, d in ipairs(dirs) do
    local dst, derr = sys.stat(d)
    if not dst then
      return nil, derr
    end
    why = unsafe(dst, euid)
    if why then
      return nil, "its folder " .. d .. " is " .. why
    end
  end
  return true
end

-- A fresh environment: own globals, the agent's as read-only fallbacks,
-- undefined names an error.
local function environment()
  return setmetatable({}, {
    __index = function(_, k)
      local v = _G[k]
      if v == nil then
        error("undefined global '" .. tostring(k) .. "'", 2)
      end
      return v
    end,
  })
end

-- Run chunk() with a time budget that a pcall inside it cannot swallow
-- for long: the hook fires again on the next count.
local function run_budgeted(chunk)
  local jit = rawget(_G, "jit")
  if jit then
    jit.off(chunk, true) -- count hooks only run in the interpreter
  end
  local clock = require("kubelua.core").monotime
  local deadline = clock() + M.LOAD_BUDGET
  local hfn, hmask, hcount = debug.gethook()
  local me = coroutine.running()
  debug.sethook(function()
    -- (LuaJIT's hook is global: only our own code may be cut short)
    if coroutine.running() == me and clock() > deadline then
      error("took longer than " .. M.LOAD_BUDGET .. " s to load", 2)
    end
  end, "", 10000)
  local ok, res = xpcall(chunk, function(e)
    return debug.traceback(tostring(e), 2)
  end)
  debug.sethook(hfn, hmask, hcount)
  if jit then
    jit.on(chunk, true)
  end
  return ok, res
end

-- shape checks: (kind, returned table) -> problems (list of strings)
local function check_gc(t)
  local problems = {}
  for k, v in pairs(t) do
    if M.GC_HOOKS[k] then
      if type(v) ~= "function" then
        problems[#problems + 1] = string.format("%s must be a function, got %s", k, type(v))
      end
    elseif k == "options" then
      if type(v) ~= "table" then
        problems[#problems + 1] = "options must be a table, got " .. type(v)
      else
        for ok, ov in pairs(v) do
          local spec = M.GC_OPTIONS[ok]
          if not spec then
            problems[#problems + 1] = "options." .. tostring(ok) .. ": unknown option"
          elseif type(ov) ~= spec[1] then
            problems[#problems + 1] = string.format("options.%s must be a %s, got %s", ok, spec[1], type(ov))
          elseif spec[2] and ov < spec[2] then
            problems[#problems + 1] = string.format("options.%s must be at least %s, got %s", ok, spec[2], ov)
          end
        end
      end
    else
      problems[#problems + 1] = string.format("unknown key '%s' (containers, sandboxes, logs, options)", tostring(k))
    end
  end
  return problems
end

local function check_prober(t)
  local problems = {}
  for k, v in pairs(t) do
    if not M.PROBER_HOOKS[k] then
      problems[#problems + 1] = string.format("unknown key '%s' (wrap_probe, next_delay)", tostring(k))
    elseif type(v) ~= "function" then
      problems[#problems + 1] = string.format("%s must be a function, got %s", k, type(v))
    end
  end
  return problems
end

local CHECK = { gc = check_gc, prober = check_prober }

-- load_file(kind, path, opts) -> policy | nil, problems
-- policy = { kind =, path =, hooks = { name = fn }, options = { ... } }
-- opts.trust = true skips the owner and mode check (`kubelua gc --policy`:
-- the user runs their own file once, as themselves).
function M.load_file(kind, path, opts)
  local where = string.format("policies.%s (%s)", kind, path)
  local function fail(...)
    local out = {}
    for i, p in ipairs({ ... }) do
      out[i] = where .. ": " .. p
    end
    return nil, out
  end
  if not CHECK[kind] then
    return fail("unknown policy kind (gc, prober)")
  end
  if type(path) ~= "string" or path == "" then
    return fail("must be a file path")
  end
  local ok, why = true, nil
  if not (opts and opts.trust) then
    ok, why = M.check_file(path)
  end
  if not ok then
    return fail("refused: " .. why .. "; policy scripts must be owned by root or the agent's user and not writable by group or others")
  end
  local f, oerr = io.open(path, "rb")
  if not f then
    return fail(oerr)
  end
  local text = f:read("*a")
  f:close()
  if text:byte(1) == 27 then
    return fail("precompiled bytecode is not accepted; give the Lua source")
  end
  local chunk, lerr = loadstring(text, "@" .. path)
  if not chunk then
    return fail("syntax error: " .. lerr)
  end
  setfenv(chunk, environment())
  local rok, res = run_budgeted(chunk)
  if not rok then
    return fail("error while loading: " .. tostring(res))
  end
  if type(res) ~= "table" then
    return fail(string.format("returned %s; a policy file must return a table (%s)", type(res),
      kind == "gc" and "containers, sandboxes, logs, options" or "wrap_probe, next_delay"))
  end
  local problems = CHECK[kind](res)
  if #problems > 0 then
    table.sort(problems)
    return fail(unpack(problems))
  end
  local p = { kind = kind, path = path, hooks = {}, options = {} }
  for k, v in pairs(res) do
    if k == "options" then
      for ok2, ov in pairs(v) do
        p.options[ok2] = ov
      end
    else
      p.hooks[k] = v
    end
  end
  return p
end

-- load(policies) -> { gc = policy?, prober = policy? } | nil, problems:
-- every configured script, every problem of every one.
function M.load(policies)
  local loaded, problems = {}, {}
  local kinds = {}
  for kind in pairs(policies or {}) do
    kinds[#kinds + 1] = kind
  end
  table.sort(kinds)
  for _, kind in ipairs(kinds) do
    local p, errs = M.load_file(kind, policies[kind])
    if p then
      loaded[kind] = p
    else
      for _, e in ipairs(errs) do
        problems[#problems + 1] = e
      end
    end
  end
  if #problems > 0 then
    return nil, problems
  end
  return loaded
end

-- The GC's own option values, before any policy changed them.
local base = setmetatable({}, { __mode = "k" })

-- apply(loaded, { gc = kubelua.gc object, prober = kubelua.prober manager }):
-- each target gets its policy, or its own defaults back when the policy is
-- gone. Nothing here fails: load() checked everything.
function M.apply(loaded, targets)
  local g = targets.gc
  if g then
    local b = base[g]
    if not b then
      b = {}
      for k in pairs(M.GC_OPTIONS) do
        b[k] = { g[k] }
      end
      base[g] = b
    end
    for k, v in pairs(b) do
      g[k] = v[1]
    end
    local p = loaded.gc
    for k, v in pairs(p and p.options or {}) do
      g[k] = v
    end
    g.hooks = p and p.hooks or {}
  end
  if targets.prober then
    targets.prober:set_policy(loaded.prober and loaded.prober.hooks or {})
  end
end

-- describe(loaded) -> "gc=/path (containers, options), prober=/path (next_delay)"
function M.describe(loaded)
  local parts = {}
  for _, kind in ipairs({ "gc", "prober" }) do
    local p = loaded[kind]
    if p then
      local names = {}
      for k in pairs(p.hooks) do
        names[#names + 1] = k
      end
      if next(p.options) then
        names[#names + 1] = "options"
      end
      table.sort(names)
      parts[#parts + 1] = string.format("%s=%s (%s)", kind, p.path, table.concat(names, ", "))
    end
  end
  return #parts > 0 and table.concat(parts, ", ") or "none"
end

return M
