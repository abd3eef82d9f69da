#!/usr/bin/env bash
# The project's one test command (README; .ci/run calls exactly this).
# Formatting, lint, build, then every test of the workspace in release mode (the process-level
# tests in tests/ run the built binaries, so they are built first), then the engine's unit
# tests once more in debug mode, where integer overflow panics instead of wrapping.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain: $(cargo --version)"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# The NBD tests drive tidepoold with clients nobody here wrote: qemu-img/qemu-io (qemu-utils)
# and nbdinfo/nbdcopy (libnbd-bin).
need=()
command -v qemu-io >/dev/null || need+=(qemu-utils)
command -v nbdcopy >/dev/null || need+=(libnbd-bin)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --release --workspace --all-targets -- -D warnings

echo "== build"
cargo build --release --workspace --bins

echo "== tests"
cargo test --release --workspace

echo "== engine unit tests, debug (overflow checks on)"
cargo test -p tidepool --lib

# The guest phase: a QEMU guest with emulated NVMe controllers (tests/vm/run.sh installs what
# it needs; a machine that cannot boot it fails here, it never skips).
echo "== guest phase"
guest_start=$SECONDS
tests/vm/run.sh --fault-rules tests/vm/fault.rules --cargo-test guest_nvme --cargo-test guest_nvme_pool
echo "== guest phase: $((SECONDS - guest_start)) s"
