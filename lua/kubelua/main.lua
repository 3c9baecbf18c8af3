-- kubelua.main: the command line. src/cli/main.c calls main(argv) in a task.
local core = require "kubelua.core"

-- kubelua.pretty is loaded on first use: most commands never print a value.
local function pretty()
  return require "kubelua.pretty"
end

local M = {}

local USAGE = [[
usage: kubelua [COMMAND] [ARGS]

  run SCRIPT [ARGS...]   run a Lua script in a task (I/O parks it, never the loop)
  -e CODE                run CODE; values it returns are printed
  repl                   interactive prompt (the default on a terminal)
  agent [--config FILE]  the node agent (static pods, /healthz, /metrics, /pods)
  attach [-e CODE]       a prompt inside the running agent (its control socket)
  version                the runtime's name and versions (--client: kubelua's)
  --version              kubelua's version
  help                   this text

Runtime commands, with crictl's names and flags (`kubelua NAME --help`):
  ps pods images inspect inspectp inspecti info version logs exec stats
  stop rm stopp rmp rmi imagefsinfo events probe

Other commands are Lua modules: `kubelua NAME ARGS` runs kubelua.cli.NAME.
Environment: CONTAINER_RUNTIME_ENDPOINT, KUBELUA_LUA_PATH.
]]

local function traceback(e)
  if type(e) ~= "string" then
    e = pretty().format(e)
  end
  return debug.traceback(e, 2)
end

local function fail(msg, code)
  io.stderr:write("kubelua: ", msg, "\n")
  core.set_exit_code(code or 1)
end

local function print_results(n, ...)
  for i = 1, n do
    local v = select(i, ...)
    io.stdout:write(pretty().format(v), "\n")
  end
end

-- Run f(...) reporting an error with its traceback; sets the exit code.
local function protected(f, ...)
  local res = { xpcall(f, traceback, ...) }
  if not res[1] then
    fail(res[2], 1)
    return false
  end
  return true, unpack(res, 2, table.maxn(res))
end

-- run_file(path, args): `kubelua run`: run a script with args as its varargs and `arg`.
function M.run_file(path, args)
  local f, err = loadfile(path)
  if not f then
    return fail(err, 1)
  end
  _G.arg = { [0] = path, unpack(args) }
  protected(f, unpack(args))
end

-- eval(code): `kubelua -e`: run a chunk, print what it returns.
function M.eval(code)
  local f, err
  -- An expression is tried with "return " first; code that starts with
  -- `return` skips that (a failed parse costs a Lua error and an unwind).
  if not code:find("^%s*return%f[^%w_]") then
    f = loadstring("return " .. code, "=(command line)")
  end
  if not f then
    f, err = loadstring(code, "=(command line)")
  end
  if not f then
    return fail(err, 1)
  end
  local res = { protected(f) }
  if res[1] then
    print_results(table.maxn(res) - 1, unpack(res, 2, table.maxn(res)))
  end
end

-- main(argv): the command line (src/cli/main.c calls it in a task).
function M.main(argv)
  local cmd = argv[1]
  local rest = { unpack(argv, 2, table.maxn(argv)) }
  if cmd == nil then
    if require("kubelua.term").isatty(0) then
      return require("kubelua.repl").run()
    end
    return M.run_file(nil, {}) -- a script on stdin
  elseif cmd == "run" then
    if not rest[1] then
      return fail("run: missing SCRIPT\n" .. USAGE, 2)
    end
    return M.run_file(rest[1], { unpack(rest, 2, table.maxn(rest)) })
  elseif cmd == "-e" then
    if not rest[1] then
      return fail("-e: missing CODE", 2)
    end
    return M.eval(rest[1])
  elseif cmd == "repl" then
    return require("kubelua.repl").run()
  elseif cmd == "--version" then
    io.stdout:write("kubelua ", core.version, " (", jit and jit.version or _VERSION, ")\n")
    return
  elseif cmd == "help" or cmd == "-h" or cmd == "--help" then
    io.stdout:write(USAGE)
    return
  end
  if cmd:match("^[%w_-]+$") then
    local ok, mod = pcall(require, "kubelua.cli." .. cmd:gsub("-", "_"))
    if ok then
      return protected(mod.main, rest)
    elseif not tostring(mod):match("module 'kubelua.cli.[%w_]+' not found") then
      return fail(mod, 1)
    end
  end
  fail("unknown command \"" .. cmd .. "\"\n" .. USAGE, 2)
end

return M
