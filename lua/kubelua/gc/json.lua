-- kubelua.gc.json: a small JSON encoder for GC plans and reports.
--
--   local json = require "kubelua.gc.json"
--   json.encode({ a = 1, list = json.array({}) })  --> {"a":1,"list":[]}
--
-- Tables with keys 1..n are arrays; other tables are objects with sorted
-- keys (so equal values give equal text). An empty table is an object
-- unless marked with json.array. Boxed 64-bit integers are written as exact
-- numbers; NaN and infinities as null. Functions and cycles are errors.
local M = {}

local ARRAY = {}
M.ARRAY = ARRAY

function M.array(t)
  return setmetatable(t or {}, ARRAY)
end

local ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r",
  ["\t"] = "\\t" }

local function str(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESC[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function is_array(t)
  if getmetatable(t) == ARRAY then
    return true
  end
  local n = #t
  if n == 0 then
    return false
  end
  local count = 0
  for _ in pairs(t) do
    count = count + 1
  end
  return count == n
end

local function encode(v, out, seen)
  local tv = type(v)
  if tv == "nil" then
    out[#out + 1] = "null"
  elseif tv == "boolean" then
    out[#out + 1] = tostring(v)
  elseif tv == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      out[#out + 1] = "null"
    elseif v == math.floor(v) and math.abs(v) < 2 ^ 53 then
      out[#out + 1] = string.format("%d", v)
    else
      out[#out + 1] = string.format("%.17g", v)
    end
  elseif tv == "string" then
    out[#out + 1] = str(v)
  elseif tv == "cdata" then
    local s = tostring(v):match("^(%-?%d+)U?LL$")
    if not s then
      error("kubelua.gc.json: cannot encode " .. tostring(v), 0)
    end
    out[#out + 1] = s
  elseif tv == "table" then
    if seen[v] then
      error("kubelua.gc.json: cycle", 0)
    end
    seen[v] = true
    if is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then
          out[#out + 1] = ","
        end
        encode(v[i], out, seen)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do
        keys[#keys + 1] = tostring(k)
      end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then
          out[#out + 1] = ","
        end
        local x = v[k]
        if x == nil then
          x = v[tonumber(k)]
        end
        out[#out + 1] = str(k)
        out[#out + 1] = ":"
        encode(x, out, seen)
      end
      out[#out + 1] = "}"
    end
    seen[v] = nil
  else
    error("kubelua.gc.json: cannot encode a " .. tv, 0)
  end
end

function M.encode(v)
  local out = {}
  encode(v, out, {})
  return table.concat(out)
end

return M
