"""dockerhosts_profile, the driver's profile checks: botocore's EC2 model plus the rules
table, the RunInstances request, tags, the Docker volume. Validation runs against botocore's
real EC2 service model."""

import re
from pathlib import Path

import boto3
import pytest
import yaml

from tools.salt_repo import load_module

REPO = Path(__file__).resolve().parents[2]
profile = load_module("utils", "dockerhosts_profile")
MODEL = (
    boto3.session.Session(region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y")
    .client("ec2")
    .meta.service_model
)
PROVIDER = {"driver": "boto3_ec2", "location": "eu-west-1"}


def vm(**overrides):
    """A merged VM config as salt-cloud hands it to the driver."""
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


def validated(**overrides):
    settings, request, _, problems = profile.node_settings(vm(**overrides), PROVIDER, MODEL)
    assert problems == []
    return settings, request


def refused(**overrides):
    *_, problems = profile.node_settings(vm(**overrides), PROVIDER, MODEL)
    assert problems
    return profile.problems_message(problems)


# --------------------------------------------------------------------------- the Docker volume


def test_docs_quote_the_docker_volume_defaults():
    """docs/cloud-driver.md shows the defaults as YAML: it must say what the driver does."""
    text = (REPO / "docs" / "cloud-driver.md").read_text()
    block = re.search(r"```yaml\n(docker_volume:\n.*?)```", text, re.S).group(1)
    assert yaml.safe_load(block)["docker_volume"] == profile.DOCKER_VOLUME_DEFAULTS
    assert "IMDSv2" in text


def test_docker_volume_overrides_merge_into_the_defaults():
    disk = profile.docker_volume_mapping(
        {"docker_volume": {"DeviceName": "/dev/xvdf", "Ebs": {"VolumeSize": 50, "Iops": 6000}}}
    )
    assert disk == {
        "DeviceName": "/dev/xvdf",
        "Ebs": {
            "VolumeSize": 50,
            "VolumeType": "gp3",
            "Encrypted": True,
            "DeleteOnTermination": True,
            "Iops": 6000,
        },
    }
    assert profile.docker_volume_mapping({}) == profile.DOCKER_VOLUME_DEFAULTS


def test_the_old_name_of_the_docker_volume_is_refused_naming_the_new_one():
    assert refused(docker_disk={"Ebs": {"VolumeSize": 30}}) == (
        "'docker_disk' was renamed: call it 'docker_volume'"
    )


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


@pytest.mark.parametrize(
    "ebs",
    [
        {"Iops": 16000, "Throughput": 1000, "VolumeSize": 32},
        {"Iops": 80000, "Throughput": 2000, "VolumeSize": 160},
        {"Iops": 3000, "Throughput": 125, "VolumeSize": 1},
        {"VolumeType": "io2", "Iops": 64000, "VolumeSize": 64},
        {"VolumeType": "io1", "Iops": 100, "VolumeSize": 4},
        {"VolumeType": "st1", "VolumeSize": 125},
        {"VolumeType": "sc1", "VolumeSize": 16384},
        {"VolumeType": "standard", "VolumeSize": 1024},
        {"VolumeSize": 65536},
        {"VolumeType": "gp2", "VolumeSize": 16384},
    ],
)
def test_ebs_values_at_the_edges_pass(ebs):
    validated(docker_volume={"Ebs": ebs})


def test_block_device_mappings_add_the_docker_volume_last():
    root = {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 20}}
    _, request = validated(block_device_mappings=[root], docker_volume={"Ebs": {"VolumeSize": 30}})
    assert [m["DeviceName"] for m in request["BlockDeviceMappings"]] == ["/dev/xvda", "/dev/sdb"]
    assert request["BlockDeviceMappings"][1]["Ebs"]["VolumeSize"] == 30


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


