#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Runs INSIDE the VM (tests/k8s/kubelet.sh boots it): containerd (Debian's, runc, cgroupfs),
# the images kubelet.sh built, `iolane node` on the lvm backend (/dev/nvme0n1, deploy/base's
# node config with the batch tier capped at IOLANE_KUBELET_CAP IOPS), the registrar, the
# real csi-provisioner (DaemonSet flags) and the real kubelet against kube-apiserver on the
# host (10.0.2.2), then the checks, one `ok kubelet::NAME` / `FAILED kubelet::NAME (why)`
# line each and `N passed, M failed`:
#   registered   kubelet's plugin watcher registered csi.iolane.dev (CSINode with topology)
#   volume-pod   a pod with an iolane-batch PVC (WaitForFirstConsumer; the test plays the
#                scheduler's and the PV controller's part, as provision.sh) runs: kubelet's
#                NodeStageVolume and NodePublishVolume reached iolane (its log, the mounts)
#   io-max       the pod's own cgroup (kubelet's cgroupfs layout) has the tier's io.max line
#                for the volume's device
#   capacity     CSIStorageCapacity for both classes with this node's topology
#   k8s-view     PV and PVC Bound, the PV's node affinity is this node, its size is the LV's
# Full run only (IOLANE_KUBELET_MODE=full):
#   pod          (before volume-pod) a pod without volumes runs (pause sandbox, busybox image)
#   fio-cap      fio in the pod (4 KiB randread, direct) is held at the cap
#   restart      iolane stopped, the line removed behind its back, iolane started: it adopts
#                the publication from the mount table and writes the line again; status shows it
#   delete-pod   the pod deleted: kubelet's NodeUnpublish/NodeUnstage reach iolane, no mount
#                and no io.max line for the device is left
#   delete-pvc   the PVC deleted and the PV Released: csi-provisioner deletes the volume, the
#                LV is gone
#
#   bash tests/k8s/kubelet-guest.sh WORK   (WORK: kubelet.sh's directory, written through)
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
W="${1:?usage: kubelet-guest.sh WORK}"
mode="${IOLANE_KUBELET_MODE:-full}"
cap="${IOLANE_KUBELET_CAP:-200}"
K8S_T0=$(date +%s)
K8S_DIR="$W"
K8S_RESULT_PREFIX=kubelet
# Each poll starts kubectl, a large Go binary that takes seconds under emulation and takes
# its CPU from kubelet and iolane: poll every 3 s, not every 0.5 s.
K8S_POLL_SECONDS=3
b="$W/bin"
logs="$W/logs"
kc="$W/kubeconfig-guest"
node=test-node
driver=csi.iolane.dev
kubelet_dir=/var/lib/kubelet
plugin_dir="$kubelet_dir/plugins/$driver"
sock="$plugin_dir/csi.sock"
D=/run/iolane-kubelet
passed=0
failed=0
mkdir -p "$logs" "$D"
trap k8s_stop_all EXIT
# A writable discovery cache: without one every kubectl call fetches the API's discovery
# documents again, which costs seconds each under emulation.
# (Objects are made with `create --validate=false`: validation would fetch and parse the
# API's OpenAPI documents in every call.)
kubectl() { "$b/kubectl" --kubeconfig "$kc" --cache-dir "$D/kube-cache" "$@"; }
export PATH="$b:$PATH"

show_logs() {
    local f
    for f in "$logs"/{iolane,iolane-restarted,kubelet,containerd,provisioner,registrar}.log; do
        [ -f "$f" ] || continue
        echo "--- end of $f"
        grep -v '^I[0-9]' "$f" | tail -"${1:-20}" | sed 's/^/    /'
    done
}
finish() {
    k8s_log "done: stage wall time $(($(date +%s) - K8S_T0)) s"
    echo "$passed passed, $failed failed"
    [ "$failed" = 0 ] && [ "$passed" -gt 0 ]
    exit $?
}
die() { # NAME WHY: a step everything after depends on failed
    show_logs 30
    result "$1" 1 "$2"
    finish
}

# cgroupfs: PID 1 here is virtme-ng-init, not systemd, so there is no systemd to ask for
# slices; kubelet and runc write /sys/fs/cgroup/kubepods/... themselves.
for c in cpuset cpu io memory pids hugetlb; do
    grep -qw "$c" /sys/fs/cgroup/cgroup.subtree_control || echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control
