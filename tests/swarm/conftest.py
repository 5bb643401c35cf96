"""
A class of three Docker hosts forming a swarm, for real: three dockerds, each in its own
network namespace (tools/swarm_nodes.py) on one bridge, each managed by its own salt-minion
(minion id = hostname = sw1, sw2, sw3), driven by a real salt-master from this repository's
salt/ tree, with GPG-encrypted pillar for a throwaway key and the master's node class
node records seeded with the three (class ``backends``, bound to each one's accepted key, as
salt-cloud writes them). A fourth minion, ``intruder``, claims class ``backends`` by grain only
and has no engine.
"""

import secrets as random_secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import salt.config
import yaml

from tools.event_recorder import recording
from tools.gpg import encrypt, keyring
from tools.salt_repo import load_module, repository_master_settings
from tools.swarm_nodes import import_image, swarm_nodes

CLASS = "backends"
NODES = ("sw1", "sw2", "sw3")
INTRUDER = "intruder"
TIMINGS = {}
SECRET_KEYS = ("api_token", "web_env_key")
IMAGES = ("app:1", "app:2")
BROKEN_IMAGE = "app:broken"  # /bin/busybox left out: no command in it can start
WEB_COMMAND = (
    "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
)


FINDINGS = []


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_line(
            "swarm tier: "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in TIMINGS.items())
        )
    for finding in FINDINGS:
        terminalreporter.write_line(f"swarm tier: {finding}")


def base_swarm_pillar():
    """The class's swarm as an operator would write it (pillar/<class>.sls)."""
    return {
        "enabled": True,
        "managers": {"count": 1},
        # Each engine has lo + eth0 and no default route: name the interface.
        "advertise_addr": "eth0",
        "converge_timeout": 90,
        "node_labels": {"tier": "app"},
        "networks": {"appnet": {"driver": "overlay", "attachable": True}},
        "secrets": {"api_token": {"secret": "api_token"}},
        "configs": {"motd": {"data": "served by the swarm\n"}},
        "services": {
            "web": {
                "image": "app:1",
                "replicas": 3,
                "hostname": "{{.Node.Hostname}}",
                "command": ["sh", "-c", WEB_COMMAND],
                # No IPVS in this kernel: DNS round robin instead of a virtual IP.
                "endpoint_mode": "dnsrr",
                "networks": ["appnet"],
                "secrets": ["api_token"],
                "configs": [{"source": "motd", "target": "/etc/motd"}],
                "environment": {"GREETING": "hello", "WEB_KEY": {"secret": "web_env_key"}},
                "update_config": {
                    "parallelism": 1,
                    "delay": "1s",
                    "monitor": "2s",
                    "failure_action": "rollback",
                },
                "rollback_config": {"parallelism": 0, "monitor": "1s"},
                "restart_policy": {"condition": "any", "delay": "1s"},
                "healthcheck": {
                    "test": ["CMD-SHELL", "timeout 2 wget -qO /dev/null http://127.0.0.1:8080/"],
                    "interval": "1s",
                    "timeout": "3s",
                    "retries": 3,
                },
                "resources": {"mem_limit": "64M", "cpu_limit": 0.5},
                # httpd as PID 1 would ignore SIGTERM: an init stops it at once.
                "init": True,
                "stop_grace_period": "2s",
                "constraints": [f"node.labels.class == {CLASS}"],
                "preferences": [{"spread": "node.id"}],
            },
            "edge": {
                "image": "app:1",
                "mode": "global",
                "command": ["httpd", "-f", "-p", "8081", "-h", "/etc"],
                "endpoint_mode": "dnsrr",
                # Host-mode ports go through docker_gwbridge, which a task gets with an
                # overlay network (these engines have no default bridge: --bridge=none).
                "networks": ["appnet"],
                "ports": [{"target": 8081, "published": 18081, "mode": "host"}],
                "init": True,
                "stop_grace_period": "1s",
            },
        },
    }


@pytest.fixture(scope="package")
def engines(tmp_path_factory):
    base = tmp_path_factory.mktemp("swarm-engines")
    started = time.monotonic()
    with swarm_nodes(base, NODES) as nodes:
        import_image(nodes, *IMAGES)
        import_image(nodes, BROKEN_IMAGE, leave_out=["busybox"])
        TIMINGS["3 engines up"] = time.monotonic() - started
        yield {node.name: node for node in nodes}


