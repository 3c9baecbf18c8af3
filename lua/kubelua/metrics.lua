-- kubelua.metrics: a small Prometheus-style registry (counters, gauges,
-- histograms, with labels) and the text exposition format (version 0.0.4).
--
--   local metrics = require "kubelua.metrics"
--   local probes = metrics.counter{ name = "prober_probe_total", help = "...",
--     labels = { "probe_type", "result" } }
--   probes:inc{ probe_type = "Liveness", result = "successful" }
--   local dur = metrics.histogram{ name = "prober_probe_duration_seconds", help = "...",
--     labels = { "probe_type" }, buckets = { 0.005, 0.01, 0.1, 1 } }
--   dur:observe({ probe_type = "Liveness" }, 0.012)
--   io.write(metrics.render())                 -- the default registry
--
-- Metrics are registered in `metrics.default` unless `registry =` names
-- another (metrics.registry()). A name registered twice with the same type
-- and labels returns the existing metric (modules can be reloaded); with a
-- different shape it throws. Label values are strings (numbers are
-- converted); a label left out is "" and an unknown label throws.
--   counter: c:inc(labels, n=1) (n >= 0), c:get(labels)
--   gauge:   g:set(labels, v), g:inc(labels, n=1), g:dec(labels, n=1), g:get(labels)
--   histogram: h:observe(labels, v), h:get(labels) -> { count =, sum =, buckets = {...} }
--   any:     m:remove(labels) drops one series, m:reset() all of them
--   m:child(labels) -> child with inc(n)/set(v)/observe(v)/get() for one series,
--            bound once so hot paths do no label work per update
-- render(registry?) -> text: families sorted by name, series by label values.
local M = {}

-- Histogram buckets (seconds) when none are given: Prometheus' defaults.
M.DEFAULT_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }

local Registry = {}
Registry.__index = Registry

function M.registry()
  return setmetatable({ families = {} }, Registry)
end

M.default = M.registry()

local function check_name(what, s)
  if type(s) ~= "string" or not s:find("^[%a_:][%w_:]*$") then
    error("kubelua.metrics: " .. what .. " " .. tostring(s) .. " is not a valid name", 4)
  end
end

-- The series key: label values in the metric's label order, joined by \0.
local function series_key(m, labels)
  if labels == nil then
    labels = {}
  elseif type(labels) ~= "table" then
    error("kubelua.metrics: " .. m.name .. ": labels must be a table, got " .. type(labels), 3)
  end
  for k in pairs(labels) do
    if not m.label_set[k] then
      error("kubelua.metrics: " .. m.name .. ": unknown label '" .. tostring(k) .. "'", 3)
    end
  end
  local vals = {}
  for i, name in ipairs(m.labels) do
    local v = labels[name]
    vals[i] = v == nil and "" or tostring(v)
  end
  return table.concat(vals, "\0"), vals
end

local function add_series(m, key, vals)
  local s = m.series[key]
  if s == nil then
    s = { values = vals, value = 0 }
    if m.type == "histogram" then
      s.counts, s.sum, s.count = {}, 0, 0
      for i = 1, #m.buckets do
        s.counts[i] = 0
      end
    end
    m.series[key] = s
  end
  return s
end

local function get_series(m, labels)
  local key, vals = series_key(m, labels)
  return add_series(m, key, vals)
end

local Metric = {}
Metric.__index = Metric

function Metric:inc(labels, n)
  n = n or 1
  if type(n) ~= "number" then
    error("kubelua.metrics: " .. self.name .. ": increment must be a number", 2)
  end
  if self.type == "counter" and n < 0 then
    error("kubelua.metrics: " .. self.name .. ": a counter cannot decrease", 2)
  elseif self.type == "histogram" then
    error("kubelua.metrics: " .. self.name .. ": a histogram is observed, not incremented", 2)
  end
  local s = get_series(self, labels)
  s.value = s.value + n
