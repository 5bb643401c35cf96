"""The boto3_ec2 driver's own logic: config validation (botocore's model plus the rules
table), the RunInstances request, tags, volumes, names, grains, summaries.  The driver file
is imported by path, as salt's loader does; validation runs against botocore's real EC2
service model."""

import datetime
import re
from pathlib import Path

import boto3
import botocore.exceptions
import botocore.parsers
import pytest
import yaml
from salt.exceptions import SaltCloudConfigError, SaltCloudSystemExit

from tools.salt_repo import load_module

REPO = Path(__file__).resolve().parents[2]


ec2 = load_module("clouds", "boto3_ec2")
MODEL = (
    boto3.session.Session(region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y")
    .client("ec2")
    .meta.service_model
)


def vm(**overrides):
    """A merged VM config as salt-cloud hands it to create()."""
    config = {
        "name": "db1",
        "image": "ami-0123456789abcdef0",
        "size": "t3.medium",
        "class": "dataserver",
        "keyname": "docker-hosts",
        "securitygroup": "docker-hosts",
        "iam_profile": "docker-host-minimal",
        "location": "eu-west-1",
    }
    config.update(overrides)
    return config


PROVIDER = {"driver": "boto3_ec2", "location": "eu-west-1"}


def validated(**overrides):
    """node_settings + the request + the model check, as create runs them."""
    settings = ec2.node_settings(vm(**overrides), PROVIDER)
    request, origins = ec2.run_instances_request(settings, "token")
    ec2.validate_request(MODEL, request, origins)
    return settings, request


def refused(**overrides):
    with pytest.raises(SaltCloudConfigError) as error:
        validated(**overrides)
    return str(error.value)


# --------------------------------------------------------------------------- the Docker volume


def test_docker_volume_defaults_are_the_drivers():
    mapping = ec2.docker_volume_mapping(None)
    mapping.pop("origin")
    assert mapping == ec2.DOCKER_VOLUME_DEFAULTS


def test_docs_quote_the_docker_volume_defaults():
    """docs/cloud-driver.md shows the defaults as YAML: it must say what the driver does."""
    text = (REPO / "docs" / "cloud-driver.md").read_text()
    block = re.search(r"```yaml\n(docker_volume:\n.*?)```", text, re.S).group(1)
    assert yaml.safe_load(block)["docker_volume"] == ec2.DOCKER_VOLUME_DEFAULTS
    assert "IMDSv2" in text and str(ec2.METADATA_OPTIONS_DEFAULTS) not in text


def test_docker_volume_overrides_merge_into_the_defaults():
    disk = ec2.docker_volume_mapping(
        {
            "DeviceName": "/dev/xvdf",
            "Ebs": {"VolumeSize": 50, "Iops": 6000, "Throughput": 250, "KmsKeyId": "alias/x"},
        }
    )
    assert disk["DeviceName"] == "/dev/xvdf"
    assert disk["Ebs"] == {
        "VolumeSize": 50,
        "VolumeType": "gp3",
        "Encrypted": True,
        "DeleteOnTermination": True,
        "Iops": 6000,
        "Throughput": 250,
        "KmsKeyId": "alias/x",
    }


def test_docker_disk_is_a_deprecated_alias(caplog):
    _, request = validated(docker_disk={"Ebs": {"VolumeSize": 30}})
    assert request["BlockDeviceMappings"][-1]["Ebs"]["VolumeSize"] == 30
    assert "'docker_disk' is deprecated" in caplog.text
    assert "both 'docker_volume' and its deprecated alias" in refused(
        docker_disk={}, docker_volume={}
    )
    # An error in the alias names the alias.
    assert "'docker_disk.Ebs.VolumeSize'" in refused(docker_disk={"Ebs": {"VolumeSize": "x"}})


@pytest.mark.parametrize(
    ("docker_volume", "message"),
    [
        ({"DeviceName": "/dev/sda"}, "'docker_volume.DeviceName' '/dev/sda' is not a data volume"),
        ({"DeviceName": "sdb"}, "'docker_volume.DeviceName' 'sdb' is not a data volume"),
        ({"Ebs": {"VolumeSize": "big"}}, "'docker_volume.Ebs.VolumeSize' has the wrong type"),
        ({"Ebs": {"VolumeSize": True}}, "'docker_volume.Ebs.VolumeSize' must be a number"),
        ({"Ebs": {"VolumeSize": 0}}, "'docker_volume.Ebs.VolumeSize' 0 GiB is out of range"),
        ({"Ebs": {"VolumeType": "gp9"}}, "'docker_volume.Ebs.VolumeType' must be one of"),
        ({"Ebs": {"Size": 8}}, "'docker_volume.Ebs.Size' is not a known setting"),
        ({"Ebs": {"VolumeSiz": 8}}, "did you mean VolumeSize?"),
        ({"Ebs": {"VolumeType": "gp2", "Throughput": 200}}, "only settable for gp3"),
        ({"Ebs": {"Encrypted": "yes"}}, "'docker_volume.Ebs.Encrypted' has the wrong type"),
        ({"VirtualName": "ephemeral0"}, "'docker_volume' takes only DeviceName and Ebs"),
        (["/dev/sdb"], "'docker_volume' must be a mapping"),
        ({"Ebs": "gp3"}, "'docker_volume.Ebs' must be a mapping"),
    ],
)
def test_docker_volume_errors_name_the_key(docker_volume, message):
    assert message in refused(docker_volume=docker_volume)


@pytest.mark.parametrize(
    ("ebs", "message"),
    [
        ({"Iops": 2999}, "2999 is out of range for gp3 (3000-80000)"),
        ({"Iops": 80001}, "out of range for gp3"),
        ({"Iops": 16000}, "more than 500 per GiB of 8 GiB"),
        ({"Throughput": 124}, "124 MiB/s is out of range for gp3 (125-2000)"),
        ({"Throughput": 2001}, "out of range for gp3"),
        ({"Throughput": 1000}, "needs at least 4000 Iops"),
        ({"VolumeSize": 65537}, "65537 GiB is out of range for gp3 (1-65536 GiB)"),
        ({"VolumeType": "io1"}, "'docker_volume.Ebs.Iops' is required for io1"),
        ({"VolumeType": "io1", "Iops": 99}, "out of range for io1 (100-64000)"),
        ({"VolumeType": "io1", "Iops": 1000}, "more than 50 per GiB"),
        ({"VolumeType": "io2", "Iops": 256001, "VolumeSize": 300}, "out of range for io2"),
        ({"VolumeType": "io1", "Iops": 100, "VolumeSize": 3}, "3 GiB is out of range for io1"),
        ({"VolumeType": "st1"}, "8 GiB is out of range for st1 (125-16384 GiB)"),
        ({"VolumeType": "sc1", "VolumeSize": 16385}, "out of range for sc1"),
        ({"VolumeType": "standard", "VolumeSize": 1025}, "out of range for standard (1-1024 GiB)"),
        ({"VolumeType": "gp2", "Iops": 3000}, "not settable for gp2"),
        ({"KmsKeyId": "alias/x", "Encrypted": False}, "'docker_volume.Ebs.KmsKeyId' needs"),
    ],
)
def test_ebs_rules_the_model_does_not_carry(ebs, message):
    assert message in refused(docker_volume={"Ebs": ebs})


def test_ebs_values_inside_the_ranges_pass():
    for ebs in (
        {"Iops": 16000, "Throughput": 1000, "VolumeSize": 32},
        {"Iops": 80000, "Throughput": 2000, "VolumeSize": 160},
        {"VolumeType": "io2", "Iops": 64000, "VolumeSize": 64},
        {"VolumeType": "st1", "VolumeSize": 125},
        {"VolumeSize": 65536},
    ):
        validated(docker_volume={"Ebs": ebs})


def test_block_device_mappings_add_the_docker_volume_last():
    root = {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 20}}
    _, request = validated(block_device_mappings=[root], docker_volume={"Ebs": {"VolumeSize": 30}})
    assert [m["DeviceName"] for m in request["BlockDeviceMappings"]] == ["/dev/xvda", "/dev/sdb"]
    assert request["BlockDeviceMappings"][1]["Ebs"]["VolumeSize"] == 30
    assert "origin" not in request["BlockDeviceMappings"][1]


