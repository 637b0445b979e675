#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR disable=SC2154 # K8S_BIN_* are set by k8s_build (lib.sh)
# The controller side against the real thing: etcd and kube-apiserver (lib.sh), the real
# csi-provisioner with the node DaemonSet's flags (deploy/base/node-daemonset.yaml) beside
# a real `iolane node` on the loop backend, and the real csi-resizer with the central
# Deployment's flags (deploy/base/controller-deployment.yaml; not its metrics endpoint)
# beside a real `iolane controller`, driven with real objects from deploy/base.
#
#   bash tests/k8s/provision.sh        (host, root; IOLANE_BIN as in sanity.sh)
#
# Nothing schedules or binds here (no kube-scheduler, no kube-controller-manager), so the
# test does their part, as they would: it sets the PVC's `volume.kubernetes.io/selected-node`
# (the scheduler) and `volume.kubernetes.io/storage-provisioner` (the PV controller)
# annotations, binds the PVC and the PV (`spec.volumeName`, both `Bound`), and marks the PV
# `Released` once the PVC is deleted (the PV controller), which is what makes
# csi-provisioner call DeleteVolume and remove the PV. (The storage-protection finalizers
# are off, see lib.sh.)
#
# Checks, one `ok NAME` / `FAILED NAME (why)` line each, then `N passed, M failed`:
#   capacity      CSIStorageCapacity objects for both StorageClasses, topology of the node,
#                 owned by the node's Pod (--capacity-ownerref-level=0), capacity > 0
#   provision     a WaitForFirstConsumer PVC of `iolane-batch` gets a PV: driver, size,
#                 fsType, node affinity on topology.iolane.dev/node, the claimRef, volume
#                 attributes from iolane; the loop backend has one image
#   expand        the bound PVC asks for 128Mi: csi-resizer calls ControllerExpandVolume on
#                 `iolane controller`, which answers node_expansion_required: the PV says
#                 128Mi and the PVC has FileSystemResizePending (no kubelet to finish it)
#   vac-create    a PVC naming the VolumeAttributesClass iolane-streaming (deploy/base) at
#                 creation gets a PV that names the class, with the VAC's tier
#   delete        PVC deleted + PV Released: the PV disappears, the backend has no image
# Environment: IOLANE_K8S_KEEP=DIR (keep logs and state in DIR, for a failed run).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
k8s_script_begin
k8s_log "building/reusing kube-apiserver, kubectl, etcd, csi-provisioner, csi-resizer"
k8s_build kube-apiserver kubectl etcd csi-provisioner csi-resizer || exit 1

# The work dir, the node's socket and state, the clean-up at exit, and `result` (lib.sh).
k8s_test_setup k8s
# Prints the logs' ends (for a failure).
show_logs() {
    local f
    for f in "$K8S_DIR"/{iolane,provisioner,iolane-controller,resizer,apiserver}.log; do
        echo "--- end of $f"
        tail -25 "$f" | sed 's/^/    /'
    done
}

t=$(date +%s%N)
k8s_certs || exit 1
k8s_start_etcd || { tail -20 "$K8S_DIR/etcd.log"; exit 1; }
etcd_ms=$((($(date +%s%N) - t) / 1000000))
k8s_start_apiserver || { tail -40 "$K8S_DIR/apiserver.log"; exit 1; }
api_ms=$((($(date +%s%N) - t) / 1000000 - etcd_ms))
k8s_log "control plane up: certs + etcd ${etcd_ms} ms, kube-apiserver to /readyz ${api_ms} ms ($("$K8S_BIN_kube_apiserver" --version))"

# The objects a cluster would have: deploy/base's namespace, CSIDriver and StorageClasses,
# and the node Pod that owns the capacity objects (it never runs: no kubelet here).
k8s_apply_base || exit 1
k8s_node_pod_yaml | kubectl apply -f - >/dev/null || exit 1

k8s_start iolane "$K8S_DIR/iolane.log" "$bin" node --endpoint "unix://$sock" --node-id "$node" \
    --state-dir "$state" --path-root "$K8S_DIR" --driver-name csi.iolane.dev \
    --kubernetes auto --kubeconfig "$KUBECONFIG"
k8s_wait 60 "iolane node socket" test -S "$sock" || { show_logs; exit 1; }
# The DaemonSet's csi-provisioner arguments and environment.
k8s_start_provisioner --enable-capacity --capacity-ownerref-level=0 --capacity-poll-interval=30s
# The central Deployment: `iolane controller` and csi-resizer with its arguments.
ctrl_sock="$K8S_DIR/controller.sock"
k8s_start iolane-controller "$K8S_DIR/iolane-controller.log" "$bin" controller \
    --endpoint "unix://$ctrl_sock" --driver-name csi.iolane.dev
