-- kubelua.pretty: readable, deterministic rendering of Lua values.
--
-- Keys are sorted (numbers first, then strings), nesting is cut at `depth`
-- (default 12), a table met again on the current path prints as <cycle>,
-- and 64-bit boxed integers print exactly (123456789012345678LL).
local M = {}

local function is_ident(s)
  return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil
end

-- pretty.key_less(a, b) -> boolean
-- The order of table keys wherever kubelua writes a table deterministically
-- (here, kubelua.gc.store and kubelua.pod's canonical text): by type name
-- first (numbers before strings), then by value. Like `<`, it throws for two
-- keys of a type `<` cannot compare.
function M.key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    return ta < tb
  end
  return a < b
end
local key_less = M.key_less

-- key_less, with keys `<` cannot compare (booleans, tables) ordered by
-- their tostring.
local function any_less(a, b)
  local ta = type(a)
  if ta == type(b) and ta ~= "number" and ta ~= "string" then
    return tostring(a) < tostring(b)
  end
  return key_less(a, b)
end

-- pretty.sorted_keys(t) -> array of t's keys
-- The keys in key_less order; those of a type `<` cannot compare (booleans,
-- tables) go by type name too, then by tostring, so this never throws.
function M.sorted_keys(t)
  local keys, n, mixed = {}, 0, false
  for k in pairs(t) do
    n = n + 1
    keys[n] = k
    mixed = mixed or type(k) ~= "string"
  end
  if mixed then
    table.sort(keys, any_less)
  else
    table.sort(keys) -- all strings: the same order, without a Lua comparator
  end
  return keys
end
local sorted_keys = M.sorted_keys

local function scalar(v)
  local tv = type(v)
  if tv == "string" then
    return string.format("%q", v):gsub("\\\n", "\\n")
  elseif tv == "number" then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then
      return string.format("%d", v)
    end
    return string.format("%.17g", v)
  end
  return tostring(v)
end

local function render(v, indent, depth, max_depth, seen, out)
  if type(v) ~= "table" then
    out[#out + 1] = scalar(v)
    return
  end
  if seen[v] then
    out[#out + 1] = "<cycle>"
    return
  end
  if depth >= max_depth then
    out[#out + 1] = "{...}"
    return
  end
  local keys = sorted_keys(v)
  if #keys == 0 then
    out[#out + 1] = "{}"
    return
  end
  seen[v] = true
  local n = #v
  -- Short tables of scalars fit on one line.
  local simple, parts = #keys <= 8, {}
  if simple then
    for _, k in ipairs(keys) do
      local x = v[k]
      if type(x) == "table" then
        simple = false
        break
      end
      local ks = ""
      if not (type(k) == "number" and k >= 1 and k <= n and k == math.floor(k)) then
        ks = (is_ident(k) and k or "[" .. scalar(k) .. "]") .. " = "
      end
      parts[#parts + 1] = ks .. scalar(x)
    end
  end
  if simple then
    local line = "{ " .. table.concat(parts, ", ") .. " }"
    if #line + #indent <= 100 then
      out[#out + 1] = line
      seen[v] = nil
      return
    end
  end
  local inner = indent .. "  "
  out[#out + 1] = "{\n"
  for _, k in ipairs(keys) do
    out[#out + 1] = inner
    if not (type(k) == "number" and k >= 1 and k <= n and k == math.floor(k)) then
      out[#out + 1] = (is_ident(k) and k or "[" .. scalar(k) .. "]") .. " = "
    end
    render(v[k], inner, depth + 1, max_depth, seen, out)
    out[#out + 1] = ",\n"
  end
  out[#out + 1] = indent .. "}"
  seen[v] = nil
end

-- pretty.format(value, {depth = 12}) -> string
function M.format(v, opts)
  local out = {}
  render(v, "", 0, (opts and opts.depth) or 12, {}, out)
  return table.concat(out)
end

return M
