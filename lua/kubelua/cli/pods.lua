-- kubelua pods: list pod sandboxes (crictl pods).
local common = require "kubelua.cli.common"

local M = {}

M.FILTER_FLAGS = {
  { "id", nil, "string", "filter by pod id", arg = "ID" },
  { "name", nil, "string", "filter by pod name (regular expression)", arg = "REGEX" },
  { "namespace", nil, "string", "filter by pod namespace (regular expression)", arg = "REGEX" },
  { "state", "s", "string", "filter by state: ready or notready", arg = "STATE" },
  { "label", nil, "list", "filter by label key=value (repeatable)", arg = "KEY=VALUE" },
  { "latest", "l", "bool", "only the most recently created pod" },
  { "last", "n", "int", "the N most recently created pods" },
}

-- Pods selected by the flags above, newest first; nil after an error.
function M.select(ctx)
  local f = ctx.flags
  local filter = {}
  local rt, name_re, ns_re = ctx:selectors(filter, common.POD_STATE_FLAG, "ready or notready")
  if not rt then
    return nil
  end
  local r, err = rt:list_pod_sandbox{ filter = filter }
  if not r then
    return ctx:fail(err)
  end
  local out = {}
  for _, p in ipairs(r.items) do
    local md = p.metadata or {}
    if (not name_re or name_re(md.name or "")) and (not ns_re or ns_re(md.namespace or "")) then
      out[#out + 1] = p
    end
  end
  return common.newest_first(out, f.latest, f.last)
end

local cmd = common.command{
  name = "pods",
  summary = "List pod sandboxes, newest first.",
  flags = common.join_flags({
    { "quiet", "q", "bool", "only pod IDs" },
    { "output", "o", "string", "output format: table, json or yaml", default = "table", arg = "FORMAT" },
    { "no-trunc", nil, "bool", "do not truncate IDs" },
  }, M.FILTER_FLAGS),
  run = function(ctx)
    local format = ctx:format_no_args({ "table", "json", "yaml" })
    local list = format and M.select(ctx)
    if not list or ctx:emit_list(list, format, "items", "runtime.v1.ListPodSandboxResponse") then
      return
    end
    local now = require("kubelua.core").now()
    local rows = { { "POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME" } }
    for _, p in ipairs(list) do
      local md = p.metadata or {}
      rows[#rows + 1] = { ctx.flags.no_trunc and p.id or common.trunc_id(p.id), common.ago(p.created_at, now),
        common.pod_state(p.state), md.name or "", md.namespace or "", tostring(md.attempt or 0),
        p.runtime_handler ~= "" and p.runtime_handler or "(default)" }
    end
    ctx:out(common.table(rows))
  end,
}
M.main, M.run, M.spec = cmd.main, cmd.run, cmd.spec
return M
