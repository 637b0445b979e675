#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR disable=SC2154 # K8S_BIN_* are set by k8s_build (lib.sh)
# The node side against the real thing: a real kubelet (k8s.io/kubernetes, pinned in
# versions.sh) with containerd and runc from Debian's packages, in the VM (tests/vm/run.sh:
# cgroup v2 with io, dm-thin, NVMe), beside a real `iolane node` on the lvm backend, the
# real csi-provisioner with the node DaemonSet's flags, and the registration stand-in
# (tests/k8s/registrar/). etcd and kube-apiserver run here on the host (lib.sh); the guest
# reaches them through QEMU's user network at 10.0.2.2. The guest half is kubelet-guest.sh,
# which runs the checks and prints `ok kubelet::NAME` / `FAILED kubelet::NAME (why)` lines
# and `N passed, M failed`.
#
#   bash tests/k8s/kubelet.sh            (host, root; the full run, one VM boot)
#   bash tests/k8s/kubelet.sh --reduced  (what CI runs: up to the pod with its iolane
#                                         volume, io.max and the Kubernetes view; no fio,
#                                         restart or deletion)
#
# Here: builds or reuses kube-apiserver, kubectl, etcd, csi-provisioner and kubelet
# (tests/k8s/build.sh) and the registrar (cached by the hash of its sources), builds
# `iolane` if IOLANE_BIN is not set, copies them with debug info stripped (the guest reads
# them over 9p), builds the pause image and the test image (busybox-static, fio and its
# libraries) as image archives (oci-image.py), starts etcd and kube-apiserver, applies
# deploy/base's namespace, CSIDriver and StorageClasses, and boots the VM.
#
# Environment: IOLANE_BIN; IOLANE_K8S_KEEP=DIR (keep logs in DIR); IOLANE_KUBELET_CAP
# (the batch tier's IOPS cap in the node config, default 200).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
mode=full
case "${1:-}" in
--reduced) mode=reduced ;;
"") ;;
*) echo "kubelet.sh: usage: kubelet.sh [--reduced]" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
    echo "kubelet.sh: run as root (it boots the VM)" >&2
    exit 2
fi
K8S_T0=$(date +%s)

bin="${IOLANE_BIN:-$repo/target/debug/iolane}"
if [ -z "${IOLANE_BIN:-}" ]; then
    (cd "$repo" && cargo build -p csi-driver --locked) || exit 1
fi
k8s_log "building/reusing kube-apiserver, kubectl, etcd, csi-provisioner, kubelet"
k8s_build kube-apiserver kubectl etcd csi-provisioner kubelet || exit 1

# The registrar stand-in (registrar/main.go): cached under the hash of its sources.
reg_hash="$(cat "$here/registrar/go.mod" "$here/registrar/go.sum" "$here/registrar/main.go" | sha256sum | cut -c1-12)"
reg_bin="${IOLANE_K8S_BIN_CACHE:-/var/cache/iolane/k8s-bin}/iolane-registrar-$reg_hash/iolane-registrar"
if [ ! -x "$reg_bin" ]; then
    mkdir -p "$(dirname "$reg_bin")"
    (cd "$here/registrar" && CGO_ENABLED=0 GOFLAGS=-mod=readonly "${IOLANE_GO:-/usr/local/go/bin/go}" build -trimpath -o "$reg_bin.tmp" .) \
        && mv "$reg_bin.tmp" "$reg_bin" || { echo "kubelet.sh: building the registrar failed" >&2; exit 1; }
fi

bash "$repo/tests/vm/setup.sh" >/dev/null || { echo "kubelet.sh: tests/vm/setup.sh failed" >&2; exit 1; }
k8s_test_setup kubelet
mkdir -p "$K8S_DIR/bin" "$K8S_DIR/images" "$K8S_DIR/logs"
for b in "$bin:iolane" "$K8S_BIN_kubelet:kubelet" "$K8S_BIN_csi_provisioner:csi-provisioner" \
    "$K8S_BIN_kubectl:kubectl" "$reg_bin:iolane-registrar"; do
    objcopy --strip-debug "${b%%:*}" "$K8S_DIR/bin/${b##*:}" || exit 1
done

# The images, from files on this machine: the pod sandbox's pause (busybox's sleep), a
# busybox image (2 MB: the reduced run's pod) and the test image (busybox-static for the
# shell, fio with the shared libraries it loads: 84 MB, which the guest takes ~45 s to
# import under emulation, so only the full run imports it).
t=$(date +%s%N)
python3 "$here/oci-image.py" --name iolane.test/pause:1 --out "$K8S_DIR/images/pause.tar" \
    --file /bin/busybox=/bin/busybox --link /bin/sleep=busybox \
    --entrypoint /bin/sleep --cmd 2147483647 || exit 1
links=()
for a in sh sleep cat touch ls rm echo; do links+=(--link "/bin/$a=busybox"); done
python3 "$here/oci-image.py" --name iolane.test/busybox:1 --out "$K8S_DIR/images/busybox.tar" \
    --file /bin/busybox=/bin/busybox "${links[@]}" --dir data --entrypoint /bin/sh || exit 1
python3 "$here/oci-image.py" --name iolane.test/fio:1 --out "$K8S_DIR/images/fio.tar" \
    --file /bin/busybox=/bin/busybox "${links[@]}" --file /usr/bin/fio=/usr/bin/fio \
    --with-libs /usr/bin/fio --dir data --entrypoint /bin/sh || exit 1
k8s_log "images built in $((($(date +%s%N) - t) / 1000000)) ms: $(du -sh "$K8S_DIR/images"/* | awk '{printf "%s (%s) ", $2, $1}')"

# The control plane on the host's loopback; QEMU's user network maps the guest's 10.0.2.2
# to it, so the serving certificate names that address too.
t=$(date +%s%N)
K8S_EXTRA_SAN=IP:10.0.2.2 k8s_certs || exit 1
k8s_start_etcd || { tail -20 "$K8S_DIR/etcd.log"; exit 1; }
k8s_start_apiserver || { tail -40 "$K8S_DIR/apiserver.log"; exit 1; }
k8s_log "control plane up in $((($(date +%s%N) - t) / 1000000)) ms ($("$K8S_BIN_kube_apiserver" --version))"
sed "s#server: https://127.0.0.1:#server: https://10.0.2.2:#" "$K8S_DIR/kubeconfig" >"$K8S_DIR/kubeconfig-guest"
k8s_apply_base || exit 1

k8s_log "booting the VM ($mode run)"
bash "$repo/tests/vm/run.sh" --network user --disks 2 --memory 3G --timeout 1500 \
    --rwdir "$K8S_DIR" -- env IOLANE_KUBELET_MODE="$mode" IOLANE_KUBELET_CAP="${IOLANE_KUBELET_CAP:-200}" \
    bash "$here/kubelet-guest.sh" "$K8S_DIR"
rc=$?
if [ "$rc" != 0 ] && [ -n "${IOLANE_K8S_KEEP:-}" ]; then
    k8s_log "logs kept in $K8S_DIR/logs"
fi
k8s_log "done (exit $rc)"
exit "$rc"
