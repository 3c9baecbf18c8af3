-- kubelua inspecti: the status of one or more images (crictl inspecti).
local common = require "kubelua.cli.common"

return common.command{
  name = "inspecti",
  args = "[OPTIONS] IMAGE [IMAGE...]",
  summary = "Show the status of images, by ID or reference. Without one, every image.",
  flags = common.INSPECT_FLAGS,
  run = function(ctx)
    ctx:inspect_each{
      ids = function()
        if #ctx.args > 0 then
          return ctx.args
        end
        local rt = ctx:client()
        if not rt then
          return nil
        end
        local r, err = rt:list_images{}
        local ids = common.ids("images", r, err)
        if not ids then
          return ctx:fail(err)
        end
        return ids
      end,
      fetch = function(rt, id, verbose)
        local r, err = rt:image_status{ image = { image = id }, verbose = verbose }
        if r and not r.image then
          return nil, string.format("NOT_FOUND: no such image %q present", id)
        end
        return r, err
      end,
      lines = function(r)
        local lines = { "ID: " .. r.image.id }
        for _, t in ipairs(r.image.repo_tags) do
          lines[#lines + 1] = "Tag: " .. t
        end
        for _, d in ipairs(r.image.repo_digests) do
          lines[#lines + 1] = "Digest: " .. d
        end
        lines[#lines + 1] = "Size: " .. common.human_size(r.image.size, 3)
        return lines
      end,
      status = function(r)
        return common.to_json(r.image, "runtime.v1.Image")
      end,
    }
  end,
}
