-- kubelua.watch: watch a directory or one file for changes (inotify on the
-- host's loop, plus a periodic rescan).
--
--   local watch = require "kubelua.watch"
--   local w = assert(watch.dir("/etc/kubernetes/manifests", {}, function(ev)
--     print(ev.kind, ev.name, ev.path)   -- "appeared" | "changed" | "removed" | "missing"
--   end))
--   ...
--   w:close()                            -- no callback after this returns
--
-- watch.dir(path, opts, on_event) watches the entries of a directory (not
-- recursive); watch.file(path, opts, on_event) one file, through its parent
-- directory, so that a rename over the file (an editor's atomic save) is seen.
-- on_event(ev) runs in a task of its own, one event after another; an error
-- in it is logged with its traceback and the watcher carries on. Without
-- on_event, read batches yourself: `local evs = w:next()` parks until there
-- are some (an array of events), and returns nil once the watcher is closed.
-- The first w:next() returns at once with the starting state: the entries
-- present as "appeared" (or "missing"), {} for an empty folder (with
-- initial=false it waits for the first change instead).
-- A watcher with a callback lives until w:close(), even when you drop it.
--
-- Events (tables; a field that does not apply is nil):
--   kind   "appeared"  the name exists and was not reported before (existing
--                      entries are reported this way first, unless initial=false)
--          "changed"   it was written, replaced (renamed over, re-created), its
--                      metadata changed, or (a symlink) it now points elsewhere
--          "removed"   it was reported and is gone
--          "missing"   watch.dir: the directory itself does not exist (or is not
--                      a directory), name = nil; reported at start and whenever it
--                      goes away, after a "removed" for each entry. When it comes
--                      back: "appeared" with name = nil, then its entries.
--                      watch.file: the file does not exist when the watch starts
--                      (later disappearances are "removed").
--   name   the entry's name (nil for the directory itself)
--   path   the full path (watch.file: the path as given)
--   type   "file", "dir" or "other" (of what the name resolves to); symlink=true
--          when the entry is a symlink
--   size, mtime   for appeared/changed (mtime in seconds since the epoch)
--   err    for "missing": "ENOENT: /path: No such file or directory", ...
-- Events come in batches sorted by name; each name is in a batch at most once.
--
-- Options (unknown names and wrong types throw):
--   debounce   seconds of quiet a name needs before it is reported (default
--              0.1). Every event on the name restarts its wait, so a file
--              written in many pieces, deleted and re-created, or renamed away
--              and back within that time is one "changed", and a temporary file
--              created and removed within it is never reported. A file renamed
--              into place (the last step of an atomic save) is reported at once:
--              the rename is the complete new version.
--   max_delay  a name that never goes quiet (a log being appended to) is still
--              reported this long after its first event (default 1 s)
--   rescan     seconds between full rescans, which compare every name with what
--              was reported (inode, size, mtime, ctime, mode), so a change
--              inotify did not report is found (default 20 s, kubelet's
--              fileCheckFrequency, kubelet-behaviour.md 4.1/4.4)
--   retry      seconds between checks of a missing directory, besides the
--              inotify watch on its nearest existing parent (default 1 s,
--              kubelet's retryPeriod for a missing path, 4.4)
--   dotfiles   report names starting with "." (default false: kubelet's file
--              source ignores them, 4.4)
--   ignore     function(name) -> true to drop a name (default M.is_temp: editor
--              backups and swap files, see below); false to report every name
--   initial    report the entries present at start as "appeared" (default true)
--
-- Why a 0.1 s debounce: the kubelet's file source has no debounce; it re-reads
-- on every inotify event and relists every 20 s (4.4). Reading a half-written
-- file just makes it log a parse error and try again at the next event. We
-- prefer to report a file once it has settled: 0.1 s is far above the time an
-- editor, cp, sed -i or a config-management tool takes for its sequence of
-- writes and renames on a local disk (microseconds to a few ms), and far below
-- anything a node agent's reaction to a manifest depends on (pod sync runs
-- every 1 s to 1 min). Atomic saves, the recommended way to update a manifest,
-- do not wait for it at all. debounce = 0 reports on every inotify batch.
local core = require "kubelua.watch.core"
local kcore = require "kubelua.core"
local options = require "kubelua.opts"

local M = {}

-- Options dir() and file() fill in when left out.
M.defaults = {
  debounce = 0.1,
  max_delay = 1,
  rescan = 20,
  retry = 1,
  dotfiles = false,
  initial = true,
}

-- Names editors and tools leave beside the files they edit: backups ("name~"),
-- vim's swap files (".name.swp" ... ".swo", also without the dot) and its
-- write probe "4913", emacs' autosave "#name#". Dotfiles are handled apart
-- (option dotfiles).
function M.is_temp(name)
  return name:sub(-1) == "~"
    or name:match("%.sw[a-p]$") ~= nil
    or name:match("%.swp%d*$") ~= nil
    or (name:sub(1, 1) == "#" and name:sub(-1) == "#")
    or name == "4913"
end

local OPTIONS = {
  debounce = "number",
  max_delay = "number",
  rescan = "number",
  retry = "number",
  dotfiles = "boolean",
  ignore = "function|boolean",
  initial = "boolean",
}

local function check_opts(opts)
  if opts == nil then
    opts = {}
  end
  if type(opts) ~= "table" then
    error("watch: opts must be a table", 3)
  end
  options.check(opts, OPTIONS, "watch", 3)
  local o = {}
  for k, v in pairs(opts) do
    o[k] = v
  end
  for k, v in pairs(M.defaults) do
    if o[k] == nil then
      o[k] = v
    end
  end
  for _, k in ipairs({ "debounce", "max_delay" }) do
    if o[k] < 0 then
      error(string.format("watch: option %s must be >= 0", k), 3)
    end
  end
  for _, k in ipairs({ "rescan", "retry" }) do
    if o[k] <= 0 then
      error(string.format("watch: option %s must be > 0", k), 3)
    end
  end
  if o.ignore == nil or o.ignore == true then
    o.ignore = M.is_temp
  end
  return o
end

-- kubelet trims a trailing "/" (4.4); repeated slashes are one.
local function clean(path)
  path = path:gsub("//+", "/")
  if #path > 1 then
    path = path:gsub("/$", "")
  end
  return path
end

local function start(path, opts, on_event, file_mode)
  if type(path) ~= "string" or path == "" then
    error("watch: path must be a non-empty string", 3)
  end
  if on_event ~= nil and type(on_event) ~= "function" then
    error("watch: on_event must be a function", 3)
  end
  local o = check_opts(opts)
  path = clean(path)
  local dir, only = path, nil
  if file_mode then
    if path == "/" then
      error("watch.file: \"/\" is a directory", 3)
    end
    dir, only = path:match("^(.*)/([^/]+)$")
    if not dir then
      dir, only = ".", path
    elseif dir == "" then
      dir = "/"
    end
  end
  local w, err, code = core.open(dir, {
    only = only,
    debounce = o.debounce,
    max_delay = o.max_delay,
    rescan = o.rescan,
    retry = o.retry,
    initial = o.initial,
  })
  if not w then
    return nil, err, code
  end

  local ignore = o.ignore
  local function keep(ev)
    if file_mode then
      ev.path = path
      return true
    end
    local name = ev.name
    if name == nil then
      return true
    end
    if not o.dotfiles and name:sub(1, 1) == "." then
      return false
    end
    return not (ignore and ignore(name))
  end

  local handle = { path = path, closed = false }
  local first = o.initial

  -- next(): the next non-empty batch after filtering (the first one, the
  -- initial state, even when empty); nil once closed.
  function handle.next(self)
    while true do
      local batch = w:next()
      if not batch or self.closed then
        return nil
      end
      local out = {}
      for i = 1, #batch do
        if keep(batch[i]) then
          out[#out + 1] = batch[i]
        end
      end
      if #out > 0 or first then
        first = false
        return out
      end
    end
  end

  function handle.close(self)
    self.closed = true
    w:close()
  end

  function handle.info()
    return w:info()
  end

  if on_event then
    kcore.spawn(function()
      while true do
        local batch = handle:next()
        if not batch then
          return
        end
        for i = 1, #batch do
          local ok, e = xpcall(on_event, debug.traceback, batch[i])
          if not ok then
            kcore.log("E", string.format("watch %s: on_event failed: %s", path, tostring(e)))
          end
          if handle.closed then
            return -- closed by the callback: nothing more is delivered
          end
        end
      end
    end)
  end
  return handle
end

function M.dir(path, opts, on_event)
  return start(path, opts, on_event, false)
end

function M.file(path, opts, on_event)
  return start(path, opts, on_event, true)
end

return M
