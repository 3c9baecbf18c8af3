-- kubelua rm: remove containers (crictl rm), and their log files unless -k.
local common = require "kubelua.cli.common"

-- The log file and its rotations (kubelet names them LOG.<timestamp>[.gz]).
local function remove_logs(ctx, id, path)
  if path == nil or path == "" then
    return
  end
  local dir, base = path:match("^(.*)/([^/]+)$")
  local files = { path }
  for _, name in ipairs(dir and common.list_dir(dir) or {}) do
    if name:sub(1, #base + 1) == base .. "." then
      files[#files + 1] = dir .. "/" .. name
    end
  end
  for _, f in ipairs(files) do
    local ok, err = os.remove(f)
    if not ok and not tostring(err):find("No such file", 1, true) then
      ctx.stderr:write("kubelua rm: warning: removing log file ", f, " of container ", id, ": ", tostring(err), "\n")
    end
  end
end

return common.command{
  name = "rm",
  args = "[OPTIONS] CONTAINER-ID [CONTAINER-ID...]",
  summary = "Remove containers (a running one only with --force). Prints each removed ID.",
  flags = {
    { "force", "f", "bool", "stop a running container first" },
    { "all", "a", "bool", "remove every container" },
    { "keep-logs", "k", "bool", "keep the container's log file and its rotations" },
  },
  run = function(ctx)
    local f = ctx.flags
    local rt, ids = ctx:targets("CONTAINER-ID", function(c)
      return common.ids("containers", c:list_containers{})
    end)
    if not rt then
      return
    end
    for _, id in ipairs(ids) do
      local st, err = rt:container_status{ container_id = id }
      if not st then
        ctx:fail(err .. " (getting the status of container " .. id .. ")")
      else
        local ok = true
        if st.status.state == "CONTAINER_RUNNING" then
          if f.force then
            ok, err = rt:stop_container{ container_id = id, timeout = 0 }
            if not ok then
              ctx:fail(err .. " (stopping container " .. id .. ")")
            end
          else
            ok = false
            ctx:fail(string.format("FAILED_PRECONDITION: container %q is running, stop it first or use --force", id))
          end
        end
        if ok then
          ok, err = rt:remove_container{ container_id = id }
          if not ok then
            ctx:fail(err .. " (removing container " .. id .. ")")
          else
            if not f.keep_logs then
              remove_logs(ctx, id, st.status.log_path)
            end
            ctx:line(id)
          end
        end
      end
    end
  end,
}
