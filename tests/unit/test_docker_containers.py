"""
docker_containers execution module and states without a Docker daemon: image names and
registries, the config hash, drift decisions from an inspection, which volumes a re-create
carries over or refuses, secret resolution and masking, what a failure says, the restart of a
Docker that holds a port for no container. The loader's dunders come from
``configure_loader_modules`` (pytest-salt-factories).
"""

from types import SimpleNamespace

import docker.errors
import pytest
from salt.exceptions import CommandExecutionError

from tools.salt_repo import load_module

HASH_LABEL = "docker-hosts.config-hash"
VOLUME = "a" * 64
MODULE = load_module("modules", "docker_containers")
STATES = load_module("states", "docker_containers")
SECRETS = load_module("utils", "dockerhosts_secrets")
UTILS = {f"dockerhosts_secrets.{name}": getattr(SECRETS, name) for name in ("resolve", "masked")}


@pytest.fixture
def configure_loader_modules():
    salt = {
        "docker_containers.failure": MODULE.failure,
        "config.option": lambda key, default=None: default,
    }
    return {
        MODULE: {"__context__": {}, "__salt__": dict(salt), "__opts__": {"test": False}},
        STATES: {
            "__salt__": salt,
            "__utils__": UTILS,
            "__opts__": {"test": False},
            "__pillar__": {},
        },
    }


@pytest.fixture
def mod():
    return MODULE


@pytest.fixture
def states():
    return STATES


@pytest.mark.parametrize(
    ("image", "split", "registry"),
    [
        ("busybox", ("busybox", "latest"), "docker.io"),
        ("busybox:1.36", ("busybox", "1.36"), "docker.io"),
        ("library/postgres:16", ("library/postgres", "16"), "docker.io"),
        (
            "registry.example.com:5000/app",
            ("registry.example.com:5000/app", "latest"),
            "registry.example.com:5000",
        ),
        (
            "registry.example.com/team/app:2",
            ("registry.example.com/team/app", "2"),
            "registry.example.com",
        ),
        ("localhost/app:1", ("localhost/app", "1"), "localhost"),
        ("app@sha256:" + "b" * 64, ("app@sha256:" + "b" * 64, None), "docker.io"),
    ],
)
def test_image_names(mod, image, split, registry):
    assert mod.split_image(image) == split
    assert mod.registry_of(image) == registry


def test_config_hash_changes_with_anything_the_pillar_says(mod):
    base = mod.config_hash("busybox:latest", {"environment": {"A": "1"}}, {}, True)
    assert base == mod.config_hash("busybox:latest", {"environment": {"A": "1"}}, {}, True)
    others = {
        mod.config_hash("busybox:1.36", {"environment": {"A": "1"}}, {}, True),
        mod.config_hash("busybox:latest", {"environment": {"A": "2"}}, {}, True),
        mod.config_hash("busybox:latest", {"environment": {"A": "1"}}, {"net": {}}, True),
        mod.config_hash("busybox:latest", {"environment": {"A": "1"}}, {}, False),
    }
    assert base not in others and len(others) == 4


def _container(**overrides):
    container = {
        "Id": "c" * 64,
        "Image": "sha256:" + "1" * 64,
        "Config": {"Labels": {HASH_LABEL: "h"}},
        "HostConfig": {"RestartPolicy": {"Name": "always", "MaximumRetryCount": 0}, "Memory": 0},
        "NetworkSettings": {"Networks": {"bridge": {}}},
        "State": {"Running": True, "Paused": False, "Status": "running"},
        "Mounts": [],
    }
    container.update(overrides)
    return container


def _desired(**overrides):
    desired = {
        "hash": "h",
        "networks": {},
        "start": True,
        "host": {},
        "host_config": {"RestartPolicy": {"Name": "always"}},
    }
    desired.update(overrides)
    return desired


def test_nothing_to_do(mod):
    found = mod.drift(_container(), _desired(), "sha256:" + "1" * 64)
    assert found == {"recreate": {}, "update": {}, "start": False}


def test_drift_reasons(mod):
    container = _container(
        Config={"Labels": {}},
        HostConfig={"RestartPolicy": {"Name": "no"}, "Memory": 67108864, "MemorySwap": 134217728},
        State={"Running": False, "Status": "exited"},
    )
    found = mod.drift(container, _desired(networks={"backend": {}}), "sha256:" + "2" * 64)
    assert set(found["recreate"]) == {"config", "image", "networks"}
    assert found["update"]["RestartPolicy"] == {"old": "no", "new": "always"}
    assert found["update"]["Memory"] == {"old": 67108864, "new": None}
    assert found["start"] is True
    # A limit cannot be lifted in place: re-create.
    assert mod.update_args(found["update"], _desired()) is None
    assert mod.update_args({"RestartPolicy": {}}, _desired()) == {
        "restart_policy": {"Name": "always"}
    }


