"""Docker engines that can form a swarm on one machine: one dockerd per network namespace
(tools/netns.py), the namespaces joined by a bridge, each engine with its own everything.

What each engine needs so that several run side by side (measured, see
/work/shared/notes/facts.md "Swarm on one machine"): started with ``nsenter`` into its
namespace and hostname; ``--iptables=true --bridge=none`` (swarm's overlay and
docker_gwbridge need iptables, no docker0); its own data root, exec root, socket, pidfile,
containerd namespaces and cgroup parent; a daemon.json naming its own
``deprecated-key-path`` (else every engine reads /etc/docker/key.json and they all get the
same engine id). /usr/sbin/dockerd with Debian's /usr/bin/docker CLI.

Cleanup on exit, also after a failure: dockerd stopped (SIGTERM, then SIGKILL), every
process left in the engines' cgroups (containers) and every containerd shim that served
them killed by PID, mounts under the data/exec roots unmounted, cgroups and directories
removed, then the namespaces and the bridge (tools/netns.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tools import images
from tools.netns import Namespace, bridged_namespaces

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"
START_TIMEOUT = 30
# A swarm engine takes ~12 s to stop gracefully; a test's engine need not: its containers
# are killed first, then dockerd gets a few seconds before SIGKILL.
STOP_TIMEOUT = 5
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class SwarmNode:
    """One engine: its hostname, namespace and address, socket, and where it keeps things."""

    name: str
    namespace: Namespace
    base_dir: Path
    exec_root: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def address(self):
        return self.namespace.address

    @property
    def socket(self):
        return self.exec_root / "docker.sock"

    @property
    def url(self):
        return f"unix://{self.socket}"

    @property
    def cgroup_parent(self):
        # Relative: under dockerd's own cgroup, i.e. inside the test's memory limits.
        return self.exec_root.name

    def cli(self, *args, check=True, input=None):
        """Run the docker CLI against this engine; returns stdout."""
        proc = subprocess.run(
            [DOCKER, "-H", self.url, *args],
            capture_output=True,
            text=True,
            check=False,
            input=input,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} on {self.name}: {proc.stderr}")
        return proc.stdout

    def json(self, *args):
        return json.loads(self.cli(*args))

    def info(self):
        return self.json("info", "--format", "{{json .}}")

    def swarm_state(self):
        return self.info()["Swarm"]["LocalNodeState"]


def _write_daemon_json(node):
    config = {
        # Own engine identity: the default /etc/docker/key.json would be shared by all.
        "deprecated-key-path": str(node.base_dir / "key.json"),
        "log-level": "warn",
    }
    path = node.base_dir / "daemon.json"
    path.write_text(json.dumps(config))
    return path


def _dockerd_command(node):
    exec_root = node.exec_root / "exec"
    return node.namespace.nsenter(
        DOCKERD,
        f"--config-file={_write_daemon_json(node)}",
        f"--host={node.url}",
        f"--data-root={node.base_dir / 'data'}",
        f"--exec-root={exec_root}",
        f"--pidfile={node.exec_root / 'docker.pid'}",
        "--iptables=true",
        "--bridge=none",
        f"--containerd-namespace=dhsw-{node.name}",
        f"--containerd-plugins-namespace=dhsw-{node.name}-plugins",
        f"--cgroup-parent={node.cgroup_parent}",
        "--shutdown-timeout=2",
    )


def _start(node):
    node.base_dir.mkdir(parents=True, exist_ok=True)
    log = open(node.base_dir / "dockerd.log", "wb")
    node.process = subprocess.Popen(
        _dockerd_command(node), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()


def _wait_ready(node):
    deadline = time.monotonic() + START_TIMEOUT
    while not node.socket.exists() or node.cli("version", check=False) == "":
        if node.process.poll() is not None or time.monotonic() > deadline:
            tail = (node.base_dir / "dockerd.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"dockerd of {node.name} did not start: {tail}")
        time.sleep(0.1)


def _stop(node):
    process = node.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _own_cgroups():
    """{controller hierarchy dir: this process's cgroup path in it} (cgroup v1 and v2)."""
    found = {}
    with open("/proc/self/cgroup", encoding="utf-8") as cgroups:
        for line in cgroups:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else ["unified", ""]:
                name = controller.removeprefix("name=")
                directory = CGROUP_ROOT / name
                if name and directory.is_dir():
                    found[directory] = path.lstrip("/")
    if (CGROUP_ROOT / "cgroup.procs").exists():  # pure cgroup v2
        found[CGROUP_ROOT] = found.get(CGROUP_ROOT, "")
    return found


def _node_cgroups(node):
    return [
        hierarchy / own / node.cgroup_parent
        for hierarchy, own in _own_cgroups().items()
        if (hierarchy / own / node.cgroup_parent).is_dir()
    ]


def _kill_pids(pids):
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pids_in(directory):
    # Containers come and go while this runs: a vanished cgroup is not an error.
    pids = set()
    for parent, _, files in os.walk(directory):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids.update(int(pid) for pid in Path(parent, "cgroup.procs").read_text().split())
    return pids


def _remove_cgroups(node):
    """Kill what is left in the engine's cgroups (containers), then remove the cgroups."""
    directories = _node_cgroups(node)
    for directory in directories:
        _kill_pids(_pids_in(directory))
    for directory in directories:
        for parent, _, _ in sorted(os.walk(directory), key=lambda e: len(e[0]), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(parent)


def _kill_shims(node):
    """containerd shims started for this engine's containerd (its socket is in their args)."""
    marker = str(node.exec_root).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    _kill_pids(pid for pid in pids if pid != os.getpid())


def _unmount_under(*roots):
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted(points, key=len, reverse=True):
        if any(point == str(root) or point.startswith(f"{root}/") for root in roots):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _kill_containers(node):
    _kill_pids({pid for directory in _node_cgroups(node) for pid in _pids_in(directory)})


def _cleanup(node):
    """Every step runs even when an earlier one fails; the first failure is raised last."""
    failures = []
    steps = (
        _kill_containers,
        _stop,
        _kill_shims,
        _remove_cgroups,
        lambda n: _unmount_under(n.base_dir, n.exec_root),
        lambda n: shutil.rmtree(n.exec_root, ignore_errors=True),
        lambda n: shutil.rmtree(n.base_dir / "data", ignore_errors=True),
    )
    for step in steps:
        try:
            step(node)
        except Exception as error:  # keep cleaning up
            failures.append(error)
    if failures:
        raise failures[0]


@contextlib.contextmanager
def swarm_nodes(base_dir, names, bridge="dhsw0", subnet="192.168.231"):
    """Yield a started :class:`SwarmNode` per name; all removed on exit, even on failure."""
    base_dir = Path(base_dir)
    nodes = []
    with bridged_namespaces(names, bridge=bridge, subnet=subnet) as namespaces:
        try:
            for namespace in namespaces:
                # Unix socket paths are limited to 108 bytes: keep the exec root short.
                exec_root = Path(tempfile.mkdtemp(prefix="dhsw-", dir="/tmp"))
                nodes.append(
                    SwarmNode(namespace.name, namespace, base_dir / namespace.name, exec_root)
                )
            for node in nodes:
                _start(node)
            for node in nodes:
                _wait_ready(node)
            yield nodes
        finally:
            with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
                list(pool.map(_cleanup, nodes))


def _without(rootfs, members):
    if not members:
        return rootfs
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(rootfs)) as source,
        tarfile.open(fileobj=out, mode="w") as tar,
    ):
        for member in source.getmembers():
            if member.name not in members:
                tar.addfile(member, source.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def import_image(nodes, *tags, leave_out=()):
    """``docker import`` the busybox root filesystem under ``tags`` into every node (no
    registry); ``leave_out``: applets to omit (an image whose command is missing)."""
    rootfs = _without(images.busybox_rootfs_tar(), {f"bin/{name}" for name in leave_out})
    for node in nodes:
        for tag in tags:
            subprocess.run(
                [DOCKER, "-H", node.url, "import", "-", tag],
                input=rootfs,
                capture_output=True,
                check=True,
            )


def stop_engine(node):
    """Stop one engine (as a crash or a reboot would take it away); ``start_engine`` brings
    it back with its swarm state (its data root is kept)."""
    _stop(node)


def start_engine(node):
    _start(node)
    _wait_ready(node)


def _read_head(connection):
    """A request's head (request line + headers), or what came before the connection closed."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = connection.recv(65536)
        if not chunk:
            break
        head += chunk
    return head


def _pipe(source, target):
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            target.sendall(chunk)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def _serve_one(client, upstream_path, fails, status, message):
    with client:
        head = _read_head(client)
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = request_line.partition(" ")
        path = rest.rpartition(" ")[0]
        if fails(method, path):
            body = json.dumps({"message": message}).encode()
            client.sendall(
                f"HTTP/1.1 {status} Fault\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            return
        # One request per connection: the client opens a new one for its next request.
        header, gap, body_start = head.partition(b"\r\n\r\n")
        lines = [h for h in header.split(b"\r\n") if not h.lower().startswith(b"connection:")]
        head = b"\r\n".join([*lines, b"Connection: close"]) + gap + body_start
        with socket.socket(socket.AF_UNIX) as upstream:
            upstream.connect(upstream_path)
            upstream.sendall(head)
            feeder = threading.Thread(target=_pipe, args=(client, upstream), daemon=True)
            feeder.start()
            _pipe(upstream, client)


@contextlib.contextmanager
def failing_requests(node, fails, status=500, message="injected fault"):
    """Between the engine's socket path and dockerd, answer the requests for which
    ``fails(method, path)`` is true with HTTP ``status`` and Docker's error body; pass the others
    through. The engine's socket is moved aside meanwhile and put back on exit."""
    real = node.socket.with_name("docker.sock.real")
    os.rename(node.socket, real)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(node.socket))
    listener.listen(16)
    listener.settimeout(0.2)  # the acceptor sees ``stop`` within that
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            threading.Thread(
                target=_serve_one, args=(client, str(real), fails, status, message), daemon=True
            ).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield
    finally:
        stop.set()
        acceptor.join(timeout=5)
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(node.socket)
        os.rename(real, node.socket)
