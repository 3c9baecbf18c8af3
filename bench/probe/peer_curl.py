#!/usr/bin/python3
"""bench/probe peer: one `curl` process per probe (what exec-style probing
costs), N targets at a 1 s period. The CPU counted is the curl processes'
(RUSAGE_CHILDREN), not this driver's.

  peer_curl.py URL N SECONDS WARMUP [NADDR]

NADDR: target i probes 127.0.0.<1 + i % NADDR> in place of the URL's 127.0.0.1.
"""
import os
import resource
import sys
import time

url, n, secs, warmup = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
naddr = int(sys.argv[5]) if len(sys.argv) > 5 else 1
argvs = [["curl", "-s", "-o", "/dev/null", "--max-time", "1", "-H", "User-Agent: kube-probe/1.33",
          "-H", "Connection: close", "-w", "%{http_code}",
          url.replace("127.0.0.1", "127.0.0.%d" % (1 + i % naddr), 1)] for i in range(n)]
curl = "/usr/bin/curl"
devnull = os.open(os.devnull, os.O_RDWR)

start = time.monotonic() + 0.2
t_measure, t_end = start + warmup, start + warmup + secs
due = [start + i / n for i in range(n)]  # next due time per target
lags, ok, fail = [], 0, 0
live = {}  # pid -> measured?
cpu0 = None
max_rss = 0


def reap(block=False):
    global ok, fail, max_rss
    while live:
        try:
            pid, status, ru = os.wait4(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        measured = live.pop(pid)
        max_rss = max(max_rss, ru.ru_maxrss)
        if measured:
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                ok += 1
            else:
                fail += 1


order = sorted(range(n), key=lambda i: due[i])
i = 0
while True:
    k = order[i % n]
    t = due[k]
    if t >= t_end:
        break
    now = time.monotonic()
    while now < t:
        reap()
        time.sleep(min(0.001, t - now))
        now = time.monotonic()
    if cpu0 is None and t >= t_measure:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0 = ru.ru_utime + ru.ru_stime
        m0 = time.monotonic()
    pid = os.posix_spawn(curl, argvs[k], os.environ, file_actions=[
        (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
        (os.POSIX_SPAWN_DUP2, devnull, 2)])
    live[pid] = t >= t_measure
    if t >= t_measure:
        lags.append(time.monotonic() - t)
    due[k] = t + 1.0
    i += 1
wall = time.monotonic() - m0
reap(block=True)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = ru.ru_utime + ru.ru_stime - cpu0
lags.sort()


def pct(p):
    return lags[max(0, int(len(lags) * p + 0.999999) - 1)] * 1000 if lags else 0


probes = ok + fail
print("RESULT peer=curl n=%d probes_per_s=%.0f ok=%d fail=%d missed=0 lag_p50_ms=%.2f lag_p99_ms=%.2f "
      "cpu_us_per_probe=%.1f cpu_cores=%.2f rss_mb=%.1f" % (
          n, probes / wall, ok, fail, pct(0.5), pct(0.99), cpu / probes * 1e6, cpu / wall,
          max_rss / 1024), flush=True)
