#!/bin/sh
# The Linux kernel's NVMe/TCP initiator against tidepoold's target, in the guest (busybox sh,
# run by main.sh with /tp/env exported; issue 29).
#
# Checks, each of which fails the test on its own: tidepoold serves a malloc bdev as namespace
# 1 of a subsystem listening on 127.0.0.1:4420 (set up by a --json config, then listed by
# tpctl nvmf_get_subsystems); the kernel connects through /dev/nvme-fabrics, its controller's
# transport reads tcp and its model and serial are tidepoold's; patterns written with O_DIRECT
# at several offsets and sizes (4 KiB in the capsule, 1 MiB: R2T, H2CData, split at the
# target's MDTS) read back the same, and read back the same again through a second connection
# after the first is deleted; while connected, tpctl lists the kernel's controller and its
# three queue pairs (admin and one I/O queue per vCPU) and refuses to delete the subsystem;
# fio with io_uring writes and verifies from both vCPUs (both I/O queues); a fio reading when
# the controller is deleted ends; a connect to an unknown subsystem is refused; the
# discovery controller connects, and nvme-cli's discover lists the subsystem with its
# address; tidepoold is still serving at the end, and deletes the subsystem once no host is
# connected.
set -u
TEST=t_nvmf
. /tp/guest/check.sh
NQN=nqn.2016-06.io.tidepool:guest
SOCK=/tmp/tp-nvmf.sock
cat >/tmp/nvmf.json <<J
{"subsystems":[
 {"subsystem":"bdev","config":[
  {"method":"bdev_malloc_create","params":{"name":"M0","num_blocks":131072,"block_size":512}}]},
 {"subsystem":"nvmf","config":[
  {"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
  {"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true,"serial_number":"TPGUEST01","model_number":"tidepool"}},
  {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"M0"}}},
  {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":{"trtype":"tcp","adrfam":"ipv4","traddr":"127.0.0.1","trsvcid":"4420"}}}]}]}
J
/tp/release/tidepoold -m 0x1 -r "$SOCK" --json /tmp/nvmf.json >/tmp/tidepoold.log 2>&1 &
tp=$!
i=0
while [ ! -S "$SOCK" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
check "tidepoold is up" [ -S "$SOCK" ]
# The listener opens once the --json config is loaded: wait for it in the listing.
i=0
until /tp/release/tpctl -s "$SOCK" nvmf_get_subsystems 2>/dev/null | grep -q 4420 || [ $i -ge 100 ]; do
    sleep 0.1
    i=$((i + 1))
done
subsystems=$(/tp/release/tpctl -s "$SOCK" nvmf_get_subsystems 2>&1)
check "nvmf_get_subsystems lists the subsystem and its listener" \
    sh -c "echo '$subsystems' | grep -q '$NQN' && echo '$subsystems' | grep -q 4420"

# connect NQN: the kernel connects; prints the controller's name (nvmeN).
connect() {
    echo "nqn=$1,transport=tcp,traddr=127.0.0.1,trsvcid=4420" >/dev/nvme-fabrics 2>/tmp/connect.err || return 1
    for c in /sys/class/nvme/nvme*; do
        [ "$(cat "$c/transport" 2>/dev/null)" = tcp ] || continue
        [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$1" ] || continue
        [ "$(cat "$c/state" 2>/dev/null)" = live ] || continue
        echo "${c##*/}"
        return 0
    done
    return 1
}
# The block device of controller $1 (the multipath head nvme<S>n1 of its path nvme<S>c<C>n1).
blockdev() {
    for n in /sys/class/nvme/"$1"/nvme*n1; do
        [ -e "$n" ] || continue
        b=${n##*/}
        case $b in
            *c*n1) b=$(echo "$b" | sed 's/c[0-9]*n1$/n1/') ;;
        esac
        echo "/dev/$b"
        return 0
    done
    return 1
}

ctrl=$(connect "$NQN")
check "the kernel connects to $NQN over tcp" [ -n "$ctrl" ]
if [ -n "$ctrl" ]; then
    model=$(sed 's/[[:space:]]*$//' "/sys/class/nvme/$ctrl/model")
    serial=$(sed 's/[[:space:]]*$//' "/sys/class/nvme/$ctrl/serial")
    check "its model and serial are tidepoold's ($model, $serial)" \
        [ "$model" = tidepool -a "$serial" = TPGUEST01 ]
    i=0
    dev=
    while [ -z "$dev" ] && [ $i -lt 100 ]; do dev=$(blockdev "$ctrl"); [ -b "$dev" ] || dev=; sleep 0.05; i=$((i + 1)); done
    check "its namespace appears as a block device ($dev)" [ -n "$dev" ]
    size=$(cat "/sys/class/block/${dev#/dev/}/size" 2>/dev/null)
    check "of the bdev's size (131072 sectors: $size)" [ "$size" = 131072 ]
    # write_read SIZE_KIB OFFSET_KIB: a random pattern written and read back with O_DIRECT.
    write_read() {
        dd if=/dev/urandom of=/tmp/pat bs=1024 count="$1" status=none &&
            dd if=/tmp/pat of="$dev" bs=1024 seek="$2" count="$1" oflag=direct conv=notrunc status=none &&
            dd if="$dev" of=/tmp/back bs=1024 skip="$2" count="$1" iflag=direct status=none &&
            cmp -s /tmp/pat /tmp/back && cp /tmp/pat "/tmp/pat.$2"
    }
    check "4 KiB at 0 reads back" write_read 4 0
    check "1 MiB at 1 MiB reads back" write_read 1024 1024
    check "64 KiB at 60 MiB reads back" write_read 64 61440
    ctrls=$(/tp/release/tpctl -s "$SOCK" nvmf_subsystem_get_controllers "$NQN" 2>&1)
    check "nvmf_subsystem_get_controllers lists the kernel's controller" \
        sh -c "echo '$ctrls' | grep -q cntlid"
    # The kernel opens an I/O queue per vCPU (2) beside the admin queue: three queue pairs,
    # each a TCP connection served by the reactor.
    qpairs=$(/tp/release/tpctl -s "$SOCK" nvmf_subsystem_get_qpairs "$NQN" 2>&1 | grep -c '"qid"')
    check "nvmf_subsystem_get_qpairs lists the admin queue and two I/O queues ($qpairs)" \
        [ "$qpairs" -ge 3 ]
    refused_delete() { ! /tp/release/tpctl -s "$SOCK" nvmf_delete_subsystem "$NQN" >/dev/null 2>&1; }
    check "the subsystem cannot be deleted under a connected host" refused_delete
    # fio with io_uring, one job per vCPU (so on both of the kernel's I/O queues), writing
    # with O_DIRECT and verifying every block it wrote.
    uring_verify() {
        /usr/bin/fio --name=uring --filename="$dev" --ioengine=io_uring --direct=1 \
            --rw=randwrite --bs=4k --iodepth=16 --size=8m --offset=8m --offset_increment=8m \
            --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split \
            --verify=crc32c --do_verify=1 --verify_fatal=1 >/tmp/fio-verify.out 2>&1
        rc=$?
        grep -E 'err=|verify' /tmp/fio-verify.out | head -n 4
        [ "$rc" -eq 0 ]
    }
    check "fio io_uring writes and verifies 16 MiB from two vCPUs" uring_verify
    # Disconnect under I/O: fio reads while the controller is deleted; fio ends (with its
    # errors), and tidepoold goes on serving the next connection (below).
    /usr/bin/fio --name=busy --filename="$dev" --ioengine=io_uring --direct=1 --rw=randread \
        --bs=4k --iodepth=32 --time_based --runtime=30 >/tmp/fio-busy.out 2>&1 &
    busy=$!
    sleep 1
    echo 1 >"/sys/class/nvme/$ctrl/delete_controller"
    check "the controller is deleted" sh -c "[ ! -e /sys/class/nvme/$ctrl ]"
    fio_ended() {
        i=0
        while kill -0 "$busy" 2>/dev/null; do
            i=$((i + 1))
            [ $i -le 200 ] || { kill "$busy"; return 1; }
            sleep 0.1
        done
    }
    check "fio, reading when the controller went, ends" fio_ended
    ctrl2=$(connect "$NQN")
    check "a second connection is served" [ -n "$ctrl2" ]
    if [ -n "$ctrl2" ]; then
        i=0
        dev=
        while [ -z "$dev" ] && [ $i -lt 100 ]; do dev=$(blockdev "$ctrl2"); [ -b "$dev" ] || dev=; sleep 0.05; i=$((i + 1)); done
        check "it reads back what the first one wrote" sh -c \
            "dd if=$dev of=/tmp/again bs=1024 skip=1024 count=1024 iflag=direct status=none && cmp -s /tmp/again /tmp/pat.1024"
        echo 1 >"/sys/class/nvme/$ctrl2/delete_controller"
    fi
fi
refused_connect() { ! connect "$1" >/dev/null; }
check "a connect to an unknown subsystem is refused" refused_connect nqn.2016-06.io.tidepool:nope
disc=$(connect nqn.2014-08.org.nvmexpress.discovery)
check "the discovery controller connects" [ -n "$disc" ]
[ -z "$disc" ] || echo 1 >"/sys/class/nvme/$disc/delete_controller"
# nvme-cli's discover reads the discovery log page: the subsystem, its address and port.
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:2f0c7d1e-58a1-4c35-9d0e-4a3c2b1f0e11
discover() {
    /usr/sbin/nvme discover -t tcp -a 127.0.0.1 -s 4420 --hostnqn="$HOSTNQN" \
        --hostid=2f0c7d1e-58a1-4c35-9d0e-4a3c2b1f0e11 >/tmp/discover.out 2>&1
    rc=$?
    cat /tmp/discover.out
    [ "$rc" -eq 0 ] && grep -q "subnqn: *$NQN" /tmp/discover.out &&
        grep -q 'trsvcid: *4420' /tmp/discover.out && grep -q 'trtype: *tcp' /tmp/discover.out
}
check "nvme discover lists $NQN at 127.0.0.1:4420" discover
check "tidepoold is still serving" kill -0 "$tp"
# Every host gone: no controller listed, and the subsystem can be deleted.
i=0
until [ "$(/tp/release/tpctl -s "$SOCK" nvmf_subsystem_get_controllers "$NQN" 2>/dev/null | grep -c cntlid)" = 0 ] || [ $i -ge 50 ]; do
    sleep 0.1
    i=$((i + 1))
done
check "the subsystem is deleted once no host is connected" \
    /tp/release/tpctl -s "$SOCK" nvmf_delete_subsystem "$NQN"
kill "$tp"
wait "$tp"
if [ "$failures" -ne 0 ]; then
    echo "t_nvmf: --- tidepoold's log"
    tail -n 40 /tmp/tidepoold.log
    echo "t_nvmf: --- dmesg"
    dmesg | grep -i nvme | tail -n 20
fi
echo "t_nvmf: $failures failure(s)"
[ "$failures" -eq 0 ]
