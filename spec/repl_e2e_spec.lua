-- The REPL in a real terminal (tmux): editing, history across sessions,
-- completion of CRI methods, multi-line input, Ctrl-C, CRI results printed.
local t = require "spec.t"
local S = require "spec.support"
local task = require "kubelua.task"

local ctd = assert(S.containerd(), "KUBELUA_TEST_CTD_DIR is not set (run through ctest)")
local KUBELUA = S.kubelua_bin()
local home = S.tmpdir("repl")
local session = "kubelua-spec-" .. tostring(os.time()) .. tostring(math.random(1e6))

local function tmux(args)
  local out, ok = S.sh("tmux " .. args)
  assert(ok, "tmux " .. args .. ": " .. out)
  return out
end

local function start()
  tmux(string.format("new-session -d -s %s -x 150 -y 50 \"env HOME=%s CONTAINER_RUNTIME_ENDPOINT=%s %s repl\"",
    session, home, ctd.endpoint, KUBELUA))
  assert(S.wait_for(function()
    return tmux("capture-pane -p -t " .. session):find("kubelua>", 1, true)
  end, 10), "the REPL did not start")
end

local function screen()
  return tmux("capture-pane -p -S -200 -t " .. session)
end

-- Type a line (literally) and wait until `want` shows up on the screen.
local function type_line(line, want)
  tmux("send-keys -t " .. session .. " -l '" .. line:gsub("'", "'\\''") .. "'")
  tmux("send-keys -t " .. session .. " Enter")
  if want then
    local ok = S.wait_for(function()
      return screen():find(want, 1, true)
    end, 10)
    t.ok(ok, "expected " .. want .. " after typing " .. line .. "; screen:\n" .. screen())
  end
end

local function stop()
  S.sh("tmux kill-session -t " .. session)
end

t.describe("repl", function()
  t.it("evaluates expressions and statements", function()
    start()
    type_line("answer = 6 * 7")
    type_line("answer", "\n42\n")
  end)
  t.it("continues an incomplete chunk on the next line", function()
    type_line("function double(x)", "...>")
    type_line("return x * 2")
    type_line("end")
    type_line("double(21) + 0.5", "42.5")
  end)
  t.it("Ctrl-C interrupts a running loop, not the REPL", function()
    type_line("while true do end")
    task.sleep(0.5)
    tmux("send-keys -t " .. session .. " C-c")
    t.ok(S.wait_for(function()
      return screen():find("error: interrupted", 1, true)
    end, 5), "interrupted; screen:\n" .. screen())
    type_line("'still here'", '"still here"')
  end)
  t.it("completes CRI method names with Tab", function()
    tmux("send-keys -t " .. session .. " -l 'rt:image_fs_i'")
    tmux("send-keys -t " .. session .. " Tab")
    t.ok(S.wait_for(function()
      return screen():find("rt:image_fs_info", 1, true)
    end, 5), "completed; screen:\n" .. screen())
    tmux("send-keys -t " .. session .. " C-u")
  end)
  t.it("pretty-prints a CRI call's result, made at the prompt without coroutine code", function()
    type_line("rt:version()", 'runtime_name = "containerd"')
    type_line("#rt:list_images{}.images >= 1", "true")
  end)
  t.it("keeps history across sessions", function()
    type_line(":quit")
    t.ok(S.wait_for(function()
      return S.read_file(home .. "/.kubelua_history") ~= nil
    end, 5), "history written")
    stop()
    start()
    tmux("send-keys -t " .. session .. " Up")
    t.ok(S.wait_for(function()
      return screen():find("kubelua> #rt:list_images{}.images >= 1", 1, true)
    end, 5), "the last line of the previous session comes back; screen:\n" .. screen())
    stop()
    S.rm(home)
  end)
end)
