#!/usr/bin/env bash
# Runs INSIDE the VM: deploy/uninstall-node.sh against a real VG and thin pool.
#   bash tests/vm/run.sh --disks 1 -- bash deploy/tests/uninstall-node-vm.sh
# Builds what iolane builds on a device (PV, VG `iolane`, thin pool `pool`) plus volumes,
# and checks that the script refuses, changing nothing, while an iolane volume (an `iol-*`
# LV, an LV tagged iolane.dev/v, a loop-backend volume) or an unknown LV remains; that
# --dry-run changes nothing; and that a real run leaves the device blank (`wipefs` prints
# nothing) and the state directory gone, and a second run has nothing to do.
# Prints `N passed, M failed` last; exits non-zero on any failure.
set -uo pipefail
dev=${1:-/dev/nvme0n1}
repo=${IOLANE_REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
script=$repo/deploy/uninstall-node.sh
state=$(mktemp -d /tmp/iolane-state.XXXXXX)
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
# expect STATUS WHAT ARGS...: runs the script, checks its exit status.
expect() {
    local want=$1 what=$2; shift 2
    local out rc
    out=$(bash "$script" --state-dir "$state" "$@" 2>&1); rc=$?
    printf '%s\n' "$out" | sed 's/^/     | /'
    if [ "$rc" = "$want" ]; then ok "$what (exit $rc)"; else fail "$what: exit $rc, want $want"; fi
}
# The VG and pool must still be there, untouched.
intact() {
    if lvs --noheadings -o lv_name iolane/pool >/dev/null 2>&1; then ok "$1: pool intact"; else fail "$1: pool gone"; fi
}

[ -z "$(wipefs --noheadings "$dev")" ] || { echo "uninstall-node-vm: $dev is not blank to start with" >&2; exit 1; }
pvcreate -q -y "$dev"
vgcreate -q iolane "$dev"
lvcreate -q -T -L 1G --chunksize 64k --errorwhenfull y iolane/pool
tags=(--addtag iolane.dev/v=1 --addtag iolane.dev/name=pvc-1)

# An iol-* volume, as iolane names them.
lvcreate -q --type thin -V 64M --thinpool pool -n iol-0123456789abcdef0123456789abcdef "${tags[@]}" iolane
expect 3 "refuses with an iol-* volume (dry run)" --dry-run
expect 3 "refuses with an iol-* volume"
intact "iol-* volume"
lvremove -q -y iolane/iol-0123456789abcdef0123456789abcdef

# A volume known only by its tag.
lvcreate -q --type thin -V 64M --thinpool pool -n renamed "${tags[@]}" iolane
expect 3 "refuses with an LV tagged iolane.dev/v"
intact "tagged LV"
lvremove -q -y iolane/renamed

# An LV iolane did not make.
lvcreate -q --type thin -V 64M --thinpool pool -n someone-elses iolane
expect 3 "refuses with an unknown LV"
intact "unknown LV"
lvremove -q -y iolane/someone-elses

# A loop-backend volume in the state directory.
mkdir -p "$state/loop" && echo '{}' > "$state/loop/iol-x.json"
expect 3 "refuses with a loop-backend volume"
intact "loop volume"
rm "$state/loop/iol-x.json"

expect 0 "dry run with no volume" --dry-run --purge-state
intact "dry run"
if [ -d "$state" ]; then ok "dry run kept the state directory"; else fail "dry run removed the state directory"; fi

expect 0 "uninstall" --purge-state
left=$(wipefs --noheadings "$dev")
if [ -z "$left" ]; then ok "wipefs $dev prints nothing"; else fail "wipefs $dev prints: $left"; fi
if vgs iolane >/dev/null 2>&1; then fail "VG iolane still exists"; else ok "VG iolane gone"; fi
if [ -e "$state" ]; then fail "state directory still exists"; else ok "state directory gone"; fi
expect 0 "second run has nothing to do"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
