#!/bin/sh
# The guest half of perf/nvme_guest_bench.sh (busybox sh; run by main.sh when run.sh is given
# --scripts bench_nvme.sh). Not a test: it measures.
#
# On ONE controller (tpvfio0), 4 KiB random reads and writes at queue depth 32 on one core,
# through three paths, alternated ROUNDS times so that drift hits all three alike:
#   nvme   tidepool-perf on the userspace driver's bdev (controller on vfio-pci), one reactor;
#   iopoll tidepool-perf on a polled uring bdev on the kernel driver's poll queues;
#   fio    fio's io_uring engine with hipri (polled), on the same namespace, pinned to core 0,
#          with registered files and buffers and submissions in batches of 8.
# The controller moves between vfio-pci and nvme with scripts/setup_nvme.sh between paths.
# For each run it prints one line:
#   BENCH <path> <workload> <round> iops=<N> cpu_s=<user+sys seconds> seconds=<T>
# CPU time is the whole process's (busybox time), start-up included for every path.
# Env: BENCH_SECONDS (default 5), BENCH_ROUNDS (default 2).
set -u
T=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-2}
D=/tp/release
bdf=$TP_VFIO_BDF
cd /tmp

# timed OUT COMMAND...: runs COMMAND with its output in OUT, and its user+sys time in OUT.time.
timed() {
    out=$1
    shift
    /bin/busybox time -p "$@" >"$out" 2>"$out.time"
}
cpu_of() { awk '/^user/ {u=$2} /^sys/ {s=$2} END {printf "%.3f", u + s}' "$1.time"; }
# The block device of our controller's namespace on the kernel driver (the head device
# nvmeYn1 of the path nvmeXcYn1 that native multipath shows under the controller).
namespace() {
    for n in /sys/bus/pci/devices/"$bdf"/nvme/nvme*/nvme*n1; do
        [ -e "$n" ] || continue
        name=$(echo "${n##*/}" | sed 's/c[0-9]*n/n/')
        [ -b "/dev/$name" ] && [ "$(cat "/sys/block/$name/size")" -gt 0 ] && { echo "/dev/$name"; return 0; }
    done
    return 1
}

echo '{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_nvme_attach_controller","params":{"name":"Nvme0","trtype":"PCIe","traddr":"'"$bdf"'"}}]}]}' >nvme.json

failed=0
for round in $(seq 1 "$ROUNDS"); do
    for w in randread randwrite; do
        sh "$TP_SCRIPTS/setup_nvme.sh" config "$bdf" >/dev/null || failed=1
        timed nvme.out "$D/tidepool-perf" -c nvme.json -b Nvme0n1 -w "$w" -q 32 -o 4k -t "$T" -m 0x1 || failed=1
        iops=$(awk '$1 == "Nvme0n1" {print $3}' nvme.out)
        echo "BENCH nvme $w $round iops=${iops:-0} cpu_s=$(cpu_of nvme.out) seconds=$T"

        sh "$TP_SCRIPTS/setup_nvme.sh" reset "$bdf" >/dev/null || failed=1
        i=0
        while ! dev=$(namespace) && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        [ -n "${dev:-}" ] || { echo "bench_nvme: no namespace for $bdf on the kernel driver"; failed=1; continue; }
        echo '{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_uring_create","params":{"name":"Poll0","filename":"'"$dev"'","block_size":512,"iopoll":true}}]}]}' >poll.json
        timed poll.out "$D/tidepool-perf" -c poll.json -b Poll0 -w "$w" -q 32 -o 4k -t "$T" -m 0x1 || failed=1
        iops=$(awk '$1 == "Poll0" {print $3}' poll.out)
        echo "BENCH iopoll $w $round iops=${iops:-0} cpu_s=$(cpu_of poll.out) seconds=$T"

        # fio tuned as a fair opponent: registered files and buffers, submissions in batches
        # (one system call per I/O is dear under emulation, and tidepool batches too).
        timed fio.out fio --name=b --filename="$dev" --ioengine=io_uring --hipri --direct=1 \
            --fixedbufs --registerfiles --iodepth_batch_submit=8 \
            --iodepth_batch_complete_max=32 \
            --rw="$w" --bs=4k --iodepth=32 --runtime="$T" --time_based --cpus_allowed=0 \
            --output-format=terse || failed=1
        # terse v3: field 8 read IOPS, field 49 write IOPS.
        iops=$(awk -F';' '{print ($8 > 0 ? $8 : $49)}' fio.out | head -n 1)
        echo "BENCH fio $w $round iops=${iops:-0} cpu_s=$(cpu_of fio.out) seconds=$T"
    done
done
sh "$TP_SCRIPTS/setup_nvme.sh" config "$bdf" >/dev/null
[ "$failed" -eq 0 ]
