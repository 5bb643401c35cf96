"""
Every value the pillar check accepts is accepted by the code that consumes it (issue 18.2): per
option, edge values on both sides of what the check allows go through the check as the render
calls it (docker_settings); each one it accepts then goes through its consumer for real, and
must be accepted there:

- container options: the container state's own path (docker_containers.spec, create, start)
  against a private dockerd; the container runs, then goes;
- networks and volumes: docker_containers.create_network / create_volume (the docker SDK)
  against the same dockerd;
- daemon.json: dockerd reading the file (the node's engine here has no --validate: it is
  started with the file, in a mount namespace of its own, with a pid file it cannot create,
  so that it stops right after its configuration checks).

Left out: what depends on what is inside an image (a user name) or on the host's services
(journald, syslog, awslogs), which the check cannot know at render; and what this test machine
cannot grant, as its root lacks capabilities a node's root has (runc: "unable to apply caps:
operation not permitted" for privileged: true and cap_add: [ALL], a negative oom_score_adj).
The counts are printed in the terminal summary.
"""

import contextlib
import json
import subprocess
import tempfile
import uuid
from pathlib import Path

import docker
import pytest
from salt.exceptions import CommandExecutionError

from tests.states import corpus
from tools.dockerd import running_dockerd
from tools.images import import_busybox

pytestmark = pytest.mark.states
BASE = {"image": "busybox:latest", "command": ["sleep", "60"], "init": True}
TRIED = corpus.CONSUMER_TRIED  # printed in the terminal summary (tests/states/conftest.py)

