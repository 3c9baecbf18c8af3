-- A live view of the agent's pods from its /pods endpoint, every 2 s until Ctrl-C.
--   kubelua run examples/live.lua [http://127.0.0.1:10248]
local http = require "kubelua.http"
local json = require "kubelua.json"
local task = require "kubelua.task"

local base = arg[1] or "http://127.0.0.1:10248"
while true do
  local r = http.get(base .. "/pods", { timeout = 2 })
  io.write("\27[2J\27[H", os.date("%H:%M:%S"), "  kubelua agent at ", base, "  (Ctrl-C to stop)\n\n")
  if not r or r.status ~= 200 then
    io.write("  waiting for the agent...\n")
  else
    local pods = json.decode(r.body) or {}
    io.write(string.format("  %-22s %-10s %-8s %-10s %-9s %s\n", "POD", "CONTAINER", "READY", "STATE", "RESTARTS", "LAST SYNC"))
    for _, p in ipairs(pods) do
      local st = p.status or {}
      local results = {}
      for _, res in ipairs((p.last_sync or {}).results or {}) do
        results[#results + 1] = res.action .. (res.error and ("=" .. res.error) or "")
      end
      for _, c in ipairs(st.containerStatuses or {}) do
        local state = next(c.state or {}) or "?"
        io.write(string.format("  %-22s %-10s %-8s %-10s %-9s %s\n", p.name, c.name, tostring(c.ready),
          state, tostring(c.restartCount), table.concat(results, ",")))
      end
    end
    local h = http.get(base .. "/healthz", { timeout = 2 })
    io.write("\n  /healthz: ", h and (h.status .. " " .. h.body:gsub("\n", " ")) or "no answer", "\n")
  end
  io.flush()
  task.sleep(2)
end
