#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests (no cluster needed):
#   - renders every overlay in deploy/overlays with `kubectl kustomize`;
#   - validates every rendered object against the Kubernetes 1.34 and 1.36 schemas, strictly
#     (unknown fields are errors), skipping only CRD kinds listed by name (PodMonitor);
#   - checks the invariants a schema cannot express (provisioner flags, pinned images,
#     resources, privileged and Bidirectional only on the driver, CSIDriver fields, the
#     driver's flags against csi-driver/src/config.rs, ...);
#   - checks the metrics the code registers against the Grafana dashboard's queries and
#     the docs;
#   - runs a self-test proving each invariant check can fail.
# Prints `N passed, M failed` last; exits non-zero on any failure.
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
# (the oldest Kubernetes iolane supports) through 1.37, so 1.36 too. Installed only if
# missing.
want=1.37.0
have=$(python3 -c 'import kubernetes_validate.version as v; print(v.__version__)' 2>/dev/null || true)
if [ "$have" != "$want" ]; then
    echo "== installing kubernetes-validate==$want"
    python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$want"
fi

echo "== manifests: render, schema (Kubernetes 1.34 and 1.36, strict), invariants, self-test"
python3 deploy/tests/check_manifests.py
