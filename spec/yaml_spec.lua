-- kubelua.yaml: scalars as Kubernetes' YAML->JSON decoding resolves them,
-- multi-document streams, anchors, aliases and merge keys, JSON input, errors
-- with line and column, files, the limits (size, depth, alias bombs), the
-- encoder, and kubeadm's static pod manifests (spec/fixtures/manifests/).
--
-- The scalar and key tables below were checked against sigs.k8s.io/yaml 1.3.0
-- on gopkg.in/yaml.v2 2.4.0 (Debian's golang-k8s-sigs-yaml-dev and
-- golang-gopkg-yaml.v2-dev): YAMLToJSON of the same inputs gives the same
-- values, except where a row says otherwise.
local t = require "spec.t"
local S = require "spec.support"
local yaml = require "kubelua.yaml"
local task = require "kubelua.task"

local NULL = yaml.null
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local MANIFESTS = here .. "/fixtures/manifests"
local FUZZ = here .. "/fuzz/yaml"

local function value(s)
  local doc, err = yaml.decode("v: " .. s)
  assert(doc, err)
  return doc.v
end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function fails(s, pattern, opts)
  local v, err, code = yaml.decode(s, opts)
  t.eq(v, nil, "decode should fail: " .. s:sub(1, 60))
  t.eq(code, "YAML")
  if pattern then
    t.match(err, pattern)
  end
  return err
end

-- A billion-laughs document: 9 levels of 9 aliases each (9^9 strings).
local BOMB = [[
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
]]

t.describe("scalars", function()
  -- { plain scalar, value } ; every row is a separate check
  local rows = {
    -- nulls
    { "", NULL }, { "~", NULL }, { "null", NULL }, { "Null", NULL }, { "NULL", NULL }, { "nULL", "nULL" },
    -- YAML 1.1 booleans, exactly go-yaml v2's spellings
    { "true", true }, { "True", true }, { "TRUE", true }, { "tRUE", "tRUE" },
    { "false", false }, { "False", false }, { "FALSE", false },
    { "y", true }, { "Y", true }, { "yes", true }, { "Yes", true }, { "YES", true }, { "yEs", "yEs" },
    { "n", false }, { "N", false }, { "no", false }, { "No", false }, { "NO", false },
    { "on", true }, { "On", true }, { "ON", true }, { "oN", "oN" },
    { "off", false }, { "Off", false }, { "OFF", false },
    -- integers: Go's base-0 syntax after every "_" is removed
    { "0", 0 }, { "-0", 0 }, { "+0", 0 }, { "1", 1 }, { "+1", 1 }, { "-1", -1 },
    { "007", 7 }, { "017", 15 }, { "0o17", 15 }, { "0O17", 15 }, { "-0o17", -15 },
    { "08", 8 }, { "09", 9 }, -- not octal: then a float, 8.0 and 9.0
    { "0x1F", 31 }, { "0X1f", 31 }, { "-0x1F", -31 }, { "+0x1F", 31 }, { "0x", "0x" },
    { "0b101", 5 }, { "0B101", 5 }, { "-0b101", -5 }, { "0b", "0b" }, { "0b2", "0b2" },
    { "1_000", 1000 }, { "1__0", 10 }, { "1_", 1 }, { "_1", "_1" }, { "0x_1F", 31 }, { "1,000", "1,000" },
    { "9007199254740992", 9007199254740992 },
    -- beyond 2^53: LuaJIT boxed integers, never a rounded double
    { "9007199254740993", 9007199254740993LL }, { "-9007199254740993", -9007199254740993LL },
    { "9223372036854775807", 9223372036854775807LL },
    { "-9223372036854775808", -9223372036854775807LL - 1 },
    { "9223372036854775808", 9223372036854775808ULL }, { "18446744073709551615", 18446744073709551615ULL },
    { "0xFFFFFFFFFFFFFFFF", 18446744073709551615ULL }, { "0x8000000000000000", 9223372036854775808ULL },
    -- too big for 64 bits: a float when it has a float's form, else a string
    { "18446744073709551616", 18446744073709551616 }, { "-9223372036854775809", -9223372036854775809 },
    { "+9223372036854775808", 9223372036854775808 }, { "0x10000000000000000", "0x10000000000000000" },
    -- floats
    { "1.5", 1.5 }, { "-1.5", -1.5 }, { "+1.5", 1.5 }, { "1.", 1 }, { "1.e5", 1e5 }, { ".5", 0.5 },
    { "+.5", 0.5 }, { "-.5", -0.5 }, { "._5", "._5" }, { ".5_5", 0.55 }, { "1_000.5", 1000.5 },
    { "1e3", 1000 }, { "1E3", 1000 }, { "1e+3", 1000 }, { "1e-3", 0.001 }, { "12e03", 12000 },
    { "1e", "1e" }, { "e3", "e3" }, { "1.5e300", 1.5e300 }, { "1e-400", 0 },
    { "1e400", "1e400" }, { "-1e400", "-1e400" }, -- overflow: Go's ParseFloat fails, so a string
    { "3.14159265358979", 3.14159265358979 },
    { ".inf", math.huge }, { ".Inf", math.huge }, { ".INF", math.huge }, { "+.inf", math.huge },
    { "-.inf", -math.huge }, { "-.Inf", -math.huge }, { ".iNf", ".iNf" },
    -- (YAMLToJSON rejects infinities and NaN: JSON has no such numbers)
    { "inf", "inf" }, { "nan", "nan" }, { "Infinity", "Infinity" }, { "NaN", "NaN" },
    -- strings
    { "2001-12-14", "2001-12-14" }, { "2001-12-14t21:59:43.10-05:00", "2001-12-14t21:59:43.10-05:00" },
    { "2001-12-14 21:59:43.10", "2001-12-14 21:59:43.10" }, { "12:30", "12:30" }, { "1:20:30", "1:20:30" },
    { "0x1p3", "0x1p3" }, { "1e3x", "1e3x" }, { "<<", "<<" }, { "=", "=" }, { "+", "+" }, { ".", "." },
    { "..", ".." }, { "1.2.3", "1.2.3" }, { "0.", 0 }, { "00", 0 }, { "0_0", 0 }, { "abc", "abc" },
    -- quoted: always strings
    { '"123"', "123" }, { "'yes'", "yes" }, { '""', "" }, { "'~'", "~" }, { '"null"', "null" },
    -- tags
    { "!!int 17", 17 }, { "!!int 0x1F", 31 }, { "!!float 1", 1 }, { "!!float 1.5", 1.5 },
    { "!!bool yes", true }, { "!!null ~", NULL }, { "!!null ''", NULL }, { "!!str 123", "123" },
    { "!!str yes", "yes" }, { "!!str ~", "~" }, { "! 123", "123" }, { "!foo 123", "123" },
    { "!!timestamp 2001-12-14", "2001-12-14" }, { "!!binary aGVsbG8=", "hello" },
    { '!!int "12"', 12 }, { '!!bool "true"', true }, { "!!merge <<", "<<" },
  }
  t.it("resolve as go-yaml v2 does, table-driven (" .. #rows .. " rows)", function()
    for _, row in ipairs(rows) do
      local got = value(row[1])
      t.eq(got, row[2], "v: " .. row[1])
      t.eq(type(got), type(row[2]), "type of v: " .. row[1])
    end
  end)

  t.it("NaN", function()
    for _, s in ipairs { ".nan", ".NaN", ".NAN" } do
      local v = value(s)
      t.ok(type(v) == "number" and v ~= v, s)
    end
  end)

  t.it("a tag that does not fit the value is an error", function()
    local cases = {
      { "!!int abc", "cannot decode !!str `abc` as a !!int" },
      { "!!int 1.5", "cannot decode !!float `1.5` as a !!int" },
      { "!!float abc", "cannot decode !!str `abc` as a !!float" },
      { "!!float 18446744073709551615", "cannot decode !!int `18446744073709551615` as a !!float" },
      { "!!bool 1", "cannot decode !!int `1` as a !!bool" },
      { "!!null x", "cannot decode !!str `x` as a !!null" },
      { "!!timestamp abc", "cannot decode !!str `abc` as a !!timestamp" },
      { "!!binary aGVsbG8", "!!binary value contains invalid base64 data" },
      { "!!binary '!!!!'", "!!binary value contains invalid base64 data" },
    }
    for _, c in ipairs(cases) do
      local err = fails("v: " .. c[1])
      t.eq(err, "YAML: <string>:1:4: " .. c[2], c[1])
    end
  end)

  t.it("block scalars, multi-line !!binary and unicode", function()
    t.eq(value("|\n  a\n  b\n"), "a\nb\n")
    t.eq(value(">\n  a\n  b\n"), "a b\n")
    t.eq(value("!!binary |\n  aGVs\n  bG8=\n"), "hello")
    t.eq(value('"caf\\u00e9 \\U0001F600 \\x41"'), "café 😀 A")
    t.eq(value("héllo wörld"), "héllo wörld")
  end)

  t.it("int64 beyond 2^53 are boxed and exact", function()
    local v = value("1700000000000000123")
    t.eq(type(v), "cdata")
    t.eq(tostring(v), "1700000000000000123LL")
    t.ok(v + 1 == 1700000000000000124LL)
    t.eq(type(value("-9007199254740992")), "number")
  end)
end)

