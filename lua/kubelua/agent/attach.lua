-- kubelua.agent.attach: the agent's side of `kubelua attach`, a REPL inside
-- the running agent over its unix control socket (kubelua.server.control:
-- mode 0600, peers checked with SO_PEERCRED, only root and the agent's user).
--
--   local ctl = assert(require("kubelua.agent.attach").start(agent, { path = ..., budget = 2 }))
--   ctl:close()
--
-- Each connection is a session with an environment of its own: globals it
-- assigns stay in the session; reads fall back to the live objects below,
-- then to Lua's globals.
--   agent                     the agent object (agent.sync, agent.gc, agent.prober, ...)
--   rt, cri                   the agent's CRI client, the kubelua.cri module
--   sync cache prober gc pleg health pc   the agent's parts
--   pods()                    desired + actual pods with statuses (what /pods serves)
--   pod(name | uid)           one of them
--   desired()                 the merged desired pods from the sources
--   actual()                  the runtime's pods, read now (kubelua.cache grouping)
--   probes()                  every probe result the prober holds
--   plan()                    a GC dry run (agent.gc:plan())
--   pretty, json, task        helpers; print/io.write output goes to the session
--
-- Line protocol (UTF-8 text, one message a line, the first byte says what):
--   client -> agent   "l<text>"  one input line (a chunk may span lines; a
--                                line starting with ':' is a command)
--                     "c<word>"  complete word (e.g. "agent.gc:pl")
--                     "a<text>"  append a line to the chunk without running it
--                                (`attach -e` sends its code so, as one chunk)
--                     "x"        drop the unfinished chunk
--   agent -> client   "o<text>"  a line of output (print, results)
--                     "e<text>"  a line of an error
--                     "c<cand>"  one completion candidate
--                     "p<prompt>" end of the answer: the prompt to show next
--                                ("kubelua@NODE> " or the continuation "  ...> ")
-- Every request gets exactly one answer ending with a "p" line; the greeting
-- is a few "o" lines and the first "p". A refused peer gets one line
-- "ERR permission denied ..." from the C server instead.
--
-- Time budget: each evaluation may use `budget` seconds (default 2) of CPU
-- time running its Lua code; then it is interrupted with "evaluation
-- interrupted: over its time budget ...". Time parked on I/O (a CRI call,
-- task.sleep) does not count: the budget is charged from the process CPU
-- clock between count-hook ticks seen in the evaluation's coroutine (or a
-- coroutine it creates or resumes through the session's `coroutine` library;
-- one made through _G.coroutine is not covered), and a tick in any other
-- task restarts the measurement. The agent has one Lua thread: while an
-- evaluation computes, its other tasks wait, so the budget is also the
-- longest the agent can be held up by one evaluation. The hook is only installed while some
-- evaluation is in progress, and removed after the last one ends. Typed
-- code runs with the JIT off (jit.off(fn, true)) because count hooks do not
-- fire inside compiled traces; a long loop inside a JIT-compiled library
-- function the chunk calls cannot be interrupted until it returns. Once over
-- budget the hook fires on every instruction of the session's code, so a
-- pcall in the chunk cannot swallow the interruption. `:budget N` changes
-- the session's budget. Functions a session installs into the agent (a GC
-- hook, a prober policy) later run in the agent's own tasks, not under the
-- session's budget.
local core = require "kubelua.core"
local server = require "kubelua.server"
local pretty = require "kubelua.pretty"
local repl = require "kubelua.repl"

local M = {}

M.DEFAULT_BUDGET = 2 -- seconds of CPU an attached evaluation may use before it is interrupted
local COUNT = 10000 -- instructions between hook ticks
local MAX_OUTPUT = 1024 * 1024 -- bytes of output kept per evaluation

local HELP = [[
:help          this text
:budget [N]    show or set this session's CPU time budget per evaluation (seconds)
:quit          leave (or Ctrl-D)
Globals: agent, rt, cri, sync, cache, prober, gc, pleg, health, pc, pretty, json, task
  pods()          desired + actual pods (as /pods)    pod(name|uid)  one pod
  desired()       pods from the sources               actual()       the runtime's pods now
  probes()        probe results                       plan()         a GC dry run
Swap a policy live, e.g.  gc.hooks.containers = function(c, chosen) return {} end
                          prober:set_policy{ ... }]]

-- ------------------------------------------------------------ time budget

local SRC = debug.getinfo(1, "S").source
local owner = setmetatable({}, { __mode = "k" }) -- coroutine -> evaluation record
local active = {} -- evaluation records in progress
local nactive = 0
local last_ev, last_cpu = nil, 0
local hook

local function over_budget_message(ev)
  return string.format("evaluation interrupted: over its time budget of %g s CPU (:budget N to change)",
    ev.budget)
end

