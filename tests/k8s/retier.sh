#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR disable=SC2154 # K8S_BIN_* are set by k8s_build (lib.sh)
# Live re-tiering against the real thing: etcd and kube-apiserver (lib.sh), the real
# csi-provisioner (node DaemonSet flags) beside a real `iolane node` on the loop backend,
# and the real csi-resizer (central Deployment flags) beside a real `iolane controller`,
# both iolane processes reading the tiers of deploy/base/node-config.toml. Volumes are
# published over the node socket (no kubelet here) to stand-in pod cgroups under a
# temporary cgroup root, whose `io.max` files the node writes as it would a pod's.
#
#   bash tests/k8s/retier.sh        (host, root; IOLANE_BIN as in sanity.sh)
#
# ControllerModifyVolume is driven two ways: through the real csi-resizer (a PVC's
# `spec.volumeAttributesClassName` changed), and by direct calls on the controller socket
# (tests/src/bin/csi-call.rs) where the test needs the RPC's own answer and latency.
#
# Checks, one `ok NAME` / `FAILED NAME (why)` line each, then `N passed, M failed`; every
# latency is printed:
#   vac-modify      a bound, published streaming volume's claim names the VAC iolane-batch:
#                   csi-resizer -> iolane controller -> PV annotation -> iolane node: the
#                   pod's io.max gets the batch caps and the PV names the class (the
#                   resizer's OK) within 2 s; a TierChanged Event; /status and /metrics say batch
#   direct-modify   ControllerModifyVolume {tier: streaming} on the controller socket
#                   returns OK within 2 s, after the pod's io.max lost its caps
#   bad-input       {tier: gold}: INVALID_ARGUMENT naming iolane.dev/tier, nothing recorded
#   annotation      a claim of iolane-streaming annotated iolane.dev/tier=batch: its pod's
#                   io.max has the batch caps within 2 s; a TierChanged Event names who asked
#   refused         a claim of iolane-batch (allowed-tiers: batch) annotated streaming: a
#                   TierRefused Event on the claim; io.max and the stored tier unchanged
#   no-ack          node stopped: ControllerModifyVolume answers UNAVAILABLE (not OK) after
#                   --modify-timeout, the request recorded on the PV
#   controller-restart  the controller restarted; the same request again finds the record
#                   (same generation) and, once the node is back, answers OK
#   node-restart    the node restarted applies what was recorded while it was down
# Environment: IOLANE_K8S_KEEP=DIR (keep logs and state in DIR, for a failed run).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
k8s_script_begin
call="$(dirname "$bin")/csi-call"
if [ ! -x "$call" ]; then
    (cd "$repo" && cargo build -p iolane-tests --bins --locked) || exit 1
fi
k8s_log "building/reusing kube-apiserver, kubectl, etcd, csi-provisioner, csi-resizer"
k8s_build kube-apiserver kubectl etcd csi-provisioner csi-resizer || exit 1

