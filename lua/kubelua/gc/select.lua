-- kubelua.gc.select: the choices of container, sandbox and log GC as pure
-- functions over plain tables (no runtime, no clock, no I/O), so specs can
-- drive them with synthetic nodes and the GC object can simulate a whole run
-- before touching anything. Behaviour: kubelet-behaviour.md 1.3 to 1.6.
--
-- A container entry: { id =, name =, pod_uid =, state =, created = seconds,
--   unknown = bool, ... }. A sandbox entry: { id =, pod_uid =, state =,
--   created = seconds }. Both may carry anything else; chosen entries get
--   `rule` (why they go) and candidates that may not go get `protected`.
local M = {}

local RUNNING = "CONTAINER_RUNNING"
local READY = "SANDBOX_READY"

-- Newest first by creation time (kubelet's byCreated); the ID breaks ties so
-- that a plan is the same every time it is made.
local function newest_first(a, b)
  if a.created ~= b.created then
    return a.created > b.created
  end
  return a.id > b.id
end
M.newest_first = newest_first

-- Sort newest first. Units are small (a few attempts of one container), so
-- an insertion sort in Lua (which the JIT compiles, comparisons included)
-- beats table.sort calling back into Lua; long lists use table.sort.
local function sort_newest_first(list)
  local n = #list
  if n > 24 then
    table.sort(list, newest_first)
    return
  end
  for i = 2, n do
    local e = list[i]
    local c, id = e.created, e.id
    local j = i - 1
    while j >= 1 do
      local x = list[j]
      if x.created > c or (x.created == c and x.id > id) then
        break
      end
      list[j + 1] = x
      j = j - 1
    end
    list[j + 1] = e
  end
end
M.sort_newest_first = sort_newest_first

-- Move the oldest n entries of list to `chosen` with `rule`; the list keeps
-- the rest, as if every removal succeeded (kubelet's removeOldestN).
local function remove_oldest(list, n, rule, chosen)
  if n <= 0 then
    return
  end
  sort_newest_first(list)
  local len = #list
  for i = len, len - n + 1, -1 do
    local e = list[i]
    e.rule = rule
    chosen[#chosen + 1] = e
    list[i] = nil
  end
end

-- containers(entries, p) -> chosen, candidates, units
--   p.now                    seconds
--   p.min_age                seconds since creation before a dead container may go (0)
--   p.max_per_pod_container  dead containers kept per (pod UID, container name); < 0: no limit (1)
--   p.max_containers         dead containers kept on the node; < 0: no limit (-1)
--   p.sources_ready          whether all pod sources are ready
--   p.removable(uid)         nil, or the rule ("deleted-pod", "terminated-pod")
--                            that removes every dead container of the pod
--   p.protect(entry)         nil, or a reason to keep this one (policy extras)
-- candidates: every container that is not running, each with `protected`
-- set when it is not evictable ("min-age" or what p.protect said).
-- units: the evict units left after the choice, { uid =, name =, list = kept }.
function M.containers(entries, p)
  local max_per = p.max_per_pod_container
  if max_per == nil then
    max_per = 1
  end
  local max_all = p.max_containers or -1
  local cutoff = p.now - (p.min_age or 0)
  local protect = p.protect
  local chosen, candidates = {}, {}
  local units, order = {}, {} -- units[uid][name] = unit

  -- 1.3: evictable = not running, not younger than min_age (strictly newer
  -- than the cutoff is too young), grouped by (pod UID, container name).
  for _, e in ipairs(entries) do
    if e.state ~= RUNNING then
      candidates[#candidates + 1] = e
      local why
      if e.created > cutoff then
        why = "min-age"
      elseif protect then
        why = protect(e)
      end
      e.protected = why
      e.rule = nil
      if not why then
        local uid, name = e.pod_uid, e.name
        local by_name = units[uid]
        if not by_name then
          by_name = {}
          units[uid] = by_name
        end
        local u = by_name[name]
        if not u then
          u = { uid = uid, name = name, list = {} }
          by_name[name] = u
          order[#order + 1] = u
        end
        local list = u.list
        list[#list + 1] = e
      end
    end
  end

  -- 1.4 step 1: every container of a removed pod, once all sources are ready.
  local live = order
  if p.sources_ready and p.removable then
    live = {}
    local memo = {}
    for _, u in ipairs(order) do
      local rule = memo[u.uid]
      if rule == nil then
        rule = p.removable(u.uid) or false
        memo[u.uid] = rule
      end
      if rule then
        remove_oldest(u.list, #u.list, rule, chosen)
      else
        live[#live + 1] = u
      end
    end
  end

  -- step 2: at most max_per in every unit.
  if max_per >= 0 then
    for _, u in ipairs(live) do
      remove_oldest(u.list, #u.list - max_per, "max-per-pod-container", chosen)
    end
  end

  -- step 3: the node-wide cap, first as an equal share per unit, then
  -- oldest first across the node.
  if max_all >= 0 then
    local total = 0
    for _, u in ipairs(live) do
      total = total + #u.list
    end
    if total > max_all then
      local share = math.floor(max_all / #live)
      if share < 1 then
        share = 1
      end
      total = 0
      for _, u in ipairs(live) do
        remove_oldest(u.list, #u.list - share, "max-containers-share", chosen)
        total = total + #u.list
      end
      if total > max_all then
        local flat = {}
        for _, u in ipairs(live) do
          for _, e in ipairs(u.list) do
            flat[#flat + 1] = e
          end
        end
        remove_oldest(flat, total - max_all, "max-containers", chosen)
        local left = {}
        for _, e in ipairs(flat) do
          left[e] = true
        end
        for _, u in ipairs(live) do
          local keep = {}
          for _, e in ipairs(u.list) do
            if left[e] then
              keep[#keep + 1] = e
            end
          end
          u.list = keep
        end
      end
    end
  end
  return chosen, candidates, live
end

-- sandboxes(sandboxes, containers, p) -> chosen, candidates
--   sandboxes: sandbox entries; containers: every container that remains
--   (any state; one that names a sandbox makes it active).
--   p.removable(uid): nil or the rule that removes every sandbox of the pod.
-- Inactive sandboxes go: all of a removed pod's, else all but the newest
-- (kubelet 1.5). candidates: every sandbox, with `active` set.
function M.sandboxes(sandboxes, containers, p)
  local used = {}
  for _, c in ipairs(containers) do
    used[c.sandbox_id] = true
  end
  local pods, order = {}, {}
  for _, s in ipairs(sandboxes) do
    s.active = s.state == READY or used[s.id] == true
    s.rule = nil
    local list = pods[s.pod_uid]
    if not list then
      list = {}
      pods[s.pod_uid] = list
      order[#order + 1] = s.pod_uid
    end
    list[#list + 1] = s
  end
  local chosen = {}
  for _, uid in ipairs(order) do
    local list = pods[uid]
    local rule = p.removable and p.removable(uid) or nil
    local n = rule and #list or #list - 1
    if n > 0 then
      sort_newest_first(list)
      for i = #list, #list - n + 1, -1 do
        local s = list[i]
        if not s.active then
          s.rule = rule or "older-sandbox"
          chosen[#chosen + 1] = s
        end
      end
    end
  end
  return chosen, sandboxes
end

-- The pod UID in a pod log folder name: NAMESPACE_NAME_UID (or a bare UID,
-- the older layout): what follows the last "_".
function M.log_dir_uid(name)
  return name:match("([^_]*)$")
end

-- The container ID in a legacy log link name, POD_NAMESPACE_CONTAINER-ID.log
-- (a runtime's 64 hex digits; anything else is not such a link).
function M.log_link_container(name)
  local id = name:match("%-(%x+)%.log$")
  return id and #id == 64 and id or nil
end

-- log_dirs(names, p) -> chosen, candidates
--   names: folder names under the pod log root
--   p.sources_ready; p.removable(uid) -> rule | nil (content removal only);
--   p.keep(uid) -> reason | nil (a pod whose logs must stay).
function M.log_dirs(names, p)
  local chosen, candidates = {}, {}
  for _, name in ipairs(names) do
    local d = { name = name, pod_uid = M.log_dir_uid(name) }
    candidates[#candidates + 1] = d
    if p.sources_ready and p.removable then
      local rule = p.removable(d.pod_uid)
      if rule then
        d.protected = p.keep and p.keep(d.pod_uid) or nil
        if not d.protected then
          d.rule = rule
          chosen[#chosen + 1] = d
        end
      end
    end
  end
  return chosen, candidates
end

return M
