"""
The boto3_ec2 driver's profile checks as pure functions: a node's merged provider + profile
config in, its settings and RunInstances request out, with every problem, each naming the
profile key (``__utils__["dockerhosts_profile.node_settings"]`` in the driver; the unit tests
run the bad-profile corpus through them). No EC2 call happens here.

botocore's EC2 service model checks the request (its ``ParamValidator``, plus the enums and
maximums it leaves out); ``RULES`` holds what the model does not carry. Node and class names
are ``dockerhosts_names``' rules, which the driver applies (utils get no ``__utils__``).
"""

import copy
import difflib
import os
import re

import botocore.validate

# The Docker volume: one boto3 BlockDeviceMapping, the profile's `docker_volume` deep-merged
# over it. These defaults live here only; docs/cloud-driver.md quotes them.
DOCKER_VOLUME_DEFAULTS = {
    "DeviceName": "/dev/sdb",
    "Ebs": {"VolumeSize": 8, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True},
}
METADATA_OPTIONS_DEFAULTS = {"HttpTokens": "required", "HttpEndpoint": "enabled"}  # IMDSv2
SETTING_DEFAULTS = {
    "instance_wait_timeout": 600,  # s: running after a launch, states after actions
    "cleanup_timeout": 600,  # s: terminating after a failed create, through EC2 outages
    "retry_mode": "standard",  # botocore's retry mode (provider only)
    "max_attempts": 5,  # botocore's attempts per API call, the first included (provider only)
    "ssh_interface": "public_ips",
    "ebs_optimized": False,
    "termination_protection": False,
}
# What EC2 enforces that botocore's model holds only in its documentation strings
# (EbsBlockDevice, InstanceMetadataOptionsRequest) and the EBS and EC2 user guides.
RULES = {
    # VolumeType: VolumeSize GiB, Iops, most Iops per GiB, Throughput MiB/s (gp3 only).
    "ebs": {
        "gp2": {"size": (1, 16384)},
        "gp3": {"size": (1, 65536), "iops": (3000, 80000), "per_gib": 500, "mibps": (125, 2000)},
        "io1": {"size": (4, 16384), "iops": (100, 64000), "per_gib": 50},
        "io2": {"size": (4, 65536), "iops": (100, 256000), "per_gib": 1000},
        "st1": {"size": (125, 16384)},
        "sc1": {"size": (125, 16384)},
        "standard": {"size": (1, 1024)},
    },
    "gp3_baseline_iops": 3000,  # free with any size, so exempt from per_gib
    "tags_per_resource": 50,
    "user_data_bytes": 16 * 1024,  # before base64
    "hop_limit": (1, 64),  # MetadataOptions.HttpPutResponseHopLimit
    "device_name": re.compile(r"/dev/(sd[a-z][a-z]?[0-9]*|xvd[a-z][a-z]?|nvme[0-9]+n[0-9]+)"),
    "docker_device_name": re.compile(r"/dev/(sd|xvd)[b-z][a-z]?"),
    "price": re.compile(r"[0-9]+(\.[0-9]+)?"),
}
RESERVED_TAGS = ("Name", "class", "container", "node", "role", "docker_volume")
RENAMED_KEYS = {"docker_disk": "docker_volume"}  # refused, naming the new key
CONNECTION_KEYS = ("location", "endpoint_url", "id", "key", "aws_profile")
PROVIDER_ONLY_KEYS = (*CONNECTION_KEYS, "retry_mode", "max_attempts")
STRING_KEYS = (
    *("image", "size", "keyname", "subnetid", "availability_zone", "iam_profile"),
    *("userdata", "userdata_file", "private_key", "docker_volume_id"),
)
NODE_KEYS = (
    *SETTING_DEFAULTS,
    *STRING_KEYS,
    *("class", "securitygroup", "securitygroupid", "tag", "block_device_mappings"),
    *("docker_volume", "metadata_options", "spot"),
)
SALT_CLOUD_KEYS = ("script", "script_args", "ssh_username", "ssh_port")  # not typos of ours
SPOT_KEYS = ("max_price", "interruption_behavior")
# Spot: how the instance ends when EC2 takes capacity back, and the request type that needs.
SPOT_REQUEST_TYPE = {"terminate": "one-time", "stop": "persistent", "hibernate": "persistent"}
LIVE_CHECKED_ENUMS = ("InstanceType",)  # EC2 is asked: a type newer than botocore is fine
REQUEST_ORIGINS = {  # request path -> the profile key it comes from
    "ImageId": "image",
    "InstanceType": "size",
    "EbsOptimized": "ebs_optimized",
    "KeyName": "keyname",
    "SecurityGroupIds": "securitygroupid",
    "SubnetId": "subnetid",
    "Placement.AvailabilityZone": "availability_zone",
    "IamInstanceProfile": "iam_profile",
    "UserData": "userdata",
    "MetadataOptions": "metadata_options",
    "InstanceMarketOptions": "spot",
    "InstanceMarketOptions.SpotOptions.MaxPrice": "spot.max_price",
    "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior": "spot.interruption_behavior",
}


