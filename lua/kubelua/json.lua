-- kubelua.json: JSON encoding and decoding in plain Lua (no C library).
--
--   local json = require "kubelua.json"
--   json.encode({ b = 1, a = { 1, 2 } })          --> {"a":[1,2],"b":1}
--   json.encode(v, { indent = "  " })             -- pretty, one value per line
--   json.encode(json.array({}))                   --> []
--   local v, err = json.decode('{"n": 9007199254740993}')   -- v.n == 9007199254740993LL
--
-- Encoding rules (decided once, so output never changes silently):
--   * object keys are sorted (byte order), so equal tables give equal text;
--   * a table is an array when marked with json.array(t), or when it is not
--     empty and its keys are exactly 1..n; an empty unmarked table is {};
--     json.object(t) forces an object (numeric keys become strings);
--   * integers print exactly: numbers with no fraction up to 2^53 as digits,
--     LuaJIT boxed int64/uint64 (1234LL, 5ULL) as all their digits; other
--     numbers with the fewest digits (up to 17) that read back the same; NaN and infinities throw (JSON has
--     no spelling for them);
--   * strings: ", \ and control characters are escaped; bytes that are not
--     valid UTF-8 become U+FFFD (as Go's encoding/json does), so the output is
--     always valid JSON;
--   * json.null encodes as null; functions, userdata and threads throw, as do
--     cycles and keys that are not strings or numbers.
--
-- Decoding: objects become tables; arrays become tables marked with
-- json.array (so they encode back as arrays, empty ones too); null becomes
-- json.null; integers that a double cannot hold exactly become boxed int64
-- (or uint64) so they survive a round trip; other numbers are doubles. A
-- malformed document returns nil, "INVALID_ARGUMENT: json: <why> at byte N",
-- "INVALID_ARGUMENT".
local M = {}

local byte, char, sub, find, format, concat = string.byte, string.char, string.sub, string.find,
  string.format, table.concat
local floor, huge = math.floor, math.huge

local ffi_ok, ffi = pcall(require, "ffi")

M.null = setmetatable({}, { __tostring = function() return "null" end, __name = "json.null" })

-- array_mt, object_mt: the marker metatables of decoded arrays and objects
-- (json.array(t) and json.object(t) set them).
local array_mt = { __name = "json.array" }
local object_mt = { __name = "json.object" }
M.array_mt, M.object_mt = array_mt, object_mt

-- Mark t (a new table when nil) as an array; returns it.
function M.array(t)
  return setmetatable(t or {}, array_mt)
end

-- Mark t (a new table when nil) as an object; returns it.
function M.object(t)
  return setmetatable(t or {}, object_mt)
end

-- is_array(t) -> true when t carries the array marker.
function M.is_array(t)
  return getmetatable(t) == array_mt
end

local escapes = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r",
  ["\t"] = "\\t",
}
for i = 0, 31 do
  local c = char(i)
  escapes[c] = escapes[c] or format("\\u%04x", i)
end
escapes["\127"] = "\\u007f"

-- Replace invalid UTF-8 sequences by U+FFFD.
local function fix_utf8(s)
  local out, n, i, len = {}, 0, 1, #s
  local last = 1
  while i <= len do
    local c = byte(s, i)
    local need, min
    if c < 0x80 then
      need = 0
    elseif c >= 0xC2 and c <= 0xDF then
      need, min = 1, 0x80
    elseif c >= 0xE0 and c <= 0xEF then
      need, min = 2, 0x800
    elseif c >= 0xF0 and c <= 0xF4 then
      need, min = 3, 0x10000
    else
      need = -1
    end
    local ok = need >= 0
    local cp = 0
    if need > 0 then
      cp = c % (2 ^ (6 - need))
      for k = 1, need do
        local cc = byte(s, i + k)
        if not cc or cc < 0x80 or cc > 0xBF then
          ok = false
          break
        end
        cp = cp * 64 + (cc - 0x80)
      end
      if ok and (cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF)) then
        ok = false
      end
    end
    if ok then
      i = i + need + 1
    else
      n = n + 1
      out[n] = sub(s, last, i - 1)
      n = n + 1
      out[n] = "\239\191\189"
      i = i + 1
      last = i
    end
  end
  if n == 0 then
    return s
  end
  out[n + 1] = sub(s, last)
  return concat(out)
