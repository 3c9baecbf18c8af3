#!/bin/sh
# Build the CLI benchmark peers into OUTDIR (default: build/bench).
#
#   bench/cli/build.sh [OUTDIR]
#
# Runs bench/cri/build-peers.sh first when its output is missing (CRI stubs for
# Go and Python), then builds OUTDIR/cli_peer_go from bench/cli/peer_go/main.go
# with the APIv2 stubs and codec of the CRI benchmark. Offline, from Debian
# packages only (see build-peers.sh).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-"$root/build/bench"}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ ! -f "$out/go/apiv2/src/criapi/api.pb.go" ] || [ ! -f "$out/py/api_pb2.py" ]; then
    sh "$root/bench/cri/build-peers.sh" "$out"
fi
v2="$out/go/apiv2"
mkdir -p "$v2/src/cli_peer_go"
cp "$here/peer_go/main.go" "$root/bench/cri/peer_go/codec_apiv2.go" "$v2/src/cli_peer_go/"
(cd "$v2/src/cli_peer_go" && GO111MODULE=off GOFLAGS= GOPATH="$v2:/usr/share/gocode" go build -o "$out/cli_peer_go" .)
echo "bench/cli/build.sh: built $out/cli_peer_go" >&2
