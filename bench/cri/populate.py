#!/usr/bin/python3
"""populate: fill a (private, test) containerd with pods and containers for the
ListContainers benchmark cases, or remove what it created.

  /usr/bin/python3 bench/cri/populate.py --endpoint unix:///path/containerd.sock \
      --containers N [--created-only] [--jobs J] [--stubs build/bench/py]
  /usr/bin/python3 bench/cri/populate.py --endpoint unix:///path/containerd.sock --cleanup

Layout (shaped like what kubelet creates):
- one pod sandbox per 10 containers, host network (namespace_options.network =
  NODE; no CNI here), no hostname, linux.cgroup_parent /kubelua-bench/pod<uid>,
  metadata name/namespace/uid, kubelet's io.kubernetes.pod.* labels;
- containers from kubelua.local/busybox:latest running /bin/sleep 3600, with
  kubelet's container labels and annotations; started unless --created-only.
Everything carries the label kubelua.bench/populate=1; --cleanup stops and
removes every container and sandbox with that label (and nothing else).
Needs the Python stubs from bench/cri/build-peers.sh and Debian's python3-grpcio.
"""
import argparse
import concurrent.futures as cf
import os
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH_LABEL = "kubelua.bench/populate"
IMAGE = "kubelua.local/busybox:latest"
NAMESPACE = "kubelua-bench"
PER_POD = 10
TIMEOUT = 120.0


def load_stubs(path):
    path = path or os.environ.get("CRI_PY_STUBS") or os.path.join(ROOT, "build", "bench", "py")
    if not os.path.exists(os.path.join(path, "api_pb2.py")):
        sys.exit("populate: no api_pb2.py in %s (run bench/cri/build-peers.sh, or pass --stubs)" % path)
    sys.path.insert(0, path)
    import api_pb2  # noqa: E402
    import api_pb2_grpc  # noqa: E402
    return api_pb2, api_pb2_grpc


def sandbox_config(pb, name, uid):
    labels = {
        "io.kubernetes.pod.name": name,
        "io.kubernetes.pod.namespace": NAMESPACE,
        "io.kubernetes.pod.uid": uid,
        "app": "kubelua-bench",
        BENCH_LABEL: "1",
    }
    annotations = {
        "kubernetes.io/config.source": "file",
        "kubernetes.io/config.seen": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()),
        "kubernetes.io/config.hash": uid.replace("-", "")[:32],
    }
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace=NAMESPACE, uid=uid, attempt=0),
        labels=labels,
        annotations=annotations,
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent="/kubelua-bench/pod" + uid,
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD),
            ),
        ),
    )


def container_config(pb, pod_name, uid, cname, index):
    labels = {
        "io.kubernetes.container.name": cname,
        "io.kubernetes.pod.name": pod_name,
        "io.kubernetes.pod.namespace": NAMESPACE,
        "io.kubernetes.pod.uid": uid,
        BENCH_LABEL: "1",
    }
    annotations = {
        "io.kubernetes.container.hash": "%08x" % (0x5eed0000 + index),
        "io.kubernetes.container.restartCount": "0",
        "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
        "io.kubernetes.container.terminationMessagePolicy": "File",
        "io.kubernetes.pod.terminationGracePeriod": "30",
    }
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=cname, attempt=0),
        image=pb.ImageSpec(image=IMAGE),
        command=["/bin/sleep", "3600"],
        labels=labels,
        annotations=annotations,
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(cpu_shares=2, oom_score_adj=1000),
        ),
    )


def populate(args, pb, rt):
    n = args.containers
    pods = (n + PER_POD - 1) // PER_POD
    t0 = time.time()

    def make_pod(p):
        uid = str(uuid.uuid4())
        name = "bench-pod-%03d-%s" % (p, uid[:8])
        scfg = sandbox_config(pb, name, uid)
        sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=scfg), timeout=2 * TIMEOUT).pod_sandbox_id
        if not sid:
            raise RuntimeError("PodSandboxId is not set for sandbox %q" % name)
        count = min(PER_POD, n - p * PER_POD)
        for c in range(count):
            cname = "c%02d" % c
            ccfg = container_config(pb, name, uid, cname, p * PER_POD + c)
            cid = rt.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=sid, config=ccfg, sandbox_config=scfg), timeout=TIMEOUT).container_id
            if not cid:
                raise RuntimeError("ContainerId is not set for container %q" % cname)
            if not args.created_only:
                rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
        return count

    made = 0
    with cf.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        for count in ex.map(make_pod, range(pods)):
            made += count
    sel = pb.ContainerFilter(label_selector={BENCH_LABEL: "1"})
    listed = rt.ListContainers(pb.ListContainersRequest(filter=sel), timeout=TIMEOUT).containers
    total = len(rt.ListContainers(pb.ListContainersRequest(), timeout=TIMEOUT).containers)
    print("populate: created %d pods, %d containers (%s) in %.1f s; labelled containers now %d, all containers %d"
          % (pods, made, "created" if args.created_only else "running", time.time() - t0,
             len(listed), total), file=sys.stderr)


def cleanup(args, pb, rt):
    t0 = time.time()
    sel = pb.ContainerFilter(label_selector={BENCH_LABEL: "1"})
    ctrs = rt.ListContainers(pb.ListContainersRequest(filter=sel), timeout=TIMEOUT).containers
    psel = pb.PodSandboxFilter(label_selector={BENCH_LABEL: "1"})
    pods = rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=psel), timeout=TIMEOUT).items

    def rm_ctr(c):
        rt.StopContainer(pb.StopContainerRequest(container_id=c.id, timeout=0), timeout=TIMEOUT)
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=c.id), timeout=TIMEOUT)

    def rm_pod(p):
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=p.id), timeout=TIMEOUT)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=TIMEOUT)

    with cf.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        list(ex.map(rm_ctr, ctrs))
        list(ex.map(rm_pod, pods))
    print("populate: removed %d containers, %d pods in %.1f s"
          % (len(ctrs), len(pods), time.time() - t0), file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", required=True, help="unix:///path/to/containerd.sock")
    ap.add_argument("--containers", type=int, default=0, help="containers to create")
    ap.add_argument("--created-only", action="store_true",
                    help="create the containers but do not start them")
    ap.add_argument("--cleanup", action="store_true",
                    help="stop and remove every container and sandbox labelled %s=1" % BENCH_LABEL)
    ap.add_argument("--jobs", type=int, default=2, help="pods worked on at once (default 2)")
    ap.add_argument("--stubs", default=None,
                    help="folder with api_pb2*.py (default $CRI_PY_STUBS or build/bench/py)")
    args = ap.parse_args()
    if not args.endpoint.startswith("unix://"):
        sys.exit("populate: --endpoint must be unix:///path")
    if not args.cleanup and args.containers < 1:
        sys.exit("populate: give --containers N (N >= 1) or --cleanup")

    pb, pbg = load_stubs(args.stubs)
    import grpc
    channel = grpc.insecure_channel(args.endpoint, options=[
        ("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    rt = pbg.RuntimeServiceStub(channel)
    if args.cleanup:
        cleanup(args, pb, rt)
    else:
        populate(args, pb, rt)
    channel.close()


if __name__ == "__main__":
    main()