class _Bad(Exception):
    def __init__(self, key, text):
        super().__init__(text)
        self.key = key


def node_settings(vm_, provider, service_model):
    """``(settings, request, origins, problems)`` of a node config: its settings, its
    RunInstances request (one instance, named at launch) and where each part of that came
    from, and every problem as ``(profile key, text)``. No model (None): no request check."""
    problems = _key_problems(vm_, provider)
    settings = {"name": vm_.get("name"), "class": vm_.get("class")}
    for key, check in _SETTINGS:
        try:
            settings[key] = check(vm_)
        except _Bad as bad:
            problems.append((bad.key or key, str(bad)))
    if problems:
        return settings, None, None, problems
    if settings["spot"] and settings["termination_protection"]:
        problems.append(("termination_protection", "cannot be set on a spot instance"))
    request, origins = run_instances_request(settings, "validation", 1), request_origins(settings)
    if service_model is not None:
        problems += request_problems(service_model, request, origins)
    return settings, request, origins, problems


def connection_settings(provider):
    """``(conn, problems)``: a provider's region, endpoint, credentials, retries, waits."""
    conn = {key: provider.get(key) for key in CONNECTION_KEYS}
    problems = [
        (k, f"must be a non-empty string, got {v!r}")
        for k, v in conn.items()
        if v is not None and not (isinstance(v, str) and v)
    ]
    if bool(conn["id"]) != bool(conn["key"]):
        problems.append(("id", "and 'key' go together: set both or neither"))
    if conn["endpoint_url"] and not re.match(r"https?://", str(conn["endpoint_url"])):
        problems.append(("endpoint_url", f"must be an http(s) URL, got {conn['endpoint_url']!r}"))
    conn["retry_mode"] = provider.get("retry_mode", SETTING_DEFAULTS["retry_mode"])
    if conn["retry_mode"] not in ("standard", "adaptive"):
        problems.append(("retry_mode", f"must be standard or adaptive, got {conn['retry_mode']!r}"))
    attempts = conn["max_attempts"] = provider.get("max_attempts", SETTING_DEFAULTS["max_attempts"])
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 20:
        problems.append(("max_attempts", f"must be an integer 1-20, got {attempts!r}"))
    for key in ("instance_wait_timeout", "cleanup_timeout"):
        try:
            conn[key] = _seconds(key)(provider)
        except _Bad as bad:
            problems.append((key, str(bad)))
    return conn, problems


def problems_message(problems):
    """One line from (key, text) problems."""
    return "; ".join(f"'{key}' {text}" if key else text for key, text in problems)


def _key_problems(vm_, provider):
    """Provider-only keys in a profile, renamed keys, near-typos of ours, and strings that
    are not."""
    problems = []
    for key in [k for k in vm_ if isinstance(k, str)]:
        close = difflib.get_close_matches(key, NODE_KEYS, n=1, cutoff=0.85)
        if key in PROVIDER_ONLY_KEYS and vm_[key] != provider.get(key):
            problems.append(
                (
                    key,
                    "is a provider setting (one region, account and retry policy "
                    "per provider, so that -Q and -d see every node): set it there",
                )
            )
        elif key in RENAMED_KEYS:
            problems.append((key, f"was renamed: call it '{RENAMED_KEYS[key]}'"))
        elif key not in NODE_KEYS and key not in SALT_CLOUD_KEYS and close:
            problems.append((key, f"is not a key of this driver: did you mean '{close[0]}'?"))
        elif (
            key in STRING_KEYS
            and vm_[key] is not None
            and not (vm_[key] and isinstance(vm_[key], str))
        ):
            problems.append((key, f"must be a non-empty string, got {vm_[key]!r}"))
    return problems


