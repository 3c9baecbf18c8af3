-- kubelua inspectp: the status of one or more pod sandboxes (crictl inspectp).
local common = require "kubelua.cli.common"
local pods = require "kubelua.cli.pods"

local function status_json(st)
  local out = common.to_json(st, "runtime.v1.PodSandboxStatus")
  out.createdAt = common.rfc3339(st.created_at)
  return out
end

-- The table format's lines of a PodSandboxStatus response (without the info).
local function table_lines(r)
  local st, lines = r.status, {}
  lines[#lines + 1] = "ID: " .. st.id
  local md = st.metadata
  if md then
    if md.name ~= "" then
      lines[#lines + 1] = "Name: " .. md.name
    end
    if md.uid ~= "" then
      lines[#lines + 1] = "UID: " .. md.uid
    end
    if md.namespace ~= "" then
      lines[#lines + 1] = "Namespace: " .. md.namespace
    end
    lines[#lines + 1] = "Attempt: " .. md.attempt
  end
  lines[#lines + 1] = "Status: " .. st.state
  lines[#lines + 1] = "Created: " .. common.rfc3339(st.created_at)
  if st.network then
    lines[#lines + 1] = "IP Addresses: " .. st.network.ip
    for _, ip in ipairs(st.network.additional_ips) do
      lines[#lines + 1] = "Additional IP: " .. ip.ip
    end
  end
  common.map_lines(lines, "Labels", st.labels)
  common.map_lines(lines, "Annotations", st.annotations)
  return lines
end

return common.command{
  name = "inspectp",
  args = "[OPTIONS] POD-ID [POD-ID...]",
  summary = "Show the status of pod sandboxes. Without IDs, the pods the filter flags select.",
  flags = common.join_flags(common.INSPECT_FLAGS, pods.FILTER_FLAGS),
  run = function(ctx)
    ctx:inspect_each{
      ids = function()
        local f = ctx.flags
        local filtered = f.id or f.name or f.namespace or f.state or #f.label > 0 or f.latest or f.last
        return ctx:ids_or_selected("pod", filtered, pods.select)
      end,
      fetch = function(rt, id, verbose)
        return rt:pod_sandbox_status{ pod_sandbox_id = id, verbose = verbose }
      end,
      lines = table_lines,
      status = function(r)
        return status_json(r.status)
      end,
    }
  end,
}
