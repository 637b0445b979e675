#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Installs what tests/vm/run.sh needs on a Debian 12 machine, as root. Idempotent: installs
# only what is missing (one `apt-get update` first, only if something is) and prints what it
# installed. Safe to run on every CI run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"

if [ "$(id -u)" != 0 ]; then
    echo "tests/vm/setup.sh: run as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive

missing=()
for p in "${IOLANE_VM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: apt-get install ${missing[*]}"
    apt-get update -qq
    # No recommends: they would pull firmware, GUI bits and apparmor we do not need.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "setup: installed (debian): ${missing[*]}"
else
    echo "setup: debian packages already present"
fi

have_vng=""
if vng="$(iolane_find_vng 2>/dev/null)"; then
    have_vng="$("$vng" --version 2>/dev/null | awk '{print $NF}')" || have_vng=""
fi
if [ "$have_vng" != "$IOLANE_VNG_VERSION" ]; then
    echo "setup: pip install virtme-ng==$IOLANE_VNG_VERSION (found: ${have_vng:-none})"
    python3 -m pip install -q --disable-pip-version-check "virtme-ng==$IOLANE_VNG_VERSION"
    # pyenv keeps its shims in step only after a rehash.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
    echo "setup: installed (pip): virtme-ng==$IOLANE_VNG_VERSION"
fi
vng="$(iolane_find_vng)"
echo "setup: $("$vng" --version) at $vng"
echo "setup: kernel $(iolane_find_kernel)"
echo "setup: $(qemu-system-x86_64 --version | head -1)"
