// peer_go: the Go (grpc-go) side of the CLI benchmark. One process does what
// `kubelua ps` or `kubelua images` does end to end: dial the runtime's unix
// socket, make one call, print one line per item, exit.
//
//	peer_go ps|images        (endpoint from CONTAINER_RUNTIME_ENDPOINT)
//
// ps lists running containers (crictl's default filter); images lists all
// images. Built by bench/cli/build.sh against the CRI stubs that
// bench/cri/build-peers.sh generates (APIv2 messages, plus its codec file).
package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	cri "criapi"

	"google.golang.org/grpc"
)

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "peer_go: "+format+"\n", args...)
	os.Exit(1)
}

func short(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 13 {
		return id[:13]
	}
	return id
}

func main() {
	if len(os.Args) != 2 || (os.Args[1] != "ps" && os.Args[1] != "images") {
		die("usage: peer_go ps|images")
	}
	ep := os.Getenv("CONTAINER_RUNTIME_ENDPOINT")
	if !strings.HasPrefix(ep, "unix://") {
		die("CONTAINER_RUNTIME_ENDPOINT must be unix:///path (got %q)", ep)
	}
	sock := strings.TrimPrefix(ep, "unix://")
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", addr)
	}
	// crictl's way: passthrough target, unix dialer, insecure, 2 s timeout.
	conn, err := grpc.Dial("passthrough:///"+sock, grpc.WithInsecure(),
		grpc.WithAuthority("localhost"), grpc.WithContextDialer(dialer))
	if err != nil {
		die("dial %s: %v", sock, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	switch os.Args[1] {
	case "ps":
		r, err := cri.NewRuntimeServiceClient(conn).ListContainers(ctx, &cri.ListContainersRequest{
			Filter: &cri.ContainerFilter{State: &cri.ContainerStateValue{State: cri.ContainerState_CONTAINER_RUNNING}}})
		if err != nil {
			die("ListContainers: %v", err)
		}
		for _, c := range r.Containers {
			fmt.Fprintf(out, "%s\t%s\t%s\t%s\n", short(c.Id), c.GetImage().GetImage(), c.State, c.GetMetadata().GetName())
		}
	case "images":
		r, err := cri.NewImageServiceClient(conn).ListImages(ctx, &cri.ListImagesRequest{})
		if err != nil {
			die("ListImages: %v", err)
		}
		for _, img := range r.Images {
			fmt.Fprintf(out, "%s\t%s\t%d\n", strings.Join(img.RepoTags, ","), short(img.Id), img.Size)
		}
	}
}
