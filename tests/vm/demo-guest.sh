#!/usr/bin/env bash
# Runs INSIDE the VM: `iolane demo` with its work directory on a disk of its own, as the
# priority controllers need (they share the capacity of the disk under the loop images).
#
#   tests/vm/demo-guest.sh DISK IOLANE [DEMO FLAGS...]
#
# Makes an ext4 filesystem on DISK (an empty disk of the VM, e.g. /dev/nvme0n1: its
# contents are lost), mounts it under /tmp, runs `IOLANE --log warn demo --work-dir MOUNT
# FLAGS...`, unmounts it. Used by tests/vm/demo.sh (the disk throttled by QEMU, so that it
# is IO-bound) and tests/vm/tiers.sh (CI). Exit status: the demo's (0 the priority held,
# 3 it ran and cleaned up but the priority did not hold, 1 a step failed, 2 a prerequisite
# is missing), or 1 when the disk could not be prepared.
set -uo pipefail
disk="${1:?usage: demo-guest.sh DISK IOLANE [DEMO FLAGS...]}"
iolane="${2:?usage: demo-guest.sh DISK IOLANE [DEMO FLAGS...]}"
shift 2
[ -b "$disk" ] || { echo "demo-guest.sh: $disk is not a block device" >&2; exit 1; }
mnt="$(mktemp -d /tmp/iolane-demo-disk.XXXXXX)"
# Inode tables and journal zeroed now, not by ext4lazyinit in the background while the
# demo measures the disk.
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$disk" || { echo "demo-guest.sh: mkfs.ext4 $disk failed" >&2; exit 1; }
mount "$disk" "$mnt" || { echo "demo-guest.sh: mounting $disk failed" >&2; exit 1; }
echo "demo-guest.sh: $disk ($(cat "/sys/class/block/$(basename "$disk")/device/serial" 2>/dev/null | tr -d ' ')) as ext4 at $mnt"
"$iolane" --log warn demo --work-dir "$mnt" "$@"
rc=$?
umount "$mnt" || { echo "demo-guest.sh: unmounting $mnt failed" >&2; [ "$rc" = 0 ] && rc=1; }
rmdir "$mnt"
exit "$rc"
