"""
salt-cloud driver for Amazon EC2 built on boto3 (``driver: boto3_ec2``).

Salt 3008 dropped the ``ec2`` cloud driver from core, and the 3007 one speaks a
hand-rolled query API that breaks on current endpoints; this driver uses boto3 for every
call and works on Salt 3007 and 3008.  salt-cloud loads it from the repository through
``cloud_dirs`` in the ``cloud`` config file.  It is self-contained: the loader imports it by
path, so it must not import anything from this repository.

Every node it creates gets a Docker data disk (``docker_disk``) and the tags
``Name``, ``class`` and ``container: docker`` on the instance and its volumes; the
minion is told its class and its Docker disk through the grains ``class`` and
``docker_disk`` (a contract with the states).  Every provider/profile key is documented
in docs/cloud-driver.md.

The pure logic (config validation, RunInstances arguments, tags, disks, address
choice, grains, node summaries) lives in plain functions that do not touch the salt
loader dunders, so unit tests import this file directly.
"""

import copy
import ipaddress
import logging
import os
import re
from urllib.parse import urlparse

from salt.exceptions import SaltCloudConfigError, SaltCloudSystemExit

from salt import config

try:
    import boto3
    import botocore.config
    import botocore.exceptions

    HAS_BOTO3 = True
except ImportError:
    HAS_BOTO3 = False

log = logging.getLogger(__name__)

__virtualname__ = "boto3_ec2"

DOCKER_DISK_DEFAULTS = {
    "DeviceName": "/dev/sdb",
    "Ebs": {
        "VolumeSize": 8,
        "VolumeType": "gp3",
        "Encrypted": True,
        "DeleteOnTermination": True,
    },
}
METADATA_OPTIONS_DEFAULTS = {"HttpTokens": "required", "HttpEndpoint": "enabled"}
# How long to wait for an instance to reach running/terminated, and how often to ask.
INSTANCE_WAIT_TIMEOUT = 600
WAITER_DELAY = 2

SSH_INTERFACES = ("public_ips", "private_ips")
# Fields -S shows when the cloud config sets no `query.selection`.
DEFAULT_QUERY_SELECTION = ("id", "class", "state", "size", "private_ips", "public_ips")
# Tags the driver owns: a profile's `tag` may add tags but not redefine these.
RESERVED_TAGS = ("Name", "class", "container")
# Instances in these states still own their name; terminated ones give it back.
LIVE_STATES = ("pending", "running", "stopping", "stopped")

EBS_KEYS = {
    "DeleteOnTermination": bool,
    "Encrypted": bool,
    "Iops": int,
    "KmsKeyId": str,
    "OutpostArn": str,
    "SnapshotId": str,
    "Throughput": int,
    "VolumeSize": int,
    "VolumeType": str,
}
# Max size in GiB per EBS volume type.
VOLUME_TYPES = {
    "gp2": 16384,
    "gp3": 16384,
    "io1": 16384,
    "io2": 65536,
    "st1": 16384,
    "sc1": 16384,
    "standard": 1024,
}
METADATA_OPTION_VALUES = {
    "HttpTokens": ("optional", "required"),
    "HttpEndpoint": ("enabled", "disabled"),
    "HttpProtocolIpv6": ("enabled", "disabled"),
    "InstanceMetadataTags": ("enabled", "disabled"),
    "HttpPutResponseHopLimit": int,
}
# Any EBS device name EC2 accepts on Linux; the data disk may not take the root names.
DEVICE_NAME_RE = re.compile(r"^/dev/(sd[a-z][a-z]?[0-9]*|xvd[a-z][a-z]?|nvme[0-9]+n[0-9]+)$")
DATA_DISK_NAME_RE = re.compile(r"^/dev/(sd|xvd)[b-z][a-z]?$")
CLASS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Connection settings: one region/endpoint/account per provider, so that -Q and -d
# see every node its profiles create.
CONNECTION_KEYS = ("location", "endpoint_url", "id", "key", "aws_profile")


def __virtual__():
    if not HAS_BOTO3:
        return (False, "the boto3_ec2 cloud driver needs boto3")
    if get_configured_provider() is False:
        return False
    return __virtualname__


def _get_active_provider_name():
    try:
        return __active_provider_name__.value()
    except AttributeError:
        return __active_provider_name__


def get_configured_provider():
    return config.is_provider_configured(
        __opts__, _get_active_provider_name() or __virtualname__, ()
    )


# --------------------------------------------------------------------------- pure logic


def deep_merge(base, override):
    """Return base updated by override, recursing into dicts (lists are replaced)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def name_list(value, key):
    """A config value given as one string or a list of strings, as a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) and item for item in value):
        return list(value)
    raise SaltCloudConfigError(f"'{key}' must be a string or a list of strings, got {value!r}")


