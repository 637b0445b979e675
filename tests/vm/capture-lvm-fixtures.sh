#!/usr/bin/env bash
# Runs INSIDE the VM (2 disks): captures real LVM output for the lvm backend's parser tests.
#
#   bash tests/vm/run.sh --disks 2 --rwdir csi-driver/tests/fixtures/lvm -- \
#       bash tests/vm/capture-lvm-fixtures.sh csi-driver/tests/fixtures/lvm
#
# Files, per captured command: NAME.json (a JSON report that exited 0 with empty stderr),
# or NAME.stdout / NAME.stderr / NAME.rc when the exit status or stderr is the point.
# Also prints facts about the guest (versions, cgroup controllers, loop, iolane binary) and
# the time each step took. Exits non-zero if a step that should succeed fails.
set -euo pipefail
out="${1:-${IOLANE_VM_RESULTS:?}/lvm}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
repo="${IOLANE_REPO:-$(cd "$(dirname "$0")/../.." && pwd)}"
vg=iolane
d0=/dev/nvme0n1
d1=/dev/nvme1n1
export LC_ALL=C

LVS_FIELDS=lv_name,vg_name,lv_attr,lv_size,pool_lv,data_percent,metadata_percent,lv_tags,lv_kernel_major,lv_kernel_minor,lv_dm_path,chunk_size,lv_metadata_size
lvs_json() { lvs --reportformat json --units b --nosuffix -o "$LVS_FIELDS" "$@"; }
vgs_json() { vgs --reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free,vg_tags,pv_count "$@"; }
pvs_json() { pvs --reportformat json --units b --nosuffix -o pv_name,vg_name,pv_size,pv_free "$@"; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
log() { echo "capture: $*"; }

# json NAME CMD...: CMD must exit 0 with empty stderr; its stdout becomes NAME.json.
json() {
    local name="$1" t rc=0
    shift
    t="$(now)"
    "$@" >"$out/$name.json" 2>"$out/.stderr" || rc=$?
    if [ "$rc" != 0 ] || [ -s "$out/.stderr" ]; then
        echo "capture: $name: '$*' exited $rc, stderr:" >&2
        cat "$out/.stderr" >&2
        rm -f "$out/.stderr"
        exit 1
    fi
    rm -f "$out/.stderr"
    log "$name.json ($(since "$t")s)"
}

# raw NAME CMD...: keeps stdout, stderr and the exit status, whatever they are.
raw() {
    local name="$1" t rc=0
    shift
    t="$(now)"
    "$@" >"$out/$name.stdout" 2>"$out/$name.stderr" || rc=$?
    echo "$rc" >"$out/$name.rc"
    log "$name: exit $rc ($(since "$t")s)"
}

# must CMD...: a setup step that has to succeed (output shown, not captured).
must() { "$@" || { echo "capture: failed: $*" >&2; exit 1; }; }

# The pool's data usage in bytes, from lvs.
pool_used_bytes() {
    lvs --noheadings --units b --nosuffix -o lv_size,data_percent "$vg/pool" \
        | awk '{ printf "%d", $1 * $2 / 100 }'
}

rm -f "$out"/*.json "$out"/*.stdout "$out"/*.stderr "$out"/*.rc "$out"/*.txt

log "== guest facts"
log "kernel: $(uname -r)"
lvm version >"$out/lvm-version.txt"
sed 's/^/capture: /' "$out/lvm-version.txt"
log "cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
log "cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
log "dmeventd: $(command -v dmeventd || echo absent); udevd: $(pgrep -x systemd-udevd >/dev/null && echo running || echo 'not running')"
if [ -x "$repo/target/debug/iolane" ]; then
    log "iolane --version: $("$repo/target/debug/iolane" --version)"
else
    log "iolane: $repo/target/debug/iolane not built"
fi
img="$(mktemp /tmp/loop.XXXXXX)"
truncate -s 64M "$img"
if loopdev="$(losetup -f --show "$img" 2>&1)"; then
    log "losetup: works ($loopdev)"
    losetup -d "$loopdev"
else
    log "losetup: FAILS: $loopdev"
fi
rm -f "$img"

log "== no PV, no VG"
raw blkid-blank-disk blkid -p -o export "$d0"
raw lvs-missing-vg lvs_json "$vg"
raw vgs-missing-vg vgs_json "$vg"
raw pvs-not-a-pv pvs_json "$d0"
json vgs-no-vgs vgs_json
json pvs-no-pvs pvs_json

log "== empty VG"
must pvcreate -q -y "$d0"
raw blkid-lvm2-pv blkid -p -o export "$d0"
must vgcreate -q "$vg" "$d0"
json lvs-empty-vg lvs_json "$vg"
json vgs-empty-vg vgs_json
json pvs-empty-vg pvs_json

log "== thin pool"
# LVM 2.03.16 refuses --errorwhenfull together with --type thin-pool (the help lists it):
raw lvcreate-thin-pool-errorwhenfull lvcreate --type thin-pool -L 1G --chunksize 64k \
    --zero n --errorwhenfull y -n pool "$vg"
# ... so create the pool, then set it (lvcreate -T -L 1G ... --errorwhenfull y VG/pool also
# works: captured at the end as lvcreate-T-errorwhenfull).
t="$(now)"
raw lvcreate-thin-pool lvcreate --type thin-pool -L 1G --chunksize 64k --zero n -n pool "$vg"
[ "$(cat "$out/lvcreate-thin-pool.rc")" = 0 ] || { cat "$out/lvcreate-thin-pool.stderr"; exit 1; }
raw lvchange-errorwhenfull lvchange --errorwhenfull y "$vg/pool"
[ "$(cat "$out/lvchange-errorwhenfull.rc")" = 0 ] || exit 1
log "thin pool with errorwhenfull: $(since "$t")s; lv_when_full=$(lvs --noheadings -o lv_when_full "$vg/pool" | tr -d ' ')"
json lvs-pool-only lvs_json "$vg"

log "== two thin LVs"
abc=iol-0a1b2c3d4e5f60718293a4b5c6d7e8f9
def=iol-f9e8d7c6b5a4938271605f4e3d2c1b0a
t="$(now)"
raw lvcreate-thin lvcreate --type thin -V 256M --thinpool pool -n "$abc" \
    --addtag iolane.name=pvc-8d7b3c1e-2f4a-4b6e-9c1d-5e6f7a8b9c0d "$vg"
[ "$(cat "$out/lvcreate-thin.rc")" = 0 ] || { cat "$out/lvcreate-thin.stderr"; exit 1; }
log "lvcreate thin LV: $(since "$t")s"
must lvcreate -q --type thin -V 512M --thinpool pool -n "$def" \
    --addtag iolane.name=pvc-x --addtag iolane.tier=gold "$vg"
must dd if=/dev/urandom of="/dev/$vg/$abc" bs=1M count=16 oflag=direct status=none
json lvs-two-thin-lvs lvs_json "$vg"
json vgs-two-thin-lvs vgs_json
json pvs-two-thin-lvs pvs_json
raw lvcreate-exists lvcreate --type thin -V 256M --thinpool pool -n "$abc" "$vg"
raw lvcreate-invalid-tag lvcreate --type thin -V 256M --thinpool pool -n iol-badtag \
    --addtag 'iolane.name=a b' "$vg"
raw lvremove-missing-lv lvremove -y "$vg/iol-00000000000000000000000000000000"
raw lvextend-thin lvextend -L 384M "$vg/$abc"
must lvchange -an "$vg/$def"
json lvs-inactive-lv lvs_json "$vg"
must lvchange -ay "$vg/$def"

log "== pool ~95% full"
big=iol-b16b16b16b16b16b16b16b16b16b16b1
# The sum of thin sizes now exceeds the pool: lvcreate warns on stderr and exits 0.
raw lvcreate-overprovisioned lvcreate --type thin -V 2G --thinpool pool -n "$big" "$vg"
[ "$(cat "$out/lvcreate-overprovisioned.rc")" = 0 ] || exit 1
pool_bytes="$(lvs --noheadings --units b --nosuffix -o lv_size "$vg/pool" | tr -d ' ')"
need_mib=$(((pool_bytes * 95 / 100 - $(pool_used_bytes)) / 1048576))
t="$(now)"
must dd if=/dev/zero of="/dev/$vg/$big" bs=1M count="$need_mib" oflag=direct status=none
log "wrote ${need_mib}MiB to reach 95%: $(since "$t")s"
json lvs-pool-95-full lvs_json "$vg"
json vgs-pool-95-full vgs_json "$vg"

log "== pool full (errorwhenfull=y)"
t="$(now)"
raw dd-pool-full-direct dd if=/dev/zero of="/dev/$vg/$big" bs=1M seek="$need_mib" \
    count=2048 oflag=direct
log "direct writer hit the full pool after $(since "$t")s: $(tail -n 3 "$out/dd-pool-full-direct.stderr" | tr '\n' ' ')"
t="$(now)"
raw dd-pool-full-buffered dd if=/dev/zero of="/dev/$vg/$def" bs=1M count=64 conv=fsync
log "buffered writer + fsync on the full pool: $(since "$t")s: $(tail -n 3 "$out/dd-pool-full-buffered.stderr" | tr '\n' ' ')"
dmesg | grep -E 'device-mapper: thin|I/O error' | sed 's/^\[[ 0-9.]*\] //' | awk '!seen[$0]++' \
    >"$out/dmesg-pool-full.txt" || true
json lvs-pool-full lvs_json "$vg"
log "pool attr when full: $(lvs --noheadings -o lv_attr "$vg/pool" 2>/dev/null | tr -d ' ')"

log "== a second VG on the second disk"
must pvcreate -q -y "$d1"
must vgcreate -q --addtag iolane.node=node-a --addtag iolane.role=scratch other "$d1"
# The one-command way to get a pool that errors when full: the -T VG/POOL form.
raw lvcreate-T-errorwhenfull lvcreate -T -L 1G --chunksize 64k --zero n --errorwhenfull y other/pool
[ "$(cat "$out/lvcreate-T-errorwhenfull.rc")" = 0 ] || { cat "$out/lvcreate-T-errorwhenfull.stderr"; exit 1; }
log "lvcreate -T ... --errorwhenfull y: lv_when_full=$(lvs --noheadings -o lv_when_full other/pool | tr -d ' ')"
json vgs-two-vgs vgs_json
json pvs-two-vgs pvs_json
json lvs-all-vgs lvs_json

# Keep the folder lean: drop empty .stdout/.stderr files, except blkid's empty stdout on a
# blank disk (that emptiness is the fixture).
for f in "$out"/*.stderr "$out"/*.stdout; do
    [ -s "$f" ] || [ "$f" = "$out/blkid-blank-disk.stdout" ] || rm -f "$f"
done
log "done: $(find "$out" -maxdepth 1 -type f | wc -l) files in $out"
