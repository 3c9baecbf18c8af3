// Compiled into the default (APIv2) build of peer_go only; see build-peers.sh.
//
// Kubelet >= 1.33 uses CRI bindings generated for google.golang.org/protobuf
// (APIv2; gogo before that) with a grpc-go whose "proto" codec calls
// google.golang.org/protobuf/proto. Debian's grpc-go 1.33 still marshals via
// github.com/golang/protobuf 1.3, which cannot handle APIv2 messages, so this
// file registers the codec that newer grpc-go ships (encoding/proto codec):
// plain proto.Marshal / proto.Unmarshal into the generated Go structs.
package main

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/proto"
)

const protoFlavor = "apiv2"

type apiv2Codec struct{}

func (apiv2Codec) Marshal(v interface{}) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("failed to marshal, message is %T, want proto.Message", v)
	}
	return proto.Marshal(m)
}

func (apiv2Codec) Unmarshal(data []byte, v interface{}) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("failed to unmarshal, message is %T, want proto.Message", v)
	}
	return proto.Unmarshal(data, m)
}

func (apiv2Codec) Name() string { return "proto" }

func init() {
	// Same name as grpc's built-in codec: replaces it for every call.
	encoding.RegisterCodec(apiv2Codec{})
}
