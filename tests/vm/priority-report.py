#!/usr/bin/python3
"""Summarises a priority-lab results directory (tests/vm/priority-guest.sh writes it).

  priority-report.py RESULTS_DIR

Prints one row per phase (streaming IOPS and share of solo, streaming p99 and its ratio to
solo, batch class IOPS and share of the device, guest CPU idle) and the reaction times of
the adaptive loop from fio's per-100 ms IOPS logs. Stdlib only.
"""

import glob
import json
import os
import sys


def job(d, name):
    path = os.path.join(d, f"{name}.json")
    if not os.path.exists(path):
        return None
    text = open(path).read()
    text = text[text.index("{"):]  # fio may print notes before the JSON
    r = json.loads(text)["jobs"][0]["read"]
    return r["iops"], r["clat_ns"]["percentile"]["99.000000"] / 1e6


def iops_log(d, name):
    files = glob.glob(os.path.join(d, f"{name}_iops*.log"))
    samples = []
    for f in files:
        for line in open(f):
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2:
                samples.append((int(parts[0]), float(parts[1])))
    return sorted(samples)


def cpu(d):
    out = {}
    path = os.path.join(d, "cpu.txt")
    if os.path.exists(path):
        for line in open(path):
            n, i0, t0, i1, t1 = line.split()
            dt = int(t1) - int(t0)
            out[n] = (int(i1) - int(i0)) / dt if dt else 0.0
    return out


def main():
    d = sys.argv[1]
    cap = float(open(os.path.join(d, "capacity.txt")).read())
    solo = job(d, "solo.s0")
    idle = cpu(d)
    print(f"device capacity (max of streaming solo and 4 batch alone): {cap:.0f} IOPS")
    sp = os.path.join(d, "static-prop.txt")
    if os.path.exists(sp):
        print(f"device-proportional static cap: {open(sp).read().strip()} IOPS per batch volume")
    print()
    print(f"{'phase':24} {'stream IOPS':>11} {'share':>6} {'p99 ms':>7} {'p99 x':>6} "
          f"{'batch IOPS':>10} {'batch/dev':>9} {'cpu idle':>8}")
    phases = ["solo", "batchalone", "nocap", "static2000", "staticprop",
              "staticprop-batchalone"]
    for pct in sorted({f.split("-")[0][6:] for f in os.listdir(d) if f.startswith("iocost")},
                      key=lambda v: -int(v) if v.isdigit() else 0):
        if pct.isdigit():
            phases += [f"iocost{pct}-{v}" for v in ("cross", "same", "slices", "batchalone")]
    phases += ["adaptive", "adaptive-batchalone", "solo-end"]
    for p in phases:
        s = job(d, f"{p}.s0") or job(d, f"{p}.s0same")
        batch = [job(d, f"{p}.b{i}") for i in range(1, 5)]
        btot = sum(b[0] for b in batch if b)
        cols = [f"{p:24}"]
        if s:
            cols += [f"{s[0]:11.0f}", f"{s[0] / solo[0]:6.2f}", f"{s[1]:7.1f}", f"{s[1] / solo[1]:6.2f}"]
        else:
            cols += [f"{'-':>11}", f"{'-':>6}", f"{'-':>7}", f"{'-':>6}"]
        if any(batch):
            cols += [f"{btot:10.0f}", f"{btot / cap:9.2f}"]
        else:
            cols += [f"{'-':>10}", f"{'-':>9}"]
        cols.append(f"{idle.get(p, float('nan')):8.2f}")
        print(" ".join(cols))

    s = iops_log(d, "react.s0")
    if not s:
        return
    print()
    start = s[0][0] - 100
    end = s[-1][0]
    def sustained(samples, ok, k=3):
        """The time of the first sample from which k samples in a row are ok."""
        for i in range(len(samples) - k + 1):
            if all(ok(v) for _, v in samples[i:i + k]):
                return samples[i][0]
        return None

    hit = sustained(s, lambda v: v >= 0.9 * solo[0])
    after = [v for t, v in s if start + 1000 <= t <= end - 200]
    kept = sum(1 for v in after if v >= 0.9 * solo[0]) / len(after) if after else 0.0
    mean_after = sum(after) / len(after) if after else 0.0
    print(f"reaction, streaming starts while batch saturates: 3 samples in a row >= 0.90 of solo "
          f"after {'never' if hit is None else f'{hit - start} ms'}; from +1 s to its end "
          f"{kept:.0%} of samples >= 0.90 of solo, mean {mean_after / solo[0]:.2f} of solo")
    bins = {}
    for i in range(1, 5):
        for t, v in iops_log(d, f"react.b{i}"):
            bins.setdefault(t // 100, []).append(v)
    agg = sorted((k * 100, sum(v)) for k, v in bins.items() if len(v) == 4)
    back = sustained([(t, v) for t, v in agg if t > end], lambda v: v >= 0.85 * cap)
    during = [v for t, v in agg if start + 1000 <= t <= end - 200]
    print(f"reaction, streaming stops: batch class >= 0.85 of the device for 3 samples "
          f"{'never' if back is None else f'{back - end} ms'} after streaming's last sample; "
          f"batch while streaming ran (from +1 s): mean {sum(during) / max(1, len(during)) / cap:.2f} of the device")


if __name__ == "__main__":
    main()