def _required(key, what):
    def check(vm_):
        if vm_.get(key) is None:
            raise _Bad(key, f"({what}) is not set for {vm_.get('name')!r}")
        return vm_[key]

    return check


def _image(vm_):
    image = _required("image", "AMI id")(vm_)
    if not str(image).startswith("ami-"):
        raise _Bad("image", f"must be an AMI id (ami-...), got {image!r}")
    return image


def _name_list(key):
    def check(vm_):
        value = vm_.get(key) or []
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise _Bad(key, f"must be a string or a list of strings, got {vm_.get(key)!r}")
        return value

    return check


def _iam_profile(vm_):
    value = vm_.get("iam_profile")
    if value is None:
        return None
    return {"Arn": value} if str(value).startswith("arn:") else {"Name": value}


def _user_data(vm_):
    """userdata, or the content of userdata_file; EC2 takes 16 KB."""
    text, path = vm_.get("userdata"), vm_.get("userdata_file")
    if text and path:
        raise _Bad("userdata", "and 'userdata_file' are both set: keep one")
    if path:
        try:
            with open(os.path.expanduser(str(path)), encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise _Bad(
                "userdata_file", f"{path!r}: {getattr(exc, 'strerror', None) or exc}"
            ) from exc
    size = len(str(text or "").encode("utf-8"))
    if size > RULES["user_data_bytes"]:
        key = "userdata_file" if path else "userdata"
        raise _Bad(
            key, f"is {size} bytes: EC2 takes at most {RULES['user_data_bytes']} (before base64)"
        )
    return text


def docker_volume_mapping(vm_):
    """The Docker volume's block device mapping: the profile's `docker_volume` over the
    defaults."""
    value = vm_.get("docker_volume") or {}
    if not isinstance(value, dict):
        raise _Bad("docker_volume", f"must be a mapping, got {value!r}")
    mapping = deep_merge(DOCKER_VOLUME_DEFAULTS, value)
    if set(mapping) - {"DeviceName", "Ebs"}:
        raise _Bad("docker_volume", f"takes only DeviceName and Ebs, not {sorted(set(mapping))}")
    device = mapping["DeviceName"]
    if not isinstance(device, str) or not RULES["docker_device_name"].fullmatch(device):
        raise _Bad(
            "docker_volume.DeviceName",
            f"{device!r} is not a data volume name: use "
            "/dev/sdb../dev/sdz or /dev/xvdb../dev/xvdz (sda/xvda are root devices)",
        )
    if not isinstance(mapping["Ebs"], dict):
        raise _Bad("docker_volume.Ebs", f"must be a mapping, got {mapping['Ebs']!r}")
    return mapping


def _block_device_mappings(vm_):
    """The profile's block_device_mappings, then the Docker volume; device names unique."""
    extra, volume = vm_.get("block_device_mappings") or [], docker_volume_mapping(vm_)
    if not isinstance(extra, list):
        raise _Bad("block_device_mappings", f"must be a list of boto3 mappings, got {extra!r}")
    seen = {}
    for index, mapping in enumerate(extra):
        key = f"block_device_mappings[{index}]"
        device = mapping.get("DeviceName") if isinstance(mapping, dict) else None
        if not isinstance(mapping, dict):
            raise _Bad(key, f"must be a mapping, got {mapping!r}")
        if not isinstance(device, str) or not RULES["device_name"].fullmatch(device):
            raise _Bad(f"{key}.DeviceName", f"{device!r} is not an EC2 device name (/dev/sdc)")
        if device in seen:
            raise _Bad("block_device_mappings", f"names {device} twice ({seen[device]}, {index})")
        if device == volume["DeviceName"]:
            raise _Bad(
                key,
                f"uses {device}, which is the Docker volume "
                "('docker_volume.DeviceName'): pick another device name",
            )
        seen[device] = index
    return [*copy.deepcopy(extra), volume]


def _tags(vm_):
    """The profile's extra tags as {key: text}, within EC2's tag rules."""
    extra = vm_.get("tag") or {}
    if not isinstance(extra, dict):
        raise _Bad("tag", f"must map tag names to values, got {extra!r}")
    for key, value in extra.items():
        where = f"tag.{key}"
        if key in (*RESERVED_TAGS, "docker_volume_device"):
            raise _Bad(where, f"is set by the driver ({', '.join(RESERVED_TAGS)}): remove it")
        if not isinstance(key, str) or isinstance(value, (dict, list)) or value is None:
            raise _Bad(where, "must map a name to a plain value")
        if not 1 <= len(key) <= 128 or key.lower().startswith("aws:"):
            raise _Bad(where, "tag keys are 1-128 characters, not starting with 'aws:' (AWS's)")
        if len(str(value)) > 256:
            raise _Bad(where, "tag values are at most 256 characters")
    room = RULES["tags_per_resource"] - len(RESERVED_TAGS)
    if len(extra) > room:
        raise _Bad(
            "tag",
            f"has {len(extra)} tags: EC2 allows {RULES['tags_per_resource']} per "
            f"resource and the driver sets {len(RESERVED_TAGS)} ({room} left)",
        )
    # YAML `true` would become "True"; AWS tag values are conventionally lower case.
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in extra.items()}


