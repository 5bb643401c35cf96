"""The master tier: a salt-master started exactly as the README says (`salt-master -c .` from the
root of a fresh copy of the repository, its own `master` file), the real salt-cloud against the
local EC2 endpoint, and salt-minions on this host that salt-cloud's SSH deploy starts (through
a local sshd), so `salt-cloud -p` → reactor → highstate runs for real without a VM.

The copy changes only test data, never `master`: the pillar (storage, install and service off,
daemon.json under the node's own directory: the minions run on this host; no containers; a
class `workers`), a profile that deploys through the local sshd, and the deploy script
(tests/master/deploy_host_minion.sh).
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tools import checkout_master, ec2_endpoint, sshd

TIER_DIR = Path(__file__).resolve().parent
DEPLOY_SUBNET_CIDR = "127.0.30.0/28"
# A subnet in another zone, for a replace that restores a snapshot there.
OTHER_ZONE_SUBNET_CIDR = "127.0.30.16/28"
# moto hands out a /28's addresses from its fourth (AWS reserves the first four and the last);
# sshd listens on at most 16 addresses: 11 here, 5 in the other zone.
DEPLOY_ADDRESSES = [f"127.0.30.{host}" for host in [*range(4, 15), *range(20, 25)]]
PROFILE = "test-backends"
WORKERS_PROFILE = "test-workers"
DATA_PROFILE = "test-dataserver"
OTHER_ZONE_DATA_PROFILE = "test-dataserver-other-zone"
# Nodes whose name starts with this get a pillar whose highstate fails (daemon.json in /proc).
BROKEN_PREFIX = "broken"

TEST_PILLAR = """\
# Test pillar (tests/master/conftest.py): the minions run on the test host itself.
docker:
  storage:
    mode: none
  install:
    manage: false
  service:
    manage: false
{%- if opts.id.startswith("BROKEN") %}
  config_file: /proc/dockerhosts-test/daemon.json
{%- else %}
  config_file: NODES/{{ opts.id }}/etc/docker/daemon.json
{%- endif %}
  registry_config: NODES/{{ opts.id }}/root/.docker/config.json
  config:
    log-driver: json-file
    log-opts:
      max-size: 10m
      max-file: "3"
docker.update_mine: false
"""


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(TIER_DIR):
            item.add_marker(pytest.mark.master)


@pytest.fixture(scope="package")
def work_dir():
    # Short: the master's and minions' Unix sockets live below it.
    path = Path(tempfile.mkdtemp(prefix="dhm-", dir="/tmp"))
    yield path
    if not os.environ.get("DOCKERHOSTS_KEEP_TEST_DIR"):  # keep it to debug a failure
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="package")
def client_key(work_dir):
    return sshd.generate_key(work_dir / "id_ed25519")


@pytest.fixture(scope="package")
def clone(work_dir):
    root = checkout_master.copy_checkout(work_dir / "repo")
    nodes = work_dir / "nodes"
    nodes.mkdir()
    pillar = TEST_PILLAR.replace("NODES", str(nodes)).replace("BROKEN", BROKEN_PREFIX)
    (root / "pillar" / "docker.sls").write_text(pillar)
    # The classes' containers need a dockerd, which these nodes have not; `workers` is the
    # ensure_class tests' own class (one folder: docs/lifecycle.md).
    for node_class in ("backends", "workers", "dataserver"):
        folder = root / "pillar" / "classes" / node_class
        folder.mkdir(exist_ok=True)
        (folder / "init.sls").write_text("docker: {}\n")
    return root


@pytest.fixture(scope="package")
def endpoint(clone, client_key):
    local = ec2_endpoint.start(clone, public_key=client_key[1].read_text())
    try:
        zone = ec2_endpoint.provider_names(clone)["zone"]
        other_zone = local.ids["other_zone"] = zone[:-1] + ("b" if zone[-1] != "b" else "c")
        for key, cidr, in_zone in (
            ("deploy_subnet", DEPLOY_SUBNET_CIDR, zone),
            ("other_zone_subnet", OTHER_ZONE_SUBNET_CIDR, other_zone),
        ):
            local.ids[key] = local.client("ec2").create_subnet(
                VpcId=local.ids["loopback_vpc"], CidrBlock=cidr, AvailabilityZone=in_zone
            )["Subnet"]["SubnetId"]
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="package")
def ssh_server(work_dir, client_key):
    server = sshd.start(work_dir / "sshd", DEPLOY_ADDRESSES, authorized_key=client_key[1])
    yield server
    server.stop()


@pytest.fixture(scope="package")
def test_profile(clone, endpoint, ssh_server, client_key, work_dir):
    profile = {
        PROFILE: {
            "extends": "backends",
            "subnetid": endpoint.ids["deploy_subnet"],
            "ssh_interface": "private_ips",
            "ssh_username": "root",
            "private_key": str(client_key[0]),
            "ssh_port": ssh_server.port,
            "script": str(clone / "tests" / "master" / "deploy_host_minion.sh"),
            "script_args": f"{work_dir / 'nodes'} {checkout_master.BIN_DIR}",
            "minion": {"master": "127.0.0.1"},
            "display_ssh_output": False,
            "wait_for_passwd_maxtries": 3,
            "ssh_connect_timeout": 5,
        },
        # A class of its own for the ensure_class orchestration.
        WORKERS_PROFILE: {"extends": PROFILE, "class": "workers"},
        # The data class: its Docker volume outlives the node (node.replace moves it).
        DATA_PROFILE: {
            "extends": PROFILE,
            "class": "dataserver",
            "docker_volume": {"Ebs": {"DeleteOnTermination": False}},
        },
        OTHER_ZONE_DATA_PROFILE: {
            "extends": DATA_PROFILE,
            "subnetid": endpoint.ids["other_zone_subnet"],
            "availability_zone": endpoint.ids["other_zone"],
        },
    }
    (clone / "cloud.profiles.d" / "zz-test.conf").write_text(yaml.safe_dump(profile))
    return PROFILE


@pytest.fixture(scope="package")
def master(clone, endpoint, test_profile, work_dir):
    env = {
        "PATH": f"{checkout_master.BIN_DIR}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(work_dir),
        "LANG": "C.UTF-8",
        **endpoint.env(),
    }
    server = checkout_master.CheckoutMaster(clone, env=env).start()
    try:
        yield server
    finally:
        # Every minion a test or a deploy started on this host, by its pid file.
        for pidfile in (work_dir / "nodes").glob("*/var/run/salt-minion.pid"):
            checkout_master.HostMinion(work_dir / "nodes", pidfile.parents[3].name).stop()
        with contextlib.suppress(Exception):
            ec2_endpoint.terminate_live(endpoint.client("ec2"))
        server.stop()


@pytest.fixture(scope="package")
def checkout(master, clone, work_dir, endpoint):
    """What the tests use: the master, the copy, the nodes' directory, EC2."""
    return SimpleNamespace(
        master=master,
        root=clone,
        nodes=work_dir / "nodes",
        ec2=endpoint.client("ec2"),
        pki=clone / ".salt" / "etc" / "salt" / "pki" / "master",
        cachedir=clone / ".salt" / "var" / "cache" / "salt" / "master",
        env=master.env,
    )