k8s_wait 60 "iolane controller socket" test -S "$ctrl_sock" || { show_logs; exit 1; }
k8s_start csi-resizer "$K8S_DIR/resizer.log" env NAMESPACE=iolane \
    "$K8S_BIN_csi_resizer" --kubeconfig "$KUBECONFIG" --csi-address "$ctrl_sock" \
    --leader-election --leader-election-namespace=iolane --handle-volume-inuse-error=false \
    --timeout=60s --v=2
k8s_log "iolane node, csi-provisioner, iolane controller and csi-resizer started"

# capacity: one object per StorageClass, with this node's topology and a capacity.
capacity_ok() {
    kubectl -n iolane get csistoragecapacities -o json | python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
want = {"iolane-streaming", "iolane-batch"}
seen = set()
for c in items:
    sel = c.get("nodeTopology", {}).get("matchLabels", {})
    owners = [o["kind"] + "/" + o["name"] for o in c["metadata"].get("ownerReferences", [])]
    if sel == {"topology.iolane.dev/node": sys.argv[1]} and owners == ["Pod/iolane-node-test"] \
            and c.get("capacity") not in (None, "0"):
        seen.add(c["storageClassName"])
sys.exit(0 if want <= seen else 1)
' "$node"
}
start=$(date +%s)
if k8s_wait 90 "CSIStorageCapacity objects" capacity_ok; then
    k8s_log "CSIStorageCapacity objects after $(($(date +%s) - start)) s:"
    kubectl -n iolane get csistoragecapacities -o custom-columns=CLASS:.storageClassName,CAPACITY:.capacity,TOPOLOGY:.nodeTopology.matchLabels,OWNER:.metadata.ownerReferences[0].name | sed 's/^/    /'
    result capacity 0
else
    kubectl -n iolane get csistoragecapacities -o yaml | sed 's/^/    /'
    show_logs
    result capacity 1 "no CSIStorageCapacity for both classes with the node's topology"
fi

# provision: the scheduler's and the PV controller's annotations, as they set them.
kubectl apply -f - >/dev/null <<PVC
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  namespace: default
  annotations:
    volume.kubernetes.io/selected-node: $node
    volume.kubernetes.io/storage-provisioner: csi.iolane.dev
spec:
  storageClassName: iolane-batch
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
PVC
uid="$(kubectl -n default get pvc data -o jsonpath='{.metadata.uid}')"
pv="pvc-$uid"
start=$(date +%s)
if k8s_wait 90 "PV $pv" kubectl get pv "$pv"; then
    k8s_log "PV $pv after $(($(date +%s) - start)) s"
    why="$(kubectl get pv "$pv" -o json | python3 -c '
import json, sys
pv = json.load(sys.stdin)
node, uid = sys.argv[1:3]
s = pv["spec"]
csi = s.get("csi", {})
attrs = csi.get("volumeAttributes", {})
terms = s.get("nodeAffinity", {}).get("required", {}).get("nodeSelectorTerms", [])
exprs = [e for t in terms for e in t.get("matchExpressions", [])]
problems = []
if csi.get("driver") != "csi.iolane.dev": problems.append("driver %r" % csi.get("driver"))
if not csi.get("volumeHandle"): problems.append("no volumeHandle")
if csi.get("fsType") != "ext4": problems.append("fsType %r" % csi.get("fsType"))
if s.get("capacity", {}).get("storage") != "64Mi": problems.append("capacity %r" % s.get("capacity"))
if exprs != [{"key": "topology.iolane.dev/node", "operator": "In", "values": [node]}]:
    problems.append("node affinity %r" % exprs)
ref = s.get("claimRef", {})
if (ref.get("namespace"), ref.get("name"), ref.get("uid")) != ("default", "data", uid):
    problems.append("claimRef %r" % ref)
if s.get("storageClassName") != "iolane-batch": problems.append("storageClassName")
if s.get("persistentVolumeReclaimPolicy") != "Delete": problems.append("reclaim policy")
if attrs.get("iolane.dev/tier") != "batch" or attrs.get("iolane.dev/backend") != "loop":
    problems.append("volumeAttributes %r" % attrs)
print("; ".join(problems))
print("volumeAttributes: " + json.dumps(attrs, sort_keys=True), file=sys.stderr)
' "$node" "$uid")"
    images=$(find "$state" -name '*.img' | wc -l)
    [ "$images" = 1 ] || why="${why:+$why; }$images backend images (want 1)"
    if [ -z "$why" ]; then result provision 0; else show_logs; result provision 1 "$why"; fi
else
    kubectl -n default get pvc data -o yaml | sed 's/^/    /'
    show_logs
    result provision 1 "no PV"
fi

# expand: bind as the PV controller would, then ask for more.
kubectl -n default patch pvc data --type=merge -p "{\"spec\":{\"volumeName\":\"$pv\"}}" >/dev/null
kubectl -n default patch pvc data --subresource=status --type=merge \
    -p '{"status":{"phase":"Bound","accessModes":["ReadWriteOnce"],"capacity":{"storage":"64Mi"}}}' >/dev/null
