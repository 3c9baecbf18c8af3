-- kubelua.gc.report: GC plans and results for people (a table) and for
-- programs (plain values ready for JSON).
--
--   local report = require "kubelua.gc.report"
--   local view = report.view(container_result, image_result)   -- either may be nil
--   io.write(report.text(view))
--   io.write(require("kubelua.json").encode(view))
local json = require "kubelua.json"

local M = {}

local BOOLEAN = { kill_first = true, done = true }

-- The fields of an entry (some are read through its metatable); false in a
-- slot that is not a flag means unknown / not set.
local function pick(e, fields)
  local out = {}
  for _, f in ipairs(fields) do
    local v = e[f]
    if v == false and not BOOLEAN[f] then
      v = nil
    end
    out[f] = v
  end
  return out
end

local C_FIELDS = { "id", "pod", "pod_uid", "name", "attempt", "state", "created", "finished", "exit_code",
  "image", "rule", "kill_first", "bytes", "done", "error" }
local S_FIELDS = { "id", "pod", "pod_uid", "state", "created", "rule", "done", "skipped", "error" }
local D_FIELDS = { "path", "pod_uid", "rule", "bytes", "done", "error" }
local L_FIELDS = { "path", "container_id", "rule", "done", "error" }
local I_FIELDS = { "id", "size", "first_seen", "last_used", "rule", "done", "error" }

