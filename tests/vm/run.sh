#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Runs a command as root inside a throwaway VM (virtme-ng, software emulation) that boots the
# host's kernel and the host's root filesystem read-only, with N empty NVMe disks attached.
#
#   tests/vm/run.sh [--disks N] [--disk-size 8G] [--memory 2G] [--timeout SECONDS]
#                   [--disk-opts OPTS] [--disk-opts-of I OPTS]... [--network user]
#                   [--rwdir HOST_DIR]... -- CMD...
#
# --disk-opts OPTS is appended to every disk's QEMU -drive options (comma-separated, e.g.
# `throttling.iops-total=1500` for a disk whose capacity is IO-bound, not CPU-bound);
# --disk-opts-of I OPTS to disk I's only (0-based: nvme<I>n1 in the guest), after those.
# --network user gives the guest QEMU's user-mode network, configured statically by the guest
# wrapper (eth0 10.0.2.15/24, default route via 10.0.2.2: what QEMU's DHCP server hands
# out; virtme-ng's own DHCP is off, since under load it once left the guest without a
# route); the host's loopback is then 10.0.2.2 from the guest (tests/k8s/kubelet.sh reaches
# its API server so).
#
# The command's exit status becomes this script's exit status; its output streams here.
# In the guest:
#   - the command runs in the directory run.sh was started from, as root;
#   - /dev/nvme0n1 ... /dev/nvme<N-1>n1 exist (disk i is the image nvme<i>.img, serial nv<i>;
#     the kernel numbers controllers in probe order, so the guest wrapper checks the serials
#     and fails if nvme<i> is not nv<i>);
#   - dm-thin-pool and loop are loaded, +io is set in /sys/fs/cgroup/cgroup.subtree_control;
#   - every --rwdir HOST_DIR (an existing directory) writes through at the same path, as does
#     IOLANE_VM_RESULTS, a directory that writes through to the host ($work/results);
#     IOLANE_REPO is the repository root; every IOLANE_* variable of the caller is passed on.
#
# Environment:
#   IOLANE_VM_WORK        work directory (disk images, results/); default: a fresh temp dir,
#                         removed at exit unless IOLANE_VM_KEEP_DISKS=1
#   IOLANE_VM_KEEP_DISKS  1: keep the disk images, and reuse existing ones on the next run
#                         with the same IOLANE_VM_WORK (a reboot test boots twice)
#   IOLANE_VM_TIMEOUT     overall limit in seconds (default 900); --timeout overrides it
#   IOLANE_VM_KERNEL      kernel image (default: the newest /boot/vmlinuz-* with modules)
#
# Exit status: the guest command's; 124 if the VM hit the timeout; 125 if the VM ended
# without the guest command reporting a status (boot failure, kernel panic); 2 for usage.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"

usage() {
    echo "usage: tests/vm/run.sh [--disks N] [--disk-size 8G] [--memory 2G] [--timeout SECONDS] [--disk-opts OPTS] [--disk-opts-of I OPTS]... [--network user] [--rwdir DIR]... -- CMD..." >&2
    exit 2
}

disks=1
disk_size=8G
memory=2G
timeout_s="${IOLANE_VM_TIMEOUT:-900}"
extra_rw=()
disk_opts=""
declare -A disk_opts_of=()
network=""
while [ $# -gt 0 ]; do
    case "$1" in
        --disks) disks="${2:?}"; shift 2 ;;
        --disk-size) disk_size="${2:?}"; shift 2 ;;
        --memory) memory="${2:?}"; shift 2 ;;
        --timeout) timeout_s="${2:?}"; shift 2 ;;
        --disk-opts) disk_opts=",${2:?}"; shift 2 ;;
        --disk-opts-of)
            case "${2:-}" in ''|*[!0-9]*) echo "run.sh: --disk-opts-of wants a disk index" >&2; exit 2 ;; esac
            disk_opts_of[$2]=",${3:?}"; shift 3 ;;
        --network) network="${2:?}"; shift 2 ;;
        --rwdir) extra_rw+=("$(cd "${2:?}" && pwd)"); shift 2 ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) echo "run.sh: unknown option: $1" >&2; usage ;;
    esac
done
[ $# -gt 0 ] || { echo "run.sh: no command given" >&2; usage; }
case "$disks" in ''|*[!0-9]*) echo "run.sh: --disks wants a number" >&2; exit 2 ;; esac
case "$timeout_s" in ''|*[!0-9]*) echo "run.sh: --timeout wants seconds" >&2; exit 2 ;; esac
for i in "${!disk_opts_of[@]}"; do
    [ "$i" -lt "$disks" ] || { echo "run.sh: --disk-opts-of $i: there are only $disks disks" >&2; exit 2; }
done

if [ "$(id -u)" != 0 ]; then
    echo "run.sh: run as root (the guest runs as the invoking user)" >&2
    exit 2
