-- kubelua info: the runtime's status and configuration (crictl info).
local common = require "kubelua.cli.common"

return common.command{
  name = "info",
  summary = "Show the runtime's conditions and, unless -q, its verbose info (configuration).",
  flags = {
    { "output", "o", "string", "output format: json or yaml", default = "json", arg = "FORMAT" },
    { "quiet", "q", "bool", "only the conditions, no verbose info" },
  },
  run = function(ctx)
    local format, rt = ctx:format_no_args({ "json", "yaml" }, true)
    if not rt then
      return
    end
    local r, err = rt:status{ verbose = not ctx.flags.quiet }
    if not r then
      return ctx:fail(err)
    end
    local out = common.to_json(r, "runtime.v1.StatusResponse")
    local result = common.info_values(r.info, { status = out.status })
    if #r.runtime_handlers > 0 then
      result.runtimeHandlers = out.runtimeHandlers
    end
    if r.features then
      result.features = out.features
    end
    ctx:emit(result, format)
  end,
}
