#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The real CSI sanity suite (kubernetes-csi/csi-test's csi-sanity, pinned in versions.sh)
# against a real `iolane node`, with no skip list: what csi-sanity skips, it skips by the
# capabilities iolane reports.
#
#   bash tests/k8s/sanity.sh                     (host, root: loop backend on a temp state dir)
#   bash tests/k8s/sanity.sh --lvm-devices DEV   (lvm backend on DEV, wiped; the VM suite)
#
# Starts `iolane node` ($IOLANE_BIN, default target/debug/iolane; built by cargo if
# missing) on a socket in a temp directory, runs csi-sanity with its staging and target
# paths under that directory, prints csi-sanity's summary lines (Ginkgo's `Ran N of M
# Specs` and `N Passed | N Failed | N Pending | N Skipped`, and each failed spec), then
# stops the node and checks that no mount under the temp directory and no loop device
# over the node's state is left (a leftover is a failure, then removed).
#
# Environment: IOLANE_BIN, IOLANE_CSI_SANITY (a csi-sanity binary; default: built by
# tests/k8s/build.sh), IOLANE_SANITY_LOG (keep csi-sanity's and the node's output there),
# IOLANE_SANITY_ARGS (more csi-sanity arguments, e.g. `--ginkgo.focus=NodeStage`),
# IOLANE_SANITY_SPARES=N (lvm: the class gets `spares = N`, given in a node config
# instead of --lvm-devices; spares left at the end are not counted as left volumes).
# Exit status: 0 when csi-sanity passed and nothing was left behind, 1 otherwise.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

lvm_devices=""
case "${1:-}" in
--lvm-devices) lvm_devices="${2:?--lvm-devices needs a device list}" ;;
"") ;;
*) echo "sanity.sh: usage: sanity.sh [--lvm-devices DEV[,DEV]]" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
    echo "sanity.sh: run as root (the node makes loop devices and mounts)" >&2
    exit 2
fi

bin="${IOLANE_BIN:-$repo/target/debug/iolane}"
if [ ! -x "$bin" ]; then
    (cd "$repo" && cargo build -p csi-driver --locked) || exit 1
fi
sanity="${IOLANE_CSI_SANITY:-}"
if [ -z "$sanity" ]; then
    sanity="$(bash "$here/build.sh" csi-sanity | awk '$1 == "csi-sanity" {print $2}')"
    [ -x "$sanity" ] || { echo "sanity.sh: building csi-sanity failed" >&2; exit 1; }
fi

tmp="$(mktemp -d /tmp/iolane-sanity.XXXXXX)"
log="${IOLANE_SANITY_LOG:-$tmp/log}"
mkdir -p "$log"
node_pid=""
t0=$(date +%s)

# Stops the node (SIGTERM, then SIGKILL after 30 s) and returns once it has exited.
stop_node() {
    [ -n "$node_pid" ] || return 0
    kill -TERM "$node_pid" 2>/dev/null
    local deadline=$(($(date +%s) + 30))
    while kill -0 "$node_pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
        sleep 0.2
    done
    kill -KILL "$node_pid" 2>/dev/null
    wait "$node_pid" 2>/dev/null
    node_pid=""
}

# Mounts under the temp directory and loop devices over files in it, deepest mount first.
leftover_mounts() { findmnt -rn -o TARGET | grep -F "$tmp/" | sort -r; }
leftover_loops() { losetup -n -l -O NAME,BACK-FILE 2>/dev/null | awk -v d="$tmp/" 'index($2, d) == 1 {print $1}'; }

