-- `kubelua gc`: run (or plan) container, sandbox, log and image GC once.
local M = {}

M.USAGE = [[
usage: kubelua gc [OPTIONS]

Garbage-collects dead containers, inactive sandboxes, pod log folders of
removed pods and (with --images) unused images, once, with kubelet's rules.

  --dry-run                  print the plan (what would go, the rule, bytes); remove nothing
  --json                     print the plan or result as JSON
  --images                   image GC too, after container GC
  --images-only              image GC only
  --policy FILE              the agent's gc policy file ({ containers =, sandboxes =, logs =,
                             options = }), or { gc = {...}, image_gc = {...} }: options
                             and hooks of kubelua.gc / kubelua.image_gc
  --from FILE                plan against a recording (`kubelua record`) instead of the runtime
  --endpoint EP              runtime endpoint (default $CONTAINER_RUNTIME_ENDPOINT)
 container GC:
  --min-age S                seconds since creation (0)
  --max-per-pod-container N  dead containers kept per pod and name (1; -1: no limit)
  --max-containers N         dead containers kept on the node (-1: no limit)
  --exited-grace S           seconds after exit before a container may go (0)
  --keep-failed S            keep containers that failed, and their logs, this long (0)
  --pod-logs-dir DIR         (/var/log/pods)
  --container-logs-dir DIR   legacy log links (/var/log/containers); "none" to skip
  --sources-ready            treat pod sources as ready (with a policy's pod_removed)
 image GC:
  --state-dir DIR            keep image first-seen/last-used times here
  --high N / --low N         usage thresholds in percent (85 / 80)
  --image-min-age S          (120)        --image-max-age S   (0: off)
  --keep PATTERN             keep images whose name or ID matches (Lua pattern; repeatable)
  --keep-newest N            keep the N newest images of each repository
  --sandbox-image REF        an image always counted as in use
  --image-fs PATH            measure capacity at PATH (default: the runtime's mountpoint)
Exit status: 0 done, 1 some removals failed or a policy failed, 2 bad usage.
]]

local FLAGS = {
  ["--min-age"] = { "gc", "min_age", "number" },
  ["--max-per-pod-container"] = { "gc", "max_per_pod_container", "number" },
  ["--max-containers"] = { "gc", "max_containers", "number" },
  ["--exited-grace"] = { "gc", "exited_grace", "number" },
  ["--keep-failed"] = { "gc", "keep_failed", "number" },
  ["--pod-logs-dir"] = { "gc", "pod_logs_dir", "string" },
  ["--container-logs-dir"] = { "gc", "container_logs_dir", "string" },
  ["--state-dir"] = { "image_gc", "state_dir", "string" },
  ["--high"] = { "image_gc", "high", "number" },
  ["--low"] = { "image_gc", "low", "number" },
  ["--image-min-age"] = { "image_gc", "min_age", "number" },
  ["--image-max-age"] = { "image_gc", "max_age", "number" },
  ["--keep-newest"] = { "image_gc", "keep_newest", "number" },
  ["--sandbox-image"] = { "image_gc", "sandbox_image", "string" },
  ["--image-fs"] = { "image_gc", "image_fs_path", "string" },
}

local function usage_error(msg)
  io.stderr:write("kubelua gc: ", msg, "\n", M.USAGE)
  require("kubelua.core").set_exit_code(2)
end

