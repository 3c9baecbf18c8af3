#!/usr/bin/python3
"""Summarize a CRI benchmark run (JSON lines): medians per peer and case, and
kubelua's ratios to the grpc-go peer (the issue's targets: sequential p50 at
most 0.8x, throughput at 64 in flight at least 1.5x, CPU per multiplexed call
at most 0.5x)."""
import json
import statistics
import sys
from collections import defaultdict

rows = defaultdict(list)
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        r = json.loads(line)
        rows[(r["rpc"], r["items"], r["mode"], r["inflight"], r["peer"])].append(r)

cases = sorted({k[:4] for k in rows}, key=lambda k: (k[0] != "Version", k[1], k[2] != "seq", k[3]))
print("| case | peer | calls/s | p50 µs | p99 µs | CPU µs/call |")
print("|---|---|---|---|---|---|")
med = {}
for case in cases:
    for peer in ("kubelua", "go", "py"):
        rs = rows.get(case + (peer,))
        if not rs:
            continue
        m = {f: statistics.median(r[f] for r in rs) for f in ("calls_per_s", "p50_us", "p99_us", "cpu_us_per_call")}
        med[case + (peer,)] = m
        name = "%s%s %s%s" % (case[0], " (%d containers)" % case[1] if case[0] != "Version" else "",
                              case[2], " %d" % case[3] if case[2] == "multi" else "")
        print("| %s | %s | %.0f | %.0f | %.0f | %.1f |" % (name, peer, m["calls_per_s"], m["p50_us"], m["p99_us"], m["cpu_us_per_call"]))
print()
print("| case | p50 kubelua/go | throughput kubelua/go | CPU per call kubelua/go |")
print("|---|---|---|---|")
for case in cases:
    k, g = med.get(case + ("kubelua",)), med.get(case + ("go",))
    if k and g:
        print("| %s %s %s %d | %.2f | %.2f | %.2f |" % (case[0], case[1], case[2], case[3], k["p50_us"] / g["p50_us"],
                                                   k["calls_per_s"] / g["calls_per_s"], k["cpu_us_per_call"] / g["cpu_us_per_call"]))
