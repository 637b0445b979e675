#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Host side, root: the whole VM suite of the lvm backend.
#   1. tests/vm/setup.sh (installs what is missing);
#   2. builds `iolane` and the test binary `suite` on the host, and copies them (debug info
#      stripped: the guest reads them over 9p) to a work directory; the release `iolane`
#      for the priority boot is built in the background while the first two boots run
#      (tests/run.sh starts that build earlier, with the host tests);
#   3. one boot (2 NVMe disks) for tests/vm/lvm-suite.sh: the real csi-sanity
#      (tests/k8s/build.sh, sanity.sh), the conformance suite on the lvm backend, then the
#      pool-full, no-stale-data and SIGKILL-during-creates scenarios;
#   4. one boot (2 NVMe disks, the second throttled by QEMU to $IOLANE_VM_DEMO_IOPS, default
#      400 IOPS) for tests/vm/tiers.sh: the IO tier tests (io.max on the real cgroup root,
#      measured caps, reconciler) on the first disk and `iolane demo` on the second, whose
#      output is kept in $IOLANE_VM_DEMO_OUT (default: printed, then removed with the work
#      directory);
#   5. one boot (2 NVMe disks that QEMU throttles each to $IOLANE_VM_PRIORITY_IOPS, default
#      800 IOPS: the floor of the batch class is then one throttle unit per batch volume,
#      docs/priority.md) for tests/vm/priority-test.sh, with the release `iolane` (the
#      image's): the controllers' test with the
#      default tiers (`priority::on`), the two-device test of the priority controllers
#      (`priority::two-devices`) and the static tier cap on that IO-bound disk
#      (`priority::tier-cap`); the static caps as the control, which must fail
#      (`priority::off-fails`), with IOLANE_PRIORITY_MODES="off on" (tests/vm/priority.sh
#      runs both by default); IOLANE_VM_SKIP_PRIORITY=1 skips the boot;
#   6. tests/vm/reboot.sh: two boots on the same disk image;
#   7. one boot (2 NVMe disks, user network) for tests/k8s/kubelet.sh --reduced: a real
#      kubelet with containerd runs a pod with an iolane PVC (IOLANE_VM_SKIP_KUBELET=1 skips
#      it; IOLANE_VM_KUBELET_FULL=1 runs the full form: fio at the cap, restart, deletion);
#   8. one boot (1 NVMe disk) for deploy/tests/uninstall-node-vm.sh (IOLANE_VM_SKIP_UNINSTALL=1
#      skips it).
# Prints one line per test as it goes and `N passed, M failed` at the end; exits 1 if
# anything failed (a boot that fails before its tests report counts as a failure).
#
#   bash tests/vm/all.sh            (from anywhere; the repository is this script's ../..)
#
# Environment: IOLANE_VM_SUITE_FILTER (regex, lvm-suite.sh and tiers.sh tests to run, e.g.
# `csi-sanity` for csi-sanity alone; the
# reboot test runs unless IOLANE_VM_SKIP_REBOOT=1), IOLANE_VM_SKIP_TIERS=1 (skip the tiers
# boot), IOLANE_VM_SKIP_PRIORITY=1 (skip the priority boot), IOLANE_PRIORITY_MODES (its
# modes, default `on`; `none` runs only the two-device test and the tier cap),
# IOLANE_VM_PRIORITY_IOPS,
# IOLANE_VM_DEMO_OUT (host directory to keep the demo's output in), IOLANE_VM_DEMO_IOPS,
# CARGO_TARGET_DIR.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo" || exit 2
t0=$(date +%s)
stamp() { echo "all.sh: [$(($(date +%s) - t0))s] $*"; }

if [ "$(id -u)" != 0 ]; then
    echo "all.sh: run as root" >&2
    exit 2
fi

work="$(mktemp -d /tmp/iolane-vmsuite.XXXXXX)"
trap 'rm -rf "$work"' EXIT
results="$work/results"
: >"$results"
mkdir -p "$work/bin"

stamp "setup"
bash "$here/setup.sh" || { echo "all.sh: setup.sh failed" >&2; exit 1; }

stamp "build"
cargo build -p csi-driver --locked || { echo "all.sh: cargo build -p csi-driver failed" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-$repo/target}"
objcopy --strip-debug "$target/debug/iolane" "$work/bin/iolane"
# The test binary's path, from cargo's own report.
cargo test -p iolane-tests --locked --no-run --message-format=json-render-diagnostics >"$work/build.json" \
    || { echo "all.sh: building the test binaries failed" >&2; exit 1; }
for t in suite; do
    exe="$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[2] and "test" in m["target"]["kind"]:
        print(m["executable"])
