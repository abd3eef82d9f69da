#!/usr/bin/env bash
# A soak of the engine simulator (engine/src/sim): runs seeds one after another in release
# mode, printing seeds per second, client operations and faults per seed, and what it found
# (every 1000 seeds and at the end). A failing seed stops the soak with the command that
# replays it.
#
#   scripts/sim.sh --seeds 100000      # that many seeds
#   scripts/sim.sh --minutes 10        # as many seeds as fit
#   scripts/sim.sh --seeds 500 --first 7000   # from seed 7000 (default: from the clock)
#   scripts/sim.sh --seeds 100000 --record    # and write the result into BENCHMARKS.md
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: $0 (--seeds N | --minutes M) [--first SEED] [--record]" >&2
    exit 2
}

seeds="" minutes="" first="" record=""
args="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) [ $# -ge 2 ] || usage; seeds="$2"; shift 2 ;;
        --minutes) [ $# -ge 2 ] || usage; minutes="$2"; shift 2 ;;
        --first) [ $# -ge 2 ] || usage; first="$2"; shift 2 ;;
        --record) record=1; shift ;;
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
run() {
    cargo test --release -p tidepool --lib \
        sim::tests::simulated_engine_keeps_every_acknowledged_write_under_faults -- --nocapture
}
[ -n "$record" ] || { run; exit; }

if [ -n "${TIDEPOOL_SIM_LOG:-}" ]; then
    # Record a soak already run (its output in that file) instead of running one.
    log="$TIDEPOOL_SIM_LOG"
    rc=0
else
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    set +e
    run 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
fi
totals=$(grep '^simulator: ' "$log" | tail -n 1 || true)
first_seed=$(grep '^simulator soak: first seed' "$log" | head -n 1 | sed 's/.*first seed //' || true)
found=$(grep -E '^simulation seed [0-9]+ (failed|panicked)|^replay: ' "$log" | head -n 2 | tr '\n' ' ' || true)
[ -n "$found" ] || found="nothing (every seed passed)"
section=$(mktemp)
{
    echo "<!-- sim:begin -->"
    echo "## Simulator soak (issue 26)"
    echo
    echo "Produced by \`scripts/sim.sh $args\` on $(date -u +%Y-%m-%d) (first seed $first_seed), on one"
    echo "core of this machine; the engine simulator (\`engine/src/sim\`), release build."
    echo
    echo "    $totals"
    echo
    echo "Found: $found"
    echo "<!-- sim:end -->"
} > "$section"
if grep -q '^<!-- sim:begin -->' BENCHMARKS.md; then
    awk -v f="$section" '
        /^<!-- sim:begin -->/ { while ((getline l < f) > 0) print l; skip = 1; next }
        /^<!-- sim:end -->/ { skip = 0; next }
        !skip { print }' BENCHMARKS.md > BENCHMARKS.md.new
    mv BENCHMARKS.md.new BENCHMARKS.md
else
    { echo; cat "$section"; } >> BENCHMARKS.md
fi
rm -f "$section"
echo "recorded in BENCHMARKS.md"
exit "$rc"
