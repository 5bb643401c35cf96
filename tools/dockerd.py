"""A private dockerd for the state tests: its own socket, bridge, data/exec roots, address
pool and containerd namespace, no iptables; stopped and cleaned up (mounts, bridges, dirs)
on exit, even when a test fails.

Several can run at once with their own ``bridge``/``bridge_cidr``/``address_pool``/
``namespace``. ``etc_overlays`` ({"/etc/hosts": file, "/etc/docker": dir}) starts dockerd in
its own mount namespace where those paths are bind mounts of the given ones: a registry name
that resolves to a test address, a test CA under ``certs.d/<host:port>/ca.crt``, without
touching the host's files. ``env`` adds environment variables (e.g. AWS credentials for the
awslogs log driver)."""

import contextlib
import json
import os
import shutil
import socket as socket_module
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tools import processes

BRIDGE = "dh-test0"
BRIDGE_CIDR = "10.213.0.1/24"
ADDRESS_POOL = "base=10.214.0.0/16,size=24"
START_TIMEOUT = 30


@dataclass
class Dockerd:
    socket: Path
    pid: int
    workdir: Path
    # () -> None: start dockerd again with the same options once the last one has ended (for
    # a test that stops or kills it); running_dockerd stops whichever runs at the end.
    start_again: object = None

    @property
    def url(self):
        return f"unix://{self.socket}"

    def cli(self, *args, check=True):
        """Run the docker CLI against this daemon; returns stdout."""
        proc = subprocess.run(
            ["docker", "-H", self.url, *args], capture_output=True, text=True, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

    def inspect(self, name):
        return json.loads(self.cli("inspect", name))[0]

    def container_names(self):
        return sorted(self.cli("ps", "-a", "--format", "{{.Names}}").split())


def _bridges():
    # The kernel's view of this network namespace (/sys/class/net may show the host's).
    return {name for _, name in socket_module.if_nameindex()}


def _unmount_under(*roots):
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted(points, key=len, reverse=True):
        if any(point.startswith(str(root)) for root in roots):
            subprocess.run(["umount", "-l", point], check=False)


def _running(pid):
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _forget_dead_containerd(exec_root):
    """A killed dockerd's containerd dies with it, but dockerd, started again, waits for the
    pid in containerd's pid file while that is a zombie; this machine's PID 1 reaps orphans
    late (systemd at once): forget a pid that is not running."""
    pidfile = exec_root / "containerd" / "containerd.pid"
    if pidfile.exists() and not _running(pidfile.read_text().strip() or "0"):
        pidfile.unlink()


def _kill_shims(exec_root):
    """Container shims (and their containers) left by a dockerd that did not stop cleanly."""
    address = f"{exec_root}/containerd/containerd.sock"
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and address.encode() in argv:
            subprocess.run(["pkill", "-KILL", "-P", entry.name], check=False)
            subprocess.run(["kill", "-KILL", entry.name], check=False)


def _in_mount_namespace(command, etc_overlays):
    """``command`` run by a shell in a new mount namespace with ``etc_overlays`` bound."""
    script = 'while [ "$1" != -- ]; do mount --bind "$1" "$2"; shift 2; done; shift; exec "$@"'
    binds = [str(part) for target, source in etc_overlays.items() for part in (source, target)]
    unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script, "sh"]
    return [*unshare, *binds, "--", *command]


@contextlib.contextmanager
def running_dockerd(
    base_dir,
    *,
    bridge=BRIDGE,
    bridge_cidr=BRIDGE_CIDR,
    address_pool=ADDRESS_POOL,
    namespace="dh-test",
    env=None,
    etc_overlays=None,
):
    """Start dockerd under ``base_dir`` (data root) with a short exec root in /tmp."""
    base_dir = Path(base_dir)
    data_root = base_dir / "data"
    data_root.mkdir(parents=True)
    # Unix socket paths are limited to 108 bytes: keep sockets and exec root short.
    workdir = Path(tempfile.mkdtemp(prefix="dh-dockerd-", dir="/tmp"))
    socket = workdir / "docker.sock"
    bridges_before = _bridges()
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    process = None
    try:
        subprocess.run(["ip", "addr", "add", bridge_cidr, "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        log = open(base_dir / "dockerd.log", "wb")
        command = [
            "dockerd",
            "--host",
            f"unix://{socket}",
            "--data-root",
            str(data_root),
            "--exec-root",
            str(workdir / "exec"),
            "--pidfile",
            str(workdir / "docker.pid"),
            "--bridge",
            bridge,
            "--iptables=false",
            "--ip-masq=false",
            "--default-address-pool",
            address_pool,
            "--containerd-namespace",
            namespace,
            "--containerd-plugins-namespace",
            f"{namespace}-plugins",
            "--shutdown-timeout",
            "2",
        ]
        if etc_overlays:
            command = _in_mount_namespace(command, etc_overlays)
        daemon = Dockerd(socket=socket, pid=0, workdir=workdir)

        def start():
            nonlocal process
            if process is not None:
                process.wait(timeout=START_TIMEOUT)
                _forget_dead_containerd(workdir / "exec")
            process = subprocess.Popen(
                command,
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            daemon.pid = process.pid
            deadline = time.monotonic() + START_TIMEOUT
            # The server's version, not the client's (a killed dockerd leaves its socket file).
            while not daemon.cli("version", "--format", "{{.Server.Version}}", check=False).strip():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"dockerd did not start: {(base_dir / 'dockerd.log').read_text()[-2000:]}"
                    )
                time.sleep(0.2)

        daemon.start_again = start
        start()
        yield daemon
    finally:
        if process is not None:
            processes.stop(process, 30, group=True)
            log.close()
        _kill_shims(workdir / "exec")
        _unmount_under(data_root, workdir)
        # User-defined networks leave br-* bridges behind once dockerd is gone.
        for leftover in _bridges() - bridges_before:
            subprocess.run(["ip", "link", "delete", leftover], check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(data_root, ignore_errors=True)
