#!/usr/bin/python3
"""bench/agent driver (started by run.sh, which owns containerd and clean-up).

Writes N static pod manifests (2 containers each), starts `kubelua agent` on
them, and measures, for the agent and for containerd + its shims in the same
run:
  start-up  from the agent's launch to all N pods Running and Ready (polling
            the agent's /pods on 127.0.0.1 every POLL seconds);
  steady    a window of STEADY seconds with nothing changing and nobody
            polling the agent (its own work only: PLEG relists, pod worker
            resyncs, readiness probes, the status loop, GC);
  resync60  the same window again after `kubelua attach` set the pod
            workers' resync period from the agent's 5 s to 60 s (kubelet's
            syncFrequency): the difference is the 5 s resync's load.
The agent's /pods is costly to render (tens of ms for 100 pods), so start-up
polls it only once every httpd port answers on loopback; the CPU of those
polls is measured afterwards and reported (raw and net of the polls).
Prints a table and appends one JSON line to bench/results/agent-*.jsonl.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procstat as ps  # noqa: E402

IMAGE = "kubelua.local/busybox:latest"

MANIFEST = """apiVersion: v1
kind: Pod
metadata:
  name: bench-{i:03d}
  labels: {{app: bench}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: sleeper
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sleep", "36000"]
  - name: web
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /www"]
    readinessProbe:
      httpGet: {{host: 127.0.0.1, port: {port}, path: /index.html}}
      periodSeconds: {period}
"""


def ports(n, base):
    out, p = [], base
    while len(out) < n:
        if p > 65000:
            sys.exit("measure.py: not enough free loopback ports")
        if ps.port_free(p):
            out.append(p)
        p += 1
    return out


def cri_calls(port):
    """kubelua_cri_calls_total summed by RPC, from /metrics ({} without it)."""
    try:
        st, body = ps.http_get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return {}
    out = {}
    for line in body.decode(errors="replace").splitlines():
        m = re.match(r'^kubelua_cri_calls_total\{([^}]*)\}\s+([0-9.eE+]+)$', line)
        if m:
            rpc = re.search(r'rpc="([^"]*)"', m.group(1))
            k = rpc.group(1) if rpc else "?"
            out[k] = out.get(k, 0) + float(m.group(2))
    return out


def calls_per_s(before, after, secs):
    return {k.rsplit("/", 1)[-1]: round((after.get(k, 0) - before.get(k, 0)) / secs, 1)
            for k in sorted(after) if after.get(k, 0) > before.get(k, 0)}


def listening(port):
    import socket
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def agent_sample(pid):
    st = ps.status(pid)
    return {"cpu": ps.cpu(pid), "rss_kb": st.get("VmRSS", 0), "hwm_kb": st.get("VmHWM", 0),
            "fds": ps.fds(pid)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--sock", required=True)
    ap.add_argument("--ctd-pid", type=int, required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--steady", type=float, default=60)
    ap.add_argument("--period", type=int, default=5, help="readiness probe period (s)")
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--label", default="")
    ap.add_argument("--resync-window", type=int, default=1, help="1: also measure with a 60 s resync")
    ap.add_argument("--results", required=True)
    a = ap.parse_args()

    man = os.path.join(a.work, "manifests")
    logs = os.path.join(a.work, "logs")
    os.makedirs(man, exist_ok=True)
    os.makedirs(logs, exist_ok=True)
    pts = ports(a.pods, 32100)
    for i, port in enumerate(pts):
        with open(os.path.join(man, f"bench-{i:03d}.yaml"), "w") as f:
            f.write(MANIFEST.format(i=i, image=IMAGE, port=port, period=a.period))
    hport = ps.free_port()
    cfg = os.path.join(a.work, "agent.yaml")
    with open(cfg, "w") as f:
        f.write(f"containerRuntimeEndpoint: unix://{a.sock}\n"
                f"staticPodPath: {man}\npodLogsDir: {logs}\nstateDir: {a.work}/state\n"
                f"healthzPort: {hport}\n"
                # 5 s, so the two steady windows compare it with kubelet's 1 min
                "syncFrequency: 5s\n")

    r0 = ps.runtime_sample(a.ctd_pid, a.sock)
    t0 = time.monotonic()
    log = open(os.path.join(a.work, "agent.log"), "w")
    cmd = [a.bin, "agent", "--config", cfg]
    if os.environ.get("KUBELUA_PROFILE_OUT"):  # the agent under jit.p (profile.lua)
        cmd = [a.bin, "run", os.path.join(os.path.dirname(os.path.abspath(__file__)), "profile.lua"), "--config", cfg]
    agent = subprocess.Popen(cmd, stdout=log, stderr=log)
    with open(os.path.join(a.work, "agent.pid"), "w") as f:
        f.write(str(agent.pid))
    res = {"label": a.label, "pods": a.pods, "containers": 2 * a.pods, "probe_period": a.period,
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "jit": os.environ.get("KUBELUA_JIT", "on")}
    try:
        first_running = all_running = None
        waiting, polls = set(pts), 0
        while True:
            if agent.poll() is not None:
                sys.exit(f"measure.py: the agent exited ({agent.returncode}); log: {log.name}")
            now = time.monotonic() - t0
            if now > a.timeout:
                lst = ps.pods(hport) or []
                sys.exit(f"measure.py: not all pods ready after {a.timeout:.0f}s: {len(waiting)} ports not "
                         f"listening ({sorted(waiting)[:5]}...), {len(lst)} pods in /pods, "
                         f"{sum(1 for p in lst if ps.is_ready(p))} ready")
            waiting = {p for p in waiting if not listening(p)}
            if waiting:  # not every httpd is up: no pod can be ready yet
                time.sleep(a.poll)
                continue
            lst = ps.pods(hport) or []
            polls += 1
            running = sum(1 for p in lst if (p.get("status") or {}).get("phase") == "Running")
            ready = sum(1 for p in lst if ps.is_ready(p))
            if running and first_running is None:
                first_running = now
            if running >= a.pods and all_running is None:
                all_running = now
            if ready >= a.pods:
                break
            time.sleep(a.poll / 2)
        t_ready = time.monotonic() - t0
        s1, r1 = agent_sample(agent.pid), ps.runtime_sample(a.ctd_pid, a.sock)
        res["startup"] = {
            "first_running_s": round(first_running, 2), "all_running_s": round(all_running or t_ready, 2),
            "all_ready_s": round(t_ready, 2),
            "agent_cpu_s": round(s1["cpu"], 2), "containerd_cpu_s": round(r1["cpu_containerd"] - r0["cpu_containerd"], 2),
            "runtime_cpu_s": round(r1["cpu"] - r0["cpu"], 2),
            "agent_rss_kb": s1["rss_kb"], "agent_hwm_kb": s1["hwm_kb"], "runtime_rss_kb": r1["rss_kb"],
            "shims": r1["shims"], "pods_polls": polls,
        }
        def window(settle):
            time.sleep(settle)  # let the last probe/sync wave pass
            m0 = cri_calls(hport)
            s2, r2 = agent_sample(agent.pid), ps.runtime_sample(a.ctd_pid, a.sock)
            ts, rss = time.monotonic(), []
            while time.monotonic() - ts < a.steady:
                time.sleep(min(5, a.steady))
                rss.append(ps.status(agent.pid).get("VmRSS", 0))
            s3, r3 = agent_sample(agent.pid), ps.runtime_sample(a.ctd_pid, a.sock)
            win = time.monotonic() - ts
            m1 = cri_calls(hport)
            lst = ps.pods(hport) or []
            return {
                "window_s": round(win, 1),
                "agent_cpu_s": round(s3["cpu"] - s2["cpu"], 3),
                "containerd_cpu_s": round(r3["cpu_containerd"] - r2["cpu_containerd"], 3),
                "runtime_cpu_s": round(r3["cpu"] - r2["cpu"], 3),
                "agent_rss_kb_max": max(rss + [s3["rss_kb"]]), "agent_rss_kb_end": s3["rss_kb"],
                "agent_hwm_kb": s3["hwm_kb"], "agent_fds": s3["fds"], "runtime_rss_kb": r3["rss_kb"],
                "ready_at_end": sum(1 for p in lst if ps.is_ready(p)),
                "cri_calls_per_s": calls_per_s(m0, m1, win),
            }
        res["steady"] = window(min(10, a.steady / 6))
        if a.resync_window:
            out = subprocess.run([a.bin, "attach", "--state-dir", f"{a.work}/state", "-e",
                                  "agent.sync.resync = 60; return agent.sync.resync"],
                                 capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                res["resync60"] = window(10)  # workers finish their 5 s waits first
            else:
                print(f"attach failed, no resync window: {out.stdout}{out.stderr}", file=sys.stderr)
        # the cost of one /pods (what the start-up poll added to the agent)
        c = ps.cpu(agent.pid)
        for _ in range(5):
            ps.pods(hport)
        res["pods_endpoint_cpu_ms"] = round((ps.cpu(agent.pid) - c) / 5 * 1000, 1)
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        log.close()

    st, sd = res["startup"], res["steady"]
    st["agent_cpu_net_s"] = round(st["agent_cpu_s"] - st["pods_polls"] * res["pods_endpoint_cpu_ms"] / 1000, 2)
    pct = lambda x, y: f"{100 * x / y:.1f}%" if y > 0 else "n/a"  # noqa: E731
    print(f"\n{a.pods} pods / {2 * a.pods} containers, readiness period {a.period}s, "
          f"JIT {res['jit']} {a.label}")
    print(f"start-up: first pod Running {st['first_running_s']}s, all Running {st['all_running_s']}s, "
          f"all Ready {st['all_ready_s']}s")
    print("| phase | agent CPU s | containerd CPU s | containerd+shims CPU s | agent/containerd | agent/(containerd+shims) |")
    print("|---|---|---|---|---|---|")
    phases = [(f"start-up ({st['pods_polls']} /pods polls)", st),
              ("start-up, net of the polls", dict(st, agent_cpu_s=st["agent_cpu_net_s"])),
              (f"steady {sd['window_s']}s", sd)]
    if "resync60" in res:
        phases.append((f"steady {res['resync60']['window_s']}s, resync 60 s", res["resync60"]))
    for name, ph in phases:
        print(f"| {name} | {ph['agent_cpu_s']} | {ph['containerd_cpu_s']} | {ph['runtime_cpu_s']} | "
              f"{pct(ph['agent_cpu_s'], ph['containerd_cpu_s'])} | {pct(ph['agent_cpu_s'], ph['runtime_cpu_s'])} |")
    for name, ph in phases[2:]:
        print(f"{name}: agent {100 * ph['agent_cpu_s'] / ph['window_s']:.2f}% of a core, "
              f"containerd+shims {100 * ph['runtime_cpu_s'] / ph['window_s']:.2f}%; CRI calls/s {ph['cri_calls_per_s']}")
    print(f"steady: agent CPU {100 * sd['agent_cpu_s'] / sd['window_s']:.2f}% of a core; "
          f"agent RSS max {sd['agent_rss_kb_max'] / 1024:.1f} MiB, HWM {sd['agent_hwm_kb'] / 1024:.1f} MiB, "
          f"fds {sd['agent_fds']}; containerd+{st['shims']} shims RSS {sd['runtime_rss_kb'] / 1024:.0f} MiB; "
          f"ready at end {sd['ready_at_end']}/{a.pods}")
    print(f"one /pods request: {res['pods_endpoint_cpu_ms']} ms of agent CPU")
    os.makedirs(os.path.dirname(a.results), exist_ok=True)
    with open(a.results, "a") as f:
        f.write(json.dumps(res) + "\n")
    print(f"result appended to {a.results}")


if __name__ == "__main__":
    main()
