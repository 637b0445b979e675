#!/usr/bin/env bash
# Runs INSIDE the VM (tests/vm/priority.sh, nvme0n1 throttled by QEMU): the priority VM
# test with the static tier caps (`IOLANE_TEST_PRIORITY=off`: expected to FAIL) and with
# `[priority] enabled = true` (`on`: expected to pass), each in its own process.
#
#   priority-test.sh BIN_DIR
#
# IOLANE_PRIORITY_MODES (default `off on`) picks the runs.
# Exit status: 0 when `on` passed and `off` failed (of those run), 1 otherwise.
set -uo pipefail
bin="${1:?usage: priority-test.sh BIN_DIR}"
local_bin="$(mktemp -d /tmp/iolane-bin.XXXXXX)"
cp "$bin/iolane" "$bin/suite" "$local_bin/"
export IOLANE_BIN="$local_bin/iolane"
export IOLANE_TEST_BACKEND=lvm
# In the VM a missing prerequisite is a failure, not a skip (tests/src/host.rs, skip()).
export IOLANE_REQUIRE_VM_PREREQS=1
export IOLANE_TEST_LVM_DEVICES=/dev/nvme0n1
export RUST_BACKTRACE=1
name=tiers::priority::vm_streaming_keeps_its_rate_against_four_batch_volumes
declare -A rc
for mode in ${IOLANE_PRIORITY_MODES:-off on}; do
    start=$(date +%s)
    log="$(mktemp)"
    IOLANE_TEST_PRIORITY=$mode timeout -k 10 600 "$local_bin/suite" --exact "$name" \
        --test-threads 1 --nocapture >"$log" 2>&1
    rc[$mode]=$?
    echo "priority: $mode: exit ${rc[$mode]} in $(($(date +%s) - start))s"
    # The test's own lines (figures, the assertion), not the driver's log.
    grep -E '^(priority |/metrics|iolane_priority_|thread .* panicked|streaming kept|batch alone|  left|skipped| *[0-9]+ ms batch riops)' "$log" | sed 's/^/    /'
    if [ "${rc[$mode]}" != 0 ] && [ "$mode" = on ]; then
        echo "    the node's priority and io.max lines (last 40):"
        grep -E 'priority|io\.max' "$log" | grep -v 'ms batch riops' | tail -40 | cut -c1-300 | sed 's/^/      /'
    fi
done
ok=1
case "${rc[on]-}" in
    "") echo "priority: on: not run" ;;
    0) ;;
    *) echo "priority: FAIL: with [priority] enabled the test failed"; ok=0 ;;
esac
case "${rc[off]-}" in
    "") echo "priority: off: not run" ;;
    0) echo "priority: FAIL: with static caps the test passed (it should show the problem)"; ok=0 ;;
    *) ;;
esac
[ "$ok" = 1 ] && echo "priority: PASS (modes run: ${!rc[*]}; off must fail the lines, on must hold them)"
[ "$ok" = 1 ]
