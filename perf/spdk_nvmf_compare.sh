#!/usr/bin/env bash
# tidepoold's NVMe/TCP target against SPDK's own (nvmf_tgt), driven by SPDK's userspace
# initiator, for BENCHMARKS.md (between the "nvmf-spdk" markers).
#
# SPDK is not part of this project and nothing here builds it: give the path of an existing
# SPDK build (its build/bin holds nvmf_tgt, spdk_nvme_perf, spdk_nvme_identify and
# spdk_nvme_discover, and its scripts/rpc.py configures nvmf_tgt). Without one the script
# says so and exits 2.
#
# First SPDK's tools are pointed at tidepoold's target: spdk_nvme_identify and
# spdk_nvme_discover must succeed and name the subsystem; and tidepool's initiator at SPDK's
# target: `tidepool-perf -w verify` on a malloc namespace of nvmf_tgt, with no error. Then, in
# rounds, alternating, `spdk_nvme_perf -c 0x2` and `tidepool-perf --cores 1` (core 1) each run
# 4 KiB randread q16 against each target on core 0,
# each serving a null bdev (512-byte blocks, 1 GiB): `tidepoold --cores 0` and
# `nvmf_tgt -m 0x1 -u` (no PCI scan). Medians, with p99 and every round; the ratio is
# tidepool / SPDK.
#
#   perf/spdk_nvmf_compare.sh SPDK_DIR [SECONDS] [ROUNDS]      defaults: 10 s, 3 rounds
# Env: SPDK_APP_ARGS: extra arguments for every SPDK app (e.g. "--no-huge -s 1024" where no
#      hugepages can be had); OUT (default BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
SPDK=${1:-}
T=${2:-10}
ROUNDS=${3:-3}
OUT=${OUT:-BENCHMARKS.md}
APP_ARGS=${SPDK_APP_ARGS:-}
if [ -z "$SPDK" ] || [ ! -x "$SPDK/build/bin/nvmf_tgt" ] || [ ! -x "$SPDK/build/bin/spdk_nvme_perf" ]; then
  echo "spdk_nvmf_compare: no SPDK build given (want SPDK_DIR/build/bin/nvmf_tgt and spdk_nvme_perf)." >&2
  echo "  Build SPDK elsewhere (it is not part of this project), then: $0 /path/to/spdk" >&2
  exit 2
fi
BIN=$SPDK/build/bin
RPC=$SPDK/scripts/rpc.py
NQN=nqn.2016-06.io.tidepool:spdk-compare
TP_PORT=4431
SPDK_PORT=4432

cargo build --release -p tidepool-tools -p tidepool-perf
TP=./target/release
RES=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null
  rm -rf "$RES"
}
# Both targets live on core 0, and nvmf_tgt polls it flat out even when idle: the target not
# being measured is stopped (SIGSTOP) for the run, so that each has core 0 to itself.
only() {
  if [ "$1" = tidepool ]; then kill -STOP "$SPDK_PID"; kill -CONT "$TP_PID"; else kill -STOP "$TP_PID"; kill -CONT "$SPDK_PID"; fi
}
trap cleanup EXIT
wait_port() { for _ in $(seq 1 1000); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.02; done; echo "nothing on port $1" >&2; exit 1; }
trid() { echo "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$1 subnqn:$NQN"; }

