#!/usr/bin/env bash
# A volume against raw devices, side by side in one run, on this machine; writes the figures
# into BENCHMARKS.md (between the "volume" markers; other sections stay).
#
#   perf/volume_compare.sh [SECONDS_PER_RUN] [ROUNDS]      defaults: 5 s, 6 rounds
#
# Volume: a 1 GiB volume in 64 MiB shards on a pool of two 640 MiB malloc members, two
# reactors (-m 0x3), one job per reactor on the volume (-C), q128 each: about half the I/O
# crosses to the other reactor (each shard has one owner). Raw: two 512 MiB malloc bdevs, one
# job per reactor, q128 each: the same 256 I/Os in flight on the same amount of data, with no
# routing. Each round runs raw then volume; the median of the rounds' ratios is reported.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-5}
ROUNDS=${2:-6}
OUT=${OUT:-BENCHMARKS.md}
cargo build --release -p tidepool-perf
PERF=./target/release/tidepool-perf
RES=$(mktemp -d)
trap 'rm -rf "$RES"' EXIT

cat > "$RES/volume.json" <<J
{"subsystems":[
 {"subsystem":"bdev","config":[
  {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":163840,"block_size":4096}},
  {"method":"bdev_malloc_create","params":{"name":"Malloc1","num_blocks":163840,"block_size":4096}}]},
 {"subsystem":"pool","config":[
  {"method":"pool_create","params":{"name":"pool0","base_bdevs":["Malloc0","Malloc1"]}},
  {"method":"volume_create","params":{"pool":"pool0","name":"vol0","size_mib":1024}}]}]}
J
cat > "$RES/raw.json" <<J
{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_malloc_create","params":{"name":"Malloc2","num_blocks":131072,"block_size":4096}},
  {"method":"bdev_malloc_create","params":{"name":"Malloc3","num_blocks":131072,"block_size":4096}}]}]}
J

tp() { local out=$1; shift; "$PERF" "$@" -t "$T" -q 128 -o 4096 -m 0x3 --json "$out" >/dev/null; }
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS"
  for w in randread randwrite; do
    tp "$RES/raw_${w}_$r.json" -c "$RES/raw.json" -w "$w"
    tp "$RES/vol_${w}_$r.json" -c "$RES/volume.json" -w "$w" -C -b vol0
  done
done

python3 - "$RES" "$OUT" "$T" "$ROUNDS" <<'PY'
import glob, json, os, statistics, sys
sys.path.insert(0, "perf")
from bench_section import put_section
res, out, T, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def runs(pattern):
    # In round order, so that raw and volume runs of one round pair up.
    paths = glob.glob(os.path.join(res, pattern))
    paths.sort(key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
    return [json.load(open(p)) for p in paths]
rows = []
for w in ["randread", "randwrite"]:
    raw, vol = runs(f"raw_{w}_*.json"), runs(f"vol_{w}_*.json")
    raw_iops = statistics.median(d["total"]["iops"] for d in raw)
    vol_iops = statistics.median(d["total"]["iops"] for d in vol)
    raw_p99 = statistics.median(d["total"]["latency_us"]["p99"] for d in raw)
    vol_p99 = statistics.median(d["total"]["latency_us"]["p99"] for d in vol)
    crossed = statistics.median(
        100 * d["routing"]["remote"] / max(1, d["routing"]["remote"] + d["routing"]["local"])
        for d in vol)
    # Each round's two runs are back to back: their ratio cancels most of the machine's drift.
    ratios = [v["total"]["iops"] / r["total"]["iops"] for r, v in zip(raw, vol)]
    ratio = statistics.median(ratios)
    verdict = "met" if ratio >= 0.8 else "NOT met"
    each = ", ".join(f"{x:.2f}" for x in ratios)
    rows.append(f"| 4 KiB {w} q128 x2 | {raw_iops/1e6:.2f} M | {vol_iops/1e6:.2f} M | {each} | "
                f"**{ratio:.2f}x** (>= 0.8x {verdict}) | {crossed:.1f}% | {raw_p99:.0f} / {vol_p99:.0f} us |")
section = f"""<!-- volume:begin -->
## Volume against raw devices (`perf/volume_compare.sh {T} {rounds}`)

Two reactors (`-m 0x3`), 4 KiB random I/O, q128 per reactor, {T} s per run, {rounds} rounds;
each round runs raw then volume back to back, and the ratio is the median of the rounds'
ratios (this machine's speed drifts by more than 10 % between minutes).

- Raw: `tidepool-perf -c raw.json -m 0x3 -q 128 -o 4096 -w W`, two 512 MiB malloc bdevs, one job
  on each reactor.
- Volume: `tidepool-perf -c volume.json -m 0x3 -C -b vol0 -q 128 -o 4096 -w W`, a 1 GiB volume
  (16 shards of 64 MiB) on a pool of two malloc members, one job on each reactor, each over
  its half of the volume. A piece of I/O whose shard the other reactor owns crosses the rings
  there and back ("crossed").

What a crossing costs on malloc: the owner copies into (or out of) the buffer of the reactor
that took the request, so the 4 KiB of a crossed request move between the cores' caches, and
the request and its completion each take one ring hop. What keeps that cheap is pipelining: a
reactor pushes its messages every 16 (`SEND_BATCH`) instead of once per iteration, and drains
at most 32 inbox messages per iteration (`inbox_batch`), so the peer starts on a batch while
the sender is still busy, and completions go back after 32 requests rather than 256. With
one batch per iteration each way the volume reached 0.55-0.7x here and 100 % crossing
(`--remote`) on raw malloc 0.45x; a one-shard request is also sent on whole (no parent copy),
which took about 15 % off the router's instructions per I/O (callgrind, 512-byte I/O).

Read the ratio with the machine's state in mind: on the day this was measured, raw
randwrite over two reactors alternated between about 5.3 M (the two vCPUs not scaling fully)
and 7.3 M (scaling fully) from one minute to the next, while the volume stayed at 4.3-4.9 M.
In the fast state the ratio was 0.6-0.7 (three back-to-back pairs: raw 7.57, 7.11, 7.27 M
against volume 4.47, 4.49, 4.27 M). A crossed 4 KiB request costs about 220 ns more than a
local one there (two ring messages of 1.4 cache lines each, and the data's cache lines
moving between cores), and half the requests cross.

| workload | raw total (median) | volume total (median) | volume / raw, each round | volume / raw (median) | crossed reactors | p99 raw / volume |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}
<!-- volume:end -->"""
put_section(out, "volume", section)
PY
