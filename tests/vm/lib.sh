# shellcheck shell=bash disable=SC2034 # the variables are used by the scripts that source this
# Helpers shared by tests/vm/setup.sh and tests/vm/run.sh (sourced, not run).

# The pinned virtme-ng release: its wheel ships a prebuilt virtme-ng-init, so nothing is
# compiled at install time.
IOLANE_VNG_VERSION="1.42"

# Debian packages the VM needs on the host. The guest boots the host's own root read-only,
# so the guest's tools (lvm2, mkfs, fio, ...) are exactly what is installed here.
# busybox-static: virtme builds an initramfs with it, since Debian's kernel has 9p and
# virtio as modules. containerd and runc: the container runtime of the kubelet test
# (tests/k8s/kubelet.sh), which also builds its images from busybox-static and fio. On a
# host with systemd, installing containerd also starts a containerd service there; the
# test never uses it (its containerd runs in the VM with its own paths).
IOLANE_VM_PACKAGES=(qemu-system-x86 linux-image-amd64 lvm2 thin-provisioning-tools
    xfsprogs e2fsprogs fio kmod util-linux busybox-static containerd runc)

# Prints the newest /boot/vmlinuz-* that has a matching /lib/modules/<version> directory
# (the guest loads dm-thin-pool and nvme from there). `sort -V` orders 6.1.0-9 < 6.1.0-10.
iolane_find_kernel() {
    local best="" v f
    while IFS= read -r v; do
        f="/boot/vmlinuz-$v"
        if [ -r "$f" ] && [ -d "/lib/modules/$v/kernel" ]; then
            best="$f"
        fi
    done < <(find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' 2>/dev/null \
        | sed 's/^vmlinuz-//' | sort -V)
    if [ -z "$best" ]; then
        echo "no /boot/vmlinuz-* with modules under /lib/modules: run tests/vm/setup.sh" >&2
        return 1
    fi
    printf '%s\n' "$best"
}

# Prints the path of the vng launcher (pip may put it outside PATH, e.g. under pyenv).
iolane_find_vng() {
    local c
    if c="$(command -v vng 2>/dev/null)"; then
        printf '%s\n' "$c"
        return 0
    fi
    for c in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/vng" \
        /usr/local/bin/vng "$HOME/.local/bin/vng"; do
        if [ -x "$c" ]; then
            printf '%s\n' "$c"
            return 0
        fi
    done
    echo "vng (virtme-ng) not found: run tests/vm/setup.sh" >&2
    return 1
}
