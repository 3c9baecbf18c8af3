#!/usr/bin/python3
"""peer_py: CRI client benchmark peer on Debian's python3-grpcio.

Run with /usr/bin/python3 (Debian's grpcio and protobuf), with the stubs that
bench/cri/build-peers.sh generates from proto/api.proto:

  /usr/bin/python3 bench/cri/peer_py.py --endpoint unix:///path/containerd.sock \
      --rpc Version|ListContainers --mode seq|multi --inflight N --calls N \
      [--warmup N] [--stubs build/bench/py]

seq   = one blocking call at a time on a grpc.Channel.
multi = N calls in flight on ONE grpc.aio channel (one HTTP/2 connection),
        N asyncio tasks each issuing its next call when the previous returns.

Prints one JSON line: throughput, per-call latency percentiles and the process's
own user+sys CPU (all threads, incl. gRPC core's) per call in the measured phase.
"""
import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import time

MAX_MSG = 16 * 1024 * 1024   # kubelet's remote runtime client limit
CALL_TIMEOUT = 120.0         # kubelet's per-call deadline (2 min)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_stubs(path):
    path = path or os.environ.get("CRI_PY_STUBS") or os.path.join(ROOT, "build", "bench", "py")
    if not os.path.exists(os.path.join(path, "api_pb2.py")):
        sys.exit("peer_py: no api_pb2.py in %s (run bench/cri/build-peers.sh, or pass --stubs)" % path)
    sys.path.insert(0, path)
    import api_pb2  # noqa: E402
    import api_pb2_grpc  # noqa: E402
    return api_pb2, api_pb2_grpc


def cpu_us():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return (ru.ru_utime + ru.ru_stime) * 1e6


def percentile(sorted_ns, p):
    if not sorted_ns:
        return 0.0
    idx = int(-(-p * len(sorted_ns) // 1)) - 1  # nearest rank: ceil(p*n) - 1
    idx = min(max(idx, 0), len(sorted_ns) - 1)
    return sorted_ns[idx] / 1e3


CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MSG),
    ("grpc.max_send_message_length", MAX_MSG),
]


def make_request(pb, rpc):
    if rpc == "Version":
        return pb.VersionRequest(version="v1")
    return pb.ListContainersRequest(filter=pb.ContainerFilter())


class Counter:
    items = 0


def check(rpc, resp, counter):
    # The response is fully parsed into a message object by the stub; touch it.
    if rpc == "Version":
        # kubelet's check (cri-client verifyVersionResponse)
        if not (resp.version and resp.runtime_name and resp.runtime_api_version
                and resp.runtime_version):
            raise RuntimeError("not all fields are set in VersionResponse")
    else:
        counter.items = len(resp.containers)


def run_seq(args, pb, pbg):
    import grpc
    channel = grpc.insecure_channel(args.endpoint, options=CHANNEL_OPTIONS)
    grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
    stub = pbg.RuntimeServiceStub(channel)
    method = getattr(stub, args.rpc)
    req = make_request(pb, args.rpc)
    counter = Counter()
    perf = time.perf_counter_ns

    def run(n):
        lat = [0] * n
        for i in range(n):
            t0 = perf()
            resp = method(req, timeout=CALL_TIMEOUT)
            lat[i] = perf() - t0
            check(args.rpc, resp, counter)
        return lat

    run(args.warmup)
    gc.collect()
    c0, t0 = cpu_us(), perf()
    lat = run(args.calls)
    t1, c1 = perf(), cpu_us()
    channel.close()
    return lat, (t1 - t0) / 1e9, c1 - c0, counter.items


def run_multi(args, pb, pbg):
    import grpc.aio
    counter = Counter()
    perf = time.perf_counter_ns

    async def main():
        channel = grpc.aio.insecure_channel(args.endpoint, options=CHANNEL_OPTIONS)
        await asyncio.wait_for(channel.channel_ready(), CALL_TIMEOUT)
        stub = pbg.RuntimeServiceStub(channel)
        method = getattr(stub, args.rpc)
        req = make_request(pb, args.rpc)

        async def run(n, workers):
            lat = [0] * n
            nxt = [0]

            async def worker():
                while True:
                    i = nxt[0]
                    if i >= n:
                        return
                    nxt[0] = i + 1
                    t0 = perf()
                    resp = await method(req, timeout=CALL_TIMEOUT)
                    lat[i] = perf() - t0
                    check(args.rpc, resp, counter)

            await asyncio.gather(*(worker() for _ in range(workers)))
            return lat

        await run(args.warmup, args.inflight)
        gc.collect()
        c0, t0 = cpu_us(), perf()
        lat = await run(args.calls, args.inflight)
        t1, c1 = perf(), cpu_us()
        await channel.close()
        return lat, (t1 - t0) / 1e9, c1 - c0, counter.items

    return asyncio.run(main())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", required=True, help="unix:///path/to/containerd.sock")
    ap.add_argument("--rpc", choices=["Version", "ListContainers"], default="Version")
    ap.add_argument("--mode", choices=["seq", "multi"], default="seq")
    ap.add_argument("--inflight", type=int, default=1)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=-1,
                    help="warm-up calls (default: calls/10, between 20 and 500)")
    ap.add_argument("--stubs", default=None,
                    help="folder with api_pb2*.py (default $CRI_PY_STUBS or build/bench/py)")
    args = ap.parse_args()
    if not args.endpoint.startswith("unix://"):
        sys.exit("peer_py: --endpoint must be unix:///path")
    if args.mode == "seq":
        args.inflight = 1
    if args.inflight < 1 or args.calls < 1:
        sys.exit("peer_py: --inflight and --calls must be >= 1")
    if args.warmup < 0:
        args.warmup = min(max(args.calls // 10, 20), 500)

    pb, pbg = load_stubs(args.stubs)
    runner = run_seq if args.mode == "seq" else run_multi
    lat, wall, cpu, items = runner(args, pb, pbg)
    lat.sort()
    print(json.dumps({
        "peer": "py",
        "rpc": args.rpc,
        "mode": args.mode,
        "inflight": args.inflight,
        "calls": args.calls,
        "wall_s": round(wall, 6),
        "calls_per_s": round(args.calls / wall, 1),
        "p50_us": round(percentile(lat, 0.50), 1),
        "p99_us": round(percentile(lat, 0.99), 1),
        "cpu_us_per_call": round(cpu / args.calls, 2),
        "items": items,
    }, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
