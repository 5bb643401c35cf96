"""
The container state on a real master, minion and dockerd: a no-op run inspects and creates
nothing (no temporary container: dockerd's own event log says so); every drift is corrected
and reported; an interrupted replacement is finished by the next run; ``start: false``
creates without starting; secrets stay out of the output and the minion's debug log.
"""

import json

import pytest

from tests.states.containers.conftest import NODE1, changed, converge, failed, states_of

pytestmark = pytest.mark.states

WEB = {
    "image": "busybox:latest",
    "command": ["httpd", "-f", "-p", "8080"],
    "environment": {"TOKEN": {"secret": "token"}, "MODE": "test"},
    "labels": {"role": "web"},
    "restart_policy": "always",
    "volumes": ["/srv/data"],
    # PID 1 without an init ignores SIGTERM: every stop would wait 10 s.
    "init": True,
}
DATA_ONLY = {"image": "busybox:latest", "command": ["true"], "start": False}


def pillar(**containers):
    return {"docker": {"containers": containers}}


@pytest.fixture(scope="module")
def node(env):
    env.write_pillar(NODE1, pillar(web=WEB, web2={**WEB, "labels": {"n": "2"}}, data=DATA_ONLY))
    yield env
    env.write_pillar(NODE1, {})
    dockerd = env.dockerds[NODE1]
    for name in dockerd.container_names():
        dockerd.cli("rm", "-f", name)


def docker(env, *args):
    return env.dockerds[NODE1].cli(*args)


def inspect(env, name):
    return env.dockerds[NODE1].inspect(name)


def container_changes(states, name):
    return changed(states).get(f"docker-container-{name}")


def test_first_run_creates_then_second_changes_nothing(node, secret_values):
    states = converge(node, NODE1)
    assert set(changed(states)) >= {"docker-container-web", "docker-container-web2"}
    web = inspect(node, "web")
    assert web["State"]["Running"]
    assert f"TOKEN={secret_values['token']}" in web["Config"]["Env"]
    assert web["Config"]["Labels"]["role"] == "web"
    assert "docker-hosts.config-hash" in web["Config"]["Labels"]

    since = docker(node, "system", "info", "--format", "{{.SystemTime}}").strip()
    states = converge(node, NODE1)
    assert changed(states) == {}
    until = docker(node, "system", "info", "--format", "{{.SystemTime}}").strip()
    events = docker(node, "events", "--since", since, "--until", until, "--format", "{{json .}}")
    kinds = [json.loads(line)["Action"] for line in events.splitlines()]
    # A no-op creates, starts and removes nothing (saltext.dockermod made one container per
    # state and removed it again).
    assert not {"create", "destroy", "start", "rename"} & set(kinds), kinds


def test_start_false_creates_and_never_starts(node):
    data = inspect(node, "data")
    assert data["State"]["Status"] == "created"
    assert data["State"]["StartedAt"].startswith("0001-01-01")


def test_stopped_container_is_started(node):
    docker(node, "stop", "web")
    states = converge(node, NODE1)
    assert container_changes(states, "web")["state"] == {"old": "exited", "new": "running"}
    assert inspect(node, "web")["State"]["Running"]


def test_removed_container_is_created_again(node):
    docker(node, "rm", "-f", "web")
    states = converge(node, NODE1)
    assert container_changes(states, "web")["container"]["old"] is None
    assert inspect(node, "web")["State"]["Running"]


def test_container_recreated_by_hand_is_replaced(node, secret_values):
    docker(node, "rm", "-f", "web")
    docker(
        node, "run", "-d", "--name", "web", "-e", "TOKEN=other", "busybox:latest", "sleep", "300"
    )
    states = converge(node, NODE1)
    assert container_changes(states, "web")["recreated"]["config"] == "not made by us"
    web = inspect(node, "web")
    assert f"TOKEN={secret_values['token']}" in web["Config"]["Env"]
    assert web["Config"]["Cmd"] == ["httpd", "-f", "-p", "8080"]


def test_restart_policy_changed_by_docker_update_is_restored(node):
    before = inspect(node, "web")["Id"]
    docker(node, "update", "--restart", "no", "web")
    states = converge(node, NODE1)
    assert container_changes(states, "web")["updated"]["RestartPolicy"] == {
        "old": "no",
        "new": "always",
    }
    web = inspect(node, "web")
    assert web["Id"] == before  # fixed in place
    assert web["HostConfig"]["RestartPolicy"]["Name"] == "always"


