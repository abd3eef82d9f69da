#!/usr/bin/env bash
# The project's one test command (README; .ci/run calls exactly this).
# Formatting, lint, build, then every test of the workspace in release mode (the process-level
# tests in tests/ run the built binaries, so they are built first).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain: $(cargo --version)"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --release --workspace --all-targets -- -D warnings

echo "== build"
cargo build --release --workspace --bins

echo "== tests"
cargo test --release --workspace
