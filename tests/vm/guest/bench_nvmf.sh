#!/bin/sh
# The guest half of perf/nvmf_guest_bench.sh (busybox sh; run by main.sh when run.sh is given
# --scripts bench_nvmf.sh). Not a test: it measures.
#
# The Linux kernel's NVMe/TCP initiator, driven by fio's io_uring engine, against two targets
# over loopback, alternated ROUNDS times so that drift hits both alike:
#   tidepool  tidepoold's target on a null bdev, its one reactor on CPU 0;
#   kernel    the kernel's nvmet-tcp on null_blk (no completion interrupt, as a null bdev).
# fio runs on CPU 1. Rows: 4 KiB randread and randwrite at q1, q16, q128; 1 MiB read at q4.
# For each run it prints one line:
#   BENCH <target> <row> <round> iops=<N> p99_us=<N>
# Env: BENCH_SECONDS (default 5), BENCH_ROUNDS (default 2), BENCH_NO_PARK=1 (tidepoold's
# reactor polls without ever parking, as SPDK's do), BENCH_TP_CPU (tidepoold's reactor CPU,
# 0 or 1, default 0; fio takes the other).
set -u
T=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-2}
D=/tp/release
cd /tmp
TNQN=nqn.2016-06.io.tidepool:bench
KNQN=nqn.2016-06.io.kernel:bench
failed=0

# tidepoold: a null bdev of 1 GiB served on 127.0.0.1:4420.
cat >tp.json <<J
{"subsystems":[
 {"subsystem":"bdev","config":[
  {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":512}}]},
 {"subsystem":"nvmf","config":[
  {"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
  {"method":"nvmf_create_subsystem","params":{"nqn":"$TNQN","allow_any_host":true,"serial_number":"TPBENCH"}},
  {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$TNQN","namespace":{"bdev_name":"Null0"}}},
  {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$TNQN","listen_address":{"trtype":"tcp","adrfam":"ipv4","traddr":"127.0.0.1","trsvcid":"4420"}}}]}]}
J
park=
[ "${BENCH_NO_PARK:-0}" = 1 ] && park=--no-park
tp_cpu=${BENCH_TP_CPU:-0}
fio_cpu=$((1 - tp_cpu))
"$D/tidepoold" --cores "$tp_cpu" $park -r /tmp/bench.sock --json tp.json >tidepoold.log 2>&1 &
tp=$!

# The kernel's target: null_blk of 1 GiB, no interrupts, on 127.0.0.1:4421.
modprobe null_blk nr_devices=1 gb=1 bs=512 irqmode=0 queue_mode=2 || failed=1
cfg=/sys/kernel/config/nvmet
mkdir -p "$cfg/subsystems/$KNQN/namespaces/1" "$cfg/ports/2"
echo 1 >"$cfg/subsystems/$KNQN/attr_allow_any_host"
echo /dev/nullb0 >"$cfg/subsystems/$KNQN/namespaces/1/device_path"
echo 1 >"$cfg/subsystems/$KNQN/namespaces/1/enable"
echo tcp >"$cfg/ports/2/addr_trtype"
echo ipv4 >"$cfg/ports/2/addr_adrfam"
echo 127.0.0.1 >"$cfg/ports/2/addr_traddr"
echo 4421 >"$cfg/ports/2/addr_trsvcid"
ln -s "$cfg/subsystems/$KNQN" "$cfg/ports/2/subsystems/$KNQN" || failed=1

# connect NQN PORT: the block device of the new controller's namespace.
connect() {
    # (tidepoold's listener opens once its --json config is loaded: try for up to 10 s.)
    i=0
    until echo "nqn=$1,transport=tcp,traddr=127.0.0.1,trsvcid=$2" >/dev/nvme-fabrics; do
        i=$((i + 1))
        [ $i -lt 100 ] || return 1
        sleep 0.1
    done
    for c in /sys/class/nvme/nvme*; do
        [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$1" ] || continue
        i=0
        while [ $i -lt 100 ]; do
            for n in "$c"/nvme*n1; do
                [ -e "$n" ] || continue
                b=$(echo "${n##*/}" | sed 's/c[0-9]*n1$/n1/')
                [ -b "/dev/$b" ] && { echo "/dev/$b"; return 0; }
            done
            sleep 0.05
            i=$((i + 1))
        done
    done
    return 1
}
i=0
while [ ! -S /tmp/bench.sock ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
tdev=$(connect "$TNQN" 4420) || { echo "bench_nvmf: cannot connect to tidepoold"; failed=1; }
kdev=$(connect "$KNQN" 4421) || { echo "bench_nvmf: cannot connect to nvmet"; failed=1; }
echo "bench_nvmf: tidepool at ${tdev:-none}, kernel at ${kdev:-none}"

# run TARGET DEV ROW RW BS QD ROUND
run() {
    fio --name=b --filename="$2" --ioengine=io_uring --direct=1 --rw="$4" --bs="$5" \
        --iodepth="$6" --runtime="$T" --time_based --cpus_allowed="$fio_cpu" \
        --output-format=terse --terse-version=3 >fio.out 2>fio.err || { cat fio.err; failed=1; return; }
    # terse v3: read IOPS field 8, read clat p99 (us) in field 30 as "99.000000%=N";
    # write IOPS field 49, write clat p99 field 71.
    awk -F';' -v t="$1" -v row="$3" -v r="$7" '{
        if ($8 > 0) { iops = $8; p = $30 } else { iops = $49; p = $71 }
        split(p, kv, "="); printf "BENCH %s %s %s iops=%s p99_us=%s\n", t, row, r, iops, kv[2]
    }' fio.out
}
if [ -n "${tdev:-}" ] && [ -n "${kdev:-}" ]; then
    for round in $(seq 1 "$ROUNDS"); do
        for spec in "randread-4k-q1 randread 4k 1" "randread-4k-q16 randread 4k 16" \
            "randread-4k-q128 randread 4k 128" "randwrite-4k-q1 randwrite 4k 1" \
            "randwrite-4k-q16 randwrite 4k 16" "randwrite-4k-q128 randwrite 4k 128" \
            "read-1m-q4 read 1m 4"; do
            set -- $spec
            run tidepool "$tdev" "$1" "$2" "$3" "$4" "$round"
            run kernel "$kdev" "$1" "$2" "$3" "$4" "$round"
        done
    done
fi
for c in /sys/class/nvme/nvme*; do
    case "$(cat "$c/transport" 2>/dev/null)" in tcp) echo 1 >"$c/delete_controller" ;; esac
done
kill "$tp" 2>/dev/null
wait "$tp" 2>/dev/null
[ "$failed" -eq 0 ]
