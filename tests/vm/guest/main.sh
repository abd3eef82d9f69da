#!/bin/sh
# The guest's test entry (busybox sh), started by /init once the devices are set up.
#
# Contract: runs every /tp/guest/t_*.sh matching TP_GUEST_SCRIPTS (a glob, default t_*.sh),
# then every test executable named in TP_TEST_BINS (files in /tp/release/deps, run there with
# --test-threads=1 and the words of TP_TEST_ARGS), each with /tp/env in its environment, from
# a fresh directory under /tmp and with a time limit of TP_TEST_TIMEOUT seconds. Each one's
# output goes to the console; a "PASS name (Ns)" or "FAIL name (why, Ns)" line per test goes
# to the console and to the host (/dev/ttyS1), then "N passed, N failed". Exits 0 only if
# every test passed and at least one ran.
set -u
. /tp/env

passed=0
failed=0
report() { echo "$*"; echo "$*" >/dev/ttyS1; }
uptime_s() { cut -d. -f1 /proc/uptime; }

# run_one NAME COMMAND...: runs one test and counts it.
run_one() {
    name=$1
    shift
    echo "=== RUN $name"
    dir=$(mktemp -d /tmp/test.XXXXXX)
    start=$(uptime_s)
    rc=0
    (cd "$dir" && exec timeout -s KILL "$TP_TEST_TIMEOUT" "$@") </dev/null 2>&1 || rc=$?
    took=$(( $(uptime_s) - start ))
    rm -rf "$dir"
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        report "PASS $name (${took}s)"
    else
        failed=$((failed + 1))
        why="exit $rc"
        [ "$rc" -eq 137 ] && why="killed after the ${TP_TEST_TIMEOUT}s limit"
        report "FAIL $name ($why, ${took}s)"
    fi
}

for script in /tp/guest/${TP_GUEST_SCRIPTS:-t_*.sh}; do
    [ -f "$script" ] || continue
    run_one "${script##*/}" /bin/sh "$script"
done
for bin in $TP_TEST_BINS; do
    # shellcheck disable=SC2086 # TP_TEST_ARGS is a list of words
    run_one "$bin" "/tp/release/deps/$bin" --test-threads=1 $TP_TEST_ARGS
done

report "guest: $passed passed, $failed failed"
[ $((passed + failed)) -gt 0 ] || { report "guest: no test ran"; exit 1; }
[ "$failed" -eq 0 ]
