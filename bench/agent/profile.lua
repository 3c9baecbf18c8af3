-- Run `kubelua agent ARGS...` under LuaJIT's sampling profiler (jit.p).
-- Environment:
--   KUBELUA_PROFILE_OUT    the report, written when the agent stops (SIGTERM)
--                          (default /tmp/kubelua-agent.prof)
--   KUBELUA_PROFILE_MODE   jit.p's mode letters (default "Fl2": functions with
--                          line numbers, two frames)
--   KUBELUA_PROFILE_DELAY  seconds before sampling starts (default 0), e.g.
--                          to leave start-up out and profile the steady state
--   kubelua run bench/agent/profile.lua --config agent.yaml
-- jit.p samples the Lua VM: time in C called from Lua (libcurl, the gRPC
-- codec) is charged to the calling Lua line; the event loop's own C work
-- between Lua calls is not seen (use perf for that).
local task = require "kubelua.task"
local prof = require "jit.p"
local mode = os.getenv("KUBELUA_PROFILE_MODE") or "Fl2"
local out = os.getenv("KUBELUA_PROFILE_OUT") or "/tmp/kubelua-agent.prof"
local delay = tonumber(os.getenv("KUBELUA_PROFILE_DELAY") or "0") or 0
local started = false
if delay > 0 then
  task.spawn(function()
    task.sleep(delay)
    prof.start(mode, out)
    started = true
  end)
else
  prof.start(mode, out)
  started = true
end
require("kubelua.cli.agent").main({ ... })
if started then
  prof.stop()
end
