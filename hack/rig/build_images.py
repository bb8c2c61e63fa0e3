"""Build the rig's two container images as OCI image-layout tarballs, from Debian's busybox-static.

No registry is reachable, so rig-up imports these with ``ctr -n k8s.io images import``:
- busybox (``docker.io/library/busybox:dracpu-rig``): /bin/busybox and a link per applet;
- pause (``registry.k8s.io/pause:dracpu-rig``): the same layer, entrypoint a shell that sleeps
  and exits on SIGTERM, standing in for the real pause binary.

Output is deterministic (fixed mtimes, sorted entries). Usage: build_images.py OUT_DIR
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
IMAGES = {
    "busybox": ("docker.io/library/busybox:dracpu-rig", ["/bin/sh"]),
    "pause": (
        "registry.k8s.io/pause:dracpu-rig",
        ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"],
    ),
}


def _layer() -> bytes:
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "dev", "etc", "proc", "root", "sys", "tmp", "var", "run"):
            add_dir(d, 0o1777 if d == "tmp" else 0o755)
        add_file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for applet in sorted(set(applets) - {"busybox"}):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            info.mode = 0o777
            tar.addfile(info)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        add_file("etc/group", b"root:x:0:\n")
    return buf.getvalue()


def _blob(blobs: dict[str, bytes], data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}


def build(out_dir: Path) -> list[Path]:
    """Write one ``<name>.tar`` per image into ``out_dir`` and return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    layer_tar = _layer()
    layer_gz = gzip.compress(layer_tar, mtime=0)
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    written = []
    for name, (ref, cmd) in IMAGES.items():
        blobs: dict[str, bytes] = {}
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        cfg = _blob(blobs, json.dumps(config, sort_keys=True).encode())
        lay = _blob(blobs, layer_gz)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **lay}],
        }
        man = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **man,
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
                    },
                }
            ],
        }
        path = out_dir / f"{name}.tar"
        with tarfile.open(path, "w") as tar:
            files = {
                "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
                "index.json": json.dumps(index, sort_keys=True).encode(),
            }
            for digest, data in blobs.items():
                files[f"blobs/sha256/{digest.split(':', 1)[1]}"] = data
            for d in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            for fname, data in sorted(files.items()):
                info = tarfile.TarInfo(fname)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for p in build(Path(sys.argv[1])):
        print(p)