cleanup() {
    stop_node
    local m l
    for m in $(leftover_mounts); do umount -l "$m"; done
    for l in $(leftover_loops); do losetup -d "$l"; done
    if [ -z "${IOLANE_SANITY_LOG:-}" ]; then
        rm -rf "$tmp"
    else
        rm -rf "${tmp:?}/state" "$tmp/csi-mount" "$tmp/csi-staging"
    fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

sock="$tmp/csi.sock"
node_args=(node --endpoint "unix://$sock" --node-id sanity-node --state-dir "$tmp/state"
    --path-root "$tmp" --kubernetes off --log info)
spares="${IOLANE_SANITY_SPARES:-0}"
if [ -n "$lvm_devices" ] && [ "$spares" != 0 ]; then
    devices_toml="$(sed 's/[^,][^,]*/"&"/g; s/,/, /g' <<<"$lvm_devices")"
    printf '[[device_class]]\nname = "default"\ndevices = [%s]\nspares = %s\n' \
        "$devices_toml" "$spares" >"$tmp/node.toml"
    node_args+=(--config "$tmp/node.toml")
elif [ -n "$lvm_devices" ]; then
    node_args+=(--lvm-devices "$lvm_devices")
fi
"$bin" "${node_args[@]}" >"$log/node.log" 2>&1 &
node_pid=$!
# The node is ready when its socket exists (lvm: after it made or adopted the VG).
deadline=$(($(date +%s) + ${IOLANE_SANITY_START_TIMEOUT:-120}))
while [ ! -S "$sock" ]; do
    if ! kill -0 "$node_pid" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
        echo "sanity.sh: iolane node did not start (socket $sock); its log:" >&2
        tail -50 "$log/node.log" >&2
        exit 1
    fi
    sleep 0.2
done
backend="loop backend"
[ -z "$lvm_devices" ] || backend="lvm backend on $lvm_devices, spares $spares"
echo "sanity.sh: iolane node up in $(($(date +%s) - t0)) s ($backend)"

# 64 MiB volumes: big enough for ext4 and for the lvm backend's 4 MiB extents, small
# enough that every spec's mkfs is quick; expansion asks for twice that.
size=$((64 * 1024 * 1024))
# The VolumeAttributesClass parameters csi-sanity creates and modifies volumes with (its
# MODIFY_VOLUME specs): a tier the node knows.
printf 'iolane.dev/tier: streaming\n' >"$tmp/mutable.yaml"
# shellcheck disable=SC2086 # IOLANE_SANITY_ARGS is a list of arguments
"$sanity" \
    --csi.endpoint "unix://$sock" \
    --csi.mountdir "$tmp/csi-mount" \
    --csi.stagingdir "$tmp/csi-staging" \
    --csi.testvolumesize "$size" \
    --csi.testvolumeexpandsize "$((2 * size))" \
    --csi.testvolumemutableparameters "$tmp/mutable.yaml" \
    --csi.junitfile "$log/junit.xml" \
    --ginkgo.no-color \
    --ginkgo.timeout 30m \
    ${IOLANE_SANITY_ARGS:-} >"$log/csi-sanity.log" 2>&1
rc=$?
secs=$(($(date +%s) - t0))

# Ginkgo's summary: the failed specs, `Ran N of M Specs in S seconds`, and the counts.
grep -E '^\s*\[FAIL\]|^Ran [0-9]+ of [0-9]+ Specs|[0-9]+ Passed \| [0-9]+ Failed' "$log/csi-sanity.log" | sed 's/^\s*/csi-sanity: /'
if [ "$rc" != 0 ]; then
    echo "sanity.sh: csi-sanity exited $rc (set IOLANE_SANITY_LOG=DIR to keep its whole output); the end of it:"
    grep -nE '^\s*\[FAILED\]|^\s*\[PANICKED\]' "$log/csi-sanity.log" | head -40 | sed 's/^/    /'
    tail -30 "$log/csi-sanity.log" | sed 's/^/    /'
    echo "sanity.sh: the end of the node's log:"
    tail -30 "$log/node.log" | sed 's/^/    /'
fi

stop_node
left="$(leftover_mounts; leftover_loops)"
if [ -n "$left" ]; then
    echo "sanity.sh: FAILED: left behind after csi-sanity and the node stopped:"
    while read -r l; do echo "    $l"; done <<<"$left"
    rc=1
fi
if [ -n "$lvm_devices" ]; then
    # Spares (tag iolane.dev/spare=...) are the class's own, not volumes left behind.
    lvs="$(lvs --noheadings -o lv_name,lv_tags iolane 2>/dev/null |
        awk '$1 ~ /^iol(snap)?-/ && $2 !~ /iolane.dev\/spare=/ {print $1}')"
    if [ -n "$lvs" ]; then
        echo "sanity.sh: FAILED: volumes or snapshots left in VG iolane: $(tr -s ' \n' ' ' <<<"$lvs")"
        rc=1
    fi
fi
echo "sanity.sh: $([ "$rc" = 0 ] && echo ok || echo FAILED) in $secs s"
[ "$rc" = 0 ]
