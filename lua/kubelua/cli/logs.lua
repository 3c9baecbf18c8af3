-- kubelua logs: print a container's log (crictl logs).
--
-- Reads the file named by ContainerStatus.log_path, written by the runtime
-- in the CRI log format, one record per line:
--   2024-05-01T10:00:00.123456789Z stdout F the text
-- The tag is F for a full line and P for a part of a long line (the runtime
-- splits lines over its buffer size); parts are joined until the F record,
-- so a line prints whole, with the timestamp of its first part. stdout
-- records go to stdout and stderr records to stderr. --tail counts these
-- joined lines. With -f, new records print as they are written (the file is
-- polled every 100 ms; a rotated or truncated file is followed), until the
-- container stops running.
local common = require "kubelua.cli.common"
local task = require "kubelua.task"

local M = {}

local POLL = 0.1 -- seconds between reads when following
local CHECK = 1 -- seconds between container/rotation checks when idle

-- A parser of log bytes: feed(chunk) calls emit(entry) for each complete
-- line; entry = { ts = "...", stream = "stdout", text = "...\n" }.
-- finish() flushes parts of a line never completed.
function M.parser(emit)
  local rest = ""
  local partial = {} -- stream -> { ts, pieces }
  local function record(line)
    local ts, stream, tag, content = line:match("^(%S+) (%S+) (%S+) ?(.*)$")
    if not ts then
      return -- not a CRI log record: skipped, as kubelet does
    end
    local p = partial[stream]
    if tag:sub(1, 1) == "P" then
      if p then
        p.pieces[#p.pieces + 1] = content
      else
        partial[stream] = { ts = ts, pieces = { content } }
      end
      return
    end
    if p then
      p.pieces[#p.pieces + 1] = content
      partial[stream] = nil
      emit({ ts = p.ts, stream = stream, text = table.concat(p.pieces) .. "\n" })
    else
      emit({ ts = ts, stream = stream, text = content .. "\n" })
    end
  end
  local parser = {}
  function parser.feed(chunk)
    local data = rest .. chunk
    local start = 1
    while true do
      local nl = data:find("\n", start, true)
      if not nl then
        break
      end
      record(data:sub(start, nl - 1))
      start = nl + 1
    end
    rest = data:sub(start)
  end
  -- what is left at the end of a file that is not followed any more
  function parser.finish()
    if rest ~= "" then
      record(rest)
      rest = ""
    end
    for stream, p in pairs(partial) do
      emit({ ts = p.ts, stream = stream, text = table.concat(p.pieces) })
      partial[stream] = nil
    end
  end
  return parser
end

-- --since: a Go duration (42m, 1h30m) before now, an RFC 3339 time, or Unix
-- seconds. Returns seconds since the epoch or nil.
function M.parse_since(text, now)
  local d = common.parse_duration(text)
  if d then
    return now - d
  end
  local t = common.parse_rfc3339(text)
  if t then
    return t
  end
  if text:match("^%d+%.?%d*$") then
    return tonumber(text)
  end
  return nil
end

-- The first n bytes of a file and its size, or nil.
local function first_bytes(path, n)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read(n) or ""
  local size = f:seek("end")
  f:close()
  return s, size
end

return common.command{
  name = "logs",
  args = "[OPTIONS] CONTAINER-ID",
  summary = "Print a container's log from its log file (stdout records to stdout, stderr to stderr).",
  flags = {
    { "follow", "f", "bool", "keep printing new lines until the container stops" },
    { "tail", nil, "int", "only the last N lines (default: all)", default = -1 },
    { "since", nil, "string", "only lines since a time: relative (42m, 1h) or RFC 3339 or Unix seconds", arg = "WHEN" },
    { "timestamps", "t", "bool", "prefix each line with its timestamp" },
    { "stream", nil, "string", "only stdout or stderr", arg = "STREAM" },
    { "previous", "p", "bool", "the log of the previous attempt of the container" },
  },
  run = function(ctx)
    local f = ctx.flags
    if #ctx.args ~= 1 then
      return ctx:usage(#ctx.args == 0 and "no container ID given" or "give exactly one CONTAINER-ID")
    end
    if f.stream and f.stream ~= "stdout" and f.stream ~= "stderr" then
      return ctx:usage(string.format("invalid stream %q, must be stdout or stderr", f.stream))
    end
    local since
    if f.since then
      since = M.parse_since(f.since, require("kubelua.core").now())
      if not since then
        return ctx:usage(string.format("invalid --since %q: want a duration (42m), an RFC 3339 time or Unix seconds",
          f.since))
      end
    end
    local rt = ctx:client()
    if not rt then
      return
    end
    local id = ctx.args[1]
    local st, err = rt:container_status{ container_id = id }
    if not st then
      return ctx:fail(err)
    end
    local path = st.status.log_path
    if path == "" then
      return ctx:fail("FAILED_PRECONDITION: container " .. id .. " has no log path")
    end
    if f.follow and st.status.state ~= "CONTAINER_RUNNING" and st.status.state ~= "CONTAINER_CREATED" then
      f.follow = false -- nothing more will be written: print what is there
    end
    if f.previous then
      local attempt = st.status.metadata and st.status.metadata.attempt or 0
      if attempt == 0 then
        return ctx:fail("NOT_FOUND: container " .. id .. " has no previous attempt")
      end
      path = path:gsub("(/)[^/]*(%.log)$", "%1" .. (attempt - 1) .. "%2")
      f.follow = false
    end
    local file, ferr = io.open(path, "rb")
    if not file then
      return ctx:fail("UNAVAILABLE: cannot read the log of container " .. id .. ": " .. tostring(ferr))
    end

    local broken = false -- the reader went away (a closed pipe)
    local function write(e)
      local out = e.stream == "stderr" and ctx.stderr or ctx.stdout
      local ok
      if f.timestamps then
        ok = out:write(e.ts, " ", e.text)
      else
        ok = out:write(e.text)
      end
      if not ok then
        broken = true
      end
    end
    local function keep(e)
      if f.stream and e.stream ~= f.stream then
        return false
      end
      if since then
        local t = common.parse_rfc3339(e.ts)
        if t and t < since then
          return false
        end
      end
      return true
    end

    -- What is in the file now: --since and --tail apply to it; with -f,
    -- what comes later prints as it is parsed.
    local backlog, following = {}, false
    local parser = M.parser(function(e)
      if keep(e) then
        if following then
          write(e)
        else
          backlog[#backlog + 1] = e
        end
      end
    end)
    local head = file:read(64) or ""
    file:seek("set", 0)
    parser.feed(file:read("*a") or "")
    local consumed = file:seek("cur")
    if not f.follow then
      parser.finish()
      file:close()
    end
    local first = f.tail >= 0 and math.max(1, #backlog - f.tail + 1) or 1
    for i = first, #backlog do
      write(backlog[i])
    end
    if not f.follow then
      return
    end
    following = true
    ctx.stdout:flush()
    local idle = 0
    while not broken do
      file:seek("cur", 0) -- clear the end-of-file mark
      local chunk = file:read(65536)
      if chunk then
        consumed = consumed + #chunk
        parser.feed(chunk)
        if not ctx.stdout:flush() then
          broken = true
        end
        idle = 0
      else
        task.sleep(POLL)
        idle = idle + POLL
        if idle >= CHECK then
          idle = 0
          local now_head, now_size = first_bytes(path, 64)
          local n = now_head and math.min(#head, #now_head)
          if now_head and #now_head > #head and now_head:sub(1, n) == head then
            head = now_head -- the file was shorter than the prefix we compare
          end
          if now_head and (now_head:sub(1, n) ~= head:sub(1, n) or now_size < consumed) then
            -- rotated (a new file under the name) or truncated: read the
            -- rest of the old one, then switch
            local tail = file:read("*a")
            if tail and tail ~= "" then
              parser.feed(tail)
            end
            file:close()
            file = io.open(path, "rb")
            if not file then
              break
            end
            head, consumed = file:read(64) or "", 0
            file:seek("set", 0)
          else
            local s = rt:container_status{ container_id = id }
            if not s or s.status.state ~= "CONTAINER_RUNNING" then
              local tail = file:read("*a")
              if tail and tail ~= "" then
                parser.feed(tail)
              end
              break
            end
          end
        end
      end
    end
    parser.finish()
    if file then
      file:close()
    end
  end,
}