hook = function()
  local co = coroutine.running()
  local ev = co and owner[co]
  if not ev or not ev.running then
    last_ev = nil
    return
  end
  if ev.killed then
    -- Raise in the session's code, never in this module's own frames.
    if debug.getinfo(2, "S").source ~= SRC then
      error(ev.killed, 0)
    end
    return
  end
  local now = core.cputime()
  if last_ev == ev then
    ev.spent = ev.spent + (now - last_cpu)
  end
  last_ev, last_cpu = ev, now
  if ev.spent > ev.budget then
    ev.killed = over_budget_message(ev)
    debug.sethook(hook, "", 1)
    if debug.getinfo(2, "S").source ~= SRC then
      error(ev.killed, 0)
    end
  end
end

local function set_hook()
  if nactive == 0 then
    debug.sethook()
    return
  end
  for ev in pairs(active) do
    if ev.killed then
      return debug.sethook(hook, "", 1)
    end
  end
  debug.sethook(hook, "", COUNT)
end

-- run(fn, budget) -> { n =, true, results... } | { n = 2, false, err }; fn runs in
-- the calling task
local function run_budgeted(fn, budget)
  local co = coroutine.running()
  local ev = { budget = budget, spent = 0, running = true }
  owner[co] = ev
  active[ev] = true
  nactive = nactive + 1
  last_ev, last_cpu = ev, core.cputime()
  set_hook()
  local function pack(...)
    return { n = select("#", ...), ... }
  end
  local res = pack(xpcall(fn, function(e)
    if ev.killed then
      return ev.killed
    end
    -- the session's frames only, not the server's below the chunk
    return (debug.traceback(tostring(e), 2):gsub("\n%s*%[C%]: in function 'xpcall'.*$", ""))
  end))
  ev.running = false
  owner[co] = nil
  active[ev] = nil
  nactive = nactive - 1
  set_hook()
  if ev.killed then
    return { n = 2, false, ev.killed }
  end
  return res
end

-- The session's coroutine library: a coroutine created or resumed through it
-- is charged to the evaluation that resumes it.
local function session_coroutine()
  local co_lib = {}
  for k, v in pairs(coroutine) do
    co_lib[k] = v
  end
  function co_lib.create(f)
    local co = coroutine.create(f)
    owner[co] = owner[coroutine.running() or false]
    return co
  end
  -- A coroutine runs on behalf of whoever resumes it.
  function co_lib.resume(co, ...)
    if type(co) == "thread" then
      owner[co] = owner[coroutine.running() or false]
    end
    return coroutine.resume(co, ...)
  end
  function co_lib.wrap(f)
    local co = co_lib.create(f)
    return function(...)
      local r = { co_lib.resume(co, ...) }
      if not r[1] then
        error(r[2], 0)
      end
      return unpack(r, 2, table.maxn(r))
    end
  end
  return co_lib
end

-- ------------------------------------------------------------- the session

