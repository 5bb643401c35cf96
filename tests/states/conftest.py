"""
A real salt-master and salt-minions (pytest-salt-factories) serving this repository's salt/
tree and a test copy of pillar/, and a real dockerd the minion manages.

The test pillar is the repository's pillar with what cannot work on this host swapped out:
secrets are encrypted for a throwaway key (the repository's ciphertext is for the real
master's key), storage is off (this kernel has no device-mapper; the LVM states run in the
VM tests), install/service are off (the host's own Docker packages and service are not the
test's to touch), and the awslogs driver (no AWS here) becomes json-file.

The master runs with the pillar/identity settings of the repository's own `master` file
(ext_pillar node_class, module_dirs, caches off, the reactor), and each minion's class is set
with the real `salt-run node_class.set` once its key is accepted: pillar/top.sls decides by
that, never by a grain.
"""

import contextlib
import secrets as random_secrets
import shutil
from types import SimpleNamespace

import pytest
import yaml

from tests.states import corpus
from tools.dockerd import running_dockerd
from tools.gpg import encrypt, keyring
from tools.images import import_busybox
from tools.salt_repo import repository_master_settings

TIMINGS = {}
SECRET_NAMES = ("postgres_user", "postgres_password", "postgres_db", "registry_password")
# Minion id -> node class, assigned on the master before the minion starts.
NODE_CLASSES = {"dh-dataserver": "dataserver", "dh-webserver": "backends"}


def pytest_terminal_summary(terminalreporter):
    if corpus.refused_summary():
        terminalreporter.write_line(corpus.refused_summary())
    if TIMINGS:
        terminalreporter.write_line(
            "highstate on the test minion: "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in TIMINGS.items())
        )


@pytest.fixture(scope="package")
def dockerd(tmp_path_factory):
    with running_dockerd(tmp_path_factory.mktemp("dockerd")) as daemon:
        # The images the dataserver pillar names, built locally (no registry here).
        import_busybox(daemon, "busybox:latest", "postgres:16")
        yield daemon


@pytest.fixture(scope="package")
def gpg_home(tmp_path_factory):
    with keyring(tmp_path_factory.mktemp("gpg") / "master") as keys:
        yield keys


@pytest.fixture(scope="package")
def secret_values():
    # Random per run, so finding one in a file proves it leaked there.
    return {name: f"{name}-{random_secrets.token_hex(12)}" for name in SECRET_NAMES}


def write_secrets(path, public_key, values):
    """The `#!yaml|gpg` secrets file, exactly as the repository ships it (ciphertext only)."""
    lines = ["#!yaml|gpg", "docker_secrets:"]
    for name, value in values.items():
        lines.extend(encrypt(public_key, value, name).splitlines())
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="package")
def test_paths(tmp_path_factory):
    base = tmp_path_factory.mktemp("node")
    return {
        "daemon_json": base / "etc-docker" / "daemon.json",
        "registry_config": base / "root-docker" / "config.json",
        "ext4_disk": base / "used-disk.img",
    }


@pytest.fixture(scope="package")
def pillar_root(tmp_path_factory, repo_root, gpg_home, secret_values, test_paths):
    root = tmp_path_factory.mktemp("pillar")
    shutil.copytree(repo_root / "pillar", root, dirs_exist_ok=True)

    docker_sls = yaml.safe_load((root / "docker.sls").read_text())
    docker = docker_sls.setdefault("docker", {})
    docker["storage"] = {"mode": "none"}
    # The host's LVM tools are not the test's to install or remove.
    docker["storage_pkgs"] = []
    docker["install"] = {"manage": False}
    docker["service"] = {"manage": False}
    docker["config_file"] = str(test_paths["daemon_json"])
    docker["registry_config"] = str(test_paths["registry_config"])
    (root / "docker.sls").write_text(yaml.safe_dump(docker_sls))

    dataserver_sls = root / "classes" / "dataserver" / "init.sls"
    dataserver = yaml.safe_load(dataserver_sls.read_text())
    postgres = dataserver["docker"]["containers"]["postgres"]
    assert postgres["log_driver"] == "awslogs"
    # busybox stands in for postgres: it answers on 5432 and stops at once on SIGTERM.
    postgres["command"] = ["httpd", "-f", "-p", "5432", "-h", "/"]
    postgres["log_driver"] = "json-file"
    postgres["log_opt"] = {"max-size": "1m", "max-file": "2"}
    postgres["port_bindings"] = ["127.0.0.1:15432:5432"]
    postgres["networks"] = ["backend"]
    postgres["labels"] = {"class": "dataserver"}
    dataserver["docker"]["networks"] = {"backend": {"driver": "bridge"}}
    dataserver_sls.write_text(yaml.safe_dump(dataserver))
    # The backends class's web front end needs an image this dockerd does not have.
    (root / "classes" / "backends" / "init.sls").write_text("docker: {}\n")

    secrets = root / "classes" / "dataserver" / "secrets.sls"
    write_secrets(secrets, gpg_home["public"], secret_values)
    return root


