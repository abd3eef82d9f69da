#!/usr/bin/env bash
# "Migration under load" for BENCHMARKS.md (between the "migration" markers): tidepool-perf
# drives a volume on one reactor while the hottest shard is copied to the other member,
# uncapped; the figures come from the run's timeline and from migration_get_status.
#
#   perf/migration_bench.sh [SECONDS] [INTERVAL_MS]      defaults: 8 s, 2 ms
#
# and, for the other cases perf/NOTES.md records (defaults in brackets):
#   DELAY_US=N   members: delay bdevs of N us (average and p99, reads and writes) over
#                malloc [100]; 0: the malloc members themselves
#   SHARD_MIB=N  shard size [256]      CAP_MIB=N  migration max_mib_per_s [0: none]
#   MIX=N        read percentage [70]  QD=N       queue depth [64]
#
# Volume: 1 GiB in 256 MiB shards on a pool of two 1280 MiB members (each a delay bdev of
# 100 us over malloc: a device whose latency, not the reactor's CPU, bounds the client, as
# an NVMe drive at queue depth 64 does); one reactor on core 0 runs the I/O (4 KiB random,
# 70 % reads, q64) and the copy; core 1 is left to the control plane (tidepool-perf's RPC
# server, the migration driver, tpctl), as a storage host keeps its control plane off the
# reactors' cores: on this 2-core machine a tpctl process landing on a reactor's core
# stalls it for milliseconds. At 3 s the script asks load_get_stats for the hottest shard
# and moves it (shard_migrate --target-bdev). On malloc members the reactor is CPU-bound,
# and what a copy costs its clients is the copy's CPU share, mirrored or not (perf/NOTES.md).
#
# Phases: before the move, the copy, the commit, after. The target compares the p99 of
# every I/O completed during the copy (the intervals wholly inside it, their latency
# histograms merged) with the p99 of every I/O before the move: exact percentiles of the
# two populations, not the worst of a few intervals against a typical one (on this VM the
# worst interval of the steady phase alone is 2-3x its median).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-8}
STEP=${2:-2}
OUT=${OUT:-BENCHMARKS.md}
PLOT=${PLOT:-perf/migration.svg}
cargo build --release -p tidepool-perf -p tidepool-tools
RES=$(mktemp -d); echo "== results in $RES"
trap '[ -n "${KEEP:-}" ] || rm -rf "$RES"' EXIT