def test_block_device_mapping_errors_name_their_index():
    assert "'block_device_mappings[0]' uses /dev/sdb, which is the Docker volume" in refused(
        block_device_mappings=[{"DeviceName": "/dev/sdb"}]
    )
    assert "names /dev/sdc twice" in refused(
        block_device_mappings=[{"DeviceName": "/dev/sdc"}, {"DeviceName": "/dev/sdc"}]
    )
    assert "must be a list" in refused(block_device_mappings={"DeviceName": "/dev/sdc"})
    assert "'block_device_mappings[0].Size' is not a known setting" in refused(
        block_device_mappings=[{"DeviceName": "/dev/sdc", "Size": 1}]
    )
    assert "'block_device_mappings[1].Ebs.VolumeSize' has the wrong type" in refused(
        block_device_mappings=[
            {"DeviceName": "/dev/sdc"},
            {"DeviceName": "/dev/sdd", "Ebs": {"VolumeSize": "1"}},
        ]
    )


# --------------------------------------------------------------------------- tags


def test_tags_name_class_container_and_extras():
    tags = ec2.node_tags("db1", "dataserver", {"team": "data", "backup": True, "tier": 2})
    assert tags == [
        {"Key": "Name", "Value": "db1"},
        {"Key": "class", "Value": "dataserver"},
        {"Key": "container", "Value": "docker"},
        {"Key": "team", "Value": "data"},
        {"Key": "backup", "Value": "true"},
        {"Key": "tier", "Value": "2"},
    ]