done
# containerd's overlayfs snapshots cannot have their upper layer on the guest's /var
# overlay, and kubelet's eviction manager wants a block device under its image and node
# filesystems (cadvisor finds none for a tmpfs): the second disk, ext4, holds both.
mkdir -p /var/lib/containerd "$kubelet_dir" /run/containerd "$D/cni/bin" "$D/cni/conf" "$D/disk"
mkfs.ext4 -q -F /dev/nvme1n1 || die setup "mkfs.ext4 /dev/nvme1n1 failed"
mount /dev/nvme1n1 "$D/disk"
mkdir -p "$D/disk/containerd" "$D/disk/kubelet"
mount --bind "$D/disk/containerd" /var/lib/containerd
mount --bind "$D/disk/kubelet" "$kubelet_dir"
mount --make-rshared "$kubelet_dir"
mkdir -p "$plugin_dir" "$kubelet_dir/plugins_registry"

# --- containerd ------------------------------------------------------------------------
cat >"$D/containerd.toml" <<EOF
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "iolane.test/pause:1"
  # No apparmor_parser on the machine to load containerd's profile with.
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  # No CNI plugin: the test pods use the host's network.
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$D/cni/bin"
    conf_dir = "$D/cni/conf"
EOF
t=$(date +%s%N)
k8s_start containerd "$logs/containerd.log" containerd --config "$D/containerd.toml"
k8s_wait 60 containerd ctr --address /run/containerd/containerd.sock version || die containerd "containerd did not start"
images="pause busybox"
[ "$mode" != full ] || images="$images fio"
for i in $images; do
    ctr --address /run/containerd/containerd.sock -n k8s.io images import "$W/images/$i.tar" >>"$logs/ctr.log" 2>&1 \
        || { cat "$logs/ctr.log"; die containerd "ctr images import $i.tar failed"; }
done
k8s_log "containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1 {print $3}'), images imported, in $((($(date +%s%N) - t) / 1000000)) ms:"
ctr --address /run/containerd/containerd.sock -n k8s.io images ls -q | sed 's/^/    /'

# --- iolane node, registrar, csi-provisioner -------------------------------------------
# deploy/base's node config: this VM's disk, the batch tier capped at $cap IOPS, and the
# priority controllers off, so that the pod's line is exactly that cap (with them on, an
# idle batch volume's line is its dynamic share under the cap; tests/vm/priority.sh tests
# them).
{
    printf '[priority]\nenabled = false\n\n'
    sed -e 's#^devices = .*#devices = ["/dev/nvme0n1"]#' \
        -e "/^\[tiers.batch\]/,/^\$/{s/^read_iops = .*/read_iops = $cap/;s/^write_iops = .*/write_iops = $cap/}" \
        "$repo/deploy/base/node-config.toml"
} >"$D/node.toml"
start_iolane() { # LOG
    k8s_start iolane "$1" "$b/iolane" node --endpoint "unix://$sock" \
        --node-id "$node" --state-dir "$D/iolane-state" --config "$D/node.toml" \
        --driver-name "$driver" --path-root "$kubelet_dir" --cgroup-root /sys/fs/cgroup \
        --reconcile-period 10 --metrics-address 127.0.0.1:9820 --status-address 127.0.0.1:9821 --kubernetes auto \
        --kubeconfig "$kc"
}
start_iolane "$logs/iolane.log"
k8s_wait 240 "iolane node socket" test -S "$sock" || die iolane "no socket"
k8s_start registrar "$logs/registrar.log" "$b/iolane-registrar" -driver "$driver" \
    -endpoint "$sock" -registration-dir "$kubelet_dir/plugins_registry"
# The DaemonSet's csi-provisioner arguments, but no owner for the capacity objects (-1):
# the DaemonSet's pod does not exist here.
# csi-provisioner exits when it loses its connection to the driver (it did once here under
# emulation, at start-up); the DaemonSet's pod would restart it, so the loop does.
k8s_start csi-provisioner "$logs/provisioner.log" \
    env NODE_NAME="$node" NAMESPACE=iolane POD_NAME=iolane-node-test \
    bash -c 'until "$@"; do echo "csi-provisioner exited $?: restarting it"; sleep 1; done' _ \
    "$b/csi-provisioner" --kubeconfig "$kc" --csi-address "$sock" \
    --node-deployment --enable-capacity --capacity-ownerref-level=-1 \
    --capacity-poll-interval=30s --extra-create-metadata --strict-topology \
    --immediate-topology=false --timeout=120s --v=2
k8s_log "iolane node (lvm on /dev/nvme0n1), registrar and csi-provisioner started"

