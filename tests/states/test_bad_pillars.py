"""
Smoke tests of the bad-pillar corpus (bad_pillars.yaml) against the real thing; every entry
is refused by the check as the render calls it in tests/unit/test_bad_pillars.py. Here:

- the entries marked `render: true` through `salt-call --local state.show_sls docker` (the
  check is wired into every SLS: rendering fails, naming the key);
- the entries marked `highstate: true` through `salt <node> state.apply pillar=...` on the real
  master + minion + dockerd: non-zero exit, no state ran, and the node is unchanged
  (containers, networks, volumes, daemon.json, the registry config, the disk).

The fraction refused before any change is printed in the terminal summary.
"""

import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.states import corpus
from tests.states.test_disk import loop_device

pytestmark = pytest.mark.states

SALT_CALL = str(Path(sys.executable).with_name("salt-call"))
ENTRIES = corpus.entries()
HIGHSTATE = [entry for entry in ENTRIES if entry.get("highstate")]
RENDER_SAMPLE = [entry for entry in ENTRIES if entry.get("render")]
REFUSED = corpus.REFUSED


@pytest.fixture(scope="module")
def render_config(tmp_path_factory, repo_root):
    """A masterless Debian 12 minion of the dataserver class, with plain test secrets."""
    base = tmp_path_factory.mktemp("corpus-render")
    pillar = base / "pillar"
    shutil.copytree(repo_root / "pillar", pillar)
    (pillar / "classes" / "dataserver" / "secrets.sls").write_text(
        yaml.safe_dump({"docker_secrets": corpus.TEST_SECRETS})
    )
    config = {
        "id": "corpus-render",
        "file_client": "local",
        "root_dir": str(base),
        "file_roots": {"base": [str(repo_root / "salt")]},
        "pillar_roots": {"base": [str(pillar)]},
        "grains": {"os_family": "Debian", "os": "Debian", "osrelease": "12"},
        # A masterless minion's class (pillar/top.sls through node_record.class_of).
        "node_class": "dataserver",
    }
    (base / "minion").write_text(yaml.safe_dump(config))
    assert salt_call(base, "saltutil.sync_all").returncode == 0
    return base


def salt_call(config_dir, *args):
    return subprocess.run(
        [SALT_CALL, "-c", str(config_dir), "--local", "--out", "json", *args],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def renders(render_config):
    def render(entry):
        pillar = f"pillar={json.dumps(entry['pillar'])}"
        args = ("state.show_sls", "docker", pillar, "concurrent=True")
        return entry["id"], salt_call(render_config, *args)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(render, RENDER_SAMPLE))


@pytest.mark.parametrize("entry", RENDER_SAMPLE, ids=[e["id"] for e in RENDER_SAMPLE])
def test_render_refuses(renders, entry):
    proc = renders[entry["id"]]
    errors = json.loads(proc.stdout)["local"] if proc.stdout.strip() else proc.stderr
    text = "\n".join(errors) if isinstance(errors, list) else str(errors)
    REFUSED["render"].append(proc.returncode != 0 and entry["expect"] in text)
    assert proc.returncode != 0
    assert entry["expect"] in text
    assert "bad pillar, nothing was changed" in text


# --- the highstate on the real master + minion ------------------------------------------


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """A blank loop device given to every highstate below as docker:storage:docker_volume."""
    with loop_device(tmp_path_factory.mktemp("corpus-disk") / "disk.img") as device:
        yield device


def digest(path):
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read(4 * 1024 * 1024)).hexdigest()
    except FileNotFoundError:
        return None


def node_state(node, disk):
    docker = node.dockerd.cli
    return {
        "containers": docker("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}"),
        "networks": docker("network", "ls", "-q", "--no-trunc"),
        "volumes": docker("volume", "ls", "-q"),
        "daemon.json": digest(node.paths["daemon_json"]),
        "registry config": digest(node.paths["registry_config"]),
        "disk": digest(disk),
    }


@pytest.mark.parametrize("entry", HIGHSTATE, ids=[e["id"] for e in HIGHSTATE])
def test_highstate_refuses_before_any_change(node, disk, entry):
    override = corpus.with_override(
        {"docker": {"storage": {"docker_volume": disk}}}, entry["pillar"]
    )
    before = node_state(node, disk)
    ret = node.cli.run(
        "state.apply", f"pillar={json.dumps(override)}", minion_tgt=node.minion.id, _timeout=240
    )
    after = node_state(node, disk)
    # A render error: Salt returns the list of errors, no state result at all.
    no_state_ran = not isinstance(ret.data, dict)
    refused = ret.returncode != 0 and no_state_ran and before == after
    REFUSED["highstate"].append(refused)
    assert ret.returncode != 0
    assert entry["expect"] in "\n".join(ret.data if no_state_ran else [ret.stdout])
    assert no_state_ran, ret.stdout
    assert after == before
