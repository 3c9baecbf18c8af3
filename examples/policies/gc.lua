-- An example GC policy for `kubelua agent` (config: `policies: {gc: this file}`).
--
-- Returns a table (every key optional):
--   options     kubelua.gc options: min_age, max_per_pod_container, max_containers,
--               exited_grace, keep_failed, keep_labels, kill_grace, concurrency
--   containers, sandboxes, logs
--               hooks(candidates, chosen, ctx) -> the final list to remove
--               (see kubelua.gc.hook); returning `chosen` keeps the default
--
-- This one keeps two dead containers per pod container instead of kubelet's
-- one, keeps containers labelled keep=true, and never removes a container
-- that failed less than 10 minutes ago (to leave its logs for a look).
-- The agent re-reads it on SIGHUP; the file must be owned by root (or the
-- agent's user) and not writable by group or others.
return {
  options = {
    max_per_pod_container = 2,
    keep_labels = { keep = "true" },
  },
  containers = function(candidates, chosen, ctx)
    local out = {}
    for _, c in ipairs(chosen) do
      local failed_recently = c.exit_code and c.exit_code ~= 0 and c.finished
        and ctx.now - c.finished < 600
      if not failed_recently then
        out[#out + 1] = c
      end
    end
    return out
  end,
}