CONTAINER_EDGES = {
    "restart_policy": [
        "no", "always", "unless-stopped", "on-failure", "on-failure:0", "on-failure:999999999",
        "on-failure:1000000000", "on-failure:99999999999", "on-failure:-1", "always:3",
    ],
    "mem_limit": [0, "6m", 6291456, 6291455, "5m", "1g", "1.5g", -1, "1x"],
    "mem_reservation": ["6m", "5m", 0],
    "cpu_shares": [0, 1, 2, 1024, 262144, 262145],
    "cpu_period": [999, 1000, 100000, 1000000, 1000001],
    "cpu_quota": [-1, 999, 1000, 50000],
    "nano_cpus": [10000000, 500000000, 1000000000000],
    "cpuset_cpus": ["0", "0-0", "99", "0-99"],
    "oom_score_adj": [-1001, 0, 1000, 1001],
    "mem_swappiness": [-1, 0, 100, 101],
    "shm_size": ["0", "64m", 1, "64 q"],
    "pids_limit": [-1, 0, 100],
    "blkio_weight": [9, 10, 1000, 1001],
    "environment": [
        {"A": "b"}, {"A B": "c"}, {"A=B": "c"}, {"A": 1}, {"A": 1.5}, {"A": True},
        ["A=b"], ["A"], ["A B=c"], {"secret": "x"},
    ],
    "labels": [{"a": "b"}, {"a": 1}, {"a": True}, {"": "x"}, ["a=b"]],
    "log_opt": [
        {"max-size": "1"}, {"max-size": "1k"}, {"max-size": "10m"}, {"max-size": "1.5m"},
        {"max-size": "10 m"}, {"max-size": "0"}, {"max-size": "10x"}, {"max-size": "1GiB"},
        {"max-size": "10m", "max-file": "3"}, {"max-size": "10m", "max-file": "0"},
        {"compress": "true"}, {"compress": "yes"}, {"mode": "non-blocking"}, {"tag": "x"},
        {"awslogs-group": "x"},
    ],
    "log_driver": ["json-file", "local", "none", "splunky"],
    "port_bindings": [
        ["127.0.0.1:18080:80"], ["127.0.0.1::80"], ["127.0.0.1:65535:80"],
        ["127.0.0.1:65536:80"], ["127.0.0.1:0:80"], ["127.0.0.1:18090-18091:90-91"],
        ["127.0.0.1:18092-18093:92"], {"80": 18094},
    ],
    "cap_add": [["NET_ADMIN"], ["CAP_NET_ADMIN"], ["NET_ADMINS"]],
    "sysctls": [{"net.ipv4.ip_forward": "1"}, {"kernel.shmmax": "1000000"}, {"kernel.panic": "1"}],
    "ulimits": [["nofile=1024:2048"], ["nofile=2048:1024"], ["nofile=1024"], ["nofile"]],
    "user": ["0", "1000", "1000:1000", 0],
    "working_dir": ["/app", "/", "app"],
    "hostname": ["web", "web.example", "a" * 63, ["a"]],
    "stop_signal": ["SIGTERM", "SIGKILL", "9", "SIGFOO"],
    "stop_timeout": [0, 10, 1.5],
    "dns": [["8.8.8.8"], ["::1"], ["not-an-ip"]],
    "extra_hosts": [["db:10.0.0.1"], {"db": "10.0.0.1"}, ["db:999.0.0.1"]],
    "tmpfs": [["/run"], {"/run": "size=64k"}],
    "security_opt": [["no-new-privileges"], ["no-new-privileges:true"]],
    "volumes": [["/data"], ["/data:ro"], ["data"]],
    "binds": [["probe-volume:/data"], ["/tmp:/host-tmp:ro"], None],
    "read_only": [True, "true"],
    "privileged": ["false"],
    "init": [True, 1],
}  # fmt: skip
# Options that only together say something.
COMBINATIONS = [
    {"mem_limit": "64m", "memswap_limit": "128m"},
    {"mem_limit": "64m", "memswap_limit": "32m"},
    {"mem_limit": "64m", "memswap_limit": -1},
    {"memswap_limit": "64m"},
    {"mem_limit": "64m", "mem_reservation": "128m"},
    {"nano_cpus": 500000000, "cpu_quota": 50000},
    {"networks": ["probe-net"], "network_mode": "bridge"},
]
NETWORK_EDGES = [
    {"driver": "bridge"},
    {"driver": "macvlan"},
    {"driver": "ipvlan"},
    {"driver": "weave"},
    {"internal": True, "labels": {"a": "b"}},
    {"options": {"com.docker.network.bridge.enable_icc": "false"}},
    {"options": {"com.docker.network.bridge.enable_icc": False}},
    {"ipam": {"pool_configs": [{"subnet": "10.231.0.0/24", "gateway": "10.231.0.1"}]}},
    {"ipam": {"pool_configs": [{"subnet": "10.232.0.0/24", "iprange": "10.232.0.128/25"}]}},
    {"ipam": {"pool_configs": [{"subnet": "10.233.0.0/24", "gateway": "10.234.0.1"}]}},
    {"ipam": {"pool_configs": [{"subnet": "10.235.0.1/24"}]}},
    {"ipam": {"pool_configs": [{"subnet": "10.236.0.0/33"}]}},
    {"ipam": {"pool_configs": [{"subnet": "fd00:10::/64"}]}, "enable_ipv6": True},
]  # fmt: skip
VOLUME_EDGES = [
    {"driver": "local"},
    {"driver": "local", "driver_opts": {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}},
    {"labels": {"a": "b"}},
    {"driver": "nfs"},
    {"driver_opts": {"o": 1}},
]
DAEMON_EDGES = [
    {"log-level": "info"}, {"log-level": "verbose"}, {"debug": True}, {"debug": "true"},
    {"live-restore": True}, {"mtu": 0}, {"mtu": 1500}, {"mtu": -1},
    {"default-cgroupns-mode": "private"}, {"default-cgroupns-mode": "shared"},
    {"default-ipc-mode": "shareable"}, {"default-ipc-mode": "host"},
    {"shutdown-timeout": 15}, {"max-concurrent-downloads": 0}, {"max-concurrent-downloads": 3},
    {"registry-mirrors": ["https://mirror.example.com"]},
    {"registry-mirrors": ["http://mirror.example.com"]},
    {"insecure-registries": ["registry.example.com:5000"]},
    {"features": {"buildkit": True}}, {"features": {"cdi": False}}, {"features": {"bogus": True}},
    {"log-driver": "local"}, {"log-driver": "splunky"}, {"icc": False}, {"labels": ["a=b"]},
    {"dns": ["8.8.8.8"]}, {"default-shm-size": "64M"}, {"oom-score-adjust": -500},
    {"no-new-privileges": True}, {"userland-proxy": False},
]  # fmt: skip


@pytest.fixture
def configure_loader_modules():
    return corpus.loader_modules()


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory):
    with running_dockerd(
        tmp_path_factory.mktemp("check-dockerd"),
        bridge="dh-chk0",
        bridge_cidr="10.229.0.1/24",
        address_pool="base=10.230.0.0/16,size=24",
        namespace="dh-chk",
    ) as daemon:
        import_busybox(daemon, "busybox:latest")
        yield daemon


@pytest.fixture
def consumer(dockerd):
    """docker_containers as the state runs it, talking to the test dockerd."""
    module = corpus.MODULES["containers"]
    module.__context__["docker_containers.client"] = docker.APIClient(
        base_url=dockerd.url, version="auto"
    )
    return module


