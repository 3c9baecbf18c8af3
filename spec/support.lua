-- Helpers for specs that need real processes, sockets and folders.
-- (They block the loop briefly while a shell command runs: fine in tests.)
local task = require "kubelua.task"

local M = {}

M.ROOT = (arg and arg[0] or "spec/runner.lua"):match("^(.*)/spec/[^/]*$") or "."

-- Run a shell command; returns its stdout (trailing newline stripped) and
-- whether it succeeded.
function M.sh(cmd)
  local f = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"::rc=$?\""))
  local out = f:read("*a")
  f:close()
  local body, rc = out:match("^(.-)\n?::rc=(%d+)\n?$")
  return body, tonumber(rc) == 0
end

-- A fresh temporary folder, removed with M.rm.
function M.tmpdir(tag)
  local out = M.sh("mktemp -d /tmp/kubelua-" .. (tag or "spec") .. ".XXXXXX")
  return out
end

function M.rm(path)
  if path and path:match("^/tmp/kubelua%-") then
    M.sh("rm -rf '" .. path .. "'")
  end
end

-- Start a background process; returns its pid.
function M.spawn(cmd, log)
  local pid = M.sh(string.format("(%s) > '%s' 2>&1 & echo $!", cmd, log or "/dev/null"))
  return tonumber(pid)
end

function M.kill(pid, sig)
  if pid then
    M.sh(string.format("kill -%s %d; for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 %d 2>/dev/null || break; sleep 0.1; done",
      sig or "TERM", pid, pid))
  end
end

function M.exists(path)
  local _, ok = M.sh("test -e '" .. path .. "'")
  return ok
end

-- Wait (parking the task) until pred() is true; returns the seconds taken or nil.
function M.wait_for(pred, timeout, step)
  local start = task.monotime()
  while task.monotime() - start < (timeout or 10) do
    if pred() then
      return task.monotime() - start
    end
    task.sleep(step or 0.05)
  end
  return nil
end

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

-- The private containerd of the test run (started by the ctest fixture).
function M.containerd()
  local dir = os.getenv("KUBELUA_TEST_CTD_DIR")
  if not dir or dir == "" then
    return nil
  end
  return { dir = dir, endpoint = "unix://" .. dir .. "/containerd.sock",
    script = M.ROOT .. "/tests/support/containerd.sh" }
end

return M
