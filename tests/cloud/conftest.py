"""The cloud tier: the real salt-cloud CLI, a real salt-master, moto on 127.0.0.1, sshd,
and fault-injecting proxies (tools/fault_proxy.py) in front of moto.

Every salt-cloud run has cwd = a temporary copy of the repository's salt-cloud config
(Saltfile, cloud, master, cloud.providers.d, cloud.profiles.d, salt/_clouds), so it reads
the repository's provider and profiles through the repository's Saltfile, and its
runtime state (.salt/) lands in the copy.  The copy adds only test plumbing: a profile
file for the deploy and error-path tests, and master ports of its own.  The fault tests
use another copy whose provider gives up sooner (FAULT_PROVIDER).
"""

from pathlib import Path

import pytest
import salt.config
import yaml

from tools import cloud_harness as harness
from tools import ec2_endpoint as ec2_endpoint_support
from tools import sshd
from tools.fault_proxy import FaultProxy
from tools.salt_repo import load_module

CloudCLI, SaltMaster = harness.CloudCLI, harness.SaltMaster
copy_config = harness.copy_config

DEPLOY_SUBNET_CIDR = "127.0.20.0/28"
# moto hands out a /28's addresses from .4 (AWS reserves the first four and the last), each
# once: at most 11 deploys per session.
DEPLOY_ADDRESSES = [f"127.0.20.{host}" for host in range(4, 15)]
REPO_ROOT = Path(__file__).resolve().parents[2]


PROFILE = load_module("utils", "dockerhosts_profile")
NODES = load_module("utils", "dockerhosts_nodes")


def class_node(node_class):
    """What the repository promises for a class's node: its profile (over `base`) and the
    Docker volume, the driver's defaults under the profile's docker_volume.  Tests quote
    these instead of restating sizes and device names."""
    profiles = yaml.safe_load((REPO_ROOT / "cloud.profiles.d" / "docker-hosts.conf").read_text())
    profile = PROFILE.deep_merge(profiles["base"], profiles[node_class])
    volume = PROFILE.deep_merge(PROFILE.DOCKER_VOLUME_DEFAULTS, profile.get("docker_volume", {}))
    return {"size": profile["size"], "volume": volume}


def node_record(cli, name):
    """The master's record of node `name` (dockerhosts_nodes, in the copy's pki dir), or None."""
    opts = {**salt.config.DEFAULT_MASTER_OPTS, "pki_dir": str(cli.pki_dir), "cache": "localfs"}
    return NODES.get(opts, name)


def left_on_master(cli, name):
    """Files on the master that name the node (keys, records, locks, cached data)."""
    return sorted(
        str(path.relative_to(cli.root))
        for path in (cli.root / ".salt").rglob("*")
        if name in path.name
    )


DEVICE = PROFILE.DOCKER_VOLUME_DEFAULTS["DeviceName"]
# The fault tests' provider: fewer botocore attempts, shorter waits (seconds).
FAULT_PROVIDER = {"max_attempts": 3, "cleanup_timeout": 30, "instance_wait_timeout": 60}
HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def ssh_client_key(tmp_path_factory):
    private, public = sshd.generate_key(tmp_path_factory.mktemp("client-key") / "id_ed25519")
    return private, public


@pytest.fixture(scope="session")
def ec2_endpoint(repo_root, ssh_client_key):
    endpoint = ec2_endpoint_support.start(repo_root, public_key=ssh_client_key[1].read_text())
    try:
        ec2 = endpoint.client("ec2")
        zone = ec2_endpoint_support.provider_names(repo_root)["zone"]
        endpoint.ids["deploy_subnet"] = ec2.create_subnet(
            VpcId=endpoint.ids["loopback_vpc"],
            CidrBlock=DEPLOY_SUBNET_CIDR,
            AvailabilityZone=zone,
        )["Subnet"]["SubnetId"]
        yield endpoint
    finally:
        endpoint.stop()


