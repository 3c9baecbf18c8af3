-- The embedding example (examples/embed/gc-report) built the way a user
-- builds it: `cmake --install` of this build to a temporary prefix, then the
-- example's Makefile and CMakeLists.txt with only pkg-config pointing there,
-- then the binary run against the fixture containerd without
-- KUBELUA_LUA_PATH. Registered by spec/tests.cmake as example.embed (not a
-- *_spec.lua: it needs the build folder, given in KUBELUA_TEST_BUILD_DIR).
local t = require "spec.t"
local S = require "spec.support"
local cri = require "kubelua.cri"

local BUILD = assert(os.getenv("KUBELUA_TEST_BUILD_DIR"), "KUBELUA_TEST_BUILD_DIR is not set (run through ctest)")
local CMAKE = os.getenv("KUBELUA_TEST_CMAKE") or "cmake"
local SANITIZE = os.getenv("KUBELUA_TEST_SANITIZE") == "ON"
local ctd = assert(S.containerd(), "KUBELUA_TEST_CTD_DIR is not set (run through ctest)")
local IMAGE = "kubelua.local/busybox:latest"
local RUN = "embed-e2e-" .. os.time() .. "-" .. math.random(1e6)
local SRC = S.ROOT .. "/examples/embed"

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- sh -> output, exit status (stderr folded into the output)
local function run(cmd)
  local out = S.sh(cmd .. " 2>&1; echo \"rc=$?\"")
  local body, rc = out:match("^(.-)rc=(%d+)%s*$")
  return body, tonumber(rc)
end

-- The sanitized library needs its runtime in whatever links it.
local SAN = SANITIZE and "-fsanitize=address,undefined -fno-omit-frame-pointer" or ""

