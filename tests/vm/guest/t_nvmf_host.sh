#!/bin/sh
# tidepool's NVMe/TCP initiator against the Linux kernel's target (nvmet-tcp), in the guest
# (busybox sh, run by main.sh with /tp/env exported; issue 29).
#
# The kernel serves a 64 MiB file on /tmp (nvmet's file backend) as namespace 1 of a
# subsystem on 127.0.0.1:4422. Checks, each of which fails the test on its own:
# tidepool-perf attaches it with bdev_nvme_attach_controller -t tcp from its JSON config and
# runs -w verify with no error at 4 KiB q16 (in-capsule writes), at 128 KiB q4 (writes after
# nvmet's R2T, reads in several C2HData) and at 4 KiB q16 with header and data digests on;
# the data a first run wrote is in the kernel's file, as the kernel reads it; an attach to a
# subsystem the kernel does not have fails with a clear error and a non-zero exit.
set -u
TEST=t_nvmf_host
. /tp/guest/check.sh
KNQN=nqn.2016-06.io.tidepool:kernel-target
PERF=/tp/release/tidepool-perf

dd if=/dev/zero of=/tmp/kt.img bs=1M count=64 2>/dev/null
cfg=/sys/kernel/config/nvmet
mkdir -p "$cfg/subsystems/$KNQN/namespaces/1" "$cfg/ports/3"
echo 1 >"$cfg/subsystems/$KNQN/attr_allow_any_host"
echo /tmp/kt.img >"$cfg/subsystems/$KNQN/namespaces/1/device_path"
echo 1 >"$cfg/subsystems/$KNQN/namespaces/1/enable"
echo tcp >"$cfg/ports/3/addr_trtype"
echo ipv4 >"$cfg/ports/3/addr_adrfam"
echo 127.0.0.1 >"$cfg/ports/3/addr_traddr"
echo 4422 >"$cfg/ports/3/addr_trsvcid"
check "nvmet-tcp serves the file on 127.0.0.1:4422" \
    ln -s "$cfg/subsystems/$KNQN" "$cfg/ports/3/subsystems/$KNQN"

# config FILE NQN DIGEST: a tidepool-perf config attaching NQN (digests on when DIGEST=true).
config() {
    cat >"$1" <<J
{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_nvme_attach_controller","params":{"name":"K","trtype":"TCP","adrfam":"IPv4",
   "traddr":"127.0.0.1","trsvcid":"4422","subnqn":"$2","hdgst":$3,"ddgst":$3}}]}]}
J
}
config /tmp/kt.json "$KNQN" false
config /tmp/kt-digests.json "$KNQN" true

# verify NAME CONFIG PERF-ARGS...: a verify run with no error.
verify() {
    name=$1
    conf=$2
    shift 2
    "$PERF" -c "$conf" -b Kn1 -m 0x1 -w verify -t 3 "$@" >"/tmp/$name.out" 2>&1
    rc=$?
    cat "/tmp/$name.out"
    [ "$rc" -eq 0 ] && grep -q 'Kn1' "/tmp/$name.out" && ! grep -q 'verify mismatch\|I/O error' "/tmp/$name.out"
}
check "verify at 4 KiB q16 (writes in the capsule)" verify v4k /tmp/kt.json -q 16 -o 4096
check "verify at 128 KiB q4 (writes after nvmet's R2T)" verify v128k /tmp/kt.json -q 4 -o 131072
check "verify at 4 KiB q16 with header and data digests" verify vdig /tmp/kt-digests.json -q 16 -o 4096

# What tidepool-perf wrote is in the kernel's file: some 4 KiB block is not all zeroes.
written() {
    dd if=/tmp/kt.img bs=1M count=64 2>/dev/null | tr -d '\000' | head -c 1 | grep -q .
}
check "the verify runs' data landed in nvmet's file" written

config /tmp/kt-missing.json nqn.2016-06.io.tidepool:no-such-subsystem false
refused() {
    ! "$PERF" -c /tmp/kt-missing.json -m 0x1 -w randread -t 1 >/tmp/missing.out 2>&1 &&
        cat /tmp/missing.out && grep -q 'no such subsystem here' /tmp/missing.out
}
check "an attach to a subsystem nvmet does not have fails clearly" refused

rm -f "$cfg/ports/3/subsystems/$KNQN"
echo 0 >"$cfg/subsystems/$KNQN/namespaces/1/enable"
rmdir "$cfg/subsystems/$KNQN/namespaces/1" "$cfg/subsystems/$KNQN" "$cfg/ports/3" 2>/dev/null
rm -f /tmp/kt.img
[ "$failures" -eq 0 ]
