#!/bin/sh
# Tests scripts/setup_nvme.sh (the setup helper) in the guest, on tpfault0 (busybox sh, run by
# main.sh with /tp/env exported; the script is at /tp/scripts/setup_nvme.sh).
#
# Checks, each of which fails the test on its own: status lists the three controllers with
# their drivers; config binds tpfault0 to vfio-pci and creates its /dev/vfio group; a bad
# address, a missing device, and reset of a controller whose group a process holds open are
# refused and change nothing; reset gives tpfault0 back to the kernel's nvme driver, whose
# namespace comes back.
set -u
setup=/tp/scripts/setup_nvme.sh
TEST=t_setup_nvme
. /tp/guest/check.sh
refused() { ! "$@" >/tmp/refused.out 2>&1 && cat /tmp/refused.out && grep -q . /tmp/refused.out; }

fault_bdf=$(basename "$(readlink -f "/sys/class/nvme/${TP_FAULT_CTRL#/dev/}/device")")
pci=/sys/bus/pci/devices/$fault_bdf
driver() { basename "$(readlink "$pci/driver" 2>/dev/null)" 2>/dev/null; }

status=$(sh "$setup" status)
echo "$status"
check "status lists $TP_VFIO_BDF on vfio-pci" sh -c "echo '$status' | grep -q '^$TP_VFIO_BDF *vfio-pci'"
check "status lists $fault_bdf on nvme" sh -c "echo '$status' | grep -q '^$fault_bdf *nvme'"
check "status lists three controllers" [ "$(echo "$status" | grep -c '^0000:')" -eq 3 ]

check "a malformed address is refused" refused sh "$setup" config 00:05.0
check "a missing device is refused" refused sh "$setup" config 0000:00:1f.7
check "a refused call changed nothing" [ "$(driver)" = nvme ]

check "config binds $fault_bdf to vfio-pci" sh "$setup" config "$fault_bdf"
check "$fault_bdf is on vfio-pci" [ "$(driver)" = vfio-pci ]
group=$(basename "$(readlink "$pci/iommu_group")")
check "/dev/vfio/$group exists" test -c "/dev/vfio/$group"
check "config again leaves it as it is" sh "$setup" config "$fault_bdf"

# A process holding the group open (as tidepoold does with a controller attached).
sleep 30 <"/dev/vfio/$group" &
holder=$!
check "reset is refused while a process holds the group" refused sh "$setup" reset "$fault_bdf"
check "the refused reset changed nothing" [ "$(driver)" = vfio-pci ]
kill "$holder"
wait "$holder" 2>/dev/null

check "reset gives $fault_bdf back to nvme" sh "$setup" reset "$fault_bdf"
check "$fault_bdf is on nvme" [ "$(driver)" = nvme ]
has_ns() { for ns in "$pci"/nvme/nvme*/nvme*n1; do [ -e "$ns" ] && return 0; done; return 1; }
ns_back() {
    i=0
    while ! has_ns; do
        i=$((i + 1))
        [ "$i" -le 100 ] || return 1
        sleep 0.1
    done
}
check "its namespace is back on the kernel driver" ns_back

[ "$failures" -eq 0 ]
