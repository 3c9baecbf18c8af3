-- An example prober policy for `kubelua agent` (config: `policies: {prober: this file}`).
--
-- Returns a table with either or both of kubelua.prober's hooks:
--   wrap_probe(next, kind, spec, ctx) -> result, output, details
--   next_delay(w, period) -> seconds until the worker's next probe
--
-- This one backs off the probes of a crash-looping container (the period
-- doubles with each restart, up to 16 times) and leaves results alone.
return {
  next_delay = function(w, period)
    return period * 2 ^ math.min(w.restarts or 0, 4)
  end,
}
