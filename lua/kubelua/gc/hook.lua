-- kubelua.gc.hook: running a user's policy hook for one GC step.
--
-- A hook is `function(candidates, chosen, ctx) return final end`:
--   candidates  everything the step could consider (tables; see each step)
--   chosen      what the default policy would remove (a subset of candidates,
--               each with `rule`)
--   ctx         { step =, now =, sources_ready =, policy = the GC's options, ... }
-- It returns the final list: candidate tables or their keys (container and
-- sandbox IDs, log folder names, image IDs). An entry that is not a
-- candidate, or that the step may never remove (a running container, an
-- active sandbox, an image in use or pinned), is an error. Entries keep the
-- default's rule when the default chose them too, else `rule` from the entry
-- or "policy".
--
-- A hook that throws, or returns something else than a list, is a policy
-- error: the whole run deletes nothing and reports it with its traceback.
-- report() hands a finished run to the collector's on_result option.
local M = {}

local function traceback(e)
  return debug.traceback(tostring(e), 2)
end

-- run(step, fn, candidates, chosen, ctx, opts) -> final | nil, err
--   opts.key(entry) -> the entry's key (default entry.id)
--   opts.forbidden(entry) -> nil or why it may not be removed
function M.run(step, fn, candidates, chosen, ctx, opts)
  local key = opts and opts.key or function(e)
    return e.id
  end
  local forbidden = opts and opts.forbidden
  ctx.step = step
  local ok, res = xpcall(fn, traceback, candidates, chosen, ctx)
  if not ok then
    return nil, string.format("POLICY: %s hook failed: %s", step, res)
  end
  if type(res) ~= "table" then
    return nil, string.format("POLICY: %s hook returned %s, not a list", step, type(res))
  end
  -- a map or a list with holes would silently drop entries: refuse it
  local n, count = #res, 0
  for k in pairs(res) do
    if type(k) ~= "number" or k < 1 or k > n or k ~= math.floor(k) then
      return nil, string.format("POLICY: %s hook returned a table with key %s, not a list", step,
        type(k) == "string" and string.format("%q", k) or tostring(k))
    end
    count = count + 1
  end
  if count ~= n then
    return nil, string.format("POLICY: %s hook returned a table with holes (%d entries, length %d), not a list", step,
      count, n)
  end
  local by_key, default = {}, {}
  for _, e in ipairs(candidates) do
    by_key[key(e)] = e
  end
  for _, e in ipairs(chosen) do
    default[e] = e.rule
  end
  local final, seen = {}, {}
  for i, x in ipairs(res) do
    local k = type(x) == "table" and key(x) or x
    local e = by_key[k]
    if e == nil then
      return nil, string.format("POLICY: %s hook: entry %d (%s) is not a candidate", step, i, tostring(k))
    end
    local why = forbidden and forbidden(e)
    if why then
      return nil, string.format("POLICY: %s hook: %s may not be removed: %s", step, tostring(k), why)
    end
    if not seen[e] then
      seen[e] = true
      local rule = default[e]
      if not rule then
        rule = type(x) == "table" and x.rule or "policy"
      end
      e.rule = rule
      final[#final + 1] = e
    end
  end
  -- only the final entries carry a rule (whatever the hook did to others)
  for _, e in ipairs(candidates) do
    if not seen[e] then
      e.rule = nil
    end
  end
  return final
end

-- report(g, run, opts) -> run(g, opts)'s res, err, code, partial. A run that
-- was not a dry run, failed ones included (their partial result), is handed
-- to g.on_result (the option of kubelua.gc and kubelua.image_gc); an error
-- thrown there is ignored.
function M.report(g, run, opts)
  local res, err, code, partial = run(g, opts)
  local r = res or partial
  if g.on_result and r and not r.dry_run then
    pcall(g.on_result, r)
  end
  return res, err, code, partial
end

return M
