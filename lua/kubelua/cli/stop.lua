-- kubelua stop: stop running containers (crictl stop).
local common = require "kubelua.cli.common"

return common.command{
  name = "stop",
  args = "[OPTIONS] CONTAINER-ID [CONTAINER-ID...]",
  summary = "Stop containers: SIGTERM (or the image's stop signal), SIGKILL after the grace period." ..
    " Prints each stopped ID.",
  own_timeout = true,
  flags = {
    { "timeout", "t", "int", "seconds to wait before killing (default 0: kill at once)", default = 0, arg = "SECONDS" },
    { "all", "a", "bool", "stop every running container" },
  },
  run = function(ctx)
    local ids = ctx.args
    if ctx.flags.all and #ids > 0 then
      return ctx:usage("cannot give CONTAINER-IDs together with --all")
    elseif not ctx.flags.all and #ids == 0 then
      return ctx:usage("give at least one CONTAINER-ID, or --all")
    end
    local rt = ctx:client()
    if not rt then
      return
    end
    if ctx.flags.all then
      local r, err = rt:list_containers{ filter = { state = { state = "CONTAINER_RUNNING" } } }
      if not r then
        return ctx:fail(err)
      end
      for _, c in ipairs(r.containers) do
        ids[#ids + 1] = c.id
      end
    end
    for _, id in ipairs(ids) do
      local ok, err = rt:stop_container{ container_id = id, timeout = ctx.flags.timeout }
      if ok then
        ctx:line(id)
      else
        ctx:fail(err .. " (stopping container " .. id .. ")")
      end
    end
  end,
}
