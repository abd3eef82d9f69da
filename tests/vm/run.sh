#!/usr/bin/env bash
# Runs the guest tests: boots a QEMU guest (TCG, q35 with an emulated Intel IOMMU) that has
# three emulated NVMe controllers, runs tests/vm/guest/t_*.sh and any test executables given,
# and exits 0 only if the guest reported that every one of them passed.
#
# Usage: tests/vm/run.sh [--test-bin PATH | --cargo-test NAME]... [--test-arg ARG]...
#                        [--fault-rules FILE | --fault-sectors A-B] [--scripts GLOB]
#                        [--timeout SECONDS]
#   --test-bin PATH     a test executable (e.g. target/release/deps/guest_nvme-HASH), copied to
#                       /tp/release/deps/ in the guest, beside the release binaries, and run
#                       there with --test-threads=1 and the --test-arg ARGs (repeatable)
#   --cargo-test NAME   the same for the workspace's integration test target NAME, built first
#                       (cargo test --release --workspace --test NAME --no-run) to find its path
#   --test-arg ARG      one more argument for every test executable (e.g. a test name filter)
#   --fault-rules FILE  blkdebug rules for tpfault0 (default: env TP_VM_FAULT_RULES), e.g.
#                       with once = "on" to fail only the first write to a sector
#   --fault-sectors A-B every write to tpfault0 that touches a 512-byte sector in A..B fails
#                       with EIO (one blkdebug rule per sector, at most 4096); reads do not.
#                       The default when no rules file is given: 0-127, its first 64 KiB
#   --scripts GLOB      which tests/vm/guest scripts run (default t_*.sh; "none" for none)
#   --timeout SECONDS   hard limit on the whole QEMU run (default env TP_VM_TIMEOUT, else 540);
#                       QEMU is killed when it passes, and the run fails
# Env: BENCH_SECONDS and BENCH_ROUNDS go to the guest (benchmark scripts),
#      TP_VM_TEST_TIMEOUT (per guest test, default 300 s), TP_VM_KEEP=1 keeps the scratch dir,
#      TP_VM_APPEND adds to the kernel command line (e.g. loglevel=7 for the whole boot log).
#
# Contract: setup.sh first (installs what is missing); the release binaries in target/release
# are used as they are (built only if missing: scripts/test.sh builds before this). Each run
# has its own scratch dir under target/vm/runs with its own image files (QEMU write-locks
# them), so two runs can go at once. The guest console streams to this terminal; the guest's
# per-test PASS/FAIL lines and its exit status come back over a second serial port. Exits
# non-zero if a guest test failed, the guest never reported, or the run timed out.
set -euo pipefail
CALLER=$PWD
cd "$(dirname "$0")/../.."
ROOT=$PWD
VM=$ROOT/target/vm
HERE=$ROOT/tests/vm

