"""The boto3_ec2 driver's own logic: config validation, RunInstances arguments, tags, disks,
address choice, grains.  The driver file is imported by path, as salt's loader does."""

import datetime
import importlib.util
from pathlib import Path

import botocore.exceptions
import pytest
from salt.exceptions import SaltCloudConfigError, SaltCloudSystemExit

DRIVER = Path(__file__).resolve().parents[2] / "salt" / "_clouds" / "boto3_ec2.py"


def _load_driver():
    spec = importlib.util.spec_from_file_location("boto3_ec2_under_test", DRIVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ec2 = _load_driver()


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


def test_docker_disk_defaults():
    assert ec2.docker_disk_mapping(None) == {
        "DeviceName": "/dev/sdb",
        "Ebs": {
            "VolumeSize": 8,
            "VolumeType": "gp3",
            "Encrypted": True,
            "DeleteOnTermination": True,
        },
    }


def test_docker_disk_overrides_merge_into_the_defaults():
    disk = ec2.docker_disk_mapping(
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


@pytest.mark.parametrize(
    ("docker_disk", "message"),
    [
        ({"DeviceName": "/dev/sda"}, "'docker_disk.DeviceName' '/dev/sda' is not a data disk"),
        ({"DeviceName": "sdb"}, "'docker_disk.DeviceName' 'sdb' is not an EC2 device name"),
        ({"Ebs": {"VolumeSize": "big"}}, "'docker_disk.Ebs.VolumeSize' must be an integer"),
        ({"Ebs": {"VolumeSize": True}}, "'docker_disk.Ebs.VolumeSize' must be an integer"),
        ({"Ebs": {"VolumeSize": 0}}, "'docker_disk.Ebs.VolumeSize' 0 is out of range"),
        ({"Ebs": {"VolumeType": "gp9"}}, "'docker_disk.Ebs.VolumeType' 'gp9' is not"),
        ({"Ebs": {"Size": 8}}, "'docker_disk.Ebs.Size' is not an EBS setting"),
        ({"Ebs": {"VolumeType": "gp2", "Throughput": 200}}, "Throughput' is only valid for gp3"),
        ({"Ebs": {"Encrypted": "yes"}}, "'docker_disk.Ebs.Encrypted' must be a bool"),
        ({"VirtualName": "ephemeral0"}, "'docker_disk' takes only DeviceName and Ebs"),
        (["/dev/sdb"], "'docker_disk' must be a mapping"),
    ],
)
def test_docker_disk_errors_name_the_key(docker_disk, message):
    with pytest.raises(SaltCloudConfigError) as error:
        ec2.docker_disk_mapping(docker_disk)
    assert message in str(error.value)


def test_block_device_mappings_add_the_docker_disk_last():
    root = {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 20}}
    mappings = ec2.block_device_mappings([root], {"Ebs": {"VolumeSize": 30}})
    assert [m["DeviceName"] for m in mappings] == ["/dev/xvda", "/dev/sdb"]
    assert mappings[1]["Ebs"]["VolumeSize"] == 30


def test_block_device_mappings_refuse_the_docker_disk_device():
    with pytest.raises(SaltCloudConfigError) as error:
        ec2.block_device_mappings([{"DeviceName": "/dev/sdb"}], None)
    assert "'block_device_mappings[0]' uses /dev/sdb, which is the Docker disk" in str(error.value)


def test_block_device_mappings_refuse_duplicates_and_bad_shapes():
    with pytest.raises(SaltCloudConfigError, match="names /dev/sdc twice"):
        ec2.block_device_mappings([{"DeviceName": "/dev/sdc"}, {"DeviceName": "/dev/sdc"}], None)
    with pytest.raises(SaltCloudConfigError, match="must be a list"):
        ec2.block_device_mappings({"DeviceName": "/dev/sdc"}, None)
    with pytest.raises(SaltCloudConfigError, match=r"block_device_mappings\[0\]' has unknown"):
        ec2.block_device_mappings([{"DeviceName": "/dev/sdc", "Size": 1}], None)


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


@pytest.mark.parametrize("reserved", ["Name", "class", "container"])
def test_tags_may_not_redefine_the_driver_tags(reserved):
    with pytest.raises(SaltCloudConfigError, match=rf"'tag\.{reserved}' is set by the driver"):
        ec2.node_tags("db1", "dataserver", {reserved: "x"})


def test_iam_profile_by_name_or_arn():
    assert ec2.iam_profile_spec("docker-host-minimal") == {"Name": "docker-host-minimal"}
    arn = "arn:aws:iam::123456789012:instance-profile/docker-host-minimal"
    assert ec2.iam_profile_spec(arn) == {"Arn": arn}


def test_metadata_options_default_to_imdsv2_and_validate():
    assert ec2.metadata_options(None) == {"HttpTokens": "required", "HttpEndpoint": "enabled"}
    assert ec2.metadata_options({"HttpPutResponseHopLimit": 2})["HttpPutResponseHopLimit"] == 2
    with pytest.raises(SaltCloudConfigError, match=r"'metadata_options\.HttpTokens' must be one"):
        ec2.metadata_options({"HttpTokens": "sometimes"})
    with pytest.raises(SaltCloudConfigError, match=r"'metadata_options\.Tokens' is not"):
        ec2.metadata_options({"Tokens": "required"})


def test_node_settings_build_run_instances_kwargs():
    settings = ec2.node_settings(
        vm(
            securitygroupid=["sg-1", "sg-2"],
            subnetid="subnet-1",
            availability_zone="eu-west-1a",
            ebs_optimized=True,
            userdata="#cloud-config\n",
            tag={"team": "data"},
            docker_disk={"Ebs": {"VolumeSize": 50}},
        ),
        PROVIDER,
    )
    assert settings["securitygroup"] == ["docker-hosts"]
    kwargs = ec2.run_instances_kwargs(settings, ["sg-1", "sg-2", "sg-3"])
    tags = [
        {"Key": "Name", "Value": "db1"},
        {"Key": "class", "Value": "dataserver"},
        {"Key": "container", "Value": "docker"},
        {"Key": "team", "Value": "data"},
    ]
    assert kwargs == {
        "ImageId": "ami-0123456789abcdef0",
        "InstanceType": "t3.medium",
        "MinCount": 1,
        "MaxCount": 1,
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
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
    }


def test_node_settings_minimal_kwargs_leave_optional_parts_out():
    settings = ec2.node_settings(
        {"name": "w", "image": "ami-1", "size": "t3.nano", "class": "backends"}, {}
    )
    kwargs = ec2.run_instances_kwargs(settings, [])
    for absent in ("KeyName", "SecurityGroupIds", "SubnetId", "Placement", "UserData"):
        assert absent not in kwargs
    assert kwargs["EbsOptimized"] is False


def test_userdata_file_is_read(tmp_path):
    userdata = tmp_path / "user-data"
    userdata.write_text("#!/bin/sh\necho hi\n")
    settings = ec2.node_settings(vm(userdata_file=str(userdata)), PROVIDER)
    assert settings["userdata"] == "#!/bin/sh\necho hi\n"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image": None}, "'image' (AMI id) is not set for 'db1'"),
        ({"image": "debian-12"}, "'image' must be an AMI id"),
        ({"size": None}, "'size' (instance type) is not set"),
        ({"class": None}, "'class' (node class: use a class profile) is not set"),
        ({"class": "data server"}, "'class' 'data server' must be letters"),
        ({"ssh_interface": "public"}, "'ssh_interface' must be one of"),
        ({"ebs_optimized": "yes"}, "'ebs_optimized' must be true or false"),
        ({"securitygroup": 5}, "'securitygroup' must be a string or a list of strings"),
        ({"securitygroupid": ["sg-1", 2]}, "'securitygroupid' must be a string or a list"),
        ({"userdata": "x", "userdata_file": "/y"}, "set 'userdata' or 'userdata_file', not both"),
        ({"userdata_file": "/nonexistent/user-data"}, "'userdata_file' '/nonexistent/user-data'"),
        ({"iam_profile": ""}, "'iam_profile' must be a name or an ARN"),
        ({"location": "us-east-1"}, "'location' is a provider setting"),
        ({"endpoint_url": "http://x"}, "'endpoint_url' is a provider setting"),
        ({"tag": ["a"]}, "'tag' must map tag names to values"),
        ({"instance_wait_timeout": "10m"}, "'instance_wait_timeout' must be an integer"),
    ],
)
def test_node_settings_errors_name_the_key(overrides, message):
    with pytest.raises(SaltCloudConfigError) as error:
        ec2.node_settings(vm(**overrides), PROVIDER)
    assert message in str(error.value)