def test_the_instance_carries_the_docker_volume_device_tag():
    _, request = validated()
    instance, volume = request["TagSpecifications"]
    assert {"Key": "docker_volume_device", "Value": "/dev/sdb"} in instance["Tags"]
    assert volume["Tags"] == instance["Tags"][:-1]


@pytest.mark.parametrize("reserved", ["Name", "class", "container", "docker_volume_device"])
def test_tags_may_not_redefine_the_driver_tags(reserved):
    with pytest.raises(SaltCloudConfigError, match=rf"'tag\.{reserved}' is set by the driver"):
        ec2.node_tags("db1", "dataserver", {reserved: "x"})


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"aws:owner": "x"}, "'tag.aws:owner': tag keys starting with 'aws:' are AWS's"),
        ({"AWS:Owner": "x"}, "are AWS's"),
        ({"k" * 129: "x"}, "tag keys are 1-128 characters"),
        ({"": "x"}, "tag keys are 1-128 characters"),
        ({"team": "v" * 257}, "'tag.team': tag values are at most 256 characters"),
        ({f"t{i}": "x" for i in range(47)}, "EC2 allows 50 per resource"),
        ({"team": None}, "'tag.team' must map a name to a plain value"),
        ({"team": ["a"]}, "must map a name to a plain value"),
    ],
)
def test_tag_limits(tags, message):
    assert message in refused(tag=tags)


def test_46_extra_tags_fit():
    validated(tag={f"t{i}": "x" for i in range(46)})


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("web 1", "whitespace"),
        ("web\t1", "whitespace"),
        ("web\x1b1", "control characters"),
        ("web\u200b1", "control characters"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "starts with '.'"),
        (".hidden", "starts with '.'"),
        ("-x", "starts with '.' or '-'"),
        ("n" * 256, "longer than 255 bytes"),
        ("é" * 128, "longer than 255 bytes"),
        ("", "non-empty string"),
    ],
)
def test_node_names_must_be_safe_minion_ids_and_file_names(name, problem):
    assert problem in refused(name=name)


def test_the_minion_id_is_checked_too():
    assert "'minion.id' '../x' contains a path separator" in refused(minion={"id": "../x"})
    assert "longer than 255" in refused(minion={"append_domain": "d" * 253})
    assert ec2.minion_id_of({"name": "db1", "minion": {"append_domain": "example.org"}}) == (
        "db1.example.org"
    )
    assert ec2.minion_id_of({"name": "db1", "minion": {"id": "x"}}) == "x"


# --------------------------------------------------------------------------- the request


