#!/usr/bin/env bash
# NBD figures for BENCHMARKS.md (between the "nbd" markers): one client for all servers, fio's
# nbd ioengine (libnbd), against
#   - tidepoold serving a 1 GiB malloc bdev (one reactor),
#   - nbdkit memory 1G,
#   - qemu-nbd serving a 1 GiB file in /dev/shm,
# with every server pinned to core 0 and fio to core 1, so each server gets the same CPU; and
# nbdkit once more unpinned (its threads free to use both cores, as a user would run it). The
# ratio is against the better nbdkit.
# Rows: 4 KiB randread q16, 4 KiB randwrite q16, 1 MiB sequential read q4. Rounds go through
# every server before the next round starts, so machine noise hits them alike; the table gives
# medians and every round.
#
#   perf/nbd_compare.sh [SECONDS] [ROUNDS]      defaults: 10 s, 3 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-10}
ROUNDS=${2:-3}
OUT=${OUT:-BENCHMARKS.md}

need=()
command -v fio >/dev/null || need+=(fio)
command -v nbdkit >/dev/null || need+=(nbdkit)
command -v qemu-nbd >/dev/null || need+=(qemu-utils)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "this fio has no nbd ioengine" >&2; exit 1; }
cargo build --release -p tidepool-tools

RES=$(mktemp -d)
SHM=/dev/shm/tidepool-nbd-compare.img
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$RES" "$SHM"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 500); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.02; done; echo "nothing on port $1" >&2; exit 1; }

TP=./target/release
taskset -c 0 "$TP/tidepoold" -m 0x1 -r "$RES/d.sock" -L warn &
PIDS+=($!)
for _ in $(seq 1 500); do [ -S "$RES/d.sock" ] && break; sleep 0.02; done
"$TP/tpctl" -s "$RES/d.sock" bdev_malloc_create -b Malloc0 1024 4096 >/dev/null
"$TP/tpctl" -s "$RES/d.sock" nbd_server_start -a 127.0.0.1:10820 >/dev/null
"$TP/tpctl" -s "$RES/d.sock" nbd_export_create m0 Malloc0 >/dev/null
taskset -c 0 nbdkit --foreground --exit-with-parent -p 10821 memory 1G &
PIDS+=($!)
nbdkit --foreground --exit-with-parent -p 10823 memory 1G &
PIDS+=($!)
truncate -s 1G "$SHM"
taskset -c 0 qemu-nbd -f raw -p 10822 -x q -t "$SHM" &
PIDS+=($!)
for port in 10820 10821 10822 10823; do wait_port $port; done

declare -A URI=([tidepool]=nbd://127.0.0.1:10820/m0 [nbdkit]=nbd://127.0.0.1:10821/
  [qemu-nbd]=nbd://127.0.0.1:10822/q [nbdkit-unpinned]=nbd://127.0.0.1:10823/)
# Precondition: write every byte of every export once, so no server pays first-touch page
# faults (malloc, nbdkit's sparse array, tmpfs) inside a measured row.
for server in tidepool nbdkit nbdkit-unpinned qemu-nbd; do
  echo "== preconditioning $server"
  taskset -c 1 fio --name=fill --ioengine=nbd --uri="${URI[$server]}" --rw=write --bs=1m \
    --iodepth=4 --size=1g --output="$RES/fill_$server.txt" >/dev/null
done
ROWS=("randread 4k 16" "randwrite 4k 16" "read 1m 4")
for r in $(seq 1 "$ROUNDS"); do
  for row in "${ROWS[@]}"; do
    set -- $row
    for server in tidepool nbdkit nbdkit-unpinned qemu-nbd; do
      echo "== round $r/$ROUNDS: $server $1 bs=$2 q$3"
      taskset -c 1 fio --name=nbd --ioengine=nbd --uri="${URI[$server]}" --rw="$1" --bs="$2" \
        --iodepth="$3" --size=1g --time_based --runtime="$T" --output-format=json \
        --output="$RES/${server}_$1_r$r.json" >/dev/null
    done
  done
done

python3 - "$RES" "$OUT" "$T" "$ROUNDS" <<'PY'
import json, os, statistics, sys
res, out, T, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
servers = ["tidepool", "nbdkit", "nbdkit-unpinned", "qemu-nbd"]
# (fio --rw, label, the figure that row is judged on: IOPS or bytes/s)
rows = [("randread", "4 KiB random read, q16", "iops"), ("randwrite", "4 KiB random write, q16", "iops"),
        ("read", "1 MiB sequential read, q4", "bw_bytes")]
def run(server, rw, r):
    job = json.load(open(f"{res}/{server}_{rw}_r{r}.json"))["jobs"][0]["write" if rw == "randwrite" else "read"]
    return {"iops": job["iops"], "bw_bytes": job["bw_bytes"], "p99": job["clat_ns"]["percentile"]["99.000000"] / 1000}
med = statistics.median
lines = []
for rw, label, key in rows:
    show = (lambda v: f"{v/1e9:.2f} GB/s") if key == "bw_bytes" else (lambda v: f"{v/1e3:.1f} K")
    figs = {s: [run(s, rw, r) for r in range(1, rounds + 1)] for s in servers}
    median = {s: med([x[key] for x in figs[s]]) for s in servers}
    cells = [f"{show(median[s])} (p99 {med([x['p99'] for x in figs[s]]):.0f} us; "
             + ", ".join(show(x[key]) for x in figs[s]) + ")" for s in servers]
    best_kit = max(median["nbdkit"], median["nbdkit-unpinned"])
    lines.append(f"| {label} | {' | '.join(cells)} | {median['tidepool']/best_kit:.2f}x "
                 f"| {median['tidepool']/median['qemu-nbd']:.2f}x |")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
system_cc = open("/proc/sys/net/ipv4/tcp_congestion_control").read().strip()
section = f"""<!-- nbd:begin -->
## NBD: tidepool against nbdkit and qemu-nbd (issue 6)

Produced by `perf/nbd_compare.sh {T} {rounds}` on one machine ({os.cpu_count()} cores, {cpu}).
One client for every server: `taskset -c 1 fio --ioengine=nbd --uri=URI --size=1g --time_based --runtime={T}`
with the row's `--rw --bs --iodepth`, over TCP on 127.0.0.1. Servers, each pinned to core 0 and
of 1 GiB: `tidepoold -m 0x1` exporting a malloc bdev, `nbdkit memory 1G`, `qemu-nbd -f raw -t`
on a file in /dev/shm; nbdkit also runs unpinned (free to use both cores, fio's included).
Every export is first written once end to end (1 MiB sequential writes), so no row pays
first-touch page faults.
TCP congestion control: the system default here is `{system_cc}`, which nbdkit and qemu-nbd use;
tidepool gives a loopback client one that does not pace (cubic, else reno; `engine/src/nbd/tcp.rs`).
{rounds} rounds, each running every server in turn; medians, with the p99 completion latency and
every round in brackets. "tidepool / nbdkit" is against the better of the two nbdkit runs.

| row | tidepool | nbdkit memory | nbdkit memory, unpinned | qemu-nbd (/dev/shm) | tidepool / nbdkit | tidepool / qemu-nbd |
| --- | --- | --- | --- | --- | --- | --- |
""" + "\n".join(lines) + """
<!-- nbd:end -->"""
sys.path.insert(0, "perf")
from bench_section import put_section
put_section(out, "nbd", section)
PY
