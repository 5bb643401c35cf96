"""`salt-run node.replace` and `orch.replace`: a node of a data class is replaced by a new one
on the same Docker volume (old node stopped, volume snapshotted and detached, new node launched
in its zone with it, converged, containers checked, old node destroyed); a replacement that
fails to converge is destroyed and the old node serves again on its volume; a bad request
changes nothing. What EC2 holds is read with boto3, the records and keys from the master's pki
dir."""

import json
import time

import pytest

from tests.master.conftest import BROKEN_PREFIX, DATA_PROFILE, OTHER_ZONE_DATA_PROFILE
from tests.master.test_one_command import node_record, wait_converged
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


def orchestrate(checkout, pillar):
    """salt-run state.orchestrate orch.replace: the result, and the states by their id."""
    result = checkout.master.run(
        "salt-run",
        "--out=json",
        "state.orchestrate",
        "orch.replace",
        f"pillar={json.dumps(pillar)}",
        timeout=900,
    )
    try:
        [ran] = json.loads(result.stdout)["data"].values()
    except (ValueError, KeyError):
        return result, {}
    return result, {key.split("_|-")[1]: state for key, state in ran.items()}


def gone_with_its_instance(checkout, name):
    """The minion of a terminated node stops (here a process on this host), before a later
    node may take its name and its directory."""
    HostMinion(checkout.nodes, name).stop()


def instances(checkout, name):
    """{instance id: state} of every instance ever named ``name``."""
    reservations = checkout.ec2.describe_instances(
        Filters=[{"Name": "tag:Name", "Values": [name]}]
    )["Reservations"]
    return {i["InstanceId"]: i["State"]["Name"] for r in reservations for i in r["Instances"]}


