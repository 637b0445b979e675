#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Host side, root: the priority controllers' VM test (issue 9) alone; tests/vm/all.sh runs
# the same boot in CI. Builds `iolane` and the `suite` test binary, boots the test VM with
# two NVMe disks that QEMU throttles each to --iops (default 800, as CI's boot: the emulated
# NVMe under software emulation stays IO-bound there, and the batch class's floor is one
# throttle unit per batch volume) IOPS, and runs
# tiers::priority::vm_streaming_keeps_its_rate_against_four_batch_volumes twice in that
# boot (tests/vm/priority-test.sh): with the default tiers and priority on (`on`, must
# pass) and with the pre-priority static caps (`off`, where it must FAIL: that is the
# issue). Prints each run's figures.
#
#   bash tests/vm/priority.sh [--iops N]
#
# Exit status: 0 when the `on` run passed and the `off` run failed its assertions.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo" || exit 2
iops=800
while [ $# -gt 0 ]; do
    case "$1" in
        --iops) iops="${2:?}"; shift 2 ;;
        -h|--help) sed -n '3,15p' "$0"; exit 0 ;;
        *) echo "priority.sh: unknown option: $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "priority.sh: run as root" >&2; exit 2; }
t0=$(date +%s)
work="$(mktemp -d /tmp/iolane-prio-vm.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"
# The release build, as tests/vm/all.sh's boot and the image: under software emulation a
# debug node's controller takes enough of the guest's CPU to show in streaming's p99.
nice -n 10 cargo build -q --release -p csi-driver --locked || exit 1
target="${CARGO_TARGET_DIR:-$repo/target}"
objcopy --strip-debug "$target/release/iolane" "$work/bin/iolane"
nice -n 10 cargo test -q -p iolane-tests --locked --no-run --message-format=json-render-diagnostics >"$work/build.json" || exit 1
exe="$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "suite" and "test" in m["target"]["kind"]:
        print(m["executable"])
' "$work/build.json" | tail -1)"
[ -x "$exe" ] || { echo "priority.sh: no suite test binary" >&2; exit 1; }
objcopy --strip-debug "$exe" "$work/bin/suite"
echo "priority.sh: [$(($(date +%s) - t0))s] built; booting with nvme0n1 and nvme1n1 throttled to $iops IOPS each"
b0=$(date +%s)
bash "$here/run.sh" --disks 2 --timeout 1200 --disk-opts "throttling.iops-total=$iops" --rwdir "$work" -- \
    env IOLANE_TEST_PRIORITY_IOPS="$iops" bash "$here/priority-test.sh" "$work/bin"
rc=$?
echo "priority.sh: VM run took $(($(date +%s) - b0))s; exit $rc"
exit "$rc"