fi
kernel="${IOLANE_VM_KERNEL:-$(iolane_find_kernel)}"
vng="$(iolane_find_vng)"

keep="${IOLANE_VM_KEEP_DISKS:-0}"
own_work=0
if [ -n "${IOLANE_VM_WORK:-}" ]; then
    work="$IOLANE_VM_WORK"
    mkdir -p "$work"
else
    work="$(mktemp -d /tmp/iolane-vm.XXXXXX)"
    own_work=1
fi
work="$(cd "$work" && pwd)"
ctl="$work/ctl"        # run.sh <-> guest wrapper: argv, env, exit status
results="$work/results"
rm -rf "$ctl"
mkdir -p "$ctl" "$results"

vm_pid=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    if [ -n "$vm_pid" ] && kill -0 "$vm_pid" 2>/dev/null; then
        kill -TERM "$vm_pid" 2>/dev/null || true
        wait "$vm_pid" 2>/dev/null || true
    fi
    if [ "$keep" != 1 ]; then
        rm -f "$work"/nvme*.img
        if [ "$own_work" = 1 ]; then rm -rf "$work"; fi
    else
        echo "run.sh: kept $work" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

qemu_opts=()
for ((i = 0; i < disks; i++)); do
    img="$work/nvme$i.img"
    if [ "$keep" != 1 ] || [ ! -e "$img" ]; then
        rm -f "$img"
        truncate -s "$disk_size" "$img" # sparse
    fi
    # discard=unmap: a deallocate from the guest punches a hole in the image, so the range
    # reads zeros afterwards as on an NVMe device that zeroes deallocated blocks (qemu's
    # default ignores discards, and a discarded range would keep its old data).
    qemu_opts+=("-drive file=$img,if=none,id=nv$i,format=raw,cache=unsafe,discard=unmap$disk_opts${disk_opts_of[$i]:-}"
        "-device nvme,serial=nv$i,drive=nv$i")
done

# argv and the caller's IOLANE_* variables, NUL-separated, for the guest wrapper.
printf '%s\0' "$@" >"$ctl/argv"
{
    printf '%s\0' "IOLANE_VM_DISKS=$disks" "IOLANE_VM_RESULTS=$results" "IOLANE_REPO=$repo" \
        "IOLANE_VM_CWD=$PWD" "IOLANE_VM_NETWORK=$network" "PATH=$PATH"
    while IFS= read -r -d '' kv; do
        case "$kv" in
            IOLANE_VM_DISKS=*|IOLANE_VM_RESULTS=*|IOLANE_REPO=*|IOLANE_VM_CWD=*|IOLANE_VM_NETWORK=*) ;;
            IOLANE_*=*) printf '%s\0' "$kv" ;;
        esac
    done < <(env -0)
} >"$ctl/env"

vng_args=(--run "$kernel" --disable-kvm --memory "$memory" --cpus 2
    --rwdir "$ctl" --rwdir "$results"
    --exec "bash $(printf '%q' "$here/guest.sh") $(printf '%q' "$ctl")")
for d in "${extra_rw[@]}"; do vng_args+=(--rwdir "$d"); done
[ -z "$network" ] || vng_args+=(--network "$network" --no-dhcp)
if [ ${#qemu_opts[@]} -gt 0 ]; then
    vng_args+=("--qemu-opts=${qemu_opts[*]}") # "=": the value starts with "-"
fi
echo "run.sh: $(printf '%q ' "$vng" "${vng_args[@]}")" >&2
started=$(date +%s)
# timeout runs vng in its own process group and signals the whole group (vng, virtme-run,
# qemu) when time is up; -k kills what ignores SIGTERM. Started in the background so the
# INT/TERM traps above run at once. qemu reopens /proc/self/fd/1 and /2 for the guest's
# stdout/stderr, which truncates a regular file (and two writers then overwrite each
# other), so its output always goes through pipes.
timeout -k 20 "$timeout_s" "$vng" "${vng_args[@]}" </dev/null > >(cat) 2> >(cat >&2) &
vm_pid=$!
set +e
wait "$vm_pid"
vng_rc=$?
set -e
vm_pid=""
elapsed=$(($(date +%s) - started))

if { [ "$vng_rc" = 124 ] || [ "$vng_rc" = 137 ]; } && [ ! -s "$ctl/rc" ]; then
    echo "run.sh: VM timed out after ${timeout_s}s" >&2
    exit 124
fi
if [ ! -s "$ctl/rc" ]; then
    echo "run.sh: the VM ended (vng status $vng_rc) without the guest command's status" >&2
    exit 125
fi
rc="$(cat "$ctl/rc")"
echo "run.sh: guest command exited $rc; VM run took ${elapsed}s (boot: $(cat "$ctl/boot-seconds" 2>/dev/null || echo '?')s to the command)" >&2
exit "$rc"
