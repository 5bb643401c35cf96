"""Several salt-masters sharing one fleet, on one machine, for tests/multimaster and
bench/fleet.py: each master in its own network namespace (tools/netns.py), the shared store
(Debian's ``redis-server``) in another, minions in one or more more; all on one bridge.

The topology is the one docs/multimaster.md chooses: failover multi-master. Every master has
the same master key pair, the repository's runners and utils (``module_dirs``) and
``cache: redis`` pointing at the store, so the node records (salt/_utils/dockerhosts_nodes.py)
and the master's locks are shared; each minion lists every master (``master_type:
failover``) and talks to one at a time. Minion keys are accepted on every master, as
bin/add-master and salt-cloud's key sync leave them.

Processes run with ``nsenter`` into their namespace (the PID we hold is the daemon's own);
everything is stopped by PID (SIGKILL at the end: nothing of it is kept) and removed on exit,
also after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tools.netns import Namespace, bridged_namespaces
from tools.salt_node import rsa_key_pair

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REDIS = "/usr/bin/redis-server"
SUBNET = "192.168.232"
BRIDGE = "dhmm0"
START_TIMEOUT = 60
# How often a minion checks its master (s): the failover detection time.
ALIVE_INTERVAL = 5

# The light node's highstate: a file, one slow step (a window to kill a master in), and one
# data-changing step that must run once per node whatever happens (it appends to a ledger).
LIGHT_SLS = """\
{%- set home = opts.cachedir %}
light-file:
  file.managed:
    - name: {{ home }}/converged.txt
    - contents: converged
light-slow-step:
  cmd.run:
    - name: sleep {{ pillar.get('light_sleep', 0) }}
    - unless: test -e {{ home }}/ledger
light-data:
  cmd.run:
    - name: echo applied >> {{ home }}/ledger
    - creates: {{ home }}/ledger
    - require:
        - cmd: light-slow-step
"""


@dataclass
class Daemon:
    name: str
    namespace: Namespace
    config_dir: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def address(self):
        return self.namespace.address

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None


@dataclass
class Fleet:
    """Masters, minions and the store of one topology; the CLIs run in a master's namespace."""

    root: Path
    masters: dict
    minions: dict
    store: Daemon
    started: list = field(default_factory=list)

    # --- the operator's CLIs, on one master -------------------------------------------
    def cli(self, master, program, *args, timeout=120):
        """Run ``program`` (salt, salt-run, salt-key) on master ``master`` as an operator
        would there: (returncode, stdout + stderr)."""
        daemon = self.masters[master]
        command = daemon.namespace.nsenter(str(BIN / program), "-c", str(daemon.config_dir), *args)
        proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr

    def cli_json(self, master, program, *args, timeout=120):
        code, output = self.cli(master, program, "--out=json", *args, timeout=timeout)
        try:  # the document, whatever Salt logs after it
            return code, json.JSONDecoder().raw_decode(output[output.index("{") :])[0]
        except ValueError:
            return code, None

    def start_cli(self, master, program, *args):
        """``program`` started in the background on ``master`` (a runner in flight)."""
        daemon = self.masters[master]
        log = open(self.root / f"{master}-{program}-{len(self.started)}.out", "wb")
        process = subprocess.Popen(
            daemon.namespace.nsenter(str(BIN / program), "-c", str(daemon.config_dir), *args),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.started.append((master, process))
        return process

    def records(self, master):
        """The node records as ``master`` reads them (salt/_utils/dockerhosts_nodes.py)."""
        code, output = self.python(master, "print(json.dumps(nodes.records(opts)))")
        if code:
            raise RuntimeError(f"reading the records on {master} failed: {output}")
        return json.loads(output.splitlines()[-1])

    def put_record(self, master, name, record):
        """Write a node record on ``master`` as salt-cloud does after a deploy."""
        code, output = self.python(
            master, f"nodes.put(opts, {name!r}, json.loads({json.dumps(record)!r}))"
        )
        if code:
            raise RuntimeError(f"writing the record of {name} on {master} failed: {output}")

    def python_command(self, master, body):
        """``python -c`` of ``body`` with ``opts`` (``master``'s config), ``utils`` (the
        loaded utils) and ``nodes`` (dockerhosts_nodes' functions), inside its namespace."""
        config = str(self.masters[master].config_dir / "master")
        script = (
            "import json, salt.config, salt.loader\n"
            f"opts = salt.config.master_config({config!r})\n"
            "utils = salt.loader.utils(opts)\n"
            "class _Nodes:\n"
            "    def __getattr__(self, fun):\n"
            "        return utils[f'dockerhosts_nodes.{fun}']\n"
            "nodes = _Nodes()\n" + body + "\n"
        )
        return self.masters[master].namespace.nsenter(str(BIN / "python"), "-c", script)

    def python(self, master, body, timeout=120):
        """Run ``python_command``: (returncode, stdout + stderr)."""
        proc = subprocess.run(
            self.python_command(master, body),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        return proc.returncode, proc.stdout + proc.stderr

    # --- faults --------------------------------------------------------------------------
    def kill_master(self, name):
        """The machine of master ``name`` dies: its daemon and every CLI started there are
        SIGKILLed at once (no clean shutdown, no last event)."""
        for master, process in [*self.started, (name, self.masters[name].process)]:
            if master == name and process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def start_master(self, name):
        _start(self, self.masters[name], "salt-master")
        _wait_for_port(self.masters[name], 4506)

    def restart_store(self, down_seconds=0):
        _stop(self.store, signal.SIGTERM)
        time.sleep(down_seconds)
        _start_store(self)

    def minion_file(self, minion, name):
        """A file the light highstate writes in ``minion``'s cachedir, or None."""
        path = self.minions[minion].config_dir / "cache" / name
        return path.read_text() if path.exists() else None


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, default_flow_style=False))


