-- kubelua stats: containers' resource usage (crictl stats).
-- The table samples twice, --seconds apart, to compute CPU %.
local common = require "kubelua.cli.common"
local task = require "kubelua.task"

local function value(v)
  return v and tonumber(v.value) or 0
end

local function list(ctx, rt, filter)
  local r, err = rt:list_container_stats{ filter = filter }
  if not r then
    return ctx:fail(err)
  end
  table.sort(r.stats, function(a, b)
    return a.attributes.id < b.attributes.id
  end)
  return r.stats
end

return common.command{
  name = "stats",
  args = "[OPTIONS] [CONTAINER-ID]",
  summary = "Show CPU, memory, disk and swap use of containers (running ones unless -a).",
  flags = {
    { "all", "a", "bool", "all containers (default: running only)" },
    { "id", nil, "string", "filter by container id", arg = "ID" },
    { "pod", "p", "string", "filter by pod id", arg = "POD-ID" },
    { "label", nil, "list", "filter by label key=value (repeatable)", arg = "KEY=VALUE" },
    { "output", "o", "string", "output format: table, json or yaml", default = "table", arg = "FORMAT" },
    { "seconds", "s", "number", "CPU sample window in seconds (default 1)", default = 1, arg = "SECONDS" },
    { "watch", "w", "bool", "print again every --seconds until interrupted" },
  },
  run = function(ctx)
    local f = ctx.flags
    local format = ctx:format({ "table", "json", "yaml" })
    if not format then
      return
    end
    if #ctx.args > 1 then
      return ctx:usage("at most one CONTAINER-ID")
    end
    if f.seconds <= 0 then
      return ctx:usage("--seconds must be positive")
    end
    local labels = ctx:labels()
    if not labels then
      return
    end
    local filter = {}
    filter.id = f.id or ctx.args[1]
    filter.pod_sandbox_id = f.pod
    if next(labels) then
      filter.label_selector = labels
    end
    local rt = ctx:client()
    if not rt then
      return
    end
    repeat
      local first = list(ctx, rt, filter)
      if not first then
        return
      end
      if format ~= "table" then
        ctx:emit(common.to_json({ stats = first }, "runtime.v1.ListContainerStatsResponse"), format)
        if f.watch then
          task.sleep(f.seconds)
        end
      else
        local old = {}
        for _, s in ipairs(first) do
          old[s.attributes.id] = s
        end
        task.sleep(f.seconds)
        local second = list(ctx, rt, filter)
        if not second then
          return
        end
        local rows = { { "CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES", "SWAP" } }
        for _, s in ipairs(second) do
          local cpu = value(s.cpu and s.cpu.usage_core_nano_seconds)
          local mem = value(s.memory and s.memory.working_set_bytes)
          local prev = old[s.attributes.id]
          -- crictl's rules: a container with no CPU and no memory is not
          -- running (shown with -a); one that appeared meanwhile is skipped
          if (f.all or cpu ~= 0 or mem ~= 0) and prev then
            local pct = 0
            if cpu ~= 0 then
              local dt = tonumber(s.cpu.timestamp) - tonumber(prev.cpu and prev.cpu.timestamp or 0)
              if dt > 0 then
                pct = (cpu - value(prev.cpu and prev.cpu.usage_core_nano_seconds)) / dt * 100
              end
            end
            local wl = s.writable_layer
            rows[#rows + 1] = { common.trunc_id(s.attributes.id), s.attributes.metadata and s.attributes.metadata.name or "",
              string.format("%.2f", pct), common.human_size(mem), common.human_size(value(wl and wl.used_bytes)),
              string.format("%.0f", value(wl and wl.inodes_used)),
              common.human_size(value(s.swap and s.swap.swap_usage_bytes)) }
          end
        end
        if f.watch then
          ctx:out("\27[2J\27[H")
        end
        ctx:out(common.table(rows))
        ctx.stdout:flush()
      end
    until not f.watch
  end,
}
