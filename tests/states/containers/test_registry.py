"""
Registry credentials against a real registry (Debian's docker-registry: htpasswd with bcrypt,
TLS from a test CA, at a non-loopback address so Docker really verifies the certificate):
the password comes from GPG pillar; login is verified before it is stored (root-only file);
pulls use the stored credentials wherever registry_config puts them; a wrong password fails
naming the registry, keeps the stored credentials and leaves the registry's containers alone.
A tag pushed again is picked up by ``pull: always``, reported by ``test=True`` first, and
rolled over a class in batches (``salt -C 'I@node_class:…' -b 1``).
"""

import json
import os
import shutil
import stat

import pytest

from tests.states.containers.conftest import (
    NODE1,
    NODE2,
    REGISTRY_USER,
    changed,
    converge,
    failed,
)
from tools.images import import_busybox
from tools.registry import push

pytestmark = pytest.mark.states


def app_pillar(env, pull="missing"):
    registry = env.registry
    return {
        "node_class": "appserver",
        "docker": {
            "registries": {
                registry.host: {
                    "username": REGISTRY_USER,
                    "password": {"secret": "registry_password"},
                }
            },
            "containers": {
                "app": {
                    "image": registry.image("app:1"),
                    "command": ["httpd", "-f", "-p", "8080"],
                    "init": True,
                    "environment": {"TOKEN": {"secret": "token"}},
                    "pull": pull,
                }
            },
        },
    }


@pytest.fixture(scope="module")
def pushed(env, secret_values):
    password = secret_values["registry_password"]
    push(
        env.dockerds[NODE1],
        env.registry,
        "busybox:latest",
        "app:1",
        username=REGISTRY_USER,
        password=password,
    )
    yield env
    for minion in (NODE1, NODE2):
        env.write_pillar(minion, {})
        dockerd = env.dockerds[minion]
        for name in dockerd.container_names():
            dockerd.cli("rm", "-f", name)


def test_login_pull_and_run_with_a_gpg_pillar_password(pushed, secret_values):
    env = pushed
    env.write_pillar(NODE1, app_pillar(env))
    code, states, output = env.salt.apply(NODE1, "docker")
    assert code == 0, output[-3000:]
    login = changed(states)[f"docker-registry-{env.registry.host}"]["credentials"]
    assert login == {
        "registry": env.registry.host,
        "username": REGISTRY_USER,
        "password": "**********",
    }
    assert "docker-image-" + env.registry.image("app:1") in changed(states)
    assert env.dockerds[NODE1].inspect("app")["State"]["Running"]

    # Stored where registry_config says (not root's ~/.docker), root-only.
    config = env.paths(NODE1)["registry_config"]
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(config.parent).st_mode) == 0o700
    assert env.registry.host in json.loads(config.read_text())["auths"]
    log = env.salt.minion_log(NODE1).read_text()
    for secret in ("registry_password", "token"):
        assert secret_values[secret] not in output
        assert secret_values[secret] not in log
    assert changed(converge(env, NODE1)) == {}


def test_wrong_password_fails_naming_the_registry_and_changes_nothing(pushed, secret_values):
    env = pushed
    config = env.paths(NODE1)["registry_config"]
    stored = config.read_bytes()
    app = env.dockerds[NODE1].inspect("app")["Id"]
    data = app_pillar(env)
    data["docker"]["containers"]["app"]["labels"] = {"would": "re-create"}
    env.write_pillar(NODE1, data)
    env.write_secrets({**secret_values, "registry_password": "wrong-password"})
    try:
        states = converge(env, NODE1, ok=False)
    finally:
        env.write_secrets(secret_values)
    errors = failed(states)
    login_error = errors[f"docker-registry-{env.registry.host}"]
    assert f"login to registry {env.registry.host} as 'deploy' failed" in login_error
    assert "401 Unauthorized" in login_error
    assert "docker-container-app" in errors  # its requisite failed: not touched
    assert config.read_bytes() == stored
    assert env.dockerds[NODE1].inspect("app")["Id"] == app
    env.write_pillar(NODE1, app_pillar(env))


