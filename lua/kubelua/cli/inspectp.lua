-- kubelua inspectp: the status of one or more pod sandboxes (crictl inspectp).
local common = require "kubelua.cli.common"
local pods = require "kubelua.cli.pods"
local inspect = require "kubelua.cli.inspect"

local function status_json(st)
  local out = common.to_json(st, "runtime.v1.PodSandboxStatus")
  out.createdAt = common.rfc3339(st.created_at)
  return out
end

local function table_text(r, verbose)
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
  inspect.map_lines(lines, "Labels", st.labels)
  inspect.map_lines(lines, "Annotations", st.annotations)
  if verbose then
    inspect.info_line(lines, r.info)
  end
  return table.concat(lines, "\n") .. "\n"
end

local flags = {
  { "output", "o", "string", "output format: json, yaml or table", default = "json", arg = "FORMAT" },
  { "quiet", "q", "bool", "leave out the runtime's verbose info" },
}
for _, f in ipairs(pods.FILTER_FLAGS) do
  flags[#flags + 1] = f
end

return common.command{
  name = "inspectp",
  args = "[OPTIONS] POD-ID [POD-ID...]",
  summary = "Show the status of pod sandboxes. Without IDs, the pods the filter flags select.",
  flags = flags,
  run = function(ctx)
    local format = ctx:format({ "json", "yaml", "table" })
    if not format then
      return
    end
    local ids = ctx.args
    if #ids == 0 then
      local f = ctx.flags
      if not (f.id or f.name or f.namespace or f.state or #f.label > 0 or f.latest or f.last) then
        return ctx:usage("no pod ID given")
      end
      local list = pods.select(ctx)
      if not list then
        return
      end
      ids = {}
      for i, p in ipairs(list) do
        ids[i] = p.id
      end
    end
    local rt = ctx:client()
    if not rt then
      return
    end
    local verbose = not ctx.flags.quiet
    local results = {}
    for _, id in ipairs(ids) do
      local r, err = rt:pod_sandbox_status{ pod_sandbox_id = id, verbose = verbose }
      if not r then
        ctx:fail(err)
      elseif format == "table" then
        ctx:out(table_text(r, verbose))
      else
        results[#results + 1] = common.info_values(r.info, { status = status_json(r.status) })
      end
    end
    if format ~= "table" then
      ctx:emit_results(results, format)
    end
  end,
}
