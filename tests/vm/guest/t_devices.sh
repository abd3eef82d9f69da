#!/bin/sh
# Smoke test of the guest's set-up (busybox sh, run by main.sh with /tp/env exported).
#
# Checks, each of which fails the test on its own: tpvfio0 is on vfio-pci and its
# /dev/vfio/<group> exists; tppoll0 has poll queues (io_poll 1) and a direct 4 KiB write then
# direct read round-trips a random pattern; the kernel makes one try per command
# (nvme_core.max_retries 0); a direct write to tpfault0 where its blkdebug rules fail writes
# fails, while a read there still works and tppoll0 keeps working afterwards; fio runs polled
# io_uring writes with verification on tppoll0; the glibc binaries run in this guest.
set -u

TEST=t_devices
. /tp/guest/check.sh

# --- tpvfio0 on vfio-pci -------------------------------------------------------------------
pci=/sys/bus/pci/devices/$TP_VFIO_BDF
driver=$(basename "$(readlink "$pci/driver" 2>/dev/null)" 2>/dev/null)
check "$TP_VFIO_BDF is on vfio-pci (its driver: '$driver')" [ "$driver" = vfio-pci ]
group=$(basename "$(readlink "$pci/iommu_group" 2>/dev/null)" 2>/dev/null)
check "TP_VFIO_GROUP ($TP_VFIO_GROUP) is $TP_VFIO_BDF's IOMMU group ('$group')" \
    [ "/dev/vfio/$group" = "$TP_VFIO_GROUP" ]
check "$TP_VFIO_GROUP is a character device" [ -c "$TP_VFIO_GROUP" ]
check "/dev/vfio/vfio is a character device" [ -c /dev/vfio/vfio ]
check "vfio_iommu_type1 is loaded" grep -q '^vfio_iommu_type1 ' /proc/modules

# --- tppoll0: poll queues and a round trip ---------------------------------------------------
poll=$(cat "/sys/block/${TP_POLL_DEV#/dev/}/queue/io_poll" 2>/dev/null)
check "$TP_POLL_DEV has poll queues (io_poll reads '$poll')" [ "$poll" = 1 ]
retries=$(cat /sys/module/nvme_core/parameters/max_retries 2>/dev/null)
check "nvme_core.max_retries is 0 (reads '$retries')" [ "$retries" = 0 ]
check "$TP_POLL_CTRL is a character device" [ -c "$TP_POLL_CTRL" ]
check "$TP_FAULT_CTRL is a character device" [ -c "$TP_FAULT_CTRL" ]

# round_trip DEV BLOCK: writes a fresh random 4 KiB pattern at 4 KiB block BLOCK with O_DIRECT,
# reads it back with O_DIRECT (from the device, not the page cache) and compares.
round_trip() {
    dd if=/dev/urandom of=pattern bs=4096 count=1 status=none &&
        dd if=pattern of="$1" bs=4096 seek="$2" count=1 oflag=direct status=none &&
        dd if="$1" of=back bs=4096 skip="$2" count=1 iflag=direct status=none &&
        cmp pattern back
}
check "a direct 4 KiB write then read round-trips on $TP_POLL_DEV" round_trip "$TP_POLL_DEV" 256

# fio (the benchmarks' load generator) runs here, and polled io_uring I/O verifies on tppoll0.
fio_verify() {
    fio --name=poll --filename="$TP_POLL_DEV" --ioengine=io_uring --hipri --direct=1 \
        --rw=randwrite --bs=4k --iodepth=4 --offset=1M --size=1M --verify=crc32c \
        --verify_fatal=1 --output-format=terse >fio.out 2>&1 || { cat fio.out; return 1; }
}
check "fio: polled io_uring randwrite with crc32c verify on $TP_POLL_DEV" fio_verify

# --- tpfault0: a write where the rules fail writes ---------------------------------------------
# The first block that a rule names (sector = "N"); a rule without a sector fails every write.
sector=$(sed -n 's/^[[:space:]]*sector[[:space:]]*=[[:space:]]*"\{0,1\}\([0-9]*\)"\{0,1\}.*/\1/p' "$TP_FAULT_RULES" | head -n 1)
block=$(( ${sector:-0} / 8 ))
dd if=/dev/urandom of=pattern bs=4096 count=1 status=none
write_fails() {
    if dd if=pattern of="$TP_FAULT_DEV" bs=4096 seek="$block" count=1 oflag=direct status=none \
        2>fault.err; then
        return 1
    fi
    echo "t_devices: the write failed as it should: $(cat fault.err)"
}
check "a direct write to $TP_FAULT_DEV block $block fails (its rules fail writes there)" write_fails
check "a direct read of $TP_FAULT_DEV block $block works (the rules fail writes only)" \
    dd if="$TP_FAULT_DEV" of=back bs=4096 skip="$block" count=1 iflag=direct status=none
check "$TP_POLL_DEV still round-trips after the fault on $TP_FAULT_DEV" round_trip "$TP_POLL_DEV" 257

# --- the glibc binaries run here ---------------------------------------------------------------
# helps BIN: BIN --help succeeds and prints its usage.
helps() {
    if out=$("$1" --help 2>&1) && echo "$out" | grep -q '^Usage:'; then
        return 0
    fi
    echo "$out"
    return 1
}
for bin in tidepoold tpctl tidepool-perf; do
    check "$bin --help runs" helps "$TP_BIN_DIR/$bin"
done

[ "$failures" -eq 0 ] || { echo "t_devices: $failures check(s) failed"; exit 1; }
