-- kubelua.opts: option tables checked against their types, errors blamed on
-- the caller's line (here through kubelua.gc.new and kubelua.image_gc.new;
-- http_spec, server_spec and yaml_spec check the other modules that use it).
local t = require "spec.t"
local opts = require "kubelua.opts"

t.describe("opts.check", function()
  t.it("returns a table whose keys and types are allowed", function()
    local o = { a = 1, b = "x", c = {} }
    t.eq(opts.check(o, { a = "number", b = "string|nil", c = "function|table" }, "f"), o)
  end)

  t.it("names an unknown key and a wrong type", function()
    t.match(t.fails(function() opts.check({ z = 1 }, { a = "number" }, "mod.f") end), "mod.f: unknown option z")
    t.match(t.fails(function() opts.check({ a = "1" }, { a = "number" }, "mod.f") end),
      "mod.f: option a must be a number, got string")
  end)

  t.it("names a value that is not a table", function()
    t.match(t.fails(function() opts.check("x", { a = "number" }, "mod.f") end),
      "mod%.f: options must be a table, got string$")
    t.match(t.fails(function() opts.check(nil, { a = "number" }, "mod.f") end),
      "mod%.f: options must be a table, got nil$")
  end)

  t.it("raises at the level given, as error() does", function()
    local function f(o, level)
      local r = opts.check(o, { a = "number" }, "mod.f", level) -- not a tail call: f keeps its frame
      return r
    end
    local function g(o, level)
      local r = f(o, level)
      return r
    end
    t.eq(t.fails(function() g({ z = 1 }, 0) end), "mod.f: unknown option z")
    local line = debug.getinfo(f, "S").linedefined + 1
    t.match(t.fails(function() g({ z = 1 }) end), "^[^:]*opts_spec%.lua:" .. line .. ": mod%.f: unknown option z$")
    line = debug.getinfo(g, "S").linedefined + 1
    t.match(t.fails(function() g({ a = "1" }, 2) end),
      "^[^:]*opts_spec%.lua:" .. line .. ": mod%.f: option a must be a number, got string$")
  end)

  t.it("blames the line that called gc.new / image_gc.new", function()
    local line = debug.getinfo(1, "l").currentline + 1
    local e = t.fails(function() require("kubelua.gc").new{ runtime = {}, bogus = true } end)
    t.match(e, "opts_spec%.lua:" .. line .. ": kubelua%.gc%.new: unknown option bogus")
    line = debug.getinfo(1, "l").currentline + 1
    e = t.fails(function() require("kubelua.image_gc").new{ runtime = {}, high = "85" } end)
    t.match(e, "opts_spec%.lua:" .. line .. ": kubelua%.image_gc%.new: option high must be a number, got string")
    line = debug.getinfo(1, "l").currentline + 1
    e = t.fails(function() require("kubelua.gc").new() end)
    t.match(e, "opts_spec%.lua:" .. line .. ": kubelua%.gc%.new: options must be a table, got nil$")
    line = debug.getinfo(1, "l").currentline + 1
    e = t.fails(function() require("kubelua.image_gc").new(true) end)
    t.match(e, "opts_spec%.lua:" .. line .. ": kubelua%.image_gc%.new: options must be a table, got boolean$")
  end)
end)
