#!/usr/bin/env bash
# tests/support/mkimage.sh - build a tiny OCI image archive from busybox-static.
#
# Usage:
#   tests/support/mkimage.sh OUT.tar NAME [EXTRA ...]
#
#   OUT.tar  the archive to write (an OCI image layout, tarred), ready for
#            `ctr -a SOCK -n k8s.io images import OUT.tar`.
#   NAME     the image reference it is imported as, e.g.
#            kubelua.local/busybox:latest  (no registry is ever contacted).
#   EXTRA    extra content for the image's single layer, so that test images
#            can differ from one another:
#              PATH        a file or folder, copied to /<basename of PATH>
#              PATH:DEST   a file or folder, copied to DEST (absolute path
#                          inside the image, parent folders are created)
#
# Environment knobs (all optional):
#   MKIMAGE_CMD   the image's default command as a JSON array;
#                 default ["/bin/sleep","3600"], which lets the image double
#                 as a pod sandbox ("pause") image.
#   MKIMAGE_GZIP  1 (default) for a gzip-compressed layer, 0 for a plain tar.
#   BUSYBOX       path of the static busybox binary (default /bin/busybox).
#
# The image holds /bin/busybox, symlinks for the applets tests use, a handful
# of empty system folders (/proc, /sys, /dev, /tmp, ...) and a minimal
# /etc/passwd + /etc/group.  Every timestamp and owner is pinned and every
# listing sorted, so the same inputs always give the same digests; the
# manifest digest is printed on stdout when done.
set -euo pipefail
umask 022 # fixed modes for created folders, whatever the caller uses

die() { echo "mkimage: $*" >&2; exit 1; }

[ "$#" -ge 2 ] || die "usage: $0 OUT.tar NAME [EXTRA[:DEST] ...]"
out=$1
name=$2
shift 2

# The name goes into JSON unescaped, so only allow reference characters.
[[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._/:@-]*$ ]] || die "bad image name: $name"

cmd_json=${MKIMAGE_CMD:-'["/bin/sleep","3600"]'}
[[ "$cmd_json" =~ ^\[.*\]$ ]] || die "MKIMAGE_CMD must be a JSON array, got: $cmd_json"
use_gzip=${MKIMAGE_GZIP:-1}
busybox=${BUSYBOX:-/bin/busybox}

[ -x "$busybox" ] || die "$busybox not found (install busybox-static)"
# A dynamically linked busybox would not run in an image without libc.
if command -v readelf >/dev/null 2>&1 && LC_ALL=C readelf -l "$busybox" 2>/dev/null | grep -q 'INTERP'; then
    die "$busybox is dynamically linked; the static one (busybox-static) is needed"
fi

# OCI platform names follow Go's GOARCH spelling; map Debian's where it differs.
case "$(dpkg --print-architecture 2>/dev/null || uname -m)" in
    amd64 | x86_64) arch=amd64 ;;
    arm64 | aarch64) arch=arm64 ;;
    armhf) arch=arm ;;
    i386 | i686) arch=386 ;;
    ppc64el) arch=ppc64le ;;
    s390x) arch=s390x ;;
    riscv64) arch=riscv64 ;;
    *) arch=amd64 ;;
esac