end

-- quote(s) -> s as a JSON string literal, quotes included (invalid UTF-8 replaced).
local function quote(s)
  if find(s, "[\128-\255]") then
    s = fix_utf8(s)
  end
  if find(s, '[%c"\\]') then
    s = s:gsub('[%c"\\]', escapes)
  end
  return '"' .. s .. '"'
end
M.quote = quote

local function number(v)
  if v ~= v or v == huge or v == -huge then
    error("kubelua.json: cannot encode " .. tostring(v) .. " (JSON has no NaN or infinity)", 0)
  end
  if floor(v) == v and v >= -2 ^ 53 and v <= 2 ^ 53 then
    return format("%.0f", v)
  end
  for digits = 15, 16 do -- the shortest text that reads back as the same double
    local s = format("%." .. digits .. "g", v)
    if tonumber(s) == v then
      return s
    end
  end
  return format("%.17g", v)
end

local function is_int64(v)
  return ffi_ok and type(v) == "cdata" and (ffi.istype("int64_t", v) or ffi.istype("uint64_t", v))
end

-- Exact decimal digits of a boxed 64-bit integer.
local function int64_text(v)
  return (tostring(v):gsub("U?LL$", ""))
end
M.int64_text = int64_text

local function kind(t)
  local mt = getmetatable(t)
  if mt == array_mt then
    return "array"
  elseif mt == object_mt then
    return "object"
  end
  local n = #t
  if n == 0 then
    return "object"
  end
  local count = 0
  for _ in pairs(t) do
    count = count + 1
    if count > n then
      return "object"
    end
  end
  return "array"
end

local function key_text(k)
  local tk = type(k)
  if tk == "string" then
    return k
  elseif tk == "number" then
    return number(k)
  elseif is_int64(k) then
    return int64_text(k)
  end
  error("kubelua.json: cannot encode a " .. tk .. " key", 0)
end

local encode_value

local function encode_table(t, out, n, indent, depth, seen)
  if seen[t] then
    error("kubelua.json: cannot encode a table that contains itself", 0)
  end
  seen[t] = true
  local pad, pad_in, colon
  if indent then
    pad = "\n" .. indent:rep(depth)
    pad_in = pad .. indent
    colon = ": "
  else
    colon = ":"
  end
  -- An array is written as its items t[1..count], an object as its keys
  -- (sorted by their text) with their values; the punctuation is shared.
  local keys, texts, count
  if kind(t) == "array" then
    count = #t
  else
    keys, texts = {}, {}
    for k in pairs(t) do
      local kt = key_text(k)
      keys[#keys + 1] = kt
      texts[kt] = k
    end
    table.sort(keys)
    count = #keys
  end
  if count == 0 then
    n = n + 1
    out[n] = keys and "{}" or "[]"
  else
    n = n + 1
    out[n] = keys and "{" or "["
    for i = 1, count do
      if i > 1 then
        n = n + 1
        out[n] = ","
      end
      if indent then
        n = n + 1
        out[n] = pad_in
      end
      local v
      if keys then
        local kt = keys[i]
        n = n + 1
        out[n] = quote(kt)
        n = n + 1
        out[n] = colon
        v = t[texts[kt]]
      else
        v = t[i]
      end
      n = encode_value(v, out, n, indent, depth + 1, seen)
    end
    if indent then
      n = n + 1
      out[n] = pad
    end
    n = n + 1
    out[n] = keys and "}" or "]"
  end
  seen[t] = nil
  return n
end

encode_value = function(v, out, n, indent, depth, seen)
  local tv = type(v)
  local s
  if tv == "string" then
    s = quote(v)
  elseif tv == "number" then
    s = number(v)
  elseif tv == "boolean" then
    s = v and "true" or "false"
  elseif v == nil or v == M.null then
    s = "null"
  elseif tv == "table" then
    return encode_table(v, out, n, indent, depth, seen)
  elseif is_int64(v) then
    s = int64_text(v)
  else
    error("kubelua.json: cannot encode a " .. tv, 0)
  end
  n = n + 1
  out[n] = s
  return n
end

-- json.encode(value, {indent = "  "}) -> string. Throws on what JSON
-- cannot represent (see the header).
function M.encode(v, opts)
  local indent = opts and opts.indent
  if indent == true then
    indent = "  "
  end
  local out = {}
  local n = encode_value(v, out, 0, indent or nil, 0, {})
  return concat(out, "", 1, n)
end

-- ---------------------------------------------------------------- decoding

local function decode_error(msg, pos)
  error({ json_error = format("INVALID_ARGUMENT: json: %s at byte %d", msg, pos) }, 0)
end

local function skip(s, pos)
  local _, e = find(s, "^[ \t\r\n]*", pos)
  return e + 1
end

local function utf8_char(cp)
  if cp < 0x80 then
    return char(cp)
  elseif cp < 0x800 then
    return char(0xC0 + floor(cp / 64), 0x80 + cp % 64)
  elseif cp < 0x10000 then
    return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64, 0x80 + floor(cp / 64) % 64,
    0x80 + cp % 64)
