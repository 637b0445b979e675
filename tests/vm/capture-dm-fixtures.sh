#!/usr/bin/env bash
# Runs INSIDE the VM: captures real device-mapper thin-pool status lines (what the
# DM_TABLE_STATUS ioctl returns, through `dmsetup status`) and dm device names for the
# lvm backend's status parser tests.
#   bash tests/vm/run.sh --disks 2 --rwdir csi-driver/tests/fixtures/dm -- \
#       bash tests/vm/capture-dm-fixtures.sh csi-driver/tests/fixtures/dm
set -euo pipefail
out="${1:?usage: capture-dm-fixtures.sh OUTDIR}"
export LC_ALL=C
cap() { # NAME CMD...: stdout to NAME.txt
    local name="$1"; shift
    "$@" >"$out/$name.txt"
    echo "== $name: $*"; cat "$out/$name.txt"
}
pvcreate -q -y /dev/nvme0n1 /dev/nvme1n1
vgcreate -q iolane /dev/nvme0n1
vgcreate -q iolane-small /dev/nvme1n1
lvcreate -q -T -l 95%VG --chunksize 64k --zero y --errorwhenfull y iolane/pool
lvcreate -q -T -L 80M --chunksize 64k --zero y --errorwhenfull y iolane-small/pool
cap dmsetup-ls-pools-only dmsetup ls
cap dmsetup-status-pool-only dmsetup status
lvcreate -q --type thin -V 1G --thinpool pool -n iol-a iolane
lvcreate -q --type thin -V 1G --thinpool pool -n iol-b iolane-small
dd if=/dev/urandom of=/dev/iolane/iol-a bs=1M count=64 oflag=direct status=none
cap dmsetup-ls-with-thin dmsetup ls
cap dmsetup-status-with-thin dmsetup status
cap dmsetup-table-with-thin dmsetup table
cap lvs-with-thin lvs -o lv_name,vg_name,lv_attr,lv_size,data_percent,metadata_percent --units b --nosuffix
dd if=/dev/zero of=/dev/iolane-small/iol-b bs=1M count=200 oflag=direct status=none 2>/dev/null || true
cap dmsetup-status-small-full dmsetup status iolane--small-pool-tpool
cap lvs-small-full lvs -o lv_name,vg_name,lv_attr,lv_size,data_percent,metadata_percent --units b --nosuffix iolane-small
lvremove -q -y iolane/iol-a iolane-small/iol-b
cap dmsetup-ls-after-remove dmsetup ls
cap dmsetup-status-after-remove dmsetup status
vgremove -q -f -y iolane iolane-small
echo "capture-dm: OK"
