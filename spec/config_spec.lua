-- Source merging (kubelua.config): every operation against present/absent,
-- changed/unchanged pods; notification order and modes; duplicate names;
-- readiness.
local t = require "spec.t"
local config = require "kubelua.config"
local task = require "kubelua.task"

local function pod(uid, name, extra)
  local p = { metadata = { uid = uid, name = name or uid, namespace = "default", labels = { app = "x" } },
    spec = { containers = { { name = "c", image = "busybox" } } }, status = { phase = "Pending" } }
  for k, v in pairs(extra or {}) do
    if k == "metadata" then
      for mk, mv in pairs(v) do
        p.metadata[mk] = mv
      end
    else
      p[k] = v
    end
  end
  return p
end

local function harness(mode)
  local h = { updates = {}, events = {} }
  h.pc = config.new{
    mode = mode,
    clock = function() return "2026-11-30T00:00:00Z" end,
    on_update = function(u) table.insert(h.updates, u) end,
    on_event = function(e) table.insert(h.events, e) end,
  }
  -- "op uid,uid; op uid" summary of the updates since the last call
  function h.take()
    local parts = {}
    for _, u in ipairs(h.updates) do
      local ids = {}
      for _, p in ipairs(u.pods) do
        ids[#ids + 1] = p.metadata.uid
      end
      parts[#parts + 1] = u.op .. " " .. table.concat(ids, ",")
    end
    h.updates = {}
    return table.concat(parts, "; ")
  end
  return h
end

local changed_spec = { spec = { containers = { { name = "c", image = "busybox:2" } } } }
local changed_status = { status = { phase = "Running" } }
local deleting = { metadata = { deletionTimestamp = "2026-11-30T00:01:00Z" } }

-- op, is the pod present before, how the incoming pod differs, expected notification
local cases = {
  { "ADD", false, nil, "ADD a" },
  { "ADD", true, nil, "" },
  { "ADD", true, changed_spec, "UPDATE a" },
  { "ADD", true, changed_status, "RECONCILE a" },
  { "ADD", true, deleting, "DELETE a" },
  { "UPDATE", false, nil, "ADD a" },
  { "UPDATE", true, nil, "" },
  { "UPDATE", true, changed_spec, "UPDATE a" },
  { "UPDATE", true, changed_status, "RECONCILE a" },
  { "UPDATE", true, deleting, "DELETE a" },
  { "DELETE", false, nil, "ADD a" },
  { "DELETE", true, nil, "" },
  { "DELETE", true, changed_spec, "UPDATE a" },
  { "DELETE", true, deleting, "DELETE a" },
  { "REMOVE", false, nil, "" },
  { "REMOVE", true, nil, "REMOVE a" },
  { "SET", false, nil, "ADD a" },
  { "SET", true, nil, "" },
  { "SET", true, changed_spec, "UPDATE a" },
  { "SET", true, changed_status, "RECONCILE a" },
  { "SET", true, deleting, "DELETE a" },
}

t.describe("operations (table-driven)", function()
  for _, c in ipairs(cases) do
    local op, present, diff, want = c[1], c[2], c[3], c[4]
    local label = string.format("%s of a pod %s%s -> %s", op, present and "present" or "absent",
      diff and (diff.spec and ", spec changed" or diff.status and ", status changed" or ", deletion set") or ", unchanged",
      want == "" and "nothing" or want)
    t.it(label, function()
      local h = harness()
      h.pc:merge("file", { op = "SET", pods = present and { pod("a") } or {} })
      h.take()
      h.pc:merge("file", { op = op, pods = { pod("a", "a", diff) } })
      t.eq(h.take(), want)
    end)
  end
end)

t.describe("notifications", function()
  t.it("one merge emits REMOVE, ADD, UPDATE, DELETE, RECONCILE in that order", function()
    local h = harness()
    h.pc:merge("file", { op = "SET", pods = { pod("gone"), pod("upd"), pod("del"), pod("rec") } })
    h.take()
    h.pc:merge("file", { op = "SET", pods = {
      pod("rec", "rec", changed_status), pod("del", "del", deleting), pod("new"), pod("upd", "upd", changed_spec) } })
    t.eq(h.take(), "REMOVE gone; ADD new; UPDATE upd; DELETE del; RECONCILE rec")
  end)
  t.it("a source's first SET with nothing new sends an empty ADD (ready)", function()
    local h = harness()
    h.pc:merge("http", { op = "SET", pods = {} })
    t.eq(h.take(), "ADD ")
    t.eq(h.updates, {})
    h.pc:merge("http", { op = "SET", pods = {} })
    t.eq(h.take(), "", "later empty SETs send nothing")
  end)
  t.it("local annotations are ignored when comparing, and kept on update", function()
    local h = harness()
    h.pc:merge("file", { op = "SET", pods = { pod("a") } })
    local stored = h.updates[1].pods[1]
    t.eq(stored.metadata.annotations[config.SEEN_ANNOTATION], "2026-11-30T00:00:00Z")
    t.eq(stored.metadata.annotations[config.SOURCE_ANNOTATION], "file")
    h.take()
    local again = pod("a", "a", { metadata = { annotations = { [config.SEEN_ANNOTATION] = "other" } } })
    h.pc:merge("file", { op = "SET", pods = { again } })
    t.eq(h.take(), "", "config.seen differs only")
    local changed = pod("a", "a", { metadata = { annotations = { team = "b" } } })
    h.pc:merge("file", { op = "SET", pods = { changed } })
    local u = h.updates[1]
    t.eq(u.op, "UPDATE")
    t.eq(u.pods[1].metadata.annotations.team, "b")
    t.eq(u.pods[1].metadata.annotations[config.SEEN_ANNOTATION], "2026-11-30T00:00:00Z", "first-seen kept")
  end)
  t.it("snapshot mode sends the whole set on any change", function()
    local h = harness("snapshot")
    h.pc:merge("file", { op = "SET", pods = { pod("a") } })
    h.pc:merge("http", { op = "SET", pods = { pod("b") } })
    h.pc:merge("http", { op = "SET", pods = { pod("b") } })
    t.eq(h.take(), "SET a; SET a,b")
    t.eq(h.updates, {})
  end)
  t.it("snapshot_and_updates sends SET on adds/removes, UPDATE/DELETE otherwise", function()
    local h = harness("snapshot_and_updates")
    h.pc:merge("file", { op = "SET", pods = { pod("a"), pod("b") } })
    h.pc:merge("file", { op = "SET", pods = { pod("a", "a", changed_spec), pod("b", "b", deleting) } })
    h.pc:merge("file", { op = "SET", pods = { pod("a", "a", changed_spec) } })
    t.eq(h.take(), "SET a,b; UPDATE a; DELETE b; SET a")
  end)
  t.it("sync() sends a SET of every pod with source *", function()
    local h = harness()
    h.pc:merge("file", { op = "SET", pods = { pod("a") } })
    h.take()
    h.pc:sync()
    t.eq(h.updates[1].source, "*")
    t.eq(h.take(), "SET a")
  end)
end)

t.describe("duplicate names", function()
  t.it("within one update the first pod wins, the rest is reported", function()
    local h = harness()
    h.pc:merge("file", { op = "SET", pods = { pod("a", "web"), pod("b", "web") } })
    t.eq(h.take(), "ADD a")
    t.eq(#h.events, 1)
    t.eq(h.events[1].reason, "FailedValidation")
    t.match(h.events[1].message, 'duplicate pod name "web_default"')
  end)
  t.it("across sources the holder keeps the name; the other gets in once it is free", function()
    local h = harness()
    h.pc:merge("file", { op = "SET", pods = { pod("f1", "web") } })
    h.pc:merge("http", { op = "SET", pods = { pod("h1", "web") } })
    t.eq(h.take(), "ADD f1; ADD ", "http's pod is refused; http is still ready")
    t.match(h.events[1].message, "has the name of a pod from file")
    h.pc:merge("file", { op = "SET", pods = {} })
    h.pc:merge("http", { op = "SET", pods = { pod("h1", "web") } })
    t.eq(h.take(), "REMOVE f1; ADD h1")
  end)
  t.it("pods without a UID are refused with an event", function()
    local h = harness()
    local p = pod("x")
    p.metadata.uid = nil
    h.pc:merge("file", { op = "SET", pods = { p } })
    t.eq(h.take(), "ADD ")
    t.match(h.events[1].message, "has no UID")
  end)
end)

t.describe("readiness", function()
  t.it("all_ready once every registered source sent a SET", function()
    local h = harness()
    h.pc:register("file")
    h.pc:register("http")
    t.eq(h.pc:all_ready(), false)
    h.pc:merge("file", { op = "ADD", pods = { pod("a") } })
    t.eq(h.pc:all_ready(), false, "an ADD is not a SET")
    h.pc:merge("file", { op = "SET", pods = { pod("a") } })
    t.eq(h.pc:all_ready(), false)
    t.eq(h.pc:source_ready("file"), true)
    h.pc:merge("http", { op = "SET", pods = {} })
    t.eq(h.pc:all_ready(), true)
  end)
  t.it("a source written in Lua feeds updates from its own task", function()
    local h = harness()
    local done = task.waker()
    h.pc:add_source("mine", function(emit)
      emit({ op = "SET", pods = { pod("m1") } })
      task.sleep(0.01)
      emit({ op = "REMOVE", pods = { pod("m1") } })
      done:wake()
    end)
    done:wait()
    t.eq(h.take(), "ADD m1; REMOVE m1")
    t.eq(h.pc:all_ready(), true)
  end)
  t.it("an unknown operation is reported and ignored", function()
    local h = harness()
    h.pc:merge("file", { op = "RESTORE", pods = { pod("a") } })
    t.eq(h.take(), "")
    t.eq(h.events[1].reason, "UnknownOperation")
    t.fails(function() h.pc:merge("file", {}) end, "an update is")
  end)
end)

t.describe("plain-value helpers", function()
  t.it("copy is deep: the copy shares no table with the original", function()
    local v = { spec = { containers = { { name = "c", env = { A = "1" } } } }, n = 3, ok = false }
    local c = config.copy(v)
    t.eq(c, v)
    t.ok(c ~= v and c.spec ~= v.spec and c.spec.containers[1] ~= v.spec.containers[1])
    c.spec.containers[1].env.A = "2"
    t.eq(v.spec.containers[1].env.A, "1", "the original is untouched")
    t.eq(config.copy("s"), "s")
    t.eq(config.copy(nil), nil)
    t.ok(config.deep_equal(config.copy(v), v))
  end)
  t.it("kubelua.testing's copy is this one", function()
    t.eq(require("kubelua.testing").copy, config.copy)
  end)
end)
