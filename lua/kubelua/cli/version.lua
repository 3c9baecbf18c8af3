-- kubelua version: the runtime's name and versions (crictl version).
local common = require "kubelua.cli.common"

return common.command{
  name = "version",
  summary = "Show the runtime's name and versions (and kubelua's own with --client).",
  flags = {
    { "output", "o", "string", "output format: text, json or yaml", default = "text", arg = "FORMAT" },
    { "client", nil, "bool", "only kubelua's own version; no runtime call" },
  },
  run = function(ctx)
    local format = ctx:format_no_args({ "text", "json", "yaml" })
    if not format then
      return
    end
    local core = require "kubelua.core"
    local client = "kubelua " .. core.version .. " (" .. (jit and jit.version or _VERSION) .. ")"
    if ctx.flags.client then
      return ctx:line(client)
    end
    local rt = ctx:client()
    if not rt then
      return
    end
    local v, err = rt:version{ version = "v1" }
    if not v then
      return ctx:fail(err)
    end
    if format ~= "text" then
      return ctx:emit(common.to_json(v, "runtime.v1.VersionResponse"), format)
    end
    -- crictl's lines (Go's Println puts a space between the two values)
    ctx:line("Version:  " .. v.version)
    ctx:line("RuntimeName:  " .. v.runtime_name)
    ctx:line("RuntimeVersion:  " .. v.runtime_version)
    ctx:line("RuntimeApiVersion:  " .. v.runtime_api_version)
  end,
}
