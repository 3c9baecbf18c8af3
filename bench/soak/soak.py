#!/usr/bin/python3
"""bench/soak driver (started by run.sh, which owns containerd and clean-up).

Runs `kubelua agent` for a set time against a private containerd with churn:
  flap-*   httpd + a loop that creates and deletes the readiness file
           (readiness flips every few seconds; never restarts the container)
  live-*   httpd whose liveness file disappears after a while: the liveness
           probe fails, the agent kills and restarts the container
  crash-*  a container that exits 1 after 2 s, forever (CrashLoopBackOff with
           the scaled-down backoff in the agent's config)
  churn-*  a new pod every CHURN seconds, the oldest removed when more than
           KEEP exist; every 4th step an existing one is edited (replaced)
and GC every containerGCPeriod (10 s). Every INTERVAL seconds it records the
agent's RSS, open fds, Lua memory (from /metrics when a Lua memory series
exists), CPU, plus pods/ready/restarts and the runtime's container count, to
a CSV. At the end it fits trends after warm-up and exits 1 if any series
grows beyond its tolerance (or the agent died, or the churn did not happen).
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
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "agent"))
import procstat as ps  # noqa: E402

IMAGE = "kubelua.local/busybox:latest"

HEAD = """apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 2
  containers:
"""

FLAP = HEAD + """  - name: web
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /www && httpd -p 127.0.0.1:{port} -h /www && while true; do echo ok > /www/ready; sleep {up}; rm -f /www/ready; sleep {down}; done"]
    readinessProbe:
      httpGet: {{host: 127.0.0.1, port: {port}, path: /ready}}
      periodSeconds: 2
      failureThreshold: 1
  - name: sleeper
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sleep", "36000"]
"""

LIVE = HEAD + """  - name: web
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/alive && httpd -p 127.0.0.1:{port} -h /www && sleep {life} && rm -f /www/alive && exec sleep 36000"]
    livenessProbe:
      httpGet: {{host: 127.0.0.1, port: {port}, path: /alive}}
      periodSeconds: 2
      failureThreshold: 2
"""

CRASH = HEAD + """  - name: boom
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo starting; sleep 2; echo failing >&2; exit 1"]
"""

CHURN = HEAD + """  - name: app
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo gen {gen}; exec sleep 36000"]
    readinessProbe:
      exec: {{command: ["true"]}}
      periodSeconds: 3
