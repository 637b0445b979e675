#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR disable=SC2154 # K8S_BIN_* are set by k8s_build (lib.sh)
# Node cleanup of `iolane controller` (--node-cleanup) against the real control plane
# (lib.sh): a Node object for the test node, two PVCs provisioned on it by the real
# csi-provisioner beside a real `iolane node` (as provision.sh does) and bound, with the
# storage-protection finalizers a cluster would put on them; then the node dies (its
# csi-provisioner and `iolane node` stop) and its Node object is deleted.
#
#   bash tests/k8s/nodes.sh        (host, root; IOLANE_BIN as in sanity.sh)
#
# Checks, one `ok NAME` / `FAILED NAME (why)` line each, then `N passed, M failed`:
#   setup     both PVCs bound to PVs pinned to the node, with their finalizers
#   dry-run   `--node-cleanup=dry-run` running while the Node is deleted (the watch):
#             Normal `NodeDeleted` Events saying "would" on both PVCs and both PVs, and
#             not one of the four objects changed (same resourceVersion)
#   cleanup   `--node-cleanup=on` started after the deletion (the start-up pass): both
#             PVCs and both PVs gone, a Warning `NodeDeleted` Event on each of the four
#   other     a PV pinned to a Node that still exists is untouched by both runs
# Environment: IOLANE_K8S_KEEP=DIR (keep logs and state in DIR, for a failed run).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
k8s_script_begin
k8s_log "building/reusing kube-apiserver, kubectl, etcd, csi-provisioner"
k8s_build kube-apiserver kubectl etcd csi-provisioner || exit 1

# The work dir, the node's socket and state, the clean-up at exit, and `result` (lib.sh).
k8s_test_setup k8s::nodes
show_logs() {
    local f
    for f in "$K8S_DIR"/{iolane,provisioner,controller-dry-run,controller-on,apiserver}.log; do
        [ -f "$f" ] || continue
        echo "--- end of $f"
        tail -25 "$f" | sed 's/^/    /'
    done
}
finish() {
    k8s_log "done"
    echo "$passed passed, $failed failed"
    [ "$failed" = 0 ]
    exit
}

k8s_certs || exit 1
k8s_start_etcd || { tail -20 "$K8S_DIR/etcd.log"; exit 1; }
k8s_start_apiserver || { tail -40 "$K8S_DIR/apiserver.log"; exit 1; }
k8s_log "control plane up ($("$K8S_BIN_kube_apiserver" --version))"

k8s_apply_base || exit 1
k8s_node_pod_yaml | kubectl apply -f - >/dev/null || exit 1
# The test node and another node that stays; no kubelet runs, so nothing updates them.
kubectl apply -f - >/dev/null <<NODES || exit 1
apiVersion: v1
kind: Node
metadata: {name: $node, labels: {topology.iolane.dev/node: $node}}
---
apiVersion: v1
kind: Node
metadata: {name: other-node, labels: {topology.iolane.dev/node: other-node}}
---
# A volume of the node that stays (made by hand: no driver runs there).
apiVersion: v1
kind: PersistentVolume
metadata: {name: other-volume}
spec:
  capacity: {storage: 64Mi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: iolane-batch
  csi: {driver: csi.iolane.dev, volumeHandle: other-volume, fsType: ext4}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: topology.iolane.dev/node, operator: In, values: [other-node]}
NODES
other_rv="$(kubectl get pv other-volume -o jsonpath='{.metadata.resourceVersion}')"

k8s_start iolane "$K8S_DIR/iolane.log" "$bin" node --endpoint "unix://$sock" --node-id "$node" \
    --state-dir "$state" --path-root "$K8S_DIR" --driver-name csi.iolane.dev --kubernetes off
k8s_wait 60 "iolane node socket" test -S "$sock" || { show_logs; exit 1; }
k8s_start_provisioner

# setup: two PVCs provisioned on the node, bound as the PV controller would, with the
# finalizers kube-controller-manager (off here) would keep on them.
pvs=()
why=""
for claim in data-a data-b; do
    kubectl apply -f - >/dev/null <<PVC
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: $claim
  namespace: default
  annotations:
    volume.kubernetes.io/selected-node: $node
    volume.kubernetes.io/storage-provisioner: csi.iolane.dev
spec:
  storageClassName: iolane-batch
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
PVC
    pv="pvc-$(kubectl -n default get pvc "$claim" -o jsonpath='{.metadata.uid}')"
    pvs+=("$pv")
    if ! k8s_wait 90 "PV $pv" kubectl get pv "$pv"; then
        why="${why:+$why; }no PV for $claim"
        continue
    fi
    kubectl -n default patch pvc "$claim" --type=merge \
        -p "{\"metadata\":{\"finalizers\":[\"kubernetes.io/pvc-protection\"]},\"spec\":{\"volumeName\":\"$pv\"}}" >/dev/null
    kubectl -n default patch pvc "$claim" --subresource=status --type=merge \
        -p '{"status":{"phase":"Bound","accessModes":["ReadWriteOnce"],"capacity":{"storage":"64Mi"}}}' >/dev/null
    kubectl patch pv "$pv" --type=json \
        -p '[{"op":"add","path":"/metadata/finalizers/-","value":"kubernetes.io/pv-protection"}]' >/dev/null ||
        kubectl patch pv "$pv" --type=merge -p '{"metadata":{"finalizers":["kubernetes.io/pv-protection"]}}' >/dev/null
    kubectl patch pv "$pv" --subresource=status --type=merge -p '{"status":{"phase":"Bound"}}' >/dev/null
    fins="$(kubectl get pv "$pv" -o jsonpath='{.metadata.finalizers}')"
    k8s_log "PV $pv for $claim, finalizers $fins"
    case "$fins" in *external-provisioner.volume.kubernetes.io/finalizer*) ;;
    *) why="${why:+$why; }$pv lacks csi-provisioner's finalizer" ;; esac
    aff="$(kubectl get pv "$pv" -o jsonpath='{.spec.nodeAffinity.required.nodeSelectorTerms[*].matchExpressions[*].values[*]}')"
    [ "$aff" = "$node" ] || why="${why:+$why; }$pv node affinity $aff"