def _check_type(value, expected, key):
    # bool is an int in Python: a VolumeSize of True is not a size.
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SaltCloudConfigError(f"'{key}' must be an integer, got {value!r}")
    if not isinstance(value, expected):
        raise SaltCloudConfigError(f"'{key}' must be a {expected.__name__}, got {value!r}")


def validate_ebs(ebs, key):
    if not isinstance(ebs, dict):
        raise SaltCloudConfigError(f"'{key}' must be a mapping, got {ebs!r}")
    for field, value in ebs.items():
        if field not in EBS_KEYS:
            raise SaltCloudConfigError(
                f"'{key}.{field}' is not an EBS setting (known: {', '.join(sorted(EBS_KEYS))})"
            )
        _check_type(value, EBS_KEYS[field], f"{key}.{field}")
    volume_type = ebs.get("VolumeType", "gp3")
    if volume_type not in VOLUME_TYPES:
        raise SaltCloudConfigError(
            f"'{key}.VolumeType' {volume_type!r} is not an EBS volume type "
            f"(known: {', '.join(sorted(VOLUME_TYPES))})"
        )
    size = ebs.get("VolumeSize")
    if size is not None and not 1 <= size <= VOLUME_TYPES[volume_type]:
        raise SaltCloudConfigError(
            f"'{key}.VolumeSize' {size} is out of range for {volume_type} "
            f"(1-{VOLUME_TYPES[volume_type]} GiB)"
        )
    if "Throughput" in ebs and volume_type != "gp3":
        raise SaltCloudConfigError(f"'{key}.Throughput' is only valid for gp3 volumes")
    if "Iops" in ebs and volume_type not in ("gp3", "io1", "io2"):
        raise SaltCloudConfigError(f"'{key}.Iops' is only valid for gp3, io1 and io2 volumes")


def validate_block_device_mapping(mapping, key):
    if not isinstance(mapping, dict):
        raise SaltCloudConfigError(f"'{key}' must be a mapping, got {mapping!r}")
    device = mapping.get("DeviceName")
    if not isinstance(device, str) or not DEVICE_NAME_RE.match(device):
        raise SaltCloudConfigError(
            f"'{key}.DeviceName' {device!r} is not an EC2 device name (e.g. /dev/sdb)"
        )
    unknown = set(mapping) - {"DeviceName", "Ebs", "VirtualName", "NoDevice"}
    if unknown:
        raise SaltCloudConfigError(
            f"'{key}' has unknown keys {sorted(unknown)} "
            "(a boto3 BlockDeviceMapping has DeviceName, Ebs, VirtualName, NoDevice)"
        )
    if "Ebs" in mapping:
        validate_ebs(mapping["Ebs"], f"{key}.Ebs")


def docker_disk_mapping(docker_disk):
    """The Docker disk's block device mapping: the profile's docker_disk over the defaults."""
    if docker_disk is None:
        docker_disk = {}
    if not isinstance(docker_disk, dict):
        raise SaltCloudConfigError(f"'docker_disk' must be a mapping, got {docker_disk!r}")
    mapping = deep_merge(DOCKER_DISK_DEFAULTS, docker_disk)
    validate_block_device_mapping(mapping, "docker_disk")
    if not DATA_DISK_NAME_RE.match(mapping["DeviceName"]):
        raise SaltCloudConfigError(
            f"'docker_disk.DeviceName' {mapping['DeviceName']!r} is not a data disk name: "
            "use /dev/sdb../dev/sdz or /dev/xvdb../dev/xvdz (sda/xvda are root devices)"
        )
    if set(mapping) - {"DeviceName", "Ebs"}:
        raise SaltCloudConfigError("'docker_disk' takes only DeviceName and Ebs")
    return mapping


def block_device_mappings(extra_mappings, docker_disk):
    """The profile's block_device_mappings plus the Docker disk, device names unique."""
    if extra_mappings is None:
        extra_mappings = []
    if not isinstance(extra_mappings, list):
        raise SaltCloudConfigError(
            f"'block_device_mappings' must be a list of boto3 mappings, got {extra_mappings!r}"
        )
    seen = {}
    for index, mapping in enumerate(extra_mappings):
        validate_block_device_mapping(mapping, f"block_device_mappings[{index}]")
        device = mapping["DeviceName"]
        if device in seen:
            raise SaltCloudConfigError(
                f"'block_device_mappings' names {device} twice (entries {seen[device]} and {index})"
            )
        seen[device] = index
    disk = docker_disk_mapping(docker_disk)
    if disk["DeviceName"] in seen:
        raise SaltCloudConfigError(
            f"'block_device_mappings[{seen[disk['DeviceName']]}]' uses {disk['DeviceName']}, "
            "which is the Docker disk ('docker_disk.DeviceName'): pick another device name"
        )
    return [copy.deepcopy(mapping) for mapping in extra_mappings] + [disk]