t.describe("keys", function()
  local rows = {
    { "1: v", "1" }, { "-7: v", "-7" }, { "0x10: v", "16" }, { "1_000: v", "1000" }, { "017: v", "15" },
    { "true: v", "true" }, { "yes: v", "true" }, { "y: v", "true" }, { "Y: v", "true" }, { "on: v", "true" },
    { "n: v", "false" }, { "no: v", "false" }, { "off: v", "false" }, { "False: v", "false" },
    -- floats as Go's FormatFloat(key, 'g', -1, 32)
    { "1.5: v", "1.5" }, { "1.0: v", "1" }, { "1e5: v", "100000" }, { "1e6: v", "1e+06" },
    { "0.0001: v", "0.0001" }, { "0.00001: v", "1e-05" }, { "123456789.0: v", "1.2345679e+08" },
    { "3.14159265358979: v", "3.1415927" }, { "-0.0: v", "-0" },
    { ".inf: v", ".inf" }, { "-.inf: v", "-.inf" }, { ".nan: v", ".nan" },
    { "2001-12-14: v", "2001-12-14" }, { "'1': v", "1" }, { "\"yes\": v", "yes" }, { "!!str on: v", "on" },
    { "!!binary aGk=: v", "hi" },
  }
  t.it("non-string keys become the strings YAML->JSON makes of them (" .. #rows .. " rows)", function()
    for _, row in ipairs(rows) do
      local doc = assert(yaml.decode(row[1]))
      local k, v = next(doc)
      t.eq(k, row[2], row[1])
      t.eq(v, "v", row[1])
      t.eq(next(doc, k), nil, row[1])
    end
  end)

  t.it("keys YAML->JSON cannot convert are errors", function()
    t.eq(fails("~: a"), "YAML: <string>:1:1: invalid map key: null")
    t.eq(fails("x: 1\nnull: a"), "YAML: <string>:2:1: invalid map key: null")
    t.eq(fails("18446744073709551615: a"),
      "YAML: <string>:1:1: unsupported map key: 18446744073709551615 does not fit in int64")
    t.eq(fails("? [1]\n: a"), "YAML: <string>:1:3: invalid map key: a sequence")
    t.eq(fails("? {a: 1}\n: b"), "YAML: <string>:1:3: invalid map key: a mapping")
    t.eq(fails("a: &x [1]\n*x : b"), "YAML: <string>:2:1: invalid map key: a sequence")
  end)

  t.it("a duplicate key: the last one wins (sigs.k8s.io/yaml's non-strict decoding)", function()
    t.eq(yaml.decode("a: 1\nb: 2\na: 3"), { a = 3, b = 2 })
    t.eq(yaml.decode("1: a\n'1': b"), { ["1"] = "b" })
  end)
end)

