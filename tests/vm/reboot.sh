#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Host side, root: the lvm reboot test, two boots of the VM on the same disk image.
#   boot 1: the driver builds the pool, creates volumes, writes data, records ids and
#           checksums in a host directory (tests/tests/suite/lvm/reboot.rs,
#           lvm_reboot_1_create_and_write);
#   boot 2: a new driver adopts the pool: ListVolumes lists them, stage + publish read the
#           data back, then everything is deleted (lvm_reboot_2_adopt_and_read).
#
#   tests/vm/reboot.sh BIN_DIR [RESULTS_FILE]
#
# BIN_DIR holds `iolane` and the test binary `suite`, built on the host (tests/vm/all.sh).
# Appends `ok lvm::reboot-boot-N SECONDS` or `FAILED ...` to RESULTS_FILE (if given).
# Exit status: 0 if both boots passed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(cd "${1:?usage: reboot.sh BIN_DIR [RESULTS_FILE]}" && pwd)"
results="${2:-/dev/null}"
for f in iolane suite; do
    [ -x "$bin/$f" ] || { echo "reboot.sh: $bin/$f is missing" >&2; exit 2; }
done

work="$(mktemp -d /tmp/iolane-reboot.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/keep"
# The same IOLANE_VM_WORK with KEEP_DISKS: boot 2 gets boot 1's disk image.
export IOLANE_VM_WORK="$work/vm" IOLANE_VM_KEEP_DISKS=1
export IOLANE_BIN="$bin/iolane" IOLANE_TEST_BACKEND=lvm IOLANE_TEST_LVM_DEVICES=/dev/nvme0n1
export IOLANE_TEST_REBOOT_DIR="$work/keep" RUST_BACKTRACE=1

rc=0
for phase in 1 2; do
    case "$phase" in
        1) test=lvm::reboot::lvm_reboot_1_create_and_write ;;
        2) test=lvm::reboot::lvm_reboot_2_adopt_and_read ;;
    esac
    if [ "$rc" != 0 ]; then
        echo "FAILED lvm::reboot-boot-$phase 0 (not run: boot 1 failed)" >>"$results"
        continue
    fi
    echo "reboot.sh: boot $phase: $test"
    start=$(date +%s)
    bash "$here/run.sh" --disks 1 --timeout 600 --rwdir "$work/keep" --rwdir "$bin" -- \
        timeout -k 10 540 "$bin/suite" --ignored --exact "$test" --test-threads 1 --nocapture
    status=$?
    secs=$(($(date +%s) - start))
    if [ "$status" = 0 ]; then
        echo "ok lvm::reboot-boot-$phase $secs" >>"$results"
        echo "reboot.sh: boot $phase passed (${secs}s)"
    else
        echo "FAILED lvm::reboot-boot-$phase $secs (exit $status)" >>"$results"
        echo "reboot.sh: boot $phase FAILED with exit $status (${secs}s)" >&2
        rc=1
    fi
done
exit "$rc"
