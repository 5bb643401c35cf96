"""The boto3_ec2 driver's own logic, loaded as Salt's loader loads it, its dunders given the
configure_loader_modules way: a run's checks (names, duplicates, profiles), map shapes, the
records that make a killed create adoptable, what counts as a refused launch, the Docker
volume of a node, summaries, errors."""

import datetime

import botocore.exceptions
import botocore.parsers
import pytest
from salt.exceptions import SaltCloudConfigError, SaltCloudSystemExit

from tools.salt_repo import load_module

ec2 = load_module("clouds", "boto3_ec2")
UTIL_MODULES = {
    name: load_module("utils", name)
    for name in ("dockerhosts_names", "dockerhosts_profile", "dockerhosts_ec2")
}
UTILS = {
    f"{name}.{function}": getattr(module, function)
    for name, module in UTIL_MODULES.items()
    for function in dir(module)
    if not function.startswith("_") and callable(getattr(module, function))
}
aws = UTIL_MODULES["dockerhosts_ec2"]  # what the driver calls ``ec2``
PROVIDER = {"driver": "boto3_ec2", "location": "eu-west-1", "image": "ami-1", "size": "t3.nano"}


@pytest.fixture
def configure_loader_modules():
    opts = {
        "providers": {"aws": {"boto3_ec2": PROVIDER}},
        "profiles": {
            "backends": {"provider": "aws:boto3_ec2", "class": "backends", "profile": "backends"},
            "other": {"provider": "gce:gce", "profile": "other"},
        },
        "deploy": False,
    }
    return {ec2: {"__opts__": opts, "__utils__": UTILS}}


def vm(name, **overrides):
    return {**PROVIDER, "provider": "aws:boto3_ec2", "class": "backends", "name": name, **overrides}


def refused_plan(*vms):
    with pytest.raises(SaltCloudConfigError) as error:
        ec2._plan(list(vms))
    return str(error.value)


# --------------------------------------------------------------------------- a run's checks


def test_a_run_reports_every_problem_once_with_the_nodes_it_concerns():
    bad = [vm(f"w{i}", image="debian") for i in range(5)]
    message = refused_plan(vm("ok"), *bad, vm("a/b"))
    assert message == (
        "'w0', 'w1', 'w2' and 2 more: 'image' must be an AMI id (ami-...), got 'debian'; "
        "'a/b': 'name' 'a/b' is not a node name (letters, digits, '.', '_', '-', starting "
        "with a letter or digit, at most 253): nothing was created"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"class": None}, "'class' (node class: use a class profile) is not set"),
        ({"class": "data.server"}, "'class' 'data.server' is not a class name"),
        ({"minion": {"id": "other"}}, "'minion.id' 'other' is not the node name 'db1'"),
        ({"minion": {"append_domain": "example.org"}}, "a node's minion id is its name"),
        ({"minion": "master"}, "'minion' must be a mapping"),
        ({"make_master": True}, "'make_master' and 'requires' (map ordering) are not supported"),
        ({"deploy": True, "private_key": "/nonexistent"}, "'private_key' '/nonexistent' is not"),
    ],
)
def test_node_problems_name_the_key(overrides, message):
    assert message in refused_plan(vm("db1", **overrides))


def test_entries_are_checked_whole_profiles_and_duplicates():
    entries = [
        ("backends", "a", {}),
        ("backend", "b", {}),
        ("other", "c", {}),
        ("backends", "a", {}),
    ]
    with pytest.raises(SaltCloudConfigError) as error:
        ec2._create_run(entries)
    assert str(error.value) == (
        "profile 'backend' is not defined (did you mean backends?); profile 'other' is not a "
        "boto3_ec2 profile; 'a' is listed twice (profiles backends and backends): nothing was "
        "created"
    )


