#!/bin/sh
# Hands NVMe controllers to tidepool's userspace driver and back, in the spirit of SPDK's
# scripts/setup.sh. POSIX sh (it runs under busybox in the test guest too); run as root.
#
# Usage: scripts/setup_nvme.sh config BDF...   bind each controller to vfio-pci (loading
#                                             vfio-pci and vfio_iommu_type1) and reserve
#                                             hugepages (HUGEMEM MiB, default 256)
#        scripts/setup_nvme.sh reset BDF...    give each controller back to the kernel's nvme
#        scripts/setup_nvme.sh status          every NVMe controller: address, driver, IOMMU
#                                             group, block devices, and what holds them
#
# Contract: every BDF is checked before anything changes; a bad one fails the whole call
# with a message naming it, and nothing is rebound. `config` refuses a controller with a
# namespace or partition that is mounted or in use as swap (its data would vanish under the
# filesystem), and `reset` refuses one whose VFIO group a process holds open (a running
# tidepoold with it attached: detach it first). A controller already where it is asked to
# go is left as it is. Exit status 0 only if every controller ended where it was asked to.
set -eu

die() { echo "setup_nvme: $*" >&2; exit 1; }
pci=/sys/bus/pci/devices

driver_of() { [ -e "$pci/$1/driver" ] && basename "$(readlink "$pci/$1/driver")" || echo none; }
group_of() { [ -e "$pci/$1/iommu_group" ] && basename "$(readlink "$pci/$1/iommu_group")" || echo none; }

# The block devices of a controller on the kernel's driver: namespaces and their partitions.
blocks_of() {
    for ns in "$pci/$1"/nvme/nvme*/nvme*n*; do
        [ -e "$ns" ] || continue
        b=$(basename "$ns")
        echo "$b"
        for part in "$ns/$b"p*; do
            [ -e "$part" ] && basename "$part"
        done
    done
    return 0
}

# What uses a block device: a mount point or swap, or nothing.
holder_of_block() {
    if grep -q "^/dev/$1 " /proc/mounts 2>/dev/null; then
        echo "mounted on $(grep "^/dev/$1 " /proc/mounts | cut -d' ' -f2 | head -n 1)"
    elif grep -q "^/dev/$1 " /proc/swaps 2>/dev/null; then
        echo "in use as swap"
    fi
}

# Pids of the processes that hold a VFIO group open.
holders_of_group() {
    for fd in /proc/[0-9]*/fd/*; do
        [ "$(readlink "$fd" 2>/dev/null)" = "/dev/vfio/$1" ] || continue
        p=${fd#/proc/}
        echo "${p%%/*}"
    done | sort -u | tr '\n' ' '
}

check_bdf() {
    echo "$1" | grep -Eq '^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-1][0-9a-fA-F]\.[0-7]$' \
        || die "'$1' is not a PCI address of the form dddd:bb:dd.f"
    [ -d "$pci/$1" ] || die "no PCI device $1"
    [ "$(cat "$pci/$1/class")" = 0x010802 ] || die "$1 is not an NVMe controller (class $(cat "$pci/$1/class"))"
}

# bind BDF DRIVER: rebinds through driver_override (empty DRIVER: the kernel's choice).
bind() {
    echo "$2" >"$pci/$1/driver_override"
    if [ -e "$pci/$1/driver" ]; then
        echo "$1" >"$pci/$1/driver/unbind"
    fi
    echo "$1" >/sys/bus/pci/drivers_probe
    want=${2:-nvme}
    i=0
    while [ "$(driver_of "$1")" != "$want" ]; do
        i=$((i + 1))
        [ "$i" -le 100 ] || die "$1 did not bind to $want within 10 s"
        sleep 0.1
    done
}

cmd=${1:-status}
[ $# -gt 0 ] && shift
case "$cmd" in
config)
    [ $# -gt 0 ] || die "config needs at least one PCI address"
    for bdf in "$@"; do
        check_bdf "$bdf"
        for b in $(blocks_of "$bdf"); do
            h=$(holder_of_block "$b")
            [ -z "$h" ] || die "$bdf: /dev/$b is $h; unmount it first"
        done
        [ -e "$pci/$bdf/iommu_group" ] \
            || die "$bdf has no IOMMU group: turn the IOMMU on (intel_iommu=on or amd_iommu=on)"
    done
    modprobe vfio_iommu_type1 2>/dev/null || true
    modprobe vfio-pci 2>/dev/null || true
    [ -d /sys/bus/pci/drivers/vfio-pci ] || die "the vfio-pci driver is not available"
    for bdf in "$@"; do
        if [ "$(driver_of "$bdf")" = vfio-pci ]; then
            echo "$bdf: already on vfio-pci (IOMMU group $(group_of "$bdf"))"
            continue
        fi
        bind "$bdf" vfio-pci
        echo "$bdf: vfio-pci (IOMMU group $(group_of "$bdf"))"
    done
    want=$(( ${HUGEMEM:-256} / 2 ))
    have=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
    if [ "$have" -lt "$want" ]; then
        echo "$want" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
        have=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
    fi
    echo "hugepages: $have x 2 MiB reserved"
    ;;
reset)
    [ $# -gt 0 ] || die "reset needs at least one PCI address"
    for bdf in "$@"; do
        check_bdf "$bdf"
        if [ "$(driver_of "$bdf")" = vfio-pci ]; then
            held=$(holders_of_group "$(group_of "$bdf")")
            [ -z "$held" ] || die "$bdf: its VFIO group is open in process(es) $held (detach it from tidepoold first)"
        fi
    done
    for bdf in "$@"; do
        if [ "$(driver_of "$bdf")" = nvme ]; then
            echo "$bdf: already on nvme"
            continue
        fi
        bind "$bdf" ""
        echo "$bdf: nvme"
    done
    ;;
status)
    printf '%-14s %-10s %-6s %s\n' BDF DRIVER GROUP USE
    for dev in "$pci"/*; do
        [ "$(cat "$dev/class" 2>/dev/null)" = 0x010802 ] || continue
        bdf=$(basename "$dev")
        use=""
        for b in $(blocks_of "$bdf"); do
            use="$use $b$(h=$(holder_of_block "$b"); [ -z "$h" ] || echo " ($h)")"
        done
        if [ "$(driver_of "$bdf")" = vfio-pci ]; then
            held=$(holders_of_group "$(group_of "$bdf")")
            use="${held:+held by pid $held}"
            use=${use:-free for tidepool}
        fi
        printf '%-14s %-10s %-6s %s\n' "$bdf" "$(driver_of "$bdf")" "$(group_of "$bdf")" "${use# }"
    done
    ;;
*)
    sed -n '/^# Usage:/,/^# Contract:/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