' "$work/build.json" "$t" | tail -1)"
    if [ -z "$exe" ] || [ ! -x "$exe" ]; then
        echo "all.sh: no test binary for $t" >&2
        exit 1
    fi
    objcopy --strip-debug "$exe" "$work/bin/$t"
done
# csi-sanity, built from its pinned Go module (cached by version: tests/k8s/build.sh).
sanity="$(bash "$repo/tests/k8s/build.sh" csi-sanity | awk '$1 == "csi-sanity" {print $2}')"
if [ -z "$sanity" ] || [ ! -x "$sanity" ]; then
    echo "all.sh: building csi-sanity failed" >&2
    exit 1
fi
objcopy --strip-debug "$sanity" "$work/bin/csi-sanity"
stamp "binaries: $(du -sh "$work/bin"/* | awk '{printf "%s (%s) ", $2, $1}')"

# The priority boot (boot 3) runs the release build of `iolane`, the one the image ships:
# under software emulation a debug node's controller takes enough of the guest's CPU to
# show in streaming's p99 (docs/priority.md, *The test with the default tiers*). It is
# built here in the background at the lowest priority while boots 1 and 2 run, in a target
# directory of its own, so that no cargo command above or below waits on its lock. Under
# tests/run.sh the same build started with the host tests: this one then finds it done, or
# waits for it.
run_priority=0
if [ "${IOLANE_VM_SKIP_PRIORITY:-0}" != 1 ] \
    && { [ -z "${IOLANE_VM_SUITE_FILTER:-}" ] || grep -qE -- "$IOLANE_VM_SUITE_FILTER" <<<"priority::on priority::off-fails priority::two-devices priority::tier-cap"; }; then
    run_priority=1
    rel_target="$target/vm-release"
    nice -n 19 cargo build --release -p csi-driver --locked --target-dir "$rel_target" \
        >"$work/release-build.log" 2>&1 &
    rel_pid=$!
    stamp "building the release iolane for boot 3 in the background (pid $rel_pid)"
fi

stamp "boot 1 of 7: tests/vm/lvm-suite.sh"
# The lvm campaigns (IOLANE_VM_CAMPAIGN=1, see lvm-suite.sh) need a longer boot.
boot1_timeout=2400
[ "${IOLANE_VM_CAMPAIGN:-0}" = 1 ] && boot1_timeout=6000
bash "$here/run.sh" --disks 2 --timeout "$boot1_timeout" --rwdir "$work" -- \
    bash "$here/lvm-suite.sh" "$work/bin" "$results"
suite_rc=$?
if [ "$suite_rc" != 0 ] && ! grep -q '^FAILED ' "$results"; then
    echo "FAILED vm::lvm-suite 0 (run.sh exit $suite_rc before any test failed)" >>"$results"
fi
stamp "lvm-suite.sh exited $suite_rc"

if [ "${IOLANE_VM_SKIP_TIERS:-0}" != 1 ]; then
    stamp "boot 2 of 7: tests/vm/tiers.sh"
    mkdir -p "$work/tiers"
    # The demo's disk (nvme1n1) is IO-bound, as the priority it shows needs; the tier tests'
    # (nvme0n1) is not, as their caps need a device far faster than the caps.
    bash "$here/run.sh" --disks 2 --disk-opts-of 1 "throttling.iops-total=${IOLANE_VM_DEMO_IOPS:-400}" \
        --timeout 1200 --rwdir "$work" -- \
        env IOLANE_VM_RESULTS="$work/tiers" bash "$here/tiers.sh" "$work/bin" "$results"
    tiers_rc=$?
    if [ "$tiers_rc" != 0 ] && ! grep -q '^FAILED tiers::\|^FAILED demo::' "$results"; then
        echo "FAILED vm::tiers 0 (run.sh exit $tiers_rc before any test failed)" >>"$results"
    fi
    stamp "tiers.sh exited $tiers_rc"
    for f in "$work/tiers"/demo-*.txt; do
        [ -f "$f" ] && { echo "all.sh: $(basename "$f"):"; sed 's/^/    /' "$f"; }
    done
    if [ -n "${IOLANE_VM_DEMO_OUT:-}" ]; then
        mkdir -p "$IOLANE_VM_DEMO_OUT" && cp "$work/tiers"/demo-* "$IOLANE_VM_DEMO_OUT/" 2>/dev/null
    fi
fi

