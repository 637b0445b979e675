#!/usr/bin/env bash
# Runs INSIDE the VM: the volume-cycle benchmark (tests/benches/cycle/), driver vs the raw
# command sequence in the same boot. Prints figures, asserts nothing (exits non-zero only if
# the benchmark could not run). Needs two blank disks. From the host, as root:
#
#   cargo build -p csi-driver && cargo bench -p iolane-tests --bench cycle --no-run
#   mkdir -p /tmp/bench-out
#   bash tests/vm/run.sh --disks 2 --rwdir /tmp/bench-out -- bash tests/vm/bench.sh /tmp/bench-out
#
# Writes OUT/bench-cycle.json (every figure and sample), OUT/bench-driver.log (the driver's
# JSON log, one `running` line per spawned process) and prints the table. Extra arguments
# after OUT go to the benchmark (--cycles N, --concurrency C, --per-worker K, --spares N).
set -euo pipefail
out="${1:-${IOLANE_VM_RESULTS:-/tmp}}"
shift || true
repo="${IOLANE_REPO:-$(cd "$(dirname "$0")/../.." && pwd)}"
bin="${IOLANE_BENCH_BIN:-}"
if [ -z "$bin" ]; then
    # The newest `cargo bench --no-run` build of the cycle bench.
    bin="$(find "$repo/target/release/deps" -maxdepth 1 -type f -executable -name 'cycle-*' \
        -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2-)"
fi
[ -x "$bin" ] || { echo "bench.sh: no cycle bench binary: cargo bench -p iolane-tests --bench cycle --no-run" >&2; exit 2; }
export IOLANE_BIN="${IOLANE_BIN:-$repo/target/debug/iolane}"
echo "bench: kernel $(uname -r), $(nproc) cpus, $(lvm version | sed -n 's/^ *LVM version: *//p' | head -1)"
echo "bench: $bin; driver $IOLANE_BIN"
exec "$bin" --out "$out" "$@"
