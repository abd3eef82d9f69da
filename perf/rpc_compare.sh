#!/usr/bin/env bash
# Control-plane figures for BENCHMARKS.md (between the "control" markers):
#  1. JSON-RPC round trips (rpc_get_methods) against tidepoold, with 1 and with 8 concurrent
#     clients: calls per second and latency.
#  2. A tidepool-perf I/O job (malloc, 4 KiB randread q32, one reactor on core 0) that also
#     serves JSON-RPC (-r, as bdevperf does), alone and under a flood of 8 RPC clients;
#     rounds alternate, so noise hits both alike. The flood must not disturb the reactor.
#
#   perf/rpc_compare.sh [SECONDS] [ROUNDS]      defaults: 10 s, 3 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-10}
ROUNDS=${2:-3}
OUT=${OUT:-BENCHMARKS.md}
cargo build --release -p tidepool-perf -p tidepool-tools
PERF=./target/release/tidepool-perf
RES=$(mktemp -d)
DAEMON=
cleanup() { [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null; rm -rf "$RES"; }
trap cleanup EXIT
wait_socket() { for _ in $(seq 1 500); do [ -S "$1" ] && return 0; sleep 0.02; done; echo "no socket $1" >&2; exit 1; }

echo "== RPC round trips against tidepoold -m 0x1"
./target/release/tidepoold -m 0x1 -r "$RES/d.sock" -L warn --json etc/tidepool.json &
DAEMON=$!
wait_socket "$RES/d.sock"
"$PERF" --bench rpc --rpc-target "$RES/d.sock" --clients 1 --client-cores 1 -t "$T" --json "$RES/rpc1.json"
"$PERF" --bench rpc --rpc-target "$RES/d.sock" --clients 8 --client-cores 1 -t "$T" --json "$RES/rpc8.json"
kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=

JOB=(-c etc/perf-malloc.json -q 32 -o 4096 -w randread -m 0x1 -t "$T")
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS: I/O alone, then I/O under an RPC flood"
  "$PERF" "${JOB[@]}" -r "$RES/p.sock" --json "$RES/quiet_$r.json" >/dev/null
  "$PERF" "${JOB[@]}" -r "$RES/p.sock" --json "$RES/flood_$r.json" >/dev/null &
  JOBPID=$!
  wait_socket "$RES/p.sock"
  "$PERF" --bench rpc --rpc-target "$RES/p.sock" --clients 8 --client-cores 1 \
    -t "$(python3 -c "print(max(1.0, $T - 1.5))")" --json "$RES/floodrpc_$r.json" >/dev/null
  wait "$JOBPID"
done

python3 - "$RES" "$OUT" "$T" "$ROUNDS" <<'PY'
import glob, json, os, statistics, subprocess, sys
res, out, T, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
load = lambda p: json.load(open(p))
r1, r8 = load(f"{res}/rpc1.json")["rpc"], load(f"{res}/rpc8.json")["rpc"]
def series(kind):
    runs = [load(p)["total"] for p in sorted(glob.glob(f"{res}/{kind}_*.json"))]
    return [x["iops"] for x in runs], [x["latency_us"]["p99"] for x in runs], [x["latency_us"]["p99_9"] for x in runs]
qi, qp, q9 = series("quiet")
fi, fp, f9 = series("flood")
flood_calls = [load(p)["rpc"]["calls_per_s"] for p in sorted(glob.glob(f"{res}/floodrpc_*.json"))]
med = statistics.median
fmt = lambda v, f: ", ".join(f.format(x) for x in v)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
section = f"""<!-- control:begin -->
## Control plane: JSON-RPC (issue 3)

Produced by `perf/rpc_compare.sh {T} {rounds}` on one machine ({os.cpu_count()} cores, {cpu}).
The server keeps its RPC threads off reactor cores when it can (here: reactor on core 0, RPC
threads and the clients on core 1).

| what | command | calls/s | round trip avg | p50 | p99 | p99.9 |
| --- | --- | --- | --- | --- | --- | --- |
| 1 client, `rpc_get_methods` | `tidepool-perf --bench rpc --rpc-target SOCK --clients 1 --client-cores 1 -t {T}` against `tidepoold -m 0x1` | {r1['calls_per_s']:.0f} | {r1['latency_us']['avg']:.1f} us | {r1['latency_us']['p50']:.1f} us | {r1['latency_us']['p99']:.1f} us | {r1['latency_us']['p99_9']:.1f} us |
| 8 clients, `rpc_get_methods` | same, `--clients 8` | {r8['calls_per_s']:.0f} | {r8['latency_us']['avg']:.1f} us | {r8['latency_us']['p50']:.1f} us | {r8['latency_us']['p99']:.1f} us | {r8['latency_us']['p99_9']:.1f} us |

I/O with and without an RPC flood: `tidepool-perf -c etc/perf-malloc.json -q 32 -o 4096 -w randread -m 0x1 -t {T} -r SOCK`,
the flood being `tidepool-perf --bench rpc --rpc-target SOCK --clients 8 --client-cores 1` against that same process
({fmt(flood_calls, '{:.0f}')} calls/s in the flooded rounds). {rounds} alternating rounds; medians, then every round.

| | IOPS | p99 | p99.9 |
| --- | --- | --- | --- |
| alone | {med(qi)/1e6:.3f} M ({fmt(qi, '{:.0f}')}) | {med(qp):.2f} us ({fmt(qp, '{:.2f}')}) | {med(q9):.2f} us ({fmt(q9, '{:.2f}')}) |
| under the flood | {med(fi)/1e6:.3f} M ({fmt(fi, '{:.0f}')}) | {med(fp):.2f} us ({fmt(fp, '{:.2f}')}) | {med(f9):.2f} us ({fmt(f9, '{:.2f}')}) |
| flood / alone | {med(fi)/med(qi):.2f}x | {med(fp)/med(qp):.2f}x | {med(f9)/med(q9):.2f}x |
<!-- control:end -->"""
sys.path.insert(0, "perf")
from bench_section import put_section
put_section(out, "control", section)
PY
