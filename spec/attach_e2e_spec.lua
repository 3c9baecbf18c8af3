-- `kubelua attach` against a real agent process and the real containerd:
-- the control socket is 0600 and refuses other users (SO_PEERCRED), sessions
-- see the live agent and each other's effects but keep their own globals,
-- an endless loop is interrupted by the time budget while the agent goes on
-- syncing pods, pods seen through attach match /pods, a GC policy swapped
-- live takes effect, and the terminal client edits, completes and
-- continues multi-line chunks.
local t = require "spec.t"
local S = require "spec.support"
local task = require "kubelua.task"
local http = require "kubelua.http"
local json = require "kubelua.json"
local pretty = require "kubelua.pretty"

local A = S.agent_env("attach", "attach-e2e")
local KUBELUA, rt, dir, pods, state, NODE = A.bin, A.rt, A.dir, A.pods, A.state, A.node
local sock = state .. "/control.sock"
math.randomseed(os.time() + (tonumber(dir:match("([%w]+)$"), 36) or 0) % 100000)
local port = 20000 + math.random(0, 9999)
local write = S.write_file

local function q(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Run code through `kubelua attach -e`; returns output, exit-ok.
local function attach(code, prefix, flags)
  return S.sh((prefix or "") .. KUBELUA .. " attach --socket " .. sock .. " " .. (flags or "") .. " -e " .. q(code))
end

local function manifest(name, cmd, policy)
  return S.manifest(name, cmd, { restartPolicy = policy or "Always" })
end

local function containers(pod, state_name)
  local r = assert(rt:list_containers{ filter = {
    state = state_name and { state = state_name } or nil,
    label_selector = { ["io.kubernetes.pod.name"] = pod .. "-" .. NODE } } })
  return r.containers
end

local cfgfile = A.config(port, [[
relistPeriod: 200ms
containerGCPeriod: 1h
fileCheckFrequency: 2s
crashLoopBackOff: {initial: 1s, max: 2s}
]])

local pid
local function agent_log()
  return tostring(S.read_file(dir .. "/agent.log"))
end

t.describe("kubelua attach", function()
  t.it("the agent listens on <stateDir>/control.sock, mode 0600", function()
    write(pods .. "/web.yaml", manifest("web", "exec sleep 3600"))
    pid = S.spawn(KUBELUA .. " agent --config " .. cfgfile, dir .. "/agent.log")
    t.ok(S.wait_for(function() return S.exists(sock) end, 15), "no socket; agent log:\n" .. agent_log())
    t.eq(S.sh("stat -c %a " .. sock), "600")
    t.eq(S.sh("stat -c %F " .. sock), "socket")
    local out, ok = attach("agent.cfg.nodeName")
    t.ok(ok, out)
    t.eq(out, string.format("%q", NODE))
  end)

  t.it("refuses other users: by the file mode, and by SO_PEERCRED when the mode lets them in", function()
    S.sh("chmod 0711 '" .. dir .. "' '" .. state .. "'") -- traversable, so the socket itself decides
    local as_nobody = "setpriv --reuid=nobody --regid=nogroup --clear-groups "
    local out, ok = attach("1", as_nobody)
    t.ok(not ok, out)
    t.match(out, "kubelua attach: permission denied connecting to " .. sock:gsub("%p", "%%%0"))
    -- A socket made world-writable by mistake still refuses: the peer check.
    S.sh("chmod 0666 " .. sock)
    out, ok = attach("1", as_nobody)
    S.sh("chmod 0600 " .. sock)
    t.ok(not ok, out)
    t.match(out, "kubelua attach: permission denied: only root and the agent's user may connect")
    t.match(agent_log(), "refused peer uid 65534")
    -- root still gets in
    out, ok = attach("1 + 1")
    t.ok(ok, out)
    t.eq(out, "2")
  end)

  t.it("says clearly when no agent listens", function()
    local out, ok = S.sh(KUBELUA .. " attach --state-dir " .. dir .. "/nowhere -e 1")
    t.ok(not ok)
    t.match(out, "is the agent running%? no control socket at " .. (dir .. "/nowhere/control.sock"):gsub("%p", "%%%0"))
  end)

  t.it("pods seen through attach match /pods", function()
    t.ok(S.wait_for(function() return #containers("web", "CONTAINER_RUNNING") == 1 end, 30),
      "web not running; agent log:\n" .. agent_log())
    local want
    t.ok(S.wait_for(function()
      local r = http.get("http://127.0.0.1:" .. port .. "/pods")
      want = r and r.status == 200 and json.decode(r.body)
      return want and #want > 0 and want[1].status.phase == "Running"
    end, 15), "/pods: " .. pretty.format(want))
    local lines = {}
    for _, p in ipairs(want) do
      lines[#lines + 1] = table.concat({ p.uid, p.name, p.namespace, p.status.phase }, " ")
    end
    local out, ok = attach([[for _, p in ipairs(pods()) do print(p.uid, p.name, p.namespace, p.status.phase) end]])
    t.ok(ok, out)
    t.eq(out:gsub("\t", " "), table.concat(lines, "\n"))
    out, ok = attach("pod('web-" .. NODE .. "').containers.app.state")
    t.ok(ok, out)
    t.eq(out, '"CONTAINER_RUNNING"')
    -- the runtime's view and the desired pods are there too
    out = attach("local n = 0 for _, p in ipairs(desired()) do if p.metadata.name == 'web-" .. NODE
      .. "' then n = n + 1 end end return n, #rt:list_containers{}.containers > 0")
    t.eq(out, "1\ntrue")
  end)

  t.it("two sessions at once see the same live agent, each with its own globals", function()
    local a_out = dir .. "/a.out"
    local a = S.spawn(KUBELUA .. " attach --socket " .. sock .. " -e " .. q([[
mine = "A"
agent.attach_spec_a = "set by A"
task.sleep(2)
return agent.attach_spec_b, mine]]), a_out)
    t.ok(S.wait_for(function()
      return attach("agent.attach_spec_a") == '"set by A"'
    end, 10), "A's change is visible to B")
    local out, ok = attach("agent.attach_spec_b = 'set by B' return mine")
    t.ok(ok, out)
    t.eq(out, "nil", "B does not see A's globals")
    t.ok(S.wait_for(function() return (S.read_file(a_out) or ""):find("set by B", 1, true) end, 10),
      "A sees B's change: " .. tostring(S.read_file(a_out)))
    t.eq(S.read_file(a_out), '"set by B"\n"A"\n')
    S.kill(a)
  end)

  t.it("an endless loop is interrupted by the budget; the agent keeps syncing pods", function()
    local out_file = dir .. "/loop.out"
    local t0 = task.monotime()
    local loop = S.spawn(KUBELUA .. " attach --socket " .. sock .. " --budget 1.5 -e 'while true do end'",
      out_file)
    task.sleep(0.3)
    write(pods .. "/late.yaml", manifest("late", "exec sleep 3600")) -- dropped while the loop spins
    t.ok(S.wait_for(function() return (S.read_file(out_file) or ""):find("over its time budget") end, 20),
      "not interrupted: " .. tostring(S.read_file(out_file)))
    local took = task.monotime() - t0
    t.ok(took >= 1.4 and took < 15, "interrupted after " .. took .. " s")
    t.match(S.read_file(out_file), "error: evaluation interrupted: over its time budget of 1.5 s CPU")
    S.kill(loop)
    t.ok(S.wait_for(function() return #containers("late", "CONTAINER_RUNNING") == 1 end, 30),
      "the pod dropped in during the loop runs; agent log:\n" .. agent_log())
    local r = http.get("http://127.0.0.1:" .. port .. "/healthz")
    t.eq(r and r.status, 200, r and r.body)
    -- the budget's hook is gone once no evaluation runs: agent tasks never see it
    attach("agent.attach_spec_hook = 'unset' task.spawn(function() agent.attach_spec_hook = debug.gethook() end)")
    t.eq(attach("debug.gethook() ~= nil, agent.attach_spec_hook"), "true\nnil",
      "hook present during an evaluation only")
  end)

  t.it("neither a pcall nor a coroutine escapes the budget; the session goes on; parked time is free", function()
    local out, ok = S.sh("printf '%s\\n' ':budget 0.5' "
      .. q("local n = 0 while true do pcall(function() while true do n = n + 1 end end) end")
      .. " '40 + 2' " .. q("task.sleep(1.2) return 'slept'")
      .. " " .. q("co = coroutine.wrap(function() while true do end end)") .. " 'co()' '\"after\"'"
      .. " | " .. KUBELUA .. " attach --socket " .. sock)
    t.ok(not ok, "exit status 1 after an evaluation error")
    t.match(out, "budget: 0.5 s CPU per evaluation")
    t.match(out, "error: evaluation interrupted: over its time budget of 0.5 s CPU")
    t.match(out, "\n42\n")
    t.match(out, '"slept"')
    local _, n = out:gsub("over its time budget of 0.5 s CPU", "")
    t.eq(n, 2, "the loop in a coroutine of the session is interrupted too:\n" .. out)
    t.match(out, '"after"')
    -- an ordinary error is that session's alone, with the chunk's traceback
    out, ok = attach("local pod = nil\nreturn pod.name")
    t.ok(not ok)
    t.match(out, "error: attach:2: attempt to index local 'pod' %(a nil value%)")
    t.eq(attach("1"), "1")
  end)

  t.it("a GC policy swapped live takes effect (observed through plan())", function()
    write(pods .. "/crash.yaml", manifest("crash", "exit 3"))
    t.ok(S.wait_for(function() return #containers("crash", "CONTAINER_EXITED") >= 3 end, 60),
      "crash loop; agent log:\n" .. agent_log())
    local function plan_ids()
      local out, ok = attach([[local n = 0
for _, c in ipairs(plan().containers) do if c.pod_name == "crash-]] .. NODE .. [[" then n = n + 1 end end
return n]])
      assert(ok, out)
      return tonumber(out)
    end
    t.ok(plan_ids() >= 1, "the default policy removes the older dead instances")
    local out, ok = attach([[gc.hooks.containers = function(candidates, chosen)
  agent.attach_spec_kept = #chosen
  return {}
end]])
    t.ok(ok, out)
    t.eq(plan_ids(), 0, "the swapped-in hook keeps everything")
    local kept = tonumber((attach("agent.attach_spec_kept")))
    t.ok(kept and kept >= 1, "the hook ran in the agent and saw the default choice")
    attach("gc.hooks.containers = nil")
    t.ok(plan_ids() >= 1, "back to the default policy")
    os.remove(pods .. "/crash.yaml")
  end)

  t.it("on a terminal: prompt, completion, multi-line chunks, :budget, Ctrl-D", function()
    local _, have_tmux = S.sh("command -v tmux")
    t.ok(have_tmux, "tmux is needed (tests/support/deps.sh installs it)")
    local session = "kubelua-attach-" .. tostring(os.time()) .. tostring(math.random(1e6))
    local function tmux(args)
      return S.sh("tmux " .. args)
    end
    local function screen()
      return (tmux("capture-pane -p -S -100 -t " .. session))
    end
    local function keys(s, literal)
      tmux("send-keys -t " .. session .. (literal and " -l " or " ") .. q(s))
    end
    local function shows(want, secs)
      t.ok(S.wait_for(function() return screen():find(want, 1, true) end, secs or 5), screen())
    end
    -- types `line` and Enter; `want` shows
    local function enter(line, want)
      keys(line, true)
      keys("Enter")
      shows(want)
    end
    tmux(string.format("new-session -d -s %s -x 150 -y 40 \"env HOME=%s %s attach --socket %s\"",
      session, dir, KUBELUA, sock))
    local ok, err = pcall(function()
      shows("kubelua@" .. NODE .. ">", 10)
      keys("agent.gc:pl", true)
      keys("Tab")
      shows("agent.gc:plan")
      enter("().dry_run", "().dry_run\ntrue")
      enter("for i = 1, 3 do", "  ...>")
      enter("print('line ' .. i) end", "line 3")
      enter("pod('web-" .. NODE .. "').status.phase", '"Running"')
      keys("C-d")
      t.ok(S.wait_for(function() return not select(2, tmux("has-session -t " .. session)) end, 5),
        "Ctrl-D leaves")
    end)
    tmux("kill-session -t " .. session)
    t.ok(ok, tostring(err))
  end)

  t.it("stopping the agent removes the socket", function()
    S.kill(pid, "TERM")
    t.ok(not S.exists(sock), "socket left behind")
  end)

  t.it("cleanup", function()
    S.kill(pid, "KILL")
    for _, name in ipairs({ "web", "late", "crash" }) do
      S.remove_sandboxes(rt, { ["io.kubernetes.pod.name"] = name .. "-" .. NODE })
    end
    S.rm(dir)
  end)
end)