t.describe("null", function()
  t.it("explicit nulls in arrays and maps are yaml.null", function()
    local doc = assert(yaml.decode("a: ~\nb: [1, null, ~, 3]\nc:\n"))
    t.ok(doc.a == yaml.null)
    t.ok(doc.c == yaml.null)
    t.eq(#doc.b, 4)
    t.ok(doc.b[2] == yaml.null and doc.b[3] == yaml.null)
    t.eq(type(yaml.null), "userdata")
  end)

  t.it("omit_null leaves null map entries out (also over a merged value), arrays keep them", function()
    local doc = assert(yaml.decode("a: ~\nb: [1, ~]\nc: 1\nm: &m {x: 1}\nd:\n  <<: *m\n  x: ~\n", { omit_null = true }))
    t.eq(doc.a, nil)
    t.eq(doc.c, 1)
    t.ok(doc.b[2] == yaml.null)
    t.eq(doc.d, {})
  end)

  t.it("an empty or null document is yaml.null, so nil always means an error", function()
    for _, s in ipairs { "", "# only a comment\n", "---\n", "~", "null\n...\n" } do
      local v, err = yaml.decode(s)
      t.ok(v == yaml.null, "document " .. string.format("%q", s))
      t.eq(err, nil)
    end
  end)
end)

t.describe("multi-document streams", function()
  local stream = "a: 1\n---\nb: 2\n--- \n---\n- x\n...\n"
  t.it("decode reads the first document only (as kubelet does)", function()
    t.eq(yaml.decode(stream), { a = 1 })
    -- the rest is not even parsed
    t.eq(yaml.decode("a: 1\n---\n[unclosed"), { a = 1 })
  end)

  t.it("decode_all returns every document, null ones as yaml.null", function()
    local docs = assert(yaml.decode_all(stream))
    t.eq(#docs, 4)
    t.eq(docs[1], { a = 1 })
    t.eq(docs[2], { b = 2 })
    t.ok(docs[3] == yaml.null)
    t.eq(docs[4], { "x" })
    t.eq(yaml.decode_all(""), {})
    t.ok(yaml.is_array(yaml.decode_all("")))
  end)

  t.it("an error in a later document fails decode_all, naming its line", function()
    local v, err, code = yaml.decode_all("a: 1\n---\nb: [1\n")
    t.eq(v, nil)
    t.eq(code, "YAML")
    t.match(err, "^YAML: <string>:4:1: did not find expected ',' or ']'")
  end)

  t.it("anchors do not cross documents", function()
    t.match(select(2, yaml.decode_all("a: &x 1\n---\nb: *x\n")), "unknown anchor 'x' referenced")
  end)
end)

t.describe("anchors, aliases and merge keys", function()
  t.it("an alias gives a copy: changing one does not change the other", function()
    local doc = assert(yaml.decode("base: &b {x: [1, 2]}\none: *b\ntwo: *b\n"))
    t.eq(doc.one, { x = { 1, 2 } })
    t.ok(doc.one ~= doc.two and doc.one ~= doc.base and doc.one.x ~= doc.two.x)
    doc.one.x[1] = 99
    t.eq(doc.two.x[1], 1)
    t.eq(yaml.decode("a: &s hello\nb: *s"), { a = "hello", b = "hello" })
  end)

  t.it("a later anchor of the same name replaces the earlier one", function()
    t.eq(yaml.decode("a: &x 1\nb: *x\nc: &x 2\nd: *x\n"), { a = 1, b = 1, c = 2, d = 2 })
  end)

  t.it("merge keys as go-yaml v2: in order, so keys before `<<` are overwritten", function()
    local base = "b: &x {a: 1, k: 1}\n"
    t.eq(yaml.decode(base .. "c:\n  <<: *x\n  a: 2\n").c, { a = 2, k = 1 })
    t.eq(yaml.decode(base .. "c:\n  a: 2\n  <<: *x\n").c, { a = 1, k = 1 }) -- (YAML's merge spec and v3 say 2)
    t.eq(yaml.decode("z:\n  <<: {a: 1}\n  <<: {a: 2}\n").z, { a = 2 })
    t.eq(yaml.decode("z:\n  <<: {a: 1, <<: {b: 2}}\n").z, { a = 1, b = 2 })
  end)

  t.it("a list of maps: earlier maps win", function()
    local doc = assert(yaml.decode("x: &a {a: 1, b: 1}\ny: &b {b: 2, c: 2}\nz:\n  <<: [*a, *b]\n"))
    t.eq(doc.z, { a = 1, b = 1, c = 2 })
    t.eq(yaml.decode("z:\n  <<: [{a: 1}, {a: 2}]\n").z, { a = 1 })
  end)

  t.it("only a plain or !!merge-tagged << merges", function()
    t.eq(yaml.decode("z:\n  '<<': {a: 1}\n").z, { ["<<"] = { a = 1 } })
    t.eq(yaml.decode("z:\n  !!merge <<: {a: 1}\n").z, { a = 1 })
    t.eq(yaml.decode("z:\n  ! <<: {a: 1}\n").z, { a = 1 })
    t.eq(yaml.decode("z: <<\n"), { z = "<<" })
  end)

  t.it("merging anything but maps is an error", function()
    local want = "map merge requires map or sequence of maps as the value"
    t.eq(fails("z:\n  <<: 1\n"), "YAML: <string>:2:7: " .. want)
    t.eq(fails("a: &a [1]\nz:\n  <<: *a\n"), "YAML: <string>:3:7: " .. want)
    t.eq(fails("z:\n  <<: [{a: 1}, 2]\n"), "YAML: <string>:2:16: " .. want)
  end)

  t.it("unknown and self-containing anchors are errors", function()
    t.eq(fails("a: *x"), "YAML: <string>:1:4: unknown anchor 'x' referenced")
    t.eq(fails("&a [*a]"), "YAML: <string>:1:5: anchor 'a' value contains itself")
    t.eq(fails("a: &a {b: *a}"), "YAML: <string>:1:11: anchor 'a' value contains itself")
    t.eq(fails("a: &a {<<: *a}"), "YAML: <string>:1:12: anchor 'a' value contains itself")
  end)
end)

t.describe("JSON", function()
  local json = '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"on": "yes"}},\n'
    .. ' "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}],\n'
    .. ' "args": ["1", "true", "", "null"], "x": [1.5, -2, 1e3, true, false, null, 9007199254740993]}]}}'
  local same = [[
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    "on": "yes"
spec:
  containers:
  - name: c
    image: nginx
    ports:
    - containerPort: 80
    args: ["1", "true", "", "null"]
    x: [1.5, -2, 1e3, true, false, null, 9007199254740993]
]]
  t.it("a JSON document decodes as the same YAML does", function()
    local a, b = assert(yaml.decode(json)), assert(yaml.decode(same))
    t.eq(a, b)
    t.eq(a.metadata.labels, { on = "yes" })
    t.eq(a.spec.containers[1].args, { "1", "true", "", "null" })
    t.ok(a.spec.containers[1].x[7] == 9007199254740993LL)
  end)

  t.it("JSON spellings YAML 1.1 lacks: no spaces, tabs, \\/ and surrogate pairs", function()
    t.eq(yaml.decode('{"a":1,"b":[true,null]}'), { a = 1, b = { true, NULL } })
    t.eq(yaml.decode('{\n\t"a":\t1\n}'), { a = 1 })
    t.eq(yaml.decode('{"a": "\\/x\\/"}'), { a = "/x/" })
    -- kubelet reads a document starting with "{" as JSON, where "\ud83d\ude00" is one
    -- character; go-yaml alone would reject it
    t.eq(yaml.decode('{"a": "\\ud83d\\ude00 \\\\ud83d\\\\ude00", "b": "\\u00e9"}'),
      { a = "😀 \\ud83d\\ude00", b = "é" })
    t.eq(yaml.decode('[{"a": "x\\ud83d\\ude00y"}]'), { { a = "x😀y" } })
    -- a lone surrogate is still invalid
    t.match(select(2, yaml.decode('{"a": "\\ud83d"}')), "invalid Unicode character escape code")
  end)
end)

t.describe("errors", function()
  t.it("name the line and column and say what is wrong", function()
    t.eq(fails("a: b: c"), "YAML: <string>:1:5: mapping values are not allowed in this context")
    t.eq(fails("a: 1\n b: 2\n"), "YAML: <string>:2:3: mapping values are not allowed in this context")
    t.eq(fails("a:\n  - 1\n  b: 2\n"),
      "YAML: <string>:3:3: did not find expected '-' indicator (while parsing a block collection at 2:3)")
    t.eq(fails("a: [1, 2\nb: 3\n"),
      "YAML: <string>:2:2: did not find expected ',' or ']' (while parsing a flow sequence at 1:4)")
    t.eq(fails("a: 'unclosed\n"),
      "YAML: <string>:2:1: found unexpected end of stream (while scanning a quoted scalar at 1:4)")
    t.eq(fails("a:\n\tb: 1\n"),
      "YAML: <string>:2:1: found character that cannot start any token (while scanning for the next token at 2:1)")
    t.eq(fails("key: \"\\q\"\n"),
      "YAML: <string>:1:7: found unknown escape character (while parsing a quoted scalar at 1:6)")
  end)

  t.it("opts.name names the input", function()
    t.eq(fails("a: b: c", nil, { name = "http://127.0.0.1:8080/pods" }),
      "YAML: http://127.0.0.1:8080/pods:1:5: mapping values are not allowed in this context")
  end)

  t.it("bytes that are not UTF-8 name their offset", function()
    t.eq(fails("a: \255\n"), "YAML: <string>: byte 3: invalid leading UTF-8 octet (#FF)")
  end)

  t.it("bad arguments and options throw, naming them", function()
    t.fails(function() yaml.decode(nil) end, "decode: expected a string, got nil")
    t.fails(function() yaml.decode("a", { max_sise = 1 }) end, "kubelua%.yaml%.decode: unknown option max_sise$")
    t.fails(function() yaml.decode("a", { max_size = "1" }) end,
      "kubelua%.yaml%.decode: option max_size must be a number, got string$")
    t.fails(function() yaml.decode_all("a", { omit_null = 1 }) end,
      "kubelua%.yaml%.decode_all: option omit_null must be a boolean, got number$")
    t.fails(function() yaml.decode("a", { max_depth = 0 }) end, "option max_depth must be a positive integer")
    t.fails(function() yaml.decode("a", { max_depth = 5000 }) end, "max_depth must be at most 1000")
    t.fails(function() yaml.decode_file("x", "y") end,
      "kubelua%.yaml%.decode_file: options must be a table, got string$")
    t.fails(function() yaml.encode({}, { indent = 1 }) end, "indent must be from 2 to 9")
    t.fails(function() yaml.encode({}, { name = "x" }) end, "kubelua%.yaml%.encode: unknown option name$")
  end)

  t.it("blames bad options on the caller's line", function()
    local line = debug.getinfo(1, "l").currentline + 1
    local e = t.fails(function() yaml.decode_file_all("x", { max_size = "1" }) end)
    t.match(e, "^[^:]*yaml_spec%.lua:" .. line .. ": kubelua%.yaml%.decode_file_all: option max_size must be a number")
    line = debug.getinfo(1, "l").currentline + 1
    e = t.fails(function() yaml.encode_all({}, { indnt = 2 }) end)
    t.match(e, "^[^:]*yaml_spec%.lua:" .. line .. ": kubelua%.yaml%.encode_all: unknown option indnt$")
    line = debug.getinfo(1, "l").currentline + 1
    e = t.fails(function() yaml.decode("a", { max_alias_nodes = 0.5 }) end)
    t.match(e, "^[^:]*yaml_spec%.lua:" .. line .. ": kubelua%.yaml%.decode: option max_alias_nodes must be a positive")
  end)
end)

t.describe("files", function()
  local dir
  t.before_each(function()
    dir = S.tmpdir("yaml")
  end)
  t.after_each(function()
    S.rm(dir)
  end)

  t.it("decode_file reads a manifest; errors carry the path", function()
    local path = dir .. "/manifest.yaml"
    write(path, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n")
    t.eq(yaml.decode_file(path), { apiVersion = "v1", kind = "Pod", metadata = { name = "x" } })
    local lines = {}
    for i = 1, 11 do
      lines[i] = "k" .. i .. ": v"
    end
    lines[12] = " x: y"
    write(path, table.concat(lines, "\n") .. "\n")
    local v, err, code = yaml.decode_file(path)
    t.eq(v, nil)
    t.eq(code, "YAML")
    t.eq(err, "YAML: " .. path .. ":12:3: mapping values are not allowed in this context")
    t.match(select(2, yaml.decode_file(path, { name = "manifest.yaml" })), "^YAML: manifest%.yaml:12:3: ")
  end)

  t.it("decode_file_all reads every document", function()
    local path = dir .. "/list.yaml"
    write(path, "a: 1\n---\nb: 2\n")
    t.eq(yaml.decode_file_all(path), { { a = 1 }, { b = 2 } })
  end)

  t.it("I/O failures give the errno name and the path", function()
    local v, err, code = yaml.decode_file(dir .. "/missing.yaml")
    t.eq(v, nil)
    t.eq(code, "ENOENT")
    t.eq(err, "ENOENT: " .. dir .. "/missing.yaml: no such file or directory")
    v, err, code = yaml.decode_file(dir)
    t.eq(code, "EISDIR")
    t.eq(err, "EISDIR: " .. dir .. ": illegal operation on a directory")
    local ok = select(2, S.sh("mkfifo '" .. dir .. "/fifo'"))
    t.ok(ok, "mkfifo")
    v, err, code = yaml.decode_file(dir .. "/fifo") -- must not block waiting for a writer
    t.eq(code, "EINVAL")
    t.eq(err, "EINVAL: " .. dir .. "/fifo: not a regular file")
    write(dir .. "/secret.yaml", "a: 1\n")
    S.sh("chmod 000 '" .. dir .. "/secret.yaml'")
    v, err, code = yaml.decode_file(dir .. "/secret.yaml")
    if v then -- root reads any file
      t.eq(v, { a = 1 })
    else
      t.eq(code, "EACCES")
    end
  end)

  t.it("a file over 10 MiB is rejected before it is read", function()
    local path = dir .. "/big.yaml"
    local f = assert(io.open(path, "wb"))
    f:seek("set", 10 * 1024 * 1024) -- sparse: 10 MiB of zeros and one byte
    f:write("x")
    f:close()
    local started = task.monotime()
    local v, err, code = yaml.decode_file(path)
    t.eq(v, nil)
    t.eq(code, "YAML")
    t.eq(err, "YAML: " .. path .. ": file is 10485761 bytes, more than the limit of 10485760 (max_size)")
    t.ok(task.monotime() - started < 0.05, "rejected at once")
  end)

  t.it("max_size is exact, and a file that reports no size is cut off while reading", function()
    local path = dir .. "/m.yaml"
    write(path, "a: " .. string.rep("x", 97) .. "\n") -- 101 bytes
    t.eq(select(3, yaml.decode_file(path, { max_size = 100 })), "YAML")
    t.ok(yaml.decode_file(path, { max_size = 101 }))
    -- /proc files have st_size 0 and more bytes than this
    local v, err, code = yaml.decode_file("/proc/self/maps", { max_size = 100 })
    t.eq(v, nil)
    t.eq(code, "YAML")
    t.eq(err, "YAML: /proc/self/maps: file is more than the limit of 100 bytes (max_size)")
  end)
end)

t.describe("limits", function()
  t.it("input over 10 MiB is rejected", function()
    local s = string.rep("#", 10 * 1024 * 1024 + 1)
    t.eq(fails(s), "YAML: <string>: input is 10485761 bytes, more than the limit of 10485760 (max_size)")
    fails("a: 1\n", "limit of 4 %(max_size%)", { max_size = 4 })
  end)

  t.it("a deeply nested document is rejected while parsing", function()
    local started = task.monotime()
    t.eq(fails(string.rep("[", 100000)), "YAML: <string>:1:101: nesting deeper than 100 levels (max_depth)")
    t.ok(task.monotime() - started < 0.1)
    local block = {}
    for i = 1, 101 do
      block[i] = string.rep(" ", i - 1) .. "k:"
    end
    t.eq(fails(table.concat(block, "\n") .. " 1\n"),
      "YAML: <string>:101:101: nesting deeper than 100 levels (max_depth)")
    -- 100 levels are fine; max_depth changes the limit
    t.ok(yaml.decode(string.rep("[", 100) .. string.rep("]", 100)))
    fails("[[[1]]]", "nesting deeper than 2 levels", { max_depth = 2 })
    t.eq(yaml.decode("[[1]]", { max_depth = 2 }), { { 1 } })
  end)

  t.it("nesting built through aliases counts too", function()
    local s = "a: &a " .. string.rep("[", 60) .. string.rep("]", 60) .. "\nb: " .. string.rep("[", 50) .. "*a"
      .. string.rep("]", 50) .. "\n"
    t.match(fails(s), "^YAML: <string>:2:54: nesting deeper than 100 levels %(max_depth%)$")
  end)

  t.it("a billion-laughs document fails fast, after few nodes", function()
    local started = task.monotime()
    local err = fails(BOMB)
    local took = task.monotime() - started
    t.ok(took < 0.25, string.format("took %.3f s", took))
    local aliased, total = err:match("document contains excessive aliasing %((%d+) of (%d+) nodes come from aliases%)")
    t.ok(aliased, err)
    t.ok(tonumber(total) <= 5000, "stopped after " .. total .. " nodes")
    t.eq(err:match("^YAML: <string>:(%d+:%d+):"), "4:17") -- the alias being expanded
  end)

  t.it("a wide alias fan-out within go-yaml's ratio still stops at max_alias_nodes", function()
    -- 2,000 plain items, then 150 aliases to a list of 1,000: 150,150 nodes from
    -- aliases, 98% of all (go-yaml v2 allows 99%)
    local items, list, refs = {}, {}, {}
    for i = 1, 2000 do
      items[i] = tostring(i)
    end
    for i = 1, 1000 do
      list[i] = "x"
    end
    for i = 1, 150 do
      refs[i] = "*l"
    end
    local s = "plain: [" .. table.concat(items, ",") .. "]\nl: &l [" .. table.concat(list, ",") .. "]\nr: ["
      .. table.concat(refs, ",") .. "]\n"
    local started = task.monotime()
    local err = fails(s)
    t.ok(task.monotime() - started < 0.25)
    t.match(err, "^YAML: <string>:3:%d+: aliases expand to more than 100000 nodes %(max_alias_nodes%)$")
    local doc = assert(yaml.decode(s, { max_alias_nodes = 200000 }))
    t.eq(#doc.r, 150)
    t.eq(#doc.r[150], 1000)
    -- and a small budget
    local small = "l: &l [" .. table.concat(list, ",", 1, 100) .. "]\nr: [*l, *l, *l, *l, *l, *l, *l, *l, *l, *l]\n"
    t.eq(fails(small, nil, { max_alias_nodes = 500 }),
      "YAML: <string>:2:21: aliases expand to more than 500 nodes (max_alias_nodes)")
    t.eq(#assert(yaml.decode(small)).r, 10)
  end)
end)

t.describe("encode", function()
  t.it("block style, sorted keys, arrays and maps by shape", function()
    local s = yaml.encode({ b = { 3, 1, 2 }, a = { y = 1, x = "s" }, c = {}, d = yaml.array(), e = yaml.null,
      f = true, g = 1.5, h = -7 })
    t.eq(s, "a:\n  x: s\n  \"y\": 1\nb:\n- 3\n- 1\n- 2\nc: {}\nd: []\ne: null\nf: true\ng: 1.5\nh: -7\n")
  end)

  t.it("strings that would read back as something else are quoted", function()
    local s = yaml.encode({ "yes", "y", "on", "1", "0x1F", "1e3", ".5", "", "~", "null", "true", "<<",
      "2001-12-14", "12:30", "plain text", "a: b", "- x", "#c", "multi\nline\n" })
    t.eq(s, '- "yes"\n- "y"\n- "on"\n- "1"\n- "0x1F"\n- "1e3"\n- ".5"\n- ""\n- "~"\n- "null"\n- "true"\n'
      .. '- "<<"\n- "2001-12-14"\n- "12:30"\n- plain text\n- \'a: b\'\n- \'- x\'\n- \'#c\'\n- |\n  multi\n  line\n')
    t.eq(yaml.encode({ ["on"] = 1, ["1"] = 2, [2] = 3 }), '"1": 2\n2: 3\n"on": 1\n')
  end)

  t.it("numbers, int64 and bytes that are not UTF-8", function()
    t.eq(yaml.encode({ 0.1, 1e20, 2 ^ 53, 2 ^ 60, 1 / 0, -1 / 0, 0 / 0, 1700000000000000123LL,
      18446744073709551615ULL }),
      "- 0.1\n- 1e+20\n- 9007199254740992\n- 1.152921504606847e+18\n- .inf\n- -.inf\n- .nan\n"
      .. "- 1700000000000000123\n- 18446744073709551615\n")
    t.eq(yaml.encode("\255\0\1"), "!!binary /wAB\n")
    t.eq(yaml.decode(yaml.encode({ b = "\255\254" .. string.rep("x", 100) })).b, "\255\254" .. string.rep("x", 100))
  end)

  t.it("encode_all writes a stream", function()
    local s = yaml.encode_all({ { a = 1 }, { b = 2 } })
    t.eq(s, "---\na: 1\n---\nb: 2\n")
    t.eq(yaml.decode_all(s), { { a = 1 }, { b = 2 } })
  end)

  t.it("what YAML cannot hold throws, naming where", function()
    t.fails(function() yaml.encode({ a = { b = print } }) end, "cannot encode a function %(at %.a%.b%)")
    local cyc = {}
    cyc.self = cyc
    t.fails(function() yaml.encode({ x = { cyc } }) end, "a table contains itself %(at %.x%[1%]%.self%)")
    t.fails(function() yaml.encode({ [1] = "a", ["1"] = "b" }) end, 'two keys are both written as "1"')
    t.fails(function() yaml.encode({ [{}] = 1 }) end, "a table key cannot be a table")
    t.fails(function() yaml.encode(yaml.array({ a = 1 })) end, "marked as an array has keys other than 1..n")
    local deep = {}
    local cur = deep
    for _ = 1, 150 do
      cur.x = {}
      cur = cur.x
    end
    t.fails(function() yaml.encode(deep) end, "deeper than 100 levels")
    t.ok(yaml.encode(deep, { max_depth = 200 }))
  end)

  t.it("round trips: every scalar of the tables, as a string and as its value", function()
    local samples = { "", "~", "y", "n", "yes", "No", "on", "OFF", "0", "-0", "017", "08", "0o17", "0x1F",
      "0b101", "1_000", "1e3", ".5", "+.5", "1.", ".inf", "-.Inf", ".nan", "NaN", "2001-12-14", "12:30",
      "1:20:30", "<<", "=", "-", "- a", ": x", "a: b", "#x", "x #y", "'q'", '"d"', "\\", "tab\there",
      "trailing ", " leading", "line\nbreak", "end\n", "\n", "héllo", "\0nul", "9223372036854775808", "a\r\nb" }
    for _, s in ipairs(samples) do
      local out = yaml.encode({ v = s, l = { s } })
      local back = assert(yaml.decode(out))
      t.eq(back.v, s, "string " .. string.format("%q", s) .. " -> " .. out)
      t.eq(back.l[1], s)
    end
    local values = { 0, 1, -1, 1.5, 2 ^ 53, -2 ^ 53, 1e-300, 1e300, 0.1 + 0.2, true, false,
      9007199254740993LL, 18446744073709551615ULL, "x", { 1, { 2, { 3 } } }, { a = { b = { c = "d" } } } }
    for _, v in ipairs(values) do
      t.eq(yaml.decode(yaml.encode({ v = v })).v, v, tostring(v))
    end
    local arr = yaml.decode("- []\n- {}\n")
    t.eq(yaml.encode(arr), "- []\n- {}\n")
  end)
end)

t.describe("static pod manifests (kubeadm)", function()
  local function load(name)
    local pod, err = yaml.decode_file(MANIFESTS .. "/" .. name)
    t.ok(pod, err)
    t.eq(pod.apiVersion, "v1")
    t.eq(pod.kind, "Pod")
    t.eq(pod.metadata.namespace, "kube-system")
    t.eq(pod.spec.hostNetwork, true)
    t.eq(pod.spec.priorityClassName, "system-node-critical")
    t.eq(pod.spec.priority, 2000001000)
    t.ok(pod.metadata.creationTimestamp == yaml.null)
    t.eq(pod.status, {})
    -- round trip through the encoder
    t.eq(yaml.decode(yaml.encode(pod)), pod, name .. " round trip")
    return pod, pod.spec.containers[1]
  end

  t.it("etcd", function()
    local pod, c = load("etcd.yaml")
    t.eq(pod.metadata.name, "etcd")
    t.eq(c.image, "registry.k8s.io/etcd:3.5.12-0")
    t.eq(c.command[1], "etcd")
    t.eq(#c.command, 20)
    t.eq(c.command[5], "--data-dir=/var/lib/etcd")
    t.eq(c.livenessProbe.httpGet, { host = "127.0.0.1", path = "/health?exclude=NOSPACE&serializable=true",
      port = 2381, scheme = "HTTP" })
    t.eq(c.startupProbe.failureThreshold, 24)
    t.eq(c.resources.requests, { cpu = "100m", memory = "100Mi" })
    t.eq(pod.spec.volumes[2], { name = "etcd-data", hostPath = { path = "/var/lib/etcd", type = "DirectoryOrCreate" } })
    t.eq(pod.spec.securityContext.seccompProfile.type, "RuntimeDefault")
  end)

  t.it("kube-apiserver: named probe port", function()
    local pod, c = load("kube-apiserver.yaml")
    t.eq(c.ports, { { containerPort = 6443, name = "probe-port", protocol = "TCP" } })
    t.eq(c.livenessProbe.httpGet.port, "probe-port")
    t.eq(c.readinessProbe.httpGet.host, "127.0.0.1")
    t.eq(c.readinessProbe.periodSeconds, 1)
    t.eq(c.command[4], "--authorization-mode=Node,RBAC")
    t.eq(#pod.spec.volumes, 5)
    t.eq(c.volumeMounts[1].readOnly, true)
  end)

  t.it("kube-controller-manager", function()
    local pod, c = load("kube-controller-manager.yaml")
    t.eq(c.command[11], "--controllers=*,bootstrapsigner,tokencleaner")
    t.eq(c.livenessProbe.httpGet.port, 10257)
    t.eq(c.livenessProbe.httpGet.scheme, "HTTPS")
    t.eq(pod.spec.volumes[5].hostPath.type, "FileOrCreate")
  end)

  t.it("kube-scheduler", function()
    local pod, c = load("kube-scheduler.yaml")
    t.eq(pod.metadata.labels, { component = "kube-scheduler", tier = "control-plane" })
    t.eq(c.resources.requests.cpu, "100m")
    t.eq(c.volumeMounts, { { mountPath = "/etc/kubernetes/scheduler.conf", name = "kubeconfig", readOnly = true } })
  end)
end)

t.describe("fuzz seeds", function()
  t.it("every seed decodes or fails with code YAML, quickly, never throwing", function()
    local names = S.sh("ls '" .. FUZZ .. "'")
    local count = 0
    for name in names:gmatch("[^\n]+") do
      local f = assert(io.open(FUZZ .. "/" .. name, "rb"))
      local data = f:read("*a")
      f:close()
      local started = task.monotime()
      local ok, v, err, code = pcall(yaml.decode_all, data)
      t.ok(ok, name .. " threw: " .. tostring(v))
      t.ok(v ~= nil or code == "YAML", name .. ": " .. tostring(err))
      if v then
        for _, doc in ipairs(v) do
          t.ok(yaml.encode(doc), name)
        end
      end
      t.ok(task.monotime() - started < 0.5, name .. " took too long")
      count = count + 1
    end
    t.ok(count >= 10, "seeds found: " .. count)
  end)

  -- Interpreted only: under ASan, LuaJIT's arenas sit above 4 GiB, and a trace
  -- of this harness (Debian's LuaJIT 2.1.0~beta3+git20220320, GC64) once
  -- truncated a table node's address to 32 bits. The C code under test runs the
  -- same either way.
  local function mutations()
    local seeds = {}
    for _, d in ipairs { FUZZ, MANIFESTS } do
      for name in S.sh("ls '" .. d .. "'"):gmatch("[^\n]+") do
        local f = assert(io.open(d .. "/" .. name, "rb"))
        seeds[#seeds + 1] = f:read("*a"):sub(1, 3000)
        f:close()
      end
    end
    local pieces = { "&a ", "*a", "<<: ", "[", "]", "{", "}", "- ", ": ", "\n", "  ", "!!binary ", "!!int ",
      '"\\u', "'", "---\n", "? ", "|\n", ">-\n", "~", "0x", "\t", "\\ud83d\\ude00", "\255", "#", ",",
      "&b [*a,*a,*a,*a]" }
    local function same(a, b)
      if a == b then
        return true
      end
      if type(a) == "number" and type(b) == "number" then
        return a ~= a and b ~= b
      end
      if type(a) ~= "table" or type(b) ~= "table" then
        return false
      end
      for k, v in pairs(a) do
        if not same(v, b[k]) then
          return false
        end
      end
      for k in pairs(b) do
        if a[k] == nil then
          return false
        end
      end
      return true
    end
    -- a small deterministic generator, so a failure can be replayed
    local state = 12345
    local function rand(lo, hi)
      state = (state * 1103515245 + 12345) % 2147483648
      return lo + state % (hi - lo + 1)
    end
    local decoded = 0
    for i = 1, 3000 do
      local s = seeds[rand(1, #seeds)]
      for _ = 1, rand(1, 8) do
        local pos, r = rand(0, #s), rand(1, 3)
        if r == 1 then
          s = s:sub(1, pos) .. pieces[rand(1, #pieces)] .. s:sub(pos + 1)
        elseif r == 2 then
          s = s:sub(1, pos) .. s:sub(pos + rand(1, 10))
        else
          s = s:sub(1, pos) .. string.char(rand(0, 255)) .. s:sub(pos + 2)
        end
      end
      local ok, docs, err, code = pcall(yaml.decode_all, s, { max_alias_nodes = 20000 })
      t.ok(ok, "mutation " .. i .. " threw: " .. tostring(docs))
      if docs then
        decoded = decoded + 1
        for _, d in ipairs(docs) do
          local back = yaml.decode(yaml.encode(d, { max_depth = 1000 }), { max_alias_nodes = 1e9, max_depth = 1000 })
          t.ok(same(d, back), "mutation " .. i .. " does not round-trip:\n" .. s)
        end
      else
        t.eq(code, "YAML", "mutation " .. i .. ": " .. tostring(err))
      end
    end
    t.ok(decoded > 100, "too few mutations decode (" .. decoded .. ") to test round trips")
  end
  jit.off(mutations, true)
  t.it("3,000 mutated seeds: each fails with code YAML or round-trips through encode", mutations)
end)
