#!/bin/bash
# bench/probe: N HTTP probe targets on a private loopback nginx at a 1 s
# period, new connection per probe, side by side in one run:
#   kubelua  kubelua.probe.http (libcurl multi on the libuv loop)
#   go       net/http with keep-alives off (kubelet's HTTP prober set-up)
#   curl     one curl process per probe (N=CURL_N only: a curl process costs
#            milliseconds of CPU, N=600 would need more cores than this machine has)
# Usage: bench/probe/run.sh [BUILD_DIR]   (env: SECS=12 WARMUP=3 NS="600 3000 10000" CURL_N=20)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
SECS=${SECS:-12}
WARMUP=${WARMUP:-3}
NS=${NS:-"600 3000 10000"}
CURL_N=${CURL_N:-20}
work=$(mktemp -d /tmp/kubelua-bench-probe.XXXXXX)
trap 'bash "$root/tests/support/probe_nginx.sh" stop "$work/nginx"; rm -rf "$work"' EXIT

# the Go peer, built offline from Debian's golang-go
GO111MODULE=off GOCACHE="$work/gocache" GOPATH="$work/gopath" \
    go build -o "$work/goprober" "$here/goprober/main.go"

port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bash "$root/tests/support/probe_nginx.sh" start "$work/nginx" "$port" "${NGINX_WORKERS:-2}"
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
out="$root/bench/results/probe-$(date +%Y%m%d-%H%M%S).txt"
mkdir -p "$root/bench/results"
run() { # peer n command...
    local peer=$1 n=$2
    shift 2
    local c0 line c1
    c0=$(ngx_cpu)
    line=$("$@" | grep '^RESULT')
    c1=$(ngx_cpu)
    echo "$line nginx_cpu_s=$(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.1f", (b-a)/100}')" | tee -a "$out"
}
for n in $NS; do
    run kubelua "$n" "$build/kubelua" run "$here/peer_kubelua.lua" "$url" "$n" "$SECS" "$WARMUP"
    run go "$n" "$work/goprober" "$url" "$n" "$SECS" "$WARMUP"
done
run curl "$CURL_N" /usr/bin/python3 "$here/peer_curl.py" "$url" "$CURL_N" "$SECS" "$WARMUP"

echo
echo "| peer | N | probes/s | ok | fail | lag p50 ms | lag p99 ms | CPU µs/probe | CPU cores | RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|---|"
sed -E 's/^RESULT //' "$out" | while read -r line; do
    declare -A f=()
    for kv in $line; do f[${kv%%=*}]=${kv#*=}; done
    echo "| ${f[peer]} | ${f[n]} | ${f[probes_per_s]} | ${f[ok]} | ${f[fail]} | ${f[lag_p50_ms]} | ${f[lag_p99_ms]} | ${f[cpu_us_per_probe]} | ${f[cpu_cores]} | ${f[rss_mb]} |"
done
echo "raw: $out"
