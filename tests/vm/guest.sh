#!/usr/bin/env bash
# Runs INSIDE the VM (started by tests/vm/run.sh through vng --exec): prepares the guest,
# runs the command given to run.sh, and writes its exit status to <ctl>/rc.
#
# LVM on virtme-ng's read-only root: virtme-ng already bind-mounts an empty writable
# directory over /etc/lvm (so archive/ and backup/ are writable, and there is no lvm.conf:
# LVM runs on its compiled-in defaults), /run is a tmpfs (so /run/lock/lvm and /run/lvm work),
# and udev runs. So lvm needs no overrides; this script only checks /etc/lvm is writable and,
# if a future virtme-ng stops doing that, mounts a tmpfs there itself.
set -euo pipefail
ctl="${1:?usage: guest.sh CTL_DIR}"
boot_s="$(cut -d' ' -f1 /proc/uptime)"
echo "${boot_s%.*}" >"$ctl/boot-seconds"

while IFS= read -r -d '' kv; do export "${kv?}"; done <"$ctl/env"
mapfile -d '' argv <"$ctl/argv"

fail() {
    echo "guest.sh: $*" >&2
    echo 125 >"$ctl/rc"
    exit 125
}

modprobe dm-thin-pool || fail "modprobe dm-thin-pool failed"
modprobe loop || true

# Wait for the NVMe namespaces (udev or the nvme driver may still be probing).
deadline=$(($(date +%s) + 60))
for ((i = 0; i < IOLANE_VM_DISKS; i++)); do
    while [ ! -b "/dev/nvme${i}n1" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "/dev/nvme${i}n1 did not appear within 60s"
        sleep 0.2
    done
    serial="$(tr -d ' \n' <"/sys/class/nvme/nvme$i/serial")"
    [ "$serial" = "nv$i" ] || fail "/dev/nvme${i}n1 has serial '$serial', not nv$i (probe order)"
done

if ! grep -qw io /sys/fs/cgroup/cgroup.subtree_control; then
    echo +io >/sys/fs/cgroup/cgroup.subtree_control || fail "cannot enable +io"
fi

# run.sh --network user: QEMU's user network, configured as its DHCP server would.
if [ "${IOLANE_VM_NETWORK:-}" = user ]; then
    dev="$(ls /sys/class/net | grep -v '^lo$' | head -1)"
    [ -n "$dev" ] || fail "no network interface for --network user"
    ip link set "$dev" up || fail "ip link set $dev up failed"
    ip addr add 10.0.2.15/24 dev "$dev" || fail "ip addr add failed"
    ip route add default via 10.0.2.2 || fail "ip route add default failed"
fi

if ! touch /etc/lvm/.iolane-probe 2>/dev/null; then
    mount -t tmpfs -o mode=0755 tmpfs /etc/lvm || fail "cannot make /etc/lvm writable"
fi
rm -f /etc/lvm/.iolane-probe
mkdir -p /run/lock/lvm /run/lvm

# virtme-ng-init hands the script its virtio console ports on fds 3-5 as well as 0-2; lvm
# warns "File descriptor 3 (/dev/vport3p1) leaked on lvm invocation" on every call (to
# stderr, which would pollute captured stderr), so close every fd above 2 on a vport.
for fd in "/proc/$$/fd/"*; do
    n="${fd##*/}"
    if [ "$n" -gt 2 ] && [[ "$(readlink "$fd" 2>/dev/null)" == /dev/vport* ]]; then
        eval "exec $n>&-"
    fi
done

cd "$IOLANE_VM_CWD" 2>/dev/null || cd /
set +e
"${argv[@]}"
rc=$?
set -e
sync
echo "$rc" >"$ctl/rc"
exit "$rc"
