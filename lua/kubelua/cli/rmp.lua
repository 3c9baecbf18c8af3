-- kubelua rmp: remove pod sandboxes (crictl rmp).
local common = require "kubelua.cli.common"

return common.command{
  name = "rmp",
  args = "[OPTIONS] POD-ID [POD-ID...]",
  summary = "Remove pod sandboxes and their containers (a ready pod only with --force).",
  flags = {
    { "force", "f", "bool", "stop a ready pod first" },
    { "all", "a", "bool", "remove every pod" },
  },
  run = function(ctx)
    local f = ctx.flags
    local rt, ids = ctx:targets("POD-ID", function(c)
      return common.ids("items", c:list_pod_sandbox{})
    end)
    if not rt then
      return
    end
    for _, id in ipairs(ids) do
      local st, err = rt:pod_sandbox_status{ pod_sandbox_id = id }
      if not st then
        ctx:fail(err .. " (getting the status of pod sandbox " .. id .. ")")
      else
        local ok = true
        if st.status.state == "SANDBOX_READY" then
          if f.force then
            ok, err = rt:stop_pod_sandbox{ pod_sandbox_id = id }
            if not ok then
              ctx:fail(err .. " (stopping pod sandbox " .. id .. ")")
            end
          else
            ok = false
            ctx:fail(string.format("FAILED_PRECONDITION: pod sandbox %q is running, stop it first or use --force", id))
          end
        end
        if ok then
          ok, err = rt:remove_pod_sandbox{ pod_sandbox_id = id }
          if ok then
            ctx:line("Removed sandbox " .. id)
          else
            ctx:fail(err .. " (removing pod sandbox " .. id .. ")")
          end
        end
      end
    end
  end,
}
