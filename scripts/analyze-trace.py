#!/usr/bin/env python3
"""Per-stage decode step times and busy fractions from a pp --trace file (Chrome trace JSON).

Usage: analyze-trace.py TRACE [--from FRACTION] [--to FRACTION] [--decode-tokens N]

The window is a fraction of the run (default 0.4 .. 0.8: steady decode, after the prefills of
an all-at-once benchmark). Prints, per stage, the busy fraction in the window (compute spans'
union over the window), the number of micro-batches, and the median compute time of the
micro-batches of at most N tokens (decode steps; default: the most common token count).
"""
import argparse
import collections
import json
import statistics


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--from", dest="lo", type=float, default=0.4)
    ap.add_argument("--to", dest="hi", type=float, default=0.8)
    ap.add_argument("--decode-tokens", type=int, default=0)
    a = ap.parse_args()
    d = json.load(open(a.trace))
    ev = d["traceEvents"] if isinstance(d, dict) else d
    spans = [e for e in ev if e.get("ph") == "X" and e.get("name") == "compute"]
    if not spans:
        print("no compute spans")
        return
    t0 = min(e["ts"] for e in spans)
    t1 = max(e["ts"] + e["dur"] for e in spans)
    lo, hi = t0 + a.lo * (t1 - t0), t0 + a.hi * (t1 - t0)
    by_stage = collections.defaultdict(list)
    for e in spans:
        by_stage[e["pid"]].append(e)
    print(f"window {a.lo:.2f}..{a.hi:.2f} of {(t1 - t0) / 1e3:.1f} ms")
    for pid in sorted(by_stage):
        es = sorted(by_stage[pid], key=lambda e: e["ts"])
        busy, n, last_end = 0.0, 0, lo
        durs = collections.defaultdict(list)
        for e in es:
            s, t = max(e["ts"], lo), min(e["ts"] + e["dur"], hi)
            if t <= s:
                continue
            s = max(s, last_end)
            if t > s:
                busy += t - s
                last_end = t
            n += 1
            durs[e["args"]["n_tokens"]].append(e["dur"])
        if not durs:
            print(f"stage {pid}: no micro-batches in the window")
            continue
        common = a.decode_tokens or max(durs, key=lambda k: len(durs[k]))
        dec = [x for k, v in durs.items() if k <= common for x in v]
        print(f"stage {pid}: busy {100 * busy / (hi - lo):.1f}% idle {100 - 100 * busy / (hi - lo):.1f}%"
              f" ({n} micro-batches); decode steps of <= {common} tokens: median"
              f" {statistics.median(dec) / 1e3:.2f} ms over {len(dec)}")


if __name__ == "__main__":
    main()