# By OCI convention ref.name carries just the tag; the full name goes in
# containerd's own annotation, which is what `ctr images import` uses.
last=${name##*/}
if [[ "$last" == *:* ]]; then tag=${last##*:}; else tag=latest; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/mkimage.XXXXXX")
tmp_out=
cleanup() { rm -rf "$work"; if [ -n "$tmp_out" ]; then rm -f "$tmp_out"; fi; }
trap cleanup EXIT

# Every tar we write: sorted, owned by root, timestamps pinned to the epoch,
# no atime/ctime (gnu format stores only mtime).
det_tar() { # det_tar ARCHIVE DIR  -- archive DIR's contents, no "./" prefix
    local archive=$1 dir=$2
    (cd "$dir" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort) >"$work/list"
    LC_ALL=C tar --create --file="$archive" --directory="$dir" \
        --format=gnu --numeric-owner --owner=0 --group=0 --mtime=@0 \
        --no-recursion --verbatim-files-from --files-from="$work/list"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# ---- 1. root filesystem of the layer ---------------------------------------
root=$work/rootfs
mkdir -p "$root"/{bin,dev,etc,proc,sys,tmp,root,var,run,home}
chmod 0755 "$root" "$root"/{bin,dev,etc,proc,sys,var,run,home}
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"

# Applets the tests rely on; each must exist in this busybox build.
required=(sh sleep httpd echo cat ls true false wget nc kill date env head seq yes)
# Convenience applets, linked only when this busybox has them.
optional=(ps id mkdir rm touch grep printf test pwd uname tail wc hostname
    sed tr cut sort uniq mkfifo stat dd tee xargs find timeout)
have=" $("$root/bin/busybox" --list | tr '\n' ' ') "
for app in "${required[@]}"; do
    [[ "$have" == *" $app "* ]] || die "busybox lacks the '$app' applet"
    ln -s busybox "$root/bin/$app"
done
for app in "${optional[@]}"; do
    if [[ "$have" == *" $app "* ]] && [ ! -e "$root/bin/$app" ]; then
        ln -s busybox "$root/bin/$app"
    fi
done

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"

# Extra content given on the command line.
for extra in "$@"; do
    src=$extra
    dest=
    if [[ "$extra" == *:* ]]; then
        src=${extra%%:*}
        dest=${extra#*:}
    fi
    [ -e "$src" ] || die "extra content not found: $src"
    if [ -z "$dest" ]; then
        dest=/$(basename "$src")
    fi
    [[ "$dest" == /* ]] || die "destination inside the image must be absolute: $dest"
    mkdir -p "$root$(dirname "$dest")"
    # -R keeps symlinks as symlinks, -p keeps modes (times are pinned by tar anyway).
    rm -rf "${root:?}$dest"
    cp -R -P -p "$src" "$root$dest"
done

# ---- 2. the layer blob ----------------------------------------------------
layout=$work/layout
blobs=$layout/blobs/sha256
mkdir -p "$blobs"

det_tar "$work/layer.tar" "$root"
diff_id=$(sha "$work/layer.tar") # digest of the uncompressed layer
if [ "$use_gzip" = 1 ]; then
    # -n: leave out the file name and time stamp, so the output is repeatable.
    gzip -n -6 -c "$work/layer.tar" >"$work/layer.blob"
    layer_type=application/vnd.oci.image.layer.v1.tar+gzip
else
    mv "$work/layer.tar" "$work/layer.blob"
    layer_type=application/vnd.oci.image.layer.v1.tar
fi
layer_digest=$(sha "$work/layer.blob")
layer_size=$(size "$work/layer.blob")
mv "$work/layer.blob" "$blobs/$layer_digest"

# ---- 3. image config --------------------------------------------------------
printf '%s' \
    '{"architecture":"'"$arch"'","os":"linux",' \
    '"created":"1970-01-01T00:00:00Z",' \
    '"config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],' \
    '"Cmd":'"$cmd_json"',"WorkingDir":"/"},' \
    '"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]},' \
    '"history":[{"created":"1970-01-01T00:00:00Z","created_by":"kubelua tests/support/mkimage.sh"}]}' \
    >"$work/config.json"
config_digest=$(sha "$work/config.json")
config_size=$(size "$work/config.json")
mv "$work/config.json" "$blobs/$config_digest"

# ---- 4. manifest --------------------------------------------------------------
printf '%s' \
    '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",' \
    '"config":{"mediaType":"application/vnd.oci.image.config.v1+json",' \
    '"digest":"sha256:'"$config_digest"'","size":'"$config_size"'},' \
    '"layers":[{"mediaType":"'"$layer_type"'",' \
    '"digest":"sha256:'"$layer_digest"'","size":'"$layer_size"'}]}' \
    >"$work/manifest.json"
manifest_digest=$(sha "$work/manifest.json")
manifest_size=$(size "$work/manifest.json")
mv "$work/manifest.json" "$blobs/$manifest_digest"

# ---- 5. index + layout marker -------------------------------------------------
printf '%s' \
    '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",' \
    '"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",' \
    '"digest":"sha256:'"$manifest_digest"'","size":'"$manifest_size"',' \
    '"platform":{"architecture":"'"$arch"'","os":"linux"},' \
    '"annotations":{"io.containerd.image.name":"'"$name"'",' \
    '"org.opencontainers.image.ref.name":"'"$tag"'"}}]}' \
    >"$layout/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
chmod -R u=rwX,go=rX "$layout"

# ---- 6. the archive -------------------------------------------------------------
# Written beside OUT first and renamed, so a reader never sees half a file.
outdir=$(dirname "$out")
mkdir -p "$outdir"
tmp_out=$(mktemp "$outdir/.mkimage.XXXXXX")
det_tar "$tmp_out" "$layout"
chmod 0644 "$tmp_out"
mv -f "$tmp_out" "$out"
tmp_out=

echo "sha256:$manifest_digest"
