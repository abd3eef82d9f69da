#!/usr/bin/env bash
# Where the volume's time goes, against raw devices: `perf record` of the reactor threads
# during the commands of perf/volume_compare.sh, printed as reactor nanoseconds per I/O by
# function, raw and volume side by side. Writes nothing.
#
#   perf/volume_profile.sh [WORKLOAD] [SECONDS] [STATE]
#       defaults: randread, 2 s, any state. STATE far or close waits for a reactor ping that
#       reads it, pings again between the raw and the volume run and after them, and keeps
#       the pair only if every ping read STATE (see volume_by_state.sh); it gives up after
#       300 pings or 10 pairs.
#
# Samples cpu-clock at 8 kHz on the threads named reactor_*. Each sample's period is the CPU
# time it stands for, in ns (so a throttled sample rate does not skew the figures); a
# function's periods, divided by the run's I/Os, are its reactor nanoseconds per I/O. Set-up
# done on the reactors (the pool's formatting) is in them too, a few ns per I/O. The copy
# (`__memmove*`) is the malloc bdev's work; everything else is the engine's and the benchmark
# job's. Prints the 20 functions whose time differs most between raw and volume.
# Instructions are counted without noise by perf/router_instructions.sh; this is time.
# linux-perf is installed from Debian if `perf` is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-randread}
T=${2:-2}
STATE=${3:-any}
. perf/volume_common.sh
case "$STATE" in far | close | any) ;; *) echo "STATE must be far, close or any, not '$STATE'" >&2; exit 2 ;; esac
if ! command -v perf >/dev/null; then
  echo "== installing linux-perf"
  apt-get update -qq || { echo "apt-get update failed" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
cargo build --release -p tidepool-perf
PERF=./target/release/tidepool-perf
RES=$(mktemp -d)
trap 'rm -rf "$RES"' EXIT
RATE=8000

# perf's own messages go to $RES/NAME.perf.log, printed if it fails.
profile() {
  local name=$1; shift
  if ! perf record -q --no-buildid-cache -e cpu-clock -F "$RATE" -o "$RES/$name.data" -- \
    "$PERF" "$@" -m 0x3 -q 128 -o 4096 -w "$W" -t "$T" --json "$RES/$name.json" \
    >/dev/null 2>"$RES/$name.perf.log"; then
    cat "$RES/$name.perf.log" >&2
    exit 1
  fi
  perf report -i "$RES/$name.data" --no-children --sort comm,symbol -F period,comm,symbol \
    --stdio 2>>"$RES/$name.perf.log" >"$RES/$name.txt" || { cat "$RES/$name.perf.log" >&2; exit 1; }
}

# Waits for STATE, at most 300 pings in all; fails when they run out.
pings_left=300
wait_for_state() {
  while [ "$pings_left" -gt 0 ]; do
    pings_left=$((pings_left - 1))
    in_state && return 0
    sleep 1
  done
  echo "no moment in the '$STATE' state within 300 pings" >&2
  exit 1
}

kept=0
for _ in $(seq 1 10); do
  wait_for_state
  profile raw -c "$RAW_CFG"
  if in_state; then
    profile volume -c "$VOLUME_CFG" -C -b vol0
    if in_state; then kept=1; break; fi
  fi
  echo "== the state changed during the pair; again"
done
[ "$kept" = 1 ] || { echo "no pair stayed in state $STATE" >&2; exit 1; }

python3 - "$RES" "$T" "$W" "$STATE" <<'PY'
import json, os, sys
sys.path.insert(0, "perf")
from by_function import print_side_by_side
res, seconds, workload, state = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
def per_io(name):
    ios = json.load(open(os.path.join(res, name + ".json")))["total"]["iops"] * seconds
    by_fn = {}
    for line in open(os.path.join(res, name + ".txt")):
        parts = line.split(None, 3)
        if len(parts) < 4 or not parts[0].isdigit() or not parts[1].startswith("reactor_"):
            continue
        fn = parts[3].strip()[:70]
        by_fn[fn] = by_fn.get(fn, 0) + int(parts[0]) / ios
    return ios / seconds, by_fn
raw_iops, raw = per_io("raw")
vol_iops, vol = per_io("volume")
copy = lambda d: sum(v for k, v in d.items() if "memmove" in k or "memcpy" in k)
total = lambda d: sum(d.values())
print(f"\n4 KiB {workload} q128 x2, {seconds:g} s, state {state}: raw {raw_iops / 1e6:.2f} M IOPS, "
      f"volume {vol_iops / 1e6:.2f} M ({vol_iops / raw_iops:.2f}x)")
print(f"reactor ns per I/O: raw {total(raw):.0f} (copy {copy(raw):.0f}), volume {total(vol):.0f} "
      f"(copy {copy(vol):.0f}); the volume adds {total(vol) - copy(vol) - total(raw) + copy(raw):.0f} "
      f"outside the copy")
print_side_by_side(raw, vol, "reactor ns per I/O", 20)
PY
