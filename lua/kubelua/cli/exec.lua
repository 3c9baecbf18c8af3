-- kubelua exec -s: run a command in a container and wait for it (crictl
-- exec --sync, CRI ExecSync). The command's stdout and stderr are copied
-- as they are, and kubelua exits with the command's exit status.
-- Interactive exec (-i/-t) needs the runtime's streaming server and is not
-- offered.
local common = require "kubelua.cli.common"

return common.command{
  name = "exec",
  args = "-s [OPTIONS] CONTAINER-ID COMMAND [ARG...]",
  summary = "Run COMMAND in a container synchronously (ExecSync); exits with its exit status.",
  stop_at_positional = true,
  own_timeout = true,
  flags = {
    { "sync", "s", "bool", "run synchronously (required: the only mode offered)" },
    { "timeout", nil, "int", "seconds the command may run (default 0: no limit)", default = 0, arg = "SECONDS" },
    { "interactive", "i", "bool", "not supported (needs the streaming server)", hidden = true },
    { "tty", "t", "bool", "not supported (needs the streaming server)", hidden = true },
  },
  run = function(ctx)
    local f = ctx.flags
    if f.interactive or f.tty or not f.sync then
      return ctx:usage("only synchronous exec is supported: use -s (interactive -i/-t needs the streaming server)")
    end
    if #ctx.args < 2 then
      return ctx:usage(#ctx.args == 0 and "no container ID given" or "no command given")
    end
    if f.timeout < 0 then
      return ctx:usage("--timeout must not be negative")
    end
    local rt = ctx:client()
    if not rt then
      return
    end
    local cmd = { unpack(ctx.args, 2) }
    local r, err, code = rt:exec_sync{ container_id = ctx.args[1], cmd = cmd, timeout = f.timeout }
    if not r then
      if code == "DEADLINE_EXCEEDED" and f.timeout > 0 then
        err = err .. " (the command did not finish within " .. f.timeout .. "s)"
      end
      return ctx:fail(err)
    end
    ctx.stdout:write(r.stdout)
    ctx.stderr:write(r.stderr)
    ctx.status = math.max(ctx.status, tonumber(r.exit_code) or 0)
  end,
}