def node_tags(name, node_class, extra_tags):
    """Tags for the instance and its volumes, as a boto3 tag list."""
    if extra_tags is None:
        extra_tags = {}
    if not isinstance(extra_tags, dict):
        raise SaltCloudConfigError(f"'tag' must map tag names to values, got {extra_tags!r}")
    tags = {"Name": name, "class": node_class, "container": "docker"}
    for key, value in extra_tags.items():
        if key in RESERVED_TAGS:
            raise SaltCloudConfigError(
                f"'tag.{key}' is set by the driver (Name, class, container): remove it"
            )
        if not isinstance(key, str) or isinstance(value, (dict, list)) or value is None:
            raise SaltCloudConfigError(f"'tag.{key}' must map a name to a plain value")
        # YAML `true` would become "True"; AWS tag values are conventionally lower case.
        tags[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def iam_profile_spec(value):
    if not isinstance(value, str) or not value:
        raise SaltCloudConfigError(f"'iam_profile' must be a name or an ARN, got {value!r}")
    if value.startswith("arn:"):
        return {"Arn": value}
    return {"Name": value}


def metadata_options(value):
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SaltCloudConfigError(f"'metadata_options' must be a mapping, got {value!r}")
    merged = {**METADATA_OPTIONS_DEFAULTS, **value}
    for field, setting in merged.items():
        allowed = METADATA_OPTION_VALUES.get(field)
        if allowed is None:
            raise SaltCloudConfigError(
                f"'metadata_options.{field}' is not an instance metadata option "
                f"(known: {', '.join(sorted(METADATA_OPTION_VALUES))})"
            )
        if allowed is int:
            _check_type(setting, int, f"metadata_options.{field}")
        elif setting not in allowed:
            raise SaltCloudConfigError(
                f"'metadata_options.{field}' must be one of {list(allowed)}, got {setting!r}"
            )
    return merged


def _optional_str(vm_, key):
    value = vm_.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SaltCloudConfigError(f"'{key}' must be a non-empty string, got {value!r}")
    return value


def _required_str(vm_, key, what):
    value = _optional_str(vm_, key)
    if value is None:
        raise SaltCloudConfigError(f"'{key}' ({what}) is not set for {vm_.get('name')!r}")
    return value


def connection_settings(settings):
    """Region, endpoint and credentials from a provider (or vm) config."""
    conn = {}
    for key in CONNECTION_KEYS:
        value = settings.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise SaltCloudConfigError(f"'{key}' must be a non-empty string")
        conn[key] = value
    if bool(conn["id"]) != bool(conn["key"]):
        raise SaltCloudConfigError("'id' and 'key' go together: set both or neither")
    return conn


def node_settings(vm_, provider=None):
    """Validate a VM's merged config and return what create needs, or raise naming the key."""
    provider = provider or {}
    for key in CONNECTION_KEYS:
        if key in vm_ and vm_[key] != provider.get(key):
            raise SaltCloudConfigError(
                f"'{key}' is a provider setting (one region and account per provider, so that "
                "-Q and -d see every node): set it in the provider, not in a profile"
            )
    name = vm_.get("name")
    if not isinstance(name, str) or not name:
        raise SaltCloudConfigError(f"the VM name must be a non-empty string, got {name!r}")
    image = _required_str(vm_, "image", "AMI id")
    if not image.startswith("ami-"):
        raise SaltCloudConfigError(f"'image' must be an AMI id (ami-...), got {image!r}")
    node_class = _required_str(vm_, "class", "node class: use a class profile")
    if not CLASS_RE.match(node_class):
        raise SaltCloudConfigError(
            f"'class' {node_class!r} must be letters, digits, '.', '_' or '-'"
        )
    ssh_interface = vm_.get("ssh_interface", "public_ips")
    if ssh_interface not in SSH_INTERFACES:
        raise SaltCloudConfigError(
            f"'ssh_interface' must be one of {list(SSH_INTERFACES)}, got {ssh_interface!r}"
        )
    ebs_optimized = vm_.get("ebs_optimized", False)
    if not isinstance(ebs_optimized, bool):
        raise SaltCloudConfigError(f"'ebs_optimized' must be true or false, got {ebs_optimized!r}")
    userdata = _optional_str(vm_, "userdata")
    userdata_file = _optional_str(vm_, "userdata_file")
    if userdata_file:
        userdata_file = os.path.expanduser(userdata_file)
    if userdata and userdata_file:
        raise SaltCloudConfigError("set 'userdata' or 'userdata_file', not both")
    if userdata_file:
        try:
            with open(userdata_file, encoding="utf-8") as handle:
                userdata = handle.read()
        except OSError as exc:
            raise SaltCloudConfigError(
                f"'userdata_file' {userdata_file!r}: {exc.strerror}"
            ) from exc
    iam_profile = vm_.get("iam_profile")
    private_key = _optional_str(vm_, "private_key")
    timeout = vm_.get("instance_wait_timeout", INSTANCE_WAIT_TIMEOUT)
    _check_type(timeout, int, "instance_wait_timeout")
    disk = docker_disk_mapping(vm_.get("docker_disk"))
    return {
        "name": name,
        "image": image,
        "size": _required_str(vm_, "size", "instance type"),
        "class": node_class,
        "keyname": _optional_str(vm_, "keyname"),
        "securitygroup": name_list(vm_.get("securitygroup"), "securitygroup"),
        "securitygroupid": name_list(vm_.get("securitygroupid"), "securitygroupid"),
        "subnetid": _optional_str(vm_, "subnetid"),
        "availability_zone": _optional_str(vm_, "availability_zone"),
        "iam_profile": iam_profile_spec(iam_profile) if iam_profile is not None else None,
        "ebs_optimized": ebs_optimized,
        "userdata": userdata,
        "ssh_interface": ssh_interface,
        "private_key": private_key and os.path.expanduser(private_key),
        "block_device_mappings": block_device_mappings(
            vm_.get("block_device_mappings"), vm_.get("docker_disk")
        ),
        "docker_disk_device": disk["DeviceName"],
        "tags": node_tags(name, node_class, vm_.get("tag")),
        "metadata_options": metadata_options(vm_.get("metadata_options")),
        "instance_wait_timeout": timeout,
    }


def run_instances_kwargs(settings, security_group_ids):
    """boto3 RunInstances arguments for one node."""
    kwargs = {
        "ImageId": settings["image"],
        "InstanceType": settings["size"],
        "MinCount": 1,
        "MaxCount": 1,
        "BlockDeviceMappings": settings["block_device_mappings"],
        "MetadataOptions": settings["metadata_options"],
        "EbsOptimized": settings["ebs_optimized"],
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": settings["tags"]},
            {"ResourceType": "volume", "Tags": settings["tags"]},
        ],
    }
    if settings["keyname"]:
        kwargs["KeyName"] = settings["keyname"]
    if security_group_ids:
        kwargs["SecurityGroupIds"] = list(security_group_ids)
    if settings["subnetid"]:
        kwargs["SubnetId"] = settings["subnetid"]
    if settings["availability_zone"]:
        kwargs["Placement"] = {"AvailabilityZone": settings["availability_zone"]}
    if settings["iam_profile"]:
        kwargs["IamInstanceProfile"] = settings["iam_profile"]
    if settings["userdata"]:
        kwargs["UserData"] = settings["userdata"]
    return kwargs


