"""Throwaway qemu VM nodes: the local stand-in for an EC2 instance with an extra EBS volume.

A node boots the image `bin/build-node-image` built (Debian 12, Salt in /opt/salt, docker.io
debs in a local apt repository) from a per-node qcow2 overlay, with a second sparse raw disk as
its EBS volume (NVMe with serial = volume id without the dash, like a Nitro instance, or
virtio), user-mode networking whose only way in is SSH forwarded from a loopback address
(e.g. the private address the local EC2 endpoint gave the instance), and the key pair's public
key and its hostname passed through qemu fw_cfg (EC2 uses instance metadata for the same).

KVM does not work on these machines: qemu runs with TCG, so everything in the guest is slow.
Everything a node creates lives in its work dir and dies with `destroy()`, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "bin" / "build-node-image"
# The guest reaches the host's 127.0.0.1 at this address (qemu user-mode networking).
HOST_ADDRESS_FROM_GUEST = "10.0.2.2"

SSH_OPTIONS = [
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ConnectTimeout=10",
]


class NodeError(RuntimeError):
    """A node failed to boot, answer or stop; the message says which and shows the console."""


RELEASES = ("bookworm", "trixie")  # Debian 12 (docker.io 20.10), Debian 13 (docker.io 26.1)


def node_image_dir(release: str = "bookworm") -> Path:
    """The built image of `release` for the current inputs; the tests cannot build it (no
    network)."""
    if release not in RELEASES:
        raise ValueError(f"release must be one of {RELEASES}, not {release!r}")
    printed = subprocess.run(
        [str(BUILD_SCRIPT), "--release", release, "--print-dir"],
        check=True,
        capture_output=True,
        text=True,
    )
    image_dir = Path(printed.stdout.strip())
    if not (image_dir / "COMPLETE").is_file():
        raise NodeError(
            f"node image {image_dir} is not built: run bin/build-node-image --release {release}"
            " (needs network) before the e2e tier, e.g. through bin/setup"
        )
    return image_dir


def volume_serial(volume_id: str) -> str:
    """The NVMe serial EC2 Nitro shows for an EBS volume: its id without the dash."""
    return volume_id.replace("-", "")


@dataclass
class Node:
    """One qemu VM. `boot()` starts it and waits for SSH; `destroy()` removes every trace."""

    name: str
    work_dir: Path
    ssh_address: str
    public_key: Path
    private_key: Path
    volume_id: str = "vol-0123456789abcdef0"
    volume_size_gib: int = 4
    disk_bus: str = "nvme"  # or "virtio"
    memory_mib: int = 2048
    cpu: str = "max"
    image_dir: Path | None = None
    release: str = "bookworm"
    ssh_port: int = 22
    ssh_user: str = "root"
    # Extra raw disks: (file, bus, serial) attached after the EBS volume.
    extra_disks: list[tuple[Path, str, str]] = field(default_factory=list)
    # The EBS volume's file, when it outlives the node (a volume that moves to another node);
    # default: ebs.raw in the work dir, gone with it.
    volume_file: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.disk_bus not in ("nvme", "virtio"):
            raise ValueError(f"disk_bus must be 'nvme' or 'virtio', not {self.disk_bus!r}")
        self.work_dir = Path(self.work_dir)
        self.image_dir = Path(self.image_dir) if self.image_dir else node_image_dir(self.release)

    # Files in the work dir.
    @property
    def overlay(self) -> Path:
        return self.work_dir / "root.qcow2"

    @property
    def volume(self) -> Path:
        return Path(self.volume_file) if self.volume_file else self.work_dir / "ebs.raw"

    @property
    def console_log(self) -> Path:
        return self.work_dir / "console.log"

    @property
    def guest_volume_device(self) -> str:
        """The EBS volume's name inside the guest (the root disk is virtio /dev/vda)."""
        return "/dev/nvme0n1" if self.disk_bus == "nvme" else "/dev/vdb"

    def create_disks(self):
        self.work_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                str(self.image_dir / "root.raw"),
                str(self.overlay),
            ],
            check=True,
        )
        if not self.volume.exists():
            # Sparse, like a fresh EBS volume: all zeros, costs no host disk until written.
            with open(self.volume, "wb") as volume:
                volume.truncate(self.volume_size_gib * 1024**3)
        (self.work_dir / "hostname").write_text(self.name)

    def qemu_command(self) -> list[str]:
        hostfwd = f"hostfwd=tcp:{self.ssh_address}:{self.ssh_port}-:22"
        command = [
            "qemu-system-x86_64",
            "-name",
            self.name,
            "-machine",
            "q35",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            self.cpu,
            "-smp",
            "2",
            "-m",
            str(self.memory_mib),
            "-display",
            "none",
            "-no-user-config",
            "-nodefaults",
            "-serial",
            f"file:{self.console_log}",
            "-kernel",
            str(self.image_dir / "vmlinuz"),
            "-initrd",
            str(self.image_dir / "initrd.img"),
            "-append",
            "root=LABEL=root rw console=ttyS0 quiet systemd.show_status=false",
            # Root first, on virtio: it is /dev/vda and the EBS volume never takes its place.
            # cache=unsafe: a throwaway VM's flushes need not reach the host's disk (data
            # still survives guest reboots: qemu keeps running); dpkg's fsyncs cost minutes.
            "-drive",
            f"if=none,id=root,file={self.overlay},format=qcow2,discard=unmap,cache=unsafe",
            "-device",
            "virtio-blk-pci,drive=root",
            "-drive",
            f"if=none,id=ebs,file={self.volume},format=raw,discard=unmap,cache=unsafe",
        ]
        if self.disk_bus == "nvme":
            command += ["-device", f"nvme,drive=ebs,serial={volume_serial(self.volume_id)}"]
        else:
            command += ["-device", f"virtio-blk-pci,drive=ebs,serial={self.volume_id}"]
        for index, (path, bus, serial) in enumerate(self.extra_disks):
            command += ["-drive", f"if=none,id=extra{index},file={path},format=raw"]
            device = "nvme" if bus == "nvme" else "virtio-blk-pci"
            command += ["-device", f"{device},drive=extra{index},serial={serial}"]
        command += [
            "-netdev",
            f"user,id=net0,{hostfwd}",
            "-device",
            "virtio-net-pci,netdev=net0",
            # Key generation (ssh, salt) must not stall on entropy under TCG.
            "-device",
            "virtio-rng-pci",
            "-fw_cfg",
            f"name=opt/dockerhosts/ssh_key,file={self.public_key}",
            "-fw_cfg",
            f"name=opt/dockerhosts/hostname,file={self.work_dir / 'hostname'}",
            # QMP: grow the EBS volume while the guest runs (what EC2's ModifyVolume does).
            "-qmp",
            f"unix:{self.qmp_socket},server=on,wait=off",
        ]
        return command

    @property
    def qmp_socket(self) -> Path:
        return self.work_dir / "qmp.sock"

    def qmp(self, command: str, **arguments):
        """One QMP command to this node's qemu; returns its "return" or raises NodeError."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30)
            conn.connect(str(self.qmp_socket))
            stream = conn.makefile("rw")
            json.loads(stream.readline())  # the greeting
            for request in ({"execute": "qmp_capabilities"}, {"execute": command}):
                if request["execute"] == command and arguments:
                    request["arguments"] = arguments
                stream.write(json.dumps(request) + "\n")
                stream.flush()
                while True:
                    reply = json.loads(stream.readline())
                    if "return" in reply or "error" in reply:
                        break  # skip asynchronous events
                if "error" in reply:
                    raise NodeError(f"node {self.name}: QMP {request['execute']}: {reply['error']}")
        return reply["return"]

    def grow_volume(self, size_gib: int):
        """Grow the EBS volume to size_gib while the guest runs (qemu block_resize): the guest
        sees the new size at once, as after EC2's ModifyVolume."""
        self.qmp("block_resize", device="ebs", size=size_gib * 1024**3)
        self.volume_size_gib = size_gib

    def boot(self, timeout: float = 240):
        """Start qemu and wait until SSH answers."""
        self.start()
        self.wait_for_ssh(timeout)

    def start(self):
        """Start qemu without waiting (salt-cloud's own wait-for-SSH then does the waiting)."""
        if not self.overlay.exists():
            self.create_disks()
        log = open(self.work_dir / "qemu.log", "ab")
        with log:
            # A new session: Ctrl-C in a terminal reaches our cleanup, not qemu directly.
            self.process = subprocess.Popen(
                self.qemu_command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        (self.work_dir / "qemu.pid").write_text(str(self.process.pid))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def console_tail(self, lines: int = 30) -> str:
        texts = []
        for path in (self.work_dir / "qemu.log", self.console_log):
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                texts.append(f"--- {path.name}:\n" + "\n".join(tail))
        return "\n".join(texts)

    def _ssh_banner(self) -> bool:
        try:
            with socket.create_connection((self.ssh_address, self.ssh_port), timeout=5) as conn:
                conn.settimeout(5)
                return conn.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def wait_for_ssh(self, timeout: float = 240):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise NodeError(f"node {self.name}: qemu exited\n{self.console_tail()}")
            if self._ssh_banner() and self.ssh("true", check=False, timeout=30).returncode == 0:
                return
            time.sleep(1)
        raise NodeError(f"node {self.name}: no SSH after {timeout:.0f} s\n{self.console_tail()}")

    def ssh(self, command: str, check: bool = True, timeout: float = 600, user: str | None = None):
        """Run a shell command in the guest as root (or `user`); returns CompletedProcess."""
        argv = [
            "ssh",
            *SSH_OPTIONS,
            "-i",
            str(self.private_key),
            "-p",
            str(self.ssh_port),
            f"{user or self.ssh_user}@{self.ssh_address}",
            command,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise NodeError(
                f"node {self.name}: `{command}` exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def boot_id(self) -> str:
        return self.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()

    def reboot(self, timeout: float = 240):
        """Reboot the guest cleanly (systemd shuts down, like an EC2 reboot) and wait for SSH."""
        before = self.boot_id()
        self.ssh("systemctl reboot", check=False, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(3)
            if not self.running():
                raise NodeError(f"node {self.name}: qemu exited on reboot\n{self.console_tail()}")
            if not self._ssh_banner():
                continue
            result = self.ssh("cat /proc/sys/kernel/random/boot_id", check=False, timeout=30)
            if result.returncode == 0 and result.stdout.strip() != before:
                return
        raise NodeError(f"node {self.name}: did not come back from reboot\n{self.console_tail()}")

    def stop(self, timeout: float = 20):
        """Stop qemu by its PID: SIGTERM (qemu exits at once), then SIGKILL."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        self.process = None

    def power_off(self, timeout: float = 120):
        """A clean shutdown (what EC2's StopInstances does): systemd stops everything and
        unmounts, then qemu exits; killed if it has not after ``timeout`` s."""
        self.ssh("systemctl poweroff", check=False, timeout=30)
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(1)
        self.stop()

    def destroy(self):
        """Stop qemu and delete the overlay, the volume (unless it is a ``volume_file`` of its
        own) and every file in the work dir."""
        try:
            self.stop()
        finally:
            subprocess.run(["rm", "-rf", "--", str(self.work_dir)], check=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.destroy()

    def describe(self) -> str:
        return " ".join(shlex.quote(part) for part in self.qemu_command())


def make_filesystem_disk(path: Path, files: dict[str, str], size_mib: int = 64, label="data"):
    """A raw disk holding an ext4 filesystem with `files` in it (built with mkfs -d, no mount)."""
    source = path.with_suffix(".content")
    source.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (source / name).write_text(text)
    with open(path, "wb") as disk:
        disk.truncate(size_mib * 1024**2)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(source), str(path)],
        check=True,
    )
    subprocess.run(["rm", "-rf", "--", str(source)], check=True)
    return path
