-- kubelua events: stream container events (crictl events, CRI
-- GetContainerEvents). One JSON document (or YAML document) per event, as
-- it arrives, until the stream ends or kubelua is interrupted.
-- Runtimes without evented PLEG support (containerd 1.6) answer
-- UNIMPLEMENTED: that is reported on stderr and the exit status is 1.
local common = require "kubelua.cli.common"

return common.command{
  name = "events",
  summary = "Stream container events (created, started, stopped, deleted) as they happen.",
  flags = {
    { "output", "o", "string", "output format: json or yaml", default = "json", arg = "FORMAT" },
  },
  run = function(ctx)
    local format, rt = ctx:format_no_args({ "json", "yaml" }, true)
    if not rt then
      return
    end
    local s, err, code = rt:get_container_events{}
    if s then
      for ev in s do
        if format == "yaml" then
          ctx:out("---\n")
        end
        ctx:emit(common.to_json(ev, "runtime.v1.ContainerEventResponse"), format)
        if not ctx.stdout:flush() then
          s:cancel()
          return
        end
      end
      err, code = s.err, s.code
    end
    if code == "UNIMPLEMENTED" then
      return ctx:fail(err .. " (this runtime does not stream container events; containerd 1.6 does not," ..
        " 1.7 and later do with evented PLEG; `kubelua ps -a` shows the current states)")
    elseif err then
      return ctx:fail(err)
    end
  end,
}