def ssh_address(instance, ssh_interface):
    """The address salt-cloud deploys to, by ssh_interface."""
    if ssh_interface == "private_ips":
        address = instance.get("PrivateIpAddress")
    else:
        address = instance.get("PublicIpAddress")
    if not address:
        raise SaltCloudSystemExit(
            f"instance {instance.get('InstanceId')} has no "
            f"{'private' if ssh_interface == 'private_ips' else 'public'} address "
            f"(ssh_interface: {ssh_interface})"
        )
    return address


def docker_disk_grain(instance, device):
    """{device, volume_id} of the Docker disk, from a described instance."""
    for mapping in instance.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == device and "Ebs" in mapping:
            return {"device": device, "volume_id": mapping["Ebs"]["VolumeId"]}
    raise SaltCloudSystemExit(
        f"instance {instance.get('InstanceId')} has no volume attached as {device}"
    )


def minion_grains(configured_grains, node_class, disk_grain):
    grains = dict(configured_grains or {})
    grains["class"] = node_class
    grains["docker_disk"] = disk_grain
    return grains


def is_loopback_endpoint(endpoint_url):
    """True when the EC2 endpoint is on this host (moto): its addresses are made up."""
    host = urlparse(endpoint_url or "").hostname
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_address(address):
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def tag_dict(resource):
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def node_summary(instance):
    """The standard -Q fields of one instance."""
    return {
        "id": instance["InstanceId"],
        "image": instance.get("ImageId"),
        "size": instance.get("InstanceType"),
        "state": instance["State"]["Name"],
        "private_ips": [instance["PrivateIpAddress"]] if instance.get("PrivateIpAddress") else [],
        "public_ips": [instance["PublicIpAddress"]] if instance.get("PublicIpAddress") else [],
    }


