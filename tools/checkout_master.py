"""A salt-master run exactly as the README says — `bin/salt-master` in a fresh copy of this
repository, with the repository's own `master` file — plus salt-minions on this host that
talk to it. Used by the master tier (tests/master/).

The copy holds the files git would check out (tracked and not ignored), as they are in the
working tree: a fresh clone of what is being tested. Keep the copy's path short: the master's
sockets live under its `.salt/` and Unix socket paths are limited to ~107 bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from salt.config import DEFAULT_MASTER_OPTS

from tools import salt_repo

NODES = salt_repo.load_module("utils", "dockerhosts_nodes")

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
# The ports a master started from the repository's `master` file listens on (Salt's defaults).
RET_PORT = 4506


def node_record(pki_dir, name):
    """The master's record of node ``name`` (salt/_utils/dockerhosts_nodes.py, localfs under
    ``pki_dir``), read through the product's own module; None when there is none."""
    opts = {**DEFAULT_MASTER_OPTS, "pki_dir": str(pki_dir), "cachedir": str(pki_dir)}
    return NODES.get(opts, name)


def checkout_files(repo_root=REPO_ROOT):
    """Paths (relative) git would put in a clone, taken from the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo_root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return [Path(os.fsdecode(path)) for path in listed if path]


def copy_checkout(dest, repo_root=REPO_ROOT):
    """A fresh clone of the working tree at `dest` (symlinks such as .venv are not copied)."""
    dest = Path(dest)
    for relative in checkout_files(repo_root):
        source = repo_root / relative
        if not source.is_file() or source.is_symlink():
            continue  # deleted in the working tree, or a link (the venvs)
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / relative)
    return dest


def _wait_for(predicate, timeout, what, process=None, log=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            detail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}\n{detail}")
        time.sleep(0.2)


@dataclass
class CheckoutMaster:
    """`bin/salt-master` of `root` (a copy of the repository), Salt from this test's venv."""

    root: Path
    env: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def log_path(self):
        return self.root / "salt-master.out"

    def start(self):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.root / "bin" / "salt-master"), "-l", "warning"],
                cwd=self.root,
                env={**self.env, "SALT_BIN_DIR": str(BIN_DIR)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pull = self.root / ".salt/var/run/salt/master/master_event_pull.ipc"
        try:
            _wait_for(
                pull.exists,
                60,
                "salt-master did not start",
                process=self.process,
                log=self.log_path,
            )
        except BaseException:  # a failed start or Ctrl-C/SIGTERM meanwhile: no daemon is left
            self.stop()
            raise
        return self

    def run(self, program, *args, timeout=300):
        """A Salt CLI from the root, configured by the repository's Saltfile only."""
        result = salt_repo.run_cli(program, args, cwd=self.root, env=self.env, timeout=timeout)
        with open(self.root / "commands.log", "a") as log:
            log.write(f"$ {program} {' '.join(args)} (rc {result.returncode})\n")
            log.write(f"{result.stdout}\n{result.stderr}\n")
        return result

    def stop(self):
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self.process = None


@dataclass
class HostMinion:
    """A salt-minion on this host with its own root_dir, config dir `<base>/<id>/conf`.

    Started either here (`start()`) or by a salt-cloud deploy script that wrote the same
    layout (tests/master/deploy_host_minion.sh); stopped by the PID in its pid file."""

    base: Path
    minion_id: str

    @property
    def root(self):
        return self.base / self.minion_id

    @property
    def config_dir(self):
        return self.root / "conf"

    @property
    def pidfile(self):
        return self.root / "var/run/salt-minion.pid"

    def write_config(self, grains=None, **options):
        self.config_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "id": self.minion_id,
            "master": "127.0.0.1",
            "root_dir": str(self.root),
            "enable_fqdns_grains": False,
            "log_level_logfile": "info",
            **options,
        }
        (self.config_dir / "minion").write_text(yaml.safe_dump(config))
        if grains:
            (self.config_dir / "grains").write_text(yaml.safe_dump(grains))

    def start(self, env=None):
        subprocess.run(
            [str(BIN_DIR / "salt-minion"), "-c", str(self.config_dir), "-d"],
            env=env,
            check=True,
            timeout=60,
        )
        _wait_for(self.pidfile.exists, 30, f"salt-minion {self.minion_id} wrote no pid file")
        return self

    def stop(self):
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
