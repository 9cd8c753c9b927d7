#!/usr/bin/env python3
"""Tables from the RESULT lines of sftpgate-loadgen (as bench/loadgen.sh collects them).

  loadgen_summary.py RESULTS.txt [--base openssh-external]

Each input line: `SCENARIO RESULT key=value ...` with label=<target>. Prints per scenario and
cipher a markdown table: target, phase, aggregate MB/s median [min-max], per-session MB/s
(median of the runs' min / median), runs with an unfair session, server and client CPU s/GiB
(medians), and the ratios to --base: throughput (target/base) and server CPU (target/base).
"""
import argparse
import statistics
from collections import OrderedDict, defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("results")
ap.add_argument("--base", default="openssh-external")
a = ap.parse_args()

runs = defaultdict(list)  # (scenario, cipher, phase, target) -> [dict]
order = OrderedDict()
for line in open(a.results):
    parts = line.split()
    if len(parts) < 3 or parts[1] != "RESULT":
        continue
    scen = parts[0]
    kv = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    key = (scen, kv["cipher"], kv["phase"], kv["label"])
    runs[key].append(kv)
    order.setdefault((scen, kv["cipher"]), OrderedDict()).setdefault(kv["label"], None)


def med(rows, k):
    v = [float(r[k]) for r in rows if r.get(k) not in (None, "na")]
    return statistics.median(v) if v else None


def rng(rows, k):
    v = [float(r[k]) for r in rows if r.get(k) not in (None, "na")]
    return (min(v), max(v)) if v else (None, None)


def f(v, nd=1):
    return "n/a" if v is None else f"{v:.{nd}f}"


for (scen, cip), targets in order.items():
    any_row = next(r for (s, c, _, _), rr in runs.items() if s == scen and c == cip for r in rr)
    print(f"\n#### {scen}: {any_row['sessions']} session(s) x {any_row['in_flight']} in flight x "
          f"{int(any_row['request']) // 1024} KiB requests, {int(any_row['bytes_per_session']) >> 20} MiB per session, {cip}\n")
    print("| target | phase | aggregate MB/s | per session MB/s: min / median | unfair runs | server CPU s/GiB | loadgen CPU s/GiB | MB/s vs base | server CPU vs base |")
    print("|---|---|---|---|---|---|---|---|---|")
    for phase in ("up", "down"):
        base = runs.get((scen, cip, phase, a.base), [])
        for tgt in targets:
            rows = runs.get((scen, cip, phase, tgt), [])
            if not rows:
                continue
            lo, hi = rng(rows, "agg_mbps")
            agg = med(rows, "agg_mbps")
            unfair = sum(1 for r in rows if int(r["unfair"]) > 0)
            scpu, bcpu = med(rows, "srv_cpu_per_gib"), med(base, "srv_cpu_per_gib") if base else None
            bagg = med(base, "agg_mbps") if base else None
            ratio = f"{agg / bagg:.2f}" if agg and bagg and tgt != a.base else ""
            cratio = f"{scpu / bcpu:.2f}" if scpu and bcpu and tgt != a.base else ""
            print(f"| {tgt} | {phase} | {f(agg)} [{f(lo)}-{f(hi)}] n={len(rows)} | "
                  f"{f(med(rows, 'sess_min'))} / {f(med(rows, 'sess_med'))} | {unfair}/{len(rows)} | "
                  f"{f(scpu, 2)} | {f(med(rows, 'cli_cpu_per_gib'), 2)} | {ratio} | {cratio} |")
