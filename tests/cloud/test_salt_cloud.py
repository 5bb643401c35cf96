"""salt-cloud with the boto3_ec2 driver, end to end: real CLI, local EC2 endpoint, sshd.

What EC2 holds afterwards is checked with boto3, not through the driver.
"""

import hashlib
import json
import os
import queue
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from tools import cloud_harness as harness

from .conftest import DEVICE, class_node, left_on_master, node_record

pytestmark = pytest.mark.cloud


def tags_of(resource):
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def assert_docker_node(cloud, name, node_class):
    """The node as the profiles describe it, read back from EC2."""
    instance = cloud.instance(name)
    promised = class_node(node_class)
    ebs = promised["volume"]["Ebs"]
    assert instance["InstanceType"] == promised["size"]
    assert tags_of(instance) == {
        "Name": name,
        "class": node_class,
        "container": "docker",
        "docker_volume": DEVICE,
    }
    assert instance["KeyName"] == "docker-hosts"
    assert [group["GroupName"] for group in instance["SecurityGroups"]] == ["docker-hosts"]
    assert instance["IamInstanceProfile"]["Arn"].endswith(":instance-profile/docker-host-minimal")
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["MetadataOptions"]["HttpEndpoint"] == "enabled"
    assert instance["Placement"]["AvailabilityZone"] == "eu-west-1a"
    disks = {m["DeviceName"]: m["Ebs"] for m in instance["BlockDeviceMappings"]}
    assert list(disks) == [DEVICE]
    # A dataserver's Docker volume outlives the node; a backend's goes with it.
    assert disks[DEVICE]["DeleteOnTermination"] is ebs["DeleteOnTermination"]
    assert ebs["DeleteOnTermination"] is (node_class != "dataserver")
    volume = cloud.volume(disks[DEVICE]["VolumeId"])
    assert volume["Size"] == ebs["VolumeSize"]
    assert volume["VolumeType"] == ebs["VolumeType"]
    assert volume["Encrypted"] is ebs["Encrypted"] is True
    assert tags_of(volume) == {
        "Name": name,
        "class": node_class,
        "node": name,
        "role": "docker_volume",
    }
    return instance, volume


def output(result):
    return result.stdout + result.stderr


@pytest.mark.parametrize("node_class", ["backends", "dataserver"])
def test_profile_creates_the_class_node_once_and_destroy_removes_it(cloud, node_class):
    name = f"{node_class}-p1"
    created = cloud.json("-p", node_class, name, "--no-deploy")[name]
    instance, volume = assert_docker_node(cloud, name, node_class)
    assert created["instance_id"] == instance["InstanceId"]
    assert created["class"] == node_class
    ids = {"volume_id": volume["VolumeId"], "data_id": volume["VolumeId"]}
    assert created["docker_volume"] == {"device_name": DEVICE, **ids}
    # The master's record of the node: its class, instance, zone and data volume.
    record = node_record(cloud, name)
    assert (record["class"], record["state"], record["source"]) == (
        node_class,
        "launched",
        "salt-cloud",
    )
    assert record["instance_id"] == instance["InstanceId"]
    assert record["availability_zone"] == "eu-west-1a"
    assert record["data_volumes"] == [{**ids, "device_name": DEVICE, "role": "docker_volume"}]

    # Again: salt-cloud says it exists and EC2 still holds exactly one such node.
    again = cloud.run("-p", node_class, name, "--no-deploy")
    assert again.returncode == 0, output(again)
    assert f"already exists: {instance['InstanceId']} (running)" in output(again)
    assert cloud.instance(name)["InstanceId"] == instance["InstanceId"]

    destroyed = cloud.json("-d", name, "-y")["aws"]["boto3_ec2"][name]
    assert destroyed["state"] == "terminated"
    assert cloud.instances(name) == []
    gone = cloud.ec2().describe_instances(InstanceIds=[instance["InstanceId"]])
    assert gone["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    volumes = cloud.ec2().describe_volumes(
        Filters=[{"Name": "volume-id", "Values": [volume["VolumeId"]]}]
    )["Volumes"]
    if node_class == "dataserver":  # kept, and destroy says where
        assert [v["State"] for v in volumes] == ["available"]
        [kept] = destroyed["kept_volumes"]
        assert kept == {
            "volume_id": volume["VolumeId"],
            "device_name": DEVICE,
            "availability_zone": "eu-west-1a",
            "snapshot_id": kept["snapshot_id"],
        }
        [snapshot] = cloud.ec2().describe_snapshots(SnapshotIds=[kept["snapshot_id"]])["Snapshots"]
        assert snapshot["VolumeId"] == volume["VolumeId"]
        assert snapshot["Description"] == f"{name} docker_volume: before destroy"
        cloud.run("-f", "purge_volume", "aws", f"volume_id={volume['VolumeId']}")
    else:  # DeleteOnTermination: the Docker volume goes with the instance, no snapshot
        assert volumes == []
        assert "kept_volumes" not in destroyed
        snapshots = cloud.ec2().describe_snapshots(
            OwnerIds=["self"], Filters=[{"Name": "tag:node", "Values": [name]}]
        )["Snapshots"]
        assert snapshots == []
    # Nothing is left on the master: no record, no key, no lock file.
    assert left_on_master(cloud, name) == []