# The priority controllers on an IO-bound disk (issue 9). One result line per mode.
if [ "$run_priority" = 1 ]; then
    piops="${IOLANE_VM_PRIORITY_IOPS:-800}"
    stamp "waiting for the release iolane (boot 3)"
    if wait "$rel_pid" && mkdir -p "$work/bin-release" \
        && objcopy --strip-debug "$rel_target/release/iolane" "$work/bin-release/iolane" \
        && cp "$work/bin/suite" "$work/bin-release/suite"; then
        stamp "boot 3 of 7: tests/vm/priority-test.sh (release iolane; nvme0n1 and nvme1n1 throttled to $piops IOPS each)"
        bash "$here/run.sh" --disks 2 --timeout 900 --disk-opts "throttling.iops-total=$piops" --rwdir "$work" -- \
            env IOLANE_TEST_PRIORITY_IOPS="$piops" IOLANE_PRIORITY_MODES="${IOLANE_PRIORITY_MODES:-on}" \
            bash "$here/priority-test.sh" "$work/bin-release" "$results"
        prc=$?
        if [ "$prc" != 0 ] && ! grep -q '^FAILED priority::' "$results"; then
            echo "FAILED vm::priority 0 (run.sh exit $prc before any test failed)" >>"$results"
        fi
        stamp "priority-test.sh exited $prc"
    else
        tail -n 20 "$work/release-build.log" | sed 's/^/    /'
        echo "FAILED vm::priority 0 (the release build of iolane failed)" >>"$results"
    fi
fi

if [ "${IOLANE_VM_SKIP_REBOOT:-0}" != 1 ]; then
    stamp "boots 4 and 5 of 7: tests/vm/reboot.sh"
    bash "$here/reboot.sh" "$work/bin" "$results"
    stamp "reboot.sh exited $?"
fi

# The node side under a real kubelet: tests/k8s/kubelet.sh (host: etcd, kube-apiserver;
# guest: containerd, kubelet, iolane node on the lvm backend, csi-provisioner). Its reduced
# form by default (the pod with its iolane volume, io.max, the Kubernetes view); one result
# line per check, `kubelet::NAME`, with the stage's seconds.
if [ "${IOLANE_VM_SKIP_KUBELET:-0}" != 1 ] \
    && { [ -z "${IOLANE_VM_SUITE_FILTER:-}" ] || grep -qE -- "$IOLANE_VM_SUITE_FILTER" <<<"kubelet::"; }; then
    kmode=--reduced
    [ "${IOLANE_VM_KUBELET_FULL:-0}" = 1 ] && kmode=""
    stamp "boot 6 of 7: tests/k8s/kubelet.sh ${kmode:-(full)}"
    k0=$(date +%s)
    # shellcheck disable=SC2086 # kmode is one word or none
    IOLANE_BIN="$work/bin/iolane" bash "$repo/tests/k8s/kubelet.sh" $kmode >"$work/kubelet.log" 2>&1
    krc=$?
    sed 's/^/    /' "$work/kubelet.log"
    ks=$(($(date +%s) - k0))
    awk -v s="$ks" '$1 == "ok" && $2 ~ /^kubelet::/ {print "ok", $2, s}
        $1 == "FAILED" && $2 ~ /^kubelet::/ {$1 = ""; sub(/^ /, ""); n = $1; $1 = ""; print "FAILED", n, s $0}' \
        "$work/kubelet.log" >>"$results"
    if [ "$krc" != 0 ] && ! grep -q '^FAILED kubelet::' "$results"; then
        echo "FAILED vm::kubelet $ks (kubelet.sh exit $krc before any check failed)" >>"$results"
    fi
    stamp "kubelet.sh exited $krc"
fi

# deploy/uninstall-node.sh on a real VG and thin pool: refuses while volumes remain, leaves
# the disk blank. One result line, `uninstall::node`.
if [ "${IOLANE_VM_SKIP_UNINSTALL:-0}" != 1 ] \
    && { [ -z "${IOLANE_VM_SUITE_FILTER:-}" ] || grep -qE -- "$IOLANE_VM_SUITE_FILTER" <<<"uninstall::node"; }; then
    stamp "boot 7 of 7: deploy/tests/uninstall-node-vm.sh"
    u0=$(date +%s)
    bash "$here/run.sh" --disks 1 --timeout 900 -- bash "$repo/deploy/tests/uninstall-node-vm.sh" /dev/nvme0n1 \
        >"$work/uninstall.log" 2>&1
    urc=$?
    sed 's/^/    /' "$work/uninstall.log"
    if [ "$urc" = 0 ]; then
        echo "ok uninstall::node $(($(date +%s) - u0))" >>"$results"
    else
        echo "FAILED uninstall::node $(($(date +%s) - u0)) (exit $urc)" >>"$results"
    fi
    stamp "uninstall-node-vm.sh exited $urc"
fi

passed=$(grep -c '^ok ' "$results")
failed=$(grep -c '^FAILED ' "$results")
echo
echo "all.sh: results (seconds per test):"
sed 's/^/    /' "$results"
stamp "done"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
