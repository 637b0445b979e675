#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests (no cluster needed):
#   - renders every overlay in deploy/overlays with `kubectl kustomize`;
#   - validates every rendered object against the Kubernetes 1.34 and 1.36 schemas, strictly
#     (unknown fields are errors), skipping only CRD kinds listed by name (PodMonitor);
#   - checks the invariants a schema cannot express (provisioner flags, pinned images,
#     resources, privileged and Bidirectional only on the driver, CSIDriver fields, the
#     driver's flags against csi-driver/src/config/cli.rs, ...);
#   - checks the metrics the code registers against the Grafana dashboard's queries and
#     the docs;
#   - runs a self-test proving each invariant check can fail;
#   - lints and renders the Helm chart charts/iolane with Helm v4 (built once from its Go
#     module by deploy/tools/helm.sh, into a versioned cache), validates its output the same
#     way and diffs it against the kustomize overlay (deploy/tests/check_chart.py);
#   - checks that the docs name only commands, flags, programs, alerts and headings that
#     exist (deploy/tests/check_docs.py).
# Prints `N passed, M failed` last (the sum of the three checkers); exits non-zero on any
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# kubectl with kustomize built in. The machine's /usr/bin/kubectl (v1.32) is used; Debian's
# kubernetes-client package is too old for these kustomizations.
kubectl=/usr/bin/kubectl
if ! "$kubectl" version --client >/dev/null 2>&1; then
    echo "deploy/validate.sh: $kubectl (v1.27 or newer, with kustomize) is required" >&2
    exit 1
fi

# kubernetes-validate carries the Kubernetes OpenAPI schemas. 1.37.0 has those of 1.34
# (the oldest Kubernetes iolane supports) through 1.37, so 1.36 too. It is installed once
# into its own directory, keyed by version, and put on PYTHONPATH: a different version
# in the machine's site-packages (another checkout's validate.sh) does not matter.
want=1.37.0
pylib=${IOLANE_K8S_BIN:-/var/cache/iolane/k8s-bin}/python/kubernetes-validate-$want
have=$(PYTHONPATH=$pylib python3 -c 'import kubernetes_validate.version as v; print(v.__version__)' 2>/dev/null || true)
if [ "$have" != "$want" ]; then
    echo "== installing kubernetes-validate==$want into $pylib"
    rm -rf "$pylib.tmp"
    python3 -m pip install --quiet --disable-pip-version-check --target "$pylib.tmp" "kubernetes-validate==$want"
    rm -rf "$pylib"
    mv "$pylib.tmp" "$pylib"
fi
export PYTHONPATH=$pylib${PYTHONPATH:+:$PYTHONPATH}

# The packages of the iolane image (Dockerfile), so check_docs.py can list their programs
# with dpkg. Installed only if missing.
packages=$(sed -n '/apt-get install -y --no-install-recommends/,/&&/p' Dockerfile | grep -v 'apt-get\|&&' | tr -d '\\')
missing=()
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Helm v4, built from its Go module the first time (minutes), reused afterwards.
start=$(date +%s)
HELM=$(bash deploy/tools/helm.sh)
export HELM
echo "== helm: $("$HELM" version --short) ($(( $(date +%s) - start )) s to find or build)"

status=0
total_passed=0
total_failed=0
# Runs one checker, shows its output and adds its closing `N passed, M failed` to the totals.
run() {
    local out rc last
    out=$(mktemp)
    set +e
    "$@" > "$out" 2>&1
    rc=$?
    set -e
    cat "$out"
    last=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -1)
    rm -f "$out"
    if [ -z "$last" ]; then
        echo "deploy/validate.sh: $* printed no result line" >&2
        total_failed=$((total_failed + 1))
        status=1
        return
    fi
    total_passed=$((total_passed + ${last%% passed*}))
    local f=${last#*, }
    total_failed=$((total_failed + ${f%% failed*}))
    [ "$rc" = 0 ] || status=1
}

echo "== manifests: render, schema (Kubernetes 1.34 and 1.36, strict), invariants, self-test"
run python3 deploy/tests/check_manifests.py
echo "== chart: helm lint, helm template, schema, diff against the overlay, self-test"
run python3 deploy/tests/check_chart.py
echo "== docs: commands, flags, programs, alerts, links, self-test"
run python3 deploy/tests/check_docs.py
echo "== deploy/validate.sh"
echo "$total_passed passed, $total_failed failed"
exit $status