def _metadata_options(vm_):
    value = vm_.get("metadata_options") or {}
    if not isinstance(value, dict):
        raise _Bad("metadata_options", f"must be a mapping, got {value!r}")
    hops, (low, high) = value.get("HttpPutResponseHopLimit"), RULES["hop_limit"]
    if isinstance(hops, int) and not isinstance(hops, bool) and not low <= hops <= high:
        raise _Bad("metadata_options.HttpPutResponseHopLimit", f"must be {low}-{high}, got {hops}")
    return {**METADATA_OPTIONS_DEFAULTS, **value}


def _spot(vm_):
    """`spot: {max_price, interruption_behavior}` (or true) as boto3 InstanceMarketOptions."""
    value = vm_.get("spot")
    if value is None or value is False:
        return None
    value = {} if value is True else value
    if not isinstance(value, dict):
        raise _Bad("spot", f"must be a mapping or true, got {value!r}")
    for key in value:
        if key not in SPOT_KEYS:
            hint = difflib.get_close_matches(str(key), SPOT_KEYS, n=1)
            raise _Bad(
                f"spot.{key}",
                f"is unknown (did you mean 'spot.{hint[0]}'?)"
                if hint
                else f"is unknown (known: {', '.join(SPOT_KEYS)})",
            )
    behavior, price = value.get("interruption_behavior", "terminate"), value.get("max_price")
    options = {
        "InstanceInterruptionBehavior": behavior,
        "SpotInstanceType": SPOT_REQUEST_TYPE.get(behavior, "one-time"),
    }
    if price is not None:
        text = price if isinstance(price, str) else str(price)
        if isinstance(price, bool) or not RULES["price"].fullmatch(text) or not float(text) > 0:
            raise _Bad(
                "spot.max_price",
                f"must be a positive price in USD per hour, e.g. '0.05', got {price!r}",
            )
        options["MaxPrice"] = text
    return {"MarketType": "spot", "SpotOptions": options}


def _one_of(key, allowed):
    def check(vm_):
        value = vm_.get(key, SETTING_DEFAULTS[key])
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise _Bad(key, f"must be one of {list(allowed)}, got {value!r}")
        return value

    return check


