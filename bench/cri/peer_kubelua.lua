-- kubelua's side of the CRI benchmark: the same flags and JSON line as the
-- Go and Python peers, measured through the Lua API users call.
--   kubelua run bench/cri/peer_kubelua.lua --endpoint unix:///... --rpc Version --mode multi --inflight 64 --calls 20000
local cri = require "kubelua.cri"
local task = require "kubelua.task"

local opts = { rpc = "Version", mode = "seq", inflight = 1, calls = 1000, warmup = -1 }
local i = 1
while arg[i] do
  local k = arg[i]:match("^%-%-(.+)$")
  if not k or arg[i + 1] == nil then
    error("bad argument " .. arg[i])
  end
  opts[k] = tonumber(arg[i + 1]) or arg[i + 1]
  i = i + 2
end
if opts.warmup < 0 then
  opts.warmup = math.max(20, math.min(500, math.floor(opts.calls / 10)))
end
if opts.mode == "seq" then
  opts.inflight = 1
end

local rt = assert(cri.connect(opts.endpoint))
local items = 0
local call
if opts.rpc == "Version" then
  local req = {}
  call = function()
    assert(rt:version(req))
  end
elseif opts.rpc == "ListContainers" then
  local req = { filter = {} }
  call = function()
    items = #assert(rt:list_containers(req)).containers
  end
else
  error("unknown rpc " .. opts.rpc)
end

local lat = {}
-- n calls spread over `inflight` workers; per-call latencies recorded
local function run(n, record)
  local next_i = 0
  local workers = {}
  for w = 1, opts.inflight do
    workers[w] = function()
      while next_i < n do
        next_i = next_i + 1
        local k = next_i
        local t0 = task.monotime()
        call()
        if record then
          lat[k] = task.monotime() - t0
        end
      end
    end
  end
  if opts.inflight == 1 then
    workers[1]()
  else
    task.gather(workers)
  end
end

run(opts.warmup, false)
collectgarbage()
local cpu0, wall0 = task.cputime(), task.monotime()
run(opts.calls, true)
local wall, cpu = task.monotime() - wall0, task.cputime() - cpu0
table.sort(lat)
local function pct(p)
  return lat[math.max(1, math.ceil(#lat * p))] * 1e6
end
print(string.format('{"peer":"kubelua","rpc":"%s","mode":"%s","inflight":%d,"calls":%d,"wall_s":%.4f,'
  .. '"calls_per_s":%.1f,"p50_us":%.1f,"p99_us":%.1f,"cpu_us_per_call":%.2f,"items":%d}',
  opts.rpc, opts.mode, opts.inflight, opts.calls, wall, opts.calls / wall, pct(0.5), pct(0.99),
  cpu / opts.calls * 1e6, items))
rt:close()