@pytest.fixture(scope="package")
def gpg_home(tmp_path_factory):
    with keyring(tmp_path_factory.mktemp("gpg") / "master") as keys:
        yield keys


class Pillar:
    """The repository's pillar tree with class ``backends`` added (its swarm and its GPG
    secrets) and the docker formula's host-level parts switched off (not the test's to
    touch). pillar/top.sls itself decides who gets what, from the master's registry."""

    def __init__(self, root, repo_root, public_key):
        self.root = root
        self.public_key = public_key
        self.secrets = {}
        self.swarm = base_swarm_pillar()
        shutil.copytree(repo_root / "pillar", root, dirs_exist_ok=True)
        # The class's folder (pillar/classes/<class>/): its pillar, and its secrets included.
        self.folder = root / "classes" / CLASS
        (self.folder / "secrets.sls").write_text("docker_secrets: {}\n")
        # The class the tests move nodes to (a class is a folder: node_class.set checks).
        (root / "classes" / "other").mkdir()
        (root / "classes" / "other" / "init.sls").write_text("{}\n")
        docker = yaml.safe_load((root / "docker.sls").read_text()) or {}
        docker["docker"] = {
            "storage": {"mode": "none"},
            "storage_pkgs": [],
            "install": {"manage": False},
            "service": {"manage": False},
            "config_file": str(root / "node-etc" / "daemon.json"),
        }
        (root / "docker.sls").write_text(yaml.safe_dump(docker))

    def write(self):
        # "#!yaml": no Jinja, so swarm templates like {{.Node.Hostname}} stay as they are.
        pillar = {"include": [".secrets"], "swarm": self.swarm}
        (self.folder / "init.sls").write_text("#!yaml\n" + yaml.safe_dump(pillar))

    def set_secret(self, key, value):
        self.secrets[key] = value
        lines = ["#!yaml|gpg", "docker_secrets:"]
        for name, plain in self.secrets.items():
            lines.extend(encrypt(self.public_key, plain, name).splitlines())
        (self.folder / "secrets.sls").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="package")
def pillar(tmp_path_factory, repo_root, gpg_home):
    tree = Pillar(tmp_path_factory.mktemp("swarm-pillar"), repo_root, gpg_home["public"])
    for key in SECRET_KEYS:
        tree.set_secret(key, f"{key}-{random_secrets.token_hex(12)}")
    tree.write()
    return tree


@pytest.fixture(scope="package")
def salt_master(salt_factories, repo_root, pillar, gpg_home):
    factory = salt_factories.salt_master_daemon(
        "sw-master",
        overrides={
            **repository_master_settings(repo_root),
            "file_roots": {"base": [str(repo_root / "salt")]},
            "pillar_roots": {"base": [str(pillar.root)]},
            "gpg_keydir": str(gpg_home["home"]),
            "gpg_decrypt_must_succeed": True,
            # Minions start together; their keys need no salt-key round.
            "auto_accept": True,
            # The most Salt ever logs: the tier checks no token or secret is in it.
            "log_level_logfile": "trace",
            # Only warnings travel to pytest's log capture: trace stays in the files.
            "pytest-master": {"log": {"level": "warning"}},
        },
    )
    started = time.monotonic()
    with factory.started():
        TIMINGS["master up"] = time.monotonic() - started
        yield factory


@pytest.fixture(scope="package")
def events(salt_master):
    with recording(salt_master.config) as recorder:
        yield recorder


@pytest.fixture(scope="package")
def minions(salt_master, engines, events):
    factories = {}
    for name, node in engines.items():
        factories[name] = salt_master.salt_minion_daemon(
            name,
            overrides={
                "grains": {"class": CLASS},
                "docker.url": node.url,
                "log_level_logfile": "trace",
                "pytest-minion": {"log": {"level": "warning"}},
            },
        )
    factories[INTRUDER] = salt_master.salt_minion_daemon(
        INTRUDER,
        overrides={
            # Grains it sets itself: they must count for nothing.
            "grains": {"class": CLASS, "node_class": CLASS},
            "docker.url": "unix:///nonexistent/docker.sock",
            "log_level_logfile": "trace",
            "pytest-minion": {"log": {"level": "warning"}},
        },
    )
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(factories)) as pool:
        list(pool.map(lambda factory: factory.start(), factories.values()))
    TIMINGS["4 minions up"] = time.monotonic() - started
    try:
        yield factories
    finally:
        with ThreadPoolExecutor(max_workers=len(factories)) as pool:
            list(pool.map(lambda factory: factory.terminate(), factories.values()))


