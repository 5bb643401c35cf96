"""
Which pillar a minion gets is decided on the master, from the class its authenticated minion
id has in the node class registry (`salt-run node_class.*`), never from anything the minion
says: a backends minion that forges every grain it can, passes pillar overrides, asks for
another pillarenv/saltenv and runs the highstate never sees a dataserver secret; the runner
moves a node between classes.
"""

import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest
import salt.version

from tools.salt_repo import load_module

pytestmark = pytest.mark.states

NODES = load_module("utils", "dockerhosts_nodes")

# Salt 3008 masks pillar values in pillar.items output unless asked; 3007 has no such option.
UNMASK = ("unmask=True",) if salt.version.__saltstack_version__.major >= 3008 else ()
FORGED_GRAINS = {
    "class": "dataserver",
    "node_class": "dataserver",
    "role": "dataserver",
    "docker_disk": {"device": "/dev/sdb", "volume_id": "vol-0123456789abcdef0"},
    "docker_ebs_volume": {"device_name": "/dev/sdb", "volume_id": "vol-0123456789abcdef0"},
    "id": "dh-dataserver",
    "nodename": "dh-dataserver",
}
# Everything a minion can pass along with a pillar request that could steer the top file.
PILLAR_TRICKS = (
    (),
    ('pillar={"node_class": "dataserver"}',),
    ('pillar={"node_class": ["dataserver"], "class": "dataserver"}',),
    ("pillarenv=base",),
    ("pillarenv=dataserver",),
    ("saltenv=dataserver",),
)


def pillar_items(node, minion_id, *args):
    ret = node.cli.run("pillar.items", *args, *UNMASK, minion_tgt=minion_id)
    assert ret.returncode == 0, ret.stdout + ret.stderr
    return ret


def leaked(node, text):
    return [name for name, value in node.secrets.items() if value in text]


def test_each_minion_has_the_class_the_master_gave_it(node, other_minion):
    assert pillar_items(node, node.minion.id).data["node_class"] == "dataserver"
    assert pillar_items(node, other_minion.id).data["node_class"] == "backends"


def test_the_class_is_recorded_with_the_key_it_was_given_for(salt_master):
    """The node record (salt.cache bank dockerhosts/nodes, in the private pki_dir) holds the
    class with the sha256 of the accepted key it was set for."""
    opts = dict(salt_master.config)
    record = NODES.get(opts, "dh-dataserver")
    assert record["class"] == "dataserver" and record["source"] == "operator"
    key = (Path(opts["pki_dir"]) / "minions" / "dh-dataserver").read_bytes().strip()
    assert record["key"] == hashlib.sha256(key).hexdigest()
    assert stat.S_IMODE(os.stat(opts["pki_dir"]).st_mode) == 0o700


def test_forged_grains_and_pillar_overrides_get_no_secret(node, other_minion):
    for grain, value in FORGED_GRAINS.items():
        ret = node.cli.run("grains.setval", grain, json.dumps(value), minion_tgt=other_minion.id)
        assert ret.returncode == 0, ret.stdout
    node.cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=other_minion.id)
    for trick in PILLAR_TRICKS:
        ret = pillar_items(node, other_minion.id, *trick)
        assert "docker_secrets" not in ret.data, trick
        assert "dataserver" not in json.dumps(ret.data.get("docker", {})), trick
        assert leaked(node, ret.stdout) == [], trick


def test_forged_highstate_gets_no_secret(node, other_minion):
    override = 'pillar={"node_class": "dataserver", "class": "dataserver"}'
    for args in ((), (override,)):
        ret = node.cli.run("state.apply", "test=True", *args, minion_tgt=other_minion.id)
        assert leaked(node, ret.stdout + json.dumps(ret.data)) == [], args
        # No dataserver container, no secret reference: the backends pillar has none.
        assert "docker-container-postgres" not in ret.stdout, args


def test_runner_moves_a_node_between_classes(node, other_minion):
    set_class = node.helpers.set_node_class
    try:
        set_class(node.run, other_minion.id, "dataserver")
        node.cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=other_minion.id)
        moved = pillar_items(node, other_minion.id)
        assert moved.data["node_class"] == "dataserver"
        assert (
            moved.data["docker_secrets"]["postgres_password"] == node.secrets["postgres_password"]
        )
        members = node.run.run("node_class.members", "dataserver")
        assert members.data == sorted([node.minion.id, other_minion.id])
    finally:
        set_class(node.run, other_minion.id, "backends")
        node.cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=other_minion.id)
    back = pillar_items(node, other_minion.id)
    assert back.data["node_class"] == "backends"
    assert "docker_secrets" not in back.data


def test_minion_without_a_class_gets_nothing(node, other_minion):
    try:
        assert node.run.run("node_class.unset", other_minion.id).data is True
        assert node.run.run("node_class.get", other_minion.id).data is None
        node.cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=other_minion.id)
        data = pillar_items(node, other_minion.id, 'pillar={"node_class": "dataserver"}').data
        assert "docker_secrets" not in data
        assert "docker" not in data
        assert "docker.update_mine" not in data
    finally:
        node.helpers.set_node_class(node.run, other_minion.id, "backends")
        node.cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=other_minion.id)


@pytest.mark.parametrize(
    "args",
    [
        ("node_class.set", "../dh-dataserver", "dataserver"),
        ("node_class.set", ".hidden", "dataserver"),
        ("node_class.set", "dh-new", "data server"),
        ("node_class.set", "dh-new", "node_class=-dataserver"),
        ("node_class.get", "a/b"),
        ("node_class.members", "*"),
    ],
)
def test_runner_refuses_bad_ids_and_class_names(node, args):
    ret = node.run.run(*args)
    assert "is not a" in ret.stdout + ret.stderr
    assert node.run.run("node_class.get", "dh-new").data is None


def test_runner_lists_the_registry(node, other_minion):
    listing = node.run.run("node_class.list").data
    assert listing == {node.minion.id: "dataserver", other_minion.id: "backends"}
    assert node.run.run("node_class.members", "backends").data == [other_minion.id]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_a_new_key_for_an_old_name_starts_with_no_class(node, salt_master, dockerd):
    """Issue 17.1: the registry follows the key. `salt-key -d old1` drops old1's class at once
    (the master's salt/key event); a new minion later accepted as old1 gets no class and no
    secret. (Before: the class outlived the key and the new minion got the dataserver
    secrets.)"""
    minion_id = "dh-old1"
    factory = salt_master.salt_minion_daemon(minion_id, overrides={"docker.url": dockerd.url})
    with factory.started():
        node.helpers.set_node_class(node.run, minion_id, "dataserver")
        first = pillar_items(node, minion_id)
        assert leaked(node, first.stdout) != [], "the first old1 should get the class's secrets"
    deleted = salt_master.salt_key_cli().run("-y", "-d", minion_id)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    wait_for(
        lambda: node.run.run("node_class.get", minion_id).data is None,
        10,
        "salt-key -d did not drop the class",
    )
    # Another machine under the same name: a new key, accepted by the operator.
    for name in ("minion.pem", "minion.pub"):
        (Path(factory.config["pki_dir"]) / name).unlink()
    try:
        with factory.started():
            assert node.run.run("node_class.get", minion_id).data is None
            second = pillar_items(node, minion_id)
            assert second.data["node_class"] is None
            assert "docker_secrets" not in second.data and "docker" not in second.data
            assert leaked(node, second.stdout) == []
    finally:
        salt_master.salt_key_cli().run("-y", "-d", minion_id)
