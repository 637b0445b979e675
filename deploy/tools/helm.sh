#!/usr/bin/env bash
# Prints the path of a Helm v4 binary, building it from its Go module the first time.
#
# Helm is built with the machine's Go toolchain from the module helm.sh/helm/v4 at
# HELM_VERSION (a released tag), into a cache directory keyed by that version:
#   ${IOLANE_K8S_BIN:-/var/cache/iolane/k8s-bin}/helm-<version>/helm
# A binary already there is reused as is, so only the first run pays for the build
# (minutes on a small machine); changing HELM_VERSION builds the new one beside it.
# Progress goes to stderr; stdout is only the path, for `helm=$(deploy/tools/helm.sh)`.
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v4.3.2}
cache=${IOLANE_K8S_BIN:-/var/cache/iolane/k8s-bin}/helm-$HELM_VERSION
bin=$cache/helm

if [ -x "$bin" ] && "$bin" version --short >/dev/null 2>&1; then
    echo "$bin"
    exit 0
fi

go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
if ! [ -x "$go" ]; then
    echo "deploy/tools/helm.sh: a Go toolchain is needed to build Helm $HELM_VERSION (set GO=)" >&2
    exit 1
fi

mkdir -p "$cache"
# One build at a time (tests/run.sh may start one in the background): a second caller
# waits for the first and then finds its binary.
exec {lock}>"$cache/.build.lock"
flock "$lock"
if [ -x "$bin" ] && "$bin" version --short >/dev/null 2>&1; then
    echo "$bin"
    exit 0
fi
echo "deploy/tools/helm.sh: building Helm $HELM_VERSION into $cache (once)" >&2
# A private GOPATH keeps the module cache beside the binary's cache, not in $HOME; the
# version is stamped the way Helm's own Makefile does, so `helm version` reports it.
export GOPATH=${GOPATH:-${IOLANE_K8S_BIN:-/var/cache/iolane/k8s-bin}/gopath}
export GOFLAGS=-mod=mod
export CGO_ENABLED=0
tmp=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
nice -n 10 "$go" install \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2
# `go install` puts the binary in $GOPATH/bin (or $GOBIN); move it into the keyed cache
# atomically, so a build cut short never leaves a half-written binary behind.
built=${GOBIN:-$GOPATH/bin}/helm
cp "$built" "$tmp/helm"
mv "$tmp/helm" "$bin"
"$bin" version --short >&2
echo "$bin"
