#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# `iolane demo` inside the test VM, for a host without the cgroup v2 io controller (this
# project's CI machines, and many laptops with hybrid cgroups), where `iolane demo` itself
# exits 2 with what is missing. Host side, root:
#
#   bash tests/vm/demo.sh [DEMO FLAGS...]      e.g. bash tests/vm/demo.sh --duration 8
#
# Installs what the VM needs (tests/vm/setup.sh), builds `iolane` (the debug build the suite
# uses, as tests/vm/tiers.sh runs the demo), boots the host's kernel with software emulation
# (tests/vm/run.sh: about 20 s to boot) with one NVMe disk that QEMU throttles to
# $IOLANE_VM_DEMO_IOPS IOPS (default 400; 0: not throttled), and runs
# tests/vm/demo-guest.sh there: the demo with its work directory (loop images,
# calibration) on an ext4 filesystem on that disk, on the guest's real cgroup v2 root. The
# demo's output is printed here as it goes. Throttled, the disk's capacity is IO-bound, as
# a real disk's is; unthrottled, the emulated disk is as fast as the emulating CPU, which
# five load generators then share, and what the table shows is the CPU, not priority.
# The exit status is the demo's: 0 when the priority held, 3 when it ran and cleaned up but
# the priority did not hold, 1 when a step failed, 2 when a prerequisite is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: run as root" >&2
    exit 2
fi
for a in "$@"; do
    case "$a" in
        *[!A-Za-z0-9._/=-]*) echo "demo.sh: unexpected character in argument: $a" >&2; exit 2 ;;
    esac
done

bash "$here/setup.sh" >/dev/null
cargo build -p csi-driver --locked
work="$(mktemp -d /tmp/iolane-vmdemo.XXXXXX)"
trap 'rm -rf "$work"' EXIT
target="${CARGO_TARGET_DIR:-$repo/target}"
# The guest reads the binary over 9p; without debug info it starts faster.
objcopy --strip-debug "$target/debug/iolane" "$work/iolane"

iops="${IOLANE_VM_DEMO_IOPS:-400}"
case "$iops" in ''|*[!0-9]*) echo "demo.sh: IOLANE_VM_DEMO_IOPS wants a number" >&2; exit 2 ;; esac
throttle=()
[ "$iops" = 0 ] || throttle=(--disk-opts "throttling.iops-total=$iops")
bash "$here/run.sh" --disks 1 --disk-size 2G "${throttle[@]}" --timeout 900 --rwdir "$work" -- \
    bash "$here/demo-guest.sh" /dev/nvme0n1 "$work/iolane" "$@"