cat >"$RES/tp.json" <<J
{"subsystems":[
 {"subsystem":"bdev","config":[
  {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":512}}]},
 {"subsystem":"nvmf","config":[
  {"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
  {"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true,"serial_number":"TP0001"}},
  {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"Null0"}}},
  {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":
    {"trtype":"tcp","adrfam":"ipv4","traddr":"127.0.0.1","trsvcid":"$TP_PORT"}}}]}]}
J
"$TP/tidepoold" --cores 0 -r "$RES/tp.sock" -L warn --json "$RES/tp.json" &
TP_PID=$!
PIDS+=($TP_PID)
# shellcheck disable=SC2086
"$BIN/nvmf_tgt" -m 0x1 -u -r "$RES/spdk.sock" $APP_ARGS >"$RES/nvmf_tgt.log" 2>&1 &
SPDK_PID=$!
PIDS+=($SPDK_PID)
for _ in $(seq 1 500); do [ -S "$RES/spdk.sock" ] && break; sleep 0.02; done
rpc() { python3 "$RPC" -s "$RES/spdk.sock" "$@" >/dev/null; }
rpc nvmf_create_transport -t TCP
rpc bdev_null_create Null0 1024 512
rpc nvmf_create_subsystem "$NQN" -a -s SPDK0001
rpc nvmf_subsystem_add_ns "$NQN" Null0
rpc nvmf_subsystem_add_listener "$NQN" -t tcp -a 127.0.0.1 -s "$SPDK_PORT"
VNQN=nqn.2016-06.io.tidepool:spdk-verify
rpc bdev_malloc_create -b Malloc0 64 512
rpc nvmf_create_subsystem "$VNQN" -a -s SPDK0002
rpc nvmf_subsystem_add_ns "$VNQN" Malloc0
rpc nvmf_subsystem_add_listener "$VNQN" -t tcp -a 127.0.0.1 -s "$SPDK_PORT"
# attach_config FILE NQN PORT: a tidepool-perf config attaching NQN at PORT as bdev Rn1.
attach_config() {
  cat >"$1" <<J
{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_nvme_attach_controller","params":{"name":"R","trtype":"TCP","adrfam":"IPv4",
   "traddr":"127.0.0.1","trsvcid":"$3","subnqn":"$2"}}]}]}
J
}
attach_config "$RES/tp-tidepool.json" "$NQN" "$TP_PORT"
attach_config "$RES/tp-spdk.json" "$NQN" "$SPDK_PORT"
attach_config "$RES/tp-verify.json" "$VNQN" "$SPDK_PORT"
wait_port "$TP_PORT"
wait_port "$SPDK_PORT"

# SPDK's tools against tidepoold's target.
only tidepool
# shellcheck disable=SC2086
"$BIN/spdk_nvme_identify" $APP_ARGS -r "$(trid $TP_PORT)" >"$RES/identify.txt" 2>&1 ||
  { cat "$RES/identify.txt"; echo "spdk_nvme_identify failed against tidepoold" >&2; exit 1; }
grep -q "$NQN" "$RES/identify.txt" || { cat "$RES/identify.txt"; exit 1; }
# (spdk_nvme_discover prints the log, then waits for change notices until it gets SIGINT.)
# shellcheck disable=SC2086
timeout --preserve-status -s INT 5 "$BIN/spdk_nvme_discover" $APP_ARGS \
  -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$TP_PORT" >"$RES/discover.txt" 2>&1 ||
  { cat "$RES/discover.txt"; echo "spdk_nvme_discover failed" >&2; exit 1; }
grep -q "$NQN" "$RES/discover.txt" || { cat "$RES/discover.txt"; exit 1; }
echo "== spdk_nvme_identify and spdk_nvme_discover name $NQN on tidepoold's target"
only spdk
for size in 4096 131072; do
  "$TP/tidepool-perf" --cores 1 -c "$RES/tp-verify.json" -w verify -q 8 -o "$size" -t 3 \
    >"$RES/verify_$size.txt" 2>&1 || { cat "$RES/verify_$size.txt"; echo "tidepool's verify on nvmf_tgt failed" >&2; exit 1; }
done
echo "== tidepool-perf -w verify on nvmf_tgt's malloc namespace: no error at 4 KiB and 128 KiB"