@pytest.fixture(scope="module")
def two_nodes(cloud):
    """web1 (backends) and db1 (dataserver), created by two salt-cloud runs at once."""
    runs = {
        "web1": cloud.popen("-p", "backends", "web1", "--no-deploy"),
        "db1": cloud.popen("-p", "dataserver", "db1", "--no-deploy"),
    }
    for name, process in runs.items():
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, f"{name}: {out}{err}"
    yield {name: cloud.instance(name)["InstanceId"] for name in runs}
    if cloud.instances("web1") or cloud.instances("db1"):
        cloud.run("-d", "web1", "db1", "-y")


def test_query_lists_nodes(cloud, two_nodes):
    nodes = cloud.json("-Q")["aws"]["boto3_ec2"]
    for name, instance_id in two_nodes.items():
        assert nodes[name]["id"] == instance_id
        assert nodes[name]["state"] == "running"
        assert nodes[name]["image"] == "ami-0b4d2e6f8a1c3e5d7"
    assert nodes["db1"]["size"] == "t3.medium"


def test_full_query_shows_tags_disk_and_profile(cloud, two_nodes):
    db1 = cloud.json("-F")["aws"]["boto3_ec2"]["db1"]
    ebs = class_node("dataserver")["volume"]["Ebs"]
    assert db1["id"] == two_nodes["db1"]
    assert db1["class"] == "dataserver"
    assert db1["tags"] == {
        "Name": "db1",
        "class": "dataserver",
        "container": "docker",
        "docker_volume": DEVICE,
    }
    assert db1["lifecycle"] == "on-demand"
    disk = db1["volumes"][DEVICE]
    assert (disk["size"], disk["type"], disk["encrypted"], disk["delete_on_termination"]) == (
        ebs["VolumeSize"],
        ebs["VolumeType"],
        ebs["Encrypted"],
        ebs["DeleteOnTermination"],
    )
    assert db1["metadata_options"]["HttpTokens"] == "required"
    assert list(db1["security_groups"].values()) == ["docker-hosts"]
    assert db1["iam_instance_profile"].endswith("/docker-host-minimal")


def test_select_query_shows_the_selected_fields(cloud, two_nodes):
    nodes = cloud.json("-S")["aws"]["boto3_ec2"]
    assert nodes["web1"]["class"] == "backends"
    assert nodes["web1"]["id"] == two_nodes["web1"]
    assert "tags" not in nodes["web1"]


def test_show_instance_action(cloud, two_nodes):
    shown = cloud.json("-a", "show_instance", "web1", "-y")
    web1 = shown["aws"]["boto3_ec2"]["web1"]
    assert web1["id"] == two_nodes["web1"]
    assert web1["size"] == "t3.small"
    assert web1["volumes"][DEVICE]["size"] == class_node("backends")["volume"]["Ebs"]["VolumeSize"]


def test_destroy_several_names(cloud, two_nodes):
    destroyed = cloud.json("-d", "web1", "db1", "-y")["aws"]["boto3_ec2"]
    assert set(destroyed) == {"web1", "db1"}
    assert cloud.instances("web1") == [] and cloud.instances("db1") == []


def test_list_images_sizes_locations(cloud):
    images = cloud.json("--list-images", "aws")["aws"]["boto3_ec2"]
    # The profiles' AMI (and the account's own), not the public catalogue.
    assert list(images) == ["ami-0b4d2e6f8a1c3e5d7"]
    assert images["ami-0b4d2e6f8a1c3e5d7"]["name"].startswith("debian-12-amd64")
    sizes = cloud.json("--list-sizes", "aws")["aws"]["boto3_ec2"]
    assert sizes["t3.nano"]["vcpus"] == 2
    assert sizes["t3.medium"]["memory_mib"] == 4096
    locations = cloud.json("--list-locations", "aws")["aws"]["boto3_ec2"]
    assert "eu-west-1" in locations