k8s_test_setup retier
show_logs() {
    local f
    for f in "$K8S_DIR"/{iolane,provisioner,iolane-controller,resizer}.log; do
        echo "--- end of $f"
        tail -25 "$f" | sed 's/^/    /'
    done
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# wait_ms SECONDS CMD...: polls CMD every 50 ms; prints the milliseconds it took.
wait_ms() {
    local secs="$1" t0 deadline
    shift
    t0=$(now_ms)
    deadline=$((t0 + secs * 1000))
    until "$@" >/dev/null 2>&1; do
        if [ "$(now_ms)" -ge "$deadline" ]; then
            echo "timeout"
            return 1
        fi
        sleep 0.05
    done
    echo $(($(now_ms) - t0))
}

k8s_certs || exit 1
k8s_start_etcd || { tail -20 "$K8S_DIR/etcd.log"; exit 1; }
k8s_start_apiserver || { tail -40 "$K8S_DIR/apiserver.log"; exit 1; }
k8s_log "control plane up"

k8s_apply_base volumeattributesclasses.yaml || exit 1
k8s_node_pod_yaml | kubectl apply -f - >/dev/null || exit 1

# The tiers of the shipped node config, without its device class (loop backend here).
# The built-in batch tier has no fixed cap (the priority controllers share each device,
# docs/priority.md); this test is about re-tiering, not priority, so batch gets an explicit
# ceiling (read_iops = 2000, the value the steps below look for) and the priority
# controllers are off: the batch line is then exactly the tier's cap.
config="$K8S_DIR/node.toml"
{
    printf '[priority]\nenabled = false\n\n'
    awk '/^\[tiers\./ {on = 1} on' "$repo/deploy/base/node-config.toml" |
        awk '/^\[tiers\./ {batch = ($0 == "[tiers.batch]")} batch && /^read_iops *=/ {$0 = "read_iops = 2000"} {print}'
} >"$config"
grep -qx 'read_iops = 2000' "$config" || { echo "retier: no [tiers.batch] read_iops in deploy/base/node-config.toml"; exit 1; }
cg="$K8S_DIR/cgroup"
mkdir -p "$cg"
metrics_port=$(k8s_free_port)
status_port=$(k8s_free_port)
start_node() {
    k8s_start iolane "$K8S_DIR/iolane.log" "$bin" node --endpoint "unix://$sock" \
        --node-id "$node" --state-dir "$state" --path-root "$K8S_DIR" \
        --driver-name csi.iolane.dev --config "$config" --cgroup-root "$cg" \
        --reconcile-period 1 --metrics-address "127.0.0.1:$metrics_port" \
        --status-address "127.0.0.1:$status_port" \
        --kubernetes auto --kubeconfig "$KUBECONFIG"
    k8s_wait 60 "iolane node socket" test -S "$sock"
}
ctrl_sock="$K8S_DIR/controller.sock"
start_controller() {
    k8s_start iolane-controller "$K8S_DIR/iolane-controller.log" "$bin" controller \
        --endpoint "unix://$ctrl_sock" --driver-name csi.iolane.dev --config "$config" \
        --kubeconfig "$KUBECONFIG" --modify-timeout 5
    k8s_wait 60 "iolane controller socket" test -S "$ctrl_sock"
}
# csi-provisioner exits when it loses its connection to the node socket (the DaemonSet's
# kubelet restarts it then); the node-down steps below stop and start it with the node.
start_provisioner() { k8s_start_provisioner --enable-capacity --capacity-ownerref-level=0 --capacity-poll-interval=30s; }
start_node || { show_logs; exit 1; }
start_provisioner
start_controller || { show_logs; exit 1; }
k8s_start csi-resizer "$K8S_DIR/resizer.log" env NAMESPACE=iolane \
    "$K8S_BIN_csi_resizer" --kubeconfig "$KUBECONFIG" --csi-address "$ctrl_sock" \
    --leader-election --leader-election-namespace=iolane --handle-volume-inuse-error=false \
    --timeout=60s --v=2
k8s_log "iolane node, csi-provisioner, iolane controller and csi-resizer started"

# claim NAME CLASS: a bound PVC of CLASS with its PV, published (raw block) to a stand-in
# pod whose cgroup is $cg/kubepods/burstable/pod<uid>. Sets pv_<NAME>, vol_<NAME>,
# cg_<NAME> (the pod cgroup directory).
claim() {
    local name="$1" class="$2" uid pv vol pod staging dir
    kubectl apply -f - >/dev/null <<PVC || return 1
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: $name
  namespace: default
  annotations:
    volume.kubernetes.io/selected-node: $node
    volume.kubernetes.io/storage-provisioner: csi.iolane.dev
spec:
  storageClassName: $class
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  resources: {requests: {storage: 64Mi}}
PVC
    uid="$(kubectl -n default get pvc "$name" -o jsonpath='{.metadata.uid}')"
    pv="pvc-$uid"
    k8s_wait 60 "PV $pv" kubectl get pv "$pv" || return 1
    kubectl -n default patch pvc "$name" --type=merge -p "{\"spec\":{\"volumeName\":\"$pv\"}}" >/dev/null
    kubectl -n default patch pvc "$name" --subresource=status --type=merge \
        -p '{"status":{"phase":"Bound","accessModes":["ReadWriteOnce"],"capacity":{"storage":"64Mi"}}}' >/dev/null
    kubectl patch pv "$pv" --subresource=status --type=merge -p '{"status":{"phase":"Bound"}}' >/dev/null
    vol="$(kubectl get pv "$pv" -o jsonpath='{.spec.csi.volumeHandle}')"
    pod="$(cat /proc/sys/kernel/random/uuid)"
    mkdir -p "$cg/kubepods/burstable/pod$pod"
    echo "cpu io memory pids" >"$cg/kubepods/burstable/pod$pod/cgroup.controllers"
    : >"$cg/kubepods/burstable/pod$pod/io.max"
    staging="$K8S_DIR/kubelet/plugins/kubernetes.io/csi/volumeDevices/staging/$pv"
    dir="$K8S_DIR/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/$pv"
    mkdir -p "$staging" "$dir"
    "$call" "$sock" publish-block "$vol" "$staging" "$dir/$pod" "$pod" >/dev/null || return 1
    printf -v "pv_$name" '%s' "$pv"
    printf -v "vol_$name" '%s' "$vol"
    printf -v "cg_$name" '%s' "$cg/kubepods/burstable/pod$pod"
}
capped() { grep -q 'riops=2000' "$1/io.max"; }
uncapped() { ! grep -q 'riops=2000' "$1/io.max"; }
# event PVC REASON TEXT: the PVC has an Event with REASON whose message contains TEXT.
event() {
    kubectl -n default get events --field-selector "involvedObject.name=$1,reason=$2" \
        -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' | grep -qF -- "$3"
}
# status_tier VOLUME: the tier /status reports for the volume.
status_tier() {
    curl -sf "http://127.0.0.1:$status_port/status" | python3 -c '
import json, sys
for v in json.load(sys.stdin)["volumes"]:
    if v["id"] == sys.argv[1]: print(v["tier"])' "$1"
}
metrics_tier() { # VOLUME TIER: /metrics has a cap series of VOLUME labelled TIER (or none when uncapped)
    curl -sf "http://127.0.0.1:$metrics_port/metrics" | grep '^iolane_volume_io_limit' | grep -F "volume=\"$1\"" | grep -qF "tier=\"$2\""
}
annotation() { kubectl get pv "$1" -o jsonpath="{.metadata.annotations.iolane\\.dev/$2}"; }
# pvc_patch NAME JSON: a merge patch of a claim straight to the API server (curl, not
# kubectl, whose own start-up would count in the latencies), field manager retier-test.
pvc_patch() {
    local p="$K8S_DIR/pki"
    curl -sf --cacert "$p/ca.crt" --cert "$p/admin.crt" --key "$p/admin.key" -X PATCH \
        -H 'Content-Type: application/merge-patch+json' --data "$2" \
        "$K8S_SERVER/api/v1/namespaces/default/persistentvolumeclaims/$1?fieldManager=retier-test" >/dev/null
}

claim live iolane-streaming || { show_logs; echo "setup failed"; exit 1; }
claim anno iolane-streaming || { show_logs; echo "setup failed"; exit 1; }
claim strict iolane-batch || { show_logs; echo "setup failed"; exit 1; }
k8s_wait 20 "caps on the batch volume" capped "$cg_strict" || { show_logs; exit 1; }
k8s_log "three claims bound and published: live=$vol_live anno=$vol_anno strict=$vol_strict"
k8s_log "io.max of the streaming pod: '$(cat "$cg_live/io.max")'; of the batch pod: '$(cat "$cg_strict/io.max")'"

# vac-modify: through csi-resizer.
t0=$(now_ms)
pvc_patch live '{"spec":{"volumeAttributesClassName":"iolane-batch"}}' || exit 1
caps_ms=$(wait_ms 20 capped "$cg_live")
ok_ms=$(wait_ms 20 bash -c "[ \"\$(\"$K8S_BIN_kubectl\" --kubeconfig \"$KUBECONFIG\" get pv $pv_live -o jsonpath='{.spec.volumeAttributesClassName}')\" = iolane-batch ]")
ok_total=$(($(now_ms) - t0))
k8s_log "vac-modify: io.max capped ${caps_ms} ms after the PATCH returned; PV names iolane-batch (csi-resizer got OK) ${ok_total} ms after"
why=""
[ "$caps_ms" != timeout ] && [ "$caps_ms" -le 2000 ] || why="io.max not capped within 2 s ($caps_ms)"
[ "$ok_ms" != timeout ] && [ "$ok_total" -le 2000 ] || why="${why:+$why; }PV not updated within 2 s (${ok_total} ms)"
k8s_wait 10 "TierChanged event" event live TierChanged "streaming -> batch" || why="${why:+$why; }no TierChanged Event"
k8s_wait 10 "status tier" bash -c "[ \"\$(curl -sf http://127.0.0.1:$status_port/status | python3 -c 'import json,sys; print([v[\"tier\"] for v in json.load(sys.stdin)[\"volumes\"] if v[\"id\"] == \"$vol_live\"][0])')\" = batch ]" ||
    why="${why:+$why; }/status says $(status_tier "$vol_live")"
k8s_wait 10 "metrics tier" metrics_tier "$vol_live" batch || why="${why:+$why; }/metrics has no batch series"
kubectl -n default get events --field-selector involvedObject.name=live,reason=TierChanged -o jsonpath='{range .items[*]}    event: {.message}{"\n"}{end}'
result vac-modify "$([ -z "$why" ]; echo $?)" "$why"

# direct-modify: the RPC's own answer.
out="$("$call" "$ctrl_sock" modify "$vol_live" iolane.dev/tier=streaming)"
k8s_log "direct-modify: $out"
why=""
case "$out" in
ok*) [ "$(echo "$out" | awk '{print $2}')" -le 2000 ] || why="OK after more than 2 s: $out" ;;
*) why="$out" ;;
esac
uncapped "$cg_live" || why="${why:+$why; }io.max still capped: $(cat "$cg_live/io.max")"
result direct-modify "$([ -z "$why" ]; echo $?)" "$why"

