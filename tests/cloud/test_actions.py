"""salt-cloud -a <action> and destroy batches, real CLI against the local EC2 endpoint.

What EC2 holds afterwards is read with boto3, not through the driver.
"""

import pytest
import yaml

from .conftest import DEVICE, class_node

pytestmark = pytest.mark.cloud


def action(cloud, name, verb, *kwargs):
    return cloud.json("-a", verb, name, *kwargs, "-y")["aws"]["boto3_ec2"][name]


def output(result):
    return result.stdout + result.stderr


def state(cloud, instance_id):
    found = cloud.ec2().describe_instances(InstanceIds=[instance_id])
    return found["Reservations"][0]["Instances"][0]["State"]["Name"]


def protected(cloud, instance_id):
    attribute = cloud.ec2().describe_instance_attribute(
        InstanceId=instance_id, Attribute="disableApiTermination"
    )
    return attribute["DisableApiTermination"]["Value"]


@pytest.fixture(scope="module")
def node(cloud):
    """act1 (dataserver: its Docker volume is larger than the default)."""
    name = "act1"
    instance_id = cloud.json("-p", "dataserver", name, "--no-deploy")[name]["instance_id"]
    yield name, instance_id
    if cloud.instances(name):
        cloud.run("-a", "disable_term_protect", name, "-y")
        cloud.run("-d", name, "-y")


def test_stop_start_reboot_wait_for_their_state(cloud, node):
    name, instance_id = node
    assert action(cloud, name, "stop") == {"instance_id": instance_id, "state": "stopped"}
    assert state(cloud, instance_id) == "stopped"
    # A stopped node is still the node: -Q lists it, start brings it back.
    assert cloud.json("-Q")["aws"]["boto3_ec2"][name]["state"] == "stopped"
    assert action(cloud, name, "start")["state"] == "running"
    assert state(cloud, instance_id) == "running"
    assert action(cloud, name, "reboot")["state"] == "running"
    assert state(cloud, instance_id) == "running"


def test_termination_protection_makes_destroy_refuse(cloud, node):
    name, instance_id = node
    assert action(cloud, name, "enable_term_protect")["termination_protection"] is True
    assert protected(cloud, instance_id) is True
    assert action(cloud, name, "show_term_protect")["termination_protection"] is True

    refused = cloud.run("-d", name, "-y")
    assert refused.returncode != 0
    assert f"{name} ({instance_id}) has termination protection and was not destroyed" in (
        output(refused)
    )
    assert "salt-cloud -a disable_term_protect act1" in output(refused)
    assert state(cloud, instance_id) == "running"

    assert action(cloud, name, "disable_term_protect")["termination_protection"] is False
    assert protected(cloud, instance_id) is False


def test_show_volumes_and_docker_volume(cloud, node):
    name, _ = node
    volumes = action(cloud, name, "show_volumes")
    assert list(volumes) == [DEVICE]
    disk = volumes[DEVICE]
    ebs = class_node("dataserver")["volume"]["Ebs"]
    assert (disk["size"], disk["type"], disk["encrypted"], disk["state"]) == (
        ebs["VolumeSize"],
        ebs["VolumeType"],
        ebs["Encrypted"],
        "in-use",
    )
    docker = action(cloud, name, "docker_volume")
    assert docker["device_name"] == DEVICE
    assert docker["volume_id"] == disk["volume_id"]
    assert docker["modification"] is None


def test_grow_docker_disk_grows_the_volume_and_refuses_to_shrink(cloud, node):
    name, _ = node
    volume_id = action(cloud, name, "docker_volume")["volume_id"]
    size = class_node("dataserver")["volume"]["Ebs"]["VolumeSize"]
    grown = action(cloud, name, "grow_docker_disk", f"size={size + 10}")
    assert grown == {
        "volume_id": volume_id,
        "old_size": size,
        "size": size + 10,
        "state": "completed",
    }
    assert cloud.volume(volume_id)["Size"] == size + 10
    assert action(cloud, name, "docker_volume")["modification"]["target_size"] == size + 10
    # The same size again changes nothing.
    assert action(cloud, name, "grow_docker_disk", f"size={size + 10}")["changed"] is False

    shrink = cloud.run("-a", "grow_docker_disk", name, f"size={size}", "-y")
    assert shrink.returncode != 0
    assert f"{volume_id} is {size + 10} GiB: EBS volumes cannot shrink (asked {size})" in (
        output(shrink)
    )
    for bad in ("size=big", "size=-1", "iops=3000"):
        result = cloud.run("-a", "grow_docker_disk", name, bad, "-y")
        assert result.returncode != 0
        assert "grow_docker_disk" in output(result)
    assert cloud.volume(volume_id)["Size"] == size + 10


