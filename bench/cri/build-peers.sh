#!/bin/sh
# Build the CRI client benchmark peers into OUTDIR (default: build/bench).
#
#   bench/cri/build-peers.sh [OUTDIR]
#
# Produces, from proto/api.proto (runtime.v1), without touching the source tree:
#   OUTDIR/peer_go        grpc-go peer, messages generated for
#                         google.golang.org/protobuf (APIv2) + protoc-gen-go-grpc:
#                         the bindings kubelet >= 1.33 uses. JSON "peer":"go".
#   OUTDIR/peer_go_apiv1  the same program on github.com/golang/protobuf 1.3
#                         messages (protoc-gen-go plugins=grpc). "peer":"go-apiv1".
#   OUTDIR/py/            api_pb2.py + api_pb2_grpc.py for bench/cri/peer_py.py and
#                         bench/cri/populate.py (their default --stubs is
#                         build/bench/py; pass --stubs OUTDIR/py otherwise).
#   OUTDIR/go/            the temporary GOPATH (generated code, protoc plugins).
#
# Offline: everything comes from Debian packages (GO111MODULE=off, GOPATH=
# /usr/share/gocode): golang-go golang-google-grpc-dev golang-google-protobuf-dev
# golang-goprotobuf-dev protobuf-compiler python3-grpcio python3-grpc-tools.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-"$root/build/bench"}
mkdir -p "$out"
out=$(cd "$out" && pwd)
proto_dir="$root/proto"
proto="$proto_dir/api.proto"
gocode=/usr/share/gocode

missing=
for tool in protoc protoc-gen-go go /usr/bin/python3; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
for dir in google.golang.org/grpc/cmd/protoc-gen-go-grpc google.golang.org/protobuf/cmd/protoc-gen-go \
           github.com/golang/protobuf/proto; do
    [ -d "$gocode/src/$dir" ] || missing="$missing $gocode/src/$dir"
done
/usr/bin/python3 -c 'import grpc_tools.protoc, grpc' 2>/dev/null || missing="$missing python3-grpc-tools/python3-grpcio"
if [ -n "$missing" ]; then
    echo "build-peers: missing:$missing" >&2
    echo "build-peers: apt-get install golang-go golang-google-grpc-dev golang-google-protobuf-dev" \
         "golang-goprotobuf-dev protobuf-compiler python3-grpcio python3-grpc-tools" >&2
    exit 1
fi

start=$(date +%s.%N)
export GO111MODULE=off GOFLAGS=
gowork="$out/go"
rm -rf "$gowork"
mkdir -p "$gowork/bin"

# --- Go peer, APIv2 (default) -----------------------------------------------
# protoc plugins built from the Debian source trees (no module download).
GOPATH="$gocode" go build -o "$gowork/bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
GOPATH="$gocode" go build -o "$gowork/bin/protoc-gen-go-grpc" google.golang.org/grpc/cmd/protoc-gen-go-grpc
v2="$gowork/apiv2"
mkdir -p "$v2/src/criapi" "$v2/src/peer_go"
PATH="$gowork/bin:$PATH" protoc -I"$proto_dir" \
    --go_out="$v2/src/criapi" --go_opt=paths=source_relative,Mapi.proto=kubelua.local/criapi \
    --go-grpc_out="$v2/src/criapi" --go-grpc_opt=paths=source_relative,Mapi.proto=kubelua.local/criapi \
    "$proto"
cp "$here/peer_go/main.go" "$here/peer_go/codec_apiv2.go" "$v2/src/peer_go/"
(cd "$v2/src/peer_go" && GOPATH="$v2:$gocode" go build -o "$out/peer_go" .)

# --- Go peer, APIv1 ---------------------------------------------------------
# /usr/bin/protoc-gen-go is golang-goprotobuf-dev's 1.3 generator; plugins=grpc
# emits a client for grpc.SupportPackageIsVersion6.
v1="$gowork/apiv1"
mkdir -p "$v1/src/criapi" "$v1/src/peer_go"
protoc -I"$proto_dir" --plugin=protoc-gen-go=/usr/bin/protoc-gen-go \
    --go_out="plugins=grpc:$v1/src/criapi" "$proto"
cp "$here/peer_go/main.go" "$v1/src/peer_go/"
cp "$here/peer_go/codec_apiv1.go.in" "$v1/src/peer_go/codec_apiv1.go"
(cd "$v1/src/peer_go" && GOPATH="$v1:$gocode" go build -o "$out/peer_go_apiv1" .)

# --- Python stubs -------------------------------------------------------------
rm -rf "$out/py"
mkdir -p "$out/py"
/usr/bin/python3 -m grpc_tools.protoc -I"$proto_dir" \
    --python_out="$out/py" --grpc_python_out="$out/py" "$proto"

end=$(date +%s.%N)
secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
echo "build-peers: built $out/peer_go, $out/peer_go_apiv1 and $out/py/ in ${secs} s" >&2
