#!/usr/bin/env bash
# "Migration under load" for BENCHMARKS.md (between the "migration" markers): tidepool-perf
# drives a volume on two reactors while the hottest shard is copied to the other member,
# uncapped; the figures come from the run's timeline and from migration_get_status.
#
#   perf/migration_bench.sh [SECONDS] [INTERVAL_MS]      defaults: 8 s, 10 ms
#
# Volume: 1 GiB in 64 MiB shards on a pool of two 1280 MiB malloc members; one reactor on
# core 0 runs the I/O (4 KiB random, 70 % reads, q64) and the copy; core 1 is left to the
# control plane (tidepool-perf's RPC server, the migration driver, tpctl), as a storage host
# keeps its control plane off the reactors' cores: on this 2-core machine a tpctl process
# landing on a reactor's core stalls it for milliseconds. At 3 s the script asks
# load_get_stats for the hottest shard and moves it (shard_migrate --target-bdev).
# Phases: before the move, the copy, the commit, after.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-8}
STEP=${2:-10}
OUT=${OUT:-BENCHMARKS.md}
PLOT=${PLOT:-perf/migration.svg}
cargo build --release -p tidepool-perf -p tidepool-tools
RES=$(mktemp -d); echo "== results in $RES"
trap '[ -n "${KEEP:-}" ] || rm -rf "$RES"' EXIT

cat > "$RES/cfg.json" <<J
{"subsystems":[
 {"subsystem":"bdev","config":[
  {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":327680,"block_size":4096}},
  {"method":"bdev_malloc_create","params":{"name":"Malloc1","num_blocks":327680,"block_size":4096}}]},
 {"subsystem":"pool","config":[
  {"method":"pool_create","params":{"name":"pool0","base_bdevs":["Malloc0","Malloc1"]}},
  {"method":"volume_create","params":{"pool":"pool0","name":"vol0","size_mib":1024}}]}]}
J
TP=./target/release
tpctl() { taskset -c 1 "$TP/tpctl" "$@"; }
"$TP/tidepool-perf" -c "$RES/cfg.json" -b vol0 -m 0x1 -q 64 -o 4096 -w randrw -M 70 -t "$T" \
  -r "$RES/perf.sock" --timeline "$RES/timeline.json" --timeline-plot "$PLOT" \
  --timeline-interval-ms "$STEP" --json "$RES/perf.json" > "$RES/perf.txt" &
PERF=$!
for _ in $(seq 1 500); do [ -S "$RES/perf.sock" ] && break; sleep 0.02; done
sleep 3
tpctl -s "$RES/perf.sock" load_get_stats --top 1 > "$RES/load.json"
read -r SHARD FROM < <(python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['shards'][0]; print(s['shard'], s['bdev'])" "$RES/load.json")
TO=Malloc1; [ "$FROM" = Malloc1 ] && TO=Malloc0
echo "== moving hot shard $SHARD from $FROM to $TO"
tpctl -s "$RES/perf.sock" shard_migrate vol0 "$SHARD" --target-bdev "$TO" --wait
tpctl -s "$RES/perf.sock" migration_get_status -n vol0 > "$RES/migration.json"
wait $PERF

python3 - "$RES" "$OUT" "$T" "$STEP" "$PLOT" "$SHARD" "$FROM" "$TO" <<'PY'
import json, statistics, sys
sys.path.insert(0, "perf")
from bench_section import put_section
res, out, T, step, plot, shard, src, dst = sys.argv[1:9]
tl = json.load(open(f"{res}/timeline.json"))
mig = json.load(open(f"{res}/migration.json"))[0]
perf = json.load(open(f"{res}/perf.json"))
start = mig["started_ms"] - tl["t0_ms"]
copied = start + mig["copy_ms"]
end = start + mig["elapsed_ms"]
iv = tl["interval_ms"]
# An interval ends at t_s; it overlaps the move when it ends after the start and begins
# before the end.
phase = {"before": [], "during the copy": [], "during the commit": [], "after": []}
for p in tl["points"]:
    t1 = p["t_s"] * 1000
    t0 = t1 - iv
    if t1 <= start:
        phase["before"].append(p)
    elif t0 >= end:
        phase["after"].append(p)
    elif t0 < copied:
        phase["during the copy"].append(p)
    else:
        phase["during the commit"].append(p)
def med(ps, k):
    return statistics.median(p[k] for p in ps) if ps else float("nan")
def worst(ps, k):
    return max(p[k] for p in ps) if ps else float("nan")
rows = []
for name in phase:
    ps = phase[name]
    if not ps:
        rows.append(f"| {name} | 0 (shorter than an interval, inside the neighbouring one) | - | - | - | - |")
        continue
    rows.append(f"| {name} | {len(ps)} | {med(ps, 'iops')/1e6:.2f} M | {med(ps, 'p50_us'):.1f} | "
                f"{med(ps, 'p99_us'):.1f} (worst {worst(ps, 'p99_us'):.1f}) | "
                f"{med(ps, 'p999_us'):.1f} (worst {worst(ps, 'p999_us'):.1f}) |")
steady = med(phase["before"], "p99_us")
during = worst(phase["during the copy"], "p99_us")
ratio = during / steady
rate = mig["bytes_total"] / max(mig["copy_ms"], 1e-3) * 1000 / 2**30
errors = perf["total"]["errors"]
v = lambda ok: "met" if ok else "NOT met"
section = f"""<!-- migration:begin -->
## Migration under load (`perf/migration_bench.sh {T} {step}`)

`tidepool-perf -c cfg.json -b vol0 -m 0x1 -q 64 -o 4096 -w randrw -M 70 -t {T} -r SOCK
--timeline timeline.json --timeline-interval-ms {step}`: a 1 GiB volume in 64 MiB shards on
two 1280 MiB malloc members, one reactor on core 0 doing the I/O and the copy, core 1 left to
the control plane (tpctl runs under `taskset -c 1`). At 3 s the hottest shard
(load_get_stats: shard {shard}) is copied from {src} to {dst}, uncapped, with
`tpctl shard_migrate vol0 {shard} --target-bdev {dst} --wait`. Latency per {step} ms interval;
the table gives the median interval (and the worst one) of each phase.

| phase | intervals | IOPS | p50 us | p99 us | p99.9 us |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

- migration: {mig['bytes_total'] / 2**20:.0f} MiB copied in {mig['copy_ms']:.1f} ms,
  **{rate:.2f} GiB/s** (target >= 1 GiB/s: {v(rate >= 1.0)}); then the commit (the shard's writes
  held while the target is flushed, the placement persisted and the route flipped) took
  {mig['elapsed_ms'] - mig['copy_ms']:.1f} ms; restarts {mig['restarts']}; state {mig['state']}
- p99 during the copy (worst interval of the copy) / steady p99 (median interval before):
  {during:.1f} / {steady:.1f} us = **{ratio:.2f}x** (target <= 2x: {v(ratio <= 2.0)})
- client errors: **{errors}** (target 0: {v(errors == 0)})
- plot: `{plot}` (IOPS above, p50/p99/p99.9 below, the route flip marked)
<!-- migration:end -->"""
put_section(out, "migration", section)
PY
