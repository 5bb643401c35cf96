"""
Containers are found by their exact name, never by an ID prefix: Docker resolves a name it does
not know as the prefix of a container ID (``docker inspect c23`` returns ``c231839b…`` when no
container is named ``c23``), so a pillar container named only with hex letters (``db``,
``cafe``, ``c23``) could be taken for an unrelated container.

Container IDs are random, so the hex names here are taken from unrelated containers' IDs (2, 3
and 4 characters, as ``db``, ``c23``, ``cafe``): each pillar name is, when the highstate starts,
the unique ID prefix of a container that is not in pillar.
"""

import pytest

from tests.states.containers.conftest import NODE1, changed, converge

pytestmark = pytest.mark.states
PREFIX_LENGTHS = (2, 3, 4)


def _unique_prefixes(ids):
    """One ID prefix per length in PREFIX_LENGTHS, each matching exactly one of ``ids``."""
    prefixes = []
    for length in PREFIX_LENGTHS:
        for container_id in ids:
            prefix = container_id[:length]
            taken = prefix in prefixes or any(p.startswith(prefix) for p in prefixes)
            if not taken and sum(i.startswith(prefix) for i in ids) == 1:
                prefixes.append(prefix)
                break
    return prefixes if len(prefixes) == len(PREFIX_LENGTHS) else None


@pytest.fixture(scope="module")
def others(env):
    """Unrelated containers (not in pillar), running, and hex names that prefix their IDs."""
    dockerd = env.dockerds[NODE1]
    ids = []
    for index in range(12):
        ids.append(
            dockerd.cli(
                "run", "-d", "--init", "--name", f"unrelated{index}", "busybox:latest",
                "sleep", "600",
            ).strip()
        )  # fmt: skip
        prefixes = _unique_prefixes(ids)
        if prefixes:
            break
    assert prefixes, ids
    owners = {prefix: next(i for i in ids if i.startswith(prefix)) for prefix in prefixes}
    yield owners
    env.write_pillar(NODE1, {})
    for name in dockerd.container_names():
        dockerd.cli("rm", "-f", name)


def _named(dockerd, name):
    """The ID of the container named exactly ``name``."""
    listed = dockerd.cli("ps", "-a", "--filter", f"name=^/{name}$", "--format", "{{.ID}}")
    assert len(listed.split()) == 1, f"no container named {name}: {listed!r}"
    return listed.strip()


def _snapshot(dockerd, container_ids):
    found = {}
    for container_id in container_ids:
        info = dockerd.inspect(container_id)
        found[container_id] = (info["Name"], info["State"]["StartedAt"], info["State"]["Running"])
    return found


def test_hex_named_containers_are_created_and_id_prefixes_untouched(env, others):
    dockerd = env.dockerds[NODE1]
    before = _snapshot(dockerd, others.values())
    web = {"image": "busybox:latest", "command": ["httpd", "-f", "-p", "8080"], "init": True}
    containers = {prefix: dict(web) for prefix in others}
    # volumes_from an ID prefix: the state must not read the unrelated container's mounts.
    first = next(iter(others))
    containers[first]["volumes_from"] = [next(p for p in others if p != first)]
    env.write_pillar(NODE1, {"docker": {"containers": containers}})

    states = converge(env, NODE1)

    for prefix, owner in others.items():
        created = changed(states)[f"docker-container-{prefix}"]["container"]
        assert created["old"] is None, created
        info = dockerd.inspect(_named(dockerd, prefix))
        assert info["Id"] != owner
        assert info["State"]["Running"]
    # Nothing else re-created, renamed, stopped or restarted.
    assert _snapshot(dockerd, others.values()) == before
    assert changed(converge(env, NODE1)) == {}