def test_map_entries_in_every_shape_salt_cloud_accepts():
    rendered = {
        "backends": ["w1", {"w2": {"grains": {"x": 1}}}, {"w3": None}, "w1"],
        "dataserver": {"d1": {}, "d2": None},
        "single": "s1",
    }
    assert aws.map_entries(rendered) == [
        ("backends", "w1", {}),
        ("backends", "w2", {"grains": {"x": 1}}),
        ("backends", "w3", {}),
        ("backends", "w1", {}),
        ("dataserver", "d1", {}),
        ("dataserver", "d2", {}),
        ("single", "s1", {}),
    ]


# --------------------------------------------------------------------------- exactly once


@pytest.mark.parametrize(
    ("record", "unfinished"),
    [
        (None, False),
        ({"state": "launching", "client_token": "t"}, True),
        ({"state": "launched", "client_token": "t", "deploy": True}, True),
        ({"state": "launched", "client_token": "t", "deploy": False}, False),  # --no-deploy: done
        ({"state": "deployed", "client_token": "t"}, False),
        ({"state": "launching"}, False),  # no token: nothing to find it by
        ({"state": "destroying", "client_token": "t"}, False),
    ],
)
def test_a_record_tells_a_killed_create(record, unfinished):
    assert ec2._unfinished(record) is unfinished


def client_error(code, status, operation="RunInstances"):
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


