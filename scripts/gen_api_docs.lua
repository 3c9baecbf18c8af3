-- gen_api_docs.lua: the Lua API reference (docs/api.md), generated from what
-- the modules export and from the doc comments in their sources, and the
-- check that nothing exported is undocumented.
--
--   kubelua run scripts/gen_api_docs.lua            -- write docs/api.md
--   kubelua run scripts/gen_api_docs.lua --check    -- exit 1 when something exported is
--                                                   -- undocumented or docs/api.md is stale
--   options: --root DIR (the tree to read: DIR/lua/kubelua, DIR/src; default: this
--            script's tree), --out FILE (default ROOT/docs/api.md)
--
-- What counts as exported: every key of the table a module returns (it is
-- required for real, in this binary), the functions of an exported table
-- that holds functions (a class such as kubelua.gc's GC: its methods), and
-- the methods of every C metatable (luaL_newmetatable "kubelua.*") that
-- requiring the module created. Modules: every lua/kubelua/**/*.lua, and
-- every C binding, found as `int luaopen_kubelua_X(lua_State *L)` in src/.
--
-- What counts as documentation, in the module's own source file:
--   1. a comment directly above the definition (`function M.f(...)`,
--      `M.f = ...`, `function Class:m(...)`) or at the end of its line; in C,
--      above the C function a luaL_Reg entry names for it;
--   2. a usage line in any comment that shows the name called or indexed,
--      with whatever local name the module has in the example:
--      `--   local x = mod.f(a, b) -> ...`, ` *   obj:m(s)  -> ...`, or the bare
--      `--   f(a [, opts]) -> ...` of a header's function list.
-- Documented by construction, without a comment of their own:
--   - a command module made by kubelua.cli.common.command{} (its summary and
--     flags are the doc; `kubelua NAME ...` header lines for the others);
--   - a USAGE string ("usage: ...") and a re-exported module (M.labels = L);
--   - a CRI client method generated from the proto (its RPC, request and
--     response types come from the module's `methods` table);
--   - names starting with "_" are private (for specs) and not listed.
-- The reference shows, per module, the header's first paragraph, then one
-- line per export: a signature (the usage line, else the definition) and
-- its meaning (the comment above the definition, else the usage line's own
-- comment).
local M = {}
local loaded_name

local function code(s)
  local ticks = s:find("`", 1, true) and "``" or "`"
  local pad = ticks == "``" and " " or ""
  return ticks .. pad .. s .. pad .. ticks
end

local read = require("kubelua.gc.store").read_file -- text | nil, err

local function lines_of(text)
  local t = {}
  for l in (text .. "\n"):gmatch("([^\n]*)\n") do
    t[#t + 1] = l
  end
  return t
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function escape(s)
  return (s:gsub("%p", "%%%0"))
end

-- Files below dir whose names end in `suffix`, sorted (find(1): no lfs here).
local function find_files(dir, suffix)
  local out = {}
  local p = io.popen("find '" .. dir:gsub("'", "'\\''") .. "' -type f -name '*" .. suffix .. "' 2>/dev/null | sort")
  for l in p:lines() do
    out[#out + 1] = l
  end
  p:close()
  return out
end

---------------------------------------------------------------------------
-- Sources: comment lines, definitions, the header paragraph.

-- A source file as { comments = { {line=, text=} }, lines = {...}, lang = }.
-- Comment text has its markers removed (Lua `--`, C `/*`, ` *`, `*/`, `//`).
local function scan(path)
  local text = read(path)
  if not text then
    return nil
  end
  local lang = path:match("%.c$") and "c" or "lua"
  local src = { path = path, lang = lang, lines = lines_of(text), comments = {}, by_line = {} }
  local in_block = false
  for i, l in ipairs(src.lines) do
    local c
    if lang == "lua" then
      c = l:match("^%s*%-%-%[?%[?(.*)$") or l:match("%-%-%s(.*)$")
      if c and l:match("^%s*%-%-") then
        src.by_line[i] = "comment"
      elseif c then
        src.by_line[i] = "trailing"
      end
    else
      if in_block then
        c = l:match("^%s*%*?/?(.-)%*/") or l:match("^%s*%*?(.*)$")
        if l:find("*/", 1, true) then
          in_block = false
        end
        src.by_line[i] = "comment"
      elseif l:match("^%s*/%*") then
        c = l:match("^%s*/%*+(.-)%*/") or l:match("^%s*/%*+(.*)$")
        in_block = not l:find("*/", 1, true)
        src.by_line[i] = "comment"
      elseif l:match("^%s*//") then
        c = l:match("^%s*//+(.*)$")
        src.by_line[i] = "comment"
      elseif l:match("/%*.*%*/%s*$") then
        c = l:match("/%*(.-)%*/%s*$")
        src.by_line[i] = "trailing"
      end
    end
    if c then
      src.comments[#src.comments + 1] = { line = i, text = c }
      src.by_line[i] = { kind = src.by_line[i], text = c }
    end
  end
  return src
end

-- The comment block ending right above line i (stopping at a blank line or
-- code), as trimmed lines.
local function comment_above(src, i)
  local out = {}
  local j = i - 1
  -- one comment may head a group of one-line assignments (constants), or
  -- sit above a one-line local helper table the definition uses
  local skipped = 0
  while j >= 1 and skipped < 16 and type(src.by_line[j]) ~= "table" do
    local l = src.lines[j]
    if l:match("^[%w_]+%.[%w_]+[%w_%., ]*=%s*[^{]*$") or l:match("^local [%u_][%u%d_]* = .*}%s*$")
      or l:match("^local [%u_][%u%d_]* = [^{]*$") then
      j, skipped = j - 1, skipped + 1
    else
      break
    end
  end
  while j >= 1 do
    local b = src.by_line[j]
    if type(b) ~= "table" or b.kind ~= "comment" then
      break
    end
    table.insert(out, 1, trim(b.text))
    j = j - 1
  end
  while out[1] == "" do
    table.remove(out, 1)
  end
  while out[#out] == "" do
    table.remove(out)
  end
  return out
end

-- The module's summary: the first paragraph of the file's first comment,
-- without a leading "kubelua.x:" (or `kubelua x`:).
local function summary(src, modname)
  local para = {}
  for i = 1, #src.lines do
    local b = src.by_line[i]
    if type(b) ~= "table" or b.kind ~= "comment" then
      if #para > 0 or (src.lines[i]:match("%S") and not src.lines[i]:match("^#")) then
        break
      end
    else
      local t = trim(b.text)
      if t == "" then
        if #para > 0 then
          break
        end
      else
        para[#para + 1] = t
      end
    end
  end
  local s = table.concat(para, " ")
  s = s:gsub("^`?" .. escape(modname) .. "`?:%s*", "")
  s = s:gsub("^`(kubelua [^`]+)`:%s*", "`%1`: ")
  return s
end

-- Does comment text show `name` used: `x.name(`, `x:name{`, `x.name =`, a bare
-- `name(` at the start of a usage line, or `x.name` followed by space/end?
local function mention(text, name)
  local n = escape(name)
  local t = " " .. text .. " "
  if t:find("[%w_%)%]][%.:]" .. n .. "[%s%({\"'%[,%):]") then
    return true
  end
  if trim(text):find("^" .. n .. "%s*[%({]") then
    return true
  end
  if trim(text):find("^" .. n .. "%s+%->") or trim(text):find("^" .. n .. "%s*[,:]") then
    return true
  end
  -- one of a list: "a(x), b(x) -> ..." or "a(x) / b(x)"
  if t:find("[,/]%s*" .. n .. "%s*[%(:,]") then
    return true
  end
  return false
end

-- The usage line showing `name`, split into code and its comment. Lines
-- indented deeper right below it continue it.
local function code_like(text, name)
  local t, n = trim(text), escape(name)
  -- a list of calls, "a(x), b(y) -> ...", counts for each of them
  if t:match("^[%w_%.:]+%b()%s*[,/]") and t:find("[%.:]" .. n .. "%(") or t:find("[,/]%s*" .. n .. "%(") then
    return true
  end
  return t:match("^local%s") or t:find("^[%w_]+[%.:]" .. n .. "[^%w_]") or t:find("^[%w_]+[%.:]" .. n .. "$")
    or t:find("^" .. n .. "%s*[%({]") or t:find("^[%w_, ]+=%s*[%w_]+[%.:]" .. n .. "[^%w_]")
end

-- One call of a list ("a(x), b(y) -> r"): that call, and the list's result.
local function member_of(code, name)
  if code:match("^[%w_%.:]+%b()%s*[,/]") then
    local member = code:match("([%w_]*[%.:]?" .. escape(name) .. "%b())")
    if member then
      local result = code:match("%)%s*(%->.*)$")
      return member .. (result and (" " .. result) or "")
    end
  end
  return code
end

local function usage_line(src, name)
  for _, c in ipairs(src.comments) do
    if mention(c.text, name) and not code_like(c.text, name) then
      src.prose = src.prose or {}
      src.prose[name] = src.prose[name] or trim(c.text)
    end
  end
  -- a line that shows the result ("->") is the better signature
  local best
  for ci, c in ipairs(src.comments) do
    if mention(c.text, name) and code_like(c.text, name) then
      if c.text:find("->", 1, true) then
        best = ci
        break
      end
      best = best or ci
    end
  end
  for ci, c in ipairs(src.comments) do
    if ci == best then
      local t = trim(c.text)
      local indent = #c.text:match("^%s*")
      local j = ci + 1
      while src.comments[j] and src.comments[j].line == src.comments[j - 1].line + 1 do
        local nt = src.comments[j].text
        if #nt:match("^%s*") <= indent + 2 or trim(nt) == "" or trim(nt):match("^[%w_]+[%.:][%w_]+%s*[%({]") then
          break
        end
        t = t .. " " .. trim(nt):gsub("^%-%-%s*", "")
        j = j + 1
      end
      t = t:gsub("(%S)%s%s+(%->)", "%1 %2"):gsub("(%->)%s%s+", "%1 ")
      local code, note = t:match("^(.-)%s%s+%-%-%s*(.*)$")
      if not code then
        code, note = t:match("^(.-%S)%s%s+(%S.*)$")
      end
      code = trim(code or t)
      code = member_of(code, name)
      if not note then
        -- "mod.NAME: what it is"
        local field, text = code:match("^([%w_]+[%.:]" .. escape(name) .. "):%s+(.*)$")
        if field then
          code, note = field, text
        end
      end
      if not note then
        local call, rest = code:match("^(.-%))%s*:%s+(.*)$")
        if call and not call:find("->", 1, true) then
          code, note = call, rest
        end
      end
      -- a long "f(x) -> what (details)" keeps the call and result as the signature
      if #code > 90 then
        local head, rest = code:match("^(.-%->[^%(;]-)%s*([%(;].*)$")
        if head and #head >= 8 then
          code = head
          note = note and (rest:gsub("^;%s*", "") .. " " .. note) or rest:gsub("^;%s*", "")
        end
      end
      return { code = code, note = note and trim(note) or nil, line = c.line }
    end
  end
end

-- Definitions in a Lua source: { [owner .. "." .. name] = {line=, args=} } where
-- owner is the local variable (M, GC, ...).
local function lua_definitions(src)
  local defs = {}
  for i, l in ipairs(src.lines) do
    local owner, sep, name, args = l:match("^function ([%w_]+)([%.:])([%w_]+)%s*%((.-)%)")
    if owner then
      defs[owner .. "." .. name] = { line = i, args = args, method = sep == ":" }
    else
      -- `M.a, M.b = x, y`
      local multi = l:match("^([%w_]+%.[%w_]+%s*,[%w_%.,%s]+)=")
      if multi then
        for o, n in multi:gmatch("([%w_]+)%.([%w_]+)") do
          defs[o .. "." .. n] = defs[o .. "." .. n] or { line = i }
        end
      end
      owner, name = l:match("^([%w_]+)%.([%w_]+)%s*=")
      if owner then
        args = l:match("=%s*function%s*%((.-)%)")
        local d = { line = i, args = args }
        -- `M.f = f`: a local function defined above, documented where it is
        local id = l:match("=%s*([%w_]+)%s*$")
        if id and not (type(src.by_line[i]) == "table" or #comment_above(src, i) > 0) then
          for j = i - 1, 1, -1 do
            local a = src.lines[j]:match("^local function " .. id .. "%s*%((.-)%)")
            if a then
              d = { line = j, args = a }
              break
            end
          end
        end
        defs[owner .. "." .. name] = defs[owner .. "." .. name] or d
      end
    end
  end
  -- the module's own variable: `return M` at the end
  local ret
  for i = #src.lines, 1, -1 do
    ret = src.lines[i]:match("^return ([%w_]+)%s*$")
    if ret then
      break
    end
  end
  -- fields written in its constructor: `local M = {` ... `  name = value,` ... `}`
  if ret then
    local inside = false
    for i, l in ipairs(src.lines) do
      if l:match("^local " .. ret .. "%s*=%s*{%s*$") then
        inside = true
      elseif inside and l:match("^}") then
        break
      elseif inside then
        local name = l:match("^  ([%w_]+)%s*=")
        if name and not defs[ret .. "." .. name] then
          defs[ret .. "." .. name] = { line = i, args = l:match("=%s*function%s*%((.-)%)") }
        end
      end
    end
  end
  -- exported classes: `M.GC = GC`
  local aliases = {}
  if ret then
    for _, l in ipairs(src.lines) do
      local name, var = l:match("^" .. ret .. "%.([%w_]+)%s*=%s*([%w_]+)%s*$")
      if name then
        aliases[name] = var
      end
    end
  end
  return defs, ret or "M", aliases
end

-- C: luaL_Reg rows { "name", c_function } -> [name] = c_function.
local function c_registrations(src)
  local regs = {}
  for _, l in ipairs(src.lines) do
    for name, fn in l:gmatch('{%s*"([%w_]+)"%s*,%s*([%w_]+)%s*}') do
      regs[name] = regs[name] or fn
    end
  end
  return regs
end

local function c_function_line(src, fn)
  for i, l in ipairs(src.lines) do
    if l:match("^static int " .. escape(fn) .. "%(") or l:match("^int " .. escape(fn) .. "%(") then
      return i
    end
  end
end

---------------------------------------------------------------------------
-- Modules: what they export, and each export's doc.

local function first_sentence(lines)
  local s = trim(table.concat(lines, " "))
  local cut = s:find("%.%s") or s:find("%.$")
  if cut and cut < 220 then
    s = s:sub(1, cut)
  elseif #s > 220 then
    s = s:sub(1, 217):gsub("%s+%S*$", "") .. " ..."
  end
  return s
end

-- doc for one export, or nil: { sig =, what = }
local function doc_for(src, info, shown, name, kind)
  local ul = usage_line(src, name)
  local above, trailing
  if info.line then
    above = comment_above(src, info.line)
    local b = src.by_line[info.line]
    if type(b) == "table" and b.kind == "trailing" then
      trailing = trim(b.text)
    end
  end
  local prose = not ul and src.prose and src.prose[name]
  if (not above or #above == 0) and not trailing and not ul and not prose then
    return nil
  end
  local sig, what
  -- a comment above whose first line shows the call is the signature
  if above and #above > 0 and mention(above[1], name) then
    sig = member_of(above[1], name)
    table.remove(above, 1)
    -- "f(x): what it does" on one line
    local call, rest = sig:match("^(.-%))%s*:%s+(.*)$")
    if call and not call:find("->", 1, true) then
      sig = call
      table.insert(above, 1, rest)
    end
  elseif ul then
    sig = ul.code
  end
  local in_block = ul and ul.note and info.line and ul.line < info.line and ul.line >= info.line - #above - 1
  if in_block then
    -- the usage line sits in the comment above: its own note is the meaning
    what = ul.note
  elseif above and #above > 0 then
    what = first_sentence(above)
  elseif ul and ul.note then
    what = ul.note
  elseif trailing then
    what = trailing
  elseif prose then
    what = prose
  end
  if not sig then
    if kind == "function" or kind == "method" then
      sig = shown .. "(" .. (info.args or "...") .. ")"
    else
      sig = shown
    end
  end
  return { sig = sig, what = what or "" }
end

local function is_class(v)
  if type(v) ~= "table" then
    return false
  end
  for _, x in pairs(v) do
    if type(x) == "function" then
      return true
    end
  end
  return false
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do
    if type(k) == "string" then
      ks[#ks + 1] = k
    end
  end
  table.sort(ks)
  return ks
end

local function metatable_names()
  local names = {}
  for k, v in pairs(debug.getregistry()) do
    if type(k) == "string" and k:match("^kubelua%.") and type(v) == "table"
      and (rawget(v, "__index") ~= nil or rawget(v, "__gc") ~= nil) then
      names[k] = true
    end
  end
  return names
end

-- Methods of a C metatable: the functions of __index (a table), or the
-- metatable's own non-metamethod functions.
local function metatable_methods(mt)
  local idx = rawget(mt, "__index")
  local src = type(idx) == "table" and idx or mt
  local out = {}
  for _, k in ipairs(sorted_keys(src)) do
    if type(src[k]) == "function" and not k:match("^__") then
      out[#out + 1] = k
    end
  end
  return out
end

-- The name a value is loaded under, when it is a kubelua module.
loaded_name = function(v)
  if type(v) ~= "table" then
    return nil
  end
  for name, mod in pairs(package.loaded) do
    if mod == v and type(name) == "string" and name:match("^kubelua%.") then
      return name
    end
  end
end

-- Every module of the tree: { name =, path = (relative), kind = "lua"|"c" }.
local function list_modules(root)
  local mods = {}
  for _, p in ipairs(find_files(root .. "/lua/kubelua", ".lua")) do
    local rel = p:sub(#root + 2)
    local name = rel:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
    mods[#mods + 1] = { name = name, path = rel, kind = "lua" }
  end
  for _, p in ipairs(find_files(root .. "/src", ".c")) do
    local src = read(p)
    for fn in src:gmatch("\nint luaopen_(kubelua_[%w_]+)%(lua_State %*L%)\n") do
      mods[#mods + 1] = { name = fn:gsub("_", "."), path = p:sub(#root + 2), kind = "c" }
    end
  end
  table.sort(mods, function(a, b)
    return a.name < b.name
  end)
  return mods
end

-- Loads every module and documents it. -> modules (with .entries), problems
function M.collect(root)
  local mods = list_modules(root)
  local problems = {}
  -- C modules first, one at a time, so each metatable is credited to the
  -- module whose luaopen created it.
  local order = {}
  for _, m in ipairs(mods) do
    if m.kind == "c" then
      order[#order + 1] = m
    end
  end
  for _, m in ipairs(mods) do
    if m.kind == "lua" then
      order[#order + 1] = m
    end
  end
  for _, m in ipairs(order) do
    local before = metatable_names()
    local ok, val = pcall(require, m.name)
    m.entries = {}
    if not ok then
      problems[#problems + 1] = m.name .. ": cannot be loaded: " .. tostring(val)
    else
      m.value = val
      m.metatables = {}
      for k in pairs(metatable_names()) do
        if not before[k] then
          m.metatables[#m.metatables + 1] = k
        end
      end
      table.sort(m.metatables)
    end
  end
  for _, m in ipairs(mods) do
    local src = scan(root .. "/" .. m.path)
    m.summary = src and summary(src, m.name) or ""
    local short = m.name:match("([%w_]+)$")
    local function add(name, shown, kind, info, lookup)
      local d = doc_for(src, info, shown, lookup or name, kind)
      if d then
        m.entries[#m.entries + 1] = { name = name, kind = kind, sig = d.sig, what = d.what }
      else
        problems[#problems + 1] = string.format("%s.%s: exported but not documented in %s", m.name, name, m.path)
      end
    end
    local command = m.kind == "lua" and type(m.value) == "table" and type(m.value.spec) == "table"
      and type(m.value.main) == "function" and m.value.spec.name and m.value.spec.summary
    if command then
      -- made by kubelua.cli.common.command{}: the command is the documentation
      local spec = m.value.spec
      m.command = spec
      m.entries[#m.entries + 1] = { name = "main", kind = "function", sig = "kubelua " .. spec.name .. " "
        .. (spec.args or ""), what = spec.summary }
      m.entries[#m.entries + 1] = { name = "run", kind = "function", sig = short .. ".run(args, env) -> status",
        what = "run the command as `main` does, output to env.stdout/env.stderr, CRI client env.client (specs)" }
      m.entries[#m.entries + 1] = { name = "spec", kind = "table", sig = short .. ".spec",
        what = "the definition given to `kubelua.cli.common.command` (name, args, summary, flags, run)" }
    elseif m.value ~= nil and src then
      if m.kind == "lua" then
        local defs, var, aliases = lua_definitions(src)
        if type(m.value) == "table" then
          for _, k in ipairs(sorted_keys(m.value)) do
            local v = m.value[k]
            local kind = type(v) == "function" and "function" or type(v)
            local other = loaded_name(v)
            if k:match("^_") then
              -- private by convention (used by specs); not part of the API
              other = other or false
            elseif is_class(v) and not other then
              -- a class: documented by its methods, listed below
              other = other or false
            elseif k == "main" and m.name:match("^kubelua%.cli%.") and m.summary:match("^`?kubelua %l") then
              -- a command: its header line ("kubelua NAME [FLAGS]: what") is its doc
              local usage, what = m.summary:match("^`?(kubelua [%w_-]+)`?:%s*(.*)$")
              if not usage then
                -- "kubelua NAME [FLAGS]" on the first line(s), the meaning after
                local i, parts = 1, {}
                while type(src.by_line[i]) == "table" do
                  local l = trim(src.by_line[i].text)
                  if i > 1 and not l:match("^[%[%-]") then
                    break
                  end
                  parts[#parts + 1] = l
                  i = i + 1
                end
                usage = table.concat(parts, " ")
                what = trim(m.summary:sub(#usage + 1))
              end
              m.entries[#m.entries + 1] = { name = k, kind = "function", sig = usage, what = what or "" }
            elseif k == "USAGE" and type(v) == "string" and v:match("^usage:") then
              m.entries[#m.entries + 1] = { name = k, kind = "string", sig = short .. ".USAGE",
                what = "the `--help` text: " .. code(v:match("^usage: ([^\n]*)")) }
            elseif other and other ~= m.name then
              -- another module, re-exported: documented where it lives
              m.entries[#m.entries + 1] = { name = k, kind = "module", sig = short .. "." .. k,
                what = "the `" .. other .. "` module" }
            else
              add(k, short .. "." .. k, kind, defs[var .. "." .. k] or {})
            end
            -- an exported table of functions: its functions too
            if is_class(v) and not other then
              local cvar = aliases[k] or k
              for _, mk in ipairs(sorted_keys(v)) do
                local rpc = type(m.value.methods) == "table" and m.value.methods[mk]
                if type(v[mk]) == "function" and not mk:match("^__") and not defs[cvar .. "." .. mk]
                  and type(rpc) == "table" and rpc.path then
                  -- a method generated from the proto's descriptors: its RPC is its doc
                  m.entries[#m.entries + 1] = { name = k .. ":" .. mk, kind = "method",
                    sig = string.format("%s:%s(req, opts) -> %s", k:lower(), mk,
                      rpc.streaming and "stream of " .. rpc.output or rpc.output),
                    what = string.format("`%s` (%s)%s", rpc.path, rpc.input,
                      rpc.streaming and ", server streaming" or "") }
                elseif type(v[mk]) == "function" and not mk:match("^__") then
                  local d = defs[cvar .. "." .. mk] or {}
                  local obj = d.method and (k:lower() .. ":") or (k .. ".")
                  add(k .. (d.method and ":" or ".") .. mk, obj .. mk, "method", d, mk)
                end
              end
            end
          end
        end
      else
        local regs = c_registrations(src)
        local function c_info(name)
          local fn = regs[name]
          return { line = fn and c_function_line(src, fn) or nil }
        end
        if type(m.value) == "table" then
          for _, k in ipairs(sorted_keys(m.value)) do
            local v = m.value[k]
            add(k, short .. "." .. k, type(v) == "function" and "function" or type(v), c_info(k))
          end
        end
        for _, mtname in ipairs(m.metatables or {}) do
          local obj = mtname:match("([%w_]+)$")
          for _, mk in ipairs(metatable_methods(debug.getregistry()[mtname])) do
            local info = c_info(mk)
            local d = doc_for(src, info, obj .. ":" .. mk, mk, "function")
            if d then
              m.entries[#m.entries + 1] = { name = obj .. ":" .. mk, kind = "method", sig = d.sig, what = d.what }
            else
              problems[#problems + 1] = string.format("%s: method %s:%s exported but not documented in %s",
                m.name, obj, mk, m.path)
            end
          end
        end
      end
    end
  end
  return mods, problems
end

---------------------------------------------------------------------------
-- Rendering.

function M.render(mods)
  local out = {}
  local function w(s)
    out[#out + 1] = s or ""
  end
  w("# Lua API reference")
  w()
  w("Generated by `scripts/gen_api_docs.lua` from what each module exports (loaded in")
  w("kubelua) and the doc comments in its source; do not edit by hand. Regenerate with")
  w("`build/kubelua run scripts/gen_api_docs.lua`; ctest `docs.api` fails when something")
  w("exported has no documentation or this file is stale.")
  w()
  w("Conventions for every module: I/O failures return `nil, \"CODE: message\", \"CODE\"`;")
  w("misuse (a wrong argument type, an unknown option) throws. Calls that do I/O park the")
  w("calling task (see `kubelua.task`); they must run inside one, as every script does.")
  w()
  w("## Modules")
  w()
  for _, m in ipairs(mods) do
    local anchor = m.name:gsub("%.", "")
    w(string.format("- [`%s`](#%s)%s", m.name, anchor, m.kind == "c" and " (C)" or ""))
  end
  for _, m in ipairs(mods) do
    w()
    w("## `" .. m.name .. "`")
    w()
    if m.summary ~= "" then
      w(m.summary)
      w()
    end
    w(string.format("%s: [`%s`](../%s)", m.kind == "c" and "C binding" or "Source", m.path, m.path))
    if m.command and m.command.flags and #m.command.flags > 0 then
      w()
      w("Flags (besides the connection flags of `kubelua.cli.common`):")
      w()
      for _, f in ipairs(m.command.flags) do
        local long, shortf, typ, help = f[1], f[2], f[3], f[4]
        local arg = typ ~= "bool" and (" " .. (f.arg or typ:upper())) or ""
        w(string.format("- `%s--%s%s` — %s%s", shortf and ("-" .. shortf .. ", ") or "", long, arg, help or "",
          f.default ~= nil and (" (default " .. tostring(f.default) .. ")") or ""))
      end
    end
    if #m.entries > 0 then
      w()
      local rank = { ["function"] = 1, method = 2, module = 3 }
      table.sort(m.entries, function(a, b)
        local ra, rb = rank[a.kind] or 4, rank[b.kind] or 4
        if ra ~= rb then
          return ra < rb
        end
        return a.name < b.name
      end)
      for _, e in ipairs(m.entries) do
        local line = "- " .. code(e.sig)
        if e.what ~= "" then
          line = line .. " — " .. e.what
        end
        if e.kind ~= "function" and e.kind ~= "method" then
          line = line .. " *(" .. e.kind .. ")*"
        end
        w(line)
      end
    end
  end
  return table.concat(out, "\n") .. "\n"
end

---------------------------------------------------------------------------

local function main(args)
  local core = require "kubelua.core"
  local script = debug.getinfo(1, "S").source:gsub("^@", "")
  local root = script:match("^(.*)/scripts/[^/]*$") or "."
  local check, out = false, nil
  local i = 1
  while args[i] do
    local a = args[i]
    if a == "--check" then
      check = true
    elseif a == "--root" and args[i + 1] then
      root, i = args[i + 1], i + 1
    elseif a == "--out" and args[i + 1] then
      out, i = args[i + 1], i + 1
    else
      io.stderr:write("gen_api_docs: unknown argument ", a, "\n")
      return core.set_exit_code(2)
    end
    i = i + 1
  end
  out = out or (root .. "/docs/api.md")
  -- the tree's own modules come first (a temporary tree in the check's spec)
  package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
  local mods, problems = M.collect(root)
  local text = M.render(mods)
  local n = 0
  for _, m in ipairs(mods) do
    n = n + #m.entries
  end
  if check then
    for _, p in ipairs(problems) do
      io.stderr:write(p, "\n")
    end
    local have = read(out)
    if have ~= text then
      io.stderr:write(out, " is stale: run `kubelua run scripts/gen_api_docs.lua` and commit the result\n")
      problems[#problems + 1] = "stale"
    end
    if #problems > 0 then
      return core.set_exit_code(1)
    end
    print(string.format("gen_api_docs: %d modules, %d documented exports, %s up to date", #mods, n, out))
    return
  end
  for _, p in ipairs(problems) do
    io.stderr:write("warning: ", p, "\n")
  end
  local dir = out:match("^(.*)/[^/]*$")
  if dir then
    os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'")
  end
  local f = assert(io.open(out, "wb"))
  f:write(text)
  f:close()
  print(string.format("gen_api_docs: wrote %s (%d modules, %d exports, %d undocumented)", out, #mods, n, #problems))
  if #problems > 0 then
    core.set_exit_code(1)
  end
end

if ... ~= "gen_api_docs" then
  main({ ... })
end
return M