def test_actions_refuse_unknown_nodes(cloud):
    result = cloud.run("-a", "stop", "no-such-node", "-y", "--out=json")
    assert "no-such-node" in result.stdout  # salt-cloud lists it as not found
    assert "Not Found" in result.stdout


def test_spot_profile_launches_a_spot_instance(cloud):
    name = "spot1"
    try:
        cloud.json("-p", "test-spot", name, "--no-deploy")
        instance = cloud.instance(name)
        assert instance["InstanceLifecycle"] == "spot"
        assert cloud.json("-F")["aws"]["boto3_ec2"][name]["lifecycle"] == "spot"
        refused = cloud.run("-a", "enable_term_protect", name, "-y")
        assert refused.returncode != 0
        assert "spot instance: EC2 cannot protect those" in output(refused)
    finally:
        cloud.run("-d", name, "-y")
    assert cloud.instances(name) == []


def test_termination_protection_profile_key(cloud):
    name = "prot1"
    try:
        cloud.json("-p", "test-protected", name, "--no-deploy")
        instance_id = cloud.instance(name)["InstanceId"]
        assert protected(cloud, instance_id) is True
        refused = cloud.run("-d", name, "-y")
        assert refused.returncode != 0
        assert "has termination protection" in output(refused)
        assert cloud.instances(name)
    finally:
        cloud.run("-a", "disable_term_protect", name, "-y")
        cloud.run("-d", name, "-y")
    assert cloud.instances(name) == []


def make_map(tmp_path, names):
    path = tmp_path / "nodes.map"
    half = len(names) // 2
    path.write_text(yaml.safe_dump({"backends": names[:half], "dataserver": names[half:]}))
    return path


def test_destroy_of_several_names_is_one_batch(fault_cloud, fault_proxy, tmp_path):
    names = [f"batch{i}" for i in range(4)]
    created = fault_cloud.run("-m", str(make_map(tmp_path, names)), "-P", "-y", "--no-deploy")
    assert created.returncode == 0, output(created)
    assert len(fault_cloud.instances(names)) == 4

    proxy = fault_proxy()
    destroyed = fault_cloud.via(proxy.url).json("-d", *names, "-y")["aws"]["boto3_ec2"]
    assert sorted(destroyed) == names
    assert fault_cloud.instances(names) == []
    # One TerminateInstances for all four, and one wait (not one per node): salt-cloud's
    # own listing, the driver's lookup of the names, the wait.
    assert proxy.count("TerminateInstances") == 1
    assert proxy.count("DescribeInstances") <= 3, [e.action for e in proxy.log]


def test_destroy_of_a_map_in_parallel_is_one_batch(fault_cloud, fault_proxy, tmp_path):
    names = [f"pbatch{i}" for i in range(6)]
    map_file = str(make_map(tmp_path, names))
    created = fault_cloud.run("-m", map_file, "-P", "-y", "--no-deploy")
    assert created.returncode == 0, output(created)
    assert len(fault_cloud.instances(names)) == 6

    proxy = fault_proxy()
    destroyed = fault_cloud.via(proxy.url).run("-d", "-m", map_file, "-P", "-y", "--out=json")
    assert destroyed.returncode == 0, output(destroyed)
    assert fault_cloud.instances(names) == []
    # salt-cloud runs one destroy per node in parallel workers: one of them terminates all.
    assert proxy.count("TerminateInstances") == 1


def test_a_protected_node_in_a_batch_is_refused_and_the_rest_destroyed(fault_cloud, tmp_path):
    names = ["mixed0", "mixed1", "mixed2"]
    created = fault_cloud.run("-m", str(make_map(tmp_path, names)), "-P", "-y", "--no-deploy")
    assert created.returncode == 0, output(created)
    assert fault_cloud.json("-a", "enable_term_protect", "mixed1", "-y")
    try:
        result = fault_cloud.run("-d", *names, "-y")
        assert result.returncode != 0
        assert "mixed1 (" in output(result)
        assert "has termination protection and was not destroyed" in output(result)
        assert [i["Tags"] for i in fault_cloud.instances(names)] == [
            fault_cloud.instance("mixed1")["Tags"]
        ]
    finally:
        fault_cloud.run("-a", "disable_term_protect", "mixed1", "-y")
        fault_cloud.run("-d", *names, "-y")
    assert fault_cloud.instances(names) == []