for r in $(seq 1 "$ROUNDS"); do
  for target in tidepool spdk; do
    port=$TP_PORT; [ "$target" = spdk ] && port=$SPDK_PORT
    only "$target"
    echo "== round $r/$ROUNDS: spdk_nvme_perf against $target"
    # shellcheck disable=SC2086
    "$BIN/spdk_nvme_perf" $APP_ARGS -c 0x2 -q 16 -o 4096 -w randread -t "$T" -L \
      -r "$(trid "$port")" >"$RES/${target}_r$r.txt" 2>&1 ||
      { cat "$RES/${target}_r$r.txt"; exit 1; }
    grep '^Total' "$RES/${target}_r$r.txt"
    echo "== round $r/$ROUNDS: tidepool-perf against $target"
    "$TP/tidepool-perf" --cores 1 -c "$RES/tp-$target.json" -w randread -q 16 -o 4096 -t "$T" \
      --json "$RES/tp_${target}_r$r.json" >"$RES/tp_${target}_r$r.txt" 2>&1 ||
      { cat "$RES/tp_${target}_r$r.txt"; exit 1; }
  done
done

python3 - "$RES" "$OUT" "$T" "$ROUNDS" <<'PY'
import json, os, re, statistics, sys
res, out, T, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def run(target, r):
    text = open(f"{res}/{target}_r{r}.txt").read()
    total = next(l for l in text.splitlines() if l.startswith("Total"))
    iops = float(total.split(":", 1)[1].split()[0])
    p99 = re.search(r"99\.00000%\s*:\s*([\d.]+)us", text)
    return {"iops": iops, "p99": float(p99.group(1)) if p99 else float("nan")}
def run_tp(target, r):
    t = json.load(open(f"{res}/tp_{target}_r{r}.json"))["total"]
    return {"iops": t["iops"], "p99": t["latency_us"]["p99"]}
med = statistics.median
def row(label, get):
    figs = {t: [get(t, r) for r in range(1, rounds + 1)] for t in ("tidepool", "spdk")}
    m = {t: med([x["iops"] for x in figs[t]]) for t in figs}
    cells = [f"{m[t]/1e3:.1f} K (p99 {med([x['p99'] for x in figs[t]]):.0f} us; "
             + ", ".join(f"{x['iops']/1e3:.1f} K" for x in figs[t]) + ")" for t in ("tidepool", "spdk")]
    return f"| {label} | {cells[0]} | {cells[1]} | {m['tidepool']/m['spdk']:.2f}x |"
rows = [row("spdk_nvme_perf, 4 KiB randread, q16", run),
        row("tidepool-perf (tidepool's initiator), 4 KiB randread, q16", run_tp)]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
section = f"""<!-- nvmf-spdk:begin -->
## NVMe/TCP target: tidepoold against SPDK's nvmf_tgt, driven by SPDK's initiator (issue 29)

Produced by `perf/spdk_nvmf_compare.sh SPDK_DIR {T} {rounds}` on one machine ({os.cpu_count()} cores,
{cpu}), with an SPDK build made for the measurement only (not part of the project).
`spdk_nvme_identify` and `spdk_nvme_discover` first read tidepoold's target (both must name the
subsystem), and tidepool's initiator runs `tidepool-perf -w verify` on a malloc namespace of
nvmf_tgt at 4 KiB and 128 KiB with no error. Then `spdk_nvme_perf -c 0x2 -q 16 -o 4096 -w randread
-t {T}` and `tidepool-perf --cores 1 -q 16 -o 4096 -w randread -t {T}` (core 1) against each
target on core 0 serving a 1 GiB null bdev: `tidepoold --cores 0` and `nvmf_tgt -m 0x1 -u`,
alternating, the other target stopped (SIGSTOP: nvmf_tgt polls its core even when idle),
{rounds} rounds; medians, with p99 and every round.

| initiator, row | target: tidepoold | target: SPDK nvmf_tgt | tidepoold / nvmf_tgt |
| --- | --- | --- | --- |
""" + "\n".join(rows) + """
<!-- nvmf-spdk:end -->"""
sys.path.insert(0, "perf")
from bench_section import put_section
put_section(out, "nvmf-spdk", section)
PY