def test_the_instance_and_its_volumes_are_tagged_at_launch():
    settings, request = validated(tag={"team": "data", "backup": True, "tier": 2})
    instance, volume = request["TagSpecifications"]
    extras = [
        {"Key": "team", "Value": "data"},
        {"Key": "backup", "Value": "true"},
        {"Key": "tier", "Value": "2"},
    ]
    assert instance == {
        "ResourceType": "instance",
        "Tags": [
            {"Key": "Name", "Value": "db1"},
            {"Key": "class", "Value": "dataserver"},
            {"Key": "container", "Value": "docker"},
            {"Key": "docker_volume", "Value": "/dev/sdb"},
            *extras,
        ],
    }
    assert volume == {
        "ResourceType": "volume",
        "Tags": [
            {"Key": "Name", "Value": "db1"},
            {"Key": "class", "Value": "dataserver"},
            {"Key": "node", "Value": "db1"},
            *extras,
        ],
    }
    # A batch names its instances right after the launch: no Name, no node at launch.
    batch = profile.run_instances_request(settings, "t", 3)
    assert batch["MaxCount"] == 3 and batch["MinCount"] == 1
    keys = [[tag["Key"] for tag in spec["Tags"]] for spec in batch["TagSpecifications"]]
    assert keys == [
        ["class", "container", "docker_volume", "team", "backup", "tier"],
        ["class", "team", "backup", "tier"],
    ]


@pytest.mark.parametrize(
    "reserved",
    ["Name", "class", "container", "node", "role", "docker_volume", "docker_volume_device"],
)
def test_tags_may_not_redefine_the_driver_tags(reserved):
    assert f"'tag.{reserved}' is set by the driver" in refused(tag={reserved: "x"})


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"aws:owner": "x"}, "'tag.aws:owner' tag keys are 1-128 characters, not starting with"),
        ({"AWS:Owner": "x"}, "not starting with 'aws:' (AWS's)"),
        ({"k" * 129: "x"}, "tag keys are 1-128 characters"),
        ({"": "x"}, "tag keys are 1-128 characters"),
        ({"team": "v" * 257}, "'tag.team' tag values are at most 256 characters"),
        ({f"t{i}": "x" for i in range(45)}, "EC2 allows 50 per resource"),
        ({"team": None}, "'tag.team' must map a name to a plain value"),
        ({"team": ["a"]}, "must map a name to a plain value"),
    ],
)
def test_tag_limits(tags, message):
    assert message in refused(tag=tags)


def test_44_extra_tags_fit():
    validated(tag={f"t{i}": "x" for i in range(44)})


# --------------------------------------------------------------------------- the request


def test_node_settings_build_the_run_instances_request():
    settings, request = validated(
        securitygroupid=["sg-1", "sg-2"],
        subnetid="subnet-1",
        availability_zone="eu-west-1a",
        ebs_optimized=True,
        userdata="#cloud-config\n",
        docker_volume={"Ebs": {"VolumeSize": 50}},
    )
    assert settings["securitygroup"] == ["docker-hosts"]
    request.pop("TagSpecifications")
    assert request == {
        "ImageId": "ami-0123456789abcdef0",
        "InstanceType": "t3.medium",
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": "validation",
        "KeyName": "docker-hosts",
        "SecurityGroupIds": ["sg-1", "sg-2"],
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
    }


def test_minimal_request_leaves_optional_parts_out():
    config = {"name": "w", "image": "ami-1", "size": "t3.nano", "class": "backends"}
    _, request, _, problems = profile.node_settings(config, {}, MODEL)
    assert problems == []
    for absent in ("KeyName", "SecurityGroupIds", "SubnetId", "Placement", "UserData"):
        assert absent not in request
    assert request["EbsOptimized"] is False
    assert "InstanceMarketOptions" not in request


def test_iam_profile_by_name_or_arn():
    arn = "arn:aws:iam::123456789012:instance-profile/docker-host-minimal"
    assert validated(iam_profile=arn)[1]["IamInstanceProfile"] == {"Arn": arn}


