# The iolane image: `iolane node` (DaemonSet) and `iolane controller` (Deployment).
#   docker build -t ghcr.io/iolane/iolane:0.1.0 .
# Build stage: the Rust toolchain. No system protoc: the csi-proto crate compiles
# csi.proto with the protoc that protoc-bin-vendored ships.
FROM docker.io/library/rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p csi-driver --bin iolane \
 && install -D -m 0755 target/release/iolane /out/iolane

# Runtime: Debian 12 slim (the LVM version the VM suite and the fixtures were taken with),
# plus the tools the driver runs:
#   lvm2 (lvcreate, lvs, ...), thin-provisioning-tools (thin pool metadata checks at
#   activation), e2fsprogs and xfsprogs (mkfs, resize2fs, xfs_growfs), util-linux
#   (losetup, blkid, blkdiscard, wipefs), mount (mount, umount).
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      lvm2 thin-provisioning-tools e2fsprogs xfsprogs util-linux mount \
 && rm -rf /var/lib/apt/lists/*
# LVM in a container: no udev to wait for, no dmeventd, metadata backups in the state
# directory (see deploy/image/lvm.conf).
COPY deploy/image/lvm.conf /etc/lvm/lvm.conf
COPY --from=build /out/iolane /usr/local/bin/iolane
ENTRYPOINT ["/usr/local/bin/iolane"]
