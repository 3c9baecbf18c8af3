-- kubelua.k8s.watch: list, then watch, one API path, keeping a local store of
-- its objects (what client-go's reflector and informer do). Started through
-- client:watch(path, opts).
--
--   local w = api:watch("/api/v1/pods", {
--     fieldSelector = "spec.nodeName=node-1",   -- labelSelector too
--     on_event = function(type, obj) end,       -- ADDED / MODIFIED / DELETED
--     on_error = function(err, code) end,       -- "CODE: watch PATH: ...", CODE
--     on_sync = function(items) end,            -- after each (re)list
--   })
--   w:items()  w:get("ns/name")  w:synced()  w.resource_version  w.stats  w.state
--   w:stop()          -- or w:cancel(): the same without waiting
--
-- The protocol, as client-go's reflector runs it (kubelet's API pod source
-- is such a list-watch of pods with fieldSelector spec.nodeName=<node>,
-- reference section 4.6):
--  1. list, in pages of `page_size` (first with resourceVersion "0", which
--     the API server may serve from its cache; after a 410 with "", a
--     consistent read); the store becomes the list, and the differences
--     with what it held go out as events (ADDED, MODIFIED for a changed
--     resourceVersion, DELETED for what disappeared), then on_sync(items);
--  2. watch from the list's resourceVersion
--     (?watch=1&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=T,
--     T random in 5..10 min so the server ends it): one JSON event per line;
--     ADDED/MODIFIED/DELETED update the store and call on_event; BOOKMARK
--     only moves resourceVersion; ERROR with code 410 (or an HTTP 410)
--     means the version is gone: relist;
--  3. a clean end of the stream: watch again at once from the last version;
--  4. the connection lost (before or during the stream): wait, then watch
--     again from the last version (the server replays what was missed, or
--     answers 410). client-go relists here, except for a refused
--     connection; resuming costs the API server less and loses nothing;
--  5. an HTTP error, an ERROR event other than 410, malformed JSON, a line
--     cut short at the end of the stream, an unknown event type: report it
--     through on_error (the message names the path and quotes the start of
--     the line), wait, relist.
-- Waits follow client-go's reflector backoff: 0.8 s doubling up to 30 s,
-- with jitter (up to +100 %, capped at 30 s), back to 0.8 s after 2 minutes
-- without a wait. A relist after a 410 waits too, as in client-go.
--
-- Callbacks run in the watch's task, one at a time, in stream order. An
-- error thrown by a callback is logged with its traceback; the watch goes
-- on. A callback may park (do I/O); the stream waits meanwhile (the server
-- is held back by TCP once max read-ahead is queued).
-- on_error is also logged (klog style, "W"), unless log = false. For paths
-- under /secrets, messages never quote event lines (only their size).
--
-- w.state tells what the task does: "starting", "listing", "connecting",
-- "watching" (the server accepted the watch), "waiting" (backoff) or
-- "stopped". w.job is that task (a kubelua.task job: w.job.running is
-- false once it has finished).
--
-- stop() ends the current request at once and waits (parking the caller)
-- until the watch's task has finished, so nothing stays parked after it;
-- called from a callback of the same watch, it does not wait.
local core = require "kubelua.core"
local http = require "kubelua.http"
local json = require "kubelua.k8s.json"
local k8s = require "kubelua.k8s"
local options = require "kubelua.opts"
local task = require "kubelua.task"
local sorted_keys = require("kubelua.pretty").sorted_keys

local M = {}

-- Options new{} fills in when left out.
M.defaults = {
  page_size = 500,
  bookmarks = true,
  min_watch_timeout = 300, -- seconds; the watch asks for T in [min, 2*min)
  backoff = { initial = 0.8, max = 30, factor = 2, jitter = 1.0, reset = 120 },
  max_line = 16 * 1024 * 1024, -- bytes of one event line
  read_ahead = 1024 * 1024, -- bytes queued unread before the stream pauses
  log = true,
}

local OPTIONS = {
  labelSelector = "string", fieldSelector = "string", on_event = "function",
  on_error = "function", on_sync = "function", on_bookmark = "function",
  resource_version = "string", page_size = "number", bookmarks = "boolean",
  timeout_seconds = "number", backoff = "table", log = "boolean",
}

