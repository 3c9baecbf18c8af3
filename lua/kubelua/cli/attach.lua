-- kubelua attach [--socket PATH] [--state-dir DIR] [--budget SECONDS] [-e CODE]
-- A REPL inside the running agent, over its control socket (protocol:
-- kubelua.agent.attach). On a terminal: line editing, history and Tab
-- completion as in `kubelua repl` (completion asks the agent). With -e CODE
-- or a non-terminal stdin: the code (lines) run in one session, results and
-- errors are printed, and the exit status is 1 if any evaluation failed
-- (2 for usage errors, 1 when the agent cannot be reached).
--
-- The client waits for each answer with a blocking read (nothing else runs
-- in this process meanwhile); the agent bounds every evaluation by its time
-- budget, so an answer always comes.
local core = require "kubelua.core"
local ffi = require "ffi"

local M = {}

local USAGE = [[
usage: kubelua attach [--socket PATH] [--state-dir DIR] [--budget SECONDS] [-e CODE]

Open a Lua prompt inside the running `kubelua agent` (its live objects:
agent, pods(), gc, plan(), prober, rt, ...). Only root and the agent's own
user may connect.
  --socket PATH      the agent's control socket (default STATE_DIR/control.sock)
  --state-dir DIR    the agent's stateDir (default /var/lib/kubelua)
  --budget SECONDS   CPU time each evaluation may use in the agent (default 2)
  -e CODE            run CODE (one chunk), print its results and leave (exit 1 on an error)
Without -e, a non-terminal stdin is run line by line, as if typed.
]]

ffi.cdef [[
struct kl_attach_sockaddr_un { unsigned short sun_family; char sun_path[108]; };
int socket(int domain, int type, int protocol);
int connect(int fd, const void *addr, unsigned int len);
long read(int fd, void *buf, unsigned long n);
long write(int fd, const void *buf, unsigned long n);
int close(int fd);
char *strerror(int errnum);
]]

local AF_UNIX, SOCK_STREAM, SOCK_CLOEXEC = 1, 1, 524288
local EINTR = 4

local function errmsg()
  return ffi.string(ffi.C.strerror(ffi.errno())), ffi.errno()
end