# --- kubelet ---------------------------------------------------------------------------
cat >"$D/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
failSwapOn: false
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
resolvConf: ""
localStorageCapacityIsolation: false
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 10s
EOF
t=$(date +%s)
k8s_start kubelet "$logs/kubelet.log" "$b/kubelet" --config "$D/kubelet.yaml" \
    --kubeconfig "$kc" --root-dir "$kubelet_dir" --hostname-override "$node" --v=2
k8s_log "kubelet started"
registered() {
    kubectl get csinode "$node" -o jsonpath='{.spec.drivers[0].name} {.spec.drivers[0].topologyKeys[0]}' \
        | grep -q "^$driver topology.iolane.dev/node"
}
if k8s_wait 300 "CSINode $node with $driver" registered; then
    k8s_log "kubelet registered $driver after $(($(date +%s) - t)) s: $(grep -h 'registered' "$logs/registrar.log" | tail -1)"
    result registered 0
    t=$(date +%s%N)
    kubectl get --raw /readyz >/dev/null
    k8s_log "one kubectl call (get --raw /readyz) takes $((($(date +%s%N) - t) / 1000000)) ms here"
else
    die registered "no CSINode with $driver"
fi

# --- a pod without volumes (full run) --------------------------------------------------
running() { [ "$(kubectl -n default get pod "$1" -o jsonpath='{.status.phase}')" = Running ]; }
if [ "$mode" = full ]; then
    kubectl create --validate=false -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: default}
spec:
  nodeName: $node
  hostNetwork: true
  dnsPolicy: Default
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
    - name: c
      image: iolane.test/busybox:1
      imagePullPolicy: Never
      command: [/bin/sleep, "2147483647"]
EOF
    t=$(date +%s)
    if k8s_wait 300 "pod plain Running" running plain; then
        k8s_log "pod plain Running after $(($(date +%s) - t)) s"
        result pod 0
    else
        kubectl -n default describe pod plain | tail -20 | sed 's/^/    /'
        die pod "pod plain not Running"
    fi
fi

# --- a pod with an iolane volume -------------------------------------------------------
kubectl create --validate=false -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  namespace: default
  annotations:
    volume.kubernetes.io/selected-node: $node
    volume.kubernetes.io/storage-provisioner: $driver
spec:
  storageClassName: iolane-batch
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 256Mi}}
EOF
pvc_uid="$(kubectl -n default get pvc data -o jsonpath='{.metadata.uid}')"
pv="pvc-$pvc_uid"
t=$(date +%s)
k8s_wait 300 "PV $pv" kubectl get pv "$pv" || die volume-pod "no PV for the PVC"
k8s_log "PV $pv provisioned after $(($(date +%s) - t)) s"
# Bind as the PV controller would.
kubectl -n default patch pvc data --type=merge -p "{\"spec\":{\"volumeName\":\"$pv\"}}" >/dev/null
kubectl -n default patch pvc data --subresource=status --type=merge \
    -p '{"status":{"phase":"Bound","accessModes":["ReadWriteOnce"],"capacity":{"storage":"256Mi"}}}' >/dev/null
kubectl patch pv "$pv" --subresource=status --type=merge -p '{"status":{"phase":"Bound"}}' >/dev/null
handle="$(kubectl get pv "$pv" -o jsonpath='{.spec.csi.volumeHandle}')"

img=iolane.test/fio:1
fio_cmd="fio --name=capped --filename=/data/fio.file --size=32m --direct=1 --rw=randread --bs=4k --ioengine=libaio --iodepth=8 --runtime=10 --time_based --output-format=json --output=/data/fio.json"
[ "$mode" = full ] || { fio_cmd=true; img=iolane.test/busybox:1; }
kubectl create --validate=false -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: fio, namespace: default}
spec:
  nodeName: $node
  hostNetwork: true
  dnsPolicy: Default
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
    - name: fio
      image: $img
      imagePullPolicy: Never
      command: [/bin/sh, -c, "$fio_cmd && touch /data/fio.done; exec sleep 2147483647"]
      volumeMounts: [{name: data, mountPath: /data}]
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: data}
EOF
t=$(date +%s)
if k8s_wait 420 "pod fio Running" running fio; then
    pod_uid="$(kubectl -n default get pod fio -o jsonpath='{.metadata.uid}')"
    target="$kubelet_dir/pods/$pod_uid/volumes/kubernetes.io~csi/$pv/mount"
    k8s_log "pod fio (with the iolane PVC) Running after $(($(date +%s) - t)) s"
    why=""
    grep -q "staged volume.*$handle\|$handle.*staged volume" "$logs/iolane.log" || why="no 'staged volume' for $handle in iolane's log"
    grep -q "published volume.*$pod_uid" "$logs/iolane.log" || why="${why:+$why; }no 'published volume' at the pod's target in iolane's log"
    findmnt -n "$target" >/dev/null || why="${why:+$why; }nothing mounted at $target"
    grep -E "staged volume|published volume" "$logs/iolane.log" | sed 's/^/    /'
    findmnt -n -o TARGET,SOURCE,FSTYPE -R "$kubelet_dir" | grep -v "^$kubelet_dir " | sed 's/^/    /'
    if [ -z "$why" ]; then result volume-pod 0; else result volume-pod 1 "$why"; fi