die() { echo "vm: FAILED: $*" >&2; exit 1; }
# Paths given on the command line are taken from where the caller stands.
from_caller() { case "$1" in /*) echo "$1" ;; *) echo "$CALLER/$1" ;; esac; }
usage() { sed -n '/^# Usage:/,/^# Env:/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

test_bins=()
cargo_tests=()
test_args=()
fault_rules=
[ -z "${TP_VM_FAULT_RULES:-}" ] || fault_rules=$(from_caller "$TP_VM_FAULT_RULES")
fault_sectors=0-127
scripts='t_*.sh'
timeout_s=${TP_VM_TIMEOUT:-540}
while [ $# -gt 0 ]; do
    case "$1" in
        --test-bin) [ $# -ge 2 ] || usage; test_bins+=("$(from_caller "$2")"); shift 2 ;;
        --cargo-test) [ $# -ge 2 ] || usage; cargo_tests+=("$2"); shift 2 ;;
        --test-arg) [ $# -ge 2 ] || usage; test_args+=("$2"); shift 2 ;;
        --fault-rules) [ $# -ge 2 ] || usage; fault_rules=$(from_caller "$2"); shift 2 ;;
        --fault-sectors) [ $# -ge 2 ] || usage; fault_rules=; fault_sectors=$2; shift 2 ;;
        --scripts) [ $# -ge 2 ] || usage; scripts=$2; shift 2 ;;
        --timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "vm: unknown argument $1" >&2; usage ;;
    esac
done
[ -z "$fault_rules" ] || [ -f "$fault_rules" ] || die "no fault rules file $fault_rules"
[[ "$fault_sectors" =~ ^([0-9]+)-([0-9]+)$ ]] || die "--fault-sectors takes FIRST-LAST, not $fault_sectors"
first_sector=${BASH_REMATCH[1]} last_sector=${BASH_REMATCH[2]}
if [ "$first_sector" -gt "$last_sector" ] || [ $((last_sector - first_sector)) -ge 4096 ]; then
    die "--fault-sectors $fault_sectors: want FIRST <= LAST and at most 4096 sectors"
fi
for arg in "${test_args[@]}"; do
    [[ "$arg" =~ ^[^[:space:]\'\"]+$ ]] || die "--test-arg '$arg': no spaces or quotes, please"
done
for name in "${cargo_tests[@]}"; do
    echo "vm: cargo test --release --workspace --test $name --no-run"
    exe=$(cargo test --release --workspace --test "$name" --no-run --message-format=json \
        | python3 -c 'import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == sys.argv[1] \
            and "test" in msg["target"]["kind"] and msg.get("executable"):
        print(msg["executable"])' "$name") || die "cannot build test target $name"
    [ -n "$exe" ] || die "cargo named no executable for test target $name"
    test_bins+=("$exe")
done
for bin in "${test_bins[@]}"; do
    [ -x "$bin" ] || die "test executable $bin is missing or not executable"
done

"$HERE/setup.sh"

RELEASE_BINS=(tidepoold tpctl tidepool-perf)
for bin in "${RELEASE_BINS[@]}"; do
    if [ ! -x "target/release/$bin" ]; then
        echo "vm: target/release/$bin is missing: cargo build --release --workspace --bins"
        cargo build --release --workspace --bins
        break
    fi
done

mkdir -p "$VM/runs"
RUN=$(mktemp -d "$VM/runs/run.XXXXXX")
qemu_pid=
cleanup() {
    [ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null || true
    rm -f "$RUN"/*.img
    [ "${TP_VM_KEEP:-0}" = 1 ] || rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# blkdebug's inject-error rule fails a request that covers its one sector; a range is a rule per
# sector. event write_aio is the one the raw format driver raises on its child for each write.
if [ -z "$fault_rules" ]; then
    fault_rules=$RUN/fault.rules
    for ((sector = first_sector; sector <= last_sector; sector++)); do
        printf '[inject-error]\nevent = "write_aio"\niotype = "write"\nerrno = "5"\nsector = "%d"\n\n' "$sector"
    done >"$fault_rules"
fi

# --- the per-run archive ---------------------------------------------------------------------
# Release binaries in /tp/release, test executables in /tp/release/deps (so the tests' bin_dir,
# current_exe/../.., is /tp/release), with their shared libraries, the guest scripts, the
# repo's scripts/*.sh in /tp/scripts (setup_nvme.sh runs in the guest too) and this run's
# parameters. It goes after base.cpio and fio.cpio as a third cpio archive.
t0=$(date +%s%N)
stage=$RUN/stage
mkdir -p "$stage"/tp/{release/deps,guest,scripts}
elfs=()
for bin in "${RELEASE_BINS[@]}"; do
    elfs+=("target/release/$bin" "tp/release/$bin")
done
bin_names=
for bin in "${test_bins[@]}"; do
    elfs+=("$bin" "tp/release/deps/${bin##*/}")
    bin_names="$bin_names ${bin##*/}"
