"""A salt-master and salt-minions from this checkout, as plain processes on 127.0.0.1, for the
container tests and bench/converge_scale.py: the master serves the repository's salt/ tree
and a given pillar directory; each minion is pre-accepted and manages its own dockerd
(``docker.url``). Everything lives under one short directory in /tmp (Unix socket paths are
limited) and is stopped by PID and removed on exit.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tools import processes
from tools.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
START_TIMEOUT = 60


@dataclass
class SaltNodes:
    """A running master and minions; ``salt()`` runs the ``salt`` CLI on the master."""

    root: Path
    minions: list
    processes: dict = field(default_factory=dict)

    @property
    def master_config_dir(self):
        return self.root / "master"

    def minion_dir(self, minion_id):
        return self.root / "minions" / minion_id

    def minion_log(self, minion_id):
        return self.minion_dir(minion_id) / "minion.log"

    def salt(self, target, function, *args, tgt_type=None, batch=None, timeout=300, static=True):
        """Run ``salt`` from the master; returns (returncode, parsed JSON or None, output);
        with ``batch``, the JSON is not parsed (one document per return). ``static=False``
        runs the command as an operator types it, one job: for a single minion's JSON."""
        command = [str(BIN / "salt"), "-c", str(self.master_config_dir), "--out=json"]
        # --static gathers all returns into one document; batches then say nothing of their
        # progress ("Executing run on [...]"). It also makes the CLI ping the target first
        # (Salt runs it as one batch of 100%): two jobs per command.
        command += ["--static"] if static and not batch else []
        command.append(f"--timeout={timeout}")
        if tgt_type:
            command.append(f"--{tgt_type}")
        if batch:
            command += ["-b", str(batch)]
        proc = subprocess.run(
            [*command, target, function, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout + 60,
        )
        try:
            data = json.loads(proc.stdout) if proc.stdout.strip() else None
        except json.JSONDecodeError:
            data = None
        return proc.returncode, data, proc.stdout + proc.stderr

    def apply(self, minion_id, *args, timeout=300, static=True):
        """``state.apply`` on one minion: (returncode, {state id: result}, output)."""
        code, data, output = self.salt(
            minion_id, "state.apply", *args, timeout=timeout, static=static
        )
        states = (data or {}).get(minion_id)
        return code, states if isinstance(states, dict) else None, output


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))


def _master_config(root, pillar_root, ports, extra):
    return {
        "root_dir": str(root / "master"),
        "pki_dir": str(root / "master" / "pki"),
        "cachedir": str(root / "master" / "cache"),
        "sock_dir": str(root / "master" / "sock"),
        "log_file": str(root / "master" / "master.log"),
        "pidfile": str(root / "master" / "master.pid"),
        "interface": "127.0.0.1",
        "publish_port": ports[0],
        "ret_port": ports[1],
        "user": "root",
        "file_roots": {"base": [str(REPO_ROOT / "salt")]},
        "pillar_roots": {"base": [str(pillar_root)]},
        "worker_threads": 2,
        **extra,
    }


def _minion_config(root, minion_id, ports, extra):
    home = root / "minions" / minion_id
    return {
        "id": minion_id,
        "root_dir": str(home),
        "pki_dir": str(home / "pki"),
        "cachedir": str(home / "cache"),
        "sock_dir": str(home / "sock"),
        "log_file": str(home / "minion.log"),
        "pidfile": str(home / "minion.pid"),
        "master": "127.0.0.1",
        "master_port": ports[1],
        "publish_port": ports[0],
        "user": "root",
        # Retry the master every second while it starts (default: 10 s).
        "acceptance_wait_time": 1,
        "random_reauth_delay": 0,
        **extra,
    }


def rsa_key_pair(bits=2048):
    """A new RSA key pair as Salt keeps a minion's: (private PEM, public PEM), bytes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def _accept_key(root, minion_id):
    """The minion's key pair (as salt-key --gen-keys writes it), pre-accepted on the master."""
    pki = root / "minions" / minion_id / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    private, public = rsa_key_pair()
    (pki / "minion.pem").write_bytes(private)
    (pki / "minion.pem").chmod(0o400)
    (pki / "minion.pub").write_bytes(public)
    accepted = root / "master" / "pki" / "minions"
    accepted.mkdir(parents=True, exist_ok=True)
    shutil.copy(pki / "minion.pub", accepted / minion_id)


def _start(nodes, name, program, config_dir):
    log = open(nodes.root / f"{name}.out", "wb")  # closed in _stop
    process = subprocess.Popen(
        [str(BIN / program), "-c", str(config_dir), "--log-level=quiet"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    nodes.processes[name] = (process, log)


def _wait_for_port(port, process):
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"salt-master did not listen on {port}")
        time.sleep(0.2)


def _wait_for_minions(nodes):
    deadline = time.monotonic() + START_TIMEOUT
    # A minion has authenticated once it has cached the master's key; a ping (one CLI run)
    # then confirms it listens.
    for minion_id in nodes.minions:
        while not (nodes.minion_dir(minion_id) / "pki" / "minion_master.pub").exists():
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    while True:
        _, data, _ = nodes.salt("*", "test.ping", timeout=10)
        if data and all(data.get(minion) is True for minion in nodes.minions):
            return
        if time.monotonic() > deadline:
            logs = {
                name: (nodes.root / f"{name}.out").read_text()[-800:] for name in nodes.processes
            }
            raise RuntimeError(f"minions did not answer: {data}; {logs}")
        time.sleep(0.5)


def _stop(nodes):
    for process, _ in nodes.processes.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process, log in nodes.processes.values():
        if process.poll() is None:
            # salt-master takes ~10 s to stop its workers on SIGTERM; nothing of it is kept.
            processes.wait_or_kill(process, 3, group=True)
        log.close()


@contextlib.contextmanager
def running_salt(pillar_root, minions, master_extra=None):
    """A master serving salt/ and ``pillar_root``; ``minions``: {id: extra minion config}."""
    root = Path(tempfile.mkdtemp(prefix="dhs-", dir="/tmp"))
    nodes = SaltNodes(root=root, minions=list(minions))
    try:
        ports = (free_port(), free_port())
        _write(
            root / "master" / "master", _master_config(root, pillar_root, ports, master_extra or {})
        )
        for minion_id, extra in minions.items():
            _accept_key(root, minion_id)
            _write(
                root / "minions" / minion_id / "minion",
                _minion_config(root, minion_id, ports, extra),
            )
        _start(nodes, "master", "salt-master", root / "master")
        _wait_for_port(ports[1], nodes.processes["master"][0])
        for minion_id in minions:
            _start(nodes, minion_id, "salt-minion", root / "minions" / minion_id)
        _wait_for_minions(nodes)
        yield nodes
    finally:
        _stop(nodes)
        shutil.rmtree(root, ignore_errors=True)
