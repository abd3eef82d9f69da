#!/usr/bin/env bash
# The volume against raw devices, in one of this machine's two states only: prints the ratio
# per group and its median; writes nothing.
#
#   perf/volume_by_state.sh STATE [GROUPS] [SECONDS_PER_RUN] [WORKLOAD]
#       STATE: far or close; defaults: 4 groups, 1.5 s, randwrite
#
# perf/volume_compare.sh explains the states: a reactor ping's median round trip is about
# 0.28 us when the two cores are close and 1.2-1.3 us when they are far apart, and it changes
# within seconds. This script waits for a ping that reads STATE, runs raw, volume, volume,
# raw (the commands and configs of volume_compare.sh), and keeps the group only if pings
# between and after its runs read STATE too. It gives up after 300 pings.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${1:?usage: perf/volume_by_state.sh far|close [GROUPS] [SECONDS] [WORKLOAD]}
GROUPS_WANTED=${2:-4}
T=${3:-1.5}
W=${4:-randwrite}
. perf/volume_common.sh
case "$STATE" in far | close) ;; *) echo "STATE must be far or close, not '$STATE'" >&2; exit 2 ;; esac
cargo build --release -p tidepool-perf
PERF=./target/release/tidepool-perf
RES=$(mktemp -d)
trap 'rm -rf "$RES"' EXIT

iops() { "$PERF" "$@" -t "$T" -q 128 -o 4096 -m 0x3 -w "$W" --json "$RES/run.json" >/dev/null
         python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["total"]["iops"])' "$RES/run.json"; }
raw() { iops -c "$RAW_CFG"; }
vol() { iops -c "$VOLUME_CFG" -C -b vol0; }

ratios=()
for _ in $(seq 1 300); do
  in_state || { sleep 1; continue; }
  r1=$(raw); v1=$(vol); in_state || continue
  v2=$(vol); r2=$(raw); in_state || continue
  q=$(python3 -c 'import sys; r1,v1,v2,r2 = map(float, sys.argv[1:]); print(f"{(v1 + v2) / (r1 + r2):.3f}")' "$r1" "$v1" "$v2" "$r2")
  python3 -c 'import sys; r1,v1,v2,r2 = (float(x) / 1e6 for x in sys.argv[2:]); print(f"{sys.argv[1]}: raw {r1:.2f} {r2:.2f} M, volume {v1:.2f} {v2:.2f} M, volume / raw {(v1 + v2) / (r1 + r2):.3f}")' "$STATE" "$r1" "$v1" "$v2" "$r2"
  ratios+=("$q")
  [ "${#ratios[@]}" -ge "$GROUPS_WANTED" ] && break
done
if [ "${#ratios[@]}" -eq 0 ]; then
  echo "no moment in the '$STATE' state within 300 pings" >&2
  exit 1
fi
python3 -c 'import statistics,sys; print(f"{sys.argv[1]} {sys.argv[2]}: volume / raw median {statistics.median(map(float, sys.argv[3:])):.3f} over {len(sys.argv) - 3} groups")' "$STATE" "$W" "${ratios[@]}"