done
"$HERE/closure.sh" "$stage" "${elfs[@]}"
cp "$HERE/guest/init" "$stage/init"
cp "$HERE"/guest/*.sh "$stage/tp/guest/"
cp scripts/*.sh "$stage/tp/scripts/"
cp "$fault_rules" "$stage/tp/fault.rules"
[ "$scripts" != none ] || scripts=no-scripts
cat >"$stage/tp/run.env" <<ENV
export TP_TEST_BINS='${bin_names# }'
export TP_GUEST_SCRIPTS='$scripts'
export TP_TEST_ARGS='${test_args[*]}'
export TP_TEST_TIMEOUT=${TP_VM_TEST_TIMEOUT:-300}
ENV
# BENCH_* settings reach the guest's benchmark scripts (perf/nvme_guest_bench.sh sets them).
for var in BENCH_SECONDS BENCH_ROUNDS BENCH_NO_PARK BENCH_TP_CPU; do
    val=${!var:-}
    [[ "$val" =~ ^[0-9]*$ ]] || die "$var must be a whole number, not '$val'"
    [ -z "$val" ] || echo "export $var=$val" >>"$stage/tp/run.env"
done
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$RUN/run.cpio"
cat "$VM/base.cpio" "$VM/fio.cpio" "$RUN/run.cpio" >"$RUN/initrd.cpio"
rm -rf "$stage"
t1=$(date +%s%N)
echo "vm: per-run archive $(( $(stat -c %s "$RUN/run.cpio") / 1024 )) KiB in $(( (t1 - t0) / 1000000 )) ms"

# --- the guest -------------------------------------------------------------------------------
for disk in vfio0 poll0 fault0; do
    truncate -s 256M "$RUN/$disk.img"
done
# init_on_alloc=0: Debian zeroes pages as they are allocated, which made reserving the
# hugepages take 3 s under TCG (40 ms without).
cmdline="console=ttyS0 quiet panic=-1 init_on_alloc=0 intel_iommu=on iommu=pt nvme.poll_queues=2 nvme_core.max_retries=0 ${TP_VM_APPEND:-}"
# shellcheck disable=SC2054 # the commas are QEMU's option syntax
qemu=(
    qemu-system-x86_64 -machine q35,kernel-irqchip=split -accel tcg -cpu max -smp 2 -m 2G
    -nodefaults -display none -no-reboot
    # The IOMMU comes before the devices it translates.
    -device intel-iommu,intremap=on,caching-mode=on,aw-bits=48
    -kernel "$VM/kernel/current/vmlinux" -initrd "$RUN/initrd.cpio" -append "$cmdline"
    -serial "file:$RUN/console.log" -serial "file:$RUN/result.log"
    -drive "file=$RUN/vfio0.img,format=raw,if=none,id=vfio0"
    -device nvme,serial=tpvfio0,drive=vfio0
    -drive "file=$RUN/poll0.img,format=raw,if=none,id=poll0"
    -device nvme,serial=tppoll0,drive=poll0
    # blkdebug sits under the raw format driver, or its rules never fire.
    -drive "driver=raw,file.driver=blkdebug,file.config=$fault_rules,file.image.filename=$RUN/fault0.img,if=none,id=fault0"
    -device nvme,serial=tpfault0,drive=fault0
)
echo "vm: booting (scratch $RUN, limit ${timeout_s}s)"
: >"$RUN/console.log"
t2=$(date +%s%N)
timeout --kill-after=10 "$timeout_s" "${qemu[@]}" </dev/null >"$RUN/qemu.out" 2>&1 &
qemu_pid=$!
# The console, as it comes; tail ends once QEMU has gone and it has printed the rest.
tail -s 0.2 -n +1 -f --pid="$qemu_pid" "$RUN/console.log" | sed -u 's/\r$//; s/^/guest| /'
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=
t3=$(date +%s%N)
echo "vm: QEMU ran $(( (t3 - t2) / 1000000 )) ms, exit $qemu_rc"

tr -d '\r' <"$RUN/result.log" >"$RUN/result.txt"
# The guest's PASS/FAIL lines, then its "N passed, N failed" line as it is.
grep -E '^(PASS|FAIL) ' "$RUN/result.txt" | sed 's/^/vm: /' || true
grep -E '^guest: ' "$RUN/result.txt" || true
if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
    TP_VM_KEEP=1
    die "the guest did not finish within ${timeout_s}s; QEMU was killed (logs in $RUN)"
fi
if [ "$qemu_rc" -ne 0 ]; then
    TP_VM_KEEP=1
    cat "$RUN/qemu.out" >&2
    die "QEMU exited with status $qemu_rc (logs in $RUN)"
fi
setup_failed=$(sed -n 's/^TP-SETUP-FAILED //p' "$RUN/result.txt")
[ -z "$setup_failed" ] || { TP_VM_KEEP=1; die "the guest's set-up failed: $setup_failed (logs in $RUN)"; }
guest_rc=$(sed -n 's/^TP-EXIT //p' "$RUN/result.txt" | tail -n 1)
[ -n "$guest_rc" ] || { TP_VM_KEEP=1; die "the guest never reported its exit status (logs in $RUN)"; }
[ "$guest_rc" -eq 0 ] || { TP_VM_KEEP=1; die "guest tests failed (status $guest_rc; logs in $RUN)"; }
echo "vm: all guest tests passed"
