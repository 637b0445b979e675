#!/usr/bin/env bash
# Runs INSIDE the VM: the smallest check that the guest can do what the lvm backend needs.
#   bash tests/vm/run.sh --disks 2 -- bash tests/vm/smoke.sh
# Prints the kernel and LVM versions, builds a VG and a thin pool with one thin LV on
# /dev/nvme0n1, writes to the LV, removes everything; exits non-zero on any failure.
set -euo pipefail
dev="${1:-/dev/nvme0n1}"
vg=iolane_smoke

echo "smoke: kernel $(uname -r)"
echo "smoke: $(lvm version | sed -n 's/^ *LVM version: *//p' | head -1)"
echo "smoke: cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"

cleanup() {
    vgremove -f -y "$vg" >/dev/null 2>&1 || true
    pvremove -f -y "$dev" >/dev/null 2>&1 || true
}
trap cleanup EXIT

pvcreate -q -y "$dev"
vgcreate -q "$vg" "$dev"
# LVM 2.03.16 refuses `lvcreate --type thin-pool ... --errorwhenfull y` (exit 3, "Option
# --errorwhenfull is unsupported with thin pools"); the -T VG/POOL form accepts it.
lvcreate -q -T -L 1G --chunksize 64k --zero n --errorwhenfull y "$vg/pool"
when_full="$(lvs --noheadings -o lv_when_full "$vg/pool" | tr -d ' ')"
[ "$when_full" = error ] || { echo "smoke: pool lv_when_full is '$when_full', not error" >&2; exit 1; }
lvcreate -q --type thin -V 256M --thinpool pool -n smoke --addtag iolane.smoke=1 "$vg"
dd if=/dev/zero of="/dev/$vg/smoke" bs=1M count=16 oflag=direct status=none
LC_ALL=C lvs --noheadings -o lv_name,lv_attr,data_percent,lv_tags "$vg"
lvremove -q -y "$vg/smoke"
lvremove -q -y "$vg/pool"
vgremove -q -y "$vg"
pvremove -q -y "$dev"
trap - EXIT
echo "smoke: OK"
