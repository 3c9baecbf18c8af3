-- kubelua.k8s.json: JSON for the Kubernetes API, over Debian's lua-cjson
-- (package lua-cjson, 2.1.0), with the same care for numbers as the
-- protobuf converter.
--
--   local json = require "kubelua.k8s.json"
--   local obj, err = json.decode(text)     -- value | nil, "invalid JSON: ..."
--   local text, err = json.encode(value)   -- string | nil, "cannot encode ...: ..."
--
-- What a script gets from JSON (decode):
--   object -> table; a member whose value is null is left out (for API
--             objects null and absent mean the same; this keeps `if x.f then`
--             honest, since cjson's null is a true value)
--   array  -> table 1..n; a null element is json.null; [] and {} both give an
--             empty table
--   string, true/false -> string, boolean
--   number -> a Lua number, exact for every integer of magnitude <= 2^53.
--             An integer literal beyond that is a LuaJIT boxed integer
--             (int64_t, or uint64_t above 2^63-1), never a rounded double;
--             beyond 64 bits it stays a decimal string. (cjson itself has no
--             option for this: Debian's 2.1.0 offers encode_number_precision
--             up to 14 digits, decode_invalid_numbers, encode_sparse_array
--             and depth limits, and no decode_big_numbers_as_strings. Long
--             integer literals are therefore spotted in the text first: a
--             cheap search for 16 digits in a row, and only when that hits,
--             a scan that skips strings and marks those literals for the
--             conversion.) Fractions and exponents are doubles, as in Go.
--             Measured on a 1.3 MB PodList (500 pods): cjson alone 22 ms;
--             this decode 26 ms without nulls or long integers, 30 ms with
--             nulls to drop, about 75 ms when a long integer forces the scan.
--   resourceVersion is a string in the API and stays a string.
--
-- What JSON gets from a script (encode):
--   numbers: integers exactly as digits (cjson would write 1e+14 or round
--   to 14 digits), other numbers in the shortest form that reads back
--   equal; NaN and infinities are refused. Boxed int64/uint64 as digits.
--   json.null is null. A table is an object unless it is a sequence; an
--   empty table is {} unless made with json.array() ([]).
-- Strings are bytes (cjson neither checks nor changes UTF-8). The output
-- never holds "\/" (cjson's escape for /), so it is valid YAML 1.1 too.
local M = {}

local ok_cjson, cjson = pcall(require, "cjson")
if not ok_cjson then
  -- Debian's path for Lua 5.1 C modules; LuaJIT's default cpath has it, an
  -- embedder's may not.
  package.cpath = package.cpath .. ";/usr/lib/x86_64-linux-gnu/lua/5.1/?.so"
  cjson = require "cjson"
end
local ffi = require "ffi"

local cj = cjson.new() -- a private instance: settings do not leak to other users
cj.decode_invalid_numbers(false) -- no hex, NaN or Infinity literals
cj.encode_invalid_numbers(false)
cj.decode_max_depth(1000)
cj.encode_max_depth(1000)

M.null = cjson.null
M.array_mt = { __name = "kubelua.k8s.json.array" } -- marks decoded arrays, so they encode back as arrays

-- json.array(t) -> t marked as an array (so an empty one encodes as [])
function M.array(t)
  return setmetatable(t or {}, M.array_mt)
end

-- Raw JSON text travels through cjson inside a string with this prefix;
-- cjson writes the NUL as \u0000. Input holding the prefix is refused.
local MARK = "\0kubelua-json:"
local MARK_ESCAPED = "\\u0000kubelua-json:"
local MARK_PATTERN = '"\\u0000kubelua%-json:([^"]*)"'

local TWO53 = 2 ^ 53
local UINT64_MAX = "18446744073709551615"
local INT64_MIN_ABS = "9223372036854775808"

-- Compare two decimal digit strings without leading zeros.
local function digits_gt(a, b)
  if #a ~= #b then
    return #a > #b
  end
  return a > b
end

-- A long integer literal -> number, boxed int64/uint64, or the digits.
local function big_integer(lit)
  local neg = lit:byte(1) == 45
  local d = (neg and lit:sub(2) or lit):gsub("^0+(%d)", "%1")
  local v = tonumber(lit)
  if math.abs(v) < TWO53 then
    return v -- 16 digits can still be small
  end
  if v == TWO53 or v == -TWO53 then
    if d == "9007199254740992" then
      return v
    end
  end
  if (neg and digits_gt(d, INT64_MIN_ABS)) or (not neg and digits_gt(d, UINT64_MAX)) then
    return lit -- beyond 64 bits: exact digits rather than a rounded double
  end
  local u = 0ULL
  for i = 1, #d do
    u = u * 10 + (d:byte(i) - 48)
  end
  if neg then
    return -ffi.cast("int64_t", u)
  end
  if u <= 9223372036854775807ULL then
    return ffi.cast("int64_t", u)
  end
  return u
end

-- Whether the text holds 16 digits in a row somewhere (a JIT-compiled byte
-- loop: a Lua pattern doing the same costs as much as cjson's whole decode).
local function has_long_digit_run(text)
  local p = ffi.cast("const uint8_t *", text)
  local run = 0
  for i = 0, #text - 1 do
    local c = p[i]
    if c >= 48 and c <= 57 then
      run = run + 1
      if run >= 16 then
        return true
      end
    else
      run = 0
    end
  end
  return false
end

-- Rewrite integer literals of 16 digits or more (outside strings) as marked
-- strings, for fix_up to convert. Returns the text unchanged when none.
local function mark_big_integers(text)
  local out, n, last = {}, 0, 1
  local i = 1
  while true do
    local s = text:find('["%-%d]', i)
    if not s then
      break
    end
    if text:byte(s) == 34 then -- skip a string, escapes included
      local j = s + 1
      while true do
        local q = text:find('["\\]', j)
        if not q then
          return text -- unterminated: cjson reports it
        end
        if text:byte(q) == 92 then
          j = q + 2
        else
          j = q + 1
          break
        end
      end
      i = j
    else
      local e = text:match("^%-?%d+()", s)
      if not e then
        i = s + 1
      else
        local nx = text:byte(e)
        local ndigits = e - s - (text:byte(s) == 45 and 1 or 0)
        if ndigits >= 16 and nx ~= 46 and nx ~= 101 and nx ~= 69 then -- not . e E
          out[n + 1] = text:sub(last, s - 1)
          out[n + 2] = '"' .. MARK_ESCAPED .. text:sub(s, e - 1) .. '"'
          n = n + 2
          last = e
        end
        i = text:match("^[%d.eE+%-]*()", e)
      end
    end
  end
  if n == 0 then
    return text
  end
  out[n + 1] = text:sub(last)
  return table.concat(out)
end

-- Drop null members of objects and turn marked strings into numbers.
local function fix_up(v, depth)
  for k, x in pairs(v) do
    if x == cjson.null then
      if type(k) == "string" then
        v[k] = nil
      end
    elseif type(x) == "table" then
      fix_up(x, depth + 1)
    elseif type(x) == "string" and x:byte(1) == 0 and x:sub(1, #MARK) == MARK then
      v[k] = big_integer(x:sub(#MARK + 1))
    end
  end
end

-- decode(text) -> value | nil, "invalid JSON: ..."
function M.decode(text)
  if type(text) ~= "string" then
    error("kubelua.k8s.json: decode expects a string, got " .. type(text), 2)
  end
  local marked = false
  if has_long_digit_run(text) then
    if text:find(MARK_ESCAPED, 1, true) then
      return nil, "invalid JSON: holds the decoder's reserved marker \\u0000kubelua-json:"
    end
    local t2 = mark_big_integers(text)
    marked = t2 ~= text
    text = t2
  end
  local ok, v = pcall(cj.decode, text)
  if not ok then
    return nil, "invalid JSON: " .. tostring(v)
  end
  if type(v) == "table" then
    if marked or text:find("null", 1, true) then
      fix_up(v, 0)
    end
  elseif v == cjson.null then
    return M.null
  elseif marked and type(v) == "string" and v:sub(1, #MARK) == MARK then
    v = big_integer(v:sub(#MARK + 1))
  end
  return v
end

-- The shortest decimal form that reads back as the same double.
local function float_text(x)
  for p = 14, 17 do
    local s = string.format("%." .. p .. "g", x)
    if tonumber(s) == x then
      return s
    end
  end
  return string.format("%.17g", x)
end

local function reserved(s)
  return s:byte(1) == 0 and s:sub(1, #MARK) == MARK
end

-- A copy of v where cjson would lose something: numbers it would round,
-- boxed integers, empty arrays. Shares what needs no change.
local function prepare(v, depth, state)
  local tv = type(v)
  if tv == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      error("NaN or infinity", 0)
    end
    if v == math.floor(v) then
      if v > -1e14 and v < 1e14 then
        return v
      end
      state.marked = true
      return MARK .. string.format("%.0f", v)
    end
    state.marked = true
    return MARK .. float_text(v)
  elseif tv == "string" then
    if reserved(v) then
      error("a string starts with the encoder's reserved marker", 0)
    end
    return v
  elseif tv == "cdata" then
    if ffi.istype("int64_t", v) or ffi.istype("uint64_t", v) then
      state.marked = true
      return MARK .. (tostring(v):gsub("U?LL$", ""))
    end
    error("cdata of type " .. tostring(ffi.typeof(v)), 0)
  elseif tv == "table" then
    if depth > 1000 then
      error("nesting deeper than 1000 (a cycle?)", 0)
    end
    if next(v) == nil and getmetatable(v) == M.array_mt then
      state.marked = true
      return MARK .. "[]"
    end
    local copy
    for k, x in pairs(v) do
      if type(k) == "string" and reserved(k) then
        error("a key starts with the encoder's reserved marker", 0)
      end
      local nx = prepare(x, depth + 1, state)
      if nx ~= x then
        if not copy then
          copy = {}
          for k2, x2 in pairs(v) do
            copy[k2] = x2
          end
        end
        copy[k] = nx
      end
    end
    return copy or v
  end
  return v
end

-- encode(value) -> string | nil, "cannot encode ...: ..."
function M.encode(v)
  local state = { marked = false }
  local ok, p = pcall(prepare, v, 0, state)
  if not ok then
    return nil, "cannot encode JSON: " .. tostring(p)
  end
  local ok2, s = pcall(cj.encode, p)
  if not ok2 then
    return nil, "cannot encode JSON: " .. tostring(s)
  end
  if state.marked then
    s = s:gsub(MARK_PATTERN, "%1")
  end
  -- cjson writes / as \/: valid JSON, but not valid YAML 1.1, and Go's YAML
  -- parsers (kubectl reading a kubeconfig) reject it. Every / in cjson's
  -- output follows its own escaping backslash, so this is exact.
  return (s:gsub("\\/", "/"))
end

return M