"""

# series checked for growth: (column, relative tolerance, absolute tolerance,
# statistic per third). Lua memory is a GC sawtooth (2.5-4.5 MB here), so its
# thirds are compared by the lower quartile (the floor after collections, the
# live data) rather than the mean, which depends on where samples fall.
CHECKS = [("rss_kb", 0.05, 512, "mean"), ("fds", 0.0, 2, "mean"), ("lua_bytes", 0.10, 256 * 1024, "p25"),
          ("cpu_pct", 0.30, 0.5, "mean"), ("runtime_containers", 0.20, 5, "mean")]
LUA_MEM = re.compile(r"^([a-z_:]*lua[a-z_:]*(?:memory|heap|mem)[a-z_:]*bytes)(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$",
                     re.M)


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)  # the file source sees one complete file


def lua_memory(port):
    try:
        st, body = ps.http_get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return None, None
    m = LUA_MEM.search(body.decode(errors="replace")) if st == 200 else None
    return (float(m.group(2)), m.group(1)) if m else (None, None)


def runtime_containers(ctd_sh, ctd_dir):
    try:
        out = subprocess.run(["bash", ctd_sh, "ctr", ctd_dir, "containers", "ls", "-q"], capture_output=True,
                             text=True, timeout=20).stdout
    except subprocess.TimeoutExpired:
        return None
    return len(out.split())


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def p25(xs):
    xs = sorted(xs)
    return xs[len(xs) // 4] if xs else float("nan")


def slope(ts, ys):
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = mean(ts), mean(ys)
    d = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / d if d else 0.0


def trends(rows, warmup):
    """After the warm-up fraction, compare the last third with the middle
    third (mean, or lower quartile); the least-squares slope is reported
    beside it."""
    if not rows:
        return []
    t_end = rows[-1]["t_s"]
    post = [r for r in rows if r["t_s"] >= warmup * t_end]
    out = []
    for col, rel, ab, how in CHECKS:
        stat = p25 if how == "p25" else mean
        pts = [(r["t_s"], r[col]) for r in post if r.get(col) not in (None, "")]
        if len(pts) < 6:
            out.append({"series": col, "skipped": "no data" if not pts else "too few samples"})
            continue
        k = len(pts) // 3
        mid, last = [y for _, y in pts[k:2 * k]], [y for _, y in pts[2 * k:]]
        m_mid, m_last = stat(mid), stat(last)
        limit = m_mid + rel * abs(m_mid) + ab
        out.append({"series": col, "stat": how, "first": pts[0][1], "mid": round(m_mid, 2), "last": round(m_last, 2),
                    "limit": round(limit, 2), "slope_per_h": round(slope(*zip(*pts)) * 3600, 2),
                    "samples": len(pts), "ok": m_last <= limit})
    return out


def print_trends(res):
    print("| series | statistic | first after warm-up | middle third | last third | limit | slope /h | ok |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res:
        if "skipped" in r:
            print(f"| {r['series']} | | {r['skipped']} | | | | | |")
        else:
            print(f"| {r['series']} | {r['stat']} | {r['first']} | {r['mid']} | {r['last']} | {r['limit']} | "
                  f"{r['slope_per_h']} | {'yes' if r['ok'] else '**NO**'} |")


def analyze(path, warmup):
    """Trends of a CSV written by an earlier run (soak.py --analyze CSV)."""
    import csv
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.append({k: (float(v) if v not in ("", None) else None) for k, v in r.items()})
    res = trends(rows, warmup)
    print(f"{path}: {len(rows)} samples, warm-up {warmup:.0%} discarded")
    print_trends(res)
    bad = [r["series"] for r in res if r.get("ok") is False]
    print("FAIL: growing after warm-up: " + ", ".join(bad) if bad else "PASS")
    return 1 if bad else 0


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "--analyze":
        return analyze(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.2)
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--sock", required=True)
    ap.add_argument("--ctd-dir", required=True)
    ap.add_argument("--ctd-sh", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--interval", type=float, default=5)
    ap.add_argument("--churn", type=float, default=6, help="seconds between churn steps")
    ap.add_argument("--keep", type=int, default=4, help="churn pods alive at once")
    ap.add_argument("--warmup", type=float, default=0.2, help="fraction of the run discarded")
    ap.add_argument("--no-trend", action="store_true",
                    help="report the trends but do not fail on them (the 1-minute form under ctest, which is "
                         "inside the agent's own warm-up: it checks that the agent survives the churn)")
    ap.add_argument("--csv", required=True)
    ap.add_argument("--results", required=True)
    a = ap.parse_args()

    man, logs = os.path.join(a.work, "manifests"), os.path.join(a.work, "logs")
    os.makedirs(man, exist_ok=True)
    os.makedirs(logs, exist_ok=True)
    port = 32900
    def next_port():  # noqa: E306
        nonlocal port
        while not ps.port_free(port):
            port += 1
        port += 1
        return port - 1
    for i in range(3):
        write(f"{man}/flap-{i}.yaml", FLAP.format(name=f"flap-{i}", image=IMAGE, port=next_port(), up=5 + i,
                                                  down=4 + i))
    for i in range(2):
        write(f"{man}/live-{i}.yaml", LIVE.format(name=f"live-{i}", image=IMAGE, port=next_port(), life=20 + 10 * i))
    for i in range(3):
        write(f"{man}/crash-{i}.yaml", CRASH.format(name=f"crash-{i}", image=IMAGE))
    hport = ps.free_port()
    cfg = os.path.join(a.work, "agent.yaml")
    with open(cfg, "w") as f:
        f.write(f"containerRuntimeEndpoint: unix://{a.sock}\nstaticPodPath: {man}\npodLogsDir: {logs}\n"
                f"stateDir: {a.work}/state\nhealthzPort: {hport}\n"
                "relistPeriod: 1s\ncontainerGCPeriod: 10s\n"
                "crashLoopBackOff: {initial: 1s, max: 8s, reset: 30s}\n")

    log = open(os.path.join(a.work, "agent.log"), "w")
    agent = subprocess.Popen([a.bin, "agent", "--config", cfg], stdout=log, stderr=log)
    with open(os.path.join(a.work, "agent.pid"), "w") as f:
        f.write(str(agent.pid))
    t0 = time.monotonic()
    dur = a.minutes * 60
    cols = ["t_s", "agent_cpu_s", "cpu_pct", "rss_kb", "hwm_kb", "fds", "lua_bytes", "pods", "ready",
            "restarts", "runtime_containers", "containerd_cpu_s", "containerd_rss_kb"]
    csv = open(a.csv, "w")
    csv.write(",".join(cols) + "\n")
    rows, churn, gen, seq = [], [], 0, 0
    next_sample, next_churn = 0.0, a.churn
    prev, lua_name, flips, last_ready = None, None, 0, {}
    added = removed = edited = 0
    failure = None
    try:
        while True:
            now = time.monotonic() - t0
            if agent.poll() is not None:
                failure = f"the agent exited ({agent.returncode})"
                break
            if now >= dur:
                break
            if now >= next_churn:
                next_churn += a.churn
                seq += 1
                if seq % 4 == 0 and churn:
                    gen += 1  # edit one: spec change -> replace
                    name = churn[len(churn) // 2]
                    write(f"{man}/{name}.yaml", CHURN.format(name=name, image=IMAGE, gen=gen))
                    edited += 1
                else:
                    name = f"churn-{seq}"
                    write(f"{man}/{name}.yaml", CHURN.format(name=name, image=IMAGE, gen=gen))
                    churn.append(name)
                    added += 1
                    if len(churn) > a.keep:
                        os.remove(f"{man}/{churn.pop(0)}.yaml")
                        removed += 1
            if now >= next_sample:
                next_sample += a.interval
                st = ps.status(agent.pid)
                cpu = ps.cpu(agent.pid)
                lua, name = lua_memory(hport)
                lua_name = lua_name or name
                lst = ps.pods(hport) or []
                ready, restarts = 0, 0
                for p in lst:
                    r = ps.is_ready(p)
                    ready += r
                    nm = p.get("name") or ""
                    if nm.startswith("flap-"):
                        if nm in last_ready and last_ready[nm] != r:
                            flips += 1
                        last_ready[nm] = r
                    for c in (p.get("status") or {}).get("containerStatuses") or []:
                        restarts += c.get("restartCount") or 0
                try:
                    cst = ps.status(int(open(f"{a.ctd_dir}/containerd.pid").read()))
                    ccpu = ps.cpu(int(open(f"{a.ctd_dir}/containerd.pid").read()))
                except (OSError, ValueError):
                    cst, ccpu = {}, None
                row = {"t_s": round(now, 1), "agent_cpu_s": cpu, "rss_kb": st.get("VmRSS"),
                       "hwm_kb": st.get("VmHWM"), "fds": ps.fds(agent.pid), "lua_bytes": lua, "pods": len(lst),
                       "ready": ready, "restarts": restarts,
                       "runtime_containers": runtime_containers(a.ctd_sh, a.ctd_dir),
                       "containerd_cpu_s": ccpu, "containerd_rss_kb": cst.get("VmRSS")}
                row["cpu_pct"] = (round(100 * (cpu - prev["agent_cpu_s"]) / (now - prev["t_s"]), 2)
                                  if prev and now > prev["t_s"] else None)
                prev = row
                rows.append(row)
                csv.write(",".join("" if row[c] is None else str(row[c]) for c in cols) + "\n")
                csv.flush()
            time.sleep(max(0.05, min(next_sample, next_churn) - (time.monotonic() - t0)))
        code = None
        if agent.poll() is None:
            try:
                st, body = ps.http_get(f"http://127.0.0.1:{hport}/healthz")
                health = f"{st} {body.decode().strip()[:80]}"
            except OSError as e:
                health = f"error {e}"
            agent.send_signal(signal.SIGTERM)
            try:
                code = agent.wait(20)
            except subprocess.TimeoutExpired:
                failure = failure or "the agent did not stop within 20 s of SIGTERM"
                agent.kill()
                agent.wait()
        else:
            health = "agent gone"
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        log.close()
        csv.close()

    res = trends(rows, a.warmup)
    bad = [r for r in res if r.get("ok") is False]
    restarts_end = rows[-1]["restarts"] if rows else 0
    churn_ok = restarts_end > 0 and flips > 0 and added > 0 and removed > 0
    print(f"\nsoak: {a.minutes:g} min, {len(rows)} samples every {a.interval:g}s, warm-up {a.warmup:.0%} discarded")
    print(f"churn: {added} pods added, {removed} removed, {edited} edited; readiness flips seen {flips}; "
          f"container restarts at end {restarts_end}; /healthz at end: {health}; agent exit {code}")
    print(f"Lua memory series: {lua_name or 'none in /metrics (RSS only)'}")
    print_trends(res)
    if rows:
        print(f"RSS max {max(r['rss_kb'] for r in rows) / 1024:.1f} MiB, HWM {rows[-1]['hwm_kb'] / 1024:.1f} MiB, "
              f"fds max {max(r['fds'] for r in rows)}, agent CPU total {rows[-1]['agent_cpu_s']:.1f} s "
              f"({100 * rows[-1]['agent_cpu_s'] / max(rows[-1]['t_s'], 1):.2f}% of a core)")
    print(f"CSV: {a.csv}")
    os.makedirs(os.path.dirname(a.results), exist_ok=True)
    with open(a.results, "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "minutes": a.minutes,
                            "samples": len(rows), "added": added, "removed": removed, "edited": edited,
                            "flips": flips, "restarts": restarts_end, "lua_series": lua_name,
                            "trends": res, "failure": failure, "csv": a.csv}) + "\n")
    if failure:
        print(f"FAIL: {failure}")
        return 1
    if not churn_ok:
        print("FAIL: the churn did not happen (no restarts, flips, additions or removals)")
        return 1
    if bad and a.no_trend:
        print("(not judged, --no-trend) growing after warm-up: " + ", ".join(r["series"] for r in bad))
    elif bad:
        print("FAIL: growing after warm-up: " + ", ".join(r["series"] for r in bad))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
