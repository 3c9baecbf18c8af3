#!/usr/bin/env bash
# CLI benchmark: whole processes, start to exit, side by side in one run.
#
#   bench/cli/run.sh                 (KUBELUA=build/kubelua OUT=build/bench)
#
#   kubelua ps / kubelua images      vs  the same call in grpc-go (cli_peer_go)
#                                        and python3-grpcio (peer_py.py)
#   kubelua -e 'return 1'            vs  luajit -e ''
#
# KUBELUA_ALT=path adds a second kubelua binary to the same run ("alt").
# Against a private containerd (tests/support/containerd.sh) holding
# CONTAINERS running containers (default 20, made by bench/cri/populate.py).
# Timing: hyperfine -N when installed (apt-get install hyperfine), otherwise a
# loop around `date +%s%N`. ROUNDS rounds (default 5) of RUNS runs (default 40)
# per command, commands interleaved round by round; the summary gives the
# median and mean over every run, and the ratios the targets are about:
# kubelua >= 3x faster than Python, no slower than Go, start within 2x of
# bare LuaJIT.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-$ROOT/build/bench}
KUBELUA=${KUBELUA:-$ROOT/build/kubelua}
CTD=${CTD:-/tmp/kubelua-bench-cli-ctd}
CONTAINERS=${CONTAINERS:-20}
ROUNDS=${ROUNDS:-5}
RUNS=${RUNS:-40}
PY=/usr/bin/python3
LUAJIT=${LUAJIT:-$(command -v luajit || true)}

[ -x "$OUT/cli_peer_go" ] && [ -f "$OUT/py/api_pb2.py" ] || bash "$ROOT/bench/cli/build.sh" "$OUT" >&2
SOCK=$(bash "$ROOT/tests/support/containerd.sh" start "$CTD" | tail -n1)
export CONTAINER_RUNTIME_ENDPOINT=unix://$SOCK CRI_PY_STUBS=$OUT/py
export KUBELUA_LUA_PATH=${KUBELUA_LUA_PATH:-$ROOT/lua} # both kubelua binaries run the tree's modules
TMP=$(mktemp -d /tmp/kubelua-bench-cli.XXXXXX)
trap '$PY "$ROOT/bench/cri/populate.py" --endpoint "$CONTAINER_RUNTIME_ENDPOINT" --cleanup >/dev/null 2>&1 || true
      bash "$ROOT/tests/support/containerd.sh" clean "$CTD" >/dev/null 2>&1 || true; rm -rf "$TMP"' EXIT
$PY "$ROOT/bench/cri/populate.py" --endpoint "$CONTAINER_RUNTIME_ENDPOINT" --cleanup >/dev/null
$PY "$ROOT/bench/cri/populate.py" --endpoint "$CONTAINER_RUNTIME_ENDPOINT" --containers "$CONTAINERS" >/dev/null

# name|command (run without a shell by hyperfine -N)
CASES=(
  "kubelua ps|$KUBELUA ps"
  "go ps|$OUT/cli_peer_go ps"
  "python ps|$PY $ROOT/bench/cli/peer_py.py ps"
  "kubelua images|$KUBELUA images"
  "go images|$OUT/cli_peer_go images"
  "python images|$PY $ROOT/bench/cli/peer_py.py images"
  "kubelua -e 'return 1'|$KUBELUA -e 'return 1'"
)
[ -n "$LUAJIT" ] && CASES+=("luajit -e ''|$LUAJIT -e ''")
# KUBELUA_ALT: a second kubelua binary (e.g. a build with a proposed change),
# timed in the same run as "alt ..." (same Lua modules, same containerd).
if [ -n "${KUBELUA_ALT:-}" ]; then
  CASES+=("alt ps|$KUBELUA_ALT ps" "alt images|$KUBELUA_ALT images" "alt -e 'return 1'|$KUBELUA_ALT -e 'return 1'")
fi

# Every command must work before it is timed.
for c in "${CASES[@]}"; do
  cmd=${c#*|}
  eval "$cmd" >/dev/null || { echo "bench/cli: failed: $cmd" >&2; exit 1; }
done
echo "bench/cli: $("$KUBELUA" ps -q | wc -l) running containers; $("$KUBELUA" images -q | wc -l) images" >&2

for round in $(seq "$ROUNDS"); do
  i=0
  for c in "${CASES[@]}"; do
    i=$((i + 1))
    name=${c%%|*}
    cmd=${c#*|}
    out="$TMP/r$round-c$i.json"
    if command -v hyperfine >/dev/null 2>&1; then
      hyperfine -N -w 3 -r "$RUNS" --style none -n "$name" --export-json "$out" "$cmd" >/dev/null 2>&1
    else
      # fallback: one process per iteration, wall time from date +%s%N
      : >"$TMP/times"
      for _ in $(seq 5); do eval "$cmd" >/dev/null; done
      for _ in $(seq "$RUNS"); do
        t0=$(date +%s%N); eval "$cmd" >/dev/null; t1=$(date +%s%N)
        echo $(( t1 - t0 )) >>"$TMP/times"
      done
      $PY - "$name" "$TMP/times" "$out" <<'PYEOF'
import json, sys
name, src, dst = sys.argv[1:4]
times = [int(l) / 1e9 for l in open(src) if l.strip()]
json.dump({"results": [{"command": name, "times": times}]}, open(dst, "w"))
PYEOF
    fi
  done
done

$PY - "$TMP" "$(command -v hyperfine >/dev/null 2>&1 && echo hyperfine || echo date-loop)" <<'PYEOF'
import glob, json, os, statistics, sys
tmp, tool = sys.argv[1], sys.argv[2]
times = {}
order = []
for f in sorted(glob.glob(os.path.join(tmp, "r*-c*.json")), key=lambda p: (int(p.split("-c")[-1][:-5]), p)):
    for r in json.load(open(f))["results"]:
        if r["command"] not in times:
            order.append(r["command"])
        times.setdefault(r["command"], []).extend(r["times"])
med = {k: statistics.median(v) * 1000 for k, v in times.items()}
print("bench/cli (%s): wall time per process, start to exit, ms" % tool)
print("%-24s %8s %8s %8s %6s" % ("command", "median", "mean", "min", "runs"))
for k in order:
    v = times[k]
    print("%-24s %8.2f %8.2f %8.2f %6d" % (k, med[k], statistics.mean(v) * 1000, min(v) * 1000, len(v)))
def ratio(a, b, what):
    if a in med and b in med:
        print("%-44s %6.2f" % (what, med[a] / med[b]))
print()
ratio("python ps", "kubelua ps", "python ps / kubelua ps (target >= 3)")
ratio("python images", "kubelua images", "python images / kubelua images (target >= 3)")
ratio("kubelua ps", "go ps", "kubelua ps / go ps (target <= 1)")
ratio("kubelua images", "go images", "kubelua images / go images (target <= 1)")
ratio("kubelua -e 'return 1'", "luajit -e ''", "kubelua -e / luajit -e (target <= 2)")
ratio("python ps", "alt ps", "python ps / alt ps")
ratio("alt ps", "go ps", "alt ps / go ps")
ratio("alt images", "go images", "alt images / go images")
ratio("alt -e 'return 1'", "luajit -e ''", "alt -e / luajit -e")
PYEOF
