"""
Data outlives containers (issue 7): the shipped dataserver class keeps its database on the
named volume ``pgdata``; the recipe's data-only container pattern with an anonymous volume
keeps it too, because a re-created container gets its predecessor's anonymous volumes.
A marker written into the database directory survives changes to the data container
(label, env, image tag), two converges and a forced re-create of ``postgres``; a change that
would put another volume where an anonymous one holds data is refused, saying how to move.
"""

import copy
from pathlib import Path

import pytest
import yaml

from tests.states.containers.conftest import NODE2, changed, converge, failed
from tools.images import import_busybox

pytestmark = pytest.mark.states

REPO_ROOT = Path(__file__).resolve().parents[3]
MARKER = "/var/lib/postgresql/data/marker"


def dataserver_pillar():
    """The dataserver class's pillar with busybox standing in for postgres and json-file logs."""
    data = yaml.safe_load(
        (REPO_ROOT / "pillar" / "classes" / "dataserver" / "init.sls").read_text()
    )
    data.pop("include")  # its secrets: the test's own
    postgres = data["docker"]["containers"]["postgres"]
    postgres["command"] = ["httpd", "-f", "-p", "5432", "-h", "/"]
    postgres["init"] = True
    postgres["log_driver"] = "json-file"
    postgres["log_opt"] = {"max-size": "1m"}
    postgres["port_bindings"] = ["127.0.0.1:25432:5432"]
    return data


def anonymous_pattern():
    """The recipe's pattern: the database in the data-only container's anonymous volume."""
    data = dataserver_pillar()
    del data["docker"]["volumes"]
    pg_data = data["docker"]["containers"]["pg_data"]
    del pg_data["binds"]
    pg_data["volumes"] = ["/var/lib/postgresql"]
    return data


@pytest.fixture
def node(env):
    import_busybox(env.dockerds[NODE2], "busybox:1.36")
    yield env
    env.write_pillar(NODE2, {})
    dockerd = env.dockerds[NODE2]
    for name in dockerd.container_names():
        dockerd.cli("rm", "-f", name)
    dockerd.cli("volume", "prune", "-f")
    dockerd.cli("volume", "rm", "-f", "pgdata")


def write_marker(env):
    env.dockerds[NODE2].cli(
        "exec",
        "postgres",
        "sh",
        "-c",
        f"mkdir -p {MARKER.rsplit('/', 1)[0]} && echo kept > {MARKER}",
    )


def marker(env):
    return env.dockerds[NODE2].cli("exec", "postgres", "cat", MARKER).strip()


def change_data_container(env, data):
    before = env.dockerds[NODE2].inspect("pg_data")
    data["docker"]["containers"]["pg_data"].update(
        labels={"changed": "label"}, environment={"CHANGED": "env"}, image="busybox:1.36"
    )
    env.write_pillar(NODE2, data)
    states = converge(env, NODE2)
    assert "docker-container-pg_data" in changed(states)
    after = env.dockerds[NODE2].inspect("pg_data")
    assert after["Id"] != before["Id"] and after["Image"] != before["Image"]
    assert changed(converge(env, NODE2)) == {}  # the second converge is a no-op
    assert marker(env) == "kept"


def force_recreate_postgres(env, data):
    forced = copy.deepcopy(data)
    forced["docker"]["containers"]["postgres"]["force"] = True
    env.write_pillar(NODE2, forced)
    before = env.dockerds[NODE2].inspect("postgres")["Id"]
    converge(env, NODE2)
    assert env.dockerds[NODE2].inspect("postgres")["Id"] != before
    assert marker(env) == "kept"
    env.write_pillar(NODE2, data)


def test_shipped_dataserver_keeps_its_database_on_a_named_volume(node):
    data = dataserver_pillar()
    node.write_pillar(NODE2, data)
    converge(node, NODE2)
    mounts = node.dockerds[NODE2].inspect("postgres")["Mounts"]
    assert [(m["Name"], m["Destination"]) for m in mounts] == [("pgdata", "/var/lib/postgresql")]
    pg_data = node.dockerds[NODE2].inspect("pg_data")
    assert pg_data["State"]["StartedAt"].startswith("0001-01-01")  # start: false
    write_marker(node)
    change_data_container(node, data)
    force_recreate_postgres(node, data)


def test_data_only_container_with_anonymous_volume_keeps_the_data(node):
    data = anonymous_pattern()
    node.write_pillar(NODE2, data)
    converge(node, NODE2)
    volume = node.dockerds[NODE2].inspect("pg_data")["Mounts"][0]["Name"]
    write_marker(node)
    change_data_container(node, data)
    assert node.dockerds[NODE2].inspect("pg_data")["Mounts"][0]["Name"] == volume
    force_recreate_postgres(node, data)


def test_moving_an_anonymous_volume_elsewhere_is_refused(node):
    node.write_pillar(NODE2, anonymous_pattern())
    converge(node, NODE2)
    write_marker(node)
    before = node.dockerds[NODE2].inspect("pg_data")["Id"]
    node.write_pillar(NODE2, dataserver_pillar())  # pg_data now binds the named volume
    states = converge(node, NODE2, ok=False)
    message = failed(states)["docker-container-pg_data"]
    assert "re-creating pg_data would detach it from anonymous volume" in message
    assert "/var/lib/postgresql" in message and "cp -a" in message
    assert node.dockerds[NODE2].inspect("pg_data")["Id"] == before
    assert marker(node) == "kept"