kubectl patch pv "$pv" --subresource=status --type=merge -p '{"status":{"phase":"Bound"}}' >/dev/null
if kubectl -n default patch pvc data --type=merge -p '{"spec":{"resources":{"requests":{"storage":"128Mi"}}}}' >/dev/null; then
    expanded() {
        [ "$(kubectl get pv "$pv" -o jsonpath='{.spec.capacity.storage}')" = 128Mi ] &&
            kubectl -n default get pvc data -o jsonpath='{.status.conditions[*].type}' | grep -qw FileSystemResizePending
    }
    start=$(date +%s)
    if k8s_wait 90 "PV $pv to be expanded" expanded; then
        k8s_log "PV expanded to 128Mi, PVC FileSystemResizePending after $(($(date +%s) - start)) s"
        result expand 0
    else
        kubectl -n default get pvc data -o yaml | sed 's/^/    /'
        show_logs
        result expand 1 "PV capacity $(kubectl get pv "$pv" -o jsonpath='{.spec.capacity.storage}')"
    fi
else
    result expand 1 "the resize request was refused"
fi

# vac-create: a claim that names a VolumeAttributesClass at creation. csi-provisioner
# refuses it unless the node socket reports MODIFY_VOLUME (the claim then stays Pending);
# with it, the VAC's parameters reach CreateVolume as mutable_parameters and win over the
# StorageClass tier (iolane-batch + VAC iolane-streaming: a streaming volume), and the PV
# names the class.
kubectl apply -f "$repo/deploy/base/volumeattributesclasses.yaml" >/dev/null || exit 1
kubectl apply -f - >/dev/null <<PVC
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: vac
  namespace: default
  annotations:
    volume.kubernetes.io/selected-node: $node
    volume.kubernetes.io/storage-provisioner: csi.iolane.dev
spec:
  storageClassName: iolane-batch
  volumeAttributesClassName: iolane-streaming
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
PVC
vac_pv="pvc-$(kubectl -n default get pvc vac -o jsonpath='{.metadata.uid}')"
start=$(date +%s%N)
if k8s_wait 60 "PV $vac_pv" kubectl get pv "$vac_pv"; then
    k8s_log "PV $vac_pv (VAC at creation) after $((($(date +%s%N) - start) / 1000000)) ms"
    got="$(kubectl get pv "$vac_pv" -o jsonpath='{.spec.volumeAttributesClassName} {.spec.csi.volumeAttributes.iolane\.dev/tier}')"
    if [ "$got" = "iolane-streaming streaming" ]; then
        result vac-create 0
    else
        result vac-create 1 "PV class and tier: $got (want iolane-streaming streaming)"
    fi
else
    kubectl -n default get pvc vac -o yaml | sed 's/^/    /'
    kubectl -n default get events --field-selector involvedObject.name=vac \
        -o custom-columns=REASON:.reason,MESSAGE:.message | sed 's/^/    /'
    result vac-create 1 "no PV: the claim stays $(kubectl -n default get pvc vac -o jsonpath='{.status.phase}')"
fi
kubectl -n default delete pvc vac --wait=false >/dev/null
if kubectl get pv "$vac_pv" >/dev/null 2>&1; then
    kubectl patch pv "$vac_pv" --subresource=status --type=merge -p '{"status":{"phase":"Released"}}' >/dev/null
    k8s_wait 60 "PV $vac_pv to be deleted" bash -c "! \"$K8S_BIN_kubectl\" --kubeconfig \"$KUBECONFIG\" get pv \"$vac_pv\"" ||
        result vac-delete 1 "PV $vac_pv still there"
fi

# delete: the PVC goes; the PV controller would mark the PV Released; csi-provisioner then
# deletes the volume and the PV.
kubectl -n default delete pvc data --wait=false >/dev/null
if kubectl get pv "$pv" >/dev/null 2>&1; then
    kubectl patch pv "$pv" --subresource=status --type=merge -p '{"status":{"phase":"Released"}}' >/dev/null
fi
start=$(date +%s)
if k8s_wait 90 "PV $pv to be deleted" bash -c "! \"$K8S_BIN_kubectl\" --kubeconfig \"$KUBECONFIG\" get pv \"$pv\""; then
    left="$(find "$state" -name '*.img'; losetup -n -l -O NAME,BACK-FILE | awk -v d="$K8S_DIR/" 'index($2, d) == 1')"
    if [ -z "$left" ]; then
        k8s_log "PV and volume deleted after $(($(date +%s) - start)) s"
        result delete 0
    else
        result delete 1 "left: $left"
    fi
else
    show_logs
    result delete 1 "PV still there"
fi
k8s_check_alive || { show_logs; result processes 1 "a component exited"; }

k8s_log "done"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