def _daemon_paths(home, role):
    """Where a daemon keeps everything: under ``home`` (short: Unix socket paths are limited)."""
    paths = {"root_dir": home, "log_file": home / f"{role}.log", "pidfile": home / f"{role}.pid"}
    paths.update(
        {
            f"{part}_dir" if part != "cache" else "cachedir": home / part
            for part in ("pki", "cache", "sock")
        }
    )
    return {**{k: str(v) for k, v in paths.items()}, "log_level_logfile": "info", "user": "root"}


def master_config(root, name, address, store_address, extra=None):
    """One master of the topology: the settings that make it share the fleet."""
    home = root / name
    return {
        "id": name,
        "interface": address,
        **_daemon_paths(home, "master"),
        "file_roots": {"base": [str(root / "srv" / "salt")]},
        "pillar_roots": {"base": [str(root / "srv" / "pillar")]},
        "module_dirs": [str(REPO_ROOT / "salt")],
        "gpg_keydir": str(home / "gpg"),
        # The shared store (docs/multimaster.md): node records, converge and swarm locks.
        "cache": "redis",
        "cache.redis.host": store_address,
        "cache.redis.port": 6379,
        "minion_data_cache": False,
        "worker_threads": 2,
        **(extra or {}),
    }


def minion_config(root, minion_id, master_addresses, extra=None):
    home = root / "minions" / minion_id
    return {
        "id": minion_id,
        **_daemon_paths(home, "minion"),
        "master": list(master_addresses),
        "master_type": "failover",
        "master_alive_interval": ALIVE_INTERVAL,
        "retry_dns": 0,
        "acceptance_wait_time": 1,
        "random_reauth_delay": 0,
        "auth_timeout": 30,
        **(extra or {}),
    }