def test_only_a_lost_answer_or_a_server_error_may_have_launched():
    assert not aws.ambiguous(client_error("InsufficientInstanceCapacity", 400))
    assert not aws.ambiguous(client_error("RequestLimitExceeded", 400))
    assert not aws.ambiguous(client_error("UnauthorizedOperation", 403))
    assert aws.ambiguous(client_error("InternalError", 500))
    assert aws.ambiguous(client_error("ServiceUnavailable", 503))
    assert aws.ambiguous(botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"))
    assert aws.ambiguous(botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"))


def test_transient_errors_are_botocores():
    assert aws.is_transient(client_error("RequestLimitExceeded", 400, "DescribeInstances"))
    assert aws.is_transient(client_error("ServiceUnavailable", 503))
    assert aws.is_transient(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"))
    assert aws.is_transient(botocore.parsers.ResponseParserError("invalid XML received"))
    assert not aws.is_transient(client_error("UnauthorizedOperation", 403))
    assert not aws.is_transient(client_error("InvalidParameterValue", 400))


def test_the_pool_runs_every_item_at_most_size_at_once():
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415

    running, most, lock = [0], [0], threading.Lock()

    def work(item):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        done.append(item)

    done = []
    aws.in_pool(work, list(range(12)), 3)
    assert sorted(done) == list(range(12))
    assert most[0] == 3


# --------------------------------------------------------------------------- nodes


INSTANCE = {
    "InstanceId": "i-1",
    "ImageId": "ami-1",
    "InstanceType": "t3.medium",
    "State": {"Name": "running"},
    "PrivateIpAddress": "10.0.0.5",
    "PublicIpAddress": "54.1.2.3",
    "Placement": {"AvailabilityZone": "eu-west-1a"},
    "Tags": [
        {"Key": "Name", "Value": "db1"},
        {"Key": "class", "Value": "dataserver"},
        {"Key": "docker_volume", "Value": "/dev/sdb"},
    ],
    "SecurityGroups": [{"GroupId": "sg-1", "GroupName": "docker-hosts"}],
    "IamInstanceProfile": {"Arn": "arn:aws:iam::1:instance-profile/p"},
    "MetadataOptions": {"State": "applied", "HttpTokens": "required"},
    "LaunchTime": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "BlockDeviceMappings": [
        {"DeviceName": "/dev/xvda", "Ebs": {"VolumeId": "vol-0", "DeleteOnTermination": True}},
        {"DeviceName": "/dev/sdb", "Ebs": {"VolumeId": "vol-1", "DeleteOnTermination": False}},
    ],
}


def test_the_docker_volume_of_a_node_is_the_one_its_tag_names():
    assert aws.docker_volume_mapping_of(INSTANCE)["Ebs"]["VolumeId"] == "vol-1"
    old = {
        **INSTANCE,
        "Tags": [
            {"Key": "Name", "Value": "db1"},
            {"Key": "docker_volume_device", "Value": "/dev/sdb"},
        ],
    }
    with pytest.raises(SaltCloudSystemExit) as error:
        aws.docker_volume_mapping_of(old)
    assert "db1 carries the old tag docker_volume_device: re-tag it (aws ec2 create-tags " in (
        str(error.value)
    )
    with pytest.raises(SaltCloudSystemExit, match="db1 has no Docker volume"):
        aws.docker_volume_mapping_of({**INSTANCE, "Tags": [{"Key": "Name", "Value": "db1"}]})


class SnapshotsOfOneSecond:
    """EC2 as moto answers: every StartTime of the node's snapshots in the same second."""

    def __init__(self, ids):
        self.snapshots = [{"SnapshotId": i, "StartTime": "2026-12-07T05:10:17Z"} for i in ids]
        self.deleted = []

    def create_snapshot(self, **kwargs):
        return {"SnapshotId": "snap-new"}

    def describe_volumes(self, VolumeIds):
        return {"Volumes": [{"VolumeId": VolumeIds[0], "Tags": []}]}

    def describe_snapshots(self, **kwargs):
        return {"Snapshots": list(self.snapshots)}

    def delete_snapshot(self, SnapshotId):
        self.deleted.append(SnapshotId)


def test_snapshots_of_one_second_are_pruned_oldest_first_by_the_records_order(monkeypatch):
    records = {"db1": {"snapshots": ["snap-b", "snap-c", "snap-a"]}}  # newest first
    monkeypatch.setattr(ec2, "_record", lambda function, name, **fields: records.get(name))
    client = SnapshotsOfOneSecond(["snap-a", "snap-b", "snap-c"])
    instance = {**INSTANCE, "Tags": [*INSTANCE["Tags"], {"Key": "class", "Value": "db"}]}
    result = ec2.snapshot_docker_volume.__wrapped__(client, instance, {"keep": "2"})
    assert result["kept"] == ["snap-new", "snap-b"]
    assert client.deleted == result["pruned"] == ["snap-c", "snap-a"]


class SnapshotInProgress:
    """describe_snapshots of a snapshot EC2 is still taking: pending twice, then ``last``."""

    def __init__(self, last):
        self.states = ["pending", "pending", last]

    def describe_snapshots(self, SnapshotIds):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"Snapshots": [{"SnapshotId": SnapshotIds[0], "State": state, "VolumeSize": 8}]}


def test_a_restore_waits_for_its_snapshot_to_complete(monkeypatch):
    monkeypatch.setattr(aws, "POLL_DELAYS", (0.01,))
    found = ec2._completed(SnapshotInProgress("completed"), "snap", "snap-1", timeout=5)
    assert (found["State"], found["VolumeSize"]) == ("completed", 8)
    with pytest.raises(SaltCloudSystemExit, match="snap failed in EC2"):
        ec2._completed(SnapshotInProgress("error"), "snap", "snap-1", timeout=5)
    with pytest.raises(SaltCloudSystemExit, match="gave up waiting for snap to complete"):
        ec2._completed(SnapshotInProgress("pending"), "snap", "snap-1", timeout=0.05)


def test_ssh_address_by_interface():
    assert aws.ssh_address(INSTANCE, "private_ips") == "10.0.0.5"
    assert aws.ssh_address(INSTANCE, "public_ips") == "54.1.2.3"
    with pytest.raises(SaltCloudSystemExit, match="has no public address"):
        aws.ssh_address({"InstanceId": "i-2", "PrivateIpAddress": "10.0.0.6"}, "public_ips")


def test_node_summary_and_details():
    assert aws.node_summary(INSTANCE) == {
        "id": "i-1",
        "image": "ami-1",
        "size": "t3.medium",
        "state": "running",
        "private_ips": ["10.0.0.5"],
        "public_ips": ["54.1.2.3"],
    }
    volume = {"VolumeId": "vol-1", "Size": 50, "VolumeType": "gp3", "Encrypted": True}
    details = aws.node_details(INSTANCE, {"vol-1": volume})
    assert details["class"] == "dataserver"
    assert details["security_groups"] == {"sg-1": "docker-hosts"}
    assert details["metadata_options"] == {"HttpTokens": "required"}
    assert details["launch_time"] == "2026-01-02T03:04:05+00:00"
    assert details["lifecycle"] == "on-demand"
    assert details["volumes"]["/dev/sdb"]["size"] == 50
    assert details["volumes"]["/dev/sdb"]["delete_on_termination"] is False
    assert details["keeps_data"] is True  # its docker_volume tag names /dev/sdb
    assert aws.keeps_data({**INSTANCE, "Tags": []}) is False
    assert aws.node_name({"InstanceId": "i-9"}) == "i-9"


def test_a_destroyed_node_says_where_its_kept_volume_is():
    result = aws.destroyed("db1", [INSTANCE], set(), {"i-1"}, "aws", snapshots={"vol-1": "snap-1"})
    assert result == {
        "instance_ids": ["i-1"],
        "state": "terminated",
        "kept_volumes": [
            {
                "volume_id": "vol-1",
                "device_name": "/dev/sdb",
                "availability_zone": "eu-west-1a",
                "snapshot_id": "snap-1",
            }
        ],
    }
    protected = aws.destroyed("db1", [INSTANCE], {"i-1"}, set(), "aws", snapshots={})
    assert "salt-cloud -a disable_term_protect db1" in protected["Error"]


def test_growing_refuses_to_shrink_or_pass_the_maximum():
    volume = {"VolumeId": "vol-1", "Size": 50, "VolumeType": "gp3"}
    assert ec2.check_growth(volume, 60) == 50
    with pytest.raises(SaltCloudSystemExit, match="cannot shrink"):
        ec2.check_growth(volume, 40)
    with pytest.raises(SaltCloudSystemExit, match=r"out of range for gp3 \(1-65536 GiB\)"):
        ec2.check_growth(volume, 70000)
    assert aws.whole_number({"size": "20"}, "size", None, "grow_docker_volume") == 20
    assert aws.whole_number({}, "keep", 7, "snapshot_docker_volume") == 7
    for kwargs in ({}, {"size": "big"}, {"size": "-3"}, {"size": "0"}):
        with pytest.raises(SaltCloudSystemExit, match=r"grow_docker_volume needs size=<a whole"):
            aws.whole_number(kwargs, "size", None, "grow_docker_volume")


def test_protected_instance_id_comes_from_ec2s_refusal():
    refusal = botocore.exceptions.ClientError(
        {
            "Error": {
                "Code": "OperationNotPermitted",
                "Message": "The instance 'i-0abc' may not be terminated. Modify its "
                "'disableApiTermination' instance attribute and try again.",
            }
        },
        "TerminateInstances",
    )
    assert aws.protected_instance_id(refusal, ["i-0abc", "i-1"]) == "i-0abc"
    assert aws.protected_instance_id(refusal, ["i-1"]) is None


@pytest.mark.parametrize(
    ("host", "local"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("10.0.0.1", False), (None, False)],
)
def test_loopback(host, local):
    assert aws.is_loopback(host) is local


def test_aws_error_message_keeps_code_and_message():
    quota = botocore.exceptions.ClientError(
        {"Error": {"Code": "InstanceLimitExceeded", "Message": "more than your limit"}},
        "RunInstances",
    )
    assert aws.aws_error_message(quota) == (
        "RunInstances failed: InstanceLimitExceeded: more than your limit"
    )
