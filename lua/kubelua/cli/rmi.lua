-- kubelua rmi: remove images (crictl rmi).
--
-- --prune removes every image that nothing needs, and never one that is:
--   * pinned (Image.pinned: the runtime's sandbox image, kubelet's pins);
--   * used by any container the runtime lists, in any state (matched by
--     image ID through ImageStatus, as crictl does, and by image_ref);
--   * the runtime's sandbox ("pause") image named in its config (containerd
--     reports it in Status' verbose info as sandboxImage), which pods use
--     without any container showing it.
-- Removing an image by tag removes the whole image with all its tags (a CRI
-- limitation); a warning names the other tags when that happens.
local common = require "kubelua.cli.common"

local M = {}

-- The image ID a reference resolves to, or nil.
local function resolve(rt, ref, cache)
  if cache[ref] == nil then
    local st = rt:image_status{ image = { image = ref } }
    cache[ref] = st and st.image and st.image.id or false
  end
  return cache[ref] or nil
end

-- IDs of the images --prune must keep: { [id] = reason }; nil, err on failure.
function M.protected(rt)
  local keep, cache = {}, {}
  local r, err = rt:list_containers{}
  if not r then
    return nil, err
  end
  for _, c in ipairs(r.containers) do
    if c.image_ref and c.image_ref ~= "" then
      keep[c.image_ref] = keep[c.image_ref] or ("used by container " .. c.id)
    end
    local ref = c.image and c.image.image or ""
    if ref ~= "" then
      local id = resolve(rt, ref, cache)
      if id then
        keep[id] = keep[id] or ("used by container " .. c.id)
      end
    end
  end
  local st = rt:status{ verbose = true }
  local config = st and st.info and st.info.config
  if config then
    local cfg = require("kubelua.json").decode(config)
    local sandbox = type(cfg) == "table" and cfg.sandboxImage
    if type(sandbox) == "string" and sandbox ~= "" then
      local id = resolve(rt, sandbox, cache)
      if id then
        keep[id] = keep[id] or "the runtime's sandbox image"
      end
    end
  end
  return keep
end

local function deleted_lines(ctx, img)
  local names = #img.repo_tags > 0 and img.repo_tags or img.repo_digests
  if #names == 0 then
    names = { img.id }
  end
  for _, n in ipairs(names) do
    ctx:line("Deleted: " .. n)
  end
end

local cmd = common.command{
  name = "rmi",
  args = "[OPTIONS] IMAGE [IMAGE...]",
  summary = "Remove images by ID or reference. --prune removes the unused ones (never pinned or in-use images).",
  flags = {
    { "all", "a", "bool", "remove every image (pinned ones too)" },
    { "prune", "q", "bool", "remove every image no container uses, except pinned ones and the sandbox image" },
  },
  run = function(ctx)
    local f = ctx.flags
    if #ctx.args == 0 and not f.all and not f.prune then
      return ctx:usage("give at least one IMAGE, or --all, or --prune")
    end
    local rt = ctx:client()
    if not rt then
      return
    end
    local targets, order = {}, {} -- id or reference -> true
    local function add(ref)
      if not targets[ref] then
        targets[ref] = true
        order[#order + 1] = ref
      end
    end
    for _, a in ipairs(ctx.args) do
      add(a)
    end
    local keep = {}
    if f.all or f.prune then
      local r, err = rt:list_images{}
      if not r then
        return ctx:fail(err)
      end
      if f.prune and not f.all then
        keep, err = M.protected(rt)
        if not keep then
          return ctx:fail(err)
        end
      end
      for _, img in ipairs(r.images) do
        if f.all or not (img.pinned or keep[img.id]) then
          add(img.id)
        end
      end
    end
    local explicit = {}
    for _, a in ipairs(ctx.args) do
      explicit[a] = true
    end
    for _, ref in ipairs(order) do
      local st, err = rt:image_status{ image = { image = ref } }
      if not st then
        ctx:fail(err .. " (image " .. ref .. ")")
      elseif not st.image then
        if explicit[ref] then
          ctx:fail(string.format("NOT_FOUND: no such image %q", ref))
        end -- gone meanwhile: nothing to prune
      else
        local img = st.image
        if #img.repo_tags > 1 and explicit[ref] and ref:sub(1, 7) ~= "sha256:" and ref:find("[:/]") then
          ctx.stderr:write("kubelua rmi: warning: image ", ref, " has ", #img.repo_tags,
            " tags; removing it removes all of them: ", table.concat(img.repo_tags, ", "), "\n")
        end
        local ok, rerr, code = rt:remove_image{ image = { image = ref } }
        if ok then
          deleted_lines(ctx, img)
        elseif not (code == "NOT_FOUND" and not explicit[ref]) then
          ctx:fail(rerr .. " (image " .. ref .. ")")
        end
      end
    end
  end,
}
M.main, M.run, M.spec = cmd.main, cmd.run, cmd.spec
return M