@pytest.fixture(scope="package")
def master_overrides(repo_root, pillar_root, gpg_home):
    """The test master's config; other test modules may add keys before the master starts."""
    return {
        **repository_master_settings(repo_root),
        # The node lifecycle's reactor (salt/key: a deleted key takes its node's class along).
        "reactor": yaml.safe_load((repo_root / "master").read_text())["reactor"],
        "file_roots": {"base": [str(repo_root / "salt")]},
        "pillar_roots": {"base": [str(pillar_root)]},
        "gpg_keydir": str(gpg_home["home"]),
        "gpg_decrypt_must_succeed": True,
    }


@pytest.fixture(scope="package")
def salt_master(salt_factories, master_overrides):
    factory = salt_factories.salt_master_daemon("dh-master", overrides=master_overrides)
    with factory.started():
        yield factory


@pytest.fixture(scope="package")
def salt_run(salt_master):
    return salt_master.salt_run_cli(timeout=60)


def set_node_class(salt_run, minion_id, node_class):
    ret = salt_run.run("node_class.set", minion_id, node_class)
    assert ret.returncode == 0, ret.stdout + ret.stderr
    return ret


def start_minion(salt_master, salt_run, minion_id, dockerd, grains=None, **overrides):
    """A minion of this master managing ``dockerd`` (not started; its class is set once its
    key is accepted)."""
    return salt_master.salt_minion_daemon(
        minion_id,
        overrides={"grains": grains or {}, "docker.url": dockerd.url, **overrides},
    )


@contextlib.contextmanager
def started_minion(salt_master, salt_run, minion_id, dockerd, grains=None):
    """A minion of this master, running, its key accepted, then its class (NODE_CLASSES) set on
    the master, as an operator adds a node by hand."""
    factory = start_minion(salt_master, salt_run, minion_id, dockerd, grains)
    with factory.started():
        set_node_class(salt_run, minion_id, NODE_CLASSES[minion_id])
        salt_master.salt_cli(timeout=60).run(
            "saltutil.refresh_pillar", "wait=True", minion_tgt=minion_id
        )
        yield factory


@pytest.fixture(scope="package")
def dataserver_minion(salt_master, salt_run, dockerd):
    with started_minion(salt_master, salt_run, "dh-dataserver", dockerd) as factory:
        yield factory


@pytest.fixture(scope="package")
def other_minion(salt_master, salt_run, dockerd):
    # A backends node that claims the dataserver class by every grain it can set.
    grains = {"class": "dataserver", "node_class": "dataserver"}
    with started_minion(salt_master, salt_run, "dh-webserver", dockerd, grains) as factory:
        yield factory


@pytest.fixture(scope="package")
def salt_cli(salt_master):
    return salt_master.salt_cli(timeout=180)


HELPERS = SimpleNamespace(
    set_node_class=set_node_class,
    write_secrets=write_secrets,
    keyring=keyring,
    timings=TIMINGS,
    secret_names=SECRET_NAMES,
)


@pytest.fixture(scope="package")
def node(salt_master, dataserver_minion, dockerd, test_paths, secret_values):
    """The dataserver node under test: salt and salt-run CLIs, minion, its dockerd, paths,
    secrets."""
    return SimpleNamespace(
        cli=salt_master.salt_cli(timeout=180),
        run=salt_master.salt_run_cli(timeout=60),
        minion=dataserver_minion,
        dockerd=dockerd,
        paths=test_paths,
        secrets=secret_values,
        # What the test modules share with this conftest (tests/ is not a package).
        helpers=HELPERS,
    )