end

function Metric:dec(labels, n)
  if self.type ~= "gauge" then
    error("kubelua.metrics: " .. self.name .. ": only a gauge can decrease", 2)
  end
  local s = get_series(self, labels)
  s.value = s.value - (n or 1)
end

function Metric:set(labels, v)
  if self.type ~= "gauge" then
    error("kubelua.metrics: " .. self.name .. ": only a gauge can be set", 2)
  end
  if type(v) ~= "number" then
    error("kubelua.metrics: " .. self.name .. ": value must be a number", 2)
  end
  get_series(self, labels).value = v
end

-- one observation into series s of histogram m
local function observe_series(m, s, v)
  s.count = s.count + 1
  s.sum = s.sum + v
  local b = m.buckets
  for i = 1, #b do
    if v <= b[i] then
      s.counts[i] = s.counts[i] + 1
      break
    end
  end
end

function Metric:observe(labels, v)
  if self.type ~= "histogram" then
    error("kubelua.metrics: " .. self.name .. ": only a histogram observes", 2)
  end
  if type(v) ~= "number" then
    error("kubelua.metrics: " .. self.name .. ": value must be a number", 2)
  end
  observe_series(self, get_series(self, labels), v)
end

-- m:child(labels) -> a child bound to one series, for hot paths: its
-- inc(n), set(v) and observe(v) skip the label look-up and allocate nothing.
-- A child outlives remove()/reset(): its next update starts the series anew.
local Child = {}
Child.__index = Child

function Metric:child(labels)
  local key, vals = series_key(self, labels)
  add_series(self, key, vals)
  return setmetatable({ metric = self, key = key, values = vals }, Child)
end

local function child_series(c)
  local m = c.metric
  return m.series[c.key] or add_series(m, c.key, c.values), m
end

function Child:inc(n)
  local s, m = child_series(self)
  n = n or 1
  if type(n) ~= "number" or m.type == "histogram" or (m.type == "counter" and n < 0) then
    error("kubelua.metrics: " .. m.name .. ": a " .. m.type .. " child cannot be incremented by " ..
      tostring(n), 2)
  end
  s.value = s.value + n
end

function Child:set(v)
  local s, m = child_series(self)
  if m.type ~= "gauge" or type(v) ~= "number" then
    error("kubelua.metrics: " .. m.name .. ": only a gauge child can be set, to a number", 2)
  end
  s.value = v
end

function Child:observe(v)
  local s, m = child_series(self)
  if m.type ~= "histogram" or type(v) ~= "number" then
    error("kubelua.metrics: " .. m.name .. ": only a histogram child observes, a number", 2)
  end
  observe_series(m, s, v)
end

function Child:get()
  local labels = {}
  for i, n in ipairs(self.metric.labels) do
    labels[n] = self.values[i]
  end
  return self.metric:get(labels)
end

function Metric:get(labels)
  local key = series_key(self, labels)
  local s = self.series[key]
  if self.type == "histogram" then
    if not s then
      return { count = 0, sum = 0, buckets = {} }
    end
    local cum, out = 0, {}
    for i, le in ipairs(self.buckets) do
      cum = cum + s.counts[i]
      out[i] = { le = le, count = cum }
    end
    return { count = s.count, sum = s.sum, buckets = out }
  end
  return s and s.value or 0
end

function Metric:remove(labels)
  self.series[(series_key(self, labels))] = nil
end

function Metric:reset()
  self.series = {}
end

