# shellcheck shell=bash disable=SC2154 # K8S_BIN_* are set by k8s_build (printf -v)
# A real Kubernetes control plane on loopback, for the tests in tests/k8s/: etcd and
# kube-apiserver built from their pinned Go modules (build.sh, versions.sh), certificates
# made with openssl, client-certificate auth (the admin is in `system:masters`) and
# `--authorization-mode=AlwaysAllow`. Sourced by a test script, which calls
# `k8s_test_setup` (below), or sets `K8S_DIR` (an empty directory it owns) and calls
# `k8s_stop_all` on exit itself.
#
#   k8s_build NAME...        build/reuse the binaries; sets K8S_BIN_<name> (dashes -> _)
#   k8s_certs                CA, apiserver serving cert, admin client cert, SA key pair
#                            (K8S_EXTRA_SAN=IP:10.0.2.2 adds a name to the serving cert)
#   k8s_start_etcd           etcd on 127.0.0.1 (free ports), data in $K8S_DIR/etcd
#   k8s_start_apiserver      kube-apiserver on 127.0.0.1, waits for /readyz; writes
#                            $K8S_DIR/kubeconfig and sets KUBECONFIG
#   k8s_start NAME LOG CMD...   a background process, stopped by k8s_stop_all
#   k8s_start_provisioner ARG...  csi-provisioner with the node DaemonSet's arguments
#   k8s_apply_base [FILE...]  deploy/base's namespace, CSIDriver, StorageClasses (+ FILEs)
#   k8s_node_pod_yaml        the node Pod owning the capacity objects, as YAML
#   k8s_stop NAME            stops one of them now (SIGTERM, SIGKILL after 20 s)
#   k8s_wait SECONDS WHAT CMD...  polls CMD (every K8S_POLL_SECONDS, default 0.5) until it
#                            succeeds or the deadline
#   kubectl ...              the built kubectl on that kubeconfig
K8S_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_PIDS=()
K8S_NAMES=()

k8s_log() { echo "$(basename "$0"): [$(($(date +%s) - ${K8S_T0:=$(date +%s)}))s] $*"; }

# The control-plane scripts' first step: refuse to run without root (the node makes loop
# devices), start the clock of k8s_log, and name the driver binary ($bin; IOLANE_BIN
# overrides target/debug/iolane), built when it is missing. Needs $repo.
k8s_script_begin() {
    if [ "$(id -u)" != 0 ]; then
        echo "$(basename "$0"): run as root (the node makes loop devices)" >&2
        exit 2
    fi
    K8S_T0=$(date +%s)
    bin="${IOLANE_BIN:-$repo/target/debug/iolane}"
    if [ ! -x "$bin" ]; then
        (cd "$repo" && cargo build -p csi-driver --locked) || exit 1
    fi
}

# The objects a cluster has before iolane's PVCs: deploy/base's namespace, CSIDriver and
# StorageClasses, plus the deploy/base files given (e.g. volumeattributesclasses.yaml),
# and the `default` service accounts (no controller-manager here makes them).
k8s_apply_base() {
    local f args=()
    for f in namespace.yaml csidriver.yaml storageclasses.yaml "$@"; do
        args+=(-f "$repo/deploy/base/$f")
    done
    kubectl apply "${args[@]}" >/dev/null || return 1
    kubectl -n iolane create serviceaccount default >/dev/null 2>&1
    kubectl -n default create serviceaccount default >/dev/null 2>&1
    return 0
}

# csi-provisioner with the node DaemonSet's arguments and environment, on the node socket
# $sock of node $node, logging to $K8S_DIR/provisioner.log; extra arguments are appended.
k8s_start_provisioner() {
    k8s_start csi-provisioner "$K8S_DIR/provisioner.log" \
        env NODE_NAME="$node" NAMESPACE=iolane POD_NAME=iolane-node-test \
        "$K8S_BIN_csi_provisioner" --kubeconfig "$KUBECONFIG" --csi-address "$sock" \
        --node-deployment --extra-create-metadata --strict-topology \
        --immediate-topology=false --timeout=60s --v=2 "$@"
}