local Watcher = {}
Watcher.__index = Watcher

-- The callback opts[name](...), protected (see task.job's call).
local function call(w, name, ...)
  w.job:call(name, w.opts[name], ...)
end

local function report(w, err, code)
  w.stats.errors = w.stats.errors + 1
  w.last_error = err
  if w.log then
    core.log("W", err)
  end
  call(w, "on_error", err, code)
end

-- The start of a line for a message (control bytes escaped), or only its
-- size when the path holds secrets.
local function excerpt(w, s)
  if w.secret then
    return string.format("(%d bytes, not shown: the path holds secrets)", #s)
  end
  local e = s:sub(1, 160):gsub("%c", function(c)
    return string.format("\\x%02x", c:byte())
  end)
  if #s > 160 then
    e = e .. string.format("... (%d bytes)", #s)
  end
  return e
end

-- "CODE: GET url: msg" -> "CODE: watch PATH: GET url: msg"
local function rewrap(w, err, code)
  local rest = tostring(err):gsub("^[%u_]+: ", "", 1)
  return string.format("%s: watch %s: %s", code or "ERROR", w.path, rest)
end

local function next_delay(w)
  local b = w.backoff
  local now = core.monotime()
  if w.last_wait and now - w.last_wait > b.reset then
    w.steps = 0
  end
  w.steps = w.steps + 1
  w.last_wait = now
  local d = math.min(b.max, b.initial * b.factor ^ (w.steps - 1))
  return math.min(b.max, d * (1 + b.jitter * math.random()))
end

-- Wait `secs`, or until cancel() wakes the watch.
local function pause(w, secs)
  w.state = "waiting"
  w.job:pause(secs)
end

local function emit(w, etype, obj)
  w.stats.events = w.stats.events + 1
  call(w, "on_event", etype, obj)
end

-- The store becomes `items`; the differences go out as events.
local function replace(w, items)
  local new = {}
  for _, obj in ipairs(items) do
    local key = k8s.key(obj)
    if key then
      new[key] = obj
    end
  end
  local old = w.store
  w.store = new
  for _, obj in ipairs(items) do
    local key = k8s.key(obj)
    if key and new[key] == obj then
      local before = old[key]
      if before == nil then
        emit(w, "ADDED", obj)
      elseif (before.metadata or {}).resourceVersion ~= (obj.metadata or {}).resourceVersion then
        emit(w, "MODIFIED", obj)
      end
    end
  end
  local gone = {}
  for key in pairs(old) do
    if new[key] == nil then
      gone[#gone + 1] = key
    end
  end
  table.sort(gone)
  for _, key in ipairs(gone) do
    emit(w, "DELETED", old[key])
  end
end

-- One event line: nil when handled, else an outcome, err, code.
local function handle_line(w, line)
  if not line:find("%S") then
    return nil
  end
  local ev, err = json.decode(line)
  if type(ev) ~= "table" then
    return "bad", string.format("DECODE: watch %s: malformed JSON in an event line (%s): %s", w.path,
      err or "not an object", excerpt(w, line)), "DECODE"
  end
  local etype, obj = ev.type, ev.object
  if type(etype) ~= "string" or type(obj) ~= "table" then
    return "bad", string.format("DECODE: watch %s: an event needs a type and an object: %s", w.path,
      excerpt(w, line)), "DECODE"
  end
  if etype == "ADDED" or etype == "MODIFIED" or etype == "DELETED" then
    local key = k8s.key(obj)
    if not key then
      return "bad", string.format("DECODE: watch %s: a %s event without metadata.name: %s", w.path,
        etype, excerpt(w, line)), "DECODE"
    end
    w.store[key] = etype ~= "DELETED" and obj or nil
    local rv = obj.metadata.resourceVersion
    if type(rv) == "string" and rv ~= "" then
      w.resource_version = rv
    end
    w.got_events = true
    emit(w, etype, obj)
  elseif etype == "BOOKMARK" then
    local rv = type(obj.metadata) == "table" and obj.metadata.resourceVersion or nil
    if type(rv) ~= "string" or rv == "" then
      return "bad", string.format("DECODE: watch %s: a BOOKMARK without metadata.resourceVersion: %s",
        w.path, excerpt(w, line)), "DECODE"
    end
    w.resource_version = rv
    w.stats.bookmarks = w.stats.bookmarks + 1
    call(w, "on_bookmark", rv)
  elseif etype == "ERROR" then
    local status = tonumber(obj.code)
    if status == 410 then
      return "gone"
    end
    local code = k8s.status_code(status or 0, obj)
    return "failed", string.format("%s: watch %s: ERROR event: %s %s", code, w.path,
      tostring(obj.code), tostring(obj.message)), code
  else
    return "bad", string.format("DECODE: watch %s: unknown event type %q: %s", w.path, etype,
      excerpt(w, line)), "DECODE"
  end
  return nil
end

local function read_small(s, max)
  local parts, n = {}, 0
  while n < max do
    local data = s:read()
    if not data then
      break
    end
    parts[#parts + 1] = data
    n = n + #data
  end
  return table.concat(parts)
end

-- One watch request: returns "stopped", "closed", "gone", "unreachable",
-- "cut", "failed" or "bad" (the last four with err, code).
local function watch_once(w)
  local c = w.client
  local ts = w.opts.timeout_seconds or math.floor(M.defaults.min_watch_timeout * (1 + math.random()))
  local q = {
    watch = "1", resourceVersion = w.resource_version, timeoutSeconds = string.format("%d", ts),
    allowWatchBookmarks = w.bookmarks and "true" or nil,
    labelSelector = w.opts.labelSelector, fieldSelector = w.opts.fieldSelector,
  }
  local url = c.server .. w.path .. k8s.query_string(q)
  local o = c._base(ts + 30)
  o.url, o.max_body = url, M.defaults.read_ahead
  local s = http.open(o)
  w.stream = s
  w.stats.watches = w.stats.watches + 1
  local function finish(...)
    s:close()
    if w.stream == s then
      w.stream = nil
    end
    if w.job.stopped then
      return "stopped"
    end
    return ...
  end
  local resp, err, code = s:response()
  if not resp then
    return finish("unreachable", rewrap(w, err, code), code)
  end
  if resp.status ~= 200 then
    local _, e, c2 = k8s._outcome("GET", url, resp.status, read_small(s, 64 * 1024))
    if c2 == "GONE" then
      return finish("gone")
    end
    return finish("failed", rewrap(w, e, c2), c2)
  end
  w.state = "watching"
  local buf = ""
  while true do
    local data, rerr, rcode = s:read()
    if w.job.stopped then
      return finish("stopped")
    end
    if data then
      buf = buf .. data
      local start = 1
      while true do
        local nl = buf:find("\n", start, true)
        if not nl then
          break
        end
        if nl - start > M.defaults.max_line then
          -- a whole line over the cap can arrive in one read: check it too
          return finish("bad", string.format("DECODE: watch %s: an event line longer than %d bytes: %s",
            w.path, M.defaults.max_line, excerpt(w, buf:sub(start, nl - 1))), "DECODE")
        end
        local line = buf:sub(start, nl - 1)
        start = nl + 1
        local out, e, c3 = handle_line(w, line)
        if out or w.job.stopped then
          return finish(out, e, c3)
        end
      end
      buf = start > 1 and buf:sub(start) or buf
      if #buf > M.defaults.max_line then
        return finish("bad", string.format("DECODE: watch %s: an event line longer than %d bytes: %s",
          w.path, M.defaults.max_line, excerpt(w, buf)), "DECODE")
      end
    elseif rerr then
      local msg = rewrap(w, rerr, rcode)
      if buf:find("%S") then
        msg = msg .. "; an unfinished event line was dropped: " .. excerpt(w, buf)
      end
      return finish("cut", msg, rcode)
    else
      if buf:find("%S") then
        return finish("bad", string.format("DECODE: watch %s: the stream ended inside an event line " ..
          "(truncated): %s", w.path, excerpt(w, buf)), "DECODE")
      end
      return finish("closed")
    end
  end
end

local function run(w)
  local need_list = w.resource_version == nil
  local list_rv = "0"
  while not w.job.stopped do
    if need_list then
      w.state = "listing"
      local list, err, code = w.client:list(w.path, {
        labelSelector = w.opts.labelSelector, fieldSelector = w.opts.fieldSelector,
        limit = w.page_size, resourceVersion = list_rv, holder = w,
      })
      if w.job.stopped then
        break
      end
      if list then
        w.stats.lists = w.stats.lists + 1
        replace(w, list.items)
        w.resource_version = type(list.metadata) == "table" and list.metadata.resourceVersion or ""
        need_list = false
        w._synced = true
        if w.opts.on_sync then
          call(w, "on_sync", w:items())
        end
      else
        report(w, rewrap(w, err, code), code)
        if code == "GONE" then
          list_rv = ""
        end
        pause(w, next_delay(w))
      end
    else
      w.state = "connecting"
      w.got_events = false
      local started = core.monotime()
      local out, err, code = watch_once(w)
      if out == "stopped" then
        break
      elseif out == "closed" then
        -- A server ending watches at once, again and again, must not make
        -- this spin: client-go calls that a "very short watch".
        if not w.got_events and core.monotime() - started < 1 then
          pause(w, next_delay(w))
        end
      elseif out == "gone" then
        w.stats.expired = w.stats.expired + 1
        need_list, list_rv = true, ""
        pause(w, next_delay(w))
      elseif out == "unreachable" or out == "cut" then
        w.stats.reconnects = w.stats.reconnects + 1
        report(w, err, code)
        pause(w, next_delay(w))
      else -- failed, bad
        report(w, err, code)
        need_list, list_rv = true, w.resource_version or ""
        w.stats.relists = w.stats.relists + 1
        pause(w, next_delay(w))
      end
    end
  end
end

-- start(client, path, opts) -> watcher (see the top of this file)
-- opts: labelSelector, fieldSelector, on_event, on_error, on_sync,
--   on_bookmark(rv), resource_version (watch from there, no first list),
--   page_size (500), bookmarks (true), timeout_seconds (random 300..600),
--   backoff = {initial=, max=, factor=, jitter=, reset=}, log (true).
function M.start(client, path, opts)
  -- level 2: client:watch() tail-calls this, so its caller is next
  opts = options.check(opts or {}, OPTIONS, "kubelua.k8s: watch", 2)
  local b = {}
  for k, v in pairs(M.defaults.backoff) do
    b[k] = (opts.backoff or {})[k] or v
  end
  local w = setmetatable({
    client = client,
    path = path,
    opts = opts,
    store = {},
    resource_version = opts.resource_version,
    page_size = opts.page_size or M.defaults.page_size,
    bookmarks = opts.bookmarks ~= false and M.defaults.bookmarks,
    backoff = b,
    log = opts.log ~= false and M.defaults.log,
    secret = path:find("/secrets", 1, true) ~= nil,
    steps = 0,
    state = "starting",
    stats = { lists = 0, watches = 0, events = 0, bookmarks = 0, errors = 0, expired = 0,
      relists = 0, reconnects = 0 },
  }, Watcher)
  w._synced = opts.resource_version ~= nil
  -- w.job: the watch's task; cancelling it also ends the request in flight.
  w.job = task.job(function()
    run(w)
  end, {
    name = "watch " .. path,
    on_cancel = function()
      if w.stream then
        w.stream:close()
      end
    end,
    on_exit = function()
      w.state = "stopped"
    end,
  })
  return w
end

-- cancel(): end the watch without waiting for its task (which finishes on
-- its next loop turn). The store stays readable.
function Watcher:cancel()
  self.job:cancel()
end

-- stop(): end the watch; returns once its task has finished.
function Watcher:stop()
  self.job:stop()
end

-- synced() -> whether the first list has been taken in
function Watcher:synced()
  return self._synced
end

-- items() -> the objects in the store, sorted by key
function Watcher:items()
  local keys = sorted_keys(self.store)
  local out = {}
  for i, k in ipairs(keys) do
    out[i] = self.store[k]
  end
  return out
end

-- get("namespace/name") or get(namespace, name) -> object | nil
function Watcher:get(a, b)
  return self.store[b and (a ~= "" and (a .. "/" .. b) or b) or a]
end

function Watcher:__tostring()
  return string.format("k8s watch %s (rv %s)", self.path, tostring(self.resource_version))
end

return M