def _start(fleet, daemon, program):
    log = open(daemon.config_dir / f"{program}.out", "ab")
    daemon.process = subprocess.Popen(
        daemon.namespace.nsenter(
            str(BIN / program), "-c", str(daemon.config_dir), "--log-level=quiet"
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()


def _start_store(fleet):
    store = fleet.store
    log = open(store.config_dir / "redis.out", "ab")
    store.process = subprocess.Popen(
        store.namespace.nsenter(
            REDIS,
            "--bind",
            store.address,
            "--port",
            "6379",
            "--protected-mode",
            "no",
            "--dir",
            str(store.config_dir),
            # Records must survive a store restart: append-only file, fsync every second.
            "--appendonly",
            "yes",
            "--save",
            "",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    _wait_for_port(store, 6379)


def _wait_for_port(daemon, port):
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        probe = daemon.namespace.run(
            sys.executable,
            "-c",
            f"import socket; socket.create_connection(({daemon.address!r}, {port}), 1)",
            check=False,
        )
        if probe.returncode == 0:
            return
        if not daemon.running or time.monotonic() > deadline:
            raise RuntimeError(f"{daemon.name} did not listen on {daemon.address}:{port}")
        time.sleep(0.3)


def _stop(daemon, sig=signal.SIGKILL):
    if daemon.running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.process.pid, sig)
        try:
            daemon.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.process.pid, signal.SIGKILL)
            daemon.process.wait()


def _master_keys(root, names):
    """One master key pair, the same file on every master of ``names``."""
    private, public = rsa_key_pair()
    for name in names:
        pki = root / name / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        (pki / "master.pem").write_bytes(private)
        (pki / "master.pem").chmod(0o400)
        (pki / "master.pub").write_bytes(public)


def _minion_key(root, minion_id, accepted_on):
    pki = root / "minions" / minion_id / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    private, public = rsa_key_pair()
    (pki / "minion.pem").write_bytes(private)
    (pki / "minion.pem").chmod(0o400)
    (pki / "minion.pub").write_bytes(public)
    for master in accepted_on:
        accepted = root / master / "pki" / "minions"
        accepted.mkdir(parents=True, exist_ok=True)
        (accepted / minion_id).write_bytes(public)


def _tree(root, pillar):
    salt_dir, pillar_dir = root / "srv" / "salt", root / "srv" / "pillar"
    salt_dir.mkdir(parents=True)
    pillar_dir.mkdir(parents=True)
    (salt_dir / "light.sls").write_text(LIGHT_SLS)
    _write(salt_dir / "top.sls", {"base": {"*": ["light"]}})
    _write(pillar_dir / "light.sls", pillar or {})
    _write(pillar_dir / "top.sls", {"base": {"*": ["light"]}})


def wait_for(predicate, timeout, what, interval=0.5):
    """``predicate()``'s first true value within ``timeout`` s, else RuntimeError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def answering(fleet, master, minions, timeout=10):
    """The minions of ``minions`` that answer a ping through ``master``."""
    _code, data = fleet.cli_json(
        master, "salt", "--static", f"--timeout={timeout}", "-L", ",".join(minions), "test.ping"
    )
    return sorted(m for m, ok in (data or {}).items() if ok is True)


def _configure(root, the_fleet, namespaces, settings):
    """Write every master's and minion's config and keys; ``settings``: fleet()'s options."""
    by_name = {ns.name: ns for ns in namespaces}
    _tree(root, settings["pillar"])
    masters = [f"m{i}" for i in range(1, settings["masters"] + 1)]
    # The first master's keys; the others get them from bin/add-master, as an operator's do.
    _master_keys(root, masters[:1])
    (root / masters[0] / "gpg").mkdir(mode=0o700)
    for name in masters:
        daemon = Daemon(name, by_name[name], root / name)
        config = master_config(
            root, name, daemon.address, the_fleet.store.address, settings["master_extra"]
        )
        _write(daemon.config_dir / "master", config)
        the_fleet.masters[name] = daemon
    addresses = [the_fleet.masters[name].address for name in masters]
    for index, minion_id in enumerate(settings["minion_names"]):
        group = by_name[f"g{index % settings['groups']}"]
        daemon = Daemon(minion_id, group, root / "minions" / minion_id)
        order = addresses[::-1] if minion_id in settings["reverse_order"] else addresses
        if minion_id not in settings["late"]:
            _minion_key(root, minion_id, masters[:1])
        config = minion_config(root, minion_id, order, settings["minion_extra"])
        _write(daemon.config_dir / "minion", config)
        the_fleet.minions[minion_id] = daemon
    for name in masters[1:]:
        add_master(the_fleet.masters[masters[0]], the_fleet.masters[name])
    for minion_id in settings["late"]:  # created through the first master after the others joined
        _minion_key(root, minion_id, masters[:1])


def add_master(source, joining):
    """``bin/add-master --export -c SOURCE | bin/add-master --import -c JOINING``."""
    tool = [str(REPO_ROOT / "bin" / "add-master")]
    env = {**os.environ, "SALT_BIN_DIR": str(BIN)}
    exported = subprocess.run(
        [*tool, "--export", "-c", str(source.config_dir)], capture_output=True, check=True, env=env
    )
    subprocess.run(
        [*tool, "--import", "-c", str(joining.config_dir)],
        input=exported.stdout,
        capture_output=True,
        check=True,
        env=env,
    )


def first_master(fleet_, minion):
    """The master ``minion`` lists first (the one it is connected to while that one lives)."""
    config = yaml.safe_load((fleet_.minions[minion].config_dir / "minion").read_text())
    return next(m for m, d in fleet_.masters.items() if d.address == config["master"][0])


def _wait_for_minions(the_fleet, timeout):
    by_master = {}
    for minion in the_fleet.minions:
        by_master.setdefault(first_master(the_fleet, minion), []).append(minion)
    for master, minions in by_master.items():
        answered = set()  # a minion that answered once stays connected: count it

        def all_answered(m=master, ms=minions, seen=answered):
            waiting = sorted(set(ms) - seen)
            seen.update(answering(the_fleet, m, waiting, timeout=max(10, len(waiting) // 4)))
            return seen >= set(ms)

        wait_for(all_answered, timeout, f"{minions} to answer through {master}")


def _stop_all(the_fleet):
    for _, process in the_fleet.started:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for daemon in [*the_fleet.minions.values(), *the_fleet.masters.values(), the_fleet.store]:
        _stop(daemon)


@contextlib.contextmanager
def fleet(masters=2, minions=4, *, groups=None, wait=True, **options):
    """A running topology: ``masters`` masters (m1, m2, ...), the store, and ``minions``
    minions (n01, n02, ...), each in its own namespace unless ``groups`` namespaces hold
    them all (a bench's 100 minions need not have 100). Minions list the masters in order,
    reversed for those in ``reverse_order``; the first is the one they use while it lives.
    ``wait``: until every minion answers through its first master (``start_timeout`` s).
    Options: ``pillar``, ``master_extra``, ``minion_extra``, ``reverse_order``, ``late``
    (minions whose key only the first master has)."""
    minion_names = [f"n{i:02d}" for i in range(1, minions + 1)]
    settings = {
        "masters": masters,
        "minion_names": minion_names,
        "groups": groups or len(minion_names),
        "pillar": options.get("pillar"),
        "master_extra": options.get("master_extra"),
        "minion_extra": options.get("minion_extra"),
        "reverse_order": options.get("reverse_order", ()),
        "late": options.get("late", ()),
    }
    root = Path(tempfile.mkdtemp(prefix="dhmm-", dir="/tmp"))
    spaces = ["store", *[f"m{i}" for i in range(1, masters + 1)]]
    spaces += [f"g{i}" for i in range(settings["groups"])]
    with bridged_namespaces(spaces, bridge=BRIDGE, subnet=SUBNET) as namespaces:
        store = Daemon("store", namespaces[0], root / "store")
        store.config_dir.mkdir(parents=True)
        the_fleet = Fleet(root=root, masters={}, minions={}, store=store)
        try:
            _configure(root, the_fleet, namespaces, settings)
            _start_store(the_fleet)
            for daemon in the_fleet.masters.values():
                _start(the_fleet, daemon, "salt-master")
            for daemon in the_fleet.masters.values():
                _wait_for_port(daemon, 4506)
            for daemon in the_fleet.minions.values():
                _start(the_fleet, daemon, "salt-minion")
            if wait:
                _wait_for_minions(
                    the_fleet, options.get("start_timeout", START_TIMEOUT + 2 * minions)
                )
            yield the_fleet
        finally:
            _stop_all(the_fleet)
            if not os.environ.get("DOCKERHOSTS_KEEP_MULTIMASTER"):
                shutil.rmtree(root, ignore_errors=True)