def test_map_in_parallel_over_two_classes(cloud, tmp_path):
    names = {"map-web1": "backends", "map-web2": "backends", "map-db1": "dataserver"}
    map_file = tmp_path / "nodes.map"
    map_file.write_text(
        yaml.safe_dump(
            {
                "backends": ["map-web1", "map-web2"],
                "dataserver": ["map-db1"],
            }
        )
    )
    try:
        result = cloud.run("-m", str(map_file), "-P", "-y", "--no-deploy", "--out=json")
        assert result.returncode == 0, output(result)
        for name, node_class in names.items():
            assert_docker_node(cloud, name, node_class)

        # Applying the map again creates nothing.
        again = cloud.run("-m", str(map_file), "-P", "-y", "--no-deploy", "--out=json")
        assert again.returncode == 0, output(again)
        for name in names:
            assert len(cloud.instances(name)) == 1

        destroyed = cloud.run("-m", str(map_file), "-d", "-P", "-y", "--out=json")
        assert destroyed.returncode == 0, output(destroyed)
        for name in names:
            assert cloud.instances(name) == []
    finally:
        leftover = [name for name in names if cloud.instances(name)]
        if leftover:
            cloud.run("-d", *leftover, "-y")


# Each bad profile: what the error must say.  None is created or left running.
ERROR_CASES = {
    "test-unknown-ami": "'image' ami-00000000000000000: no such AMI",
    "test-missing-iam-profile": "Instance profile no-such-profile not found",
    "test-bad-device": "'docker_volume.DeviceName' '/dev/sda' is not a data volume name",
    "test-aws-error": "InvalidSubnetID.NotFound",
    "test-bad-key": "'docker_volume.Ebs.VolumeSize' has the wrong type ('big'; wanted int)",
    "test-unknown-size": "'size' t9.huge: DescribeInstanceTypes failed: InvalidInstanceType",
    "test-no-class": "'class' (node class: use a class profile) is not set",
    "test-device-clash": f"uses {DEVICE}, which is the Docker volume",
    "test-fails-after-launch": "refusing to SSH to",
}


@pytest.fixture(scope="module")
def error_runs(cloud):
    """Every bad profile at once (each run is independent): {profile: (result, live before)}."""
    before = cloud.live_count()
    # --no-deploy: the error must come from the profile or EC2, not from a missing SSH key.
    processes = {
        profile: cloud.popen("-p", profile, f"err-{profile}", "--no-deploy")
        for profile in ERROR_CASES
        if profile != "test-fails-after-launch"
    }
    # This one fails while deploying, after the launch.
    processes["test-fails-after-launch"] = cloud.popen(
        "-p", "test-fails-after-launch", "err-test-fails-after-launch"
    )
    results = {}
    for profile, process in processes.items():
        out, err = process.communicate(timeout=300)
        results[profile] = (process.returncode, out + err)
    return before, results


@pytest.mark.parametrize("profile", sorted(ERROR_CASES))
def test_error_is_reported_and_nothing_is_left(cloud, error_runs, profile):
    before, results = error_runs
    returncode, text = results[profile]
    assert returncode != 0, text
    assert ERROR_CASES[profile] in text, text
    assert cloud.instances(f"err-{profile}") == []
    assert cloud.live_count() == before


def test_failure_after_launch_terminates_the_instance(cloud, error_runs):
    _, results = error_runs
    _, text = results["test-fails-after-launch"]
    assert "was terminated" in text, text
    terminated = cloud.instances("err-test-fails-after-launch", states=("terminated",))
    assert len(terminated) == 1
    assert terminated[0]["InstanceId"] in text
    # The key accepted for the node's deploy and its record do not stay.
    assert left_on_master(cloud, "err-test-fails-after-launch") == []


