-- kubelua.opts: checking an options table against the types a function takes.
--
--   opts.check(o, { runtime = "table", period = "number", clock = "function|table" },
--              "kubelua.gc.new", level)
--
-- An unknown key, or a value whose type is not among the allowed ones, is a
-- programming mistake: error("WHERE: unknown option K") or
-- error("WHERE: option K must be a T, got U"), raised at `level` (as for
-- error(); count the frames from check's caller).
local M = {}

-- check(o, types, where, level): see above; returns o.
function M.check(o, types, where, level)
  level = (level or 1) + 1
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
