#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# `iolane demo` inside the test VM, for a host without the cgroup v2 io controller (this
# project's CI machines, and many laptops with hybrid cgroups), where `iolane demo` itself
# exits 2 with what is missing. Host side, root:
#
#   bash tests/vm/demo.sh [DEMO FLAGS...]      e.g. bash tests/vm/demo.sh --batch-iops 200
#
# Installs what the VM needs (tests/vm/setup.sh), builds `iolane` (the debug build the suite
# uses, as tests/vm/tiers.sh runs the demo), boots the host's
# kernel with software emulation (tests/vm/run.sh: about 20 s to boot), runs
# `iolane --log warn demo FLAGS...` in the guest on its real cgroup v2 root, and prints the
# demo's output here as it goes. The exit status is the demo's: 0 when the tiers held, 1 when
# they did not or a step failed, 2 when a prerequisite is missing. Absolute IOPS under
# software emulation mean little; compare the ratios the table prints.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: run as root" >&2
    exit 2
fi
for a in "$@"; do
    case "$a" in
        *[!A-Za-z0-9._/=-]*) echo "demo.sh: unexpected character in argument: $a" >&2; exit 2 ;;
    esac
done

bash "$here/setup.sh" >/dev/null
cargo build -p csi-driver --locked
work="$(mktemp -d /tmp/iolane-vmdemo.XXXXXX)"
trap 'rm -rf "$work"' EXIT
target="${CARGO_TARGET_DIR:-$repo/target}"
# The guest reads the binary over 9p; without debug info it starts faster.
objcopy --strip-debug "$target/debug/iolane" "$work/iolane"

bash "$here/run.sh" --disks 0 --timeout 900 --rwdir "$work" -- \
    "$work/iolane" --log warn demo "$@"
