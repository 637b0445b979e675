#!/usr/bin/env bash
# The cargo-fuzz targets of iolane's parsers of outside text (fuzz/fuzz_targets/), each
# run for a bounded time from its committed corpus (fuzz/corpus/<target>/). Prints one
# line per target, `fuzz <target>: N runs, 0 crashes`, and fails on a crash, a hang or a
# broken round trip, whose input it saves under fuzz/artifacts/<target>/ (fuzz/README.md
# says how to replay it).
#
#   bash fuzz/run.sh [--build-only] [TARGET...]
#
# IOLANE_FUZZ_SECONDS: seconds per target (10); IOLANE_FUZZ_JOBS: targets run side by
# side (2). cargo-fuzz is installed at the pinned version if missing; the targets are
# built with the machine's stable toolchain and no sanitizer (the code is safe Rust: what
# is looked for is panics, arithmetic overflow and broken invariants; cargo-fuzz passes
# only stable -C flags then), in a target dir outside the clone that later runs reuse
# (IOLANE_FUZZ_TARGET_DIR). One build at a time: tests/run.sh starts `--build-only` in its
# background warm-up and the fuzz step waits for it.
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.1
seconds="${IOLANE_FUZZ_SECONDS:-10}"
jobs="${IOLANE_FUZZ_JOBS:-2}"
target_dir="${IOLANE_FUZZ_TARGET_DIR:-/var/cache/iolane/fuzz-target}"
build_only=0
if [ "${1:-}" = --build-only ]; then
    build_only=1
    shift
fi
mapfile -t all < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^iolane-fuzz$')
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

mkdir -p "$target_dir"
exec 9>"$target_dir.lock"
flock 9
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
# More codegen units than cargo-fuzz's one per crate: the dependency tree (tonic, kube,
# ...) builds in a third of the time, and these targets need throughput only for seconds.
one=()
[ ${#targets[@]} = 1 ] && one=("${targets[0]}")
if ! RUSTFLAGS="-Ccodegen-units=16" cargo +stable fuzz build --sanitizer none \
    --target-dir "$target_dir" "${one[@]}" >"$target_dir.log" 2>&1; then
    grep -v '^ *Compiling ' "$target_dir.log" | tail -40 >&2
    echo "fuzz: the build failed" >&2
    exit 1
fi
flock -u 9
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"
for t in "${targets[@]}"; do
    [ -x "$bin_dir/$t" ] || { echo "fuzz $t: not built" >&2; exit 1; }
done
[ "$build_only" = 1 ] && exit 0

work="$(mktemp -d /tmp/iolane-fuzz.XXXXXX)"
trap 'rm -rf "$work"' EXIT
run_one() {
    local t="$1"
    mkdir -p "artifacts/$t" "$work/$t"
    # New inputs go to the scratch corpus; the committed one is only read.
    "$bin_dir/$t" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "$work/$t" "corpus/$t" >"$work/$t.log" 2>&1
}
status=0
pids=()
names=()
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    run_one "$t" &
    pids+=($!)
    names+=("$t")
done
for i in "${!pids[@]}"; do
    t="${names[$i]}"
    rc=0
    wait "${pids[$i]}" || rc=$?
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -1)"
    crashes="$(find "artifacts/$t" -type f -newer "$work" | wc -l)"
    if [ "$rc" = 0 ] && [ "$crashes" = 0 ]; then
        echo "fuzz $t: ${runs:-0} runs, 0 crashes"
    else
        status=1
        echo "fuzz $t: ${runs:-?} runs, $((crashes > 0 ? crashes : 1)) crashes (exit $rc):"
        grep -v '^#\|^INFO:' "$work/$t.log" | tail -40 | sed "s/^/  $t: /"
        find "artifacts/$t" -type f -newer "$work" | sed "s/^/  $t: saved fuzz\//"
    fi
done
exit "$status"
