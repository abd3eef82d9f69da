#!/usr/bin/env bash
# NVMe paths side by side in the QEMU guest: the userspace driver's bdev, the polled uring bdev
# on the kernel driver, and fio's io_uring engine with hipri, on ONE emulated controller, 4 KiB
# random reads and writes at queue depth 32 on one core (tests/vm/guest/bench_nvme.sh).
#
#   perf/nvme_guest_bench.sh [SECONDS_PER_RUN] [ROUNDS]      defaults: 5 s, 3 rounds
#
# Prints a table of medians: IOPS, CPU time per I/O (the process's user+sys over its I/Os,
# start-up included), and each path's ratio to fio. The devices are emulated (TCG): only the
# ratios, taken in one guest on one controller, mean anything; the absolute figures say nothing
# about real hardware. Needs the release binaries (cargo build --release --workspace --bins).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-5}
ROUNDS=${2:-3}
. perf/guest_bench.sh
guest_bench bench_nvme.sh "$T" "$ROUNDS"
grep -o 'BENCH .*' "$LOG" | sort -u | python3 -c '
import sys, statistics, collections
runs = collections.defaultdict(list)
for line in sys.stdin:
    f = line.split()
    kv = dict(x.split("=") for x in f[4:])
    iops, cpu, secs = float(kv["iops"]), float(kv["cpu_s"]), float(kv["seconds"])
    ios = iops * secs
    runs[(f[1], f[2])].append((iops, cpu / ios * 1e6 if ios else float("inf")))
print("| workload | path | IOPS (median) | CPU us per I/O (median) | IOPS vs fio | CPU per I/O vs fio | runs |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for w in ("randread", "randwrite"):
    med = {p: (statistics.median(i for i, _ in runs[(p, w)]), statistics.median(c for _, c in runs[(p, w)]))
           for p in ("nvme", "iopoll", "fio") if runs[(p, w)]}
    if "fio" not in med:
        sys.exit("no fio figures for " + w)
    fi, fc = med["fio"]
    for p, (i, c) in med.items():
        print(f"| {w} q32 4k | {p} | {i:,.0f} | {c:.1f} | {i / fi:.2f}x | {c / fc:.2f}x | {len(runs[(p, w)])} |")
'
