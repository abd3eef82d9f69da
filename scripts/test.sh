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

# SPDK's own JSON-RPC client (its rpc.py, the spdk-rpc command of `pip install spdk`), which
# tests/tests/spdk_client.rs runs against tidepoold, in a venv under the target directory.
# Pinned, so every run tests the same client; installed again only when missing or another
# version. If pip cannot get it, this script stops here, loudly (the test would fail too).
SPDK_PY_VERSION=26.9   # keep in step with tests/src/lib.rs SPDK_PY_VERSION
spdk_venv="${CARGO_TARGET_DIR:-target}/spdk-venv"
spdk_have=$("$spdk_venv/bin/python" -m pip show spdk 2>/dev/null || true)
if ! grep -qx "Version: $SPDK_PY_VERSION" <<<"$spdk_have" || [ ! -x "$spdk_venv/bin/spdk-rpc" ]; then
    echo "== installing SPDK's python client (spdk==$SPDK_PY_VERSION) into $spdk_venv"
    if ! python3 -m venv "$spdk_venv" >/dev/null 2>&1; then
        # Debian's python3 ships venv (ensurepip) separately.
        SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$spdk_venv"
    fi
    "$spdk_venv/bin/python" -m pip install -q --disable-pip-version-check "spdk==$SPDK_PY_VERSION"
fi
"$spdk_venv/bin/spdk-rpc" --help >/dev/null

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --release --workspace --all-targets -- -D warnings
# The guest tests are left out of --all-targets (test = false): lint them by name.
cargo clippy --release -p tidepool-tests --test guest_nvme --test guest_nvme_pool -- -D warnings

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
