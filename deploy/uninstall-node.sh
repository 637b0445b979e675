#!/usr/bin/env bash
# Removes what iolane left on one node, down to blank devices: the thin pool, the volume
# group and the PV labels of each device class, then every remaining signature on those
# devices (so `wipefs DEVICE` prints nothing), and optionally iolane's state directory.
#
# It refuses, changing nothing, while any iolane volume remains: an LV named `iol-*` or
# tagged `iolane.dev/v=...` in one of the VGs, or a loop-backend volume (a `*.json` under
# STATE_DIR/loop). It also refuses a VG holding an LV it does not know (anything but the
# thin pool and volumes), and a VG with a missing PV (see docs/runbooks.md, "A failed or
# replaced disk"). Delete the claims first (docs/runbooks.md, "Uninstall").
#
# Run it where the LVM tools see the devices with iolane's settings: in the node pod,
#   kubectl -n iolane exec -i POD -c iolane -- bash -s -- --dry-run < deploy/uninstall-node.sh
# or on the host as root, if it has lvm2 (and, with an LVM devices file, lists the devices).
#
# usage: uninstall-node.sh [--vg NAME]... [--thin-pool NAME] [--state-dir DIR]
#                          [--purge-state] [--dry-run]
#   --vg NAME         a device class's VG (repeatable; default: iolane)
#   --thin-pool NAME  the thin pool's LV name in every VG (default: pool)
#   --state-dir DIR   iolane node --state-dir (default: /var/lib/iolane)
#   --purge-state     also empty and remove STATE_DIR (loop images, LVM metadata backups)
#   --dry-run         print what would be done and change nothing
# Exit status: 0 done (or nothing to do), 1 a command failed, 2 usage, 3 refused.
set -euo pipefail

vgs_wanted=()
thin_pool=pool
state_dir=/var/lib/iolane
purge_state=0
dry_run=0

usage() {
    cat >&2 <<'USAGE'
usage: uninstall-node.sh [--vg NAME]... [--thin-pool NAME] [--state-dir DIR]
                         [--purge-state] [--dry-run]
USAGE
    exit 2
}
die() { echo "uninstall-node: $*" >&2; exit 1; }
refuse() { echo "uninstall-node: refusing: $*" >&2; exit 3; }

while [ $# -gt 0 ]; do
    case "$1" in
        --vg) [ $# -ge 2 ] || usage; vgs_wanted+=("$2"); shift 2 ;;
        --vg=*) vgs_wanted+=("${1#--vg=}"); shift ;;
        --thin-pool) [ $# -ge 2 ] || usage; thin_pool=$2; shift 2 ;;
        --thin-pool=*) thin_pool=${1#--thin-pool=}; shift ;;
        --state-dir) [ $# -ge 2 ] || usage; state_dir=$2; shift 2 ;;
        --state-dir=*) state_dir=${1#--state-dir=}; shift ;;
        --purge-state) purge_state=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage ;;
        *) echo "uninstall-node: unknown argument $1" >&2; usage ;;
    esac
done
[ ${#vgs_wanted[@]} -gt 0 ] || vgs_wanted=(iolane)
[ "$(id -u)" = 0 ] || die "must run as root"
for tool in lvs vgs pvs lvremove vgremove pvremove wipefs; do
    command -v "$tool" >/dev/null || die "$tool not found (run it in the node pod, or install lvm2 and util-linux)"
done

# Runs a change, or only prints it with --dry-run.
run() {
    if [ "$dry_run" = 1 ]; then
        echo "would run: $*"
    else
        echo "+ $*"
        "$@"
    fi
}

# 1. Look, refuse if anything is left. Nothing is changed before every check passed.
declare -A pvs_of=()
present=()
for vg in "${vgs_wanted[@]}"; do
    if ! vgs --noheadings -o vg_name "$vg" >/dev/null 2>&1; then
        echo "VG $vg: not present, nothing to do"
        continue
    fi
    attr=$(vgs --noheadings -o vg_attr "$vg" | tr -d ' ')
    if [ "${attr:3:1}" = p ]; then
        refuse "VG $vg is missing a PV (attributes $attr); follow docs/runbooks.md, \"A failed or replaced disk\", first"
    fi
    volumes=()
    strangers=()
    while IFS='|' read -r name tags; do
        name=$(echo "$name" | tr -d ' ')
        [ -n "$name" ] || continue
        if [[ "$name" == iol-* || ",$tags," == *",iolane.dev/v="* ]]; then
            volumes+=("$vg/$name")
        elif [ "$name" != "$thin_pool" ]; then
            strangers+=("$vg/$name")
        fi
    done < <(lvs --noheadings --separator '|' -o lv_name,lv_tags "$vg")
    if [ ${#volumes[@]} -gt 0 ]; then
        refuse "${#volumes[@]} iolane volume(s) remain: ${volumes[*]}; delete their claims first (kubectl get pv)"
    fi
    if [ ${#strangers[@]} -gt 0 ]; then
        refuse "VG $vg holds LVs iolane did not make: ${strangers[*]}; move or remove them yourself"
    fi
    pvs_of[$vg]=$(pvs --noheadings -o pv_name --select "vg_name=$vg" | tr -d ' ' | tr '\n' ' ')
    present+=("$vg")
done
loop_dir=$state_dir/loop
if [ -d "$loop_dir" ] && compgen -G "$loop_dir/*.json" >/dev/null; then
    refuse "loop-backend volumes remain in $loop_dir: $(cd "$loop_dir" && ls -- *.json | tr '\n' ' ')"
fi

# 2. Remove: the pool (it takes its hidden data and metadata LVs along), the VG, the PV
# labels, then any signature left on the devices.
for vg in "${present[@]}"; do
    devices=${pvs_of[$vg]}
    if lvs --noheadings -o lv_name "$vg/$thin_pool" >/dev/null 2>&1; then
        run lvremove -y "$vg/$thin_pool"
    fi
    run vgremove -y "$vg"
    for dev in $devices; do
        run pvremove -y "$dev"
        run wipefs -a "$dev"
    done
    if [ "$dry_run" = 0 ]; then
        for dev in $devices; do
            left=$(wipefs --noheadings "$dev" || true)
            [ -z "$left" ] || die "$dev still carries a signature: $left"
            echo "$dev: blank"
        done
    fi
done
# The state directory's content, then the directory itself; in the node pod it is a mount
# point, which stays (empty) until the DaemonSet is gone.
if [ "$purge_state" = 1 ] && [ -d "$state_dir" ]; then
    run find "$state_dir" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system -- {} +
    if [ "$dry_run" = 0 ] && ! rmdir -- "$state_dir" 2>/dev/null; then
        echo "$state_dir: emptied; it is a mount point here, remove it on the host once iolane is uninstalled"
    fi
fi
if [ "$dry_run" = 1 ]; then
    echo "dry run: nothing changed"
else
    echo "done"
fi