local function list(src, fields, extra)
  local out = json.array({})
  for _, e in ipairs(src or {}) do
    local v = pick(e, fields)
    if extra then
      extra(v, e)
    end
    out[#out + 1] = v
  end
  return out
end

-- One plain table for both results (dry run or real).
function M.view(cres, ires)
  local v = { errors = json.array({}), bytes = 0 }
  if cres then
    v.dry_run = cres.dry_run
    v.time = cres.time
    v.sources_ready = cres.sources_ready
    v.sizes_error = cres.sizes_error
    v.containers = list(cres.containers, C_FIELDS)
    v.sandboxes = list(cres.sandboxes, S_FIELDS)
    v.log_dirs = list(cres.log_dirs, D_FIELDS)
    v.log_links = list(cres.log_links, L_FIELDS)
    v.summary = cres.summary
    v.bytes = v.bytes + (cres.bytes or 0)
    for _, e in ipairs(cres.errors or {}) do
      v.errors[#v.errors + 1] = e
    end
  end
  if ires then
    v.dry_run = v.dry_run == nil and ires.dry_run or v.dry_run
    v.time = v.time or ires.time
    v.images = list(ires.images, I_FIELDS, function(x, e)
      x.tags = json.array({ unpack(e.tags or {}) })
    end)
    v.image_usage = ires.usage
    v.images_kept = ires.kept
    v.images_disabled = ires.disabled
    v.why = ires.why
    v.bytes = v.bytes + (ires.bytes or 0)
    for _, e in ipairs(ires.errors or {}) do
      v.errors[#v.errors + 1] = e
    end
  end
  return v
end

-- bytes(n) -> "0 B", "1.5 KiB", ...: sizes for people.
local function bytes(n)
  if n == nil then
    return "-"
  end
  local units = { "B", "KiB", "MiB", "GiB", "TiB" }
  local i = 1
  while n >= 1024 and i < #units do
    n, i = n / 1024, i + 1
  end
  return i == 1 and string.format("%d B", n) or string.format("%.1f %s", n, units[i])
end
M.bytes = bytes

local function age(now, t)
  if not t or t == 0 then
    return "never"
  end
  local d = now - t
  if d < 0 then
    return "future"
  elseif d < 120 then
    return string.format("%ds", d)
  elseif d < 7200 then
    return string.format("%dm", d / 60)
  elseif d < 172800 then
    return string.format("%dh", d / 3600)
  end
  return string.format("%dd", d / 86400)
end

local function short(id)
  return (tostring(id or ""):gsub("^sha256:", "")):sub(1, 12)
end

-- Rows of cells -> aligned text.
local function table_text(header, rows)
  if #rows == 0 then
    return ""
  end
  local widths = {}
  for i, h in ipairs(header) do
    widths[i] = #h
  end
  for _, r in ipairs(rows) do
    for i, c in ipairs(r) do
      widths[i] = math.max(widths[i] or 0, #c)
    end
  end
  local out = {}
  local function line(cells)
    local parts = {}
    for i, c in ipairs(cells) do
      parts[i] = i < #cells and (c .. string.rep(" ", widths[i] - #c)) or c
    end
    out[#out + 1] = table.concat(parts, "  ")
  end
  line(header)
  for _, r in ipairs(rows) do
    line(r)
  end
  return table.concat(out, "\n") .. "\n\n"
end

local function outcome(e, dry)
  if dry then
    return ""
  end
  if e.done then
    return "removed"
  elseif e.skipped then
    return "skipped: " .. e.skipped
  end
  return "FAILED: " .. tostring(e.error or "")
end

function M.text(v)
  local now = v.time or 0
  local dry = v.dry_run
  local out = {}
  local rows = {}
  for _, c in ipairs(v.containers or {}) do
    rows[#rows + 1] = { short(c.id), c.pod or "", c.name or "", tostring(c.attempt or 0),
      (c.state or ""):gsub("^CONTAINER_", ""), age(now, c.created), c.rule or "",
      (c.kill_first and "kill, " or "") .. bytes(c.bytes), outcome(c, dry) }
  end
  out[#out + 1] = table_text({ "CONTAINER", "POD", "NAME", "ATTEMPT", "STATE", "AGE", "RULE", "BYTES", "" }, rows)
  rows = {}
  for _, s in ipairs(v.sandboxes or {}) do
    rows[#rows + 1] = { short(s.id), s.pod or "", (s.state or ""):gsub("^SANDBOX_", ""), age(now, s.created),
      s.rule or "", outcome(s, dry) }
  end
  out[#out + 1] = table_text({ "SANDBOX", "POD", "STATE", "AGE", "RULE", "" }, rows)
  rows = {}
  for _, d in ipairs(v.log_dirs or {}) do
    rows[#rows + 1] = { d.path, d.rule or "", bytes(d.bytes), outcome(d, dry) }
  end
  for _, l in ipairs(v.log_links or {}) do
    rows[#rows + 1] = { l.path, l.rule or "", "-", outcome(l, dry) }
  end
  out[#out + 1] = table_text({ "LOGS", "RULE", "BYTES", "" }, rows)
  rows = {}
  for _, i in ipairs(v.images or {}) do
    rows[#rows + 1] = { short(i.id), table.concat(i.tags or {}, ","), bytes(i.size), age(now, i.last_used),
      age(now, i.first_seen), i.rule or "", outcome(i, dry) }
  end
  out[#out + 1] = table_text({ "IMAGE", "TAGS", "SIZE", "LAST USED", "FIRST SEEN", "RULE", "" }, rows)
  local u = v.image_usage
  if u and u.capacity then
    out[#out + 1] = string.format("image filesystem %s: %s of %s available, %d%% used (high %d%%, low %d%%)%s\n",
      u.path or "?", bytes(u.available), bytes(u.capacity), u.percent or 0, u.high or 0, u.low or 0,
      (u.to_free or 0) > 0 and (", " .. bytes(u.to_free) .. " to free") or "")
  end
  if v.images_disabled then
    out[#out + 1] = "image GC is disabled (high threshold 100% and no maximum age)\n"
  end
  out[#out + 1] = string.format("%s %d containers, %d sandboxes, %d log folders, %d log links, %d images: %s\n",
    dry and "would remove" or "removed", #(v.containers or {}), #(v.sandboxes or {}), #(v.log_dirs or {}),
    #(v.log_links or {}), #(v.images or {}), bytes(v.bytes))
  if v.sources_ready == false then
    out[#out + 1] = "pod sources are not ready: containers, sandboxes and logs of deleted pods are not considered\n"
  end
  if v.sizes_error then
    out[#out + 1] = "container sizes unknown, not counted in the bytes: " .. v.sizes_error .. "\n"
  end
  for _, e in ipairs(v.errors or {}) do
    out[#out + 1] = "error: " .. e .. "\n"
  end
  return table.concat(out)
end

return M
