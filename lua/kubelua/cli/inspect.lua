-- kubelua inspect: the status of one or more containers (crictl inspect).
-- JSON by default: { "status": {...}, "info": {...} } per container (an
-- array when there are several), timestamps as RFC 3339 like crictl's.
local common = require "kubelua.cli.common"

local M = {}

local function any_filter(f)
  for _, d in ipairs(common.CONTAINER_FILTER_FLAGS) do
    local v = f[(d[1]:gsub("-", "_"))]
    if v ~= nil and not (type(v) == "table" and #v == 0) then
      return true
    end
  end
  return false
end

-- crictl's status JSON: protojson with createdAt/startedAt/finishedAt as times.
function M.status_json(st)
  local out = common.to_json(st, "runtime.v1.ContainerStatus")
  out.createdAt = common.rfc3339(st.created_at)
  out.startedAt = st.state ~= "CONTAINER_CREATED" and common.rfc3339(st.started_at) or common.ZERO_TIME
  local finished = st.state == "CONTAINER_EXITED" or (st.state == "CONTAINER_UNKNOWN" and st.finished_at > 0)
  out.finishedAt = finished and common.rfc3339(st.finished_at) or common.ZERO_TIME
  return out
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  table.sort(keys)
  return keys
end
M.sorted_keys = sorted_keys

-- "Labels:" / "Annotations:" blocks of the table format.
function M.map_lines(lines, title, map)
  lines[#lines + 1] = title .. ":"
  for _, k in ipairs(sorted_keys(map)) do
    lines[#lines + 1] = "\t" .. k .. " -> " .. map[k]
  end
end

function M.info_line(lines, info)
  local parts = {}
  for _, k in ipairs(sorted_keys(info or {})) do
    parts[#parts + 1] = k .. ":" .. info[k]
  end
  lines[#lines + 1] = "Info: map[" .. table.concat(parts, " ") .. "]"
end

local function table_text(r, verbose, now)
  local st, lines = r.status, {}
  lines[#lines + 1] = "ID: " .. st.id
  if st.metadata then
    if st.metadata.name ~= "" then
      lines[#lines + 1] = "Name: " .. st.metadata.name
    end
    if st.metadata.attempt ~= 0 then
      lines[#lines + 1] = "Attempt: " .. st.metadata.attempt
    end
  end
  lines[#lines + 1] = "State: " .. st.state
  lines[#lines + 1] = "Created: " .. common.ago(st.created_at, now)
  if st.state ~= "CONTAINER_CREATED" then
    lines[#lines + 1] = "Started: " .. common.ago(st.started_at, now)
  end
  if st.state == "CONTAINER_EXITED" then
    if st.finished_at > 0 then
      lines[#lines + 1] = "Finished: " .. common.ago(st.finished_at, now)
    end
    lines[#lines + 1] = "Exit Code: " .. st.exit_code
  end
  M.map_lines(lines, "Labels", st.labels)
  M.map_lines(lines, "Annotations", st.annotations)
  if verbose then
    M.info_line(lines, r.info)
  end
  return table.concat(lines, "\n") .. "\n"
end

local flags = {
  { "output", "o", "string", "output format: json, yaml or table", default = "json", arg = "FORMAT" },
  { "quiet", "q", "bool", "leave out the runtime's verbose info" },
}
for _, f in ipairs(common.CONTAINER_FILTER_FLAGS) do
  flags[#flags + 1] = f
end

local cmd = common.command{
  name = "inspect",
  args = "[OPTIONS] CONTAINER-ID [CONTAINER-ID...]",
  summary = "Show the status of containers. Without IDs, the containers the filter flags select.",
  flags = flags,
  run = function(ctx)
    local format = ctx:format({ "json", "yaml", "table" })
    if not format then
      return
    end
    local ids = ctx.args
    if #ids == 0 then
      if not any_filter(ctx.flags) then
        return ctx:usage("no container ID given")
      end
      local list = ctx:select_containers()
      if not list then
        return
      end
      ids = {}
      for i, c in ipairs(list) do
        ids[i] = c.id
      end
    end
    local rt = ctx:client()
    if not rt then
      return
    end
    local verbose = not ctx.flags.quiet
    local results, now = {}, require("kubelua.core").now()
    for _, id in ipairs(ids) do
      local r, err = rt:container_status{ container_id = id, verbose = verbose }
      if not r then
        ctx:fail(err)
      elseif format == "table" then
        ctx:out(table_text(r, verbose, now))
      else
        results[#results + 1] = common.info_values(r.info, { status = M.status_json(r.status) })
      end
    end
    if format ~= "table" then
      ctx:emit_results(results, format)
    end
  end,
}
M.main, M.run, M.spec = cmd.main, cmd.run, cmd.spec
return M
