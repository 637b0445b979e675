#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds real Kubernetes components from their pinned Go modules (tests/k8s/versions.sh)
# and prints one line per component: `NAME PATH-OF-BINARY`.
#
#   bash tests/k8s/build.sh NAME...     (NAMEs from versions.sh; none = all)
#
# Each binary goes to $IOLANE_K8S_BIN_CACHE/NAME-VERSION/NAME (default cache
# /var/cache/iolane/k8s-bin); a binary already there is reused without running Go. Go's
# own module and build caches (GOMODCACHE, GOCACHE) are the usual ones, so on a machine
# that built the same version before, a missing binary is relinked from cache. Builds of
# one component are serialized by a lock file beside its binary.
#
# How: a wrapper module per component (NAME-VERSION/wrapper) that requires the pinned
# module and lists the package as a `tool`; `go mod tidy` then resolves the same build
# list as the component's own go.mod (it is the wrapper's only requirement), and `go build`
# builds the tool package. `replace` lines only apply in the main module, so they are
# carried over from the component's go.mod: non-local ones as they are; a local-path one
# (`k8s.io/api => ./staging/src/k8s.io/api` in k8s.io/kubernetes, `../api` in etcd) points
# at a module published at the release's own tag, so it becomes the required version, or
# for a `v0.0.0` requirement (Kubernetes' staging modules) `v0.MINOR.PATCH` of the release
# (k8s.io/kubernetes v1.34.4 -> k8s.io/api v0.34.4).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.sh
. "$here/versions.sh"
cache="${IOLANE_K8S_BIN_CACHE:-/var/cache/iolane/k8s-bin}"
go="$IOLANE_GO"
[ -x "$go" ] || go="$(command -v go || true)"
if [ -z "$go" ]; then
    echo "build.sh: no Go toolchain (IOLANE_GO, /usr/local/go/bin/go or go on PATH)" >&2
    exit 1
fi
export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"

# Writes the wrapper's go.mod for module $2@$3 and tool package $1 into directory $4.
write_wrapper() {
    local pkg="$1" mod="$2" ver="$3" dir="$4" modfile
    modfile="$(cd "$dir" && "$go" mod download -json "$mod@$ver" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
    "$go" mod edit -json "$modfile" | python3 -c '
import json, re, sys
m = json.load(sys.stdin)
pkg, mod, ver = sys.argv[1:4]
req = {r["Path"]: r["Version"] for r in m.get("Require") or []}
go = m.get("Go", "1.24")
if tuple(int(x) for x in go.split(".")[:2]) < (1, 24):
    go = "1.24"  # the tool directive needs 1.24
out = ["module iolane.test/k8s-build", "", "go " + go, ""]
for g in m.get("Godebug") or []:
    out.append("godebug %s=%s" % (g["Key"], g["Value"]))
out += ["", "require %s %s" % (mod, ver), "", "tool " + pkg, ""]
mj = re.match(r"v(\d+)\.(\d+)\.(\d+)", ver)
for r in m.get("Replace") or []:
    old, new = r["Old"], r["New"]
    lhs = old["Path"] + (" " + old["Version"] if old.get("Version") else "")
    if new["Path"].startswith((".", "/")):
        want = req.get(old["Path"])
        if want is None:
            continue  # a guard (etcd: FORBIDDEN_DEPENDENCY) or unused: nothing to build
        if want == "v0.0.0":
            want = "v0.%s.%s" % (mj.group(2), mj.group(3))
        out.append("replace %s => %s %s" % (lhs, old["Path"], want))
    else:
        out.append("replace %s => %s %s" % (lhs, new["Path"], new["Version"]))
print("\n".join(out))
' "$pkg" "$mod" "$ver" >"$dir/go.mod"
}

build_one() {
    local name="$1" spec pkg mod ver dir bin t0 ldflags=()
    spec="$(k8s_component "$name")" || { echo "build.sh: unknown component $name (known: $K8S_COMPONENTS)" >&2; return 1; }
    read -r pkg mod ver <<<"$spec"
    dir="$cache/$name-$ver"
    bin="$dir/$name"
    if [ -x "$bin" ]; then
        echo "$name $bin"
        return 0
    fi
    # One build per component at a time (tests/run.sh starts one in the background): a
    # second caller waits for the first and then finds its binary.
    mkdir -p "$dir/wrapper"
    local lock
    exec {lock}>"$dir/.build.lock"
    flock "$lock"
    if [ -x "$bin" ]; then
        exec {lock}>&-
        echo "$name $bin"
        return 0
    fi
    t0=$(date +%s)
    write_wrapper "$pkg" "$mod" "$ver" "$dir/wrapper"
    if [ "$mod" = k8s.io/kubernetes ]; then
        # What `kubectl version` and clients see; Kubernetes' own build sets the same.
        local minor="${ver#v1.}"
        minor="${minor%%.*}"
        ldflags=(-ldflags "-X k8s.io/component-base/version.gitVersion=$ver -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean")
    fi
    (
        cd "$dir/wrapper"
        "$go" mod tidy >&2
        "$go" build -trimpath "${ldflags[@]}" -o "$bin.tmp" "$pkg" >&2
    ) || { echo "build.sh: building $name $ver failed" >&2; rm -f "$bin.tmp"; exec {lock}>&-; return 1; }
    mv "$bin.tmp" "$bin"
    exec {lock}>&-
    echo "build.sh: built $name $ver in $(($(date +%s) - t0)) s" >&2
    echo "$name $bin"
}

names=("$@")
[ ${#names[@]} -gt 0 ] || read -r -a names <<<"$K8S_COMPONENTS"
for n in "${names[@]}"; do
    build_one "$n"
done