t.describe("examples/embed against the installed package", function()
  local tmp, prefix, pod
  t.before_each(function()
    tmp = S.tmpdir("embed")
    prefix = tmp .. "/prefix"
  end)
  t.after_each(function()
    if pod then
      local rt = cri.connect(ctd.endpoint, { timeout = 30 })
      rt:stop_pod_sandbox{ pod_sandbox_id = pod }
      rt:remove_pod_sandbox{ pod_sandbox_id = pod }
      rt:close()
      pod = nil
    end
    S.rm(tmp)
  end)

  t.it("installs, builds with pkg-config only, and reports a GC plan", function()
    local out, rc = run(q(CMAKE) .. " --install " .. q(BUILD) .. " --prefix " .. q(prefix))
    t.eq(rc, 0, "cmake --install: " .. out)
    local pcdir = prefix .. "/lib/pkgconfig"
    t.ok(S.exists(pcdir .. "/kubelua.pc"), "kubelua.pc installed")
    t.ok(S.exists(prefix .. "/include/kubelua.h"), "header installed")
    t.ok(S.exists(prefix .. "/share/kubelua/lua/kubelua/gc.lua"), "Lua modules installed")

    -- Makefile build: the normal compiler, -Wall -Wextra -Werror (in the Makefile)
    out, rc = run("cd " .. q(SRC) .. " && env PKG_CONFIG_PATH=" .. q(pcdir) .. " make -B O=" .. q(tmp)
      .. " CFLAGS=" .. q("-O2 -g " .. SAN) .. " LDFLAGS=" .. q(SAN))
    t.eq(rc, 0, "make: " .. out)
    t.match(out, "%-Werror", "built with -Werror")
    t.match(out, "%-I" .. prefix:gsub("%p", "%%%0") .. "/lib/pkgconfig/%.%./%.%./include",
      "the header comes from the prefix, through the relocatable .pc")
    -- CMake build of the same source, also through pkg-config
    out, rc = run("env PKG_CONFIG_PATH=" .. q(pcdir) .. " " .. q(CMAKE) .. " -S " .. q(SRC) .. " -B " .. q(tmp .. "/cm")
      .. " -DCMAKE_C_FLAGS=" .. q(SAN) .. " -DCMAKE_EXE_LINKER_FLAGS=" .. q(SAN) .. " && "
      .. q(CMAKE) .. " --build " .. q(tmp .. "/cm"))
    t.eq(rc, 0, "cmake build: " .. out)
    t.ok(S.exists(tmp .. "/cm/gc-report"), "CMake built gc-report")
    out = S.sh("ldd " .. q(tmp .. "/gc-report"))
    t.match(out, "libkubelua%.so%.0 => " .. prefix:gsub("%p", "%%%0"), "linked to the installed library")

    -- A pod with app attempts 0 and 1 exited and a running side container:
    -- with one dead container kept per (pod, name), attempt 0 is the one to go.
    local rt = assert(cri.connect(ctd.endpoint, { timeout = 30 }))
    local uid = RUN .. "-pod"
    local labels = { ["io.kubernetes.pod.uid"] = uid, ["io.kubernetes.pod.name"] = "reportme",
      ["io.kubernetes.pod.namespace"] = "embed-test", ["kubelua.test/run"] = RUN }
    local cfg = {
      metadata = { name = "reportme", uid = uid, namespace = "embed-test" },
      log_directory = tmp .. "/logs", labels = labels,
      linux = { security_context = { namespace_options = { network = "NODE" } } },
    }
    pod = assert(rt:run_pod_sandbox{ config = cfg }).pod_sandbox_id
    local ids = {}
    local function container(name, attempt, cmd)
      local l = { ["io.kubernetes.container.name"] = name }
      for k, v in pairs(labels) do
        l[k] = v
      end
      local id = assert(rt:create_container{ pod_sandbox_id = pod, sandbox_config = cfg, config = {
        metadata = { name = name, attempt = attempt }, image = { image = IMAGE }, command = cmd,
        log_path = name .. "/" .. attempt .. ".log", labels = l } }).container_id
      assert(rt:start_container{ container_id = id })
      ids[name .. "/" .. attempt] = id
    end
    container("app", 0, { "sh", "-c", "exit 1" })
    container("app", 1, { "sh", "-c", "exit 0" })
    container("side", 0, { "sleep", "3600" })
    t.ok(S.wait_for(function()
      local r = assert(rt:list_containers{ filter = { label_selector = { ["kubelua.test/run"] = RUN },
        state = { state = "CONTAINER_EXITED" } } })
      return #r.containers == 2
    end, 20), "both app attempts exited")
    rt:close()

    -- The tool, with no KUBELUA_LUA_PATH: the installed library finds its modules.
    local env = "env -u KUBELUA_LUA_PATH -u CONTAINER_RUNTIME_ENDPOINT"
      .. (SANITIZE and " ASAN_OPTIONS=detect_leaks=1:abort_on_error=1" or "")
    out, rc = run(env .. " " .. q(tmp .. "/gc-report") .. " -v -r " .. q(ctd.endpoint))
    t.eq(rc, 0, "gc-report: " .. out)
    io.write(out) -- the report, for the test log
    t.match(out, "gc%-report: modules from " .. prefix:gsub("%p", "%%%0") .. "/[^\n]*/share/kubelua/lua/kubelua/gc%.lua",
      "Lua modules found beside the installed library")
    -- node_name() is the C function: its answer is gethostname's
    local host = S.sh("hostname"):gsub("%s+$", "")
    t.match(out, "\nnode " .. host:gsub("%p", "%%%0") .. ": GC dry run, nothing removed\n", "header via ext.node_name")
    local line = out:match("\n(container " .. ids["app/0"]:sub(1, 13) .. "[^\n]*)")
    t.ok(line, "attempt 0 is planned for removal:\n" .. out)
    t.match(line, "^container %x+ embed%-test/reportme/app attempt 0 %(CONTAINER_EXITED%): [%w_-]+, ",
      "the report line names pod, container, attempt, state and rule")
    t.ok(not out:find(ids["app/1"]:sub(1, 13), 1, true), "the newest dead attempt is kept")
    t.ok(not out:find(ids["side/0"]:sub(1, 13), 1, true), "a running container is never planned")
    local total = out:match("\ntotal: %d+ containers, %d+ sandboxes, %d+ log folders; ([^\n]*) freed\n")
    t.ok(total, "total line:\n" .. out)
    -- human_bytes is the other C function: its units are IEC with one
    -- decimal; "?" only when the runtime reports no size.
    t.ok(total == "0 B" or total:match("^%d+ B$") or total:match("^%d+%.%d [KMGTP]iB$"),
      "total formatted by ext.human_bytes: " .. total)
    -- Cross-check the size column against `kubelua gc --dry-run --json`:
    -- the same bytes, in human_bytes' units.
    local json = S.sh(q(BUILD .. "/kubelua") .. " gc --dry-run --json --endpoint " .. q(ctd.endpoint))
    local view = require("kubelua.json").decode(json)
    local bytes
    for _, c in ipairs(view.containers or {}) do
      if c.id == ids["app/0"] then
        bytes = c.bytes
      end
    end
    local want = "?"
    if type(bytes) == "number" then
      local n, units, u = bytes, { "B", "KiB", "MiB", "GiB", "TiB" }, 1
      while n >= 1024 and u < #units do
        n, u = n / 1024, u + 1
      end
      want = u == 1 and string.format("%d B", n) or string.format("%.1f %s", n, units[u])
    end
    t.eq(line:match(", ([^,]+)$"), want, "size column = kubelua gc's bytes (" .. tostring(bytes) .. ") via human_bytes")

    -- A plan only: the container it would remove is still there.
    local still = assert(cri.connect(ctd.endpoint, { timeout = 30 }))
    local r = assert(still:list_containers{ filter = { id = ids["app/0"] } })
    still:close()
    t.eq(#r.containers, 1, "the dry run removed nothing")

    -- A wrong endpoint is exit status 1 with the runtime's error on stderr.
    out, rc = run(env .. " " .. q(tmp .. "/gc-report") .. " -r unix://" .. q(tmp .. "/nope.sock"))
    t.eq(rc, 1, "wrong endpoint: " .. out)
    t.match(out, "gc%-report: UNAVAILABLE", "the error names the code")
    out, rc = run(env .. " " .. q(tmp .. "/gc-report") .. " --min-age=-3")
    t.eq(rc, 2, "bad flag: " .. out)
  end)
end)
