#!/usr/bin/env bash
# The whole iolane test suite: formatting, lints, unit tests, and the conformance suite
# against the real `iolane` binary (loop devices, mkfs, mounts: run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: run as root (the conformance suite uses loop devices and mounts)" >&2
    exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
cargo build --workspace --all-targets --locked
export IOLANE_BIN="$PWD/target/debug/iolane"
echo "== tests (unit + conformance)"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
