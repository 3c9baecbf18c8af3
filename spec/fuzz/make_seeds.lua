-- Writes the protobuf seed corpora: one seed per message type (every field
-- set, nested two levels), prefixed by the type's index in pb.messages()
-- (the numbering spec/fuzz/fuzz_pb.h uses). Run from the repository root:
--   ./build-fuzz/kubelua run spec/fuzz/make_seeds.lua
local pb = require "kubelua.pb"

local function sample_value(f)
  local ty = f.type
  if ty == "string" then
    return "s_" .. f.name
  elseif ty == "bytes" then
    return "\0\1\255"
  elseif ty == "bool" then
    return true
  elseif ty == "enum" then
    return f.values[#f.values]
  elseif ty == "double" or ty == "float" then
    return 1.5
  elseif ty:match "^u" or ty:match "^fixed" then
    return 4000000000
  end
  return -7
end

local function sample(name, depth)
  local m = {}
  for _, f in ipairs(pb.fields(name)) do
    local v
    if f.map then
      v = { k1 = "v1", ["k 2"] = "v2" }
    elseif f.type == "message" then
      if depth < 2 then
        v = sample(f.type_name, depth + 1)
        if f.label == "repeated" then
          v = { v }
        end
      end
    else
      v = sample_value(f)
      if f.label == "repeated" then
        v = { v, v }
      end
    end
    m[f.name] = v
  end
  return m
end

local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

os.execute "mkdir -p spec/fuzz/pb_decode spec/fuzz/pb_encode"
for i, name in ipairs(pb.messages()) do
  local bytes = pb.encode(name, sample(name, 0))
  local short = name:gsub("^.*%.", "")
  write("spec/fuzz/pb_decode/" .. short, string.char(i - 1) .. bytes)
end
-- The encoder's input is a recipe, not a message: a few byte patterns per
-- kind of message are enough for libFuzzer to start from.
for i, name in ipairs(pb.messages()) do
  if name:match "Request$" and i % 8 == 1 then
    local short = name:gsub("^.*%.", "")
    write("spec/fuzz/pb_encode/" .. short, string.char(i - 1) .. "\7\1\1\1\2\3\1\5\6\2\1\4\9\1\1\3\2\1\8")
  end
end
