#!/usr/bin/env bash
# Copies glibc executables into a guest root with the shared libraries they load.
#
# Usage: tests/vm/closure.sh STAGE SRC DEST [SRC DEST]...
# Contract: each SRC goes to STAGE/DEST; every library ldd names for any of them (the loader,
# /lib64/ld-linux-x86-64.so.2, among them) goes to the same path under STAGE, symlinks
# resolved, so the guest's loader finds it on its default path without an ld.so.cache.
# Debug info is stripped from the copies (the symbol table stays, so backtraces still name
# functions) unless TP_VM_DEBUGINFO=1: it is most of their size, and the guest unpacks every
# byte of its initramfs under TCG. Fails if a SRC is missing or needs a library not found.
set -euo pipefail
if [ $# -lt 3 ] || [ $(( ($# - 1) % 2 )) -ne 0 ]; then
    sed -n 's/^# Usage: //p' "$0" >&2
    exit 2
fi
stage=$1
shift
declare -A libs=()
while [ $# -gt 0 ]; do
    src=$1 dest=$stage/$2
    shift 2
    [ -x "$src" ] || { echo "closure: $src is missing or not executable" >&2; exit 1; }
    mkdir -p "$(dirname "$dest")"
    if [ "${TP_VM_DEBUGINFO:-0}" = 1 ]; then cp "$src" "$dest"; else objcopy --strip-debug "$src" "$dest"; fi
    ldd_out=$(ldd "$src") || { echo "closure: ldd $src failed (not a dynamic glibc executable?)" >&2; exit 1; }
    while read -r line; do
        case "$line" in
            *"=> not found"*) echo "closure: $src needs a library that is not here: $line" >&2; exit 1 ;;
            *"=> /"*) line=${line#*=> }; libs[${line%% (*}]=1 ;;
            /*) libs[${line%% (*}]=1 ;;
        esac
    done <<<"$ldd_out"
done
for lib in "${!libs[@]}"; do
    mkdir -p "$stage/$(dirname "$lib")"
    cp -L "$lib" "$stage/$lib"
done
