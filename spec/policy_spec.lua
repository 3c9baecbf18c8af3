-- The agent's policy scripts (kubelua.agent.policy): the file rules
-- (owner, mode, folder, links), the contract (shape checks with the file
-- and line in every error), the environment and load budget, and applying
-- to a real GC object and prober manager (and back to defaults).
local t = require "spec.t"
local S = require "spec.support"
local policy = require "kubelua.agent.policy"
local gcmod = require "kubelua.gc"
local prober = require "kubelua.prober"
local testing = require "kubelua.testing"

local dir = S.tmpdir("policy")
S.sh("chmod 0755 '" .. dir .. "'")

local function write(name, text, mode)
  local path = dir .. "/" .. name
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  S.sh(string.format("chmod %s '%s'", mode or "0644", path))
  return path
end

local function joined(problems)
  return table.concat(problems or {}, "\n")
end

local GC_EX = write("gc.lua", assert(S.read_file(S.ROOT .. "/examples/policies/gc.lua")))
local PROBER_EX = write("prober.lua", assert(S.read_file(S.ROOT .. "/examples/policies/prober.lua")))

t.describe("policy scripts: the contract", function()
  t.it("loads the example gc and prober policies", function()
    local loaded, problems = policy.load{ gc = GC_EX, prober = PROBER_EX }
    t.ok(loaded, joined(problems))
    t.eq(type(loaded.gc.hooks.containers), "function")
    t.eq(loaded.gc.options.max_per_pod_container, 2)
    t.eq(type(loaded.prober.hooks.next_delay), "function")
    t.eq(loaded.prober.hooks.next_delay({ restarts = 2 }, 10), 40)
    t.match(policy.describe(loaded), "gc=.*gc%.lua %(containers, options%), prober=.*prober%.lua %(next_delay%)")
  end)

  t.it("a syntax error names the file and the line", function()
    local p = write("syntax.lua", "return {\n  containers = function(c) return c end,\n  logs = function( end,\n}\n")
    local loaded, problems = policy.load{ gc = p }
    t.eq(loaded, nil)
    t.eq(#problems, 1)
    t.match(problems[1], "^policies%.gc %(" .. p:gsub("%p", "%%%0") .. "%): syntax error: .*syntax%.lua:3:")
  end)

  t.it("a run-time error while loading names the file and the line", function()
    local p = write("boom.lua", "local x = 1\nerror('no good')\nreturn {}\n")
    local _, problems = policy.load{ gc = p }
    t.match(problems[1], "policies%.gc %(.-boom%.lua%): error while loading: .*boom%.lua:2: no good")
  end)

  t.it("the wrong return shape is refused with every problem", function()
    local _, p1 = policy.load{ gc = write("num.lua", "return 42\n") }
    t.match(p1[1], "num%.lua%): returned number; a policy file must return a table")
    local _, p2 = policy.load{ gc = write("shape.lua", [[
return { containers = "all", pods = function() end, options = { min_age = -1, keep_labels = 3, colour = "red" } }
]]) }
    local all = joined(p2)
    t.eq(#p2, 5, all)
    t.match(all, "containers must be a function, got string")
    t.match(all, "unknown key 'pods'")
    t.match(all, "options%.min_age must be at least 0")
    t.match(all, "options%.keep_labels must be a table, got number")
    t.match(all, "options%.colour: unknown option")
    local _, p3 = policy.load{ prober = write("probe_shape.lua", "return { wrap_probe = 1, delay = function() end }\n") }
    t.match(joined(p3), "wrap_probe must be a function, got number")
    t.match(joined(p3), "unknown key 'delay' %(wrap_probe, next_delay%)")
    local _, p4 = policy.load{ firewall = GC_EX }
    t.match(p4[1], "policies%.firewall .*unknown policy kind")
  end)

  t.it("problems of several files are all reported", function()
    local _, problems = policy.load{ gc = write("bad1.lua", "return 1\n"), prober = write("bad2.lua", "return {x=1}\n") }
    t.eq(#problems, 2, joined(problems))
    t.match(problems[1], "^policies%.gc ")
    t.match(problems[2], "^policies%.prober ")
  end)

  t.it("reading an undefined global is an error; globals set stay in the script", function()
    local _, problems = policy.load{ gc = write("typo.lua", "local n = tabel.concat({})\nreturn {}\n") }
    t.match(problems[1], "typo%.lua:1: undefined global 'tabel'")
    local loaded = assert(policy.load{ gc = write("glob.lua", "leaked = 1\nreturn { options = { min_age = leaked } }\n") })
    t.eq(loaded.gc.options.min_age, 1)
    t.eq(rawget(_G, "leaked"), nil)
  end)

  t.it("a script that loops forever while loading is cut off by the budget", function()
    local saved = policy.LOAD_BUDGET
    policy.LOAD_BUDGET = 0.2
    local _, problems = policy.load{ gc = write("loop.lua", "while true do pcall(function() end) end\n") }
    policy.LOAD_BUDGET = saved
    t.match(problems[1], "took longer than 0%.2 s to load")
  end)

  t.it("precompiled bytecode is refused", function()
    local f = assert(io.open(dir .. "/bc.lua", "wb"))
    f:write(string.dump(function() return {} end))
    f:close()
    S.sh("chmod 0644 '" .. dir .. "/bc.lua'")
    local _, problems = policy.load{ gc = dir .. "/bc.lua" }
    t.match(problems[1], "precompiled bytecode is not accepted")
  end)
end)

t.describe("policy scripts: who may write them", function()
  t.it("a file writable by group or others is refused", function()
    local _, p1 = policy.load{ gc = write("gw.lua", "return {}\n", "0664") }
    t.match(p1[1], "refused: .*gw%.lua is writable by group %(mode 0664%)")
    local _, p2 = policy.load{ gc = write("ow.lua", "return {}\n", "0646") }
    t.match(p2[1], "refused: .*ow%.lua is writable by others %(mode 0646%)")
  end)

  t.it("a file owned by another user is refused", function()
    local p = write("nobody.lua", "return {}\n")
    S.sh("chown 65534 '" .. p .. "'")
    local _, problems = policy.load{ gc = p }
    t.match(problems[1], "owned by uid 65534, not by root or the agent's user")
  end)

  t.it("a file in a folder writable by others is refused", function()
    S.sh("mkdir -p '" .. dir .. "/open' && chmod 0777 '" .. dir .. "/open'")
    local p = write("open/gc.lua", "return {}\n")
    local _, problems = policy.load{ gc = p }
    t.match(problems[1], "its folder .*/open is writable by group and others %(mode 0777%)")
  end)

  t.it("links: the target's rules apply, and the folder of the link too", function()
    S.sh("ln -sf '" .. GC_EX .. "' '" .. dir .. "/link.lua'")
    t.ok(policy.load{ gc = dir .. "/link.lua" })
    S.sh("ln -sf '" .. GC_EX .. "' '" .. dir .. "/open/link.lua'")
    local _, problems = policy.load{ gc = dir .. "/open/link.lua" }
    t.match(problems[1], "its folder .*/open is writable")
    local _, p2 = policy.load{ gc = dir .. "/absent.lua" }
    t.match(p2[1], "ENOENT")
  end)
end)

t.describe("policy scripts: applied", function()
  t.it("to a GC object and a prober manager, and back to defaults", function()
    local rt = testing.runtime(testing.node{})
    local g = gcmod.new{ runtime = rt }
    local mgr = prober.new{ runtime = rt, metrics = false }
    local loaded = assert(policy.load{ gc = GC_EX, prober = PROBER_EX })
    policy.apply(loaded, { gc = g, prober = mgr })
    t.eq(g.max_per_pod_container, 2)
    t.eq(g.keep_labels.keep, "true")
    t.eq(g.hooks.containers, loaded.gc.hooks.containers)
    t.eq(mgr.policy.next_delay, loaded.prober.hooks.next_delay)
    -- a dry run follows the policy: two dead containers kept per pod
    -- container (option), and the one that failed a minute ago (hook)
    local now = 1700000000
    local cs = {}
    for a = 0, 4 do
      cs[#cs + 1] = { name = "app", attempt = a, created = now - 500 + 100 * a,
        finished = a == 2 and now - 60 or nil, exit_code = a == 2 and 1 or 0 }
    end
    local g2 = gcmod.new{ runtime = testing.runtime(testing.node{ time = now, pods = { { uid = "u1", containers = cs } } }) }
    policy.apply(loaded, { gc = g2 })
    local plan, err = g2:plan()
    t.ok(plan, err)
    local gone = {}
    for _, c in ipairs(plan.containers) do
      gone[#gone + 1] = c.attempt
    end
    table.sort(gone)
    t.eq(table.concat(gone, ","), "0,1")
    policy.apply({}, { gc = g2 })
    plan = assert(g2:plan())
    t.eq(#plan.containers, 4, "kubelet's default: only the newest stays")
    policy.apply({}, { gc = g, prober = mgr })
    t.eq(g.max_per_pod_container, gcmod.DEFAULTS.max_per_pod_container)
    t.eq(g.keep_labels, nil)
    t.eq(next(g.hooks), nil)
    t.eq(mgr.policy.next_delay, nil)
  end)

  t.it("cleanup", function()
    S.rm(dir)
  end)
end)
