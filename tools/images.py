"""Container images without a registry, built from the host's static busybox:

- ``import_busybox``: a root filesystem ``docker import``ed under any tags (e.g. busybox:latest,
  postgres:16) into a test dockerd;
- ``busybox_image_tar``: the same root filesystem as a one-layer image in ``docker save``
  format, which a node's highstate loads from salt:// (the VM nodes have no registry);
- ``image_tar``: any root filesystem tar as such an image (bin/build-postgres-image's
  PostgreSQL from Debian packages).
"""

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

BUSYBOX = "/usr/bin/busybox"
DIRECTORIES = ("bin", "data", "dev", "etc", "proc", "run", "sys", "tmp", "var")
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"


def _add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def busybox_rootfs_tar():
    """A tar (bytes) of a root filesystem: /bin/busybox, its applet links, /etc/passwd."""
    busybox = shutil.which("busybox") or BUSYBOX
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in DIRECTORIES:
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        _add_bytes(tar, "etc/passwd", PASSWD)
    return buffer.getvalue()


def import_busybox(dockerd, *tags):
    """Import the busybox root filesystem into ``dockerd`` under each of ``tags``."""
    rootfs = busybox_rootfs_tar()
    for tag in tags:
        subprocess.run(
            ["docker", "-H", dockerd.url, "import", "-", tag],
            input=rootfs,
            capture_output=True,
            check=True,
        )


def busybox_image_tar(path: Path, repo_tag: str):
    """Write the busybox image, tagged ``repo_tag``, in ``docker save`` format to ``path``."""
    return image_tar(path, repo_tag, busybox_rootfs_tar(), {"Cmd": ["sh"], "Env": ["PATH=/bin"]})


# The PostgreSQL image bin/build-postgres-image makes from Debian's postgresql-15.
POSTGRES_CONFIG = {
    "Entrypoint": ["/usr/local/bin/docker-entrypoint"],
    "Env": [
        "PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/bin:/bin",
        "PGDATA=/var/lib/postgresql/data",
        "LANG=C.UTF-8",
    ],
    "Volumes": {"/var/lib/postgresql": {}},
    "ExposedPorts": {"5432/tcp": {}},
    "StopSignal": "SIGINT",  # PostgreSQL's fast shutdown
    # Durations in nanoseconds (Docker's image config).
    "Healthcheck": {
        "Test": ["CMD-SHELL", 'pg_isready -q -U "${POSTGRES_USER:-postgres}" -d postgres'],
        "Interval": 2 * 10**9,
        "Timeout": 10 * 10**9,
        "Retries": 60,
    },
}


def image_tar(path: Path, repo_tag: str, layer: bytes, config: dict):
    """Write a one-layer image (``layer``: a root filesystem tar) in ``docker save`` format."""
    layer_id = hashlib.sha256(layer).hexdigest()
    document = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        }
    ).encode()
    config_name = f"{hashlib.sha256(document).hexdigest()}.json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [repo_tag], "Layers": [f"{layer_id}/layer.tar"]}]
    ).encode()
    with tarfile.open(path, "w") as image:
        _add_bytes(image, f"{layer_id}/layer.tar", layer)
        _add_bytes(image, config_name, document)
        _add_bytes(image, "manifest.json", manifest)
    return path


if __name__ == "__main__":  # bin/build-postgres-image: postgres ROOTFS_TAR IMAGE_TAR
    _, rootfs, target = sys.argv[1:]
    image_tar(Path(target), "e2e/postgres:15", Path(rootfs).read_bytes(), POSTGRES_CONFIG)
