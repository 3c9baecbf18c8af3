// peer_go: CRI client benchmark peer on grpc-go (the gRPC stack kubelet uses).
//
// Built by bench/cri/build-peers.sh, which generates the Go message and service
// code from proto/api.proto (runtime.v1) into a temporary GOPATH as package
// "criapi" and builds this file against Debian's grpc-go, offline
// (GO111MODULE=off), in two flavours:
//
//	peer_go        google.golang.org/protobuf (APIv2) messages + protoc-gen-go-grpc
//	               client, codec_apiv2.go: what kubelet >= 1.33 uses ("peer":"go")
//	peer_go_apiv1  github.com/golang/protobuf 1.3 messages (protoc-gen-go
//	               plugins=grpc), grpc-go 1.33's own codec ("peer":"go-apiv1")
//
// Usage:
//
//	peer_go --endpoint unix:///path/containerd.sock --rpc Version|ListContainers \
//	        --mode seq|multi --inflight N --calls N [--warmup N]
//
// Prints one JSON line with throughput, per-call latency percentiles and the
// process's own user+sys CPU per call during the measured phase.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	cri "criapi"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Same values as kubelet's remote runtime client
// (k8s.io/cri-client: maxMsgSize 16 MiB, default connection timeout 2 min).
const (
	maxMsgSize  = 16 * 1024 * 1024
	callTimeout = 2 * time.Minute
)

type result struct {
	Peer         string  `json:"peer"`
	RPC          string  `json:"rpc"`
	Mode         string  `json:"mode"`
	Inflight     int     `json:"inflight"`
	Calls        int     `json:"calls"`
	WallS        float64 `json:"wall_s"`
	CallsPerS    float64 `json:"calls_per_s"`
	P50Us        float64 `json:"p50_us"`
	P99Us        float64 `json:"p99_us"`
	CPUUsPerCall float64 `json:"cpu_us_per_call"`
	Items        int     `json:"items"`
}

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "peer_go: "+format+"\n", args...)
	os.Exit(1)
}

func cpuMicros() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		die("getrusage: %v", err)
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec)*1e6 + float64(t.Usec) }
	return tv(ru.Utime) + tv(ru.Stime)
}

// percentile by nearest rank on a sorted slice.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	idx := int(p*float64(len(sorted))+0.999999) - 1
	if idx < 0 {
		idx = 0
	}
	if idx >= len(sorted) {
		idx = len(sorted) - 1
	}
	return float64(sorted[idx].Nanoseconds()) / 1e3
}

func main() {
	endpoint := flag.String("endpoint", "", "unix:///path/to/containerd.sock")
	rpc := flag.String("rpc", "Version", "Version|ListContainers")
	mode := flag.String("mode", "seq", "seq|multi")
	inflight := flag.Int("inflight", 1, "calls in flight in multi mode (one connection)")
	calls := flag.Int("calls", 1000, "measured calls")
	warmup := flag.Int("warmup", -1, "warm-up calls (default: calls/10, between 20 and 500)")
	flag.Parse()

	if !strings.HasPrefix(*endpoint, "unix://") {
		die("--endpoint must be unix:///path (got %q)", *endpoint)
	}
	sock := strings.TrimPrefix(*endpoint, "unix://")
	if *mode != "seq" && *mode != "multi" {
		die("--mode must be seq or multi")
	}
	if *mode == "seq" {
		*inflight = 1
	}
	if *inflight < 1 || *calls < 1 {
		die("--inflight and --calls must be >= 1")
	}
	if *warmup < 0 {
		*warmup = *calls / 10
		if *warmup < 20 {
			*warmup = 20
		}
		if *warmup > 500 {
			*warmup = 500
		}
	}

	// Dial the way kubelet's remote runtime client does: passthrough target with
	// a unix dialer, authority "localhost", insecure transport, 16 MiB message
	// limits, backoff 100ms..3s, MinConnectTimeout 5s; one ClientConn (= one
	// HTTP/2 connection) shared by every caller.
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", addr)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), callTimeout)
	conn, err := grpc.DialContext(dctx, "passthrough:///"+sock,
		grpc.WithInsecure(),
		grpc.WithAuthority("localhost"),
		grpc.WithBlock(),
		grpc.WithContextDialer(dialer),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   3 * time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxMsgSize),
			grpc.MaxCallSendMsgSize(maxMsgSize)),
	)
	dcancel()
	if err != nil {
		die("dial %s: %v", sock, err)
	}
	defer conn.Close()
	client := cri.NewRuntimeServiceClient(conn)

	var items int64
	var call func() error
	switch *rpc {
	case "Version":
		call = func() error {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			resp, err := client.Version(ctx, &cri.VersionRequest{Version: "v1"})
			// kubelet's check (cri-client verifyVersionResponse)
			if err == nil && (resp.Version == "" || resp.RuntimeName == "" ||
				resp.RuntimeApiVersion == "" || resp.RuntimeVersion == "") {
				return fmt.Errorf("not all fields are set in VersionResponse")
			}
			return err
		}
	case "ListContainers":
		call = func() error {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			resp, err := client.ListContainers(ctx, &cri.ListContainersRequest{Filter: &cri.ContainerFilter{}})
			if err == nil {
				atomic.StoreInt64(&items, int64(len(resp.Containers)))
			}
			return err
		}
	default:
		die("--rpc must be Version or ListContainers")
	}

	// run performs n calls with `workers` callers and returns per-call latencies.
	run := func(n, workers int) []time.Duration {
		lat := make([]time.Duration, n)
		if workers == 1 {
			for i := 0; i < n; i++ {
				t0 := time.Now()
				if err := call(); err != nil {
					die("%s call %d: %v", *rpc, i, err)
				}
				lat[i] = time.Since(t0)
			}
			return lat
		}
		var next int64 = -1
		var wg sync.WaitGroup
		var once sync.Once
		var firstErr error
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(atomic.AddInt64(&next, 1))
					if i >= n {
						return
					}
					t0 := time.Now()
					if err := call(); err != nil {
						once.Do(func() { firstErr = fmt.Errorf("call %d: %v", i, err) })
						return
					}
					lat[i] = time.Since(t0)
				}
			}()
		}
		wg.Wait()
		if firstErr != nil {
			die("%s %v", *rpc, firstErr)
		}
		return lat
	}

	if *warmup > 0 {
		run(*warmup, *inflight)
	}
	runtime.GC()

	cpu0 := cpuMicros()
	t0 := time.Now()
	lat := run(*calls, *inflight)
	wall := time.Since(t0)
	cpu1 := cpuMicros()

	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	res := result{
		Peer:         peerName(),
		RPC:          *rpc,
		Mode:         *mode,
		Inflight:     *inflight,
		Calls:        *calls,
		WallS:        round(wall.Seconds(), 6),
		CallsPerS:    round(float64(*calls)/wall.Seconds(), 1),
		P50Us:        round(percentile(lat, 0.50), 1),
		P99Us:        round(percentile(lat, 0.99), 1),
		CPUUsPerCall: round((cpu1-cpu0)/float64(*calls), 2),
		Items:        int(atomic.LoadInt64(&items)),
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

func peerName() string {
	if protoFlavor == "apiv2" {
		return "go"
	}
	return "go-" + protoFlavor
}

func round(v float64, digits int) float64 {
	p := 1.0
	for i := 0; i < digits; i++ {
		p *= 10
	}
	if v < 0 {
		return -float64(int64(-v*p+0.5)) / p
	}
	return float64(int64(v*p+0.5)) / p
}
