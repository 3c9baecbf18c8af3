"""Small /proc readers shared by bench/agent and bench/soak (python3, stdlib only).

CPU figures are in seconds (clock ticks / SC_CLK_TCK); memory in KiB as
/proc/PID/status reports it.
"""
import json
import os
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    """Fields of /proc/PID/stat after "(comm)", so index 0 is the state."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()


def cpu(pid, children=False):
    """utime+stime (and cutime+cstime: reaped children) in seconds."""
    f = stat_fields(pid)
    t = int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
    if children:
        t += int(f[13]) + int(f[14])  # cutime, cstime (fields 16, 17)
    return t / TICK


def status(pid):
    """VmRSS, VmHWM, Threads ... of /proc/PID/status as ints (KiB where sized)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            v = v.split()
            if v and v[0].isdigit():
                out[k] = int(v[0])
    return out


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def argv(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def shims(sock):
    """Pids of the containerd shims serving the containerd at `sock` (matched
    by their -address argument, as tests/support/containerd.sh does)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        a = argv(d)
        if not a or not os.path.basename(a[0]).startswith("containerd-shim"):
            continue
        for i, x in enumerate(a[:-1]):
            if x in ("-address", "--address") and a[i + 1] == sock:
                out.append(int(d))
                break
    return out


def runtime_sample(ctd_pid, sock):
    """containerd and its shims: CPU with reaped children (runc runs as a
    child of the shims and of containerd), RSS sum, number of shims."""
    c = cpu(ctd_pid, children=True)
    rss = status(ctd_pid).get("VmRSS", 0)
    ctd_only = c
    n = 0
    for p in shims(sock):
        try:
            c += cpu(p, children=True)
            rss += status(p).get("VmRSS", 0)
            n += 1
        except (OSError, ValueError):
            pass  # a shim that just exited
    return {"cpu": c, "cpu_containerd": ctd_only, "rss_kb": rss, "shims": n}


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def pods(port):
    """The agent's /pods as a list (None if it does not answer)."""
    try:
        st, body = http_get(f"http://127.0.0.1:{port}/pods")
    except OSError:
        return None
    return json.loads(body) if st == 200 else None


def is_ready(p):
    st = p.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
    return st.get("phase") == "Running" and conds.get("Ready") == "True"


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def port_free(port):
    import socket
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()
