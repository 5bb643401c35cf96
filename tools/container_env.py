"""Docker hosts converged by a real Salt, for the container tests and
bench/converge_scale.py: a salt-master and minions (tools/salt_node.py), one private dockerd
per minion (tools/dockerd.py), optionally a real registry (tools/registry.py) that every
dockerd resolves and trusts, and moto on 127.0.0.1 for CloudWatch Logs and IAM (the dockerds
have test AWS credentials, so the awslogs log driver writes there).

The pillar is the repository's pillar/docker.sls with what cannot work on this host turned
off (storage: the host kernel has no device-mapper; install/service: the host's Docker is not
ours), plus per minion its own daemon.json and registry config paths and whatever the test
writes into ``node-<minion id>.sls``; secrets are GPG-encrypted for a throwaway master key.
"""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from tools import gpg
from tools import registry as registry_tools
from tools.dockerd import running_dockerd
from tools.images import import_busybox
from tools.net import free_port
from tools.salt_node import running_salt

REPO_ROOT = Path(__file__).resolve().parents[1]
AWS_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGISTRY_NAME = "registry.dh.test"
REGISTRY_ADDRESS = "10.217.0.1"
LOCAL_IMAGES = ("busybox:latest", "postgres:16")


@dataclass
class ContainerEnv:
    salt: object
    dockerds: dict
    pillar_root: Path
    gpg_public: Path
    registry: object = None
    moto_url: str = None
    etc_overlays: dict = None

    def write_pillar(self, minion_id, data):
        """Replace what the test adds to ``minion_id``'s pillar (merged over the rest)."""
        (self.pillar_root / f"node-{minion_id}.sls").write_text(yaml.safe_dump(data or {}))

    def write_secrets(self, values):
        """``docker_secrets`` for every minion, as ciphertext (``#!yaml|gpg``)."""
        entries = [gpg.encrypt(self.gpg_public, value, name) for name, value in values.items()]
        text = "#!yaml|gpg\ndocker_secrets:\n" + "".join(entries)
        (self.pillar_root / "secrets.sls").write_text(text)

    def paths(self, minion_id):
        home = self.pillar_root.parent / "files" / minion_id
        return {
            "daemon_json": home / "etc-docker" / "daemon.json",
            "registry_config": home / "root-docker" / "config.json",
        }


def _base_pillar(root, minion_ids):
    common = yaml.safe_load((REPO_ROOT / "pillar" / "docker.sls").read_text())
    docker = common.setdefault("docker", {})
    docker["storage"] = {"mode": "none"}
    docker["install"] = {"manage": False}
    docker["service"] = {"manage": False}
    (root / "common.sls").write_text(yaml.safe_dump(common))
    top = {"base": {"*": ["common", "secrets"]}}
    for minion_id in minion_ids:
        top["base"][minion_id] = [f"paths-{minion_id}", f"node-{minion_id}"]
        (root / f"node-{minion_id}.sls").write_text("{}\n")
    (root / "top.sls").write_text(yaml.safe_dump(top))
    (root / "secrets.sls").write_text("docker_secrets: {}\n")


def _paths_pillar(env, minion_id):
    paths = env.paths(minion_id)
    data = {
        "docker": {
            "config_file": str(paths["daemon_json"]),
            "registry_config": str(paths["registry_config"]),
        }
    }
    (env.pillar_root / f"paths-{minion_id}.sls").write_text(yaml.safe_dump(data))


@contextlib.contextmanager
def running_moto():
    """moto in its own process on 127.0.0.1 (its state is per process); yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def _dockerd(stack, workdir, index, overlays):
    return stack.enter_context(
        running_dockerd(
            workdir / f"dockerd{index}",
            bridge=f"dh-c{index}",
            bridge_cidr=f"10.{221 + 2 * index}.0.1/24",
            address_pool=f"base=10.{222 + 2 * index}.0.0/16,size=24",
            namespace=f"dh-c{index}",
            env=AWS_TEST_CREDENTIALS,
            etc_overlays=overlays,
        )
    )


@contextlib.contextmanager
def running_env(
    minion_ids, registry_users=None, moto=False, minion_extra=None, minion_extra_by_id=None
):
    """Start everything; ``registry_users`` ({user: password}) adds a real registry;
    ``minion_extra`` is added to every minion's config, ``minion_extra_by_id`` to one's."""
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dh-env-")))
        registry = None
        overlays = None
        if registry_users:
            registry = stack.enter_context(
                registry_tools.running_registry(REGISTRY_NAME, REGISTRY_ADDRESS, registry_users)
            )
            overlays = registry_tools.etc_overlays(workdir, [registry])
        moto_url = stack.enter_context(running_moto()) if moto else None
        dockerds = {}
        for index, minion_id in enumerate(minion_ids):
            dockerds[minion_id] = _dockerd(stack, workdir, index, overlays)
            import_busybox(dockerds[minion_id], *LOCAL_IMAGES)
        gpg_home = workdir / "gpg"
        public = gpg.make_key(gpg_home)
        stack.callback(gpg.stop_agent, gpg_home)
        pillar_root = workdir / "pillar"
        pillar_root.mkdir()
        _base_pillar(pillar_root, minion_ids)
        # The repository's execution and state modules straight from the checkout: what
        # `saltutil.sync_all` (or a highstate) would copy, without a sync per test run.
        modules = {
            "module_dirs": [str(REPO_ROOT / "salt" / "_modules")],
            "states_dirs": [str(REPO_ROOT / "salt" / "_states")],
            "utils_dirs": [str(REPO_ROOT / "salt" / "_utils")],
        }
        minions = {
            minion_id: {
                "docker.url": dockerds[minion_id].url,
                **modules,
                **(minion_extra or {}),
                **(minion_extra_by_id or {}).get(minion_id, {}),
            }
            for minion_id in minion_ids
        }
        master_extra = {"gpg_keydir": str(gpg_home), "gpg_decrypt_must_succeed": True}
        nodes = stack.enter_context(running_salt(pillar_root, minions, master_extra))
        env = ContainerEnv(nodes, dockerds, pillar_root, public, registry, moto_url, overlays)
        for minion_id in minion_ids:
            _paths_pillar(env, minion_id)
        yield env
