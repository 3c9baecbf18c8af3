-- kubelua.yaml: YAML (and JSON) to Lua values and back, on libyaml.
--
--   local yaml = require "kubelua.yaml"
--   local pod, err, code = yaml.decode_file("/etc/kubernetes/manifests/etcd.yaml")
--   if not pod then print(err) end  -- "YAML: /etc/.../etcd.yaml:12:3: mapping values are not allowed in this context"
--   local docs = assert(yaml.decode_all(text))      -- every document of a stream
--   print(yaml.encode(pod))                         -- block style, sorted keys
--
-- Scalars resolve as Kubernetes' YAML->JSON decoding resolves them
-- (sigs.k8s.io/yaml on go-yaml v2, YAML 1.1): yes/no/on/off/y/n are
-- booleans, 0x1F and 017 are integers, keys become strings. docs/yaml.md
-- has the whole mapping, the quirks and the limits.
--
-- decode(s [, opts])       -> value | nil, "YAML: NAME:LINE:COL: why", "YAML"
--   The first document of the stream (the rest is not read, as in kubelet);
--   an empty stream or document gives yaml.null. A nil first result always
--   means an error.
-- decode_all(s [, opts])   -> array of documents | nil, err, "YAML"
-- decode_file(path [, opts]) -> value | nil, err, code
--   Reads the file (synchronously; it must be a regular file) and decodes its
--   first document; errors name the path. A file over max_size fails before
--   it is read. I/O failures have their errno name as code (ENOENT, EACCES,
--   EISDIR, ...); "EINVAL" for a path that is not a regular file.
-- decode_file_all(path [, opts]) -> array of documents | nil, err, code
--   Options (unknown names and wrong types throw):
--     name             text naming the input in errors (default "<string>",
--                      or the path)
--     max_size         bytes of input accepted (default 10 MiB, kubelet's
--                      maxConfigLength, kubelet-behaviour.md 4.4)
--     max_depth        nesting of sequences and mappings (default 100, at
--                      most 1000), counted after alias expansion too
--     max_alias_nodes  nodes that aliases may produce in all (default
--                      100000); go-yaml v2's ratio rule applies as well
--     omit_null        true: a mapping entry whose value is null is left out
--                      (as a typed Go struct would ignore it); default false:
--                      it is yaml.null
--
-- encode(value [, opts])   -> string (throws on values YAML cannot hold)
-- encode_all(docs [, opts]) -> string: each document after "---"
--   Options: indent (2..9, default 2), max_depth (default 100).
--
-- yaml.null      the value of an explicit null inside arrays and maps (a
--                NULL lightuserdata, equal to lua-cjson's cjson.null)
-- yaml.array(t)  marks t (default {}) as an array, so encode writes an empty
--                one as [] rather than {}; returns t
-- yaml.is_array(t)  true for tables decoded from sequences or marked
-- yaml.array_mt  the marker metatable (decoded sequences carry it)
local core = require "kubelua.yaml.core"
local opts_check = require("kubelua.opts").check

local M = {}

M.null = core.null
M.array_mt = core.array_mt
-- Limits of decode (opts override them): input bytes, nesting depth, nodes an
-- alias expansion may produce (docs/yaml.md).
M.MAX_SIZE = 10 * 1024 * 1024
M.MAX_DEPTH = 100
M.MAX_ALIAS_NODES = 100000

local DECODE_OPTS = {
  name = "string",
  max_size = "number",
  max_depth = "number",
  max_alias_nodes = "number",
  omit_null = "boolean",
}
local ENCODE_OPTS = { indent = "number", max_depth = "number" }
local NONE = {}

-- Errors are raised at the line that called the exported function.
local function check_opts(fname, opts, allowed)
  if opts == nil then
    return NONE
  end
  opts_check(opts, allowed, "kubelua.yaml." .. fname, 3)
  for k, v in pairs(opts) do
    if allowed[k] == "number" and (v ~= math.floor(v) or v < 1) then
      error(string.format("kubelua.yaml.%s: option %s must be a positive integer", fname, k), 3)
    end
  end
  if opts.max_depth and opts.max_depth > 1000 then
    error(string.format("kubelua.yaml.%s: option max_depth must be at most 1000", fname), 3)
  end
  if opts.indent and (opts.indent < 2 or opts.indent > 9) then
    error(string.format("kubelua.yaml.%s: option indent must be from 2 to 9", fname), 3)
  end
  return opts
end

local function check_string(fname, s)
  if type(s) ~= "string" then
    error(string.format("kubelua.yaml.%s: expected a string, got %s", fname, type(s)), 3)
  end
end

local function decode(s, all, opts, name)
  return core.decode(s, all, opts.name or name, opts.max_size or M.MAX_SIZE,
    opts.max_depth or M.MAX_DEPTH, opts.max_alias_nodes or M.MAX_ALIAS_NODES, opts.omit_null)
end

function M.decode(s, opts)
  check_string("decode", s)
  return decode(s, false, check_opts("decode", opts, DECODE_OPTS))
end

function M.decode_all(s, opts)
  check_string("decode_all", s)
  return decode(s, true, check_opts("decode_all", opts, DECODE_OPTS))
end

local function decode_file(fname, path, opts, all)
  check_string(fname, path)
  opts = check_opts(fname, opts, DECODE_OPTS)
  local data, err, code = core.read_file(path, opts.max_size or M.MAX_SIZE)
  if not data then
    return nil, err, code
  end
  return decode(data, all, opts, path)
end

function M.decode_file(path, opts)
  return decode_file("decode_file", path, opts, false)
end

function M.decode_file_all(path, opts)
  return decode_file("decode_file_all", path, opts, true)
end

function M.encode(value, opts)
  opts = check_opts("encode", opts, ENCODE_OPTS)
  return core.encode(value, false, opts.indent or 2, opts.max_depth or M.MAX_DEPTH)
end

function M.encode_all(docs, opts)
  if type(docs) ~= "table" then
    error("kubelua.yaml.encode_all: expected an array of documents, got " .. type(docs), 2)
  end
  opts = check_opts("encode_all", opts, ENCODE_OPTS)
  return core.encode(docs, true, opts.indent or 2, opts.max_depth or M.MAX_DEPTH)
end

function M.array(t)
  if t == nil then
    t = {}
  elseif type(t) ~= "table" then
    error("kubelua.yaml.array: expected a table, got " .. type(t), 2)
  end
  return setmetatable(t, M.array_mt)
end

function M.is_array(t)
  return type(t) == "table" and getmetatable(t) == M.array_mt
end

return M
