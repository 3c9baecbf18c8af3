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
  if f.id then
    filter.id = f.id
  end
  if f.state then
    local st = common.POD_STATE_FLAG[f.state:lower()]
    if not st then
      return ctx:usage("--state should be ready or notready")
    end
    filter.state = { state = st }
  end
  local labels = ctx:labels()
  if not labels then
    return nil
  end
  if next(labels) then
    filter.label_selector = labels
  end
  local name_re = ctx:regex("name")
  local ns_re = name_re ~= nil and ctx:regex("namespace")
  if name_re == nil or ns_re == nil then
    return nil
  end
  local rt = ctx:client()
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

local flags = {
  { "quiet", "q", "bool", "only pod IDs" },
  { "output", "o", "string", "output format: table, json or yaml", default = "table", arg = "FORMAT" },
  { "no-trunc", nil, "bool", "do not truncate IDs" },
}
for _, f in ipairs(M.FILTER_FLAGS) do
  flags[#flags + 1] = f
end

local cmd = common.command{
  name = "pods",
  summary = "List pod sandboxes, newest first.",
  flags = flags,
  run = function(ctx)
    local format = ctx:format({ "table", "json", "yaml" })
    if not format then
      return
    end
    if #ctx.args > 0 then
      return ctx:usage("unexpected argument " .. ctx.args[1])
    end
    local list = M.select(ctx)
    if not list then
      return
    end
    if ctx.flags.quiet then
      for _, p in ipairs(list) do
        ctx:line(p.id)
      end
      return
    end
    if format ~= "table" then
      return ctx:emit(common.to_json({ items = list }, "runtime.v1.ListPodSandboxResponse"), format)
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
