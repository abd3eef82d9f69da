#!/usr/bin/env bash
# The main job on the embedded RAM default: tidepool-perf for 5 s on a null bdev and on a
# 128 MiB malloc bdev, one reactor, 4 KiB random reads at queue depth 128.
# Extra arguments go to both runs (for example: scripts/demo.sh -t 10 -w randwrite).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tidepool-perf
for cfg in etc/perf-null.json etc/perf-malloc.json; do
  echo "== tidepool-perf -c $cfg -q 128 -o 4096 -w randread -t 5 $*"
  ./target/release/tidepool-perf -c "$cfg" -q 128 -o 4096 -w randread -t 5 "$@"
done