# bad-input: nothing recorded.
gen_before="$(annotation "$pv_live" desired-generation)"
out="$("$call" "$ctrl_sock" modify "$vol_live" iolane.dev/tier=gold)"
k8s_log "bad-input: $out"
why=""
case "$out" in
"error InvalidArgument"*iolane.dev/tier*) ;;
*) why="want INVALID_ARGUMENT naming iolane.dev/tier, got: $out" ;;
esac
[ "$(annotation "$pv_live" desired-generation)" = "$gen_before" ] || why="${why:+$why; }a request was recorded"
result bad-input "$([ -z "$why" ]; echo $?)" "$why"

# annotation: within the class's allowed tiers.
uncapped "$cg_anno" || k8s_log "note: the anno pod starts capped: $(cat "$cg_anno/io.max")"
t0=$(now_ms)
pvc_patch anno '{"metadata":{"annotations":{"iolane.dev/tier":"batch"}}}' || exit 1
ms=$(wait_ms 20 capped "$cg_anno")
total=$(($(now_ms) - t0))
k8s_log "annotation: io.max capped ${total} ms after the PATCH was sent (${ms} ms after it returned)"
why=""
[ "$ms" != timeout ] && [ "$total" -le 2000 ] || why="io.max not capped within 2 s ($ms)"
k8s_wait 10 "TierChanged event" event anno TierChanged "asked by PVC annotation iolane.dev/tier set by retier-test" ||
    why="${why:+$why; }no TierChanged Event naming the field manager retier-test"
