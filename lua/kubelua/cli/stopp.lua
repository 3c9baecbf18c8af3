-- kubelua stopp: stop pod sandboxes (crictl stopp).
local common = require "kubelua.cli.common"

return common.command{
  name = "stopp",
  args = "[OPTIONS] POD-ID [POD-ID...]",
  summary = "Stop pod sandboxes and their containers.",
  flags = {
    { "all", "a", "bool", "stop every pod" },
  },
  run = function(ctx)
    local rt, ids = ctx:targets("POD-ID", function(c)
      return common.ids("items", c:list_pod_sandbox{ filter = { state = { state = "SANDBOX_READY" } } })
    end)
    if not rt then
      return
    end
    for _, id in ipairs(ids) do
      local ok, err = rt:stop_pod_sandbox{ pod_sandbox_id = id }
      if ok then
        ctx:line("Stopped sandbox " .. id)
      else
        ctx:fail(err .. " (stopping pod sandbox " .. id .. ")")
      end
    end
  end,
}
