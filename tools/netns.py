"""Network namespaces joined by a bridge, for multi-node tests on one machine.

Each namespace is held by a ``sleep`` process started with ``unshare --net --uts`` (its own
network stack and hostname) instead of a named ``/run/netns`` mount: nothing is left in the
host's mount namespace, and the namespace goes away with its last process. A veth pair links
each namespace (``eth0`` inside) to a bridge in the caller's network namespace, which under
bin/test is itself a private namespace holding only ``lo``. Commands run inside a namespace
through ``nsenter --net=/proc/<holder>/ns/net --uts=...`` (``ip netns exec`` would remount
/sys).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

HOLD_TIMEOUT = 10


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass
class Namespace:
    """One node's network namespace: hostname ``name``, ``eth0`` with ``address``."""

    name: str
    address: str
    prefix: int
    holder: subprocess.Popen = field(repr=False)

    @property
    def pid(self):
        return self.holder.pid

    def nsenter(self, *command):
        """``command`` as an argument list that runs inside this namespace."""
        return [
            "nsenter",
            f"--net=/proc/{self.pid}/ns/net",
            f"--uts=/proc/{self.pid}/ns/uts",
            "--",
            *command,
        ]

    def run(self, *command, check=True):
        return subprocess.run(self.nsenter(*command), capture_output=True, text=True, check=check)


def _hold(name):
    """A process that owns a new network + UTS namespace whose hostname is ``name``."""
    holder = subprocess.Popen(
        ["unshare", "--net", "--uts", "sh", "-c", 'hostname "$0" && exec sleep infinity', name],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + HOLD_TIMEOUT
    own = os.readlink("/proc/self/ns/net")
    while True:
        try:
            ready = (
                os.readlink(f"/proc/{holder.pid}/ns/net") != own
                and open(f"/proc/{holder.pid}/comm").read().strip() == "sleep"
            )
        except OSError:
            ready = False
        if ready:
            return holder
        if holder.poll() is not None or time.monotonic() > deadline:
            _release(holder)
            raise RuntimeError(f"cannot create a network namespace for {name}")
        time.sleep(0.02)


def _release(holder):
    if holder.poll() is None:
        holder.send_signal(signal.SIGKILL)
    holder.wait()


def _plug(namespace, bridge, index):
    """veth ``<bridge>-<index>`` on the bridge, its peer as ``eth0`` in ``namespace``."""
    outside, inside = f"{bridge}v{index}", f"{bridge}p{index}"
    ip("link", "add", outside, "type", "veth", "peer", "name", inside)
    ip("link", "set", inside, "netns", str(namespace.pid))
    ip("link", "set", outside, "master", bridge, "up")
    for command in (
        ("link", "set", inside, "name", "eth0"),
        ("addr", "add", f"{namespace.address}/{namespace.prefix}", "dev", "eth0"),
        ("link", "set", "eth0", "up"),
        ("link", "set", "lo", "up"),
    ):
        namespace.run("ip", *command)


@contextlib.contextmanager
def bridged_namespaces(names, bridge="dhsw0", subnet="192.168.231"):
    """Yield one :class:`Namespace` per name, ``<subnet>.11``, ``.12`` ... on ``bridge``
    (which gets ``<subnet>.1``); everything is removed on exit, also after a failure."""
    holders = []
    ip("link", "add", bridge, "type", "bridge")
    try:
        ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        namespaces = []
        for index, name in enumerate(names):
            holder = _hold(name)
            holders.append(holder)
            namespace = Namespace(name, f"{subnet}.{11 + index}", 24, holder)
            _plug(namespace, bridge, index)
            namespaces.append(namespace)
        yield namespaces
    finally:
        for holder in holders:
            _release(holder)
        # The host ends of the veths go with their namespaces; the bridge is ours to delete.
        ip("link", "delete", bridge, check=False)
