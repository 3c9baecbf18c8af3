-- The descriptor-driven converter: every message type round-trips, and bad
-- tables or bytes give errors that name the message and the field.
local t = require "spec.t"
local pb = require "kubelua.pb"
local ffi = require "ffi"

local I64 = 1700000000000000123LL -- beyond 2^53: stays boxed
local U64 = 18446744073709551615ULL

local function sample_value(f, depth)
  local ty = f.type
  if ty == "string" then
    return "s_" .. f.name
  elseif ty == "bytes" then
    return "\0\1\255"
  elseif ty == "bool" then
    return true
  elseif ty == "enum" then
    return f.values[#f.values]
  elseif ty == "double" then
    return 1.5
  elseif ty == "float" then
    return 0.5
  elseif ty == "int64" or ty == "sint64" or ty == "sfixed64" then
    return I64
  elseif ty == "uint64" or ty == "fixed64" then
    return U64
  elseif ty == "int32" or ty == "sint32" or ty == "sfixed32" then
    return -7
  elseif ty == "uint32" or ty == "fixed32" then
    return 4000000000
  elseif ty == "message" then
    return nil -- filled by sample() below
  end
  error("unhandled type " .. ty)
end

-- A table with every field set to a non-default value (nested to `depth`).
local function sample(name, depth)
  local m = {}
  for _, f in ipairs(pb.fields(name)) do
    local v
    if f.map then
      v = { k1 = "v1", ["k 2"] = "v2" }
    elseif f.type == "message" then
      if depth < 3 then
        v = sample(f.type_name, depth + 1)
        if f.label == "repeated" then
          v = { v, sample(f.type_name, depth + 1) }
        end
      end
    else
      v = sample_value(f, depth)
      if f.label == "repeated" then
        v = { v, v }
      end
    end
    m[f.name] = v
  end
  return m
end

-- What decoding gives for a message with nothing set.
local function defaults(name)
  local m = {}
  for _, f in ipairs(pb.fields(name)) do
    if f.label == "repeated" then
      m[f.name] = {}
    elseif f.type == "message" then
      m[f.name] = nil
    elseif f.type == "string" or f.type == "bytes" then
      m[f.name] = ""
    elseif f.type == "bool" then
      m[f.name] = false
    elseif f.type == "enum" then
      m[f.name] = f.values[1]
    else
      m[f.name] = 0
    end
  end
  return m
end

-- Missing messages beyond the sample depth decode as absent: fill the
-- expectation the same way the decoder fills defaults.
local function expect(name, s)
  local want = defaults(name)
  for _, f in ipairs(pb.fields(name)) do
    local v = s[f.name]
    if v ~= nil and f.type == "message" and not f.map then
      if f.label == "repeated" then
        local arr = {}
        for i, x in ipairs(v) do
          arr[i] = expect(f.type_name, x)
        end
        v = arr
      else
        v = expect(f.type_name, v)
      end
    end
    if v ~= nil then
      want[f.name] = v
    end
  end
  return want
end

t.describe("round trip", function()
  local names = pb.messages()
  t.it("covers every message of runtime.v1 (" .. #names .. " types)", function()
    local n = 0
    for _, name in ipairs(names) do
      if name:match("^runtime%.v1%.") then
        n = n + 1
      end
    end
    t.ok(n >= 170, "expected the whole CRI wire table, got " .. n)
  end)
  t.it("every message type: table -> protobuf -> table", function()
    for _, name in ipairs(names) do
      local s = sample(name, 0)
      local bytes = pb.encode(name, s)
      local back, err = pb.decode(name, bytes)
      t.ok(back, err)
      t.eq(back, expect(name, s), name)
      -- and the encoding is stable
      t.eq(pb.encode(name, back), bytes, name .. " re-encoding")
    end
  end)
  t.it("every message type decodes from empty bytes to proto3 defaults", function()
    for _, name in ipairs(names) do
      t.eq(pb.decode(name, ""), defaults(name), name)
    end
  end)
end)

t.describe("64-bit integers", function()
  local name = "runtime.v1.Int64Value"
  t.it("stay numbers up to 2^53 and are boxed beyond, never rounded", function()
    t.eq(pb.decode(name, pb.encode(name, { value = 2 ^ 53 })).value, 2 ^ 53)
    local big = pb.decode(name, pb.encode(name, { value = ffi.new("int64_t", 2 ^ 53) + 1 })).value
    t.eq(type(big), "cdata")
    t.eq(tostring(big), "9007199254740993LL")
    local neg = pb.decode(name, pb.encode(name, { value = -1 })).value
    t.eq(neg, -1)
  end)
  t.it("values that do not fit their field are refused in every form", function()
    for _, case in ipairs({
      { "runtime.v1.IDMapping", { host_id = 4294967296ULL } },
      { "runtime.v1.IDMapping", { host_id = "4294967296" } },
      { "runtime.v1.IDMapping", { host_id = " 5" } },
      { "runtime.v1.UInt64Value", { value = 2 ^ 64 } },
      { "runtime.v1.Int64Value", { value = 2 ^ 63 } },
    }) do
      local err = t.fails(function() pb.encode(case[1], case[2]) end)
      t.ok(err:find("out of range") or err:find("is not an integer"), err)
    end
    t.eq(pb.decode("runtime.v1.UInt64Value", pb.encode("runtime.v1.UInt64Value",
      { value = 18446744073709551615ULL })).value, 18446744073709551615ULL)
  end)
  t.it("accept decimal strings", function()
    t.eq(tostring(pb.decode(name, pb.encode(name, { value = "-9223372036854775808" })).value),
      "-9223372036854775808LL")
  end)
  t.it("reject fractions and out-of-range values, naming the field", function()
    t.match(t.fails(function()
      pb.encode(name, { value = 1.5 })
    end), "runtime%.v1%.Int64Value: field value: 1%.5 is not an integer")
    t.match(t.fails(function()
      pb.encode("runtime.v1.PortMapping", { container_port = 2 ^ 31 })
    end), "field container_port: 2147483648 is out of range")
    t.match(t.fails(function()
      pb.encode("runtime.v1.UInt64Value", { value = -1 })
    end), "out of range")
  end)
end)

t.describe("bad tables", function()
  t.it("unknown field names the message and the field path", function()
    t.match(t.fails(function()
      pb.encode("runtime.v1.ListContainersRequest", { filter = { stat = {} } })
    end), 'runtime%.v1%.ListContainersRequest: field filter: unknown field "stat"')
  end)
  t.it("wrong types are named", function()
    t.match(t.fails(function()
      pb.encode("runtime.v1.ListContainersRequest", { filter = { id = 5 } })
    end), "field filter%.id: expected a string, got number")
    t.match(t.fails(function()
      pb.encode("runtime.v1.ContainerFilter", { state = { state = "RUNNING" } })
    end), '"RUNNING" is not a value of runtime%.v1%.ContainerState')
    t.match(t.fails(function()
      pb.encode("runtime.v1.PodSandboxConfig", { labels = { a = 1 } })
    end), "field labels: expected a string, got number")
    t.match(t.fails(function()
      pb.encode("runtime.v1.ExecSyncRequest", { cmd = { x = "ls" } })
    end), "field cmd: expected an array")
  end)
  t.it("unknown message types throw", function()
    t.fails(function()
      pb.encode("runtime.v1.Nope", {})
    end, 'unknown message type "runtime.v1.Nope"')
  end)
end)

t.describe("wire details", function()
  t.it("truncated bytes give nil and an error naming the message", function()
    local bytes = pb.encode("runtime.v1.VersionResponse", { version = "0.1.0", runtime_name = "x" })
    local v, err, code = pb.decode("runtime.v1.VersionResponse", bytes:sub(1, -2))
    t.eq(v, nil)
    t.eq(code, "INVALID_ARGUMENT")
    t.match(err, "runtime%.v1%.VersionResponse")
  end)
  t.it("unknown fields are skipped", function()
    -- field 99 (varint) and field 98 (bytes) in front of version = "a"
    local bytes = "\152\6\1" .. "\146\6\2xy" .. "\10\1a"
    t.eq(pb.decode("runtime.v1.VersionRequest", bytes), { version = "a" })
  end)
  t.it("packed and unpacked repeated scalars both decode", function()
    -- supplemental_groups (5, int64): packed [1, 300], then one unpacked 7
    local bytes = "\42\3\1\172\2" .. "\40\7"
    local m = pb.decode("runtime.v1.LinuxSandboxSecurityContext", bytes)
    t.eq(m.supplemental_groups, { 1, 300, 7 })
  end)
  t.it("negative int32 is written as 10-byte varint", function()
    local bytes = pb.encode("runtime.v1.PortMapping", { container_port = -1 })
    t.eq(#bytes, 11)
  end)
  t.it("enum values unknown to us decode as numbers", function()
    t.eq(pb.decode("runtime.v1.ContainerStateValue", "\8\42").state, 42)
  end)
  t.it("map entries with a missing value decode to the default", function()
    -- labels (6) entry with key "k" only
    local m = pb.decode("runtime.v1.PodSandboxConfig", "\50\3\10\1k")
    t.eq(m.labels, { k = "" })
  end)
end)
