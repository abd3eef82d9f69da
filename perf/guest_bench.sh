# Sourced by perf/nvme_guest_bench.sh and perf/nvmf_guest_bench.sh (bash, from the repo root).
# guest_bench SCRIPT SECONDS ROUNDS: runs tests/vm/guest/SCRIPT in the test guest (QEMU, TCG)
# with BENCH_SECONDS and BENCH_ROUNDS (other BENCH_* variables pass through run.sh), prints
# the header line (the calling script, its arguments, the time and the commit), and leaves
# the guest's output in $LOG (deleted at exit); on a failed run it shows the end and exits 1.
guest_bench() {
    local script=$1 seconds=$2 rounds=$3 caller
    caller=$(basename "$0")
    LOG=$(mktemp)
    trap 'rm -f "$LOG"' EXIT
    BENCH_SECONDS=$seconds BENCH_ROUNDS=$rounds TP_VM_TEST_TIMEOUT=500 \
        tests/vm/run.sh --scripts "$script" --timeout 540 >"$LOG" 2>&1 \
        || { tail -40 "$LOG"; echo "${caller%.sh}: the guest run failed" >&2; exit 1; }
    echo "perf/$caller $seconds $rounds  ($(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD))"
}