local function new_metric(kind, opts)
  if type(opts) ~= "table" then
    error("kubelua.metrics." .. kind .. ": expects a table of options", 3)
  end
  check_name("metric name", opts.name)
  local labels = opts.labels or {}
  local label_set = {}
  for _, l in ipairs(labels) do
    check_name("label name", l)
    if l:sub(1, 2) == "__" or (kind == "histogram" and l == "le") then
      error("kubelua.metrics: label name " .. l .. " is reserved", 3)
    end
    label_set[l] = true
  end
  local buckets
  if kind == "histogram" then
    buckets = opts.buckets or M.DEFAULT_BUCKETS
    for i = 2, #buckets do
      if not (buckets[i] > buckets[i - 1]) then
        error("kubelua.metrics: " .. opts.name .. ": buckets must increase", 3)
      end
    end
  end
  local reg = opts.registry or M.default
  local old = reg.families[opts.name]
  if old then
    if old.type ~= kind or table.concat(old.labels, ",") ~= table.concat(labels, ",") then
      error("kubelua.metrics: " .. opts.name .. " is already registered with another type or labels", 3)
    end
    return old
  end
  local m = setmetatable({ name = opts.name, help = opts.help or "", type = kind, labels = labels,
    label_set = label_set, buckets = buckets, series = {} }, Metric)
  reg.families[opts.name] = m
  return m
end

function M.counter(opts)
  return new_metric("counter", opts)
end
function M.gauge(opts)
  return new_metric("gauge", opts)
end
function M.histogram(opts)
  return new_metric("histogram", opts)
end

function Registry:get(name)
  return self.families[name]
end

function Registry:unregister(name)
  self.families[name] = nil
end

local function escape_value(v)
  return (v:gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

local function escape_help(v)
  return (v:gsub("\\", "\\\\"):gsub("\n", "\\n"))
end

local function fmt_num(v)
  if v ~= v then
    return "NaN"
  elseif v == math.huge then
    return "+Inf"
  elseif v == -math.huge then
    return "-Inf"
  elseif v == math.floor(v) and math.abs(v) < 1e15 then
    return string.format("%d", v)
  end
  -- the shortest form that reads back the same number
  for _, f in ipairs({ "%.15g", "%.16g" }) do
    local s = string.format(f, v)
    if tonumber(s) == v then
      return s
    end
  end
  return string.format("%.17g", v)
end

local function label_text(names, values, extra_name, extra_value)
  local parts = {}
  for i, n in ipairs(names) do
    parts[#parts + 1] = n .. '="' .. escape_value(values[i]) .. '"'
  end
  if extra_name then
    parts[#parts + 1] = extra_name .. '="' .. extra_value .. '"'
  end
  if #parts == 0 then
    return ""
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function Registry:render()
  local names = {}
  for name in pairs(self.families) do
    names[#names + 1] = name
  end
  table.sort(names)
  local out = {}
  for _, name in ipairs(names) do
    local m = self.families[name]
    out[#out + 1] = "# HELP " .. name .. " " .. escape_help(m.help)
    out[#out + 1] = "# TYPE " .. name .. " " .. m.type
    local keys = {}
    for k in pairs(m.series) do
      keys[#keys + 1] = k
    end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local s = m.series[k]
      if m.type == "histogram" then
        local cum = 0
        for i, le in ipairs(m.buckets) do
          cum = cum + s.counts[i]
          out[#out + 1] = name .. "_bucket" .. label_text(m.labels, s.values, "le", fmt_num(le)) ..
            " " .. fmt_num(cum)
        end
        out[#out + 1] = name .. "_bucket" .. label_text(m.labels, s.values, "le", "+Inf") .. " " ..
          fmt_num(s.count)
        out[#out + 1] = name .. "_sum" .. label_text(m.labels, s.values) .. " " .. fmt_num(s.sum)
        out[#out + 1] = name .. "_count" .. label_text(m.labels, s.values) .. " " .. fmt_num(s.count)
      else
        out[#out + 1] = name .. label_text(m.labels, s.values) .. " " .. fmt_num(s.value)
      end
    end
  end
  out[#out + 1] = ""
  return table.concat(out, "\n")
end

-- render(registry?) -> the text exposition of that registry (default: M.default)
function M.render(reg)
  return (reg or M.default):render()
end

return M