def test_connection_settings_need_both_id_and_key():
    assert ec2.connection_settings({"location": "eu-west-1"})["location"] == "eu-west-1"
    with pytest.raises(SaltCloudConfigError, match="'id' and 'key' go together"):
        ec2.connection_settings({"id": "AKIA..."})


INSTANCE = {
    "InstanceId": "i-1",
    "ImageId": "ami-1",
    "InstanceType": "t3.medium",
    "State": {"Name": "running"},
    "PrivateIpAddress": "10.0.0.5",
    "PublicIpAddress": "54.1.2.3",
    "Placement": {"AvailabilityZone": "eu-west-1a"},
    "Tags": [{"Key": "Name", "Value": "db1"}, {"Key": "class", "Value": "dataserver"}],
    "SecurityGroups": [{"GroupId": "sg-1", "GroupName": "docker-hosts"}],
    "IamInstanceProfile": {"Arn": "arn:aws:iam::1:instance-profile/p"},
    "MetadataOptions": {"State": "applied", "HttpTokens": "required"},
    "LaunchTime": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "BlockDeviceMappings": [
        {"DeviceName": "/dev/sdb", "Ebs": {"VolumeId": "vol-1", "DeleteOnTermination": True}}
    ],
}


def test_ssh_address_by_interface():
    assert ec2.ssh_address(INSTANCE, "private_ips") == "10.0.0.5"
    assert ec2.ssh_address(INSTANCE, "public_ips") == "54.1.2.3"
    with pytest.raises(SaltCloudSystemExit, match="has no public address"):
        ec2.ssh_address({"InstanceId": "i-2", "PrivateIpAddress": "10.0.0.6"}, "public_ips")


def test_grains_carry_class_and_docker_disk_volume():
    disk = ec2.docker_disk_grain(INSTANCE, "/dev/sdb")
    assert disk == {"device": "/dev/sdb", "volume_id": "vol-1"}
    grains = ec2.minion_grains({"role": "x", "class": "old"}, "dataserver", disk)
    assert grains == {"role": "x", "class": "dataserver", "docker_disk": disk}
    with pytest.raises(SaltCloudSystemExit, match="no volume attached as /dev/sdc"):
        ec2.docker_disk_grain(INSTANCE, "/dev/sdc")


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
    assert details["volumes"]["/dev/sdb"]["size"] == 50
    assert details["volumes"]["/dev/sdb"]["delete_on_termination"] is True
    assert ec2.node_name({"InstanceId": "i-9"}) == "i-9"


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
