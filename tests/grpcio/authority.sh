#!/usr/bin/env bash
# grpcio (gRPC C core, the client of Python's CSI tools) against a real `iolane node` on
# the loop backend: Identity and Node calls over `unix:///...`, where grpcio sends the
# socket's path, percent-encoded, as `:authority` (and, on a second channel, the bare path,
# as grpc-java does). Before iolane rewrote such an authority (csi-driver/src/grpc/
# authority.rs), h2 reset every one of these calls with PROTOCOL_ERROR.
#
#   bash tests/grpcio/authority.sh       (root: the node makes its state on a temp dir)
#
# grpcio comes from PyPI, pinned (IOLANE_GRPCIO_VERSION), into a venv cached at
# $IOLANE_GRPCIO_VENV (default /var/cache/iolane/grpcio-VERSION); made once, reused after
# (a lock keeps two runs from making it at once). Prints each call's `ok NAME` / `FAILED
# NAME` and `grpcio: N passed, M failed`. Exit status 0 when every call passed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
version="${IOLANE_GRPCIO_VERSION:-1.85.3}"
venv="${IOLANE_GRPCIO_VENV:-/var/cache/iolane/grpcio-$version}"

if [ "$(id -u)" != 0 ]; then
    echo "authority.sh: run as root (the node makes loop devices)" >&2
    exit 2
fi
bin="${IOLANE_BIN:-$repo/target/debug/iolane}"
if [ ! -x "$bin" ]; then
    (cd "$repo" && cargo build -p csi-driver --locked) || exit 1
fi

# The venv, made once per grpcio version.
have_grpcio() { "$venv/bin/python" -c "import grpc, sys; sys.exit(grpc.__version__ != '$version')" 2>/dev/null; }
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if ! have_grpcio; then
    echo "authority.sh: making $venv (grpcio==$version)"
    rm -rf "$venv"
    python3 -m venv "$venv" &&
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "grpcio==$version" ||
        { echo "authority.sh: installing grpcio==$version into $venv failed" >&2; rm -rf "$venv"; exit 1; }
fi
flock -u 9

tmp="$(mktemp -d /tmp/iolane-grpcio.XXXXXX)"
node_pid=""
cleanup() {
    if [ -n "$node_pid" ]; then
        kill -TERM "$node_pid" 2>/dev/null
        local deadline=$(($(date +%s) + 30))
        while kill -0 "$node_pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
        kill -KILL "$node_pid" 2>/dev/null
        wait "$node_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# The socket at the kubelet's path for the plugin, under the temp dir.
sock="$tmp/var/lib/kubelet/plugins/csi.iolane.dev/csi.sock"
"$bin" node --endpoint "unix://$sock" --node-id grpcio-node --state-dir "$tmp/state" \
    --path-root "$tmp" --kubernetes off --log info >"$tmp/node.log" 2>&1 &
node_pid=$!
deadline=$(($(date +%s) + 60))
while [ ! -S "$sock" ]; do
    if ! kill -0 "$node_pid" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
        echo "authority.sh: iolane node did not start (socket $sock); its log:" >&2
        tail -30 "$tmp/node.log" >&2
        exit 1
    fi
    sleep 0.1
done

"$venv/bin/python" "$here/calls.py" "$sock" grpcio-node
rc=$?
if [ "$rc" != 0 ]; then
    echo "authority.sh: the end of the node's log:"
    tail -20 "$tmp/node.log" | sed 's/^/    /'
fi
exit "$rc"
