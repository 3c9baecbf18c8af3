#!/usr/bin/env bash
# bench/agent: 100 static pods (200 containers) from manifests to all Running
# and Ready, then a quiet steady-state window; the agent's CPU and memory
# beside containerd's (and its shims') in the same run.
#   bench/agent/run.sh [PODS] [STEADY_SECONDS]
# env: KUBELUA (binary, default build/kubelua), PERIOD (readiness probe period,
# default 5), CTD (containerd folder, default a fresh one in the run folder),
# LABEL (free text stored with the result), KUBELUA_JIT=off (interpreter only),
# KUBELUA_PROFILE_OUT=FILE (the agent under jit.p, see profile.lua).
# The agent's log of the last run is left in /tmp/kubelua-bench-agent-last.log.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${KUBELUA:-$ROOT/build/kubelua}
WORK=$(mktemp -d /tmp/kubelua-bench-agent.XXXXXX)
CTD=${CTD:-$WORK/ctd} # a private containerd per run: runs never share one
cleanup() {
    if [ -s "$WORK/agent.pid" ]; then
        kill -TERM "$(cat "$WORK/agent.pid")" 2>/dev/null || true
    fi
    bash "$ROOT/tests/support/containerd.sh" clean "$CTD" >/dev/null 2>&1 || true
    cp "$WORK/agent.log" "${TMPDIR:-/tmp}/kubelua-bench-agent-last.log" 2>/dev/null || true
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ -x "$BIN" ] || { echo "run.sh: $BIN not built" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
SOCK=$(bash "$ROOT/tests/support/containerd.sh" start "$CTD" | tail -n1)
/usr/bin/python3 "$ROOT/bench/agent/measure.py" --bin "$BIN" --sock "$SOCK" \
    --ctd-pid "$(cat "$CTD/containerd.pid")" --work "$WORK" \
    --pods "${1:-100}" --steady "${2:-60}" --period "${PERIOD:-5}" --label "${LABEL:-}" \
    --results "$ROOT/bench/results/agent-$(date -u +%Y%m%d).jsonl" ||
    { echo "agent log tail:" >&2; tail -n 30 "$WORK/agent.log" >&2; exit 1; }
