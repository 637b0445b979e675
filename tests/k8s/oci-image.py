#!/usr/bin/env python3
"""Builds a one-layer container image from files already on this machine, as an image
archive that `ctr images import` reads (OCI layout: `oci-layout`, `index.json`,
`blobs/sha256/...`, plus Docker's `manifest.json` with the image's name in `RepoTags`).
Used by tests/k8s/kubelet.sh for the pause image and the test image; nothing is pulled.

    oci-image.py --name iolane.test/pause:1 --out pause.tar \
        --file /bin/busybox=/bin/busybox --link /bin/sleep=busybox \
        --entrypoint /bin/sleep --cmd 2147483647

--file SRC=DST copies SRC (following symlinks) to DST in the image; --with-libs PATH adds
the shared libraries `ldd PATH` names (and the dynamic loader) at their own paths; --link
DST=TARGET makes a symlink; --dir DST an empty directory. The layer is an uncompressed tar
with fixed owners and times, so the same inputs give the same digests.
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile


def ldd_libs(path):
    out = subprocess.run(["ldd", path], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libs.append(target)
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])  # the dynamic loader
    return libs


def add_dir(tar, seen, path):
    path = path.strip("/")
    if not path or path in seen:
        return
    add_dir(tar, seen, os.path.dirname(path))
    info = tarfile.TarInfo(path)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)
    seen.add(path)


def layer_bytes(files, links, dirs):
    buf = io.BytesIO()
    seen = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs):
            add_dir(tar, seen, d)
        for dst, src in sorted(files.items()):
            add_dir(tar, seen, os.path.dirname(dst))
            with open(src, "rb") as f:
                data = f.read()
            info = tarfile.TarInfo(dst.strip("/"))
            info.size = len(data)
            info.mode = os.stat(src).st_mode & 0o777
            tar.addfile(info, io.BytesIO(data))
        for dst, target in sorted(links.items()):
            add_dir(tar, seen, os.path.dirname(dst))
            info = tarfile.TarInfo(dst.strip("/"))
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True, help="image reference, e.g. iolane.test/pause:1")
    ap.add_argument("--out", required=True)
    ap.add_argument("--file", action="append", default=[], metavar="SRC=DST")
    ap.add_argument("--with-libs", action="append", default=[], metavar="PATH")
    ap.add_argument("--link", action="append", default=[], metavar="DST=TARGET")
    ap.add_argument("--dir", action="append", default=[], metavar="DST")
    ap.add_argument("--entrypoint", nargs="+", default=[])
    ap.add_argument("--cmd", nargs="*", default=[])
    a = ap.parse_args()

    files = {}
    for spec in a.file:
        src, _, dst = spec.partition("=")
        files[dst or src] = os.path.realpath(src)
    for path in a.with_libs:
        for lib in ldd_libs(path):
            files.setdefault(lib, os.path.realpath(lib))
    links = dict(s.split("=", 1) for s in a.link)
    layer = layer_bytes(files, links, a.dir + ["tmp"])
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()

    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": a.entrypoint, "Cmd": a.cmd,
                   "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }, sort_keys=True).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}],
    }, sort_keys=True).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    tag = a.name.rsplit(":", 1)[1] if ":" in a.name.rsplit("/", 1)[-1] else "latest"
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": len(manifest),
                       "annotations": {"io.containerd.image.name": a.name,
                                       "org.opencontainers.image.ref.name": tag}}],
    }, sort_keys=True).encode()
    docker = json.dumps([{
        "Config": "blobs/sha256/" + config_digest[7:],
        "RepoTags": [a.name],
        "Layers": ["blobs/sha256/" + layer_digest[7:]],
    }]).encode()

    with tarfile.open(a.out, "w") as out:
        def put(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            out.addfile(info, io.BytesIO(data))
        put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        put("blobs/sha256/" + layer_digest[7:], layer)
        put("blobs/sha256/" + config_digest[7:], config)
        put("blobs/sha256/" + manifest_digest[7:], manifest)
        put("index.json", index)
        put("manifest.json", docker)
    print("%s %s %d files, layer %d bytes" % (a.name, manifest_digest, len(files), len(layer)),
          file=sys.stderr)


if __name__ == "__main__":
    main()
