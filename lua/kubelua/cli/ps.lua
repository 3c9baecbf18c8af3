-- kubelua ps: list containers (crictl ps).
local common = require "kubelua.cli.common"

return common.command{
  name = "ps",
  args = "[OPTIONS]",
  summary = "List containers: running ones by default, newest first.",
  flags = common.join_flags({
    { "quiet", "q", "bool", "only container IDs" },
    { "output", "o", "string", "output format: table, json or yaml", default = "table", arg = "FORMAT" },
    { "no-trunc", nil, "bool", "do not truncate IDs" },
  }, common.CONTAINER_FILTER_FLAGS),
  run = function(ctx)
    local format = ctx:format_no_args({ "table", "json", "yaml" })
    local list = format and ctx:select_containers()
    if not list or ctx:emit_list(list, format, "containers", "runtime.v1.ListContainersResponse") then
      return
    end
    local trunc = not ctx.flags.no_trunc
    local now = require("kubelua.core").now()
    local rows = { { "CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD", "NAMESPACE" } }
    for _, c in ipairs(list) do
      local id, pod, image = c.id, c.pod_sandbox_id, c.image and c.image.image or ""
      if trunc then
        id, pod = common.trunc_id(id), common.trunc_id(pod)
        local algo, hex = image:match("^(%w+):(%x+)$")
        if algo and #hex >= 32 then -- an image ID (digest): shortened like IDs
          image = common.trunc_id(hex)
        end
      end
      rows[#rows + 1] = { id, image, common.ago(c.created_at, now), common.container_state(c.state),
        c.metadata and c.metadata.name or "", tostring(c.metadata and c.metadata.attempt or 0), pod,
        c.labels[common.POD_NAME_LABEL] or "unknown", c.labels[common.POD_NAMESPACE_LABEL] or "unknown" }
    end
    ctx:out(common.table(rows))
  end,
}