else
    kubectl -n default describe pod fio | tail -20 | sed 's/^/    /'
    die volume-pod "pod fio not Running"
fi

# --- io.max in the pod's real cgroup ---------------------------------------------------
dev="$(findmnt -n -o MAJ:MIN "$target" | tr -d ' ')"
cg="$(find /sys/fs/cgroup/kubepods -type d -name "pod$pod_uid" | head -1)"
line_of() { grep "^$dev " "$cg/io.max" 2>/dev/null; }
# The kernel prints `MAJ:MIN rbps=.. wbps=.. riops=.. wiops=..`.
want="riops=$cap wiops=$cap"
has_line() { line_of | grep -q " $want\$"; }
if [ -n "$cg" ] && k8s_wait 60 "io.max line for $dev" has_line; then
    k8s_log "$cg/io.max: $(line_of)"
    result io-max 0
else
    echo "    pod cgroup: ${cg:-none}; io.max: $(cat "$cg/io.max" 2>/dev/null)"
    result io-max 1 "no '$dev ... $want' line in the pod's io.max"
fi

# --- capacity --------------------------------------------------------------------------
capacity_ok() {
    kubectl -n iolane get csistoragecapacities -o json | python3 -c '
import json, sys
seen = {c["storageClassName"] for c in json.load(sys.stdin)["items"]
        if c.get("nodeTopology", {}).get("matchLabels") == {"topology.iolane.dev/node": sys.argv[1]}
        and c.get("capacity") not in (None, "0")}
sys.exit(0 if {"iolane-streaming", "iolane-batch"} <= seen else 1)
' "$node"
}
if k8s_wait 120 "CSIStorageCapacity objects" capacity_ok; then
    kubectl -n iolane get csistoragecapacities -o custom-columns=CLASS:.storageClassName,CAPACITY:.capacity,TOPOLOGY:.nodeTopology.matchLabels | sed 's/^/    /'
    result capacity 0
else
    kubectl -n iolane get csistoragecapacities -o yaml | sed 's/^/    /'
    result capacity 1 "no CSIStorageCapacity for both classes with this node's topology"
fi

# --- the Kubernetes view against the node ----------------------------------------------
kubectl get pv,pvc -A -o wide | sed 's/^/    /'
lvs --noheadings --units b --nosuffix -o lv_name,lv_size,lv_tags iolane 2>/dev/null | sed 's/^/    lvs: /'
why="$(kubectl get pv "$pv" -o json | python3 -c '
import json, subprocess, sys
pv = json.load(sys.stdin)
node, handle = sys.argv[1:3]
problems = []
if pv["status"].get("phase") != "Bound": problems.append("PV %s" % pv["status"].get("phase"))
exprs = [e for t in pv["spec"].get("nodeAffinity", {}).get("required", {}).get("nodeSelectorTerms", [])
         for e in t.get("matchExpressions", [])]
if exprs != [{"key": "topology.iolane.dev/node", "operator": "In", "values": [node]}]:
    problems.append("node affinity %r" % exprs)
want = pv["spec"]["capacity"]["storage"]
units = {"Mi": 2**20, "Gi": 2**30}
size = int(want[:-2]) * units[want[-2:]]
out = subprocess.run(["lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size,lv_tags", "iolane"],
                     capture_output=True, text=True).stdout
lvs = [l.split() for l in out.splitlines() if handle in l]
if len(lvs) != 1: problems.append("%d LVs name %s" % (len(lvs), handle))
elif int(lvs[0][1]) != size: problems.append("LV %s is %s bytes, PV says %s" % (lvs[0][0], lvs[0][1], want))
print("; ".join(problems))
' "$node" "$handle")"
phase="$(kubectl -n default get pvc data -o jsonpath='{.status.phase}')"
[ "$phase" = Bound ] || why="${why:+$why; }PVC $phase"
if [ -z "$why" ]; then result k8s-view 0; else result k8s-view 1 "$why"; fi

