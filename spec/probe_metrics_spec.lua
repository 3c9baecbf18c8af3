-- kubelua.metrics: counters, gauges, histograms with labels, and the
-- Prometheus text exposition format.
local t = require "spec.t"
local metrics = require "kubelua.metrics"

t.describe("metrics registry", function()
  t.it("counters count per label set and render sorted, escaped", function()
    local reg = metrics.registry()
    local c = metrics.counter{ registry = reg, name = "jobs_total", help = "Jobs\ndone.", labels = { "kind", "path" } }
    c:inc{ kind = "b", path = 'C:\\x "y"\n' }
    c:inc({ kind = "a" }, 2)
    c:inc({ kind = "a" }, 0.5)
    t.eq(c:get{ kind = "a" }, 2.5)
    t.eq(metrics.render(reg), table.concat({
      "# HELP jobs_total Jobs\\ndone.",
      "# TYPE jobs_total counter",
      'jobs_total{kind="a",path=""} 2.5',
      'jobs_total{kind="b",path="C:\\\\x \\"y\\"\\n"} 1',
      "",
    }, "\n"))
  end)
  t.it("gauges set, inc and dec; a metric without labels has no braces", function()
    local reg = metrics.registry()
    local g = metrics.gauge{ registry = reg, name = "workers", help = "Workers." }
    g:set(nil, 5)
    g:inc()
    g:dec(nil, 2)
    t.eq(g:get(), 4)
    t.match(metrics.render(reg), "\nworkers 4\n")
  end)
  t.it("histograms: cumulative buckets, +Inf, sum and count", function()
    local reg = metrics.registry()
    local h = metrics.histogram{ registry = reg, name = "lat_seconds", help = "L.", labels = { "op" },
      buckets = { 0.1, 1 } }
    for _, v in ipairs({ 0.05, 0.1, 0.5, 3 }) do
      h:observe({ op = "get" }, v)
    end
    local g = h:get{ op = "get" }
    t.eq(g.count, 4)
    t.eq(g.buckets, { { le = 0.1, count = 2 }, { le = 1, count = 3 } })
    local text = metrics.render(reg)
    t.match(text, 'lat_seconds_bucket{op="get",le="0.1"} 2\n')
    t.match(text, 'lat_seconds_bucket{op="get",le="1"} 3\n')
    t.match(text, 'lat_seconds_bucket{op="get",le="%+Inf"} 4\n')
    t.match(text, 'lat_seconds_sum{op="get"} 3.65')
    t.match(text, 'lat_seconds_count{op="get"} 4\n')
  end)
  t.it("registering again returns the same metric; another shape throws", function()
    local reg = metrics.registry()
    local a = metrics.counter{ registry = reg, name = "x_total", labels = { "a" } }
    t.eq(metrics.counter{ registry = reg, name = "x_total", labels = { "a" } }, a)
    t.fails(function() metrics.gauge{ registry = reg, name = "x_total", labels = { "a" } } end, "already registered")
  end)
  t.it("misuse throws: unknown labels, decreasing counters, bad names, reserved labels", function()
    local reg = metrics.registry()
    local c = metrics.counter{ registry = reg, name = "y_total", labels = { "a" } }
    t.fails(function() c:inc{ b = 1 } end, "unknown label 'b'")
    t.fails(function() c:inc({}, -1) end, "cannot decrease")
    t.fails(function() metrics.counter{ registry = reg, name = "1bad" } end, "not a valid name")
    t.fails(function() metrics.histogram{ registry = reg, name = "h", labels = { "le" } } end, "reserved")
    t.fails(function() metrics.histogram{ registry = reg, name = "h2", buckets = { 1, 1 } } end, "increase")
  end)
  t.it("remove and reset drop series", function()
    local reg = metrics.registry()
    local c = metrics.counter{ registry = reg, name = "z_total", labels = { "a" } }
    c:inc{ a = "1" }
    c:inc{ a = "2" }
    c:remove{ a = "1" }
    t.eq(c:get{ a = "1" }, 0)
    t.eq(c:get{ a = "2" }, 1)
    c:reset()
    t.eq(metrics.render(reg), "# HELP z_total \n# TYPE z_total counter\n")
  end)
end)