def node_details(instance, volumes_by_id):
    """The -F / show_instance fields of one instance, with its volumes."""
    details = node_summary(instance)
    tags = tag_dict(instance)
    profile = instance.get("IamInstanceProfile") or {}
    volumes = {}
    for mapping in instance.get("BlockDeviceMappings", []):
        ebs = mapping.get("Ebs", {})
        volume = volumes_by_id.get(ebs.get("VolumeId"), {})
        volumes[mapping["DeviceName"]] = {
            "volume_id": ebs.get("VolumeId"),
            "delete_on_termination": ebs.get("DeleteOnTermination"),
            "size": volume.get("Size"),
            "type": volume.get("VolumeType"),
            "encrypted": volume.get("Encrypted"),
            "iops": volume.get("Iops"),
            "throughput": volume.get("Throughput"),
            "kms_key_id": volume.get("KmsKeyId"),
            "tags": tag_dict(volume),
        }
    launch_time = instance.get("LaunchTime")
    details.update(
        {
            "name": tags.get("Name"),
            "class": tags.get("class"),
            "tags": tags,
            "availability_zone": instance.get("Placement", {}).get("AvailabilityZone"),
            "vpc_id": instance.get("VpcId"),
            "subnet_id": instance.get("SubnetId"),
            "key_name": instance.get("KeyName"),
            "security_groups": {
                group["GroupId"]: group["GroupName"] for group in instance.get("SecurityGroups", [])
            },
            "iam_instance_profile": profile.get("Arn"),
            "ebs_optimized": instance.get("EbsOptimized"),
            "metadata_options": {
                key: value
                for key, value in instance.get("MetadataOptions", {}).items()
                if key != "State"
            },
            "launch_time": launch_time.isoformat() if launch_time else None,
            "volumes": volumes,
        }
    )
    return details


def node_name(instance):
    return tag_dict(instance).get("Name") or instance["InstanceId"]


def aws_error_message(exc):
    """One line from a boto3/botocore error: the AWS error code and its message."""
    if HAS_BOTO3 and isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "request")
        return f"{operation} failed: {error.get('Code', 'Error')}: {error.get('Message', exc)}"
    if HAS_BOTO3 and isinstance(exc, botocore.exceptions.WaiterError):
        reason = exc.last_response.get("Error", {}).get("Message") if exc.last_response else None
        return f"waiting for the instance failed: {reason or exc}"
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- EC2 calls

_CLIENTS = {}


def _provider_config():
    provider = get_configured_provider()
    if provider is False:
        raise SaltCloudSystemExit("no boto3_ec2 provider is configured")
    return provider


def _vm_provider_config(vm_):
    # vm_["provider"] is "<alias>:boto3_ec2" for -p, -m and the cloud client alike.
    alias, _, driver = str(vm_.get("provider") or _get_active_provider_name()).partition(":")
    drivers = __opts__["providers"].get(alias, {})
    provider = drivers.get(driver or __virtualname__)
    if provider is None:
        raise SaltCloudSystemExit(f"provider {vm_.get('provider')!r} is not configured")
    return provider


def ec2_client(conn):
    """A boto3 EC2 client for connection settings, reused within one salt-cloud process."""
    cache_key = tuple(conn.get(key) for key in CONNECTION_KEYS)
    if cache_key not in _CLIENTS:
        session = boto3.session.Session(
            aws_access_key_id=conn.get("id"),
            aws_secret_access_key=conn.get("key"),
            profile_name=conn.get("aws_profile"),
            region_name=conn.get("location"),
        )
        _CLIENTS[cache_key] = session.client(
            "ec2",
            endpoint_url=conn.get("endpoint_url"),
            config=botocore.config.Config(retries={"mode": "standard"}),
        )
    return _CLIENTS[cache_key]


def _call(what, function, **kwargs):
    try:
        return function(**kwargs)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise SaltCloudSystemExit(f"{what}: {aws_error_message(exc)}") from exc


def describe_live_instances(client, filters=None):
    filters = [{"Name": "instance-state-name", "Values": list(LIVE_STATES)}, *(filters or [])]
    paginator = client.get_paginator("describe_instances")
    instances = []
    try:
        for page in paginator.paginate(Filters=filters):
            for reservation in page["Reservations"]:
                instances.extend(reservation["Instances"])
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise SaltCloudSystemExit(f"listing instances: {aws_error_message(exc)}") from exc
    return instances


def _instances_named(client, name):
    return describe_live_instances(client, [{"Name": "tag:Name", "Values": [name]}])


def _security_group_ids(client, settings):
    """Security group ids: the ids as given plus the names resolved in the node's VPC."""
    ids = list(settings["securitygroupid"])
    names = settings["securitygroup"]
    if not names:
        return ids
    if settings["subnetid"]:
        subnets = _call(
            f"subnetid {settings['subnetid']!r}",
            client.describe_subnets,
            SubnetIds=[settings["subnetid"]],
        )["Subnets"]
        vpc_id = subnets[0]["VpcId"]
    else:
        vpcs = _call(
            "finding the default VPC",
            client.describe_vpcs,
            Filters=[{"Name": "isDefault", "Values": ["true"]}],
        )["Vpcs"]
        if not vpcs:
            raise SaltCloudConfigError(
                "'securitygroup' names need a VPC: set 'subnetid' (this region has no default VPC)"
            )
        vpc_id = vpcs[0]["VpcId"]
    groups = _call(
        "looking up security groups",
        client.describe_security_groups,
        Filters=[
            {"Name": "group-name", "Values": names},
            {"Name": "vpc-id", "Values": [vpc_id]},
        ],
    )["SecurityGroups"]
    by_name = {group["GroupName"]: group["GroupId"] for group in groups}
    missing = [group for group in names if group not in by_name]
    if missing:
        raise SaltCloudSystemExit(
            f"'securitygroup' {', '.join(missing)}: no such security group in {vpc_id}"
        )
    return ids + [by_name[group] for group in names if by_name[group] not in ids]