def test_the_registry_certificate_is_verified(pushed, secret_values):
    env = pushed
    ca = env.etc_overlays["/etc/docker"] / "certs.d" / env.registry.host / "ca.crt"
    aside = ca.with_suffix(".aside")
    shutil.move(ca, aside)
    try:
        _, _, output = env.salt.salt(
            NODE1,
            "docker_containers.login",
            env.registry.host,
            REGISTRY_USER,
            secret_values["registry_password"],
        )
    finally:
        shutil.move(aside, ca)
    assert "certificate signed by unknown authority" in output


def test_moved_tag_is_reported_then_rolled_out_in_batches(pushed, secret_values):
    env = pushed
    for minion in (NODE1, NODE2):
        env.write_pillar(minion, app_pillar(env, pull="always"))
        converge(env, minion)
    old = env.dockerds[NODE1].inspect("app")["Image"]
    # A new image under the same tag.
    import_busybox(env.dockerds[NODE1], "busybox:v2")
    push(
        env.dockerds[NODE1],
        env.registry,
        "busybox:v2",
        "app:1",
        username=REGISTRY_USER,
        password=secret_values["registry_password"],
    )

    states = converge(env, NODE2, "test=True", ok=False)
    image_state = changed(states)["docker-image-" + env.registry.image("app:1")]
    assert image_state["image"]["new"].startswith("sha256:")
    assert changed(states)["docker-container-app"]["recreated"]["image"]["new"] == "moved tag"
    assert env.dockerds[NODE2].inspect("app")["Image"] == old  # nothing touched

    # Minions match I@ against the pillar in their memory: refresh it (as after any change of
    # node class) or they ignore the batch's first ping.
    env.salt.salt("*", "saltutil.refresh_pillar", "wait=True")
    code, _, output = env.salt.salt(
        "I@node_class:appserver", "state.apply", "docker", tgt_type="compound", batch=1
    )
    assert code == 0, output[-3000:]
    # One minion per batch, one after the other.
    assert output.count("Executing run on") == 2, output[-3000:]
    new = {minion: env.dockerds[minion].inspect("app") for minion in (NODE1, NODE2)}
    assert {c["Image"] for c in new.values()} != {old}
    assert new[NODE1]["Image"] == new[NODE2]["Image"]
    assert all(c["State"]["Running"] for c in new.values())
    # No-op afterwards, though the policy pulls every run.
    assert changed(converge(env, NODE1)) == {}


def registry_requests(env, path):
    """Lines of the registry's access log that ask for ``path`` (a repository)."""
    log = (env.registry.workdir / "registry.log").read_text()
    return [line for line in log.splitlines() if f"/v2/{path}/" in line]


def test_pull_never_pulls_nothing_even_when_the_image_is_missing(pushed, secret_values):
    env = pushed
    push(
        env.dockerds[NODE1],
        env.registry,
        "busybox:latest",
        "never:1",
        username=REGISTRY_USER,
        password=secret_values["registry_password"],
    )
    pushed_requests = len(registry_requests(env, "never"))
    assert pushed_requests, "the registry's access log shows no push: cannot see pulls either"
    data = app_pillar(env)
    data["docker"]["containers"]["never"] = {
        **data["docker"]["containers"]["app"],
        "image": env.registry.image("never:1"),
        "pull": "never",
    }
    env.write_pillar(NODE1, data)
    states = converge(env, NODE1, ok=False)
    errors = failed(states)
    image = env.registry.image("never:1")
    assert errors == {
        f"docker-image-{image}": f"image {image} is not on this host and pull is never",
        "docker-container-never": "One or more requisite failed: "
        f"docker.containers.docker-image-{image}",
    }, errors
    assert len(registry_requests(env, "never")) == pushed_requests
    assert "never" not in env.dockerds[NODE1].container_names()
    env.write_pillar(NODE1, app_pillar(env))