def test_docker_default_swap_is_not_drift(mod):
    container = _container(
        HostConfig={"RestartPolicy": {"Name": "always"}, "Memory": 100, "MemorySwap": 200}
    )
    desired = _desired(host_config={"RestartPolicy": {"Name": "always"}, "Memory": 100})
    assert mod.drift(container, desired, None)["update"] == {}


def test_start_false_never_asks_for_a_start(mod):
    container = _container(State={"Running": False, "Status": "created"})
    assert mod.drift(container, _desired(start=False), None)["start"] is False


def _mount(name, where):
    return {"Type": "volume", "Name": name, "Destination": where, "RW": True}


def test_anonymous_volumes_are_carried_named_ones_are_not(mod):
    old = _container(Mounts=[_mount(VOLUME, "/data"), _mount("pgdata", "/db")])
    assert mod.carried_volumes("app", old, _desired()) == [f"{VOLUME}:/data:rw"]


def test_putting_something_else_over_an_anonymous_volume_is_refused(mod):
    old = _container(Mounts=[_mount(VOLUME, "/var/lib/postgresql")])
    desired = _desired(host={"binds": ["pgdata:/var/lib/postgresql"]})
    with pytest.raises(CommandExecutionError, match="would detach it from anonymous volume"):
        mod.carried_volumes("pg_data", old, desired)


def test_secrets_resolved_and_masked(states):
    used = []
    states.__pillar__["docker_secrets"] = {"pw": "s3cret", "long": "s3cret-and-more"}
    value = {"env": {"A": {"secret": "pw"}, "B": {"secret": "long"}}, "list": [{"secret": "pw"}]}
    resolved = states._resolve(value, used)
    assert resolved == {"env": {"A": "s3cret", "B": "s3cret-and-more"}, "list": ["s3cret"]}
    masked = SECRETS.masked({"comment": "B=s3cret-and-more A=s3cret"}, used)
    assert masked == {"comment": "B=********** A=**********"}
    assert SECRETS.masked({"s3cret": ("x", "s3cret")}, used) == {"**********": ["x", "**********"]}
    unchanged = {"comment": "nothing secret", "list": ("a",)}
    assert SECRETS.masked(unchanged, []) is unchanged
    assert SECRETS.masked(unchanged, ["", None]) is unchanged
    with pytest.raises(KeyError, match="'nope' is not in pillar docker_secrets"):
        states._resolve({"secret": "nope"}, [])


def test_a_refused_login_is_reported_without_the_password(states, tmp_path):
    def refuse(registry, username, password):
        raise CommandExecutionError(f"{registry}: {username}/{password} refused")

    states.__pillar__["docker_secrets"] = {"registry_pw": "pa55-word"}
    states.__salt__.update(
        {
            "docker_containers.stored_auth": lambda registry, path: None,
            "docker_containers.login": refuse,
        }
    )
    ret = states.registry_login(
        "registry.example.com", "ci", {"secret": "registry_pw"}, str(tmp_path / "config.json")
    )
    assert ret["result"] is False
    assert ret["comment"] == "registry.example.com: ci/********** refused"


def test_image_pull_policy_is_the_images_own_else_the_most_eager_containers(mod):
    containers = {
        "a": {"image": "one:1", "pull": "never"},
        "b": {"image": "two:1", "pull": "never"},
        "c": {"image": "two:1"},
        "d": {"image": "three:1", "pull": "always"},
        "e": {"image": "three:1", "pull": "never"},
        "f": {"image": "four:1", "pull": "always"},
    }
    images = {"four:1": {"pull": "never"}, "five:1": None}
    assert mod.image_states(images, containers) == {
        "one:1": {"pull": "never"},
        "two:1": {"pull": "missing"},
        "three:1": {"pull": "always"},
        "four:1": {"pull": "never"},
        "five:1": {},
    }