# The node Pod that owns the CSIStorageCapacity objects of node $node (it never runs: the
# node's POD_NAME names it), as YAML on stdout.
k8s_node_pod_yaml() {
    cat <<POD
apiVersion: v1
kind: Pod
metadata: {name: iolane-node-test, namespace: iolane}
spec:
  nodeName: $node
  automountServiceAccountToken: false
  containers: [{name: iolane, image: iolane}]
POD
}

k8s_build() {
    local line name path
    while read -r name path; do
        [ -x "$path" ] || return 1
        printf -v "K8S_BIN_${name//-/_}" '%s' "$path"
    done < <(bash "$K8S_LIB_DIR/build.sh" "$@")
    for name in "$@"; do
        line="K8S_BIN_${name//-/_}"
        [ -n "${!line:-}" ] || { echo "k8s_build: no binary for $name" >&2; return 1; }
    done
}

# A TCP port nothing listens on now (the kernel's choice).
k8s_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

k8s_start() {
    local name="$1" log="$2"
    shift 2
    "$@" >"$log" 2>&1 &
    K8S_PIDS+=($!)
    K8S_NAMES+=("$name")
}

# SIGTERM to one process, then SIGKILL after 20 s.
k8s_stop_pid() {
    local pid="$1" deadline
    kill -TERM "$pid" 2>/dev/null || return 0
    deadline=$(($(date +%s) + 20))
    while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

# Stops what k8s_start started, newest first.
k8s_stop_all() {
    local i
    for ((i = ${#K8S_PIDS[@]} - 1; i >= 0; i--)); do
        k8s_stop_pid "${K8S_PIDS[$i]}"
    done
    K8S_PIDS=()
    K8S_NAMES=()
}

# Stops the processes k8s_start started under NAME and forgets them.
k8s_stop() {
    local i pids=() names=()
    for i in "${!K8S_PIDS[@]}"; do
        if [ "${K8S_NAMES[$i]}" = "$1" ]; then
            k8s_stop_pid "${K8S_PIDS[$i]}"
        else
            pids+=("${K8S_PIDS[$i]}")
            names+=("${K8S_NAMES[$i]}")
        fi
    done
    K8S_PIDS=("${pids[@]}")
    K8S_NAMES=("${names[@]}")
}

# Fails (and names the process) if one of the started processes has exited.
k8s_check_alive() {
    local i
    for i in "${!K8S_PIDS[@]}"; do
        if ! kill -0 "${K8S_PIDS[$i]}" 2>/dev/null; then
            echo "${K8S_NAMES[$i]} exited" >&2
            return 1
        fi
    done
}

k8s_wait() {
    local secs="$1" what="$2" deadline
    shift 2
    deadline=$(($(date +%s) + secs))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "timed out after ${secs}s waiting for $what" >&2
            return 1
        fi
        k8s_check_alive || { echo "while waiting for $what" >&2; return 1; }
        sleep "${K8S_POLL_SECONDS:-0.5}"
    done
}

k8s_certs() {
    local d="$K8S_DIR/pki"
    mkdir -p "$d"
    (
        cd "$d" || exit 1
        openssl ecparam -genkey -name prime256v1 -noout -out ca.key
        openssl req -x509 -new -key ca.key -out ca.crt -days 2 -subj /CN=iolane-test-ca
        # sign NAME SUBJECT EXTENSIONS
        sign() {
            openssl ecparam -genkey -name prime256v1 -noout -out "$1.key"
            openssl req -new -key "$1.key" -out "$1.csr" -subj "$2"
            printf '%s\n' "$3" >"$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
                -out "$1.crt" -days 2 -extfile "$1.ext"
        }
        sign apiserver /CN=kube-apiserver \
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc${K8S_EXTRA_SAN:+,$K8S_EXTRA_SAN}
extendedKeyUsage=serverAuth"
        sign admin "/O=system:masters/CN=iolane-test-admin" "extendedKeyUsage=clientAuth"
        openssl ecparam -genkey -name prime256v1 -noout -out sa.key
        openssl ec -in sa.key -pubout -out sa.pub
    ) >"$K8S_DIR/pki.log" 2>&1 || { cat "$K8S_DIR/pki.log" >&2; return 1; }
}

k8s_start_etcd() {
    local client peer
    client=$(k8s_free_port)
    peer=$(k8s_free_port)
    K8S_ETCD_URL="http://127.0.0.1:$client"
    k8s_start etcd "$K8S_DIR/etcd.log" "$K8S_BIN_etcd" \
        --name test --data-dir "$K8S_DIR/etcd" \
        --listen-client-urls "$K8S_ETCD_URL" --advertise-client-urls "$K8S_ETCD_URL" \
        --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "test=http://127.0.0.1:$peer" \
        --unsafe-no-fsync --log-level warn
    k8s_wait 60 "etcd health" curl -sf "$K8S_ETCD_URL/health"
}

k8s_start_apiserver() {
    local port p="$K8S_DIR/pki"
    port=$(k8s_free_port)
    K8S_SERVER="https://127.0.0.1:$port"
    # No Service network exists: --endpoint-reconciler-type=none keeps the apiserver from
    # publishing its loopback address as the `kubernetes` Service's endpoint. No
    # kube-controller-manager runs, so nothing would remove the `kubernetes.io/pvc-protection`
    # and `pv-protection` finalizers: the admission plugin that adds them is off.
    k8s_start kube-apiserver "$K8S_DIR/apiserver.log" "$K8S_BIN_kube_apiserver" \
        --etcd-servers "$K8S_ETCD_URL" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$port" \
        --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
        --client-ca-file "$p/ca.crt" \
        --authorization-mode AlwaysAllow \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$p/sa.pub" \
        --service-account-signing-key-file "$p/sa.key" \
        --service-cluster-ip-range 10.96.0.0/24 \
        --endpoint-reconciler-type none \
        --disable-admission-plugins StorageObjectInUseProtection \
        --v 1
    cat >"$K8S_DIR/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
  - name: test
    cluster:
      server: $K8S_SERVER
      certificate-authority: $p/ca.crt
users:
  - name: admin
    user:
      client-certificate: $p/admin.crt
      client-key: $p/admin.key
contexts:
  - name: test
    context: {cluster: test, user: admin}
current-context: test
KC
    export KUBECONFIG="$K8S_DIR/kubeconfig"
    k8s_wait 180 "kube-apiserver /readyz" curl -sf --cacert "$p/ca.crt" \
        --cert "$p/admin.crt" --key "$p/admin.key" "$K8S_SERVER/readyz"
}

kubectl() { "$K8S_BIN_kubectl" --kubeconfig "$K8S_DIR/kubeconfig" "$@"; }

# k8s_test_setup PREFIX: what every control-plane test script starts with. Sets K8S_DIR (a
# fresh temp dir, or IOLANE_K8S_KEEP=DIR to keep logs and state), `node`, `sock` and `state`
# for the iolane node, a clean-up at exit (every process started here, the mounts under
# K8S_DIR, the loop devices over files under it, the dir unless kept), and the counters `passed`/`failed` that
# `result NAME STATUS [WHY]` feeds, printing `ok PREFIX::NAME` or `FAILED PREFIX::NAME (WHY)`.
k8s_test_setup() {
    K8S_RESULT_PREFIX=$1
    K8S_DIR="${IOLANE_K8S_KEEP:-$(mktemp -d /tmp/iolane-k8s.XXXXXX)}"
    mkdir -p "$K8S_DIR"
    node=test-node
    sock="$K8S_DIR/csi.sock"
    state="$K8S_DIR/state"
    passed=0
    failed=0
    trap k8s_test_cleanup EXIT
    trap 'exit 1' INT TERM
}

k8s_test_cleanup() {
    k8s_stop_all
    local l m
    # What a test published (bind mounts of device nodes under K8S_DIR), deepest first, so
    # the loop devices can go and nothing mounted is left for a later run to trip over.
    for m in $(findmnt -rn -o TARGET | grep -F "$K8S_DIR/" | sort -r); do
        umount "$m" || umount -l "$m"
    done
    for l in $(losetup -n -l -O NAME,BACK-FILE 2>/dev/null | awk -v d="$K8S_DIR/" 'index($2, d) == 1 {print $1}'); do
        losetup -d "$l"
    done
    [ -n "${IOLANE_K8S_KEEP:-}" ] || rm -rf "$K8S_DIR"
}

result() { # NAME STATUS [WHY]
    if [ "$2" = 0 ]; then
        passed=$((passed + 1))
        echo "ok $K8S_RESULT_PREFIX::$1"
    else
        failed=$((failed + 1))
        echo "FAILED $K8S_RESULT_PREFIX::$1 (${3:-see above})"
    fi
}
