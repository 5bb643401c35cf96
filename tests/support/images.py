"""Container images without a registry: a busybox-static root filesystem, `docker import`ed
under whatever tags the pillar names (e.g. busybox:latest, postgres:16)."""

import io
import shutil
import subprocess
import tarfile

BUSYBOX = "/usr/bin/busybox"


def busybox_rootfs_tar():
    """A tar (bytes) of a root filesystem: /bin/busybox, its applet links, /tmp, /etc."""
    busybox = shutil.which("busybox") or BUSYBOX
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "etc", "tmp", "var", "proc", "sys", "dev"):
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
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
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