def _check_launch_inputs(client, settings):
    """Check what EC2 (or moto) would not check, or check late, before launching anything."""
    images = _call(
        f"image {settings['image']!r}",
        client.describe_images,
        Filters=[{"Name": "image-id", "Values": [settings["image"]]}],
    )["Images"]
    if not images or images[0].get("State") not in (None, "available"):
        raise SaltCloudSystemExit(
            f"'image' {settings['image']}: no such AMI available in this region"
        )
    try:
        client.describe_instance_types(InstanceTypes=[settings["size"]])
    except botocore.exceptions.ClientError as exc:
        raise SaltCloudSystemExit(f"'size' {settings['size']}: {aws_error_message(exc)}") from exc
    if settings["keyname"]:
        try:
            client.describe_key_pairs(KeyNames=[settings["keyname"]])
        except botocore.exceptions.ClientError as exc:
            raise SaltCloudSystemExit(
                f"'keyname' {settings['keyname']}: {aws_error_message(exc)}"
            ) from exc


def _wait(client, waiter_name, instance_id, timeout):
    waiter = client.get_waiter(waiter_name)
    waiter.wait(
        InstanceIds=[instance_id],
        WaiterConfig={"Delay": WAITER_DELAY, "MaxAttempts": max(1, timeout // WAITER_DELAY)},
    )


def _describe_instance(client, instance_id):
    reservations = _call(
        f"describing {instance_id}", client.describe_instances, InstanceIds=[instance_id]
    )["Reservations"]
    return reservations[0]["Instances"][0]


def _terminate(client, instance_id, timeout):
    client.terminate_instances(InstanceIds=[instance_id])
    _wait(client, "instance_terminated", instance_id, timeout)


def _master_listening():
    """False when no salt-master has its event socket here: an event would only wait out
    a 1 s connect timeout and be dropped (salt-cloud run without a master)."""
    if __opts__.get("ipc_mode", "ipc") != "ipc":
        return True
    return os.path.exists(os.path.join(__opts__["sock_dir"], "master_event_pull.ipc"))


def _fire(name, what, suffix, args):
    if not _master_listening():
        log.debug("No salt-master listening: not firing salt/cloud/%s/%s", name, suffix)
        return
    __utils__["cloud.fire_event"](
        "event",
        what,
        f"salt/cloud/{name}/{suffix}",
        args=args,
        sock_dir=__opts__["sock_dir"],
        transport=__opts__["transport"],
    )


def _fire_vm(vm_, what, suffix):
    args = __utils__["cloud.filter_event"](suffix, vm_, ["name", "profile", "provider", "driver"])
    _fire(vm_["name"], what, suffix, args)


def _forget_accepted_key(vm_):
    """Remove the minion key salt-cloud accepted on the master for this create, if any.

    salt-cloud pre-accepts the new minion's key before it calls the driver; when the
    create fails, that key would stay accepted for a node that does not exist.  Only a
    key identical to the one generated for this run is removed.
    """
    pub_key = vm_.get("pub_key")
    if not pub_key or not __opts__.get("pki_dir"):
        return
    minion = vm_.get("minion") or {}
    key_id = minion.get("id", vm_["name"])
    if minion.get("append_domain"):
        key_id = f"{key_id}.{minion['append_domain']}"
    key_path = os.path.join(__opts__["pki_dir"], "minions", key_id)
    try:
        with open(key_path, encoding="utf-8") as handle:
            if handle.read().strip() != pub_key.strip():
                return
        os.remove(key_path)
        log.info("Removed the minion key accepted for %s", key_id)
    except FileNotFoundError:
        pass


def create(vm_):
    """Create one node from a profile (salt-cloud -p / -m), then deploy salt to it."""
    try:
        return _create(vm_)
    except BaseException:
        _forget_accepted_key(vm_)
        raise


def _create(vm_):
    provider = _vm_provider_config(vm_)
    settings = node_settings(vm_, provider)
    conn = connection_settings(provider)
    deploy = config.get_cloud_config_value("deploy", vm_, __opts__, default=True)
    if deploy and not (settings["private_key"] and os.path.isfile(settings["private_key"])):
        raise SaltCloudConfigError(
            f"'private_key' {settings['private_key']!r} is not a file: deploying salt needs the "
            "SSH key of 'keyname' (or use deploy: False / --no-deploy)"
        )
    name = settings["name"]
    _fire_vm(vm_, "starting create", "creating")
    client = ec2_client(conn)

    try:
        existing = _instances_named(client, name)
        if existing:
            found = ", ".join(f"{i['InstanceId']} ({i['State']['Name']})" for i in existing)
            raise SaltCloudSystemExit(
                f"an instance named {name!r} already exists: {found}; nothing was created"
            )
        _check_launch_inputs(client, settings)
        kwargs = run_instances_kwargs(settings, _security_group_ids(client, settings))
        _fire_vm(vm_, "requesting instance", "requesting")
        log.info(
            "Launching %s: %s from %s, class %s",
            name,
            settings["size"],
            settings["image"],
            settings["class"],
        )
        instance_id = client.run_instances(**kwargs)["Instances"][0]["InstanceId"]
    except (SaltCloudSystemExit, SaltCloudConfigError):
        raise
    except Exception as exc:
        raise SaltCloudSystemExit(
            f"{name}: EC2 did not launch the instance: {aws_error_message(exc)}"
        ) from exc

    # From here on a failure must not leave the instance behind.
    try:
        _wait(client, "instance_running", instance_id, settings["instance_wait_timeout"])
        instance = _describe_instance(client, instance_id)
        disk_grain = docker_disk_grain(instance, settings["docker_disk_device"])
        vm_["grains"] = minion_grains(vm_.get("grains"), settings["class"], disk_grain)
        vm_["instance_id"] = instance_id
        ret = {}
        if deploy:
            address = ssh_address(instance, settings["ssh_interface"])
            if is_loopback_endpoint(client.meta.endpoint_url) and not is_loopback_address(address):
                # moto makes addresses up (54.x, 10.x, 172.31.x): they belong to other hosts.
                raise SaltCloudSystemExit(
                    f"refusing to SSH to {address}: the EC2 endpoint "
                    f"{client.meta.endpoint_url} is local, so its addresses are not real; "
                    "put the node in a 127.0.0.0/8 subnet or use --no-deploy"
                )
            vm_["ssh_host"] = address
            vm_["key_filename"] = settings["private_key"]
            ret = __utils__["cloud.bootstrap"](vm_, __opts__)
            if "Error" in ret:
                raise SaltCloudSystemExit(f"deploying salt failed: {ret['Error']}")
    except BaseException as exc:
        try:
            _terminate(client, instance_id, settings["instance_wait_timeout"])
            cleanup = f"instance {instance_id} was terminated"
        except Exception as cleanup_exc:
            cleanup = (
                f"terminating instance {instance_id} FAILED "
                f"({aws_error_message(cleanup_exc)}): terminate it by hand"
            )
        log.error("Creating %s failed: %s", name, cleanup)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        reason = str(exc) if isinstance(exc, SaltCloudSystemExit) else aws_error_message(exc)
        raise SaltCloudSystemExit(f"{name}: {reason}; {cleanup}") from exc

    ret.pop("Error", None)
    ret.update(
        {
            "instance_id": instance_id,
            "class": settings["class"],
            "docker_disk": disk_grain,
            "private_ips": node_summary(instance)["private_ips"],
            "public_ips": node_summary(instance)["public_ips"],
            "state": instance["State"]["Name"],
        }
    )
    log.info("Created %s (%s)", name, instance_id)
    _fire_vm(vm_, "created instance", "created")
    return ret


def destroy(name, call=None):
    """Terminate the node named name and wait until it is gone (salt-cloud -d)."""
    if call == "function":
        raise SaltCloudSystemExit("destroy is called with -d, -a destroy or --destroy")
    client = ec2_client(connection_settings(_provider_config()))
    instances = _instances_named(client, name)
    if not instances:
        raise SaltCloudSystemExit(f"no instance named {name!r}")
    _fire(name, "destroying instance", "destroying", {"name": name})
    ids = [instance["InstanceId"] for instance in instances]
    _call(f"terminating {name}", client.terminate_instances, InstanceIds=ids)
    try:
        client.get_waiter("instance_terminated").wait(
            InstanceIds=ids,
            WaiterConfig={
                "Delay": WAITER_DELAY,
                "MaxAttempts": INSTANCE_WAIT_TIMEOUT // WAITER_DELAY,
            },
        )
    except botocore.exceptions.WaiterError as exc:
        raise SaltCloudSystemExit(f"terminating {name}: {aws_error_message(exc)}") from exc
    _fire(name, "destroyed instance", "destroyed", {"name": name})
    if __opts__.get("update_cachedir", False):
        __utils__["cloud.delete_minion_cachedir"](
            name, _get_active_provider_name().split(":")[0], __opts__
        )
    return {"instance_ids": ids, "state": "terminated"}


def _nodes(call, full):
    if call == "action":
        raise SaltCloudSystemExit("node listings are called with -Q, -F, -S or -f")
    client = ec2_client(connection_settings(_provider_config()))
    instances = describe_live_instances(client)
    volumes_by_id = {}
    if full and instances:
        volume_ids = [
            mapping["Ebs"]["VolumeId"]
            for instance in instances
            for mapping in instance.get("BlockDeviceMappings", [])
            if "Ebs" in mapping
        ]
        if volume_ids:
            paginator = client.get_paginator("describe_volumes")
            for page in paginator.paginate(VolumeIds=volume_ids):
                volumes_by_id.update({volume["VolumeId"]: volume for volume in page["Volumes"]})
    nodes = {}
    for instance in instances:
        name = node_name(instance)
        if name in nodes:
            log.warning("Two live instances are named %s; listing %s", name, instance["InstanceId"])
        nodes[name] = node_details(instance, volumes_by_id) if full else node_summary(instance)
    return nodes


def list_nodes(call=None):
    """Live (not terminated) instances by Name tag: salt-cloud -Q."""
    return _nodes(call, full=False)


def list_nodes_full(call=None):
    """Live instances with tags, volumes, IAM profile, security groups: salt-cloud -F."""
    return _nodes(call, full=True)


def list_nodes_select(call=None):
    """The fields of list_nodes_full named by query.selection: salt-cloud -S."""
    selection = __opts__.get("query.selection") or DEFAULT_QUERY_SELECTION
    return __utils__["cloud.list_nodes_select"](list_nodes_full("function"), selection, call)


def show_instance(name, call=None):
    """Everything list_nodes_full knows about one node: salt-cloud -a show_instance NAME."""
    if call != "action":
        raise SaltCloudSystemExit("show_instance is an action: salt-cloud -a show_instance NAME")
    nodes = list_nodes_full("function")
    if name not in nodes:
        raise SaltCloudSystemExit(f"no instance named {name!r}")
    return nodes[name]


def avail_locations(call=None):
    """The regions this account can use: salt-cloud --list-locations."""
    if call == "action":
        raise SaltCloudSystemExit("avail_locations is called with --list-locations or -f")
    client = ec2_client(connection_settings(_provider_config()))
    regions = _call("listing regions", client.describe_regions)["Regions"]
    return {
        region["RegionName"]: {
            "endpoint": region.get("Endpoint"),
            "opt_in_status": region.get("OptInStatus"),
        }
        for region in regions
    }


def avail_sizes(call=None):
    """Instance types offered in the region: salt-cloud --list-sizes."""
    if call == "action":
        raise SaltCloudSystemExit("avail_sizes is called with --list-sizes or -f")
    client = ec2_client(connection_settings(_provider_config()))
    sizes = {}
    try:
        for page in client.get_paginator("describe_instance_types").paginate():
            for itype in page["InstanceTypes"]:
                sizes[itype["InstanceType"]] = {
                    "vcpus": itype.get("VCpuInfo", {}).get("DefaultVCpus"),
                    "memory_mib": itype.get("MemoryInfo", {}).get("SizeInMiB"),
                    "architectures": itype.get("ProcessorInfo", {}).get("SupportedArchitectures"),
                    "ebs_optimized": itype.get("EbsInfo", {}).get("EbsOptimizedSupport"),
                    "current_generation": itype.get("CurrentGeneration"),
                }
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise SaltCloudSystemExit(f"listing instance types: {aws_error_message(exc)}") from exc
    return dict(sorted(sizes.items()))


def _profile_images():
    """AMI ids the profiles of this provider launch."""
    provider = _get_active_provider_name() or ""
    alias = provider.split(":")[0]
    images = set()
    for profile in __opts__.get("profiles", {}).values():
        if str(profile.get("provider", "")).split(":")[0] == alias and profile.get("image"):
            images.add(profile["image"])
    return sorted(images)


def avail_images(call=None):
    """AMIs this account owns plus those the provider's profiles use: --list-images.

    The public catalogue has tens of thousands of AMIs; nobody wants it printed.
    """
    if call == "action":
        raise SaltCloudSystemExit("avail_images is called with --list-images or -f")
    client = ec2_client(connection_settings(_provider_config()))
    images = _call("listing own images", client.describe_images, Owners=["self"])["Images"]
    profile_images = _profile_images()
    if profile_images:
        images += _call(
            "listing profile images",
            client.describe_images,
            Filters=[{"Name": "image-id", "Values": profile_images}],
        )["Images"]
    return {
        image["ImageId"]: {
            "name": image.get("Name"),
            "description": image.get("Description"),
            "owner": image.get("OwnerId"),
            "architecture": image.get("Architecture"),
            "state": image.get("State"),
            "creation_date": image.get("CreationDate"),
            "root_device_name": image.get("RootDeviceName"),
        }
        for image in images
    }
