#!/usr/bin/env bash
# NVMe/TCP targets side by side in the QEMU guest: the Linux kernel's initiator, driven by
# fio's io_uring engine, against tidepoold's target on a null bdev and against the kernel's
# own nvmet-tcp on null_blk, over loopback, alternated in one run (tests/vm/guest/bench_nvmf.sh).
#
#   perf/nvmf_guest_bench.sh [SECONDS_PER_RUN] [ROUNDS]      defaults: 5 s, 3 rounds
#
# Prints a table of medians per row (4 KiB randread and randwrite at q1, q16, q128; 1 MiB read
# at q4): IOPS and p99 completion latency of each target, and tidepool's IOPS over the
# kernel's (target: >= 1.0x on every row). The guest is emulated (TCG): only the ratios, taken
# in one guest, mean anything. Needs the release binaries (cargo build --release --workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-5}
ROUNDS=${2:-3}
. perf/guest_bench.sh
guest_bench bench_nvmf.sh "$T" "$ROUNDS"
grep -o 'BENCH .*' "$LOG" | sort -u | python3 -c '
import sys, statistics, collections
runs = collections.defaultdict(list)
for line in sys.stdin:
    f = line.split()
    kv = dict(x.split("=") for x in f[4:])
    runs[(f[1], f[2])].append((float(kv["iops"]), float(kv["p99_us"])))
rows = ["randread-4k-q1", "randread-4k-q16", "randread-4k-q128", "randwrite-4k-q1",
        "randwrite-4k-q16", "randwrite-4k-q128", "read-1m-q4"]
print("| row | tidepool IOPS | kernel IOPS | tidepool / kernel | tidepool p99 us | kernel p99 us | runs |")
print("| --- | --- | --- | --- | --- | --- | --- |")
met = True
for r in rows:
    t, k = runs[("tidepool", r)], runs[("kernel", r)]
    if not t or not k:
        sys.exit("no figures for " + r)
    ti, ki = statistics.median(i for i, _ in t), statistics.median(i for i, _ in k)
    tp, kp = statistics.median(p for _, p in t), statistics.median(p for _, p in k)
    met &= ti >= ki
    print(f"| {r} | {ti:,.0f} | {ki:,.0f} | {ti / ki:.2f}x | {tp:,.0f} | {kp:,.0f} | {len(t)} |")
print()
print("target: tidepool >= 1.0x the kernel target on every row:", "met" if met else "NOT met")
'
