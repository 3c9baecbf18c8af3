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

-- The table format's lines of a ContainerStatus response (without the info).
local function table_lines(r, now)
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
  common.map_lines(lines, "Labels", st.labels)
  common.map_lines(lines, "Annotations", st.annotations)
  return lines
end

local cmd = common.command{
  name = "inspect",
  args = "[OPTIONS] CONTAINER-ID [CONTAINER-ID...]",
  summary = "Show the status of containers. Without IDs, the containers the filter flags select.",
  flags = common.join_flags(common.INSPECT_FLAGS, common.CONTAINER_FILTER_FLAGS),
  run = function(ctx)
    ctx:inspect_each{
      ids = function()
        return ctx:ids_or_selected("container", any_filter(ctx.flags), ctx.select_containers)
      end,
      fetch = function(rt, id, verbose)
        return rt:container_status{ container_id = id, verbose = verbose }
      end,
      lines = table_lines,
      status = function(r)
        return M.status_json(r.status)
      end,
    }
  end,
}
M.main, M.run, M.spec = cmd.main, cmd.run, cmd.spec
return M
