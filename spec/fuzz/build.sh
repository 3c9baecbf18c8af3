#!/bin/sh
# Builds the libFuzzer targets (spec/fuzz/*.c) into OUTDIR with clang,
# compiling the library sources they exercise directly, so no CMake build
# tree is needed:
#   spec/fuzz/build.sh OUTDIR
# Each target is linked with -fsanitize=fuzzer,address,undefined.
# Flag lists ($BASE, $DEPS, ...) are split into words on purpose.
# shellcheck disable=SC2086,SC2046
set -eu
OUT=${1:?usage: spec/fuzz/build.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CC=${KL_FUZZ_CC:-clang} # not $CC: libFuzzer needs clang whatever the build uses
mkdir -p "$OUT/gen" "$OUT/obj"
OUT=$(cd "$OUT" && pwd)

# Messages: the same steps as CMakeLists.txt (protoc-c, then the registry).
PROTOS="$ROOT/proto/api.proto $ROOT/proto/health.proto"
HDRS=""
PROTOS_ARG=""
for p in $PROTOS; do
    n=$(basename "$p" .proto)
    protoc-c --c_out="$OUT/gen" -I"$ROOT/proto" "$p"
    HDRS="$HDRS${HDRS:+,}$OUT/gen/$n.pb-c.h"
    PROTOS_ARG="$PROTOS_ARG${PROTOS_ARG:+,}$p"
done
cmake "-DHEADERS=$HDRS" "-DPROTOS=$PROTOS_ARG" "-DOUT=$OUT/gen/registry.c" \
    -P "$ROOT/cmake/gen_registry.cmake"

DEPS="luajit libprotobuf-c yaml-0.1 libuv libnghttp2"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
BASE="-std=c11 -D_GNU_SOURCE -g -O1 $SAN -I$ROOT/src -I$ROOT/include -I$OUT/gen $(pkg-config --cflags $DEPS)"
WARN="-Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter"

# Library code under test: instrumented for coverage, not linked to libFuzzer's main.
OBJS=""
compile() { # source, object, extra flags
    $CC $BASE -fsanitize=fuzzer-no-link $3 -c "$1" -o "$2"
    OBJS="$OBJS $2"
}
compile "$ROOT/src/pb/pb.c" "$OUT/obj/pb.o" "$WARN"
compile "$ROOT/src/yaml/yaml.c" "$OUT/obj/yaml.o" "$WARN"
compile "$ROOT/src/grpc/grpc.c" "$OUT/obj/grpc.o" "$WARN"
for p in $PROTOS; do
    n=$(basename "$p" .proto)
    compile "$OUT/gen/$n.pb-c.c" "$OUT/obj/$n.pb-c.o" ""
done
compile "$OUT/gen/registry.c" "$OUT/obj/registry.o" ""

for t in "$ROOT"/spec/fuzz/*.c; do
    n=$(basename "$t" .c)
    $CC $BASE $WARN -fsanitize=fuzzer -DKL_FUZZ_LUA_DIR="\"$ROOT/lua\"" "$t" $OBJS \
        $(pkg-config --libs $DEPS) -lm -o "$OUT/$n"
done
built=""
for t in "$ROOT"/spec/fuzz/*.c; do
    built="$built $(basename "$t" .c)"
done
echo "built:$built in $OUT"
