#!/usr/bin/env bash
# Counts the instructions the volume router adds to a request, without the noise of timing:
# valgrind's callgrind runs tidepool-perf on one reactor with null bdevs (no data is copied)
# against one raw null bdev and against a volume of two null members, and prints the
# instructions per I/O of each, and per function where they differ.
#
#   perf/router_instructions.sh [SECONDS]      default: 3 s (under valgrind, ~1-3 M I/Os)
#
# One reactor, so every request is local: this counts the router's own work (the route, the
# one-shard slot, the volume's statistics and shard window), not crossings, whose cost is in
# the lanes and the other core's caches (timed by perf/volume_compare.sh and `--bench lanes`).
# Instructions are not time: they leave out cache misses and stalls, and inlining that saves
# instructions can cost time. Use it to see where work goes, and time any change separately.
# valgrind is installed from Debian if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-3}
if ! command -v valgrind >/dev/null; then
  echo "== installing valgrind"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
cargo build --release -p tidepool-perf
PERF=./target/release/tidepool-perf
RES=$(mktemp -d)
trap 'rm -rf "$RES"' EXIT

run() {
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$RES/$name.out" \
    "$PERF" "$@" -m 0x1 -w randwrite -q 128 -o 4096 -t "$T" --json "$RES/$name.json" \
    >/dev/null 2>"$RES/$name.log" || { cat "$RES/$name.log"; exit 1; }
  callgrind_annotate --threshold=100 --tree=none --auto=no "$RES/$name.out" >"$RES/$name.txt"
}
echo "== raw: one null bdev"
run raw -c etc/perf-null.json -b Null0
echo "== volume: two null members"
run volume -c etc/volume-null-pool.json -b vol0

python3 - "$RES" "$T" <<'PY'
import json, os, re, sys
sys.path.insert(0, "perf")
from by_function import print_side_by_side
res, seconds = sys.argv[1], float(sys.argv[2])
def per_io(name):
    ios = json.load(open(os.path.join(res, name + ".json")))["total"]["iops"] * seconds
    by_fn = {}
    for line in open(os.path.join(res, name + ".txt")):
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(\S.*)", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        fn = re.sub(r" \[.*\]$", "", m.group(2).partition(":")[2])[:90]
        by_fn[fn] = by_fn.get(fn, 0) + int(m.group(1).replace(",", "")) / ios
    return ios, by_fn
raw_ios, raw = per_io("raw")
vol_ios, vol = per_io("volume")
total = lambda d: sum(d.values())
print(f"\ninstructions per I/O (whole process, set-up included): raw {total(raw):.0f} "
      f"({raw_ios / 1e6:.2f} M I/Os), volume {total(vol):.0f} ({vol_ios / 1e6:.2f} M I/Os), "
      f"the router adds {total(vol) - total(raw):.0f}")
print_side_by_side(raw, vol, "self instructions per I/O", 12)
PY
