#!/usr/bin/env bash
# A soak of the engine simulator (engine/src/sim): runs seeds one after another in release
# mode, printing seeds per second, client operations and faults per seed, and what it found
# (every 1000 seeds and at the end). A failing seed stops the soak with the command that
# replays it.
#
#   scripts/sim.sh --seeds 100000      # that many seeds
#   scripts/sim.sh --minutes 10        # as many seeds as fit
#   scripts/sim.sh --seeds 500 --first 7000   # from seed 7000 (default: from the clock)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: $0 (--seeds N | --minutes M) [--first SEED]" >&2
    exit 2
}

seeds="" minutes="" first=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) [ $# -ge 2 ] || usage; seeds="$2"; shift 2 ;;
        --minutes) [ $# -ge 2 ] || usage; minutes="$2"; shift 2 ;;
        --first) [ $# -ge 2 ] || usage; first="$2"; shift 2 ;;
        *) usage ;;
    esac
done
[ -n "$seeds$minutes" ] || usage
for v in "$seeds" "$minutes" "$first"; do
    [[ -z "$v" || "$v" =~ ^[0-9]+$ ]] || { echo "$0: '$v' is not a number" >&2; exit 2; }
done

export TIDEPOOL_SIM_SEEDS="$seeds" TIDEPOOL_SIM_MINUTES="$minutes" TIDEPOOL_SIM_FIRST="$first"
[ -n "$seeds" ] || unset TIDEPOOL_SIM_SEEDS
[ -n "$minutes" ] || unset TIDEPOOL_SIM_MINUTES
[ -n "$first" ] || unset TIDEPOOL_SIM_FIRST
exec cargo test --release -p tidepool --lib \
    sim::tests::simulated_engine_keeps_every_acknowledged_write_under_faults -- --nocapture
