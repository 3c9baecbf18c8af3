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
    local rt, ids = ctx:targets("CONTAINER-ID", function(c)
      return common.ids("containers", c:list_containers{ filter = { state = { state = "CONTAINER_RUNNING" } } })
    end)
    if not rt then
      return
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
