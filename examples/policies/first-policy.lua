-- first-policy.lua: the GC policy built in docs/first-policy.md.
--
-- kubelet's container GC keeps the newest dead container of each (pod,
-- container name), and removes the others. On a crash-looping pod, the one it
-- keeps is usually the latest restart, and the restart that first failed
-- (with the interesting log) is gone. This policy changes two things:
--   1. the newest *failed* container of each pod (exit code not 0) stays
--      for an hour after it exited, even when the default would remove it;
--   2. a container labelled debug.example.com/hold=true is never removed.
-- Everything else follows kubelet's rules.
--
--   kubelua gc --dry-run --policy examples/policies/first-policy.lua
--   kubelua gc --dry-run --from node.rec.lua --policy examples/policies/first-policy.lua
--
-- The file has the shape of every GC policy (kubelua.agent.policy): hooks
-- at the top level, kubelua.gc options under `options`. The agent loads it
-- from `policies: {gc: FILE}`, `kubelua gc --policy FILE` runs it once.
-- Spec: spec/first_policy_spec.lua.
local HOLD_LABEL = "debug.example.com/hold"
local KEEP_FAILED_FOR = 3600 -- seconds after it exited

-- Exit code and exit time of a dead container entry. The GC fetches them
-- when a keep rule is set (keep_labels below), so this asks the runtime
-- only when they are missing.
local function exit_of(c, ctx)
  if c.exit_code == nil then
    local st = ctx.policy.runtime:container_status{ container_id = c.id }
    if st and st.status then
      c.exit_code = st.status.exit_code
      local finished = (tonumber(st.status.finished_at) or 0) / 1e9
      c.finished = finished > 0 and finished or nil
    end
  end
  return c.exit_code, c.finished
end

-- The containers hook: given every candidate and the default choice, return
-- what is really removed.
local function keep_last_failed(candidates, chosen, ctx)
  -- the newest failed container of each pod that exited within the hour
  local keep = {}
  for _, c in ipairs(candidates) do
    local code, finished = exit_of(c, ctx)
    if code and code ~= 0 and finished and ctx.now - finished < KEEP_FAILED_FOR then
      local best = keep[c.pod_uid]
      if best == nil or finished > best.finished then
        keep[c.pod_uid] = c
      end
    end
  end
  local final = {}
  for _, c in ipairs(chosen) do
    if keep[c.pod_uid] ~= c then
      final[#final + 1] = c
    end
  end
  return final
end

return {
  containers = keep_last_failed,
  options = { keep_labels = { [HOLD_LABEL] = "true" } },
}
