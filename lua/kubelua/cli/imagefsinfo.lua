-- kubelua imagefsinfo: image (and container) filesystem usage (crictl imagefsinfo).
local common = require "kubelua.cli.common"

local function fs_lines(lines, label, list)
  lines[#lines + 1] = label .. " Filesystem "
  for i, fs in ipairs(list) do
    local n = i - 1
    lines[#lines + 1] = string.format("TimeStamp[%d]: %s", n, require("kubelua.json").encode(fs.timestamp))
    lines[#lines + 1] = string.format("Disk[%d]: %s", n, common.human_size(fs.used_bytes and fs.used_bytes.value or 0))
    lines[#lines + 1] = string.format("Inodes[%d]: %s", n,
      require("kubelua.json").encode(fs.inodes_used and fs.inodes_used.value or 0))
    lines[#lines + 1] = string.format("Mountpoint[%d]: %s", n, fs.fs_id and fs.fs_id.mountpoint or "")
  end
end

return common.command{
  name = "imagefsinfo",
  summary = "Show the filesystems that hold images and containers, and their usage.",
  flags = {
    { "output", "o", "string", "output format: json, yaml or table", default = "json", arg = "FORMAT" },
  },
  run = function(ctx)
    local format, rt = ctx:format_no_args({ "json", "yaml", "table" }, true)
    if not rt then
      return
    end
    local r, err = rt:image_fs_info{}
    if not r then
      return ctx:fail(err)
    end
    if format == "table" then
      local lines = {}
      fs_lines(lines, "Container", r.container_filesystems)
      fs_lines(lines, "Image", r.image_filesystems)
      return ctx:out(table.concat(lines, "\n") .. "\n")
    end
    ctx:emit({ status = common.to_json(r, "runtime.v1.ImageFsInfoResponse") }, format)
  end,
}