def _seconds(key):
    def check(vm_):
        value = vm_.get(key, SETTING_DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise _Bad(key, f"must be a positive number of seconds, got {value!r}")
        return value

    return check


# Each node setting and its check, in order (the request is built from them).
_SETTINGS = (
    ("image", _image),
    ("size", _required("size", "instance type")),
    ("keyname", lambda vm_: vm_.get("keyname")),
    ("securitygroup", _name_list("securitygroup")),
    ("securitygroupid", _name_list("securitygroupid")),
    ("subnetid", lambda vm_: vm_.get("subnetid")),
    ("availability_zone", lambda vm_: vm_.get("availability_zone")),
    ("iam_profile", _iam_profile),
    ("ebs_optimized", lambda vm_: vm_.get("ebs_optimized", SETTING_DEFAULTS["ebs_optimized"])),
    ("userdata", _user_data),
    ("private_key", lambda vm_: vm_.get("private_key") and os.path.expanduser(vm_["private_key"])),
    ("block_device_mappings", _block_device_mappings),
    ("docker_volume_id", lambda vm_: vm_.get("docker_volume_id")),
    ("tags", _tags),
    ("metadata_options", _metadata_options),
    ("spot", _spot),
    ("ssh_interface", _one_of("ssh_interface", ("public_ips", "private_ips"))),
    ("termination_protection", _one_of("termination_protection", (True, False))),
    ("instance_wait_timeout", _seconds("instance_wait_timeout")),
    ("cleanup_timeout", _seconds("cleanup_timeout")),
)


def node_tags(settings, node=True):
    """The instance's and its volumes' tags at launch as boto3 tag lists; Name and node only
    when the request launches one node (a batch names its instances right after)."""
    named = {"Name": settings["name"]} if node else {}
    instance = {
        **named,
        "class": settings["class"],
        "container": "docker",
        "docker_volume": settings["block_device_mappings"][-1]["DeviceName"],
    }
    volume = {**named, "class": settings["class"], **({"node": settings["name"]} if node else {})}
    return [
        [{"Key": k, "Value": v} for k, v in {**t, **settings["tags"]}.items()]
        for t in (instance, volume)
    ]


def run_instances_request(settings, client_token, count):
    """boto3 RunInstances arguments for `count` nodes of these settings (MinCount 1: EC2
    launches what it can; the driver names what it got). A node that takes an existing Docker
    volume (docker_volume_id) launches without one."""
    mappings = settings["block_device_mappings"][: -1 if settings["docker_volume_id"] else None]
    instance_tags, volume_tags = node_tags(settings, node=count == 1)
    request = {
        "ImageId": settings["image"],
        "InstanceType": settings["size"],
        "MinCount": 1,
        "MaxCount": count,
        "ClientToken": client_token,
        "BlockDeviceMappings": mappings,
        "MetadataOptions": settings["metadata_options"],
        "EbsOptimized": settings["ebs_optimized"],
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": instance_tags},
            *([{"ResourceType": "volume", "Tags": volume_tags}] if mappings else []),
        ],
        "KeyName": settings["keyname"],
        "SecurityGroupIds": settings["securitygroupid"],
        "SubnetId": settings["subnetid"],
        "IamInstanceProfile": settings["iam_profile"],
        "UserData": settings["userdata"],
        "InstanceMarketOptions": settings["spot"],
        "Placement": {"AvailabilityZone": settings["availability_zone"]},
    }
    return {k: v for k, v in request.items() if v not in (None, "", [], {"AvailabilityZone": None})}


def request_origins(settings):
    """REQUEST_ORIGINS plus the block device mappings and tags of these settings."""
    origins = dict(REQUEST_ORIGINS)
    count = len(settings["block_device_mappings"])
    for index in range(count):
        last = index == count - 1
        origins[f"BlockDeviceMappings[{index}]"] = (
            "docker_volume" if last else f"block_device_mappings[{index}]"
        )
    for spec, tags in enumerate(node_tags(settings)):
        for index, tag in enumerate(tags):
            key = "name" if tag["Key"] in ("Name", "node") else f"tag.{tag['Key']}"
            origins[f"TagSpecifications[{spec}].Tags[{index}]"] = key
    return origins


def request_problems(service_model, request, origins):
    """(profile key, text) of every problem of a RunInstances request: botocore's validator
    against the EC2 model, what the model holds beyond it, then the value rules."""
    shape = service_model.operation_model("RunInstances").input_shape
    report = botocore.validate.ParamValidator().validate(request, shape)
    problems = [botocore_problem(error) for error in getattr(report, "_errors", [])]
    if report.has_errors() and not problems:  # botocore changed its report: keep its text
        problems = [("", line) for line in report.generate_report().splitlines()]
    problems += model_value_problems(request, shape)
    for index, mapping in enumerate(request.get("BlockDeviceMappings", [])):
        if not problems and isinstance(mapping.get("Ebs"), dict):
            path = f"BlockDeviceMappings[{index}].Ebs"
            problems += [(f"{path}.{key}", text) for key, text in ebs_problems(mapping["Ebs"])]
    return [(profile_key(path, origins), text) for path, text in problems]


