"""`salt-run node.replace` and `orch.replace`: a node of a data class is replaced by a new one
on the same Docker volume (old node stopped, volume snapshotted and detached, new node launched
in its zone with it, converged, containers checked, old node destroyed); a replacement that
fails to converge is destroyed and the old node serves again on its volume; a bad request
changes nothing. What EC2 holds is read with boto3, the records and keys from the master's pki
dir."""

import json
import time

import pytest

from tests.master.conftest import BROKEN_PREFIX, DATA_PROFILE
from tests.master.test_one_command import destroy, node_record, wait_converged
from tools.checkout_master import HostMinion

OLD = "db-1"


def replace(checkout, *args):
    started = time.monotonic()
    result = checkout.master.run("salt-run", "--out=json", "node.replace", *args, timeout=900)
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        answer = {}
    return result, answer, time.monotonic() - started


def instances(checkout, name):
    """{instance id: state} of every instance ever named ``name``."""
    reservations = checkout.ec2.describe_instances(
        Filters=[{"Name": "tag:Name", "Values": [name]}]
    )["Reservations"]
    return {i["InstanceId"]: i["State"]["Name"] for r in reservations for i in r["Instances"]}


def volume(checkout, volume_id):
    return checkout.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]


def tags(resource):
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def attached_to(checkout, volume_id):
    return [a["InstanceId"] for a in volume(checkout, volume_id)["Attachments"]]


@pytest.fixture(scope="module")
def data_node(checkout):
    """OLD, a converged dataserver node: (record, Docker volume id)."""
    created = checkout.master.run("salt-cloud", "--out=json", "-p", DATA_PROFILE, OLD, timeout=300)
    assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-3000:]
    result, waited = wait_converged(checkout, OLD)
    assert result.returncode == 0, result.stdout[-3000:]
    record = waited[OLD]
    yield record, record["data_volumes"][0]["volume_id"]
    for name in (OLD, "db-2", f"{BROKEN_PREFIX}-db"):
        destroy(checkout, name)
        HostMinion(checkout.nodes, name).stop()
    for found in checkout.ec2.describe_volumes(
        Filters=[{"Name": "tag:class", "Values": ["dataserver"]}]
    )["Volumes"]:
        if found["State"] == "available":
            checkout.ec2.delete_volume(VolumeId=found["VolumeId"])


def test_bad_requests_change_nothing(checkout, data_node):
    record, volume_id = data_node
    for args, message in (
        (("never-created",), "never-created: no live instance has this name"),
        ((OLD, "new=bad name"), "new: "),
        ((OLD, f"new={OLD}"), f"new: {OLD} is taken"),
        ((OLD, "profile=test-workers"), "profile: 'test-workers' is of class 'workers'"),
    ):
        result, answer, _ = replace(checkout, *args)
        assert result.returncode == 1, (args, result.stdout)
        assert message in answer["comment"] and "nothing was changed" in answer["comment"]
        assert "Traceback" not in result.stdout + result.stderr
    assert list(instances(checkout, OLD).values()) == ["running"]
    assert attached_to(checkout, volume_id) == [record["instance_id"]]


def test_a_replacement_that_fails_is_destroyed_and_the_old_node_serves_again(checkout, data_node):
    """The new node's highstate fails (a broken pillar): it is destroyed, the volume goes back
    to the old node, which runs again, its record and key untouched."""
    record, volume_id = data_node
    new = f"{BROKEN_PREFIX}-db"
    result, answer, seconds = replace(checkout, OLD, f"new={new}", "wait=10")
    print(f"failed replace, put back: {seconds:.1f} s")
    assert result.returncode == 1, result.stdout[-3000:]
    assert f"converging {new}:" in answer["comment"], answer
    assert f"{new} destroyed, {OLD} serves again" in answer["comment"], answer
    assert set(instances(checkout, new).values()) <= {"shutting-down", "terminated"}
    assert instances(checkout, OLD) == {record["instance_id"]: "running"}
    assert attached_to(checkout, volume_id) == [record["instance_id"]]
    assert tags(volume(checkout, volume_id))["node"] == OLD
    assert node_record(checkout, OLD)["state"] == "converged"
    assert (checkout.pki / "minions" / OLD).exists()
    assert node_record(checkout, new) is None and not (checkout.pki / "minions" / new).exists()
    # The snapshot taken before the move is the old node's (pruned with its others); the
    # failed node took none.
    found = checkout.ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": [volume_id]}]
    )["Snapshots"]
    assert [(s["SnapshotId"], tags(s)["node"]) for s in found] == [(answer["snapshot_id"], OLD)]


def test_orch_replace_moves_the_data_volume_to_a_new_node(checkout, data_node):
    """`orch.replace` of the class (its one node here): node.replace_class -> node.replace."""
    record, volume_id = data_node
    started = time.monotonic()
    result = checkout.master.run(
        "salt-run",
        "--out=json",
        "state.orchestrate",
        "orch.replace",
        'pillar={"class": "dataserver"}',
        timeout=900,
    )
    print(f"orch.replace of one data node: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [state] = next(iter(json.loads(result.stdout)["data"].values())).values()
    answer = state["changes"]["return"]
    assert answer["replaced"] == {OLD: "db-2"}, answer
    new = "db-2"
    # EC2: the old instance terminated, the new one running with the volume as its Docker
    # volume, the volume's tags naming it; a snapshot taken before the move.
    assert instances(checkout, OLD) == {record["instance_id"]: "terminated"}
    [(new_id, state)] = instances(checkout, new).items()
    assert state == "running" and attached_to(checkout, volume_id) == [new_id]
    assert tags(volume(checkout, volume_id))["node"] == new
    snapshots = checkout.ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": [volume_id]}]
    )["Snapshots"]
    # One before the failed replace, one before this one.
    described = [s["Description"] for s in snapshots]
    assert described == [f"{OLD} docker_volume: before replace"] * 2, described
    # The master: the new node converged on the same data, the old one forgotten.
    new_record = node_record(checkout, new)
    assert new_record["state"] == "converged" and new_record["class"] == "dataserver"
    assert new_record["data_volumes"][0]["data_id"] == record["data_volumes"][0]["data_id"]
    assert node_record(checkout, OLD) is None and not (checkout.pki / "minions" / OLD).exists()
