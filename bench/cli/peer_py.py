#!/usr/bin/python3
"""peer_py: the python3-grpcio side of the CLI benchmark.

One process does what `kubelua ps` or `kubelua images` does end to end:
connect to CONTAINER_RUNTIME_ENDPOINT (unix:///path), make one call, print
one line per item, exit.

    /usr/bin/python3 bench/cli/peer_py.py ps|images [--stubs DIR]

The stubs (api_pb2.py, api_pb2_grpc.py) come from bench/cri/build-peers.sh
(default DIR: build/bench/py, or $CRI_PY_STUBS).
"""
import os
import sys


def main():
    args = sys.argv[1:]
    stubs = os.environ.get("CRI_PY_STUBS")
    if "--stubs" in args:
        i = args.index("--stubs")
        stubs = args[i + 1]
        del args[i:i + 2]
    if len(args) != 1 or args[0] not in ("ps", "images"):
        sys.exit("usage: peer_py.py ps|images [--stubs DIR]")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, stubs or os.path.join(root, "build", "bench", "py"))
    import grpc
    import api_pb2
    import api_pb2_grpc

    ep = os.environ.get("CONTAINER_RUNTIME_ENDPOINT", "")
    if not ep.startswith("unix://"):
        sys.exit("peer_py: CONTAINER_RUNTIME_ENDPOINT must be unix:///path")
    channel = grpc.insecure_channel("unix:" + ep[len("unix://"):])
    out = []
    if args[0] == "ps":
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        req = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(
            state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING)))
        for c in stub.ListContainers(req, timeout=2).containers:
            out.append("%s\t%s\t%s\t%s" % (c.id[:13], c.image.image, c.state, c.metadata.name))
    else:
        stub = api_pb2_grpc.ImageServiceStub(channel)
        for img in stub.ListImages(api_pb2.ListImagesRequest(), timeout=2).images:
            out.append("%s\t%s\t%d" % (",".join(img.repo_tags), img.id[7:20], img.size))
    channel.close()
    if out:
        sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