end

local unescape = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function decode_string(s, pos)
  -- pos is just after the opening quote
  local parts, n = {}, 0
  local i = pos
  while true do
    local a, b = find(s, '^[^"\\%c]+', i)
    if a then
      n = n + 1
      parts[n] = sub(s, a, b)
      i = b + 1
    end
    local c = sub(s, i, i)
    if c == '"' then
      return concat(parts, "", 1, n), i + 1
    elseif c == "\\" then
      local e = sub(s, i + 1, i + 1)
      if unescape[e] then
        n = n + 1
        parts[n] = unescape[e]
        i = i + 2
      elseif e == "u" then
        local hex = s:match("^%x%x%x%x", i + 2)
        if not hex then
          decode_error("bad \\u escape", i)
        end
        local cp = tonumber(hex, 16)
        i = i + 6
        if cp >= 0xD800 and cp <= 0xDBFF then
          local lo = s:match("^\\u(%x%x%x%x)", i)
          lo = lo and tonumber(lo, 16)
          if lo and lo >= 0xDC00 and lo <= 0xDFFF then
            cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
            i = i + 6
          else
            cp = 0xFFFD
          end
        elseif cp >= 0xDC00 and cp <= 0xDFFF then
          cp = 0xFFFD
        end
        n = n + 1
        parts[n] = utf8_char(cp)
      else
        decode_error("bad escape", i)
      end
    elseif c == "" then
      decode_error("unterminated string", pos - 1)
    else
      decode_error("control character in string", i)
    end
  end
end

local INT64_MAX = ffi_ok and 9223372036854775807ULL
local INT64_MIN_ABS = ffi_ok and 9223372036854775808ULL