def test_deploy_over_ssh_writes_minion_config_and_accepts_the_key(cloud, cloud_root, tmp_path):
    name = "deploy1"
    accepted = cloud.pki_dir / "minions" / name
    try:
        result = cloud.run(
            "-p",
            "test-deploy",
            name,
            "--out=json",
            "--log-file",
            str(tmp_path / "cloud.log"),
            "--log-file-level",
            "debug",
        )
        assert result.returncode == 0, output(result)
        created = json.loads(result.stdout)[name]
        assert created["deployed"] is True
        instance = cloud.instance(name)
        # The deploy went to the node's private (loopback) address, where sshd listens.
        assert instance["PrivateIpAddress"].startswith("127.0.20.")

        profiles = yaml.safe_load((cloud_root / "cloud.profiles.d" / "zz-tests.conf").read_text())
        captured = Path(profiles["test-deploy"]["script_args"]) / name
        minion = yaml.safe_load((captured / "minion").read_text())
        assert minion["master"] == "127.0.0.1"
        assert minion["id"] == name
        grains = yaml.safe_load((captured / "grains").read_text())
        volume_id = instance["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
        assert grains["class"] == "backends"
        assert grains["docker_volume"] == {
            "device_name": DEVICE,
            "volume_id": volume_id,
            "data_id": volume_id,
        }
        assert "docker_disk" not in grains and "docker_ebs_volume" not in grains

        deployed_key = (captured / "minion.pub").read_text().strip()
        assert accepted.read_text().strip() == deployed_key
        record = node_record(cloud, name)
        assert (record["state"], record["class"]) == ("deployed", "backends")
        assert record["key"] == hashlib.sha256(deployed_key.encode()).hexdigest()
    finally:
        if cloud.instances(name):
            cloud.run("-d", name, "-y")
    assert cloud.instances(name) == []
    # Destroying the node also removes its key, its record and its lock from the master.
    assert left_on_master(cloud, name) == []


def test_create_and_destroy_fire_events_on_the_master(cloud):
    name = "events1"
    salt_run = str(Path(sys.executable).parent / "salt-run")
    listener = subprocess.Popen(
        [salt_run, "state.event", f"tagmatch=salt/cloud/{name}/*"],
        cwd=cloud.root,
        env=cloud.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = queue.Queue()
    # state.event prints one "<tag>\t<data>" line per event: read them in the background.
    threading.Thread(
        target=lambda: [lines.put(line) for line in listener.stdout], daemon=True
    ).start()

    def wait_for(tag, seconds=30):
        seen = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(line.split()[0])
            if seen[-1] == tag:
                return seen
        raise AssertionError(f"no {tag} event within {seconds} s; saw {seen}")

    try:
        # Until the listener has subscribed, events are lost: probe until one arrives.
        probe = f"salt/cloud/{name}/probe"
        for _ in range(10):
            subprocess.run(
                [salt_run, "event.send", probe],
                cwd=cloud.root,
                env=cloud.env,
                check=True,
                capture_output=True,
            )
            try:
                wait_for(probe, seconds=2)
                break
            except AssertionError:
                continue
        cloud.json("-p", "backends", name, "--no-deploy")
        cloud.json("-d", name, "-y")
        tags = [tag for tag in wait_for(f"salt/cloud/{name}/destroyed") if tag != probe]
    finally:
        listener.kill()
        listener.wait()
    assert tags == [
        f"salt/cloud/{name}/creating",
        f"salt/cloud/{name}/requesting",
        f"salt/cloud/{name}/created",
        f"salt/cloud/{name}/destroying",
        f"salt/cloud/{name}/destroyed",
    ]


def test_salt_cloud_does_not_walk_the_checkout(ec2_endpoint, repo_root, tmp_path):
    """Run as root, salt-cloud's verify_env chowns every file under its config dir (the
    checkout, with its two virtualenvs: ~65,000 files, most of -Q's time). The `cloud` file
    turns it off: a file of another owner in the config dir keeps its owner."""
    root = harness.copy_config(tmp_path / "root", repo_root)
    other = root / ".venv" / "lib" / "site.py"
    other.parent.mkdir(parents=True)
    other.write_text("# someone else's\n")
    os.chown(other, 12345, 12345)
    result = harness.CloudCLI.for_endpoint(root, ec2_endpoint).run("-Q")
    assert result.returncode == 0, output(result)
    assert (other.stat().st_uid, other.stat().st_gid) == (12345, 12345)


@pytest.fixture
def short_dir():
    """A directory with a short path: a unix socket's path may not exceed 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="stale-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_stopped_masters_socket_is_not_taken_for_a_master(ec2_endpoint, repo_root, short_dir):
    """A salt-master that stopped leaves master_event_pull.ipc behind. salt-cloud took the
    file for a master and tried to connect for each event it fired (~1 s of CPU each, five
    for a create and a destroy); it now asks the socket, once per run, and fires nothing."""
    root, tmp_path = harness.copy_config(short_dir / "root", repo_root), short_dir
    sock_dir = root / ".salt" / "var" / "run" / "salt" / "master"
    sock_dir.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_dir / "master_event_pull.ipc"))
    stale.close()  # the file stays; nothing listens
    cli = harness.CloudCLI.for_endpoint(root, ec2_endpoint)
    log_file = tmp_path / "cloud.log"
    logging = ("--log-file", str(log_file), "--log-file-level", "debug")
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    created = cli.run("-p", "backends", "stale1", "--no-deploy", *logging)
    destroyed = cli.run("-d", "stale1", "-y", *logging)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime
    print(f"create + destroy with a stale master socket: {cpu:.1f} s of CPU")
    assert created.returncode == 0, output(created)
    assert destroyed.returncode == 0, output(destroyed)
    text = log_file.read_text()
    assert text.count(f"No salt-master listens on {sock_dir}: events are not fired") == 2
    assert "Unable to connect pusher" not in text
