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
    local ids = ctx.args
    if ctx.flags.all and #ids > 0 then
      return ctx:usage("cannot give POD-IDs together with --all")
    elseif not ctx.flags.all and #ids == 0 then
      return ctx:usage("give at least one POD-ID, or --all")
    end
    local rt = ctx:client()
    if not rt then
      return
    end
    if ctx.flags.all then
      local r, err = rt:list_pod_sandbox{ filter = { state = { state = "SANDBOX_READY" } } }
      if not r then
        return ctx:fail(err)
      end
      for _, p in ipairs(r.items) do
        ids[#ids + 1] = p.id
      end
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