def test_node_settings_build_the_run_instances_request():
    settings, request = validated(
        securitygroupid=["sg-1", "sg-2"],
        subnetid="subnet-1",
        availability_zone="eu-west-1a",
        ebs_optimized=True,
        userdata="#cloud-config\n",
        tag={"team": "data"},
        docker_volume={"Ebs": {"VolumeSize": 50}},
    )
    assert settings["securitygroup"] == ["docker-hosts"]
    request = ec2.with_security_groups(request, ["sg-1", "sg-2", "sg-3"])
    tags = [
        {"Key": "Name", "Value": "db1"},
        {"Key": "class", "Value": "dataserver"},
        {"Key": "container", "Value": "docker"},
        {"Key": "team", "Value": "data"},
    ]
    assert request == {
        "ImageId": "ami-0123456789abcdef0",
        "InstanceType": "t3.medium",
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": "token",
        "KeyName": "docker-hosts",
        "SecurityGroupIds": ["sg-1", "sg-2", "sg-3"],
        "SubnetId": "subnet-1",
        "Placement": {"AvailabilityZone": "eu-west-1a"},
        "IamInstanceProfile": {"Name": "docker-host-minimal"},
        "EbsOptimized": True,
        "UserData": "#cloud-config\n",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "BlockDeviceMappings": [
            {
                "DeviceName": "/dev/sdb",
                "Ebs": {
                    "VolumeSize": 50,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
        "TagSpecifications": [
            {
                "ResourceType": "instance",
                "Tags": [*tags, {"Key": "docker_volume_device", "Value": "/dev/sdb"}],
            },
            {"ResourceType": "volume", "Tags": tags},
        ],
    }


def test_minimal_request_leaves_optional_parts_out():
    settings = ec2.node_settings(
        {"name": "w", "image": "ami-1", "size": "t3.nano", "class": "backends"}, {}
    )
    request, _ = ec2.run_instances_request(settings, "t")
    for absent in ("KeyName", "SecurityGroupIds", "SubnetId", "Placement", "UserData"):
        assert absent not in request
    assert request["EbsOptimized"] is False
    assert "InstanceMarketOptions" not in request


def test_iam_profile_by_name_or_arn():
    assert ec2.iam_profile_spec("docker-host-minimal") == {"Name": "docker-host-minimal"}
    arn = "arn:aws:iam::123456789012:instance-profile/docker-host-minimal"
    assert ec2.iam_profile_spec(arn) == {"Arn": arn}


def test_metadata_options_default_to_imdsv2_and_follow_the_model():
    assert ec2.metadata_options(None) == ec2.METADATA_OPTIONS_DEFAULTS
    _, request = validated(metadata_options={"HttpPutResponseHopLimit": 2})
    assert request["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
    assert "'metadata_options.HttpTokens' must be one of ['optional', 'required']" in refused(
        metadata_options={"HttpTokens": "sometimes"}
    )
    assert "'metadata_options.Tokens' is not a known setting" in refused(
        metadata_options={"Tokens": "required"}
    )
    for hops in (0, 65, 100):
        assert "HttpPutResponseHopLimit' must be 1-64" in refused(
            metadata_options={"HttpPutResponseHopLimit": hops}
        )


def test_spot_becomes_instance_market_options():
    _, request = validated(spot={"max_price": 0.05})
    assert request["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {
            "InstanceInterruptionBehavior": "terminate",
            "SpotInstanceType": "one-time",
            "MaxPrice": "0.05",
        },
    }
    _, request = validated(spot={"interruption_behavior": "stop"})
    assert request["InstanceMarketOptions"]["SpotOptions"]["SpotInstanceType"] == "persistent"
    assert "'spot.interruption_behavior' must be one of" in refused(
        spot={"interruption_behavior": "pause"}
    )
    assert "'spot.max_price' must be a positive price" in refused(spot={"max_price": "cheap"})
    assert "'spot.max_price' must be a positive price" in refused(spot={"max_price": 0})
    assert "did you mean 'spot.max_price'" in refused(spot={"max_prise": "1"})
    assert "'termination_protection' cannot be set on a spot instance" in refused(
        spot=True, termination_protection=True
    )


def test_userdata_file_is_read_and_limited(tmp_path):
    userdata = tmp_path / "user-data"
    userdata.write_text("#!/bin/sh\necho hi\n")
    settings, _ = validated(userdata_file=str(userdata))
    assert settings["userdata"] == "#!/bin/sh\necho hi\n"
    userdata.write_text("x" * 16385)
    assert "'userdata_file' is 16385 bytes: EC2 takes at most 16384" in refused(
        userdata_file=str(userdata)
    )
    assert "'userdata' is 16385 bytes" in refused(userdata="x" * 16385)
    validated(userdata="x" * 16384)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image": None}, "'image' (AMI id) is not set for 'db1'"),
        ({"image": "debian-12"}, "'image' must be an AMI id"),
        ({"size": None}, "'size' (instance type) is not set"),
        ({"class": None}, "'class' (node class: use a class profile) is not set"),
        ({"class": "data server"}, "'class' 'data server' must be letters"),
        ({"ssh_interface": "public"}, "'ssh_interface' must be one of"),
        ({"ebs_optimized": "yes"}, "'ebs_optimized' has the wrong type"),
        ({"securitygroup": 5}, "'securitygroup' must be a string or a list of strings"),
        ({"securitygroupid": ["sg-1", 2]}, "'securitygroupid' must be a string or a list"),
        ({"userdata": "x", "userdata_file": "/y"}, "set 'userdata' or 'userdata_file', not both"),
        ({"userdata_file": "/nonexistent/user-data"}, "'userdata_file' '/nonexistent/user-data'"),
        ({"iam_profile": ""}, "'iam_profile' must be a name or an ARN"),
        ({"location": "us-east-1"}, "'location' is a provider setting"),
        ({"endpoint_url": "http://x"}, "'endpoint_url' is a provider setting"),
        ({"retry_mode": "adaptive"}, "'retry_mode' is a provider setting"),
        ({"tag": ["a"]}, "'tag' must map tag names to values"),
        ({"instance_wait_timeout": "10m"}, "'instance_wait_timeout' must be a positive number"),
        ({"instance_wait_timeout": -1}, "'instance_wait_timeout' must be a positive number"),
        ({"instance_wait_timeout": 0}, "'instance_wait_timeout' must be a positive number"),
        ({"cleanup_timeout": True}, "'cleanup_timeout' must be a positive number"),
        ({"termination_protection": "yes"}, "'termination_protection' must be true or false"),
        ({"docker_volme": {}}, "unknown key 'docker_volme': did you mean 'docker_volume'?"),
        ({"securitygroups": "x"}, "did you mean 'securitygroup'?"),
        ({"minion": "master"}, "'minion' must be a mapping"),
    ],
)
def test_node_settings_errors_name_the_key(overrides, message):
    assert message in refused(**overrides)


def test_salt_clouds_own_keys_are_not_typos():
    """A merged vm_ as salt-cloud hands it over holds many keys of its own."""
    core = {
        "driver": "boto3_ec2",
        "provider": "aws:boto3_ec2",
        "profile": "dataserver",
        "pub_key": None,
        "priv_key": None,
        "os": "bootstrap-salt",
        "inline_script": None,
        "ssh_username": "admin",
        "ssh_port": 22,
        "script": "bootstrap-salt",
        "script_args": "-x",
        "deploy": True,
        "minion": {"master": "salt"},
        "grains": {},
        "extends": "base",
        "tmp_dir": "/tmp/x",
        "display_ssh_output": False,
        "ssh_connect_timeout": 5,
        "wait_for_passwd_maxtries": 3,
        "make_master": False,
        "keysize": 2048,
        "sync_after_install": "all",
        "delvol_on_destroy": True,
        "ssh_gateway": "gw",
        "win_installer": None,
        "file_map": {},
        "volumes": [],
    }
    validated(**core)


def test_connection_settings():
    conn = ec2.connection_settings({"location": "eu-west-1"})
    assert (conn["location"], conn["retry_mode"], conn["max_attempts"]) == (
        "eu-west-1",
        "standard",
        5,
    )
    assert ec2.connection_settings({"retry_mode": "adaptive", "max_attempts": 10})[
        "max_attempts"
    ] == (10)
    for bad, message in (
        ({"id": "AKIA..."}, "'id' and 'key' go together"),
        ({"retry_mode": "legacy"}, "'retry_mode' must be one of ['standard', 'adaptive']"),
        ({"max_attempts": 0}, "'max_attempts' must be an integer 1-20"),
        ({"max_attempts": "5"}, "'max_attempts' must be an integer 1-20"),
        ({"endpoint_url": "ftp://x"}, "'endpoint_url' must be an http(s) URL"),
        ({"location": ""}, "'location' must be a non-empty string"),
    ):
        with pytest.raises(SaltCloudConfigError) as error:
            ec2.connection_settings(bad)
        assert message in str(error.value)


# --------------------------------------------------------------------------- pure helpers

INSTANCE = {
    "InstanceId": "i-1",
    "ImageId": "ami-1",
    "InstanceType": "t3.medium",
    "State": {"Name": "running"},
    "PrivateIpAddress": "10.0.0.5",
    "PublicIpAddress": "54.1.2.3",
    "RootDeviceName": "/dev/xvda",
    "Placement": {"AvailabilityZone": "eu-west-1a"},
    "Tags": [
        {"Key": "Name", "Value": "db1"},
        {"Key": "class", "Value": "dataserver"},
        {"Key": "docker_volume_device", "Value": "/dev/sdb"},
    ],
    "SecurityGroups": [{"GroupId": "sg-1", "GroupName": "docker-hosts"}],
    "IamInstanceProfile": {"Arn": "arn:aws:iam::1:instance-profile/p"},
    "MetadataOptions": {"State": "applied", "HttpTokens": "required"},
    "LaunchTime": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "BlockDeviceMappings": [
        {"DeviceName": "/dev/xvda", "Ebs": {"VolumeId": "vol-0", "DeleteOnTermination": True}},
        {"DeviceName": "/dev/sdb", "Ebs": {"VolumeId": "vol-1", "DeleteOnTermination": True}},
    ],
}


def test_ssh_address_by_interface():
    assert ec2.ssh_address(INSTANCE, "private_ips") == "10.0.0.5"
    assert ec2.ssh_address(INSTANCE, "public_ips") == "54.1.2.3"
    with pytest.raises(SaltCloudSystemExit, match="has no public address"):
        ec2.ssh_address({"InstanceId": "i-2", "PrivateIpAddress": "10.0.0.6"}, "public_ips")


def test_grains_carry_class_and_the_docker_volume_under_both_names():
    volume = ec2.docker_volume_grain(INSTANCE, "/dev/sdb")
    assert volume == {"device_name": "/dev/sdb", "volume_id": "vol-1"}
    grains = ec2.minion_grains({"role": "x", "class": "old"}, "dataserver", volume)
    assert grains == {
        "role": "x",
        "class": "dataserver",
        "docker_ebs_volume": {"device_name": "/dev/sdb", "volume_id": "vol-1"},
        "docker_disk": {"device": "/dev/sdb", "volume_id": "vol-1"},
    }
    with pytest.raises(SaltCloudSystemExit, match="no volume attached as /dev/sdc"):
        ec2.docker_volume_grain(INSTANCE, "/dev/sdc")


def test_the_docker_volume_of_a_node():
    assert ec2.docker_volume_mapping_of(INSTANCE)["Ebs"]["VolumeId"] == "vol-1"
    untagged = {**INSTANCE, "Tags": [{"Key": "Name", "Value": "old"}]}
    # Nodes from before the tag: the one data volume.
    assert ec2.docker_volume_mapping_of(untagged)["Ebs"]["VolumeId"] == "vol-1"
    two = {
        **untagged,
        "BlockDeviceMappings": [
            *INSTANCE["BlockDeviceMappings"],
            {"DeviceName": "/dev/sdc", "Ebs": {"VolumeId": "vol-2"}},
        ],
    }
    with pytest.raises(SaltCloudSystemExit, match="cannot tell which one is Docker's"):
        ec2.docker_volume_mapping_of(two)


def test_grow_arguments():
    assert ec2.grow_size_argument({"size": "20"}) == 20
    for kwargs, message in (
        (None, "needs size=<GiB>"),
        ({"size": "big"}, "needs size=<GiB>"),
        ({"size": "-3"}, "needs size=<GiB>"),
        ({"size": "10", "type": "io2"}, "takes only size=<GiB>"),
    ):
        with pytest.raises(SaltCloudSystemExit, match=re.escape(message)):
            ec2.grow_size_argument(kwargs)
    volume = {"VolumeId": "vol-1", "Size": 50, "VolumeType": "gp3"}
    assert ec2.check_growth(volume, 60) == 50
    with pytest.raises(SaltCloudSystemExit, match="cannot shrink"):
        ec2.check_growth(volume, 40)
    with pytest.raises(SaltCloudSystemExit, match="at most 65536 GiB"):
        ec2.check_growth(volume, 70000)


def test_node_summary_and_details():
    assert ec2.node_summary(INSTANCE) == {
        "id": "i-1",
        "image": "ami-1",
        "size": "t3.medium",
        "state": "running",
        "private_ips": ["10.0.0.5"],
        "public_ips": ["54.1.2.3"],
    }
    volume = {"VolumeId": "vol-1", "Size": 50, "VolumeType": "gp3", "Encrypted": True}
    details = ec2.node_details(INSTANCE, {"vol-1": volume})
    assert details["class"] == "dataserver"
    assert details["security_groups"] == {"sg-1": "docker-hosts"}
    assert details["metadata_options"] == {"HttpTokens": "required"}
    assert details["launch_time"] == "2026-01-02T03:04:05+00:00"
    assert details["lifecycle"] == "on-demand"
    assert details["volumes"]["/dev/sdb"]["size"] == 50
    assert details["volumes"]["/dev/sdb"]["delete_on_termination"] is True
    assert ec2.node_name({"InstanceId": "i-9"}) == "i-9"


def test_race_winner_is_the_earliest_launch():
    early = {"InstanceId": "i-b", "LaunchTime": datetime.datetime(2026, 1, 1, 0, 0, 1)}
    late = {"InstanceId": "i-a", "LaunchTime": datetime.datetime(2026, 1, 1, 0, 0, 2)}
    same = {"InstanceId": "i-0", "LaunchTime": datetime.datetime(2026, 1, 1, 0, 0, 1)}
    assert ec2.race_winner([early]) is None
    assert ec2.race_winner([late, early]) is early
    assert ec2.race_winner([early, same, late]) is same


def test_map_names_in_every_shape_salt_cloud_accepts():
    rendered = {
        "backends": ["w1", {"w2": {"grains": {}}}, {"w3": None}],
        "dataserver": {"d1": {}, "d2": {}},
        "single": "s1",
    }
    assert ec2.map_names(rendered) == ["w1", "w2", "w3", "d1", "d2", "s1"]
    assert ec2.map_names(None) == []


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
    assert ec2.protected_instance_id(refusal, ["i-0abc", "i-1"]) == "i-0abc"
    assert ec2.protected_instance_id(refusal, ["i-1"]) is None


def throttle(code="RequestLimitExceeded", status=400):
    return botocore.exceptions.ClientError(
        {
            "Error": {"Code": code, "Message": "slow down"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "DescribeInstances",
    )


def test_transient_errors_are_botocores():
    assert ec2.is_transient(throttle())
    assert ec2.is_transient(throttle("ServiceUnavailable", 503))
    assert ec2.is_transient(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"))
    assert ec2.is_transient(botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"))
    # A garbled answer (an HTML error page from something in between) is no BotoCoreError.
    assert ec2.is_transient(botocore.parsers.ResponseParserError("invalid XML received"))
    assert not ec2.is_transient(throttle("UnauthorizedOperation", 403))
    assert not ec2.is_transient(throttle("InvalidParameterValue", 400))


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:5050", True),
        ("http://localhost:5050", True),
        ("http://[::1]:5050", True),
        ("https://ec2.eu-west-1.amazonaws.com", False),
        ("http://10.0.0.1:5050", False),
        (None, False),
    ],
)
def test_loopback_endpoint(url, local):
    assert ec2.is_loopback_endpoint(url) is local


def test_aws_error_message_keeps_code_and_message():
    quota = botocore.exceptions.ClientError(
        {
            "Error": {
                "Code": "InstanceLimitExceeded",
                "Message": "You have requested more instances (21) than your current limit",
            }
        },
        "RunInstances",
    )
    assert ec2.aws_error_message(quota) == (
        "RunInstances failed: InstanceLimitExceeded: "
        "You have requested more instances (21) than your current limit"
    )


def test_the_old_hand_kept_tables_are_gone():
    for name in ("EBS_KEYS", "VOLUME_TYPES", "METADATA_OPTION_VALUES"):
        assert not hasattr(ec2, name)