class Registry:
    """The master's node records (salt/_utils/dockerhosts_nodes.py: the class, bound to the
    fingerprint of the accepted key, as salt-cloud writes them) and, while pillar/top.sls still
    reads the node_class registry files for pillar, that entry too (the real node_class
    runner)."""

    def __init__(self, run_cli, master):
        self.run_cli = run_cli
        self.opts = salt.config.master_config(master.config_file)
        self.nodes = load_module("utils", "dockerhosts_nodes")

    def set(self, minion_id, class_name):
        if class_name is None:
            self.nodes.forget(self.opts, minion_id)
            ret = self.run_cli.run("node_class.unset", minion_id)
        else:
            key = self.nodes.key_fingerprint(self.opts, minion_id)
            assert key, f"{minion_id} has no accepted key"
            record = {"class": class_name, "key": key, "source": "operator", "state": "converged"}
            self.nodes.put(self.opts, minion_id, record)
            ret = self.run_cli.run("node_class.set", minion_id, class_name)
        assert ret.returncode == 0, ret.stdout + ret.stderr

    def record(self, minion_id):
        return self.nodes.get(self.opts, minion_id)


class Swarm:
    """What the tests drive: the master's CLIs, pillar, registry, engines, recorded output."""

    def __init__(self, salt_master, minions, engines, pillar, events):
        self.master = salt_master
        self.minions = minions
        self.engines = engines
        self.pillar = pillar
        self.events = events
        self.run_cli = salt_master.salt_run_cli(timeout=600)
        self.cli = salt_master.salt_cli(timeout=600)
        self.registry = Registry(self.run_cli, salt_master)
        self.outputs = []  # every CLI output, searched for leaks at the end
        self.tokens = set()  # every join token the engines had, ditto

    def _keep(self, ret):
        self.outputs.append(f"{ret.stdout}\n{ret.stderr}")
        return ret

    def converge(self, test=False):
        """``salt-run swarm.converge <class>``: (its outcome, its exit code, wall seconds)."""
        started = time.monotonic()
        ret = self.runner("swarm.converge", CLASS, *(["test=True"] if test else []))
        assert isinstance(ret.data, dict), f"{ret.stdout}{ret.stderr}"
        return ret.data, ret.returncode, time.monotonic() - started

    def runner(self, *args):
        return self._keep(self.run_cli.run(*args))

    def salt(self, minion, *args):
        return self._keep(self.cli.run(*args, minion_tgt=minion))

    def collect_tokens(self):
        for node in self.engines.values():
            if node.info()["Swarm"].get("ControlAvailable"):
                for role in ("worker", "manager"):
                    self.tokens.add(node.cli("swarm", "join-token", "-q", role).strip())

    def manager(self):
        for node in self.engines.values():
            if node.info()["Swarm"].get("ControlAvailable"):
                return node
        raise AssertionError("no manager among the engines")

    def tasks(self, service):
        """Running tasks of ``service``: [(node hostname, image)]."""
        rows = (
            self.manager()
            .cli(
                "service",
                "ps",
                service,
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Node}} {{.Image}} {{.CurrentState}}",
            )
            .splitlines()
        )
        return sorted(tuple(row.split()[:2]) for row in rows if " Running " in f" {row} ")

    def container_of(self, service, node):
        """A running task container of ``service`` on engine ``node``."""
        ids = (
            self.engines[node]
            .cli("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}")
            .split()
        )
        assert ids, f"no {service} task on {node}"
        return ids[0]

    def exec(self, node, container, script):
        return self.engines[node].cli("exec", container, "sh", "-c", script)


@pytest.fixture(scope="package")
def swarm(salt_master, minions, engines, pillar, events):
    cluster = Swarm(salt_master, minions, engines, pillar, events)
    # One at a time: every call goes through the one salt-run factory, whose CLI runner keeps
    # per-run state (its output files) and is not thread-safe.
    for node in NODES:
        cluster.registry.set(node, CLASS)
    # Custom modules: runners and orchestration states on the master, the rest on minions.
    assert cluster.run_cli.run("saltutil.sync_all").returncode == 0
    synced = cluster.cli.run("saltutil.sync_all", minion_tgt="*")
    assert synced.returncode == 0, synced.stdout
    yield cluster
