-- kubelua.opts: checking an options table against the types a function takes.
--
--   opts.check(o, { runtime = "table", period = "number", clock = "function|table" },
--              "kubelua.gc.new", level)
--
-- An options value that is not a table, an unknown key, or a value whose
-- type is not among the allowed ones, is a programming mistake:
-- error("WHERE: options must be a table, got T"),
-- error("WHERE: unknown option K") or
-- error("WHERE: option K must be a T, got U"), raised at `level` as for
-- error(): 1 (the default) blames the function that called check, 2 its
-- caller, and so on; 0 adds no position. Required options and checks of
-- values beyond their type stay with the caller.
local M = {}

-- check(o, types, where, level): see above; returns o.
function M.check(o, types, where, level)
  level = level == 0 and 0 or (level or 1) + 1
  if type(o) ~= "table" then
    error(string.format("%s: options must be a table, got %s", where, type(o)), level)
  end
  for k, v in pairs(o) do
    local want = types[k]
    if not want then
      error(where .. ": unknown option " .. tostring(k), level)
    end
    if not want:find(type(v), 1, true) then
      error(string.format("%s: option %s must be a %s, got %s", where, k, want, type(v)), level)
    end
  end
  return o
end

return M