def _checked(pillar):
    try:
        return corpus.check(pillar)
    except CommandExecutionError:
        return None


def _count(kind, consumer_name, accepted, failure):
    entry = TRIED.setdefault(kind, {"tried": 0, "refused": 0, "both": 0, "consumer": consumer_name})
    entry["tried"] += 1
    entry["refused"] += accepted is None
    entry["both"] += accepted is not None and failure is None


def _run_container(consumer, name, options):
    """Create and start container ``name`` as the container state does, then remove it."""
    image = options.pop("image")
    networks = options.pop("networks", None)
    desired = consumer.spec(image, options, networks=networks)
    try:
        consumer.create(name, desired)
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            consumer.client().remove_container(name, force=True, v=True)


def _edges():
    for option, values in CONTAINER_EDGES.items():
        for value in values:
            yield {option: value}
    yield from COMBINATIONS


def test_every_container_option_value_the_check_accepts_docker_accepts(consumer):
    consumer.client().create_network("probe-net")
    refused_by_docker = []
    for options in _edges():
        pillar = {"docker": {"containers": {"probe": {**BASE, **options}}}}
        accepted = _checked(pillar)
        failure = None
        if accepted is not None:
            settings = accepted["containers"]["probe"]
            own = ("pull", "start", "force", "shutdown_timeout")
            docker_options = {k: v for k, v in settings.items() if k not in own}
            try:
                _run_container(consumer, f"probe-{uuid.uuid4().hex[:8]}", docker_options)
            except Exception as error:  # any refusal by the consumer counts
                failure = " ".join(str(error).split())[:300]
                refused_by_docker.append((options, failure))
        _count("container options", "docker_containers + dockerd", accepted, failure)
    consumer.client().remove_network("probe-net")
    assert not refused_by_docker, "\n".join(map(str, refused_by_docker))


def test_every_network_and_volume_the_check_accepts_docker_creates(consumer):
    refused_by_docker = []
    for kind, edges in (("network", NETWORK_EDGES), ("volume", VOLUME_EDGES)):
        for options in edges:
            name = f"probe-{uuid.uuid4().hex[:8]}"
            accepted = _checked({"docker": {f"{kind}s": {name: options}}})
            failure = None
            if accepted is not None:
                try:
                    getattr(consumer, f"create_{kind}")(name, accepted[f"{kind}s"][name])
                except Exception as error:  # any refusal by the consumer counts
                    failure = " ".join(str(error).split())[:300]
                    refused_by_docker.append((kind, options, failure))
                finally:
                    api = consumer.client()
                    with contextlib.suppress(docker.errors.APIError):
                        api.remove_network(name) if kind == "network" else api.remove_volume(name)
            _count(f"{kind}s", "the docker SDK + dockerd", accepted, failure)
    assert not refused_by_docker, "\n".join(map(str, refused_by_docker))


def _dockerd_reads(config):
    """What dockerd says of ``config`` when it starts with it (None: accepted). It runs in a
    mount namespace of its own and stops at its pid file, right after its configuration."""
    with tempfile.TemporaryDirectory(prefix="dh-daemon-json-") as name:
        work = Path(name)
        (work / "daemon.json").write_text(json.dumps(config))
        (work / "file").write_text("")
        command = [
            "unshare", "--mount", "--propagation", "private",
            "dockerd", "--config-file", str(work / "daemon.json"),
            "--pidfile", str(work / "file" / "dockerd.pid"),
            "--data-root", str(work / "data"), "--exec-root", str(work / "exec"),
            "--host", f"unix://{work / 'docker.sock'}",
        ]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    said = [line for line in proc.stderr.splitlines() if "level=info" not in line]
    if any("failed to start daemon" in line and "not a directory" in line for line in said):
        return None
    return " ".join(" ".join(said).split())[:300] or f"exit {proc.returncode}"


def test_every_daemon_json_the_check_accepts_dockerd_reads():
    refused_by_docker = []
    for config in DAEMON_EDGES:
        accepted = _checked({"docker": {"config": config}})
        failure = None
        if accepted is not None:
            written = corpus.MODULES["host"].daemon_json({**accepted, "storage": {"mode": "none"}})
            failure = _dockerd_reads(written)
            if failure:
                refused_by_docker.append((config, failure))
        _count("daemon.json", "dockerd", accepted, failure)
    assert not refused_by_docker, "\n".join(map(str, refused_by_docker))