-- -> opts | nil (usage error reported)
function M.parse(args)
  local o = { gc = {}, image_gc = {}, containers = true }
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    name = name or a
    local function value()
      if inline then
        return inline
      end
      i = i + 1
      return args[i]
    end
    local f = FLAGS[name]
    if f then
      local v = value()
      if v == nil then
        return usage_error(name .. " needs a value")
      end
      if f[3] == "number" then
        local n = tonumber(v)
        if not n then
          return usage_error(name .. ": not a number: " .. v)
        end
        v = n
      elseif name == "--container-logs-dir" and v == "none" then
        v = false
      end
      o[f[1]][f[2]] = v
    elseif name == "--dry-run" then
      o.dry_run = true
    elseif name == "--json" then
      o.json = true
    elseif name == "--images" then
      o.images = true
    elseif name == "--images-only" then
      o.images, o.containers = true, false
    elseif name == "--sources-ready" then
      o.gc.sources_ready = true
    elseif name == "--keep" then
      local v = value()
      if not v then
        return usage_error("--keep needs a pattern")
      end
      o.image_gc.keep = o.image_gc.keep or {}
      table.insert(o.image_gc.keep, v)
    elseif name == "--policy" or name == "--from" or name == "--endpoint" then
      local v = value()
      if not v then
        return usage_error(name .. " needs a value")
      end
      o[name:sub(3)] = v
    elseif name == "-h" or name == "--help" then
      io.stdout:write(M.USAGE)
      o.help = true
      return o
    else
      return usage_error("unknown option " .. a)
    end
    i = i + 1
  end
  return o
end

local function merge(into, from)
  for k, v in pairs(from or {}) do
    if into[k] == nil then
      into[k] = v
    end
  end
  return into
end

function M.main(args)
  local core = require "kubelua.core"
  local o = M.parse(args)
  if not o or o.help then
    return
  end
  -- The runtime: a recording served by the test kit, or the real one.
  local rt
  if o.from then
    local testing = require "kubelua.testing"
    local rec, err = testing.load(o.from)
    if not rec then
      io.stderr:write("kubelua gc: ", err, "\n")
      return core.set_exit_code(1)
    end
    rt = testing.runtime(rec)
    if not o.dry_run then
      io.stderr:write("kubelua gc: --from without --dry-run changes only the recording in memory\n")
    end
  else
    local err
    rt, err = require("kubelua.cri").connect(o.endpoint)
    if not rt then
      io.stderr:write("kubelua gc: ", err, "\n")
      return core.set_exit_code(1)
    end
  end
  -- A policy file supplies options and hooks; flags win over it.
  if o.policy then
    local chunk, err = loadfile(o.policy)
    if not chunk then
      io.stderr:write("kubelua gc: ", err, "\n")
      return core.set_exit_code(1)
    end
    local ok, p = pcall(chunk)
    if not ok or type(p) ~= "table" then
      io.stderr:write("kubelua gc: policy ", o.policy, ": ", ok and "does not return a table" or tostring(p), "\n")
      return core.set_exit_code(1)
    end
    if p.gc == nil and p.image_gc == nil then
      -- the agent's format (policies.gc): checked as the agent checks it
      local pol, problems = require("kubelua.agent.policy").load_file("gc", o.policy, { trust = true })
      if not pol then
        io.stderr:write("kubelua gc: ", table.concat(problems, "\n  "), "\n")
        return core.set_exit_code(1)
      end
      p = { gc = pol.options }
      p.gc.hooks = pol.hooks
    end
    merge(o.gc, p.gc)
    merge(o.image_gc, p.image_gc)
  end
  o.gc.runtime, o.image_gc.runtime = rt, rt
  local cres, ires, failed
  if o.containers then
    local g = require("kubelua.gc").new(o.gc)
    local res, _, _, partial = g:run{ dry_run = o.dry_run }
    cres = res or partial
    failed = failed or not res
  end
  if o.images then
    local ig = require("kubelua.image_gc").new(o.image_gc)
    local res, _, _, partial = ig:run{ dry_run = o.dry_run }
    ires = res or partial
    failed = failed or not res
  end
  local report = require "kubelua.gc.report"
  local view = report.view(cres, ires)
  if o.json then
    io.stdout:write(require("kubelua.json").encode(view), "\n")
  else
    io.stdout:write(report.text(view))
  end
  if rt.close then
    rt:close()
  end
  core.set_exit_code(failed and 1 or 0)
end

return M
