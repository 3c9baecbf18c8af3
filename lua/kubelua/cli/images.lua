-- kubelua images: list images (crictl images).
local common = require "kubelua.cli.common"

-- crictl's order: by first tag, else first digest, else ID.
local function sort_images(images)
  table.sort(images, function(a, b)
    local ta, tb = a.repo_tags[1], b.repo_tags[1]
    if ta and tb and ta ~= tb then
      return ta < tb
    end
    local da, db = a.repo_digests[1], b.repo_digests[1]
    if not (ta and tb) and da and db and da ~= db then
      return da < db
    end
    return a.id < b.id
  end)
end

-- (repository, digest) from the first repo digest, "<none>" when absent.
local function repo_digest(img)
  local first = img.repo_digests[1]
  if not first then
    return "<none>", "<none>"
  end
  local repo, digest = first:match("^(.-)@(.*)$")
  if not repo then
    return "errorName", "errorRepoDigest"
  end
  return repo, digest
end

-- { repository, tag } pairs, one per tag.
local function repo_tags(img, repo_name)
  if #img.repo_tags == 0 then
    return { { repo_name, "<none>" } }
  end
  local out = {}
  for _, t in ipairs(img.repo_tags) do
    local name, tag = t:match("^(.*):([^:/]*)$")
    if not name then
      out[#out + 1] = { t, "<none>" }
    else
      out[#out + 1] = { name == "<none>" and repo_name or name, tag }
    end
  end
  return out
end

return common.command{
  name = "images",
  args = "[OPTIONS] [REPOSITORY[:TAG]]",
  summary = "List images.",
  flags = {
    { "quiet", "q", "bool", "only image IDs" },
    { "output", "o", "string", "output format: table, json or yaml", default = "table", arg = "FORMAT" },
    { "digests", nil, "bool", "show digests" },
    { "pinned", nil, "bool", "show whether each image is pinned" },
    { "no-trunc", nil, "bool", "do not truncate IDs" },
  },
  run = function(ctx)
    local format = ctx:format({ "table", "json", "yaml" })
    if not format then
      return
    end
    if #ctx.args > 1 then
      return ctx:usage("at most one REPOSITORY[:TAG] argument")
    end
    local rt = ctx:client()
    if not rt then
      return
    end
    local req = ctx.args[1] and { filter = { image = { image = ctx.args[1] } } } or nil
    local r, err = rt:list_images(req)
    if not r then
      return ctx:fail(err)
    end
    local images = r.images
    sort_images(images)
    if ctx:emit_list(images, format, "images", "runtime.v1.ListImagesResponse") then
      return
    end
    local f = ctx.flags
    local header = { "IMAGE", "TAG" }
    if f.digests then
      header[#header + 1] = "DIGEST"
    end
    header[#header + 1] = "IMAGE ID"
    header[#header + 1] = "SIZE"
    if f.pinned then
      header[#header + 1] = "PINNED"
    end
    local rows = { header }
    for _, img in ipairs(images) do
      local repo, digest = repo_digest(img)
      local id = img.id
      if not f.no_trunc then
        id = common.trunc_id(id, "sha256:")
        digest = common.trunc_id(digest, "sha256:")
      end
      local size = common.human_size(img.size, 3)
      for _, pair in ipairs(repo_tags(img, repo)) do
        local row = { pair[1], pair[2] }
        if f.digests then
          row[#row + 1] = digest
        end
        row[#row + 1] = id
        row[#row + 1] = size
        if f.pinned then
          row[#row + 1] = tostring(img.pinned)
        end
        rows[#rows + 1] = row
      end
    end
    ctx:out(common.table(rows))
  end,
}