class FakeDocker:
    """The part of docker.APIClient start_container uses; the first start fails like a dockerd
    that kept a port allocated for no container since it was killed."""

    def __init__(self, publishers=()):
        self.calls = []
        self.publishers = list(publishers)
        self.starts_failing = 1

    def start(self, container_id):
        self.calls.append(("start", container_id))
        if self.starts_failing:
            self.starts_failing -= 1
            response = SimpleNamespace(status_code=500, reason="Server Error", url="u")
            raise docker.errors.APIError(
                "500",
                response=response,
                explanation="driver failed programming external connectivity on endpoint pg "
                "(0123): Bind for 127.0.0.1:15432 failed: port is already allocated",
            )

    def containers(self, filters=None, **kwargs):
        if filters:
            return [{"Id": "other", "Names": [f"/{name}"]} for name in self.publishers]
        return [{"Id": "web"}, {"Id": "db"}]

    def ping(self):
        return True


def test_a_port_docker_holds_for_no_container_restarts_a_managed_docker(mod):
    fake = FakeDocker()
    restarted = []
    mod.__context__["docker_containers.client"] = fake
    mod.__salt__["service.restart"] = lambda name: restarted.append(name) or True
    desired = {"host_config": {}, "docker_service": "docker"}
    mod.start_container("pg-id", "pg", desired)
    assert restarted == ["docker"]
    # The containers that ran before the restart run again, then this one starts.
    assert fake.calls == [("start", "pg-id"), ("start", "web"), ("start", "db"), ("start", "pg-id")]
    assert mod.__context__["docker_containers.docker_restarted"] == (
        "docker restarted: it held 127.0.0.1:15432 for no container since a crash"
    )


def test_a_port_docker_holds_unmanaged_or_another_container_publishes_it_is_reported(mod):
    mod.__context__["docker_containers.client"] = FakeDocker()
    with pytest.raises(CommandExecutionError, match=r"restart Docker .systemctl restart docker."):
        mod.start_container("pg-id", "pg", {"host_config": {}, "docker_service": None})
    mod.__context__["docker_containers.client"] = FakeDocker(publishers=["other-db"])
    mod.__salt__["service.restart"] = pytest.fail
    with pytest.raises(CommandExecutionError, match=r"container pg failed to start: .*allocated"):
        mod.start_container("pg-id", "pg", {"host_config": {}, "docker_service": "docker"})


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            docker.errors.DockerException("Error while fetching server API version"),
            "container web: unexpected DockerException: Error while fetching server API version",
        ),
        (
            CommandExecutionError("pulling x failed:\n  denied"),
            "pulling x failed: denied",
        ),
    ],
)
def test_every_failure_is_one_line(mod, error, said):
    assert mod.failure(error, "container web").startswith(said)


def test_docker_away_says_where_and_what_to_do(mod):
    import requests.exceptions  # noqa: PLC0415

    try:
        try:
            raise requests.exceptions.ConnectionError("('Connection aborted.', refused)")
        except requests.exceptions.ConnectionError as cause:
            raise docker.errors.DockerException(
                "Error while fetching server API version"
            ) from cause
    except docker.errors.DockerException as error:
        said = mod.failure(error, "image busybox:latest")
    assert said == (
        "image busybox:latest: Docker is not reachable at unix://var/run/docker.sock "
        "(ConnectionError): start Docker (systemctl start docker), then apply the state again"
    )


def test_unhealthy_names_what_does_not_run_healthy_and_waits_for_a_deciding_check(monkeypatch):
    """What node.replace checks on a new node: every container the pillar starts runs, and
    its health check (if any) says healthy; a check still `starting` is waited for."""
    inspections = {
        "db": [
            {"State": {"Running": True, "Health": {"Status": "starting"}}},
            {"State": {"Running": True, "Health": {"Status": "healthy"}}},
        ],
        "web": [{"State": {"Running": True}}],
        "cron": [{"State": {"Running": False, "Status": "exited", "ExitCode": 3}}],
    }
    pillar = {
        "docker": {"containers": {"db": {}, "web": None, "cron": {}, "data": {"start": False}}}
    }
    monkeypatch.setattr(MODULE, "__pillar__", pillar, raising=False)
    # Each container's inspections in turn, the last one for good.
    seen = inspections.copy()
    monkeypatch.setattr(
        MODULE, "inspect_container", lambda n: seen[n].pop(0) if len(seen[n]) > 1 else seen[n][0]
    )
    monkeypatch.setattr(MODULE.time, "sleep", lambda seconds: None)
    assert MODULE.unhealthy(wait=0.5) == {"cron": "not running (exited, exit code 3)"}
    del pillar["docker"]["containers"]["cron"]
    assert MODULE.unhealthy(wait=0) == {}
    assert MODULE._health_problem(None) == "missing"
    assert (
        MODULE._health_problem({"State": {"Running": True, "Health": {"Status": "unhealthy"}}})
        == "unhealthy"
    )
