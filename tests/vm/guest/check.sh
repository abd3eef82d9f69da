# Sourced by the guest's t_*.sh scripts (busybox sh), after they set TEST to their name:
# `check WHAT COMMAND...` runs COMMAND, prints "TEST: ok: WHAT" or "TEST: FAIL: WHAT", and
# counts the failures in $failures. (main.sh runs t_*.sh only, so this file is not a test.)
failures=0
check() {
    what=$1
    shift
    if "$@"; then
        echo "$TEST: ok: $what"
    else
        echo "$TEST: FAIL: $what"
        failures=$((failures + 1))
    fi
}
