-- kubelua.repl: the interactive prompt.
--
-- Each line runs in the REPL's task, so CRI calls work at the prompt as
-- plain calls. A bare expression prints its value(s); an incomplete chunk
-- continues on the next line; Ctrl-C interrupts a running evaluation (or
-- drops the line being typed); Ctrl-D leaves. `rt` is a CRI client for
-- $CONTAINER_RUNTIME_ENDPOINT, connected on first use.
local term = require "kubelua.term"
local pretty = require "kubelua.pretty"
local cri = require "kubelua.cri"

local M = {}

local HELP = [[
:help          this text
:quit          leave (or Ctrl-D)
Globals: rt (CRI client), cri, task, pretty, pb, grpc.
Try: rt:version()   rt:list_containers{}   rt:list_images{}
Tab completes globals, fields and methods (rt:list_<TAB>).]]

local KEYWORDS = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function",
  "if", "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while" }

local function history_path()
  local p = os.getenv("KUBELUA_HISTORY")
  if p and p ~= "" then
    return p
  end
  local home = os.getenv("HOME")
  return home and (home .. "/.kubelua_history") or nil
end

-- Candidates for completing `word` (e.g. "rt:list_", "string.fo", "pri").
function M.complete(env, word)
  local base, sep, prefix = word:match("^(.-)([.:])([%w_]*)$")
  local scope, out = env, {}
  if base then
    for part in base:gmatch("[^.:]+") do
      local ok, v = pcall(function()
        return scope[part]
      end)
      scope = ok and v or nil
      if type(scope) ~= "table" and type(scope) ~= "userdata" then
        return out
      end
    end
  else
    prefix, base, sep = word, "", ""
  end
  local seen = {}
  local function add_from(t)
    if type(t) ~= "table" then
      return
    end
    for k, v in pairs(t) do
      if type(k) == "string" and not seen[k] and k:sub(1, #prefix) == prefix
        and k:match("^[%a_][%w_]*$") and (sep ~= ":" or type(v) == "function") then
        seen[k] = true
        out[#out + 1] = base .. sep .. k
      end
    end
  end
  if type(scope) == "table" then
    add_from(scope)
  end
  local mt = getmetatable(scope)
  while mt and type(mt.__index) == "table" do
    add_from(mt.__index)
    mt = getmetatable(mt.__index)
  end
  if base == "" then
    for _, k in ipairs(KEYWORDS) do
      if k:sub(1, #prefix) == prefix then
        out[#out + 1] = k
      end
    end
  end
  table.sort(out)
  return out
end

local function new_env()
  local client, client_err
  local env = {
    cri = cri,
    task = require "kubelua.task",
    pretty = pretty,
    pb = require "kubelua.pb",
    grpc = require "kubelua.grpc",
  }
  return setmetatable(env, {
    __index = function(_, k)
      if k == "rt" then
        if not client and not client_err then
          client, client_err = cri.connect()
        end
        return client
      end
      return _G[k]
    end,
  })
end

local function show(n, ...)
  for i = 1, n do
    io.stdout:write(pretty.format((select(i, ...))), "\n")
  end
end

-- Compile `src`: an expression first (to print it), then a statement.
-- Returns fn, or nil + "incomplete", or nil + error message.
local function compile(src, env)
  local f = loadstring("return " .. src, "=stdin")
  if not f then
    local err
    f, err = loadstring(src, "=stdin")
    if not f then
      if err:match("<eof>") then
        return nil, "incomplete"
      end
      return nil, err
    end
  end
  -- Compiled traces never see the interrupt hook: run typed code
  -- interpreted (functions it defines too), so Ctrl-C can always stop it.
  if jit then
    jit.off(f, true)
  end
  return setfenv(f, env)
end

function M.run(opts)
  opts = opts or {}
  local env = new_env()
  local hist = history_path()
  if hist then
    term.read_history(hist)
  end
  term.set_completer(function(word)
    return M.complete(env, word)
  end)
  io.stdout:write("kubelua ", require("kubelua.core").version, " — :help for help, Ctrl-D to leave\n")
  local buf = nil
  while true do
    local line = term.readline(buf and "  ...> " or "kubelua> ")
    if line == nil then
      io.stdout:write("\n")
      break
    end
    if buf == nil and line:match("^%s*:") then
      local c = line:match("^%s*:(%a+)")
      if c == "quit" or c == "q" then
        break
      elseif c == "help" or c == "h" then
        io.stdout:write(HELP, "\n")
      else
        io.stdout:write("unknown command; :help lists them\n")
      end
      term.add_history(line)
    elseif buf ~= nil or line:match("%S") then
      buf = buf and (buf .. "\n" .. line) or line
      local f, err = compile(buf, env)
      if f or err ~= "incomplete" then
        term.add_history(buf)
        buf = nil
      end
      if f then
        term.interruptible(true)
        local res = { xpcall(f, function(e)
          if tostring(e):match("interrupted$") then
            return "interrupted"
          end
          return debug.traceback(tostring(e), 2)
        end) }
        term.interruptible(false)
        if res[1] then
          show(table.maxn(res) - 1, unpack(res, 2, table.maxn(res)))
        else
          io.stdout:write("error: ", tostring(res[2]), "\n")
        end
      elseif err ~= "incomplete" then
        io.stdout:write("error: ", err, "\n")
      end
    end
  end
  if hist then
    term.write_history(hist)
  end
end

return M
