-- kubelua.cli.common: what the crictl-style commands share: flags, the
-- runtime endpoint, output formats, and the exit status.
--
-- Exit status (every command; scripts may rely on it):
--   0  success
--   1  the runtime or the API failed: an RPC error (NOT_FOUND, UNAVAILABLE,
--      DEADLINE_EXCEEDED, UNIMPLEMENTED, ...), an object that does not exist,
--      a log file that cannot be read, a probe that failed
--   2  usage error: an unknown flag, a missing or malformed argument or flag
--      value, a bad --output format, an invalid regular expression
--   `exec -s` exits with the command's own exit status when the command ran
--   (as crictl does); 1 and 2 then keep their meaning only when kubelua
--   itself reports an error on stderr.
--
-- stderr: every error is one line `kubelua CMD: MESSAGE`. When the message
-- comes from an RPC it starts with the gRPC status name, so
--   kubelua CMD: NOT_FOUND: /runtime.v1.RuntimeService/ContainerStatus: ...
--   kubelua CMD: UNAVAILABLE: /runtime.v1.RuntimeService/Version: connect to ...
-- and a script can match `: NOT_FOUND: ` or `: UNAVAILABLE: `. Usage errors
-- are `kubelua CMD: <what is wrong>` followed by a line
-- `Run 'kubelua CMD --help' for usage.`. Nothing but results goes to stdout.
--
-- Flags follow crictl's names. Long flags take `--name value` or
-- `--name=value`; short ones `-o json`, `-ojson` or `-o=json`; boolean short
-- flags combine (`-aq`); `--` ends the flags. Flags may come after
-- positional arguments (except for `exec`, where the first positional
-- argument starts the command to run). Every command also accepts the
-- connection flags below (a command's own flag wins when a short name is
-- taken, e.g. `logs -t` is --timestamps):
--   -r, --runtime-endpoint EP   (env CONTAINER_RUNTIME_ENDPOINT)
--   -i, --image-endpoint EP     (env IMAGE_SERVICE_ENDPOINT; default: the runtime's)
--   -c, --config FILE           (env CRI_CONFIG_FILE; default /etc/crictl.yaml)
--   -t, --timeout SECONDS       per-request timeout (also --request-timeout)
-- Precedence: flag, then environment, then the config file's
-- `runtime-endpoint`, `image-endpoint` and `timeout`, then crictl's
-- defaults: a 2 s timeout and the endpoints below, tried in order, where an
-- UNAVAILABLE answer to Version means "try the next one".
local core = require "kubelua.core"
local cri = require "kubelua.cri"

local M = {}

-- Exit statuses (above): success, runtime or API failure, usage error.
M.EXIT_OK, M.EXIT_ERROR, M.EXIT_USAGE = 0, 1, 2

-- Endpoints tried in order when none is configured (crictl's list).
M.DEFAULT_ENDPOINTS = {
  "unix:///run/containerd/containerd.sock",
  "unix:///run/crio/crio.sock",
  "unix:///var/run/cri-dockerd.sock",
}
M.DEFAULT_CONFIG = "/etc/crictl.yaml" -- crictl's configuration file
M.DEFAULT_TIMEOUT = 2 -- seconds, crictl's default on Unix

-- Kubernetes' well-known labels on containers and pods.
M.POD_NAME_LABEL = "io.kubernetes.pod.name"
M.POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"

-- ------------------------------------------------------------ flag parsing

local GLOBAL_FLAGS = {
  { "runtime-endpoint", "r", "string", "runtime endpoint (unix:///path, /path or host:port)" },
  { "image-endpoint", "i", "string", "image service endpoint (default: the runtime endpoint)" },
  { "config", "c", "string", "crictl-style config file (default /etc/crictl.yaml)" },
  { "timeout", "t", "number", "timeout of each request, in seconds (default 2)" },
  { "request-timeout", nil, "number", "the same as --timeout, for commands where -t/--timeout mean something else" },
  { "help", "h", "bool", "show this help" },
}

local function key_of(name)
  return (name:gsub("-", "_"))
end

-- Build the lookup tables of a command's flags plus the global ones.
-- A flag spec is { long, short, kind, help, default=, arg= } with kind one of
-- bool, string, int, number, list (repeatable string).
local function flag_table(spec)
  local by_long, by_short, all = {}, {}, {}
  local function add(f, global)
    local d = { long = f[1], short = f[2], kind = f[3], help = f[4], default = f.default, arg = f.arg,
      aliases = f.aliases, global = global, hidden = f.hidden }
    if by_long[d.long] then
      return -- a command's own flag wins over a global of the same name
    end
    if d.short and by_short[d.short] then
      d.short = nil
    end
    by_long[d.long] = d
    for _, a in ipairs(d.aliases or {}) do
      by_long[a] = by_long[a] or d
    end
    if d.short then
      by_short[d.short] = d
    end
    all[#all + 1] = d
  end
  for _, f in ipairs(spec) do
    add(f, false)
  end
  for _, f in ipairs(GLOBAL_FLAGS) do
    add(f, true)
  end
  return by_long, by_short, all
end

local function convert(d, raw, shown)
  if d.kind == "int" then
    local n = tonumber(raw)
    if not n or n ~= math.floor(n) then
      return nil, string.format("invalid value %q for flag %s: not an integer", raw, shown)
    end
    return n
  elseif d.kind == "number" then
    local n = tonumber(raw)
    if not n or n ~= n then
      return nil, string.format("invalid value %q for flag %s: not a number", raw, shown)
    end
    return n
  elseif d.kind == "bool" then
    if raw == "true" or raw == "1" then
      return true
    elseif raw == "false" or raw == "0" then
      return false
    end
    return nil, string.format("invalid value %q for flag %s: not a boolean", raw, shown)
  end
  return raw
end

-- parse(args, spec, {stop_at_positional=}) -> flags, positionals | nil, message
-- flags: keyed by the long name with "-" turned into "_".
function M.parse(args, spec, opts)
  local by_long, by_short, all = flag_table(spec)
  local flags, pos = {}, {}
  for _, d in ipairs(all) do
    if d.kind == "list" then
      flags[key_of(d.long)] = {}
    elseif d.default ~= nil then
      flags[key_of(d.long)] = d.default
    end
  end
  local function set(d, v)
    local k = key_of(d.long)
    if d.kind == "list" then
      table.insert(flags[k], v)
    else
      flags[k] = v
    end
  end
  local i, n = 1, #args
  -- A flag that takes a value: `value` when it came with the flag, else the
  -- next argument; converted to the flag's kind and stored. nil, message
  -- when the value is missing or malformed.
  local function take(d, value, shown)
    if value == nil then
      i = i + 1
      value = args[i]
      if value == nil then
        return nil, "flag needs an argument: " .. shown
      end
    end
    local v, err = convert(d, value, shown)
    if v == nil then
      return nil, err
    end
    set(d, v)
    return true
  end
  while i <= n do
    local a = args[i]
    if a == "--" then
      for j = i + 1, n do
        pos[#pos + 1] = args[j]
      end
      break
    elseif a:sub(1, 2) == "--" then
      local name, value = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:sub(3)
      local d = by_long[name]
      if not d then
        return nil, "unknown flag: --" .. name
      end
      if d.kind == "bool" and value == nil then
        set(d, true)
      else
        local ok, err = take(d, value, "--" .. name)
        if not ok then
          return nil, err
        end
      end
    elseif a:sub(1, 1) == "-" and #a > 1 and not tonumber(a) then
      local j = 2
      while j <= #a do
        local c = a:sub(j, j)
        local d = by_short[c]
        if not d then
          return nil, "unknown flag: -" .. c
        end
        if d.kind == "bool" then
          set(d, true)
          j = j + 1
        else
          -- the rest of the word is the value (-ojson, -o=json), else the next argument
          local value = a:sub(j + 1):gsub("^=", "", 1)
          local ok, err = take(d, value ~= "" and value or nil, "-" .. c)
          if not ok then
            return nil, err
          end
          break
        end
      end
    else
      pos[#pos + 1] = a
      if opts and opts.stop_at_positional then
        for j = i + 1, n do
          pos[#pos + 1] = args[j]
        end
        break
      end
    end
    i = i + 1
  end
  return flags, pos
end

-- The help text of a command: its usage line, description and flags.
function M.help_text(cmd)
  local _, _, all = flag_table(cmd.flags or {})
  local out = { "usage: kubelua " .. cmd.name .. " " .. (cmd.args or "[OPTIONS]"), "" }
  if cmd.summary then
    out[#out + 1] = cmd.summary
    out[#out + 1] = ""
  end
  local function section(title, global)
    out[#out + 1] = title
    for _, d in ipairs(all) do
      if d.global == global and not d.hidden then
        local names = (d.short and ("-" .. d.short .. ", ") or "    ") .. "--" .. d.long
        if d.kind ~= "bool" then
          names = names .. " " .. (d.arg or (d.kind == "int" and "N" or d.kind == "number" and "N" or "VALUE"))
        end
        out[#out + 1] = string.format("  %-32s %s", names, d.help or "")
      end
    end
  end
  section("Options:", false)
  section("Connection:", true)
  return table.concat(out, "\n") .. "\n"
end

-- ------------------------------------------------------------ command frame

local Ctx = {}
Ctx.__index = Ctx

-- ctx:out(s), ctx:line(s): write to the command's stdout (line adds a newline).
function Ctx:out(s)
  self.stdout:write(s)
end

function Ctx:line(s)
  self.stdout:write(s, "\n")
end

-- An error: one line on stderr, exit status at least 1.
function Ctx:fail(msg)
  self.stderr:write("kubelua ", self.name, ": ", (tostring(msg):gsub("%s*\n%s*", " ")), "\n")
  if self.status < M.EXIT_ERROR then
    self.status = M.EXIT_ERROR
  end
  return nil
end

-- A usage error: the message, a hint, exit status 2.
function Ctx:usage(msg)
  self.stderr:write("kubelua ", self.name, ": ", msg, "\nRun 'kubelua ", self.name, " --help' for usage.\n")
  self.status = M.EXIT_USAGE
  return nil
end

-- Read a crictl-style YAML config; flat `key: value` lines are all we need.
-- The full loader (kubelua.yaml) is used when it is there.
local function read_config(path)
  local f = io.open(path, "rb")
  if not f then
    return {}
  end
  local text = f:read("*a") or ""
  f:close()
  local ok, yaml = pcall(require, "kubelua.yaml")
  if ok and type(yaml) == "table" and type(yaml.decode) == "function" then
    local v = yaml.decode(text, { name = path })
    if type(v) == "table" and v ~= yaml.null then
      return v
    end -- not YAML kubelua.yaml reads: the flat reader below may still
  end
  local cfg = {}
  for line in text:gmatch("[^\n]+") do
    local k, v = line:match("^([%w_-]+)%s*:%s*(.-)%s*$")
    if k then
      v = v:gsub("%s+#.*$", "")
      local q = v:match('^"(.*)"$') or v:match("^'(.*)'$")
      if q then
        v = q
      elseif v == "true" or v == "false" then
        v = v == "true"
      elseif tonumber(v) then
        v = tonumber(v)
      end
      cfg[k] = v
    end
  end
  return cfg
end
M.read_config = read_config

local function env(name)
  local v = os.getenv(name)
  if v == nil or v == "" then
    return nil
  end
  return v
end

-- Where to connect: { runtime = ep|nil, image = ep|nil, timeout = s, config = path }.
-- runtime nil means "try the default list".
function Ctx:endpoints()
  local f = self.flags
  local path = f.config or env("CRI_CONFIG_FILE") or M.DEFAULT_CONFIG
  local cfg = read_config(path)
  local function str(v)
    return type(v) == "string" and v ~= "" and v or nil
  end
  local timeout = f.request_timeout or f.timeout
  if self.own_timeout then -- the command uses --timeout for itself
    timeout = f.request_timeout
  end
  if timeout == nil or timeout <= 0 then
    timeout = tonumber(cfg.timeout)
    if timeout == nil or timeout <= 0 then
      timeout = M.DEFAULT_TIMEOUT
    end
  end
  return {
    runtime = f.runtime_endpoint or env("CONTAINER_RUNTIME_ENDPOINT") or str(cfg["runtime-endpoint"]),
    image = f.image_endpoint or env("IMAGE_SERVICE_ENDPOINT") or str(cfg["image-endpoint"]),
    timeout = timeout,
    config = path,
  }
end

-- The first endpoint of `list` whose runtime answers Version: a client, or
-- nil, err, code. An UNAVAILABLE answer means "try the next one" (crictl's
-- rule; crictl 1.26 once stopped at the first, kubernetes#114956); any other
-- error ends the search.
function M.first_answering(list, opts)
  local tried = {}
  for _, candidate in ipairs(list) do
    local c, err, code = cri.connect(candidate, opts)
    if c then
      local v
      v, err, code = c:version({}, { timeout = opts.timeout })
      if v then
        return c
      end
      c:close()
    end
    tried[#tried + 1] = candidate
    if code ~= "UNAVAILABLE" then
      return nil, err, code
    end
  end
  return nil, "UNAVAILABLE: none of the endpoints answered (" .. table.concat(tried, ", ") .. ")",
    "UNAVAILABLE"
end

-- The client and the IDs a command acts on: the IDs given as arguments, or
-- with --all those list(client) returns (an array of IDs, or nil, err).
-- Exactly one of the two must be given. Returns nothing after reporting a
-- usage or runtime error.
function Ctx:targets(noun, list)
  local ids = self.args
  if self.flags.all and #ids > 0 then
    return self:usage("cannot give " .. noun .. "s together with --all")
  elseif not self.flags.all and #ids == 0 then
    return self:usage("give at least one " .. noun .. ", or --all")
  end
  local rt = self:client()
  if not rt then
    return
  end
  if self.flags.all then
    local all, err = list(rt)
    if not all then
      return self:fail(err)
    end
    ids = all
  end
  return rt, ids
end

-- Collect the `id` of each item of a list response's `field`, or pass the
-- error on: ids("items", rt:list_pod_sandbox{}) keeps the call's err.
function M.ids(field, resp, err)
  if not resp then
    return nil, err
  end
  local ids = {}
  for _, x in ipairs(resp[field]) do
    ids[#ids + 1] = x.id
  end
  return ids
end

-- The CRI client (connected once, lazily); nil after reporting the error.
function Ctx:client()
  if self._client then
    return self._client
  end
  local ep = self:endpoints()
  local c, err
  if ep.runtime then
    c, err = cri.connect(ep.runtime, { image_endpoint = ep.image, timeout = ep.timeout })
  else
    local code
    c, err, code = M.first_answering(M.DEFAULT_ENDPOINTS, { image_endpoint = ep.image, timeout = ep.timeout })
    if not c and code == "UNAVAILABLE" then
      err = err .. "; no endpoint is set: use --runtime-endpoint, CONTAINER_RUNTIME_ENDPOINT or " ..
        "runtime-endpoint in " .. ep.config
    end
  end
  if not c then
    return self:fail(err)
  end
  self._client = c
  return c
end

-- Check the -o/--output value against the formats a command offers.
function Ctx:format(allowed)
  local o = self.flags.output
  for _, a in ipairs(allowed) do
    if o == a then
      return o
    end
  end
  return self:usage(string.format("unsupported output format %q (one of: %s)", tostring(o),
    table.concat(allowed, ", ")))
end

-- How a command without positional arguments starts: ctx:format(allowed),
-- then a usage error for any argument, then (when `connect`) ctx:client().
-- Returns the format and the client; nil after reporting an error.
function Ctx:format_no_args(allowed, connect)
  local format = self:format(allowed)
  if not format then
    return nil
  end
  if #self.args > 0 then
    return self:usage("unexpected argument " .. self.args[1])
  end
  if not connect then
    return format
  end
  local rt = self:client()
  if not rt then
    return nil
  end
  return format, rt
end

-- Parse repeated `--label k=v` flags into a map.
function Ctx:labels()
  local out = {}
  for _, s in ipairs(self.flags.label or {}) do
    local k, v = s:match("^([^=]+)=([^=]*)$")
    if not k then
      return self:usage("incorrectly specified label: " .. s .. " (want key=value)")
    end
    out[k] = v
  end
  return out
end

-- Compile a regular expression flag; nil (after a usage error) when invalid,
-- false when the flag is not set.
function Ctx:regex(flag)
  local pattern = self.flags[flag]
  if pattern == nil or pattern == "" then
    return false
  end
  local re, err = M.regex(pattern)
  if not re then
    return self:usage(string.format("invalid regular expression %q for --%s: %s", pattern, flag, err))
  end
  return re
end

-- command{ name=, args=, summary=, flags={...}, run=function(ctx) end,
--          stop_at_positional=, own_timeout= } -> module { main, run, spec }
-- run(ctx) uses ctx.flags, ctx.args, ctx:client(), ctx:line(), ctx:fail().
-- The module's run(args, env) returns the exit status; env may carry a
-- ready client to use (a fake in tests, say), stdout and stderr (objects
-- with :write). main(args) is what `kubelua NAME` calls.
function M.command(cmd)
  local mod = { spec = cmd }
  function mod.run(args, env_)
    env_ = env_ or {}
    local ctx = setmetatable({
      name = cmd.name,
      stdout = env_.stdout or io.stdout,
      stderr = env_.stderr or io.stderr,
      status = M.EXIT_OK,
      _client = env_.client,
      own_timeout = cmd.own_timeout,
    }, Ctx)
    local flags, args_or_err = M.parse(args, cmd.flags or {}, { stop_at_positional = cmd.stop_at_positional })
    if not flags then
      ctx:usage(args_or_err)
      return ctx.status
    end
    ctx.flags, ctx.args = flags, args_or_err
    if flags.help then
      ctx:out(M.help_text(cmd))
      return ctx.status
    end
    cmd.run(ctx)
    if ctx.stdout.flush then
      ctx.stdout:flush()
    end
    return ctx.status
  end
  function mod.main(args)
    core.set_exit_code(mod.run(args))
  end
  return mod
end

-- ------------------------------------------------------------ regex (POSIX ERE)

local ffi_ok, ffi = pcall(require, "ffi")
local regex_ready = false

local REG_EXTENDED, REG_NOSUB = 1, 8 -- glibc's values

local function regex_setup()
  if regex_ready then
    return true
  end
  if not ffi_ok then
    return false
  end
  pcall(ffi.cdef, [[
    int regcomp(void *preg, const char *regex, int cflags);
    int regexec(const void *preg, const char *string, size_t nmatch, void *pmatch, int eflags);
    size_t regerror(int errcode, const void *preg, char *errbuf, size_t errbuf_size);
    void regfree(void *preg);
  ]])
  regex_ready = true
  return true
end

-- regex(pattern) -> match(s) -> bool | nil, message. POSIX extended regular
-- expressions (libc's regcomp), unanchored like Go's MatchString; crictl's
-- RE2 adds \d, (?i) and friends, which ERE spells [0-9] and so on.
function M.regex(pattern)
  if not regex_setup() then
    return function(s)
      return s:find(pattern) ~= nil
    end
  end
  -- larger than glibc's regex_t (64 bytes on 64-bit), freed with regfree
  local buf = ffi.new("char[256]")
  local rc = ffi.C.regcomp(buf, pattern, REG_EXTENDED + REG_NOSUB)
  if rc ~= 0 then
    local msg = ffi.new("char[256]")
    ffi.C.regerror(rc, buf, msg, 256)
    return nil, ffi.string(msg)
  end
  ffi.gc(buf, ffi.C.regfree)
  return function(s)
    return ffi.C.regexec(buf, s, 0, nil, 0) == 0
  end
end

-- ------------------------------------------------------------ folders

local dir_ready = false

-- Names in a folder (without . and ..), or nil when it cannot be read.
-- Linux with glibc on 64-bit only (struct dirent64's layout); elsewhere nil.
function M.list_dir(path)
  if not ffi_ok or ffi.os ~= "Linux" or not ffi.abi("64bit") then
    return nil
  end
  if not dir_ready then
    pcall(ffi.cdef, [[
      struct kl_cli_dirent { uint64_t d_ino; int64_t d_off; unsigned short d_reclen;
                             unsigned char d_type; char d_name[256]; };
      void *opendir(const char *name);
      struct kl_cli_dirent *readdir(void *dirp);
      int closedir(void *dirp);
    ]])
    dir_ready = true
  end
  local d = ffi.C.opendir(path)
  if d == nil then
    return nil
  end
  local names = {}
  while true do
    local e = ffi.C.readdir(d)
    if e == nil then
      break
    end
    local name = ffi.string(e.d_name)
    if name ~= "." and name ~= ".." then
      names[#names + 1] = name
    end
  end
  ffi.C.closedir(d)
  table.sort(names)
  return names
end

-- ------------------------------------------------------------ formatting

-- IDs as crictl shows them: without `prefix`, at most 13 characters.
function M.trunc_id(id, prefix)
  if prefix and id:sub(1, #prefix) == prefix then
    id = id:sub(#prefix + 1)
  end
  return id:sub(1, 13)
end

-- docker/go-units' HumanDuration wording ("2 minutes", "About an hour").
function M.human_duration(secs)
  local s = math.floor(secs)
  if s < 1 then
    return "Less than a second"
  elseif s == 1 then
    return "1 second"
  elseif s < 60 then
    return s .. " seconds"
  end
  local minutes = math.floor(secs / 60)
  if minutes == 1 then
    return "About a minute"
  elseif minutes < 60 then
    return minutes .. " minutes"
  end
  local hours = math.floor(secs / 3600 + 0.5)
  if hours == 1 then
    return "About an hour"
  elseif hours < 48 then
    return hours .. " hours"
  elseif hours < 24 * 7 * 2 then
    return math.floor(hours / 24) .. " days"
  elseif hours < 24 * 30 * 2 then
    return math.floor(hours / 24 / 7) .. " weeks"
  elseif hours < 24 * 365 * 2 then
    return math.floor(hours / 24 / 30) .. " months"
  end
  return math.floor(secs / 3600 / 24 / 365) .. " years"
end

-- Seconds (a double) of a nanosecond timestamp (number or boxed int64).
function M.ns_seconds(ns)
  return tonumber(ns) / 1e9
end

-- "2 minutes ago" for a nanosecond timestamp.
function M.ago(ns, now)
  return M.human_duration((now or core.now()) - M.ns_seconds(ns)) .. " ago"
end

-- docker/go-units' HumanSizeWithPrecision: decimal units, %g with
-- `precision` significant digits ("1.03MB", "4.096kB", "0B").
local SIZE_UNITS = { "B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB" }
function M.human_size(bytes, precision)
  local size, i = tonumber(bytes) or 0, 1
  while size >= 1000 and i < #SIZE_UNITS do
    size = size / 1000
    i = i + 1
  end
  return string.format("%." .. (precision or 4) .. "g%s", size, SIZE_UNITS[i])
end

-- Split nanoseconds since the epoch into whole seconds and nanoseconds.
local function split_ns(ns)
  if type(ns) == "number" then
    local s = math.floor(ns / 1e9)
    return s, ns - s * 1e9
  end
  local s = ns / 1000000000LL
  local r = ns - s * 1000000000LL
  if r < 0 then
    s, r = s - 1, r + 1000000000LL
  end
  return tonumber(s), tonumber(r)
end

-- Days since 1970-01-01 of a civil date (proleptic Gregorian).
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  return m <= 2 and y + 1 or y, m, d
end

-- RFC 3339 with nanoseconds, UTC, trailing zeros of the fraction dropped
-- (Go's time.RFC3339Nano): 2024-05-01T10:00:00.5Z.
function M.rfc3339(ns)
  local s, frac = split_ns(ns)
  local days = math.floor(s / 86400)
  local rem = s - days * 86400
  local y, m, d = civil_from_days(days)
  local text = string.format("%04d-%02d-%02dT%02d:%02d:%02d", y, m, d, math.floor(rem / 3600),
    math.floor(rem / 60) % 60, rem % 60)
  if frac > 0 then
    text = text .. ("." .. string.format("%09d", frac)):gsub("0+$", "")
  end
  return text .. "Z"
end

-- Go's zero time.Time, as crictl prints a timestamp that is not set.
M.ZERO_TIME = "0001-01-01T00:00:00Z"

-- Parse RFC 3339 (fraction and zone optional; no zone means UTC) into
-- seconds since the epoch (a double: microsecond precision is kept).
function M.parse_rfc3339(text)
  local y, mo, d, h, mi, s, rest = text:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then
    return nil
  end
  local frac, zone = rest:match("^(%.%d+)(.*)$")
  if not frac then
    frac, zone = "", rest
  end
  local offset = 0
  if zone == "Z" or zone == "z" or zone == "" then
    offset = 0
  else
    local sign, zh, zm = zone:match("^([+-])(%d%d):?(%d%d)$")
    if not sign then
      return nil
    end
    offset = (tonumber(zh) * 3600 + tonumber(zm) * 60) * (sign == "+" and 1 or -1)
  end
  local days = days_from_civil(tonumber(y), tonumber(mo), tonumber(d))
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s) + (tonumber("0" .. frac) or 0) - offset
end

-- Go duration text ("1h30m", "42m", "1.5s", "300ms") in seconds, or nil.
local DURATION_UNITS = { ns = 1e-9, us = 1e-6, ["µs"] = 1e-6, ms = 1e-3, s = 1, m = 60, h = 3600 }
function M.parse_duration(text)
  if text == "0" then
    return 0
  end
  local total, matched, rest = 0, false, text
  local sign = 1
  if rest:sub(1, 1) == "-" then
    sign, rest = -1, rest:sub(2)
  elseif rest:sub(1, 1) == "+" then
    rest = rest:sub(2)
  end
  while rest ~= "" do
    local num, unit, tail = rest:match("^(%d*%.?%d+)(%a+)(.*)$")
    if not num then
      num, unit, tail = rest:match("^(%d*%.?%d+)(µs)(.*)$")
    end
    if not num or not DURATION_UNITS[unit] then
      return nil
    end
    total = total + tonumber(num) * DURATION_UNITS[unit]
    matched = true
    rest = tail
  end
  return matched and sign * total or nil
end

-- A tab-aligned table as crictl's (Go tabwriter: minimum width 20, padding
-- 3, the last column not padded). rows[1] is the header.
function M.table(rows)
  local widths = {}
  local function width(s)
    return #s - select(2, s:gsub("[\128-\191]", ""))
  end
  for _, row in ipairs(rows) do
    for i = 1, #row - 1 do
      local w = math.max(20, width(row[i]) + 3)
      if not widths[i] or w > widths[i] then
        widths[i] = w
      end
    end
  end
  local out = {}
  for r, row in ipairs(rows) do
    local cells = {}
    for i, cell in ipairs(row) do
      if i < #row then
        cells[i] = cell .. string.rep(" ", widths[i] - width(cell))
      else
        cells[i] = cell
      end
    end
    out[r] = table.concat(cells)
  end
  return table.concat(out, "\n") .. (#out > 0 and "\n" or "")
end

-- ------------------------------------------------------------ protobuf -> JSON

local fields_cache = {}

-- camelCase JSON name of a proto field (protoc's json_name rule).
local function json_name(name)
  return (name:gsub("_(%l)", string.upper):gsub("_(%d)", "%1"))
end
M.json_name = json_name

local function fields_of(tname)
  local f = fields_cache[tname]
  if f then
    return f
  end
  local pb = require "kubelua.pb"
  f = {}
  for _, d in ipairs(pb.fields(tname)) do
    local entry = { json = json_name(d.name), type = d.type, type_name = d.type_name,
      repeated = d.label == "repeated", map = d.map }
    if d.map then
      for _, ef in ipairs(pb.fields(d.type_name)) do
        if ef.name == "value" then
          entry.value = { type = ef.type, type_name = ef.type_name }
        end
      end
    end
    f[d.name] = entry
  end
  fields_cache[tname] = f
  return f
end

local INT64_TYPES = { int64 = true, sint64 = true, sfixed64 = true, uint64 = true, fixed64 = true }

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = {}
    for k = 3, 0, -1 do
      local idx = math.floor(n / 64 ^ k) % 64
      q[#q + 1] = B64:sub(idx + 1, idx + 1)
    end
    if not b then
      q[3], q[4] = "=", "="
    elseif not c then
      q[4] = "="
    end
    out[#out + 1] = table.concat(q)
  end
  return table.concat(out)
end

local to_json

local function scalar_json(v, ftype, type_name)
  if ftype == "message" then
    return to_json(v, type_name)
  elseif INT64_TYPES[ftype] then
    if type(v) == "number" then
      return string.format("%.0f", v)
    end
    return (tostring(v):gsub("U?LL$", ""))
  elseif ftype == "double" or ftype == "float" then
    if v ~= v then
      return "NaN"
    elseif v == math.huge then
      return "Infinity"
    elseif v == -math.huge then
      return "-Infinity"
    end
    return v
  elseif ftype == "bytes" then
    return base64(v)
  end
  return v
end

-- to_json(message_table, "runtime.v1.Type") -> a JSON-ready value shaped as
-- crictl prints it (protojson with defaults): camelCase field names, 64-bit
-- integers as decimal strings, enums by name, bytes in base64, repeated
-- fields as arrays (empty ones too), maps as objects. Absent message fields
-- stay absent.
to_json = function(msg, tname)
  local json = require "kubelua.json"
  local fields = fields_of(tname)
  local out = {}
  for k, v in pairs(msg) do
    local f = fields[k]
    if f == nil then
      out[k] = v -- not a proto field (added by the caller): kept as is
    elseif f.map then
      local m = json.object()
      for mk, mv in pairs(v) do
        m[tostring(mk)] = scalar_json(mv, f.value.type, f.value.type_name)
      end
      out[f.json] = m
    elseif f.repeated then
      local a = json.array()
      for i, item in ipairs(v) do
        a[i] = scalar_json(item, f.type, f.type_name)
      end
      out[f.json] = a
    else
      out[f.json] = scalar_json(v, f.type, f.type_name)
    end
  end
  return out
end
M.to_json = to_json

-- The `info` map of a verbose status: values that hold JSON objects are
-- parsed, other values lose their surrounding quotes (crictl's rule).
function M.info_values(info, into)
  local json = require "kubelua.json"
  into = into or {}
  for k, v in pairs(info or {}) do
    local parsed
    if v:match("^%s*{") then
      parsed = json.decode(v)
    end
    into[k] = parsed or (v:gsub('^"', ""):gsub('"$', ""))
  end
  return into
end

-- ------------------------------------------------------------ YAML

local YAML_WORDS = {}
for _, w in ipairs({ "y", "yes", "n", "no", "true", "false", "on", "off", "null", "~" }) do
  YAML_WORDS[w] = true
end

local function yaml_string(s)
  local json = require "kubelua.json"
  if s == "" or YAML_WORDS[s:lower()] or s:find("^[%s.+%-?:,%[%]{}#&*!|>'\"%%@`]") or s:find("%s$")
      or s:find("^[%d_.:eE+-]+$") or s:find("^%d%d%d%d%-") or s:find("^0[xXoObB]")
      or s:find(": ", 1, true) or s:find(" #", 1, true) or s:find(":$") or s:find("[%c\128-\255]") then
    return json.quote(s)
  end
  return s
end

local function yaml_scalar(v)
  local json = require "kubelua.json"
  local tv = type(v)
  if tv == "string" then
    return yaml_string(v)
  elseif tv == "table" then
    if v == json.null then
      return "null"
    end
    return nil
  end
  return json.encode(v)
end

local function is_empty(v)
  return type(v) == "table" and next(v) == nil
end

local yaml_lines

local function yaml_kind(v)
  local json = require "kubelua.json"
  if getmetatable(v) == json.array_mt then
    return "array"
  elseif getmetatable(v) == json.object_mt then
    return "object"
  end
  return (#v > 0) and "array" or "object"
end

yaml_lines = function(v, indent, out)
  local pad = string.rep(" ", indent)
  if yaml_kind(v) == "array" then
    for _, item in ipairs(v) do
      local s = yaml_scalar(item)
      if s then
        out[#out + 1] = pad .. "- " .. s
      elseif is_empty(item) then
        out[#out + 1] = pad .. "- " .. (yaml_kind(item) == "array" and "[]" or "{}")
      else
        local sub = {}
        yaml_lines(item, indent + 2, sub)
        sub[1] = pad .. "- " .. sub[1]:sub(indent + 3)
        for _, l in ipairs(sub) do
          out[#out + 1] = l
        end
      end
    end
  else
    local keys = {}
    for k in pairs(v) do
      keys[#keys + 1] = tostring(k)
    end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local item = v[k]
      if item == nil then
        item = v[tonumber(k)]
      end
      local s = yaml_scalar(item)
      local key = yaml_string(k)
      if s then
        out[#out + 1] = pad .. key .. ": " .. s
      elseif is_empty(item) then
        out[#out + 1] = pad .. key .. ": " .. (yaml_kind(item) == "array" and "[]" or "{}")
      else
        out[#out + 1] = pad .. key .. ":"
        -- sequences inside a mapping are not indented (go-yaml's style)
        yaml_lines(item, yaml_kind(item) == "array" and indent or indent + 2, out)
      end
    end
  end
  return out
end

-- yaml(value) -> text: block style, keys sorted, strings quoted only when
-- they would read back as something else.
function M.yaml(v)
  local s = yaml_scalar(v)
  if s then
    return s .. "\n"
  elseif is_empty(v) then
    return (yaml_kind(v) == "array" and "[]" or "{}") .. "\n"
  end
  return table.concat(yaml_lines(v, 0, {}), "\n") .. "\n"
end

-- Print a JSON-ready value as json (2-space indent) or yaml.
function Ctx:emit(value, format)
  if format == "yaml" then
    self:out(M.yaml(value))
  else
    self:line(require("kubelua.json").encode(value, { indent = "  " }))
  end
end

-- ------------------------------------------------------------ CRI helpers

local CONTAINER_STATES = {
  CONTAINER_CREATED = "Created", CONTAINER_RUNNING = "Running", CONTAINER_EXITED = "Exited",
  CONTAINER_UNKNOWN = "Unknown",
}
local POD_STATES = { SANDBOX_READY = "Ready", SANDBOX_NOTREADY = "NotReady" }

-- container_state(s), pod_state(s) -> crictl's column text of a CRI state ("Running", "Ready").
function M.container_state(s)
  return CONTAINER_STATES[s] or tostring(s)
end

function M.pod_state(s)
  return POD_STATES[s] or tostring(s)
end

-- --state values as crictl takes them.
M.CONTAINER_STATE_FLAG = { created = "CONTAINER_CREATED", running = "CONTAINER_RUNNING",
  exited = "CONTAINER_EXITED", unknown = "CONTAINER_UNKNOWN" }
M.POD_STATE_FLAG = { ready = "SANDBOX_READY", notready = "SANDBOX_NOTREADY" } -- --state values of pods

-- Newest first (crictl's order for ps and pods), then --latest/--last.
function M.newest_first(items, latest, last)
  table.sort(items, function(a, b)
    if a.created_at ~= b.created_at then
      return a.created_at > b.created_at
    end
    return a.id < b.id
  end)
  local n = #items
  if latest then
    n = 1
  end
  if last and last > 0 then
    n = last
  end
  for i = #items, n + 1, -1 do
    items[i] = nil
  end
  return items
end

-- One flag list of several, in order: a command's own flags followed by
-- shared ones such as CONTAINER_FILTER_FLAGS. The lists are not changed.
function M.join_flags(...)
  local out = {}
  for i = 1, select("#", ...) do
    for _, f in ipairs((select(i, ...))) do
      out[#out + 1] = f
    end
  end
  return out
end

-- The flags shared by the commands that select containers (ps, inspect).
M.CONTAINER_FILTER_FLAGS = {
  { "id", nil, "string", "filter by container id", arg = "ID" },
  { "name", nil, "string", "filter by container name (regular expression)", arg = "REGEX" },
  { "namespace", nil, "string", "filter by pod namespace (regular expression)", arg = "REGEX" },
  { "pod", "p", "string", "filter by pod id", arg = "POD-ID" },
  { "image", nil, "string", "filter by image (name or id)", arg = "IMAGE" },
  { "state", "s", "string", "filter by state: created, running, exited or unknown", arg = "STATE" },
  { "label", nil, "list", "filter by label key=value (repeatable)", arg = "KEY=VALUE" },
  { "all", "a", "bool", "all containers (default: running only)" },
  { "latest", "l", "bool", "only the most recently created container (any state)" },
  { "last", "n", "int", "the N most recently created containers (any state)" },
}

-- The filter flags that ps, pods and the inspect family share, applied
-- before they list. --id goes into filter.id; --state into filter.state,
-- looked up in `states` (CONTAINER_STATE_FLAG or POD_STATE_FLAG), a usage
-- error "--state should be STATE_NAMES" when it is not there; --label into
-- filter.label_selector; --name and --namespace are compiled; then the
-- client is connected. Returns the client and the --name and --namespace
-- matchers (false when the flag is not set); nil after reporting an error.
function Ctx:selectors(filter, states, state_names)
  local f = self.flags
  if f.id then
    filter.id = f.id
  end
  if f.state then
    local st = states[f.state:lower()]
    if not st then
      return self:usage("--state should be " .. state_names)
    end
    filter.state = { state = st }
  end
  local labels = self:labels()
  if not labels then
    return nil
  end
  if next(labels) then
    filter.label_selector = labels
  end
  local name_re = self:regex("name")
  local ns_re = name_re ~= nil and self:regex("namespace")
  if name_re == nil or ns_re == nil then
    return nil
  end
  local rt = self:client()
  if not rt then
    return nil
  end
  return rt, name_re, ns_re
end

-- Containers selected by ps-style flags, newest first; nil after an error.
function Ctx:select_containers()
  local f = self.flags
  local filter = { pod_sandbox_id = f.pod }
  local rt, name_re, ns_re = self:selectors(filter, M.CONTAINER_STATE_FLAG,
    "one of created, running, exited or unknown")
  if not rt then
    return nil
  end
  if not f.state and not f.all then
    filter.state = { state = "CONTAINER_RUNNING" }
  end
  if f.latest or (f.last and f.last > 0) then
    filter.state = nil -- latest/last look at every state, as crictl's do
  end
  local r, err = rt:list_containers{ filter = filter }
  if not r then
    return self:fail(err)
  end
  local image_id
  if f.image then
    local st, ierr = rt:image_status{ image = { image = f.image } }
    if not st then
      return self:fail(ierr)
    end
    image_id = st.image and st.image.id or false
  end
  local out = {}
  for _, c in ipairs(r.containers) do
    local ok = true
    if f.image then
      local img = c.image and c.image.image or ""
      ok = image_id and (c.image_ref == image_id or img == image_id or img == f.image) or false
    end
    if ok and name_re then
      ok = name_re(c.metadata and c.metadata.name or "")
    end
    if ok and ns_re then
      ok = ns_re(c.labels[M.POD_NAMESPACE_LABEL] or "unknown")
    end
    if ok then
      out[#out + 1] = c
    end
  end
  return M.newest_first(out, f.latest, f.last)
end

-- The output of the list commands (ps, pods, images) other than their
-- table. With -q the items' IDs, one a line; with -o json or yaml the items
-- as the CRI list response `tname` holds them in `field`. Returns true when
-- it printed, false when the table is the caller's to print.
function Ctx:emit_list(items, format, field, tname)
  if self.flags.quiet then
    for _, x in ipairs(items) do
      self:line(x.id)
    end
    return true
  elseif format ~= "table" then
    self:emit(M.to_json({ [field] = items }, tname), format)
    return true
  end
  return false
end

-- ------------------------------------------------------------ inspect family

-- The flags of inspect, inspectp and inspecti (before their filter flags).
M.INSPECT_FLAGS = {
  { "output", "o", "string", "output format: json, yaml or table", default = "json", arg = "FORMAT" },
  { "quiet", "q", "bool", "leave out the runtime's verbose info" },
}

-- Add a "Labels:" or "Annotations:" block of the inspect family's table
-- format to `lines`: the title, then one tab-indented `key -> value` line a
-- key, sorted.
function M.map_lines(lines, title, map)
  lines[#lines + 1] = title .. ":"
  for _, k in ipairs(require("kubelua.pretty").sorted_keys(map)) do
    lines[#lines + 1] = "\t" .. k .. " -> " .. map[k]
  end
end

-- The verbose info of a status as Go prints a map: Info: map[k:v k2:v2].
local function info_line(info)
  local parts = {}
  for _, k in ipairs(require("kubelua.pretty").sorted_keys(info or {})) do
    parts[#parts + 1] = k .. ":" .. info[k]
  end
  return "Info: map[" .. table.concat(parts, " ") .. "]"
end

-- The IDs an inspect-family command works on: its arguments, else those of
-- the items select(ctx) returns when `filtered` (a filter flag is set).
-- Without either, a usage error "no NOUN ID given". Returns nil after
-- reporting an error (select returns nil after reporting its own).
function Ctx:ids_or_selected(noun, filtered, select)
  if #self.args > 0 then
    return self.args
  end
  if not filtered then
    return self:usage("no " .. noun .. " ID given")
  end
  local list = select(self)
  if not list then
    return nil
  end
  local ids = {}
  for i, x in ipairs(list) do
    ids[i] = x.id
  end
  return ids
end

-- Output of the inspect family: one result is an object, several an
-- array (crictl's rule).
function Ctx:emit_results(results, format)
  local json = require "kubelua.json"
  if #results == 1 then
    self:emit(results[1], format)
  elseif #results > 1 then
    self:emit(json.array(results), format)
  end
end

-- The run of inspect, inspectp and inspecti, from the functions in `how`.
-- It checks -o (json, yaml or table), takes the IDs from how.ids() (nil
-- after it reported an error), connects, then asks for each ID
-- how.fetch(client, id, verbose), verbose unless -q, which returns the
-- status response or nil, err (the error is reported, the next ID
-- follows). The table format prints how.lines(response, now), a list of
-- lines (now: when the loop started), as each response comes, then the
-- response's info when verbose. json and yaml print, after the last ID,
-- { status = how.status(response) } with the info's values beside it
-- (info_values), through emit_results.
function Ctx:inspect_each(how)
  local format = self:format({ "json", "yaml", "table" })
  local ids = format and how.ids()
  local rt = ids and self:client()
  if not rt then
    return
  end
  local verbose = not self.flags.quiet
  local results, now = {}, core.now()
  for _, id in ipairs(ids) do
    local r, err = how.fetch(rt, id, verbose)
    if not r then
      self:fail(err)
    elseif format == "table" then
      local lines = how.lines(r, now)
      if verbose then
        lines[#lines + 1] = info_line(r.info)
      end
      self:out(table.concat(lines, "\n") .. "\n")
    else
      results[#results + 1] = M.info_values(r.info, { status = how.status(r) })
    end
  end
  if format ~= "table" then
    self:emit_results(results, format)
  end
end

M.Ctx = Ctx
return M