-- connect(path) -> conn | nil, err
local function connect(path)
  if #path >= 108 then
    return nil, "socket path too long: " .. path
  end
  local fd = ffi.C.socket(AF_UNIX, SOCK_STREAM + SOCK_CLOEXEC, 0)
  if fd < 0 then
    return nil, "socket: " .. errmsg()
  end
  local sa = ffi.new("struct kl_attach_sockaddr_un")
  sa.sun_family = AF_UNIX
  ffi.copy(sa.sun_path, path)
  if ffi.C.connect(fd, sa, ffi.sizeof(sa)) ~= 0 then
    local msg, no = errmsg()
    ffi.C.close(fd)
    if no == 2 or no == 111 then -- ENOENT, ECONNREFUSED
      return nil, "is the agent running? no control socket at " .. path .. " (" .. msg .. ")"
    elseif no == 13 then -- EACCES
      return nil, "permission denied connecting to " .. path
        .. " (only root and the agent's user may attach)"
    end
    return nil, "connect " .. path .. ": " .. msg
  end
  local conn = { fd = fd, buf = "" }
  local chunk = ffi.new("char[4096]")
  function conn:read_line()
    while true do
      local i = self.buf:find("\n", 1, true)
      if i then
        local line = self.buf:sub(1, i - 1)
        self.buf = self.buf:sub(i + 1)
        return line
      end
      local n = ffi.C.read(self.fd, chunk, 4096)
      if n == 0 then
        return nil, "the agent closed the connection"
      elseif n < 0 then
        local msg, no = errmsg()
        if no ~= EINTR then
          return nil, "read: " .. msg
        end
      else
        self.buf = self.buf .. ffi.string(chunk, n)
      end
    end
  end
  function conn:write(s)
    local off = 0
    while off < #s do
      local n = ffi.C.write(self.fd, ffi.cast("const char *", s) + off, #s - off)
      if n < 0 then
        local msg, no = errmsg()
        if no ~= EINTR then
          return nil, "write: " .. msg
        end
      else
        off = off + n
      end
    end
    return true
  end
  function conn:close()
    if self.fd >= 0 then
      ffi.C.close(self.fd)
      self.fd = -1
    end
  end
  return conn
end

-- Read one answer: output and error lines go to out(kind, text); returns the
-- prompt, the completion candidates, whether an error was reported | nil, err.
local function answer(conn, out)
  local cands, failed = {}, false
  while true do
    local line, err = conn:read_line()
    if not line then
      return nil, err
    end
    local kind, text = line:sub(1, 1), line:sub(2)
    if kind == "p" then
      return text, cands, failed
    elseif kind == "o" or kind == "e" then
      failed = failed or kind == "e"
      out(kind, text)
    elseif kind == "c" then
      cands[#cands + 1] = text
    elseif line:match("^ERR ") then
      return nil, line:sub(5)
    else
      return nil, "unexpected answer from the agent: " .. line
    end
  end
end

local function print_out(kind, text)
  local f = kind == "e" and io.stderr or io.stdout
  f:write(text, "\n")
  f:flush()
end

local function fail(msg, code)
  io.stderr:write("kubelua attach: ", msg, "\n")
  core.set_exit_code(code or 1)
end

-- Run lines (from stdin: each as typed; from -e: one chunk) in one session;
-- exit 1 on an evaluation error.
local function run_script(conn, next_line, budget, one_chunk)
  local prompt, err = answer(conn, function() end) -- the greeting
  if not prompt then
    return fail(err)
  end
  local failed, cont = false, false
  local lines = {}
  if budget then
    lines[1] = "l:budget " .. budget
  end
  for line in next_line do
    lines[#lines + 1] = (one_chunk and "a" or "l") .. line
  end
  if one_chunk then
    lines[#lines] = "l" .. lines[#lines]:sub(2)
  end
  for _, msg in ipairs(lines) do
    local ok, werr = conn:write(msg .. "\n")
    if not ok then
      return fail(werr)
    end
    local p, _, f = answer(conn, function(kind, text)
      if not (budget and msg:match("^l:budget") and kind == "o") then
        print_out(kind, text)
      end
    end)
    if not p then
      return fail(_)
    end
    failed = failed or f
    cont = p:match("^%s*%.%.%.") ~= nil
  end
  if cont then
    io.stderr:write("error: the input ends inside an unfinished chunk\n")
    failed = true
  end
  conn:close()
  if failed then
    core.set_exit_code(1)
  end
end

local function interactive(conn, budget)
  local prompt, err = answer(conn, print_out)
  if prompt and budget then
    conn:write("l:budget " .. budget .. "\n")
    prompt, err = answer(conn, print_out)
  end
  if not prompt then
    return fail(err)
  end
  local lost
  require("kubelua.repl").read_loop{
    prompt = function()
      return prompt
    end,
    complete = function(word)
      if lost or not conn:write("c" .. word .. "\n") then
        return {}
      end
      local p, cands = answer(conn, function() end)
      if not p then
        lost = cands
        return {}
      end
      return cands
    end,
    on_line = function(line, term)
      if line:match("^%s*:q") and not prompt:match("^%s*%.%.%.") then
        return false
      end
      if line:match("%S") then
        term.add_history(line)
      end
      local ok, werr = conn:write("l" .. line .. "\n")
      local p, e = nil, werr
      if ok then
        p, e = answer(conn, print_out)
      end
      if not p then
        lost = e
        return false
      end
      prompt = p
    end,
  }
  conn:close()
  if lost then
    fail(lost)
  end
end

function M.main(args)
  local socket, state_dir, code, budget
  local i = 1
  while args[i] do
    local a = args[i]
    local v = args[i + 1]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    if name then
      a, v = name, inline
    end
    if a == "-h" or a == "--help" then
      io.stdout:write(USAGE)
      return
    elseif (a == "--socket" or a == "--state-dir" or a == "-e" or a == "--budget") and v then
      if a == "--socket" then
        socket = v
      elseif a == "--state-dir" then
        state_dir = v
      elseif a == "--budget" then
        if not tonumber(v) or tonumber(v) <= 0 then
          io.stderr:write("kubelua attach: --budget expects seconds above 0, not ", v, "\n")
          return core.set_exit_code(2)
        end
        budget = v
      else
        code = v
      end
      i = i + (name and 1 or 2)
    else
      io.stderr:write("kubelua attach: unknown flag or missing value: ", a, "\n", USAGE)
      return core.set_exit_code(2)
    end
  end
  local path = socket or ((state_dir or "/var/lib/kubelua") .. "/control.sock")
  local conn, err = connect(path)
  if not conn then
    return fail(err)
  end
  if code then
    return run_script(conn, (code:gsub("\n$", "") .. "\n"):gmatch("([^\n]*)\n"), budget, true)
  end
  if not require("kubelua.term").isatty(0) then
    return run_script(conn, io.lines(), budget)
  end
  return interactive(conn, budget)
end

return M