kubectl -n default get events --field-selector involvedObject.name=anno,reason=TierChanged -o jsonpath='{range .items[*]}    event: {.message}{"\n"}{end}'
result annotation "$([ -z "$why" ]; echo $?)" "$why"

# refused: outside allowed-tiers.
before="$(cat "$cg_strict/io.max")"
kubectl -n default annotate pvc strict iolane.dev/tier=streaming >/dev/null
why=""
if ms=$(wait_ms 20 event strict TierRefused "allowed-tiers"); then
    k8s_log "refused: TierRefused Event ${ms} ms after the annotation changed"
    kubectl -n default get events --field-selector involvedObject.name=strict,reason=TierRefused -o jsonpath='{range .items[*]}    event: {.message}{"\n"}{end}'
else
    why="no TierRefused Event"
fi
[ "$(cat "$cg_strict/io.max")" = "$before" ] || why="${why:+$why; }io.max changed: $(cat "$cg_strict/io.max")"
[ "$(status_tier "$vol_strict")" = batch ] || why="${why:+$why; }stored tier $(status_tier "$vol_strict")"
! event strict TierChanged "" || why="${why:+$why; }a TierChanged Event"
result refused "$([ -z "$why" ]; echo $?)" "$why"

# no-ack: the node is down (its pod's sidecar with it).
k8s_stop csi-provisioner
k8s_stop iolane
t0=$(now_ms)
out="$("$call" "$ctrl_sock" modify "$vol_live" iolane.dev/tier=batch)"
k8s_log "no-ack (node stopped, --modify-timeout 5): $out"
gen="$(annotation "$pv_live" desired-generation)"
why=""
case "$out" in
"error Unavailable"*) ;;
*) why="want UNAVAILABLE, got: $out" ;;
esac
[ "$(annotation "$pv_live" desired-parameters)" = '{"iolane.dev/tier":"batch"}' ] || why="${why:+$why; }request not recorded"
[ "$(annotation "$pv_live" applied-generation)" != "$gen" ] || why="${why:+$why; }acknowledged with no node"
result no-ack "$([ -z "$why" ]; echo $?)" "$why"

