"""A private OpenSSH server for deploy tests: own config, host key, port and pid file.

It listens only on the loopback addresses it is given (the private addresses the local
EC2 endpoint hands out in its 127.0.0.0/8 subnet) and lets in one client key, as root.
"""

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tools import processes
from tools.net import free_port

SSHD = "/usr/sbin/sshd"
# sshd's compiled-in privilege separation directory; the distro's service creates it at
# boot, so on a machine where sshd is not running as a service it may be missing.
PRIVSEP_DIR = Path("/run/sshd")


def generate_key(path):
    """An ed25519 key pair at path and path.pub (no passphrase)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "salt-cloud-test", "-f", str(path)],
        check=True,
    )
    return Path(path), Path(f"{path}.pub")


@dataclass
class Sshd:
    process: subprocess.Popen
    port: int
    addresses: list
    work_dir: Path

    def stop(self):
        processes.stop(self.process, 10)

    def log(self):
        return (self.work_dir / "sshd.log").read_text(errors="replace")


def start(work_dir, addresses, authorized_key, port=None):
    """Start sshd on addresses:port letting in authorized_key (a public key file) as root."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    host_key, _ = generate_key(work_dir / "ssh_host_ed25519_key")
    authorized = work_dir / "authorized_keys"
    authorized.write_text(Path(authorized_key).read_text())
    authorized.chmod(0o600)
    listen = "\n".join(f"ListenAddress {address}:{port}" for address in addresses)
    config = work_dir / "sshd_config"
    config.write_text(
        f"""{listen}
HostKey {host_key}
PidFile {work_dir / "sshd.pid"}
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""
    )
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    subprocess.run([SSHD, "-t", "-f", str(config)], check=True)
    log = open(work_dir / "sshd.log", "ab")
    with log:
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/bin")},
        )
    server = Sshd(process=process, port=port, addresses=list(addresses), work_dir=work_dir)
    try:
        _wait_until_listening(server)
    except BaseException:  # not listening, or Ctrl-C/SIGTERM meanwhile: no sshd is left
        server.stop()
        raise
    return server


def _wait_until_listening(server, timeout=10):
    address = server.addresses[0]
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"sshd exited with {server.process.returncode}:\n{server.log()}")
        try:
            with socket.create_connection((address, server.port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not listen on {address}:{server.port}") from None
            time.sleep(0.05)