def test_metadata_options_default_to_imdsv2_and_follow_the_model():
    _, request = validated(metadata_options={"HttpPutResponseHopLimit": 2})
    assert request["MetadataOptions"] == {
        **profile.METADATA_OPTIONS_DEFAULTS,
        "HttpPutResponseHopLimit": 2,
    }
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
        ({"ssh_interface": "public"}, "'ssh_interface' must be one of"),
        ({"ebs_optimized": "yes"}, "'ebs_optimized' has the wrong type"),
        ({"securitygroup": 5}, "'securitygroup' must be a string or a list of strings"),
        ({"securitygroupid": ["sg-1", 2]}, "'securitygroupid' must be a string or a list"),
        ({"userdata": "x", "userdata_file": "/y"}, "'userdata' and 'userdata_file' are both"),
        ({"userdata_file": "/nonexistent/user-data"}, "'userdata_file' '/nonexistent/user-data'"),
        ({"iam_profile": ""}, "'iam_profile' must be a non-empty string"),
        ({"location": "us-east-1"}, "'location' is a provider setting"),
        ({"endpoint_url": "http://x"}, "'endpoint_url' is a provider setting"),
        ({"retry_mode": "adaptive"}, "'retry_mode' is a provider setting"),
        ({"tag": ["a"]}, "'tag' must map tag names to values"),
        ({"instance_wait_timeout": "10m"}, "'instance_wait_timeout' must be a positive number"),
        ({"instance_wait_timeout": -1}, "'instance_wait_timeout' must be a positive number"),
        ({"instance_wait_timeout": 0}, "'instance_wait_timeout' must be a positive number"),
        ({"cleanup_timeout": True}, "'cleanup_timeout' must be a positive number"),
        ({"termination_protection": "yes"}, "'termination_protection' must be one of"),
        ({"docker_volme": {}}, "'docker_volme' is not a key of this driver: did you mean"),
        ({"securitygroups": "x"}, "did you mean 'securitygroup'?"),
    ],
)
def test_node_settings_errors_name_the_key(overrides, message):
    assert message in refused(**overrides)


def test_every_problem_is_reported_at_once():
    message = refused(image="debian", ssh_interface="x", tag=["a"], docker_volume={"Ebs": 1})
    for key in ("image", "ssh_interface", "tag", "docker_volume.Ebs"):
        assert f"'{key}'" in message


def test_salt_clouds_own_keys_are_not_typos():
    """A merged vm_ as salt-cloud hands it over holds many keys of its own."""
    core = {
        "driver": "boto3_ec2",
        "provider": "aws:boto3_ec2",
        "profile": "dataserver",
        "pub_key": None,
        "os": "bootstrap-salt",
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
        "keysize": 2048,
        "sync_after_install": "all",
        "delvol_on_destroy": True,
        "volumes": [],
    }
    validated(**core)


def test_connection_settings():
    conn, problems = profile.connection_settings({"location": "eu-west-1"})
    assert problems == []
    assert (conn["location"], conn["retry_mode"], conn["max_attempts"]) == (
        "eu-west-1",
        "standard",
        5,
    )
    assert (conn["instance_wait_timeout"], conn["cleanup_timeout"]) == (600, 600)
    for bad, message in (
        ({"id": "AKIA..."}, "'id' and 'key' go together"),
        ({"retry_mode": "legacy"}, "'retry_mode' must be standard or adaptive"),
        ({"max_attempts": 0}, "'max_attempts' must be an integer 1-20"),
        ({"max_attempts": "5"}, "'max_attempts' must be an integer 1-20"),
        ({"endpoint_url": "ftp://x"}, "'endpoint_url' must be an http(s) URL"),
        ({"location": ""}, "'location' must be a non-empty string"),
        ({"cleanup_timeout": -5}, "'cleanup_timeout' must be a positive number"),
    ):
        _, problems = profile.connection_settings(bad)
        assert message in profile.problems_message(problems)


def test_profile_key_maps_request_paths_back():
    origins = profile.request_origins(validated()[0])
    assert profile.profile_key("BlockDeviceMappings[0].Ebs.Iops", origins) == (
        "docker_volume.Ebs.Iops"
    )
    assert profile.profile_key("MetadataOptions.HttpTokens", origins) == (
        "metadata_options.HttpTokens"
    )
    assert profile.profile_key("Unknown.Path", origins) == "Unknown.Path"
