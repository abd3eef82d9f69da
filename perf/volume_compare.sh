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
#
# This VM's two cores are sometimes close together and sometimes far apart (see the section's
# text), and the ratio depends on which. A reactor ping (`--bench ping`, 0.3 s) before and after
# each raw/volume pair labels the pair: close when both round trips are under
# FAR_PING_US, far when both are over it, mixed otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-5}
ROUNDS=${2:-6}
. perf/volume_common.sh
OUT=${OUT:-BENCHMARKS.md}
cargo build --release -p tidepool-perf
PERF=./target/release/tidepool-perf
RES=$(mktemp -d)
trap 'rm -rf "$RES"' EXIT

tp() { local out=$1; shift; "$PERF" "$@" -t "$T" -q 128 -o 4096 -m 0x3 --json "$out" >/dev/null; }
ping() { "$PERF" --bench ping -t 0.3 -m 0x3 --json "$1" >/dev/null; }
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS"
  for w in randread randwrite; do
    ping "$RES/pre_${w}_$r.json"
    tp "$RES/raw_${w}_$r.json" -c "$RAW_CFG" -w "$w"
    tp "$RES/vol_${w}_$r.json" -c "$VOLUME_CFG" -w "$w" -C -b vol0
    ping "$RES/post_${w}_$r.json"
  done
done

python3 - "$RES" "$OUT" "$T" "$ROUNDS" "$FAR_PING_US" "$RAW_CFG" "$VOLUME_CFG" <<'PY'
import glob, json, os, statistics, sys
sys.path.insert(0, "perf")
from bench_section import put_section
res, out, T, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
far_us = float(sys.argv[5])
raw_cfg, volume_cfg = sys.argv[6], sys.argv[7]
def runs(pattern):
    # In round order, so that raw and volume runs of one round pair up.
    paths = glob.glob(os.path.join(res, pattern))
    paths.sort(key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
    return [json.load(open(p)) for p in paths]
rows, per_round = [], []
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
    # Each pair's state, from the reactor pings around it.
    p50 = lambda d: d["ping"]["latency_us"]["p50"]
    pings = [(p50(a), p50(b)) for a, b in zip(runs(f"pre_{w}_*.json"), runs(f"post_{w}_*.json"))]
    states = ["far" if min(p) > far_us else "close" if max(p) < far_us else "mixed"
              for p in pings]
    def by_state(state):
        xs = [x for x, s in zip(ratios, states) if s == state]
        return f"{statistics.median(xs):.2f}x ({len(xs)})" if xs else "-"
    each = ", ".join(f"{x:.2f} {s}" for x, s in zip(ratios, states))
    per_round.append(f"- {w}, raw / volume per round (M IOPS), reactor ping p50 before / after (us): "
        + ", ".join(f"{r['total']['iops']/1e6:.2f} / {v['total']['iops']/1e6:.2f} ({a:.2f} / {b:.2f})"
                    for r, v, (a, b) in zip(raw, vol, pings)))
    rows.append(f"| 4 KiB {w} q128 x2 | {raw_iops/1e6:.2f} M | {vol_iops/1e6:.2f} M | {each} | "
                f"**{ratio:.2f}x** (>= 0.8x {verdict}) | {by_state('close')} | {by_state('far')} | "
                f"{crossed:.1f}% | {raw_p99:.0f} / {vol_p99:.0f} us |")
section = f"""<!-- volume:begin -->
## Volume against raw devices (`perf/volume_compare.sh {T} {rounds}`)

Two reactors (`-m 0x3`), 4 KiB random I/O, q128 per reactor, {T} s per run, {rounds} rounds;
each round runs raw then volume back to back, and the ratio is the median of the rounds'
ratios (this machine's speed drifts by more than 10 % between minutes).

- Raw: `tidepool-perf -c {raw_cfg} -m 0x3 -q 128 -o 4096 -w W`, two 512 MiB
  malloc bdevs, one job on each reactor.
- Volume: `tidepool-perf -c {volume_cfg} -m 0x3 -C -b vol0 -q 128 -o 4096 -w W`,
  a 1 GiB volume
  (16 shards of 64 MiB) on a pool of two malloc members, one job on each reactor, each over
  its half of the volume. A piece of I/O whose shard the other reactor owns crosses the rings
  there and back ("crossed").

Each round is labelled close or far by a reactor ping before and after it: this VM's two
vCPUs move between near and far apart, and a crossing costs more far apart (how to read the
rounds, and what a crossing costs: `perf/NOTES.md`, volume).

| workload | raw total (median) | volume total (median) | volume / raw, each round | volume / raw (median) | close rounds (median, count) | far rounds (median, count) | crossed reactors | p99 raw / volume |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

{chr(10).join(per_round)}
<!-- volume:end -->"""
put_section(out, "volume", section)
PY