# controller-restart: the record is found again, not written twice.
k8s_stop iolane-controller
start_controller || { show_logs; exit 1; }
"$call" "$ctrl_sock" modify "$vol_live" iolane.dev/tier=batch >"$K8S_DIR/again.out" &
again=$!
# node-restart: what was recorded while the node was away.
t0=$(now_ms)
start_node || { show_logs; exit 1; }
start_provisioner
ms=$(wait_ms 30 capped "$cg_live")
k8s_log "node-restart: io.max capped $(($(now_ms) - t0)) ms after the node was started again (its start included; ${ms} ms after its socket appeared)"
wait "$again"
out="$(cat "$K8S_DIR/again.out")"
k8s_log "controller-restart: the repeated request answered: $out"
why=""
case "$out" in ok*) ;; *) why="repeated request: $out" ;; esac
[ "$(annotation "$pv_live" desired-generation)" = "$gen" ] || why="${why:+$why; }generation $(annotation "$pv_live" desired-generation), recorded $gen"
result controller-restart "$([ -z "$why" ]; echo $?)" "$why"
why=""
[ "$ms" != timeout ] || why="io.max not capped after the restart"
[ "$(annotation "$pv_live" applied-generation)" = "$gen" ] || why="${why:+$why; }applied $(annotation "$pv_live" applied-generation), want $gen"
result node-restart "$([ -z "$why" ]; echo $?)" "$why"

k8s_check_alive || { show_logs; result processes 1 "a component exited"; }
[ "$failed" = 0 ] || show_logs
k8s_log "done"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
