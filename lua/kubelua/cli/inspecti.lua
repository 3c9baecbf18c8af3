-- kubelua inspecti: the status of one or more images (crictl inspecti).
local common = require "kubelua.cli.common"
local inspect = require "kubelua.cli.inspect"

return common.command{
  name = "inspecti",
  args = "[OPTIONS] IMAGE [IMAGE...]",
  summary = "Show the status of images, by ID or reference. Without one, every image.",
  flags = {
    { "output", "o", "string", "output format: json, yaml or table", default = "json", arg = "FORMAT" },
    { "quiet", "q", "bool", "leave out the runtime's verbose info" },
  },
  run = function(ctx)
    local format = ctx:format({ "json", "yaml", "table" })
    if not format then
      return
    end
    local rt = ctx:client()
    if not rt then
      return
    end
    local ids = ctx.args
    if #ids == 0 then
      local r, err = rt:list_images{}
      if not r then
        return ctx:fail(err)
      end
      for _, img in ipairs(r.images) do
        ids[#ids + 1] = img.id
      end
    end
    local verbose = not ctx.flags.quiet
    local results = {}
    for _, id in ipairs(ids) do
      local r, err = rt:image_status{ image = { image = id }, verbose = verbose }
      if not r then
        ctx:fail(err)
      elseif not r.image then
        ctx:fail(string.format("NOT_FOUND: no such image %q present", id))
      elseif format == "table" then
        local lines = { "ID: " .. r.image.id }
        for _, t in ipairs(r.image.repo_tags) do
          lines[#lines + 1] = "Tag: " .. t
        end
        for _, d in ipairs(r.image.repo_digests) do
          lines[#lines + 1] = "Digest: " .. d
        end
        lines[#lines + 1] = "Size: " .. common.human_size(r.image.size, 3)
        if verbose then
          inspect.info_line(lines, r.info)
        end
        ctx:out(table.concat(lines, "\n") .. "\n")
      else
        results[#results + 1] = common.info_values(r.info, { status = common.to_json(r.image, "runtime.v1.Image") })
      end
    end
    if format ~= "table" then
      ctx:emit_results(results, format)
    end
  end,
}
