#!/usr/bin/env python3
"""bench/turns.py: who holds the turn in a request/response exchange over one TCP connection.

Reads `tcpdump -tt -nn -r CAPTURE` text of one SSH connection (bench/turns.sh captures a
small-file `put -r` or `get -r`), keeps the segments that carry data, and splits the time
between them: from a client segment to the next server segment the server holds the turn
(its wake-up, its work, its send), from a server segment to the next client segment the
client does. On loopback a segment is stamped when it is sent, so the two sums add up to the
capture's span minus the gaps where one side sent twice in a row.

    turns.py CAPTURE.txt SERVER_PORT
prints one JSON object: turn counts, medians, p10/p90 and sums (microseconds) for each
side, data segments and pure ACKs each way.

    turns.py --summarize RESULTS.jsonl [--base openssh-external]
turns bench/turns.sh's lines (one per session: target, cipher, op, the object above, the
server's CPU, the machine's steal) into a markdown table, medians over the rounds. The rate
columns follow from the turns alone: a session's time is its turns (those under 5 ms; the
longer ones are its setup), so a server whose turns average S against a client whose turns
average C runs at 1 / (C + S) round trips a second. "ratio" is the base's (C + S) over this
target's in the same round, the median over the rounds in which neither session lost more
than 2 % to steal; "ceiling" is the same with this target's S taken as zero; "S for 1.2x"
is the mean server turn that would give 1.2x the base with this target's C.
"""
import json
import re
import statistics
import sys

LINE = re.compile(r"^(\d+\.\d+) IP6? (\S+) > (\S+): .*length (\d+)")


def quantile(values, q):
    s = sorted(values)
    return s[int(q * (len(s) - 1))] if s else None


# Turns this long belong to the session's setup (key exchange, sshd's fork and exec, a
# delayed ACK in the handshake), not to a file's round trip; means leave them out.
LONG_US = 5000.0


def summary(values):
    if not values:
        return {"n": 0}
    short = [v for v in values if v < LONG_US]
    return {
        "n": len(values),
        "median_us": round(statistics.median(values), 1),
        "p10_us": round(quantile(values, 0.1), 1),
        "p90_us": round(quantile(values, 0.9), 1),
        "sum_ms": round(sum(values) / 1e3, 1),
        "n_short": len(short),
        "mean_short_us": round(statistics.fmean(short), 1) if short else None,
    }


# A session that lost more than this share of its time to steal (the VM's host running
# something else) is left out of the paired ratios: steal stretches the turns it lands in.
STEAL_SHARE = 0.02


def summarize(path, base):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    groups = {}
    for r in rows:
        t = r["turns"]
        turns = t["server_turn"].get("n_short", 0)
        s_mean, c_mean = t["server_turn"].get("mean_short_us"), t["client_turn"].get("mean_short_us")
        if not turns or s_mean is None or c_mean is None:
            continue
        cpu = max(r["cpu_s"] - r["setup_cpu_s"], 0.0) * 1e6 / turns
        groups.setdefault((r["cipher"], r["op"], r["target"]), []).append({
            "s_med": t["server_turn"]["median_us"], "c_med": t["client_turn"]["median_us"],
            "s": s_mean, "c": c_mean, "cpu": cpu, "per_file": turns / r["files"]})
    med = statistics.median
    agg = {k: {f: med([v[f] for v in vs]) for f in vs[0]} | {"n": len(vs)}
           for k, vs in groups.items()}
    # per round: the base's mean round trip over this target's, in the same round
    by_round = {}
    for r in rows:
        t = r["turns"]
        if r.get("steal_s", 0.0) > STEAL_SHARE * r["wall_s"]:
            continue
        s_mean, c_mean = t["server_turn"].get("mean_short_us"), t["client_turn"].get("mean_short_us")
        if s_mean is not None and c_mean is not None:
            by_round[(r["round"], r["cipher"], r["op"], r["target"])] = s_mean + c_mean
    out = ["| cipher | op | target | rounds | server turn, median / mean (us) | client turn, "
           "median / mean (us) | server CPU per server turn (us) | turns per file | ratio to "
           f"{base} from the turns, median of rounds without steal [min-max] | ceiling (server turn 0) | "
           "server turn for 1.2x (us) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (cipher, op, target), a in sorted(agg.items()):
        b = agg.get((cipher, op, base))
        ratio = ceiling = need = "n/a"
        pairs = [by_round[(rnd, cipher, op, base)] / total
                 for (rnd, c, o, t), total in by_round.items()
                 if (c, o, t) == (cipher, op, target) and (rnd, cipher, op, base) in by_round]
        if pairs:
            ratio = f"{med(pairs):.2f} [{min(pairs):.2f}-{max(pairs):.2f}], {len(pairs)} rounds"
        if b:
            total = b["c"] + b["s"]
            ceiling = f"{total / a['c']:.2f}"
            need = f"{total / 1.2 - a['c']:.0f}"
        out.append(f"| {cipher} | {op} | {target} | {a['n']} | {a['s_med']:.0f} / {a['s']:.0f} "
                   f"| {a['c_med']:.0f} / {a['c']:.0f} | {a['cpu']:.0f} | {a['per_file']:.2f} "
                   f"| {ratio} | {ceiling} | {need} |")
    print("\n".join(out))


def main():
    if sys.argv[1] == "--summarize":
        base = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--base" else "openssh-external"
        summarize(sys.argv[2], base)
        return
    path, port = sys.argv[1], sys.argv[2]
    events = []  # (time, side, length) of segments with data
    segments = {"client": 0, "server": 0}
    acks = {"client": 0, "server": 0}
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            t, src, length = float(m[1]), m[2], int(m[4])
            side = "server" if src.rsplit(".", 1)[-1] == port else "client"
            if length == 0:
                acks[side] += 1
                continue
            segments[side] += 1
            events.append((t, side))
    turns = {"server": [], "client": []}
    for (t0, a), (t1, b) in zip(events, events[1:]):
        if a != b:
            turns[b].append((t1 - t0) * 1e6)
    span = (events[-1][0] - events[0][0]) * 1e3 if events else 0.0
    print(json.dumps({
        "server_turn": summary(turns["server"]),
        "client_turn": summary(turns["client"]),
        "data_segments": segments,
        "pure_acks": acks,
        "span_ms": round(span, 1),
    }))


if __name__ == "__main__":
    main()