# DELAY_US=N: the members are delay bdevs over the malloc ones (N us average and p99 on
# every read and write), a device with latency, on which a mirrored write's two halves
# overlap in time rather than only in the reactor's work.
DELAY_US=${DELAY_US:-100}
M0=Malloc0 M1=Malloc1 DELAYS=""
if [ "$DELAY_US" != 0 ]; then
  M0=Delay0 M1=Delay1
  for i in 0 1; do
    DELAYS="$DELAYS,
  {\"method\":\"bdev_delay_create\",\"params\":{\"base_bdev_name\":\"Malloc$i\",\"name\":\"Delay$i\",\"avg_read_latency\":$DELAY_US,\"p99_read_latency\":$DELAY_US,\"avg_write_latency\":$DELAY_US,\"p99_write_latency\":$DELAY_US}}"
  done
fi
cat > "$RES/cfg.json" <<J
{"subsystems":[
 {"subsystem":"bdev","config":[
  {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":327680,"block_size":4096}},
  {"method":"bdev_malloc_create","params":{"name":"Malloc1","num_blocks":327680,"block_size":4096}}$DELAYS]},
 {"subsystem":"pool","config":[
  {"method":"migration_set_options","params":{"max_mib_per_s":${CAP_MIB:-0}}},
  {"method":"pool_create","params":{"name":"pool0","base_bdevs":["$M0","$M1"],"shard_size_mib":${SHARD_MIB:-256}}},
  {"method":"volume_create","params":{"pool":"pool0","name":"vol0","size_mib":1024}}]}]}
J
TP=./target/release
tpctl() { taskset -c 1 "$TP/tpctl" "$@"; }
"$TP/tidepool-perf" -c "$RES/cfg.json" -b vol0 -m 0x1 -q "${QD:-64}" -o 4096 -w randrw -M "${MIX:-70}" -t "$T" \
  -r "$RES/perf.sock" --timeline "$RES/timeline.json" --timeline-plot "$PLOT" \
  --timeline-interval-ms "$STEP" --json "$RES/perf.json" > "$RES/perf.txt" &
PERF=$!
for _ in $(seq 1 500); do [ -S "$RES/perf.sock" ] && break; sleep 0.02; done
sleep 3
tpctl -s "$RES/perf.sock" load_get_stats --top 1 > "$RES/load.json"
read -r SHARD FROM < <(python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['shards'][0]; print(s['shard'], s['bdev'])" "$RES/load.json")
TO=$M1; [ "$FROM" = "$M1" ] && TO=$M0
echo "== moving hot shard $SHARD from $FROM to $TO"
tpctl -s "$RES/perf.sock" shard_migrate vol0 "$SHARD" --target-bdev "$TO" --wait
tpctl -s "$RES/perf.sock" migration_get_status -n vol0 > "$RES/migration.json"
wait $PERF

KIND="malloc bdevs"
[ "$DELAY_US" != 0 ] && KIND="delay bdevs of $DELAY_US us (average and p99) over malloc"
CAP="uncapped"
[ "${CAP_MIB:-0}" != 0 ] && CAP="capped at $CAP_MIB MiB/s"
CASE="the members are $KIND, the shards ${SHARD_MIB:-256} MiB, the copy $CAP"
python3 - "$RES" "$OUT" "$T" "$STEP" "$PLOT" "$SHARD" "$FROM" "$TO" "$CASE" "${MIX:-70}" "${QD:-64}" <<'PY'
import json, statistics, sys
sys.path.insert(0, "perf")
from bench_section import put_section
res, out, T, step, plot, shard, src, dst, case, mix, qd = sys.argv[1:12]
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
def merged(ps):
    # Every interval's (latency ns, count) pairs, summed: the phase's own distribution.
    counts = {}
    for p in ps:
        for v, c in p["latency_ns"]:
            counts[v] = counts.get(v, 0) + c
    return sorted(counts.items())
def quantile(hist, q):
    total = sum(c for _, c in hist)
    if total == 0:
        return float("nan")
    want, seen = q * total, 0
    for v, c in hist:
        seen += c
        if seen >= want:
            return v / 1000.0
    return hist[-1][0] / 1000.0
inside = [p for p in tl["points"] if p["t_s"] * 1000 - iv >= start and p["t_s"] * 1000 <= copied]
exact = {"before": merged(phase["before"]), "during the copy": merged(inside),
         "after": merged(phase["after"])}
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
steady = quantile(exact["before"], 0.99)
during = quantile(exact["during the copy"], 0.99)
ratio = during / steady
ratio999 = quantile(exact["during the copy"], 0.999) / quantile(exact["before"], 0.999)
exact_rows = []
for name, h in exact.items():
    n = sum(c for _, c in h)
    exact_rows.append(f"| {name} | {n} | {quantile(h, 0.5):.1f} | {quantile(h, 0.99):.1f} | "
                      f"{quantile(h, 0.999):.1f} |")
rate = mig["bytes_total"] / max(mig["copy_ms"], 1e-3) * 1000 / 2**30
errors = perf["total"]["errors"]
v = lambda ok: "met" if ok else "NOT met"
section = f"""<!-- migration:begin -->
## Migration under load (`perf/migration_bench.sh {T} {step}`)

`tidepool-perf -c cfg.json -b vol0 -m 0x1 -q {qd} -o 4096 -w randrw -M {mix} -t {T} -r SOCK
--timeline timeline.json --timeline-interval-ms {step}`: a 1 GiB volume on two 1280 MiB
members; {case}. One reactor on core 0 does the I/O and the copy, core 1 is left to the
control plane (tpctl runs under `taskset -c 1`). At 3 s the hottest shard (load_get_stats:
shard {shard}) is copied from {src} to {dst} with `tpctl shard_migrate vol0 {shard}
--target-bdev {dst} --wait`; a write to the shard during the copy is mirrored, both halves
at once.

Every I/O of each phase (the copy: the {step} ms intervals wholly inside it):

| phase | I/Os | p50 us | p99 us | p99.9 us |
| --- | --- | --- | --- | --- |
{chr(10).join(exact_rows)}

Per {step} ms interval, the median interval (and the worst one) of each phase:

| phase | intervals | IOPS | p50 us | p99 us | p99.9 us |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

- migration: {mig['bytes_total'] / 2**20:.0f} MiB copied in {mig['copy_ms']:.1f} ms,
  **{rate:.2f} GiB/s** (target >= 1 GiB/s: {v(rate >= 1.0)}); then the commit (the shard's writes
  held while the target is flushed, the placement persisted and the route flipped) took
  {mig['elapsed_ms'] - mig['copy_ms']:.1f} ms; restarts {mig['restarts']}; state {mig['state']}
- p99 of the I/Os during the copy / p99 of the I/Os before the move:
  {during:.1f} / {steady:.1f} us = **{ratio:.2f}x** (target <= 1.25x: {v(ratio <= 1.25)});
  p99.9 {ratio999:.2f}x
- client errors: **{errors}** (target 0: {v(errors == 0)})
- plot: `{plot}` (IOPS above, p50/p99/p99.9 below, the route flip marked)
<!-- migration:end -->"""
put_section(out, "migration", section)
PY
