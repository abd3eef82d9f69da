#!/usr/bin/env bash
# The NVMe/TCP transport's cost on one host, for BENCHMARKS.md (between the "nvmf-loopback"
# markers): tidepool-perf on an NVMe/TCP bdev (tidepool's initiator, attached over 127.0.0.1
# to tidepoold's target serving a malloc bdev), against tidepool-perf on a malloc bdev of its own
# (what the target's bdev does without the transport).
#   - target: `tidepoold --cores 0` serving a 1 GiB malloc bdev (4 KiB blocks; its pages are
#     populated when it is made, so no row pays first-touch faults);
#   - initiator and direct runs: `tidepool-perf --cores 1`, one job, one reactor.
# Rows: 4 KiB randread and randwrite at q1, q16, q128; 1 MiB sequential read at q4. Each round
# runs every row over TCP and directly, side by side; the table gives medians, with p99, and
# the ratio TCP / direct.
#
#   perf/nvmf_loopback_bench.sh [SECONDS] [ROUNDS]      defaults: 5 s, 3 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-5}
ROUNDS=${2:-3}
OUT=${OUT:-BENCHMARKS.md}
PORT=${PORT:-4430}
NQN=nqn.2016-06.io.tidepool:loopback-bench

cargo build --release -p tidepool-tools -p tidepool-perf
TP=./target/release
RES=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$RES"; }
trap cleanup EXIT

cat >"$RES/target.json" <<J
{"subsystems":[
 {"subsystem":"bdev","config":[
  {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":262144,"block_size":4096}}]},
 {"subsystem":"nvmf","config":[
  {"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
  {"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true}},
  {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"Malloc0"}}},
  {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":
    {"trtype":"tcp","adrfam":"ipv4","traddr":"127.0.0.1","trsvcid":"$PORT"}}}]}]}
J
cat >"$RES/tcp.json" <<J
{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_nvme_attach_controller","params":{"name":"R","trtype":"TCP","adrfam":"IPv4",
   "traddr":"127.0.0.1","trsvcid":"$PORT","subnqn":"$NQN"}}]}]}
J
cat >"$RES/direct.json" <<J
{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":262144,"block_size":4096}}]}]}
J

"$TP/tidepoold" --cores 0 -r "$RES/t.sock" -L warn --json "$RES/target.json" &
PIDS+=($!)
for _ in $(seq 1 500); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.02; done

ROWS=("randread 4096 1" "randread 4096 16" "randread 4096 128" "randwrite 4096 1"
  "randwrite 4096 16" "randwrite 4096 128" "read 1048576 4")
for r in $(seq 1 "$ROUNDS"); do
  for row in "${ROWS[@]}"; do
    set -- $row
    for how in tcp direct; do
      echo "== round $r/$ROUNDS: $how -w $1 -o $2 -q $3"
      "$TP/tidepool-perf" --cores 1 -c "$RES/$how.json" -w "$1" -o "$2" -q "$3" -t "$T" \
        --json "$RES/${how}_$1_$2_$3_r$r.json" >"$RES/${how}_$1_$2_$3_r$r.txt" 2>&1 ||
        { cat "$RES/${how}_$1_$2_$3_r$r.txt"; exit 1; }
    done
  done
done

python3 - "$RES" "$OUT" "$T" "$ROUNDS" "$PORT" <<'PY'
import json, os, statistics, sys
res, out, T, rounds, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
rows = [("randread", 4096, 1), ("randread", 4096, 16), ("randread", 4096, 128),
        ("randwrite", 4096, 1), ("randwrite", 4096, 16), ("randwrite", 4096, 128),
        ("read", 1048576, 4)]
def run(how, rw, bs, q, r):
    t = json.load(open(f"{res}/{how}_{rw}_{bs}_{q}_r{r}.json"))["total"]
    return {"iops": t["iops"], "mib": t["mib_per_s"], "p99": t["latency_us"]["p99"]}
med = statistics.median
lines = []
for rw, bs, q in rows:
    big = bs >= 1 << 20
    key = "mib" if big else "iops"
    show = (lambda v: f"{v/1024:.2f} GiB/s") if big else (lambda v: f"{v/1e3:.1f} K")
    figs = {h: [run(h, rw, bs, q, r) for r in range(1, rounds + 1)] for h in ("tcp", "direct")}
    m = {h: med([x[key] for x in figs[h]]) for h in figs}
    cells = [f"{show(m[h])} (p99 {med([x['p99'] for x in figs[h]]):.0f} us; "
             + ", ".join(show(x[key]) for x in figs[h]) + ")" for h in ("tcp", "direct")]
    label = f"{'1 MiB' if big else '4 KiB'} {rw}, q{q}"
    lines.append(f"| {label} | {cells[0]} | {cells[1]} | {m['tcp']/m['direct']:.2f}x |")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
section = f"""<!-- nvmf-loopback:begin -->
## NVMe/TCP on one host: tidepool's initiator against tidepool's target (issue 29)

Produced by `perf/nvmf_loopback_bench.sh {T} {rounds}` on one machine ({os.cpu_count()} cores, {cpu}).
Target: `tidepoold --cores 0` serving a 1 GiB malloc bdev over NVMe/TCP on 127.0.0.1:{port}.
"TCP": `tidepool-perf --cores 1 -t {T}` on the bdev `bdev_nvme_attach_controller -t tcp` makes
of it (one I/O queue, no digests). "Direct": the same tidepool-perf on a malloc bdev of its own.
The ratio is the transport's cost: two sockets, the target's reactor and the copies between.
{rounds} rounds, each running every row both ways; medians, with p99 and every round.

| row | over NVMe/TCP | direct | TCP / direct |
| --- | --- | --- | --- |
""" + "\n".join(lines) + """
<!-- nvmf-loopback:end -->"""
sys.path.insert(0, "perf")
from bench_section import put_section
put_section(out, "nvmf-loopback", section)
PY
