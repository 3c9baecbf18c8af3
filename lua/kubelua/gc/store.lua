-- kubelua.gc.store: small Lua data files, written atomically and read back
-- without giving the file any power (image GC state, test recordings).
--
--   local store = require "kubelua.gc.store"
--   assert(store.write_atomic(path, store.serialize(value)))
--   local value, err, code = store.read_data(path)   -- ENOENT when absent
--   local text, err, code = store.read_file(path)     -- any file, as a string
local pretty = require "kubelua.pretty"

local M = {}

local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or repeat
  return then true until while]]):gmatch("%a+") do
  KEYWORDS[w] = true
end

local function scalar(v)
  local tv = type(v)
  if tv == "string" then
    return (string.format("%q", v):gsub("\\\n", "\\n"):gsub("\r", "\\r"))
  elseif tv == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      error("kubelua.gc.store: cannot write " .. tostring(v), 3)
    end
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then
      return string.format("%d", v)
    end
    return string.format("%.17g", v)
  elseif tv == "boolean" then
    return tostring(v)
  elseif tv == "cdata" then
    local s = tostring(v) -- 123LL / 123ULL: LuaJIT reads these back exactly
    if s:match("^%-?%d+U?LL$") then
      return s
    end
  end
  error("kubelua.gc.store: cannot write a " .. tv .. " value", 3)
end

local function write_value(v, indent, out)
  if type(v) ~= "table" then
    out[#out + 1] = scalar(v)
    return
  end
  local n = #v
  local keys = {}
  for k in pairs(v) do
    if not (type(k) == "number" and k >= 1 and k <= n and k == math.floor(k)) then
      if type(k) ~= "string" and type(k) ~= "number" then
        error("kubelua.gc.store: cannot write a " .. type(k) .. " key", 2)
      end
      keys[#keys + 1] = k
    end
  end
  table.sort(keys, pretty.key_less)
  if n == 0 and #keys == 0 then
    out[#out + 1] = "{}"
    return
  end
  local inner = indent .. "  "
  out[#out + 1] = "{\n"
  for i = 1, n do
    out[#out + 1] = inner
    write_value(v[i], inner, out)
    out[#out + 1] = ",\n"
  end
  for _, k in ipairs(keys) do
    out[#out + 1] = inner
    if type(k) == "string" and k:match("^[%a_][%w_]*$") and not KEYWORDS[k] then
      out[#out + 1] = k .. " = "
    else
      out[#out + 1] = "[" .. scalar(k) .. "] = "
    end
    write_value(v[k], inner, out)
    out[#out + 1] = ",\n"
  end
  out[#out + 1] = indent .. "}"
end

-- A Lua chunk that returns `v` (tables, strings, numbers, booleans, boxed
-- integers); keys sorted, so equal values give equal text.
function M.serialize(v)
  local out = { "return " }
  write_value(v, "", out)
  out[#out + 1] = "\n"
  return table.concat(out)
end

-- Write `data` to `path` atomically: a temporary file beside it, flushed to
-- disk, then renamed over it (a reader sees the old file or the new one).
function M.write_atomic(path, data)
  local sys = require "kubelua.sys"
  local tmp = string.format("%s.tmp.%d", path, math.random(1, 2 ^ 30))
  local f, err = io.open(tmp, "wb")
  if not f then
    return nil, "EIO: write " .. tmp .. ": " .. tostring(err), "EIO"
  end
  local ok, werr = f:write(data)
  if ok then
    ok, werr = f:flush()
  end
  f:close()
  if ok then
    local synced, serr, scode = sys.fsync(tmp)
    if not synced then
      os.remove(tmp)
      return nil, serr, scode
    end
  end
  if not ok then
    os.remove(tmp)
    return nil, "EIO: write " .. tmp .. ": " .. tostring(werr), "EIO"
  end
  local renamed, rerr = os.rename(tmp, path)
  if not renamed then
    os.remove(tmp)
    return nil, "EIO: rename " .. tmp .. ": " .. tostring(rerr), "EIO"
  end
  sys.fsync(path:match("^(.*)/[^/]*$") or ".") -- the rename itself
  return true
end

-- store.read_file(path) -> text | nil, err, code
-- The whole file as a string, read at once and synchronously (meant for
-- small files): the counterpart of write_atomic. Errors: "ENOENT: read
-- PATH: why" (code ENOENT), EIO for any other failure.
function M.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then
    local code = tostring(err):match("No such file") and "ENOENT" or "EIO"
    return nil, code .. ": read " .. path .. ": " .. tostring(err), code
  end
  local text, rerr = f:read("*a")
  f:close()
  if not text then -- a folder opens, but does not read
    return nil, "EIO: read " .. path .. ": " .. tostring(rerr), "EIO"
  end
  return text
end

-- Read a Lua data file written by serialize: it runs with no environment at
-- all, so it can build tables and nothing else.
function M.read_data(path)
  local text, err, code = M.read_file(path)
  if not text then
    return nil, err, code
  end
  local chunk, perr = loadstring(text, "=" .. path)
  if not chunk then
    return nil, "EINVAL: " .. perr, "EINVAL"
  end
  setfenv(chunk, {})
  local ok, v = pcall(chunk)
  if not ok or type(v) ~= "table" then
    return nil, "EINVAL: " .. path .. ": " .. (ok and "does not return a table" or tostring(v)), "EINVAL"
  end
  return v
end

return M