def botocore_problem(error):
    """(request path, text) from one botocore validation error tuple."""
    kind, path, details = error
    path = path.lstrip(".")
    if kind == "unknown field":
        unknown, valid = details["unknown_param"], details["valid_names"]
        hint = difflib.get_close_matches(unknown, valid, n=1)
        suffix = f": did you mean {hint[0]}?" if hint else f" (known: {', '.join(valid)})"
        return (f"{path}.{unknown}".lstrip("."), f"is not a known setting{suffix}")
    if kind == "missing required field":
        return (f"{path}.{details['required_name']}".lstrip("."), "is required")
    if kind == "invalid type":
        wanted = ", ".join(t.split("'")[1] if "'" in t else t for t in details["valid_types"])
        return (path, f"has the wrong type ({details['param']!r}; wanted {wanted})")
    if kind in ("invalid range", "invalid length"):
        return (path, f"is too small ({details['param']!r}; at least {details['min_allowed']})")
    return (path, f"is invalid ({kind})")


def model_value_problems(value, shape, path=""):
    """What botocore's validator leaves out but its model says: enums, maximums, a boolean
    where a number belongs."""
    items = []
    if shape.type_name == "structure" and isinstance(value, dict):
        items = [
            (v, shape.members[k], f"{path}.{k}".lstrip("."))
            for k, v in value.items()
            if k in shape.members
        ]
    elif shape.type_name == "list" and isinstance(value, list):
        items = [(v, shape.member, f"{path}[{i}]") for i, v in enumerate(value)]
    problem = _scalar_problem(value, shape)
    return [problem for item in items for problem in model_value_problems(*item)] + (
        [(path, problem)] if problem else []
    )


def _scalar_problem(value, shape):
    high, number = shape.metadata.get("max"), shape.type_name in ("integer", "long")
    enum = getattr(shape, "enum", None)
    if enum and isinstance(value, str) and value not in enum:
        if shape.name in LIVE_CHECKED_ENUMS:
            return None
        hint = difflib.get_close_matches(value, shape.enum, n=1)
        choices = shape.enum if len(shape.enum) <= 12 else f"botocore's {len(shape.enum)} values"
        return f"must be one of {choices}, got {value!r}" + (
            f" (did you mean {hint[0]}?)" if hint else ""
        )
    if number and isinstance(value, bool):
        return f"must be a number, got {value!r}"
    if number and isinstance(value, int) and high is not None and value > high:
        return f"must be at most {high}, got {value}"
    return None


def ebs_problems(ebs):
    """(field, text) for EBS values out of their volume type's range (RULES['ebs'])."""
    kind, size = ebs.get("VolumeType"), ebs.get("VolumeSize")
    rule = RULES["ebs"].get(kind)
    if rule is None:
        return []  # EC2's default type, or one newer than this table: EC2 decides
    low, high = rule["size"]
    problems = [
        (
            "VolumeSize",
            size is not None
            and not low <= size <= high
            and f"{size} GiB is out of range for {kind} ({low}-{high} GiB)",
        ),
        ("Iops", _iops_problem(kind, rule, ebs.get("Iops"), size)),
        ("Throughput", _throughput_problem(kind, rule, ebs.get("Throughput"), ebs.get("Iops"))),
        (
            "KmsKeyId",
            ebs.get("KmsKeyId") and ebs.get("Encrypted") is False and "needs Encrypted: true",
        ),
    ]
    return [(field, text) for field, text in problems if text]


def _iops_problem(kind, rule, iops, size):
    if "iops" not in rule:
        return iops and f"is not settable for {kind} (only gp3, io1, io2)"
    if iops is None:
        return kind != "gp3" and f"is required for {kind}"
    low, high = rule["iops"]
    if not low <= iops <= high:
        return f"{iops} is out of range for {kind} ({low}-{high})"
    free = RULES["gp3_baseline_iops"] if kind == "gp3" else 0
    if size and iops > free and iops > rule["per_gib"] * size:
        return f"{iops} is more than {rule['per_gib']} per GiB of {size} GiB"
    return None