done
if [ -z "$why" ]; then result setup 0; else show_logs; result setup 1 "$why"; finish; fi

# The node dies: its provisioner and plugin stop (nothing could call DeleteVolume now).
k8s_stop csi-provisioner
k8s_stop iolane

# Resource versions of the four objects: dry-run must leave them as they are.
versions() {
    local pv
    kubectl -n default get pvc data-a data-b -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.resourceVersion} {end}'
    for pv in "${pvs[@]}"; do kubectl get pv "$pv" -o jsonpath='{.metadata.name}={.metadata.resourceVersion} '; done
}
before="$(versions)"

# Events with reason NodeDeleted, one line each: TYPE KIND NAME MESSAGE.
events() {
    kubectl get events -A -o json | python3 -c '
import json, sys
for e in json.load(sys.stdin)["items"]:
    if e.get("reason") == "NodeDeleted":
        o = e.get("involvedObject", {})
        print(e.get("type"), o.get("kind"), o.get("name"), (e.get("message") or e.get("note") or "").replace("\n", " "))
'
}
# Whether each of the four objects has an Event of TYPE whose message has TEXT.
events_for_all() { # TYPE TEXT
    local list obj
    list="$(events)"
    for obj in "PersistentVolumeClaim data-a" "PersistentVolumeClaim data-b" \
        "PersistentVolume ${pvs[0]}" "PersistentVolume ${pvs[1]}"; do
        grep -F "$1 $obj " <<<"$list" | grep -qF "$2" || return 1
    done
}

# dry-run: the controller watches while the Node is deleted.
k8s_start controller-dry-run "$K8S_DIR/controller-dry-run.log" "$bin" controller \
    --endpoint "unix://$K8S_DIR/controller-dry-run.sock" --driver-name csi.iolane.dev \
    --kubeconfig "$KUBECONFIG" --node-cleanup dry-run --node-cleanup-grace 0
k8s_wait 60 "the dry-run controller's start-up pass" \
    grep -q "node cleanup pass done" "$K8S_DIR/controller-dry-run.log" || { show_logs; exit 1; }
kubectl delete node "$node" >/dev/null
if k8s_wait 60 "dry-run Events on the four objects" events_for_all Normal "would delete"; then
    after="$(versions)"
    if [ "$before" = "$after" ] && [ -z "$(events | grep -v '^Normal ')" ] &&
        grep -q "node deleted" "$K8S_DIR/controller-dry-run.log"; then
        k8s_log "dry-run Events:"
        events | sed 's/^/    /'
        result dry-run 0
    else
        events | sed 's/^/    /'
        result dry-run 1 "objects changed: before [$before] after [$after], non-Normal Events, or the watch did not see the deletion"
    fi
else
    events | sed 's/^/    /'
    show_logs
    result dry-run 1 "no \"would\" Event on each PVC and PV"
fi
k8s_stop controller-dry-run

# cleanup: the controller starts after the deletion and finds the volumes in its first pass.
gone() { # (a failed kubectl is not "gone")
    local pvcs left
    pvcs="$(kubectl -n default get pvc -o name)" || return 1
    left="$(kubectl get pv -o name)" || return 1
    [ -z "$pvcs" ] && [ "$left" = persistentvolume/other-volume ]
}
k8s_start controller-on "$K8S_DIR/controller-on.log" "$bin" controller \
    --endpoint "unix://$K8S_DIR/controller-on.sock" --driver-name csi.iolane.dev \
    --kubeconfig "$KUBECONFIG" --node-cleanup on --node-cleanup-grace 0
start=$(date +%s)
if k8s_wait 90 "both PVCs and PVs to be deleted" gone; then
    k8s_log "PVCs and PVs gone after $(($(date +%s) - start)) s"
    if k8s_wait 30 "Warning Events on the four objects" events_for_all Warning "iolane deleted"; then
        k8s_log "Events:"
        events | grep '^Warning ' | sed 's/^/    /'
        result cleanup 0
    else
        events | sed 's/^/    /'
        result cleanup 1 "no Warning Event saying \"deleted\" on each PVC and PV"
    fi
else
    kubectl -n default get pvc -o yaml | sed 's/^/    /'
    kubectl get pv -o yaml | sed 's/^/    /'
    show_logs
    result cleanup 1 "PVCs or PVs still there"
fi

# other: the volume of the node that exists is as it was.
now_rv="$(kubectl get pv other-volume -o jsonpath='{.metadata.resourceVersion}')"
if [ "$now_rv" = "$other_rv" ] && ! events | grep -q " other-volume "; then
    result other 0
else
    result other 1 "other-volume changed (resourceVersion $other_rv -> ${now_rv:-gone}) or has an Event"
fi
k8s_check_alive || { show_logs; result processes 1 "a component exited"; }
finish
