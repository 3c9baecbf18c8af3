#!/usr/bin/env bash
# bench/soak: the agent for a set time against a private containerd with
# churn (pods added, removed and edited; crash loops; flapping readiness;
# liveness restarts; GC every 10 s). RSS, fds, Lua memory (when /metrics
# has it) and CPU go to a CSV every few seconds; exits 1 if any of them
# trends upward after warm-up.
#   bench/soak/run.sh [--minutes N] [--interval S] [--churn S] [--keep K] [--warmup F]
# env: KUBELUA (binary, default build/kubelua), CTD (containerd folder, default a
# fresh one in the run folder), RESULTS (folder for the CSV and soak.jsonl,
# default bench/results)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${KUBELUA:-$ROOT/build/kubelua}
WORK=$(mktemp -d /tmp/kubelua-bench-soak.XXXXXX)
CTD=${CTD:-$WORK/ctd} # a private containerd per run: runs never share one
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${RESULTS:-$ROOT/bench/results} # where the CSV and soak.jsonl go
CSV=$RESULTS/soak-$STAMP.csv
cleanup() {
    if [ -s "$WORK/agent.pid" ]; then
        kill -TERM "$(cat "$WORK/agent.pid")" 2>/dev/null || true
    fi
    bash "$ROOT/tests/support/containerd.sh" clean "$CTD" >/dev/null 2>&1 || true
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ -x "$BIN" ] || { echo "run.sh: $BIN not built" >&2; exit 1; }
mkdir -p "$RESULTS"
SOCK=$(bash "$ROOT/tests/support/containerd.sh" start "$CTD" | tail -n1)
rc=0
/usr/bin/python3 "$ROOT/bench/soak/soak.py" --bin "$BIN" --sock "$SOCK" --ctd-dir "$CTD" \
    --ctd-sh "$ROOT/tests/support/containerd.sh" --work "$WORK" --csv "$CSV" \
    --results "$RESULTS/soak.jsonl" "$@" || rc=$?
if [ "$rc" != 0 ]; then
    echo "agent log tail:" >&2
    grep -vE '^I' "$WORK/agent.log" | tail -n 20 >&2 || true
fi
exit "$rc"