def _throughput_problem(kind, rule, mibps, iops):
    """gp3 only, within its range, at most 0.25 MiB/s per provisioned IOPS."""
    if mibps is None:
        return None
    if "mibps" not in rule:
        return f"is only settable for gp3, not {kind}"
    low, high = rule["mibps"]
    if not low <= mibps <= high:
        return f"{mibps} MiB/s is out of range for gp3 ({low}-{high})"
    iops = iops or RULES["gp3_baseline_iops"]
    if mibps * 4 > iops:
        return f"{mibps} MiB/s needs at least {int(mibps * 4)} Iops (0.25 MiB/s each; has {iops})"
    return None


def profile_key(path, origins):
    """The profile key a request path came from: BlockDeviceMappings[1].Ebs.Iops ->
    docker_volume.Ebs.Iops."""
    prefixes = [p for p in origins if path == p or path.startswith((p + ".", p + "["))]
    best = max(prefixes, key=len, default="")
    return origins[best] + path[len(best) :] if best else path


def deep_merge(base, override):
    """base updated by override, recursing into mappings (lists are replaced)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# --------------------------------------------------------------------------- a create run


def entries_problems(entries, profiles, driver):
    """A create run's (profile, name, overrides) entries: profiles that exist and are the
    driver's, each name once; every problem once."""
    problems, seen = [], {}
    for profile, name, _ in entries:
        hint = difflib.get_close_matches(str(profile), profiles, n=1)
        if profile not in profiles:
            problems.append(
                f"profile {profile!r} is not defined"
                + (f" (did you mean {hint[0]}?)" if hint else "")
            )
        elif not str(profiles[profile].get("provider")).endswith(f":{driver}"):
            problems.append(f"profile {profile!r} is not a {driver} profile")
        if name in seen:
            problems.append(f"{name!r} is listed twice (profiles {seen[name]} and {profile})")
        seen[name] = profile
    return list(dict.fromkeys(problems))


def run_problems(problems, nodes, limit=3):
    """{message: [node names]} as lines; in a run of several nodes each names its nodes."""
    lines = []
    for text, names in problems.items():
        shown = ", ".join(repr(n) for n in names[:limit])
        more = f" and {len(names) - limit} more" if names[limit:] else ""
        lines.append(f"{shown}{more}: {text}" if nodes > 1 else text)
    return lines


def name_problems(vm_, node_name_problem, class_name_problem):
    """The node name (= minion id, record key, Name tag) and class, by the name rules given
    (dockerhosts_names': utils get no __utils__)."""
    name, minion_id, problems = vm_.get("name"), node_minion_id(vm_), []
    for key, value in (("name", name), ("minion.id", minion_id)):
        problem = node_name_problem(value)
        if problem and not problems:
            problems.append((key, problem))
    if not problems and minion_id != name:
        problems.append(
            (
                "minion.id",
                f"{minion_id!r} is not the node name {name!r}: a node's minion id is its name",
            )
        )
    if vm_.get("class") is None:
        return [*problems, ("class", "(node class: use a class profile) is not set")]
    problem = class_name_problem(vm_["class"])
    return [*problems, *([("class", problem)] if problem else [])]


def node_minion_id(vm_):
    """The minion id salt-cloud would give the node (its name, maybe with a domain)."""
    minion = vm_.get("minion") if isinstance(vm_.get("minion"), dict) else {}
    domain = vm_.get("domain") if vm_.get("use_fqdn") else minion.get("append_domain")
    minion_id = str(minion.get("id", vm_.get("name")))
    return f"{minion_id}.{domain}" if domain else minion_id


def deploy_problems(vm_, settings, deploy):
    """What salt-cloud's deploy needs: a minion mapping, the SSH key file when deploying; no
    master making or map ordering."""
    problems, key = [], settings.get("private_key")
    if not isinstance(vm_.get("minion") or {}, dict):
        problems.append(("minion", f"must be a mapping, got {vm_['minion']!r}"))
    if deploy and not (key and os.path.isfile(key)):
        problems.append(
            (
                "private_key",
                f"{key!r} is not a file: deploying salt needs the SSH "
                "key of 'keyname' (or use --no-deploy)",
            )
        )
    if vm_.get("make_master") or vm_.get("requires"):
        problems.append(("make_master", "and 'requires' (map ordering) are not supported"))
    return problems