def test_memory_limit_added_by_docker_update_is_removed(node):
    docker(node, "update", "--memory", "64m", "--memory-swap", "128m", "web")
    states = converge(node, NODE1)
    assert "Memory" in container_changes(states, "web")["recreated"]
    assert inspect(node, "web")["HostConfig"]["Memory"] == 0


def test_tag_moved_to_another_image_recreates_its_containers(node):
    old = inspect(node, "web")["Image"]
    # Import the same root filesystem again: a new image id under the same tag.
    from tools.images import import_busybox  # noqa: PLC0415

    import_busybox(node.dockerds[NODE1], "busybox:latest")
    new = json.loads(docker(node, "image", "inspect", "busybox:latest"))[0]["Id"]
    assert new != old
    states = converge(node, NODE1, "test=True", ok=False)
    assert states_of((0, states, ""))
    would = {k for k, v in changed(states).items() if "recreated" in v}
    assert would == {"docker-container-web", "docker-container-web2", "docker-container-data"}
    assert inspect(node, "web")["Image"] == old  # test=True touched nothing
    states = converge(node, NODE1)
    assert container_changes(states, "web")["recreated"]["image"]["new"] == new[7:19]
    assert inspect(node, "web")["Image"] == new
    assert inspect(node, "data")["State"]["Status"] == "created"


def test_anonymous_volume_is_carried_over(node):
    docker(node, "exec", "web", "sh", "-c", "echo kept > /srv/data/marker")
    volume = next(m["Name"] for m in inspect(node, "web")["Mounts"])
    changed_web = {**WEB, "labels": {"role": "web", "v": "2"}}
    node.write_pillar(
        NODE1, pillar(web=changed_web, web2={**WEB, "labels": {"n": "2"}}, data=DATA_ONLY)
    )
    states = converge(node, NODE1)
    assert container_changes(states, "web")["volumes_kept"] == [volume[:12]]
    assert docker(node, "exec", "web", "cat", "/srv/data/marker").strip() == "kept"


def test_interrupted_replacement_is_finished(node):
    web = inspect(node, "web")
    # As if a run stopped after renaming the old container aside, before the new one was in.
    docker(node, "stop", "web")
    docker(node, "rename", "web", "web..previous")
    docker(node, "create", "--name", "web2..next", "busybox:latest", "true")
    states = converge(node, NODE1)
    assert container_changes(states, "web")["recovered"] == {"restored": "web"}
    assert container_changes(states, "web2")["recovered"] == {"removed": "web2..next"}
    assert inspect(node, "web")["Id"] == web["Id"]
    assert inspect(node, "web")["State"]["Running"]
    assert "web..previous" not in node.dockerds[NODE1].container_names()
    assert "web2..next" not in node.dockerds[NODE1].container_names()


def test_failed_start_keeps_the_old_container(node):
    before = inspect(node, "web")["Id"]
    # Without an init, Docker's start call itself fails on a missing program.
    broken = {**WEB, "labels": {"role": "web", "v": "2"}, "command": ["/no/such/program"]}
    broken["init"] = False
    node.write_pillar(NODE1, pillar(web=broken, web2={**WEB, "labels": {"n": "2"}}, data=DATA_ONLY))
    states = converge(node, NODE1, ok=False)
    assert "container web failed to start" in failed(states)["docker-container-web"]
    web = inspect(node, "web")
    assert web["Id"] == before and web["State"]["Running"]
    assert sorted(node.dockerds[NODE1].container_names()) == ["data", "web", "web2"]


def test_secrets_never_in_output_or_debug_log(node, secret_values):
    docker(node, "rm", "-f", "web")
    node.write_pillar(NODE1, pillar(web=WEB, web2={**WEB, "labels": {"n": "2"}}, data=DATA_ONLY))
    code, states, output = node.salt.apply(NODE1, "docker")
    assert code == 0
    assert secret_values["token"] not in output
    assert secret_values["token"] not in node.salt.minion_log(NODE1).read_text()
    assert secret_values["token"] not in json.dumps(states)
