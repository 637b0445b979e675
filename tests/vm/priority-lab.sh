#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The priority lab (issue 9): boots the test VM with ONE emulated NVMe disk that QEMU
# throttles to a fixed IOPS rate (so the disk, not the emulating CPU, is the bottleneck),
# and runs tests/vm/priority-guest.sh in it: static io.max caps, iocost weights and an
# adaptive io.max loop (iops-controller's priority_lab example, built here first),
# measured with fio per-100 ms samples.
#
#   tests/vm/priority-lab.sh [--iops N] [--timeout SECONDS] RESULTS_DIR
#
# RESULTS_DIR (created) receives each phase's fio JSON and IOPS logs, the loop's budget
# log and summary.txt (the table docs/priority.md quotes). Run as root on the host after
# tests/vm/setup.sh. run.sh cannot pass drive options, so this script starts vng itself,
# reusing tests/vm/guest.sh (same ctl-directory protocol as run.sh).
# Exit status: the guest script's; 124 on timeout; 125 if the guest never reported.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"

iops=800
timeout_s=1500
while [ $# -gt 0 ]; do
    case "$1" in
        --iops) iops="${2:?}"; shift 2 ;;
        --timeout) timeout_s="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
out="${1:?usage: priority-lab.sh [--iops N] [--timeout S] RESULTS_DIR}"
[ "$(id -u)" = 0 ] || { echo "priority-lab: run as root" >&2; exit 2; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
kernel="$(iolane_find_kernel)"
repo="$(cd "$here/../.." && pwd)"
(cd "$repo" && nice -n 10 cargo build -q -p iops-controller --example priority_lab)
lab_bin="$repo/target/debug/examples/priority_lab"
vng="$(iolane_find_vng)"

work="$(mktemp -d /tmp/iolane-prio.XXXXXX)"
vm_pid=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    if [ -n "$vm_pid" ] && kill -0 "$vm_pid" 2>/dev/null; then
        kill -TERM "$vm_pid" 2>/dev/null || true
        wait "$vm_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ctl="$work/ctl"
mkdir -p "$ctl"
truncate -s 4G "$work/nvme0.img"
printf '%s\0' bash "$here/priority-guest.sh" "$out" >"$ctl/argv"
printf '%s\0' "IOLANE_VM_DISKS=1" "IOLANE_VM_RESULTS=$out" "IOLANE_VM_CWD=$PWD" "PATH=$PATH" \
    "IOLANE_LAB_IOPS=$iops" "IOLANE_LAB_HERE=$here" "IOLANE_LAB_BIN=$lab_bin" >"$ctl/env"

drive="-drive file=$work/nvme0.img,if=none,id=nv0,format=raw,cache=unsafe,throttling.iops-total=$iops"
echo "priority-lab: device throttled to $iops IOPS; results in $out" >&2
started=$(date +%s)
timeout -k 20 "$timeout_s" "$vng" --run "$kernel" --disable-kvm --memory 2G --cpus 2 \
    --rwdir "$ctl" --rwdir "$out" \
    --exec "bash $(printf '%q' "$here/guest.sh") $(printf '%q' "$ctl")" \
    "--qemu-opts=$drive -device nvme,serial=nv0,drive=nv0" </dev/null > >(cat) 2> >(cat >&2) &
vm_pid=$!
set +e
wait "$vm_pid"
vng_rc=$?
set -e
vm_pid=""
echo "priority-lab: VM run took $(($(date +%s) - started))s" >&2
if [ ! -s "$ctl/rc" ]; then
    [ "$vng_rc" = 124 ] && exit 124
    exit 125
fi
exit "$(cat "$ctl/rc")"