def _test_profiles(endpoint, client_key, sshd_port, tmp_dir):
    """Profiles only the tests use: deploy over SSH, and one per error path."""
    deploy = {
        "extends": "backends",
        "subnetid": endpoint.ids["deploy_subnet"],
        "ssh_interface": "private_ips",
        "ssh_username": "root",
        "private_key": str(client_key),
        "ssh_port": sshd_port,
        "script": str(HERE / "deploy_capture.sh"),
        "script_args": str(tmp_dir / "deployed"),
        "tmp_dir": str(tmp_dir / "remote-tmp"),
        "minion": {"master": "127.0.0.1"},
        "wait_for_passwd_maxtries": 3,
        # Keep the remote commands' output out of salt-cloud's (JSON) stdout.
        "display_ssh_output": False,
        "ssh_connect_timeout": 5,
    }
    return {
        "test-deploy": deploy,
        # Deploys, then sleeps in the deploy script: a window for signals.
        "test-deploy-slow": {**deploy, "script": str(HERE / "deploy_slow.sh")},
        "test-unknown-ami": {"extends": "backends", "image": "ami-00000000000000000"},
        "test-missing-iam-profile": {"extends": "backends", "iam_profile": "no-such-profile"},
        "test-bad-device": {"extends": "backends", "docker_volume": {"DeviceName": "/dev/sda"}},
        "test-aws-error": {"extends": "backends", "subnetid": "subnet-0000000000000000f"},
        "test-bad-key": {"extends": "backends", "docker_volume": {"Ebs": {"VolumeSize": "big"}}},
        "test-unknown-size": {"extends": "backends", "size": "t9.huge"},
        "test-spot": {
            "extends": "backends",
            "spot": {"max_price": "0.02", "interruption_behavior": "terminate"},
        },
        "test-protected": {"extends": "backends", "termination_protection": True},
        "test-no-class": {"extends": "base"},
        "test-device-clash": {
            "extends": "backends",
            "block_device_mappings": [{"DeviceName": DEVICE, "Ebs": {"VolumeSize": 1}}],
        },
        # Launches, then fails: moto's default VPC gives a 54.x/172.31.x address, which
        # the driver refuses to SSH to (it is not ours).  The instance must be terminated.
        "test-fails-after-launch": {
            "extends": "backends",
            "private_key": str(client_key),
            "ssh_interface": "public_ips",
        },
        # The same for a class whose Docker volume outlives its instance.
        "test-data-fails-after-launch": {
            "extends": "dataserver",
            "private_key": str(client_key),
            "ssh_interface": "public_ips",
        },
        # The same, giving up its clean-up after 3 s.
        "test-fails-after-launch-quick": {
            "extends": "backends",
            "private_key": str(client_key),
            "ssh_interface": "public_ips",
            "cleanup_timeout": 3,
        },
    }


@pytest.fixture(scope="session")
def cloud_root(repo_root, tmp_path_factory, ec2_endpoint, ssh_client_key, sshd_server):
    root = copy_config(tmp_path_factory.mktemp("cloud-root"), repo_root)
    work = tmp_path_factory.mktemp("deploy")
    (root / "cloud.profiles.d" / "zz-tests.conf").write_text(
        yaml.safe_dump(_test_profiles(ec2_endpoint, ssh_client_key[0], sshd_server.port, work))
    )
    return root


@pytest.fixture(scope="session")
def salt_master(cloud_root):
    """A real salt-master from the config copy: salt-cloud's events and key acceptance."""
    master = SaltMaster(cloud_root)
    try:
        yield master
    finally:
        master.stop()


@pytest.fixture(scope="session")
def cloud(cloud_root, ec2_endpoint, salt_master):
    cli = CloudCLI.for_endpoint(cloud_root, ec2_endpoint)
    yield cli
    # Nothing a test created may outlive the session, whatever happened.
    cli.terminate_all()


@pytest.fixture(scope="session")
def fault_cloud(repo_root, tmp_path_factory, ec2_endpoint, ssh_client_key, sshd_server):
    """salt-cloud from a config copy of its own (no master: nothing there needs one), with
    FAULT_PROVIDER; point it at a proxy with .via(proxy.url)."""
    root = harness.copy_config(
        tmp_path_factory.mktemp("fault-root"), repo_root, provider=FAULT_PROVIDER
    )
    work = tmp_path_factory.mktemp("fault-deploy")
    harness.write_profiles(
        root, _test_profiles(ec2_endpoint, ssh_client_key[0], sshd_server.port, work)
    )
    cli = CloudCLI.for_endpoint(root, ec2_endpoint)
    yield cli
    cli.terminate_all()


@pytest.fixture
def fault_proxy(ec2_endpoint):
    """A fresh proxy in front of the endpoint, stopped after the test."""
    proxies = []

    def make():
        proxies.append(FaultProxy(ec2_endpoint.url).start())
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory, ssh_client_key):
    server = sshd.start(
        tmp_path_factory.mktemp("sshd"), DEPLOY_ADDRESSES, authorized_key=ssh_client_key[1]
    )
    try:
        yield server
    finally:
        server.stop()
