#!/usr/bin/env bash
# GC planning benchmark (no containerd needed: the test kit's fake runtime).
#   bench/gc/run.sh [PODS] [DEAD] [IMAGES] [ROUNDS]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${KUBELUA:-$ROOT/build/kubelua}
KUBELUA_LUA_PATH=$ROOT/lua "$BIN" run "$ROOT/bench/gc/plan.lua" "${1:-2000}" "${2:-10000}" "${3:-1000}" "${4:-15}"
