#!/usr/bin/env bash
# CRI client benchmark: kubelua (through its Lua API) beside grpc-go and
# python3-grpcio peers, interleaved in one run against one private containerd.
#   bench/cri/run.sh            (ROUNDS=3, results in bench/results/)
# Prints a table of medians over the rounds and kubelua's ratios to grpc-go.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-$ROOT/build/bench}
KUBELUA=${KUBELUA:-$ROOT/build/kubelua}
CTD=${CTD:-/tmp/kubelua-bench-ctd}
ROUNDS=${ROUNDS:-3}
PY=/usr/bin/python3
mkdir -p "$ROOT/bench/results"
RESULTS=${RESULTS:-$ROOT/bench/results/cri-$(date -u +%Y%m%dT%H%M%SZ).jsonl}

[ -x "$OUT/peer_go" ] && [ -d "$OUT/py" ] || bash "$ROOT/bench/cri/build-peers.sh" "$OUT" >&2
SOCK=$(bash "$ROOT/tests/support/containerd.sh" start "$CTD" | tail -n1)
E=unix://$SOCK
trap 'bash "$ROOT/tests/support/containerd.sh" clean "$CTD" >/dev/null 2>&1 || true' EXIT
export CRI_PY_STUBS=$OUT/py

run_case() { # rpc mode inflight calls
  local args=(--endpoint "$E" --rpc "$1" --mode "$2" --inflight "$3" --calls "$4")
  for _ in $(seq "$ROUNDS"); do
    "$KUBELUA" run "$ROOT/bench/cri/peer_kubelua.lua" "${args[@]}" | tee -a "$RESULTS"
    "$OUT/peer_go" "${args[@]}" | tee -a "$RESULTS"
    $PY "$ROOT/bench/cri/peer_py.py" "${args[@]}" | tee -a "$RESULTS"
  done >&2
}

run_case Version seq 1 2000
run_case Version multi 16 20000
run_case Version multi 64 20000
for n in 50 200; do
  $PY "$ROOT/bench/cri/populate.py" --endpoint "$E" --cleanup >/dev/null
  $PY "$ROOT/bench/cri/populate.py" --endpoint "$E" --containers "$n" >/dev/null
  run_case ListContainers seq 1 500
  run_case ListContainers multi 16 1000
done
$PY "$ROOT/bench/cri/populate.py" --endpoint "$E" --cleanup >/dev/null
$PY "$ROOT/bench/cri/summarize.py" "$RESULTS"