local function new_env(agent, out)
  local json = require "kubelua.json"
  local function emit(s)
    if out.size < MAX_OUTPUT then
      out[#out + 1] = s
      out.size = out.size + #s
      if out.size >= MAX_OUTPUT then
        out[#out + 1] = "\n(output truncated)\n"
      end
    end
  end
  local sio = setmetatable({
    write = function(...)
      for i = 1, select("#", ...) do
        emit(tostring((select(i, ...))))
      end
    end,
  }, { __index = io })
  local live = {
    agent = agent, rt = agent.rt, cri = require "kubelua.cri",
    sync = agent.sync, cache = agent.cache, prober = agent.prober, gc = agent.gc,
    pleg = agent.pleg, health = agent.health, pc = agent.pc,
    pretty = pretty, json = json, task = require "kubelua.task",
    coroutine = session_coroutine(), io = sio,
  }
  function live.print(...)
    local parts = {}
    for i = 1, select("#", ...) do
      parts[i] = tostring((select(i, ...)))
    end
    emit(table.concat(parts, "\t") .. "\n")
  end
  function live.pods()
    return agent.sync:pods()
  end
  function live.pod(key)
    for _, p in ipairs(agent.sync:pods()) do
      if p.uid == key or p.name == key then
        return p
      end
    end
    return nil
  end
  function live.desired()
    return agent.pc:all_pods()
  end
  function live.actual()
    local ok, err, code = agent.cache:refresh()
    if not ok then
      return nil, err, code
    end
    return agent.cache:get_pods{ all = true }
  end
  function live.probes()
    local list = {}
    for kind, m in pairs(agent.prober.results.map) do
      for cid, e in pairs(m) do
        list[#list + 1] = { kind = kind, container_id = cid, result = e.result, reason = e.reason }
      end
    end
    table.sort(list, function(a, b)
      return a.container_id .. a.kind < b.container_id .. b.kind
    end)
    return list
  end
  function live.plan(opts)
    return agent.gc:plan(opts)
  end
  return setmetatable({}, {
    __index = function(_, k)
      local v = live[k]
      if v == nil then
        v = _G[k]
      end
      return v
    end,
  })
end

local function send(conn, kind, text)
  local lines = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = kind .. line .. "\n"
  end
  return conn:write(table.concat(lines))
end

local function session(agent, conn, opts)
  local uid, pid = conn:peer()
  core.log("I", string.format("attach: session opened by uid %s pid %s", tostring(uid), tostring(pid)))
  local out = { size = 0 }
  local env = new_env(agent, out)
  local budget = opts.budget
  local node = agent.cfg and agent.cfg.nodeName or "agent"
  local PROMPT, CONT = "kubelua@" .. node .. "> ", "  ...> "
  local buf
  local function flush_output()
    if #out > 0 then
      local s = table.concat(out):gsub("\n$", "")
      for k in pairs(out) do
        out[k] = nil
      end
      out.size = 0
      send(conn, "o", s)
    end
  end
  send(conn, "o", string.format("kubelua %s attached to the agent on node %s — :help for help, "
    .. "Ctrl-D to leave", core.version, node))
  conn:write("p" .. PROMPT .. "\n")
  while true do
    local msg = conn:read_line()
    if not msg then
      break
    end
    local kind, text = msg:sub(1, 1), msg:sub(2)
    if kind == "c" then
      local cands = repl.complete(env, text)
      local lines = {}
      for _, c in ipairs(cands) do
        lines[#lines + 1] = "c" .. c .. "\n"
      end
      conn:write(table.concat(lines))
    elseif kind == "x" then
      buf = nil
    elseif kind == "a" then
      buf = buf and (buf .. "\n" .. text) or text
    elseif kind == "l" and buf == nil and text:match("^%s*:") then
      local cmd, arg = text:match("^%s*:(%a+)%s*(.-)%s*$")
      if cmd == "quit" or cmd == "q" then
        break
      elseif cmd == "help" or cmd == "h" then
        send(conn, "o", HELP)
      elseif cmd == "budget" then
        local n = tonumber(arg)
        if arg ~= "" and (not n or n <= 0) then
          send(conn, "e", ":budget: expects a number of seconds above 0")
        else
          budget = n or budget
          send(conn, "o", string.format("budget: %g s CPU per evaluation", budget))
        end
      else
        send(conn, "e", "unknown command; :help lists them")
      end
    elseif kind == "l" and (buf ~= nil or text:match("%S")) then
      buf = buf and (buf .. "\n" .. text) or text
      local f, err = repl.compile(buf, env, "=attach")
      if f or err ~= "incomplete" then
        buf = nil
      end
      if f then
        local res = run_budgeted(f, budget)
        flush_output()
        if res[1] then
          local shown = {}
          for i = 2, res.n do
            shown[#shown + 1] = pretty.format(res[i])
          end
          if #shown > 0 then
            send(conn, "o", table.concat(shown, "\n"))
          end
        else
          send(conn, "e", "error: " .. tostring(res[2]))
        end
      elseif err ~= "incomplete" then
        send(conn, "e", "error: " .. err)
      end
    elseif kind ~= "l" then
      send(conn, "e", "protocol: unknown message kind " .. string.format("%q", kind))
    end
    if not conn:write("p" .. (buf and CONT or PROMPT) .. "\n") then
      break
    end
  end
  core.log("I", string.format("attach: session of uid %s pid %s closed", tostring(uid), tostring(pid)))
end

-- socket_path(cfg) -> path | nil (disabled)
function M.socket_path(cfg)
  local p = cfg.controlSocket
  if p == "-" then
    return nil
  end
  if p == nil or p == "" then
    return (cfg.stateDir or "/var/lib/kubelua") .. "/control.sock"
  end
  return p
end

-- start(agent, opts) -> ctl | nil, err, code
--   opts.path    the socket (default from agent.cfg: controlSocket, stateDir)
--   opts.budget  seconds of CPU per evaluation (default 2)
function M.start(agent, opts)
  opts = opts or {}
  local path = opts.path or M.socket_path(agent.cfg or {})
  if not path then
    return nil
  end
  local dir = path:match("^(.*)/[^/]*$")
  if dir and dir ~= "" then
    local ok, err, code = require("kubelua.sys").mkdir_p(dir, 448) -- 0700 when created
    if not ok then
      return nil, err, code
    end
  end
  local sopts = { budget = opts.budget or M.DEFAULT_BUDGET }
  local ctl, err, code = server.control{ path = path, on_connection = function(conn)
    session(agent, conn, sopts)
  end }
  if not ctl then
    return nil, err, code
  end
  core.log("I", "attach: control socket " .. path)
  return ctl
end

return M
