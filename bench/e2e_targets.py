#!/usr/bin/env python3
"""Issue 7's end-to-end targets, checked on the rows sftp-bench.sh appended to a results file.

  e2e_targets.py RESULTS.md [--target sftpgate] [--base openssh-external]

Rows for the same (target, cipher, metric) from several batches are pooled: median of the
batch medians (as summarize.py --pool). Prints one markdown table per cipher: metric, the
target's and the base's pooled median, the ratio in the issue's sense and whether it is met.
"""
import argparse
import re
import statistics
from collections import defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("results")
ap.add_argument("--target", default="sftpgate")
ap.add_argument("--base", default="openssh-external")
a = ap.parse_args()

row_re = re.compile(r"^\| (\d{4}-\d\d-\d\d) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| \*\*([^*]+)\*\* \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$")
vals = defaultdict(list)  # (target, cipher, metric) -> [batch medians]
ciphers = []
for line in open(a.results):
    m = row_re.match(line.strip())
    if not m:
        continue
    _, tgt, cip, met, med, _, _, _ = (x.strip() for x in m.groups())
    vals[(tgt, cip, met)].append(float(med))
    if cip not in ciphers:
        ciphers.append(cip)

# (metric prefix, kind, goal, label): kind "higher" = target/base, "lower" = base/target
# (both > 1 mean the target is better), "cpu" = target/base (< 1 is better), "latency" = target/base.
CHECKS = [
    ("1GiB upload, default", "higher", 1.0, "bulk upload, default pipelining (MB/s)"),
    ("1GiB download, default", "higher", 1.0, "bulk download, default pipelining (MB/s)"),
    ("1GiB upload, -R", "higher", 1.0, "bulk upload, deep pipelining (MB/s)"),
    ("1GiB download, -R", "higher", 1.0, "bulk download, deep pipelining (MB/s)"),
    ("server CPU per GiB upload, default", "cpu", 0.5, "server CPU/GiB upload, default"),
    ("server CPU per GiB download, default", "cpu", 0.5, "server CPU/GiB download, default"),
    ("server CPU per GiB upload, -R", "cpu", 0.5, "server CPU/GiB upload, deep"),
    ("server CPU per GiB download, -R", "cpu", 0.5, "server CPU/GiB download, deep"),
    ("put -r", "higher", 1.2, "small files up (files/s)"),
    ("get -r", "higher", 1.2, "small files down (files/s)"),
    ("ls -l of", "lower", 1.2, "ls -l of the big directory (s)"),
    ("stat latency (median", "latency", 1.0, "stat latency (us)"),
]


def find(tgt, cip, prefix):
    for (t, c, met), v in vals.items():
        if t == tgt and c == cip and prefix in met:
            return met, statistics.median(v), len(v)
    return None


def fmt(v):
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


for cip in ciphers:
    print(f"\n#### {cip}: {a.target} vs {a.base}\n")
    print(f"| figure | {a.target} | {a.base} | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for prefix, kind, goal, label in CHECKS:
        t = find(a.target, cip, prefix)
        b = find(a.base, cip, prefix)
        if not t or not b or not t[1] or not b[1]:
            continue
        if kind == "higher":
            r, want, ok = t[1] / b[1], f">= {goal}x", t[1] / b[1] >= goal
        elif kind == "lower":
            r, want, ok = b[1] / t[1], f">= {goal}x (base time / target time)", b[1] / t[1] >= goal
        elif kind == "cpu":
            r, want, ok = t[1] / b[1], f"<= {goal}x", t[1] / b[1] <= goal
        else:
            r, want, ok = t[1] / b[1], f"<= {goal}x", t[1] / b[1] <= goal
        print(f"| {label} | {fmt(t[1])} | {fmt(b[1])} | {r:.2f} | {want} | {'yes' if ok else '**no**'} |")