def docker_volume_of(checkout, name):
    """The Docker volume of the live instance ``name`` (its docker_volume tag's device)."""
    found = checkout.ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": [name]}])
    [instance] = [
        i for r in found["Reservations"] for i in r["Instances"] if i["State"]["Name"] == "running"
    ]
    device = tags(instance)["docker_volume"]
    [mapping] = [m for m in instance["BlockDeviceMappings"] if m["DeviceName"] == device]
    return instance, volume(checkout, mapping["Ebs"]["VolumeId"])


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
    # Every dataserver node still live, in one batch; then each one's minion on this host.
    found = checkout.ec2.describe_instances(
        Filters=[
            {"Name": "tag:class", "Values": ["dataserver"]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]},
        ]
    )
    live = sorted({tags(i)["Name"] for r in found["Reservations"] for i in r["Instances"]})
    if live:
        checkout.master.run("salt-cloud", "--out=json", "-y", "-d", *live, timeout=300)
    broken = (f"{BROKEN_PREFIX}-db", f"{BROKEN_PREFIX}-db-b")
    for name in {*live, OLD, *(f"db-{n}" for n in range(2, 6)), *broken}:
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
    for pillar, message in (
        ({"class": "dataserver", "batch": 0}, "batch: 0 is not a whole number of nodes"),
        ({"class": "nosuchclass"}, "nosuchclass"),
    ):
        result, states = orchestrate(checkout, pillar)
        assert result.returncode != 0, (pillar, result.stdout[-2000:])
        assert "replace-request-refused" in states and message in result.stdout, result.stdout
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
    assert "restored volume" not in answer["comment"], answer  # its own volume went back
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
    """`orch.replace` of the class (its one node here): node.replace_plan -> node.replace."""
    record, volume_id = data_node
    started = time.monotonic()
    result, states = orchestrate(checkout, {"class": "dataserver"})
    print(f"orch.replace of one data node: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    answer = states[f"replace-{OLD}"]["changes"]["return"]
    assert (answer["replaced"], answer["by"]) == (OLD, "db-2"), answer
    assert states["dataserver-replaced"]["result"] is True
    new = "db-2"
    # EC2: the old instance terminated, the new one running with the volume as its Docker
    # volume, the volume's tags naming it; a snapshot taken before the move.
    assert instances(checkout, OLD) == {record["instance_id"]: "terminated"}
    gone_with_its_instance(checkout, OLD)
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


def test_a_failed_replace_into_another_zone_leaves_the_old_node_serving(checkout, data_node):
    """The profile lands in another zone than the volume: the new node gets a volume restored
    from the snapshot; its highstate fails, so it is destroyed, the old node serves again on
    its own volume, and the restored copy is reported with the command that purges it."""
    record = node_record(checkout, "db-2")
    volume_id = record["data_volumes"][0]["volume_id"]
    new = f"{BROKEN_PREFIX}-db-b"
    args = (f"new={new}", f"profile={OTHER_ZONE_DATA_PROFILE}", "wait=10")
    result, answer, seconds = replace(checkout, "db-2", *args)
    print(f"failed replace into another zone, put back: {seconds:.1f} s")
    assert result.returncode == 1, result.stdout[-3000:]
    assert f"converging {new}:" in answer["comment"], answer
    assert f"{new} destroyed, db-2 serves again" in answer["comment"], answer
    assert instances(checkout, "db-2") == {record["instance_id"]: "running"}
    assert attached_to(checkout, volume_id) == [record["instance_id"]]
    assert node_record(checkout, "db-2")["state"] == "converged"
    # The restored copy, detached, and the command the message gives deletes it.
    command = answer["comment"].split("restored volume is left: ")[1].split()
    restored = volume(checkout, command[-1].split("=")[1])
    assert restored["State"] == "available" and restored["SnapshotId"] == answer["snapshot_id"]
    assert restored["AvailabilityZone"] != volume(checkout, volume_id)["AvailabilityZone"]
    purged = checkout.master.run(*command, timeout=120)
    assert purged.returncode == 0, purged.stdout[-2000:] + purged.stderr[-2000:]
    assert not checkout.ec2.describe_volumes(
        Filters=[{"Name": "volume-id", "Values": [restored["VolumeId"]]}]
    )["Volumes"]


def test_a_profile_in_another_zone_restores_the_snapshot_there(checkout, data_node):
    """A volume cannot move zones: the new node launches in its profile's zone on a volume
    restored from the snapshot taken when the old node stopped; the data keeps its data_id;
    the old volume stays where it was, detached, and the answer says how to purge it."""
    record = node_record(checkout, "db-2")
    volume_id = record["data_volumes"][0]["volume_id"]
    old_zone = volume(checkout, volume_id)["AvailabilityZone"]
    profile = f"profile={OTHER_ZONE_DATA_PROFILE}"
    result, answer, seconds = replace(checkout, "db-2", "new=db-3", profile)
    print(f"replace into another zone (snapshot restored): {seconds:.1f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    instance, restored = docker_volume_of(checkout, "db-3")
    zone = instance["Placement"]["AvailabilityZone"]
    assert zone != old_zone and restored["AvailabilityZone"] == zone
    assert restored["SnapshotId"] == answer["snapshot_id"] and restored["VolumeId"] != volume_id
    assert tags(restored)["node"] == "db-3"
    new_record = node_record(checkout, "db-3")
    assert new_record["state"] == "converged"
    assert new_record["data_volumes"][0]["data_id"] == record["data_volumes"][0]["data_id"]
    # The old node terminated and forgotten; its volume kept, detached, in its zone.
    assert instances(checkout, "db-2") == {record["instance_id"]: "terminated"}
    gone_with_its_instance(checkout, "db-2")
    assert node_record(checkout, "db-2") is None
    kept = volume(checkout, volume_id)
    assert (kept["State"], kept["AvailabilityZone"], tags(kept)["node"]) == (
        "available",
        old_zone,
        "db-2",
    )
    purge = f"salt-cloud -f purge_volume aws volume_id={volume_id}"
    assert answer["left"] == f"{volume_id} in {old_zone}: {purge}", answer


def test_orch_replace_a_batch_replaces_its_nodes_at_the_same_time(checkout, data_node):
    """batch 2 over two data nodes (db-3 in the other zone, db-4 created here): both are
    replaced at once, each on its own volume, in its own zone."""
    created = checkout.master.run(
        "salt-cloud", "--out=json", "-p", DATA_PROFILE, "db-4", timeout=300
    )
    assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-3000:]
    assert wait_converged(checkout, "db-4")[0].returncode == 0
    before = {name: node_record(checkout, name) for name in ("db-3", "db-4")}
    started = time.monotonic()
    result, states = orchestrate(checkout, {"class": "dataserver", "batch": 2})
    print(f"orch.replace of two data nodes, batch 2: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ran = {name: states[f"replace-{name}"] for name in before}
    # Both ran at the same time: each started before the other ended.
    spans = {
        name: (
            seconds(state["start_time"]),
            seconds(state["start_time"]) + state["duration"] / 1000,
        )
        for name, state in ran.items()
    }
    assert spans["db-3"][0] < spans["db-4"][1] and spans["db-4"][0] < spans["db-3"][1], spans
    for name, record in before.items():
        answer = ran[name]["changes"]["return"]
        new, volume_id = answer["by"], record["data_volumes"][0]["volume_id"]
        instance, found = docker_volume_of(checkout, new)
        assert found["VolumeId"] == volume_id, (name, new)
        assert instance["Placement"]["AvailabilityZone"] == record["availability_zone"]
        assert (
            node_record(checkout, new)["data_volumes"][0]["data_id"]
            == (record["data_volumes"][0]["data_id"])
        )
        assert instances(checkout, name)[record["instance_id"]] == "terminated"
        gone_with_its_instance(checkout, name)


def seconds(clock):
    """A state's start_time (HH:MM:SS.ffffff) in seconds of the day."""
    hours, minutes, rest = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest)