-- An integer beyond a double's exact range, kept exactly in a boxed int64
-- (or uint64 when positive and above int64's range); nil when it does not
-- fit in 64 bits either (the double is used then).
local function big_integer(text)
  local neg = sub(text, 1, 1) == "-"
  local digits = neg and sub(text, 2) or text
  if #digits > 20 or (#digits == 20 and digits > "18446744073709551615") then
    return nil
  end
  local u = 0ULL
  for i = 1, #digits do
    u = u * 10 + (byte(digits, i) - 48)
  end
  if neg then
    if u > INT64_MIN_ABS then
      return nil
    end
    return ffi.cast("int64_t", 0ULL - u)
  elseif u <= INT64_MAX then
    return ffi.cast("int64_t", u)
  end
  return u
end

local function decode_number(s, pos)
  local _, e = find(s, "^-?", pos)
  local a, b = find(s, "^0", e + 1)
  if not a then
    a, b = find(s, "^[1-9]%d*", e + 1)
  end
  if not a then
    decode_error("bad number", pos)
  end
  local integer = true
  e = b
  a, b = find(s, "^%.%d+", e + 1)
  if a then
    integer, e = false, b
  elseif sub(s, e + 1, e + 1) == "." then
    decode_error("bad number", pos)
  end
  a, b = find(s, "^[eE][-+]?%d+", e + 1)
  if a then
    integer, e = false, b
  elseif find(s, "^[eE]", e + 1) then
    decode_error("bad number", pos)
  end
  local text = sub(s, pos, e)
  local v = tonumber(text)
  if integer and ffi_ok and (v >= 2 ^ 53 or v <= -2 ^ 53) then
    v = big_integer(text) or v
  end
  return v, e + 1
end

local decode_value

-- After a member of an array or object (pos just past its value): true and
-- the position after `close` when it ends there, else false and the
-- position after the comma; anything else is an error.
local function member_end(s, pos, close)
  pos = skip(s, pos)
  local c = sub(s, pos, pos)
  if c == close then
    return true, pos + 1
  elseif c ~= "," then
    decode_error("expected , or " .. close, pos)
  end
  return false, pos + 1
end

local function decode_array(s, pos)
  local t, n = setmetatable({}, array_mt), 0
  pos = skip(s, pos)
  if sub(s, pos, pos) == "]" then
    return t, pos + 1
  end
  while true do
    local v
    v, pos = decode_value(s, pos)
    n = n + 1
    t[n] = v
    local last
    last, pos = member_end(s, pos, "]")
    if last then
      return t, pos
    end
  end
end

local function decode_object(s, pos)
  local t = {}
  pos = skip(s, pos)
  if sub(s, pos, pos) == "}" then
    return t, pos + 1
  end
  while true do
    if sub(s, pos, pos) ~= '"' then
      decode_error("expected a string key", pos)
    end
    local k
    k, pos = decode_string(s, pos + 1)
    pos = skip(s, pos)
    if sub(s, pos, pos) ~= ":" then
      decode_error("expected :", pos)
    end
    local v
    v, pos = decode_value(s, pos + 1)
    t[k] = v
    local last
    last, pos = member_end(s, pos, "}")
    if last then
      return t, pos
    end
    pos = skip(s, pos)
  end
end

local literals = { t = { "true", true }, f = { "false", false }, n = { "null", M.null } }

decode_value = function(s, pos)
  pos = skip(s, pos)
  local c = sub(s, pos, pos)
  if c == "{" then
    return decode_object(s, pos + 1)
  elseif c == "[" then
    return decode_array(s, pos + 1)
  elseif c == '"' then
    return decode_string(s, pos + 1)
  elseif c == "-" or find(c, "^%d") then
    return decode_number(s, pos)
  elseif literals[c] then
    local word, v = literals[c][1], literals[c][2]
    if sub(s, pos, pos + #word - 1) ~= word then
      decode_error("unexpected " .. format("%q", sub(s, pos, pos + 4)), pos)
    end
    return v, pos + #word
  elseif c == "" then
    decode_error("unexpected end of input", pos)
  end
  decode_error("unexpected character " .. format("%q", c), pos)
end

-- json.decode(text) -> value | nil, "INVALID_ARGUMENT: json: ...", "INVALID_ARGUMENT"
function M.decode(s)
  if type(s) ~= "string" then
    error("kubelua.json.decode: expects a string, got " .. type(s), 2)
  end
  local ok, v, pos = pcall(decode_value, s, 1)
  if not ok then
    if type(v) == "table" and v.json_error then
      return nil, v.json_error, "INVALID_ARGUMENT"
    end
    error(v, 0)
  end
  pos = skip(s, pos)
  if pos <= #s then
    return nil, format("INVALID_ARGUMENT: json: trailing data at byte %d", pos), "INVALID_ARGUMENT"
  end
  return v
end

return M
