#!/usr/bin/env bash
# PLEG relist and event-latency benchmark against a private containerd.
#   bench/pleg/run.sh [N_CONTAINERS] [RELISTS]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CTD=${CTD:-/tmp/kubelua-bench-pleg}
SOCK=$(bash "$ROOT/tests/support/containerd.sh" start "$CTD" | tail -n1)
trap 'bash "$ROOT/tests/support/containerd.sh" clean "$CTD" >/dev/null 2>&1 || true' EXIT
"$ROOT/build/kubelua" run "$ROOT/bench/pleg/relist.lua" "unix://$SOCK" "$(cat "$CTD/containerd.pid")" "${1:-200}" "${2:-300}"
