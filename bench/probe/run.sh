#!/bin/bash
# bench/probe: N HTTP probe targets on a private loopback nginx at a 1 s
# period, new connection per probe, side by side in one run:
#   kubelua  kubelua.probe.http (libcurl multi on the libuv loop)
#   go       net/http with keep-alives off (kubelet's HTTP prober set-up)
#   curl     one curl process per probe (N=CURL_N only: a curl process costs
#            milliseconds of CPU, N=600 would need more cores than this machine has)
#   kubelua0 kubelua with the prober's tick off (TICK=0): every probe wakes the loop
#   prober   peer_prober.lua: N pods run by a kubelua.prober manager (the whole
#            policy: workers, thresholds, results, metrics), not only the engine
#   floor    peer_floor.c: raw sockets on epoll, no HTTP library (the kernel's share)
#   curlmulti  peer_curlmulti.c: a C loop on libcurl's multi interface
# Usage: bench/probe/run.sh [BUILD_DIR]   (env: SECS=12 WARMUP=3 NS="600 3000 10000" CURL_N=20
#        NGINX_WORKERS=2 PEERS="kubelua kubelua0 prober go floor curlmulti curl" NGINX_CPUS= CLIENT_CPUS=
#        KUBELUA_ALT= NADDR=32 TICK=<prober.TICK> RESULTS=bench/results CHECK=)
# CHECK=1: exit 1 unless every peer completed probes and none failed (the
# ctest smoke run, bench.probe.smoke).
# NADDR: the targets are spread over 127.0.0.1..127.0.0.NADDR (pods have their
# own IPs; one address would make every connection compete for the same
# 28k ephemeral ports). TICK (seconds): the kubelua, floor and curlmulti
# peers start a probe on the first multiple of the tick at or after its due
# time, the tick shortened for N as kubelua.prober does (prober.tick_for).
# KUBELUA_ALT=path: a second kubelua binary (e.g. the build before a change),
# run right after the first one on the same targets, reported as peer "alt".
# NGINX_CPUS / CLIENT_CPUS: CPU lists for taskset (e.g. NGINX_CPUS=1
# CLIENT_CPUS=0 keeps the server off the prober's core); empty: no pinning.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
SECS=${SECS:-12}
WARMUP=${WARMUP:-3}
NS=${NS:-"600 3000 10000"}
CURL_N=${CURL_N:-20}
PEERS=${PEERS:-"kubelua kubelua0 prober go floor curlmulti curl"}
NADDR=${NADDR:-32}
TICK=${TICK:-$("$build/kubelua" -e 'return require("kubelua.prober").TICK')}
pin() { # pin CPUS command...: run on those CPUs when CPUS is set
    local cpus=$1
    shift
    if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}
has_peer() { [[ " $PEERS " == *" $1 "* ]]; }
work=$(mktemp -d /tmp/kubelua-bench-probe.XXXXXX)
trap 'bash "$root/tests/support/probe_nginx.sh" stop "$work/nginx"; rm -rf "$work"' EXIT

# the Go peer, built offline from Debian's golang-go
if has_peer go; then
    GO111MODULE=off GOCACHE="$work/gocache" GOPATH="$work/gopath" \
        go build -o "$work/goprober" "$here/goprober/main.go"
fi
# the C reference peers
has_peer floor && cc -O2 -std=c11 -Wall -Wextra -D_GNU_SOURCE -o "$work/peer_floor" "$here/peer_floor.c"
has_peer curlmulti && cc -O2 -std=c11 -Wall -Wextra -D_GNU_SOURCE -o "$work/peer_curlmulti" \
    "$here/peer_curlmulti.c" -lcurl

port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pin "${NGINX_CPUS:-}" bash "$root/tests/support/probe_nginx.sh" start "$work/nginx" "$port" "${NGINX_WORKERS:-2}" "$NADDR"
url="http://127.0.0.1:$port/healthz"
ngx_pid=$(cat "$work/nginx/nginx.pid")
ngx_cpu() { # master + workers, in clock ticks
    local t=0
    for p in $ngx_pid $(pgrep -P "$ngx_pid"); do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
RESULTS=${RESULTS:-$root/bench/results}
out="$RESULTS/probe-$(date +%Y%m%d-%H%M%S).txt"
mkdir -p "$RESULTS"
run() { # peer n command...
    local peer=$1 n=$2
    shift 2
    local c0 line c1
    c0=$(ngx_cpu)
    line=$(pin "${CLIENT_CPUS:-}" "$@" | grep '^RESULT')
    line=${line/peer=kubelua /peer=$peer }
    c1=$(ngx_cpu)
    echo "$line nginx_cpu_s=$(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.1f", (b-a)/100}')" | tee -a "$out"
}
echo "# $(date -u +%FT%TZ) NS=\"$NS\" SECS=$SECS WARMUP=$WARMUP NADDR=$NADDR TICK=$TICK NGINX_WORKERS=${NGINX_WORKERS:-2} NGINX_CPUS=${NGINX_CPUS:-} CLIENT_CPUS=${CLIENT_CPUS:-} load: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out"
for n in $NS; do
    args=("$url" "$n" "$SECS" "$WARMUP" "$NADDR")
    # the tick the prober would use for n probes a second (shorter at high rates)
    tick=$("$build/kubelua" -e "return require('kubelua.prober').tick_for($n, $TICK)")
    has_peer kubelua && run kubelua "$n" "$build/kubelua" run "$here/peer_kubelua.lua" "${args[@]}" "$TICK"
    has_peer kubelua0 && run kubelua0 "$n" "$build/kubelua" run "$here/peer_kubelua.lua" "${args[@]}" 0
    has_peer prober && run prober "$n" "$build/kubelua" run "$here/peer_prober.lua" "${args[@]}"
    if [ -n "${KUBELUA_ALT:-}" ]; then
        run alt "$n" "$KUBELUA_ALT" run "$here/peer_kubelua.lua" "${args[@]}" "$TICK"
    fi
    has_peer go && run go "$n" "$work/goprober" "${args[@]}"
    has_peer floor && run floor "$n" "$work/peer_floor" "${args[@]}" "$tick"
    has_peer curlmulti && run curlmulti "$n" "$work/peer_curlmulti" "${args[@]}" "$tick"
done
has_peer curl && run curl "$CURL_N" /usr/bin/python3 "$here/peer_curl.py" "$url" "$CURL_N" "$SECS" "$WARMUP" "$NADDR"

echo
echo "| peer | N | probes/s | ok | fail | lag p50 ms | lag p99 ms | CPU µs/probe | CPU cores | RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|---|"
grep '^RESULT' "$out" | sed -E 's/^RESULT //' | while read -r line; do
    declare -A f=()
    for kv in $line; do f[${kv%%=*}]=${kv#*=}; done
    echo "| ${f[peer]} | ${f[n]} | ${f[probes_per_s]} | ${f[ok]} | ${f[fail]} | ${f[lag_p50_ms]} | ${f[lag_p99_ms]} | ${f[cpu_us_per_probe]} | ${f[cpu_cores]} | ${f[rss_mb]} |"
done
echo "raw: $out"
if [ -n "${CHECK:-}" ]; then
    bad=$(grep '^RESULT' "$out" | grep -Ev ' ok=[1-9][0-9]* fail=0 ' || true)
    if [ -n "$bad" ]; then
        echo "CHECK failed: a peer completed no probe or had failures:" >&2
        echo "$bad" >&2
        exit 1
    fi
    echo "CHECK passed: $(grep -c '^RESULT' "$out") peers, every probe ok"
fi