if [ "$mode" != full ]; then
    k8s_check_alive || { show_logs; result processes 1 "a component exited"; }
    finish
fi

# --- fio in the pod, held at the cap ---------------------------------------------------
if k8s_wait 240 "fio in the pod" test -e "$target/fio.done"; then
    iops="$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["jobs"][0]["read"]["iops"]))' "$target/fio.json")"
    k8s_log "fio in the pod: $iops IOPS (4 KiB randread, iodepth 8, 10 s) against a cap of $cap"
    if [ "$iops" -le $((cap * 110 / 100)) ] && [ "$iops" -ge $((cap / 2)) ]; then
        result fio-cap 0
    else
        result fio-cap 1 "$iops IOPS for a cap of $cap"
    fi
else
    cat "$target/fio.json" 2>/dev/null | tail -5
    result fio-cap 1 "fio did not finish"
fi

# --- restart iolane while the pod runs -------------------------------------------------
k8s_stop iolane
echo "$dev riops=max wiops=max rbps=max wbps=max" >"$cg/io.max"
if line_of | grep -q "riops=$cap"; then
    result restart 1 "could not remove the line to see it written again"
else
    t=$(date +%s)
    start_iolane "$logs/iolane-restarted.log"
    status_has_pod() { "$b/iolane" status --json --interval 1 2>/dev/null | grep -q "$pod_uid"; }
    if k8s_wait 240 "io.max line again after the restart" has_line && k8s_wait 60 "iolane status naming the pod" status_has_pod; then
        k8s_log "after the restart ($(($(date +%s) - t)) s): $(line_of); $(grep -c 'adopted a publication' "$logs/iolane-restarted.log") adopted"
        "$b/iolane" status --interval 1 2>/dev/null | sed 's/^/    /'
        if grep -q "adopted a publication.*$pod_uid" "$logs/iolane-restarted.log"; then
            result restart 0
        else
            result restart 1 "no 'adopted a publication' for the pod in iolane's log"
        fi
    else
        show_logs
        result restart 1 "line $(line_of); status: $("$b/iolane" status --json 2>&1 | head -c 300)"
    fi
fi

# --- delete the pod: kubelet unpublishes and unstages ----------------------------------
t=$(date +%s)
kubectl -n default delete pod fio --wait=false >/dev/null
gone() { ! kubectl -n default get pod fio; }
if k8s_wait 300 "pod fio deleted" gone; then
    k8s_log "pod fio deleted after $(($(date +%s) - t)) s"
    why=""
    ilog="$logs/iolane-restarted.log"
    k8s_wait 60 "NodeUnstageVolume" grep -q "unstaged volume" "$ilog" || why="no 'unstaged volume' in iolane's log"
    grep -q "unpublished volume.*$pod_uid" "$ilog" || why="${why:+$why; }no 'unpublished volume' for the pod"
    left="$(findmnt -rn -o TARGET,MAJ:MIN | awk -v d="$dev" '$2 == d')"
    [ -z "$left" ] || why="${why:+$why; }still mounted: $left"
    lines="$(grep -rl "^$dev " /sys/fs/cgroup/kubepods --include=io.max 2>/dev/null)" && why="${why:+$why; }io.max lines left: $lines"
    grep -E "unpublished volume|unstaged volume|lifted" "$ilog" | sed 's/^/    /'
    if [ -z "$why" ]; then result delete-pod 0; else result delete-pod 1 "$why"; fi
else
    result delete-pod 1 "pod fio still there"
fi

# --- delete the PVC: the volume goes ---------------------------------------------------
kubectl -n default delete pvc data --wait=false >/dev/null
kubectl patch pv "$pv" --subresource=status --type=merge -p '{"status":{"phase":"Released"}}' >/dev/null
pv_gone() { ! kubectl get pv "$pv"; }
if k8s_wait 180 "PV $pv deleted" pv_gone; then
    if lvs --noheadings -o lv_name iolane 2>/dev/null | grep -q "$handle"; then
        result delete-pvc 1 "the LV of $handle is still there"
    else
        result delete-pvc 0
    fi
else
    result delete-pvc 1 "PV still there"
fi
k8s_check_alive || { show_logs; result processes 1 "a component exited"; }
finish
