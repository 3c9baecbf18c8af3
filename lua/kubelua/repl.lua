-- kubelua.repl: the interactive prompt.
--
-- Each line runs in the REPL's task, so CRI calls work at the prompt as
-- plain calls. A bare expression prints its value(s); an incomplete chunk
-- continues on the next line; Ctrl-C interrupts a running evaluation (or
-- drops the line being typed); Ctrl-D leaves. `rt` is a CRI client for
-- $CONTAINER_RUNTIME_ENDPOINT, connected on first use.
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

-- os.exit(code) typed at the prompt leaves the REPL as :quit does (history
-- saved, the loop and its handles closed) and the process exits with code;
-- a real os.exit would skip all of that. It unwinds as this error value.
local EXIT = {}

local function new_env()
  local client, client_err
  local env = {
    os = setmetatable({
      exit = function(code)
        error(setmetatable({ code = code == false and 1 or tonumber(code) or 0 }, EXIT), 0)
      end,
    }, { __index = os }),
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

-- A value shown at the prompt; a value whose metamethods throw is shown as
-- its type and the error, never ending the REPL.
local function format(v)
  local ok, s = pcall(pretty.format, v)
  return ok and s or string.format("<%s: cannot be shown: %s>", type(v), tostring(s))
end

local function show(n, ...)
  for i = 1, n do
    io.stdout:write(format((select(i, ...))), "\n")
  end
end

-- The text of an error value: a string as it is, anything else (error{...},
-- error(42)) in full through kubelua.pretty, so a table error reads as its
-- contents rather than "table: 0x...", and a throwing __tostring cannot
-- turn it into "error in error handling".
function M.error_text(e)
  if type(e) == "string" then
    return e
  end
  return "(error object) " .. format(e)
end

-- Compile `src`: an expression first (to print it), then a statement.
-- Returns fn, or nil + "incomplete", or nil + error message.
-- (Shared with kubelua.agent.attach, which runs chunks inside the agent.)
function M.compile(src, env, chunkname)
  chunkname = chunkname or "=stdin"
  local f = loadstring("return " .. src, chunkname)
  if not f then
    local err
    f, err = loadstring(src, chunkname)
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

-- The terminal loop both `kubelua repl` and `kubelua attach` use: history
-- (~/.kubelua_history or $KUBELUA_HISTORY), Tab completion through
-- complete(word) -> candidates, and on_line(line) for every line read
-- until Ctrl-D or on_line returns false. prompt() gives each prompt.
-- kubelua.term is loaded here only: requiring kubelua.repl for compile()
-- or complete() leaves the process's Ctrl-C handling alone.
function M.read_loop(opts)
  local term = require "kubelua.term"
  local hist = history_path()
  if hist then
    term.read_history(hist)
  end
  term.set_completer(opts.complete)
  while true do
    local line = term.readline(opts.prompt())
    if line == nil then
      io.stdout:write("\n")
      break
    end
    if opts.on_line(line, term) == false then
      break
    end
  end
  if hist then
    term.write_history(hist)
  end
end

-- run(opts): the interactive prompt until Ctrl-D (`kubelua repl`).
function M.run(opts)
  opts = opts or {}
  local env = new_env()
  io.stdout:write("kubelua ", require("kubelua.core").version, " — :help for help, Ctrl-D to leave\n")
  local buf = nil
  M.read_loop{
    complete = function(word)
      return M.complete(env, word)
    end,
    prompt = function()
      return buf and "  ...> " or "kubelua> "
    end,
    on_line = function(line, term)
      if buf == nil and line:match("^%s*:") then
        local c = line:match("^%s*:(%a+)")
        if c == "quit" or c == "q" then
          return false
        elseif c == "help" or c == "h" then
          io.stdout:write(HELP, "\n")
        else
          io.stdout:write("unknown command; :help lists them\n")
        end
        term.add_history(line)
      elseif buf ~= nil or line:match("%S") then
        buf = buf and (buf .. "\n" .. line) or line
        local f, err = M.compile(buf, env)
        if f or err ~= "incomplete" then
          term.add_history(buf)
          buf = nil
        end
        if f then
          term.interruptible(true)
          local res = { xpcall(f, function(e)
            if getmetatable(e) == EXIT then
              return e
            end
            local text = M.error_text(e)
            if text:match("interrupted$") then
              return "interrupted"
            end
            return debug.traceback(text, 2)
          end) }
          term.interruptible(false)
          if res[1] then
            show(table.maxn(res) - 1, unpack(res, 2, table.maxn(res)))
          elseif getmetatable(res[2]) == EXIT then
            require("kubelua.core").set_exit_code(res[2].code)
            return false
          else
            io.stdout:write("error: ", tostring(res[2]), "\n")
          end
        elseif err ~= "incomplete" then
          io.stdout:write("error: ", err, "\n")
        end
      end
    end,
  }
end

return M
