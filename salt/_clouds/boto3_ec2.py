"""
salt-cloud driver for Amazon EC2 built on boto3 (``driver: boto3_ec2``).

Salt 3008 dropped the ``ec2`` cloud driver from core, and the 3007 one speaks a hand-rolled
query API that breaks on current endpoints; this driver uses boto3 for every call and works
on Salt 3007 and 3008.  salt-cloud loads it from the repository through ``cloud_dirs`` in the
``cloud`` config file.  It is self-contained: the loader imports it by path.

What it promises (docs/cloud-driver.md documents every key, action and fault):

- every provider/profile key is checked before the first EC2 write, naming the key: the
  RunInstances request is validated with botocore's own validator against the EC2 service
  model, plus the few value rules the model does not carry (``RULES``);
- a create launches at most one instance: one client token per create, a per-name lock on
  the master, and a check after launch that settles a race between masters;
- whatever fails after the launch (signals included) terminates the instance, retrying for
  ``cleanup_timeout`` seconds; only if EC2 stays unreachable is the instance id reported;
- ``salt-cloud -d a b c`` (and ``-d -m map``, with or without ``-P``) terminates in one batch
  and waits once.

Layout, top-down: loader entry points (create, destroy, listings, actions), the steps of a
create, the steps of a destroy, configuration and validation, EC2 plumbing, the master's
files (locks, keys, node classes), signals, and pure helpers.
"""

import contextlib
import copy
import ctypes
import difflib
import fcntl
import ipaddress
import json
import logging
import multiprocessing
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import types
import unicodedata
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import salt.utils.event
import yaml
from salt.exceptions import SaltCloudConfigError, SaltCloudSystemExit

from salt import config

try:
    import boto3
    import botocore.config
    import botocore.exceptions
    import botocore.parsers
    import botocore.retries.standard
    import botocore.validate

    HAS_BOTO3 = True
    # What a boto3 call raises when EC2 (or the way to it) fails; a garbled answer (e.g. a
    # proxy's HTML error page) is a ResponseParserError, which is no BotoCoreError.
    AWS_ERRORS = (
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        botocore.parsers.ResponseParserError,
    )
except ImportError:
    HAS_BOTO3 = False

log = logging.getLogger(__name__)

__virtualname__ = "boto3_ec2"

# --------------------------------------------------------------------------- defaults

# The Docker volume: one boto3 BlockDeviceMapping, deep-merged under the profile's
# `docker_volume`.  These defaults live here only; docs/cloud-driver.md quotes them.
DOCKER_VOLUME_DEFAULTS = {
    "DeviceName": "/dev/sdb",
    "Ebs": {
        "VolumeSize": 8,
        "VolumeType": "gp3",
        "Encrypted": True,
        "DeleteOnTermination": True,
    },
}
# IMDSv2 only, unless `metadata_options` says otherwise (merged over this).
METADATA_OPTIONS_DEFAULTS = {"HttpTokens": "required", "HttpEndpoint": "enabled"}
# Plain settings (provider or profile) and their defaults.
SETTING_DEFAULTS = {
    "instance_wait_timeout": 600,  # s: running after a launch, stopped/terminated after actions
    "cleanup_timeout": 600,  # s: terminating after a failed create, through EC2 outages
    "retry_mode": "standard",  # botocore's retry mode (provider only)
    "max_attempts": 5,  # botocore's attempts per API call, first one included (provider only)
    "ssh_interface": "public_ips",
    "ebs_optimized": False,
    "termination_protection": False,
}

# Value rules EC2 enforces that botocore's service model does not carry (the model holds the
# request's structure, types and enums; these ranges are only in its documentation strings).
# Checked before any EC2 write.  Sources: the documentation of botocore's EC2 model
# (EbsBlockDevice.VolumeSize/Iops/Throughput, InstanceMetadataOptionsRequest), the EBS User
# Guide (IOPS per GiB, gp3 throughput per IOPS), the EC2 User Guide (tags, user data).
RULES = {
    # VolumeType: VolumeSize GiB, Iops, most Iops per GiB, Throughput MiB/s (gp3 only).
    "ebs": {
        "gp2": {"size": (1, 16384)},
        "gp3": {
            "size": (1, 65536),
            "iops": (3000, 80000),
            "iops_per_gib": 500,
            "throughput": (125, 2000),
        },
        "io1": {"size": (4, 16384), "iops": (100, 64000), "iops_per_gib": 50},
        "io2": {"size": (4, 65536), "iops": (100, 256000), "iops_per_gib": 1000},
        "st1": {"size": (125, 16384)},
        "sc1": {"size": (125, 16384)},
        "standard": {"size": (1, 1024)},
    },
    "gp3_baseline_iops": 3000,  # free with any size, so exempt from iops_per_gib
    "gp3_throughput_per_iops": 0.25,  # MiB/s per provisioned IOPS
    "tags_per_resource": 50,
    "tag_key_length": (1, 128),
    "tag_value_length": (0, 256),  # the Name tag (the node name) included
    "tag_reserved_prefix": "aws:",  # case-insensitive
    "user_data_bytes": 16 * 1024,  # raw, before base64
    "hop_limit": (1, 64),  # MetadataOptions.HttpPutResponseHopLimit
    "node_name_bytes": 255,  # the name is a file name (minion key, node class entry)
    # Linux device names EC2 accepts; the Docker volume may not take a root device name.
    "device_name": re.compile(r"^/dev/(sd[a-z][a-z]?[0-9]*|xvd[a-z][a-z]?|nvme[0-9]+n[0-9]+)$"),
    "docker_device_name": re.compile(r"^/dev/(sd|xvd)[b-z][a-z]?$"),
    "class": re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
    "price": re.compile(r"^[0-9]+(\.[0-9]+)?$"),
}

SSH_INTERFACES = ("public_ips", "private_ips")
RETRY_MODES = ("standard", "adaptive")
# Spot: how the instance ends when EC2 takes capacity back, and the request type it needs.
SPOT_REQUEST_TYPE = {"terminate": "one-time", "stop": "persistent", "hibernate": "persistent"}
# Fields -S shows when the cloud config sets no `query.selection`.
DEFAULT_QUERY_SELECTION = ("id", "class", "state", "size", "private_ips", "public_ips")
# Tags the driver owns: a profile's `tag` may add tags but not redefine these.
DOCKER_DEVICE_TAG = "docker_volume_device"
RESERVED_TAGS = ("Name", "class", "container", DOCKER_DEVICE_TAG)
# Instances in these states still own their name; terminated ones give it back.
LIVE_STATES = ("pending", "running", "stopping", "stopped")
# Connection settings: one region/endpoint/account per provider, so that -Q and -d see
# every node its profiles create.
CONNECTION_KEYS = ("location", "endpoint_url", "id", "key", "aws_profile")
PROVIDER_ONLY_KEYS = (*CONNECTION_KEYS, "retry_mode", "max_attempts")
# Keys this driver reads from a merged provider + profile config (typos of them are refused).
DRIVER_KEYS = (
    *PROVIDER_ONLY_KEYS,
    *SETTING_DEFAULTS,
    "image",
    "size",
    "class",
    "keyname",
    "private_key",
    "securitygroup",
    "securitygroupid",
    "subnetid",
    "availability_zone",
    "iam_profile",
    "userdata",
    "userdata_file",
    "block_device_mappings",
    "docker_volume",
    "docker_disk",
    "tag",
    "metadata_options",
    "spot",
)
SPOT_KEYS = ("max_price", "interruption_behavior")
# Enums the driver asks EC2 about instead (a type newer than the installed botocore is fine).
LIVE_CHECKED_ENUMS = ("InstanceType",)
# Polling: the first check at once, then these delays (s), the last one repeated.
POLL_DELAYS = (0.2, 0.5, 1, 2)
# Batches of instance ids per TerminateInstances / filter (EC2 takes 1000 / 200).
ID_BATCH = 200


# Per-process state.  salt's loader executes this file anew for every loader it builds
# (salt-cloud builds several per run), so what must outlive one loader lives here.
_PROCESS = sys.modules.setdefault("_boto3_ec2_process", types.ModuleType("_boto3_ec2_process"))
for _name, _default in (
    ("sessions", {}),
    ("clients", {}),
    ("destroyed", {}),
    ("events", {}),
    ("guard", None),
):
    if not hasattr(_PROCESS, _name):
        setattr(_PROCESS, _name, _default)


def __virtual__():
    if not HAS_BOTO3:
        return (False, "the boto3_ec2 cloud driver needs boto3")
    if get_configured_provider() is False:
        return False
    _on_cli_load()
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


# =========================================================================== loader entry points


def create(vm_):
    """Create one node from a profile (salt-cloud -p / -m), then deploy salt to it."""
    job = _CreateJob(vm_)
    with _create_signals(job):
        try:
            try:
                return _create(job)
            finally:
                job.interruptible = False
                _close_events()
        except BaseException as exc:
            raise _create_failed(job, exc) from None


def destroy(name, call=None):
    """Terminate the node named name and wait until it is gone (salt-cloud -d).

    Several names (`-d a b c`, `-d -m map`, with or without -P) are terminated in one batch:
    the first call of the run terminates them all and waits once; the other calls, in this
    process or in salt-cloud's parallel workers, read its results.
    """
    if call == "function":
        raise SaltCloudSystemExit("destroy is called with -d, -a destroy or --destroy")
    result = _destroy_in_batch(name)
    if "error" in result:
        raise SaltCloudSystemExit(result["error"])
    return result


def list_nodes(call=None):
    """Live (not terminated) instances by Name tag: salt-cloud -Q."""
    return _nodes(call, node_summary)


def list_nodes_min(call=None):
    """Name, id and state of live instances: what salt-cloud checks before a create."""
    return _nodes(call, node_min)


def list_nodes_full(call=None):
    """Live instances with tags, volumes, IAM profile, security groups: salt-cloud -F."""
    return _nodes(call, node_details, with_volumes=True)


def list_nodes_select(call=None):
    """The fields of list_nodes_full named by query.selection: salt-cloud -S."""
    selection = __opts__.get("query.selection") or DEFAULT_QUERY_SELECTION
    return __utils__["cloud.list_nodes_select"](list_nodes_full("function"), selection, call)


def show_instance(name, call=None):
    """Everything list_nodes_full knows about one node: salt-cloud -a show_instance NAME."""
    _require_action("show_instance", call)
    client = _provider_client()
    instance = _live_instance(client, name)
    return node_details(instance, _volumes_of(client, [instance]))


def avail_locations(call=None):
    """The regions this account can use: salt-cloud --list-locations."""
    _refuse_action("avail_locations", call)
    regions = _call("listing regions", _provider_client().describe_regions)["Regions"]
    return {
        region["RegionName"]: {
            "endpoint": region.get("Endpoint"),
            "opt_in_status": region.get("OptInStatus"),
        }
        for region in regions
    }


def avail_sizes(call=None):
    """Instance types offered in the region: salt-cloud --list-sizes."""
    _refuse_action("avail_sizes", call)
    pages = _paginate(_provider_client(), "describe_instance_types", "InstanceTypes")
    return dict(sorted((itype["InstanceType"], instance_type_summary(itype)) for itype in pages))


def avail_images(call=None):
    """AMIs this account owns plus those the provider's profiles use: --list-images.

    The public catalogue has tens of thousands of AMIs; nobody wants it printed.
    """
    _refuse_action("avail_images", call)
    client = _provider_client()
    images = _call("listing own images", client.describe_images, Owners=["self"])["Images"]
    profile_images = _profile_images()
    if profile_images:
        images += _call(
            "listing profile images",
            client.describe_images,
            Filters=[{"Name": "image-id", "Values": profile_images}],
        )["Images"]
    return {image["ImageId"]: image_summary(image) for image in images}


# --------------------------------------------------------------------------- actions


def stop(name, call=None):
    """Stop a node and wait until it is stopped: salt-cloud -a stop NAME."""
    _require_action("stop", call)
    return _change_state(name, "stop_instances", "stopped")


def start(name, call=None):
    """Start a stopped node and wait until it runs: salt-cloud -a start NAME."""
    _require_action("start", call)
    return _change_state(name, "start_instances", "running")


def reboot(name, call=None):
    """Reboot a node and wait until EC2 reports it running: salt-cloud -a reboot NAME."""
    _require_action("reboot", call)
    return _change_state(name, "reboot_instances", "running")


def enable_term_protect(name, call=None):
    """Turn termination protection on: destroy then refuses the node."""
    _require_action("enable_term_protect", call)
    return _set_termination_protection(name, True)


def disable_term_protect(name, call=None):
    """Turn termination protection off, so that the node can be destroyed."""
    _require_action("disable_term_protect", call)
    return _set_termination_protection(name, False)


def show_term_protect(name, call=None):
    """Whether the node has termination protection."""
    _require_action("show_term_protect", call)
    client = _provider_client()
    instance_id = _live_instance(client, name)["InstanceId"]
    return {"instance_id": instance_id, "termination_protection": _protected(client, instance_id)}


def show_volumes(name, call=None):
    """The node's EBS volumes by device name: size, type, IOPS, throughput, state."""
    _require_action("show_volumes", call)
    client = _provider_client()
    instance = _live_instance(client, name)
    volumes = _volumes_of(client, [instance])
    return {
        mapping["DeviceName"]: volume_summary(volumes.get(mapping["Ebs"]["VolumeId"], {}), mapping)
        for mapping in instance.get("BlockDeviceMappings", [])
        if "Ebs" in mapping
    }


def docker_volume(name, call=None):
    """The node's Docker volume (profile key docker_volume): device, volume, size, state."""
    _require_action("docker_volume", call)
    client = _provider_client()
    instance = _live_instance(client, name)
    mapping = docker_volume_mapping_of(instance)
    volume = _volumes_of(client, [instance]).get(mapping["Ebs"]["VolumeId"], {})
    info = volume_summary(volume, mapping)
    info["modification"] = _latest_modification(client, mapping["Ebs"]["VolumeId"])
    return info


def grow_docker_disk(name, kwargs=None, call=None):
    """Grow the node's Docker volume: salt-cloud -a grow_docker_disk NAME size=<GiB>.

    ModifyVolume, then wait until EC2 reports the modification optimizing or completed (the
    new size is usable from then on; growing the partition/LV/filesystem is the formula's
    job).  Refuses to shrink.
    """
    _require_action("grow_docker_disk", call)
    size = grow_size_argument(kwargs)
    client = _provider_client()
    instance = _live_instance(client, name)
    volume_id = docker_volume_mapping_of(instance)["Ebs"]["VolumeId"]
    volume = _call(f"describing {volume_id}", client.describe_volumes, VolumeIds=[volume_id])
    old_size = check_growth(volume["Volumes"][0], size)
    if old_size == size:
        return {"volume_id": volume_id, "size": size, "changed": False}
    _call(f"growing {volume_id}", client.modify_volume, VolumeId=volume_id, Size=size)
    state = _await_modification(client, volume_id, _node_setting("instance_wait_timeout"))
    return {"volume_id": volume_id, "old_size": old_size, "size": size, "state": state}


# =========================================================================== steps of a create


class _CreateJob:
    """One create: its config, what it launched, and what it wrote on the master."""

    def __init__(self, vm_):
        self.vm = vm_
        self.name = vm_.get("name")
        self.settings = None
        self.conn = None
        self.client = None
        self.request = None
        self.client_token = str(uuid.uuid4())
        self.launch_sent = False  # RunInstances may have reached EC2
        self.launch_unknown = None  # why EC2 could not say whether it launched
        self.minion_id = None
        self.instance_id = None
        self.instance = None
        self.registered = False  # this create wrote the node class entry
        self.lost_lock_race = False
        self.interruptible = True
        self.signals = []


def _create(job):
    _prepare(job)
    _fire_vm(job.vm, "starting create", "creating")
    _check_launch_inputs(job)
    with _name_lock(job):
        _check_name_free(job)
        _launch(job)
        _keep_accepted_key(job)
    _await_running(job)
    _resolve_race(job)
    _register_class(job)
    ret = _deploy(job)
    _protect(job)
    __utils__["dockerhosts_nodes.update"](__opts__, job.minion_id, state="deployed")
    log.info("Created %s (%s)", job.name, job.instance_id)
    _fire_vm(job.vm, "created instance", "created")
    return {**ret, **create_result(job.instance, job.settings)}


def _prepare(job):
    """Validate the whole config, then the RunInstances request, before any EC2 call."""
    _stop_if_parent_is_stopping()
    provider = _vm_provider_config(job.vm)
    job.settings, job.conn = validated_config(job.vm, provider)
    job.minion_id = _minion_id(job.vm)
    job.client = _client(job.conn)
    job.request, job.origins = run_instances_request(job.settings, job.client_token)
    validate_request(job.client.meta.service_model, job.request, job.origins)


def validated_config(vm_, provider):
    """The node's settings and the provider's connection, checked (no EC2 call)."""
    settings = node_settings(vm_, provider)
    conn = connection_settings(provider)
    deploy = config.get_cloud_config_value("deploy", vm_, __opts__, default=True)
    settings["deploy"] = deploy
    private_key = settings["private_key"]
    if deploy and not (private_key and os.path.isfile(private_key)):
        raise SaltCloudConfigError(
            f"'private_key' {private_key!r} is not a file: deploying salt needs the SSH key of "
            "'keyname' (or use deploy: False / --no-deploy)"
        )
    return settings, conn


def _check_launch_inputs(job):
    """What EC2 (or moto) would not check, or check late: all EC2 reads, done together."""
    settings = job.settings
    checks = {
        "image": lambda: _check_image(job.client, settings["image"]),
        "size": lambda: _check_instance_type(job.client, settings["size"]),
        "keyname": lambda: _check_key_pair(job.client, settings["keyname"]),
        "securitygroup": lambda: _security_group_ids(job.client, settings),
        "name": lambda: _check_name_free(job),
    }
    results = _run_together(checks)
    job.request = with_security_groups(job.request, results["securitygroup"])
    validate_request(job.client.meta.service_model, job.request, job.origins)


def _check_name_free(job):
    existing = _instances_named(job.client, job.name)
    if existing:
        found = ", ".join(f"{i['InstanceId']} ({i['State']['Name']})" for i in existing)
        job.lost_lock_race = True
        raise SaltCloudSystemExit(
            f"an instance named {job.name!r} already exists: {found}; nothing was created"
        )


def _launch(job):
    """RunInstances with this create's client token (botocore retries it idempotently)."""
    log.info(
        "Launching %s: %s from %s, class %s (client token %s)",
        job.name,
        job.settings["size"],
        job.settings["image"],
        job.settings["class"],
        job.client_token,
    )
    _fire_vm(job.vm, "requesting instance", "requesting")
    job.launch_sent = True
    try:
        reservation = job.client.run_instances(**job.request)
    except AWS_ERRORS as exc:
        found = _launched_by_token(job, job.settings["cleanup_timeout"])
        if found is None:
            raise SaltCloudSystemExit(
                f"EC2 did not launch the instance: {aws_error_message(exc)} (no instance "
                f"carries this create's client token {job.client_token})"
            ) from exc
        log.warning(
            "%s: RunInstances reported %s, but EC2 launched %s with this create's client token",
            job.name,
            aws_error_message(exc),
            found,
        )
        job.instance_id = found
        return
    job.instance_id = reservation["Instances"][0]["InstanceId"]


def _resolve_race(job):
    """Two masters (separate locks) may launch the same name at once: the earliest launch
    wins, the other terminates its own instance (every racer applies the same rule, so one
    survives).  Checked once the instance runs: by then EC2 lists every racer's instance."""
    live = _poll(
        lambda: _instances_named(job.client, job.name, translate=False),
        job.settings["instance_wait_timeout"],
        f"EC2 to list the instances named {job.name}",
    )
    winner = race_winner(live)
    if winner is not None and winner["InstanceId"] != job.instance_id:
        raise SaltCloudSystemExit(
            f"another salt-cloud launched {job.name!r} first ({winner['InstanceId']}): "
            f"this create lost the race and terminates its own instance {job.instance_id}"
        )


def _await_running(job):
    """Poll until the instance runs; transient errors and throttling only delay the wait."""

    def running():
        instance = _describe_instance(job.client, job.instance_id)
        state = instance["State"]["Name"] if instance else "pending"
        if state in ("shutting-down", "terminated", "stopping", "stopped"):
            reason = (instance.get("StateReason") or {}).get("Message", "no reason given")
            raise SaltCloudSystemExit(f"instance {job.instance_id} went {state}: {reason}")
        return instance if state == "running" else None

    job.instance = _poll(
        running,
        job.settings["instance_wait_timeout"],
        f"{job.instance_id} to run",
        not_found_is_pending=True,
    )


def _register_class(job):
    """The master's node class entry, written before the minion can ask for its pillar."""
    job.registered = True
    _write_node_class(job.minion_id, job.settings["class"])


def _deploy(job):
    """Grains for the minion, then salt-cloud's standard deploy over SSH."""
    settings = job.settings
    volume = docker_volume_grain(job.instance, settings["docker_device"])
    job.vm["grains"] = minion_grains(job.vm.get("grains"), settings["class"], volume)
    job.vm["instance_id"] = job.instance_id
    if not settings["deploy"]:
        return {}
    address = ssh_address(job.instance, settings["ssh_interface"])
    endpoint = job.client.meta.endpoint_url
    if is_loopback_endpoint(endpoint) and not is_loopback_address(address):
        # moto makes addresses up (54.x, 10.x, 172.31.x): they belong to other hosts.
        raise SaltCloudSystemExit(
            f"refusing to SSH to {address}: the EC2 endpoint {endpoint} is local, so its "
            "addresses are not real; put the node in a 127.0.0.0/8 subnet or use --no-deploy"
        )
    job.vm["ssh_host"] = address
    job.vm["key_filename"] = settings["private_key"]
    ret = __utils__["cloud.bootstrap"](job.vm, __opts__)
    if "Error" in ret:
        raise SaltCloudSystemExit(f"deploying salt failed: {ret['Error']}")
    ret.pop("Error", None)
    return ret


def _protect(job):
    """Termination protection goes on last: a failed create can always clean up."""
    if job.settings["termination_protection"]:
        _call(
            f"protecting {job.instance_id}",
            job.client.modify_instance_attribute,
            InstanceId=job.instance_id,
            DisableApiTermination={"Value": True},
        )


def _create_failed(job, exc):
    """Clean up after a failed create; return the exception salt-cloud should see."""
    cleanup = _cleanup(job)
    signum = exc.signum if isinstance(exc, _Interrupted) else None
    signum = signum or (job.signals[0] if job.signals else None)
    if signum is not None:
        log.error("%s: interrupted by signal %s; %s", job.name, signum, cleanup)
        return SystemExit(128 + signum)
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        log.error("%s: %s; %s", job.name, type(exc).__name__, cleanup)
        return exc
    known = (SaltCloudSystemExit, SaltCloudConfigError)
    reason = str(exc) if isinstance(exc, known) else aws_error_message(exc)
    message = f"{job.name}: {reason}" + (f"; {cleanup}" if cleanup else "")
    log.error("Creating %s failed: %s", job.name, message)
    if isinstance(exc, SaltCloudConfigError):
        return SaltCloudConfigError(message)
    return SaltCloudSystemExit(message)


def _cleanup(job):
    """Undo what this create did: instance, node class entry, pre-accepted key.  Each part
    runs whatever the others do; a part that fails says so in the result."""
    parts = []
    steps = (
        ("terminating", job.launch_sent, lambda: _terminate_launched(job)),
        (
            "removing the node class entry",
            job.registered,
            lambda: _remove_node_class(job.minion_id),
        ),
        ("forgetting the pre-accepted key", True, lambda: _forget_accepted_key(job)),
    )
    for what, needed, step in steps:
        if not needed:
            continue
        try:
            parts.append(step())
        except Exception as exc:  # keep cleaning: report it with the failure
            log.exception("%s: %s failed", job.name, what)
            parts.append(f"{what} FAILED: {exc}")
    return "; ".join(part for part in parts if part)


def _terminate_launched(job):
    """Terminate what this create launched, retrying through outages for cleanup_timeout."""
    deadline = time.monotonic() + job.settings["cleanup_timeout"]
    if job.instance_id is None and job.launch_unknown:
        return job.launch_unknown
    client = _client(job.conn, fresh=True)  # the old one may hold a half-read connection
    instance_id = job.instance_id or _launched_by_token(
        job, deadline - time.monotonic(), client=client
    )
    if instance_id is None:
        return "no instance was launched (checked by client token)"
    job.instance_id = instance_id
    try:
        _terminate_with_retries(client, [instance_id], deadline)
    except _StillUnreachable as exc:
        return (
            f"terminating instance {instance_id} FAILED for {job.settings['cleanup_timeout']} s "
            f"({exc}): it is still running, terminate it by hand"
        )
    except SaltCloudSystemExit as exc:
        return f"terminating instance {instance_id} FAILED ({exc}): terminate it by hand"
    if not _terminated_within(client, [instance_id], deadline):
        return f"instance {instance_id} is shutting down (termination requested)"
    return f"instance {instance_id} was terminated"


def _launched_by_token(job, seconds, client=None):
    """The instance this create's RunInstances launched, if any: None when there is none."""
    client = client or job.client

    def lookup():
        found = describe_instances(
            client, [{"Name": "client-token", "Values": [job.client_token]}], live=False
        )
        return [i["InstanceId"] for i in found if i["State"]["Name"] != "terminated"] or [None]

    try:
        return _poll(lookup, max(seconds, 1), "EC2 to answer a client-token lookup")[0]
    except _StillUnreachable as exc:
        job.launch_unknown = (
            f"RunInstances may have launched an instance and EC2 could not be asked for "
            f"{seconds:.0f} s ({exc}): look for client token {job.client_token} "
            f"(aws ec2 describe-instances --filters Name=client-token,Values={job.client_token})"
        )
        raise SaltCloudSystemExit(job.launch_unknown) from exc


# =========================================================================== steps of a destroy


def _destroy_in_batch(name):
    """This name's result from its batch: terminated here, or by another process of the run."""
    alias = (_get_active_provider_name() or "").split(":")[0]
    key = (alias, _run_id())
    results = _PROCESS.destroyed.setdefault(key, {})
    if name not in results:
        with _batch_lock(key) as shared:
            results.update(shared.read())
            if name not in results:
                names = [n for n in _batch_names() if n not in results] or [name]
                if name not in names:
                    names.append(name)
                try:
                    results.update(_destroy_names(names))
                finally:
                    _close_events()
                shared.write(results)
    return results.get(name) or {"error": f"no instance named {name!r}"}


def _destroy_names(names):
    """Terminate every live instance of these names in one batch, wait once, forget them."""
    client = _provider_client()
    by_name = {}
    for instance in _instances_named(client, names):
        by_name.setdefault(node_name(instance), []).append(instance)
    results = {name: {"error": f"no instance named {name!r}"} for name in names}
    if not by_name:
        return results
    _before_destroy(sorted(by_name))
    for name in by_name:
        _fire(name, "destroying instance", "destroying", {"name": name})
    _cancel_spot_requests(client, [i for found in by_name.values() for i in found])
    protected = _terminate_unprotected(
        client, [i["InstanceId"] for v in by_name.values() for i in v]
    )
    timeout = _node_setting("instance_wait_timeout")
    for name, instances in by_name.items():
        results[name] = _batch_result(name, instances, protected, names)
    done = [i["InstanceId"] for n, v in by_name.items() if "error" not in results[n] for i in v]
    if done and not _terminated_within(client, done, time.monotonic() + timeout):
        for name in by_name:
            results[name].setdefault("state", "shutting-down")
    for name in by_name:
        if "error" not in results[name]:
            _forget_node(name)
            _fire(name, "destroyed instance", "destroyed", {"name": name})
    return results


def _batch_result(name, instances, protected, batch):
    ids = [i["InstanceId"] for i in instances]
    blocked = [i for i in ids if i in protected]
    if not blocked:
        return {"instance_ids": ids, "state": "terminated"}
    others = [n for n in batch if n != name]
    return {
        "error": (
            f"{name} ({', '.join(blocked)}) has termination protection and was not destroyed: "
            f"run `salt-cloud -a disable_term_protect {name}` first"
            + (f" (the rest of this batch was: {', '.join(others)})" if others else "")
        )
    }


def _terminate_unprotected(client, ids):
    """TerminateInstances on ids; protected instances are left out: returns their ids.

    EC2 refuses the whole call for an Availability Zone holding a protected instance and
    names it: leave it out and ask again until EC2 accepts the rest.
    """
    pending, protected = list(ids), set()
    while pending:
        try:
            for start_at in range(0, len(pending), ID_BATCH):
                batch = pending[start_at : start_at + ID_BATCH]
                _call("terminating", client.terminate_instances, InstanceIds=batch)
            return protected
        except SaltCloudSystemExit as exc:
            refused = protected_instance_id(exc.__cause__, pending)
            if refused is None:
                raise
            pending.remove(refused)
            protected.add(refused)
    return protected


def _cancel_spot_requests(client, instances):
    """A persistent spot request would relaunch a terminated instance: cancel it first."""
    requests = [i["SpotInstanceRequestId"] for i in instances if i.get("SpotInstanceRequestId")]
    if requests:
        _call(
            "cancelling spot requests",
            client.cancel_spot_instance_requests,
            SpotInstanceRequestIds=requests,
        )


def _forget_node(name):
    """What the master keeps for a destroyed node: its key and its node class entry."""
    vm_ = {
        "name": name,
        "provider": _get_active_provider_name(),
        "profile": None,
        "driver": __virtualname__,
    }
    minion_id = _minion_id(vm_)
    if __opts__.get("pki_dir"):
        __utils__["cloud.remove_key"](__opts__["pki_dir"], minion_id)
    _remove_node_class(minion_id)
    with contextlib.suppress(OSError):
        os.remove(os.path.join(_lock_dir(), f"{name}.pub"))
    if __opts__.get("update_cachedir", False):
        __utils__["cloud.delete_minion_cachedir"](
            name, _get_active_provider_name().split(":")[0], __opts__
        )


def _batch_names():
    """The names this salt-cloud run destroys: its -d (or -a destroy) names, or its map's."""
    if not (__opts__.get("destroy") or __opts__.get("action") == "destroy"):
        return []
    if __opts__.get("map"):
        return map_names(_render_map(__opts__["map"]))
    return [name for name in __opts__.get("names") or () if "=" not in str(name)]


def _render_map(path):
    """The map file as salt-cloud renders it (its renderer, e.g. jinja|yaml)."""
    import salt.loader  # noqa: PLC0415  (only destroys of a map need the renderers)
    import salt.template  # noqa: PLC0415

    if str(path).startswith("salt://") or not os.path.isfile(path):
        return {}
    try:
        return salt.template.compile_template(
            path,
            salt.loader.render(__opts__, {}),
            __opts__.get("renderer", "jinja|yaml"),
            __opts__.get("renderer_blacklist"),
            __opts__.get("renderer_whitelist"),
        )
    except Exception as exc:  # a map salt-cloud itself rendered: fall back to one by one
        log.debug("Rendering %s for a batch destroy failed: %s", path, exc)
        return {}


# =========================================================================== listings, actions


def _nodes(call, summarize, with_volumes=False):
    if call == "action":
        raise SaltCloudSystemExit("node listings are called with -Q, -F, -S or -f")
    client = _provider_client()
    instances = describe_instances(client)
    volumes = _volumes_of(client, instances) if with_volumes else {}
    nodes = {}
    for instance in instances:
        name = node_name(instance)
        if name in nodes:
            log.warning("Two live instances are named %s; listing %s", name, instance["InstanceId"])
        nodes[name] = summarize(instance, volumes) if with_volumes else summarize(instance)
    return nodes


def _volumes_of(client, instances):
    volume_ids = [
        mapping["Ebs"]["VolumeId"]
        for instance in instances
        for mapping in instance.get("BlockDeviceMappings", [])
        if "Ebs" in mapping
    ]
    volumes = {}
    for start_at in range(0, len(volume_ids), ID_BATCH):
        batch = volume_ids[start_at : start_at + ID_BATCH]
        filters = [{"Name": "volume-id", "Values": batch}]
        for volume in _paginate(client, "describe_volumes", "Volumes", Filters=filters):
            volumes[volume["VolumeId"]] = volume
    return volumes


def _live_instance(client, name):
    """The one live instance a node name (or an instance id) stands for."""
    if re.match(r"^i-[0-9a-f]+$", str(name)):
        found = describe_instances(client, [{"Name": "instance-id", "Values": [name]}])
    else:
        found = _instances_named(client, name)
    if not found:
        raise SaltCloudSystemExit(f"no live instance named {name!r}")
    if len(found) > 1:
        ids = ", ".join(i["InstanceId"] for i in found)
        raise SaltCloudSystemExit(f"{len(found)} live instances are named {name!r} ({ids})")
    return found[0]


def _change_state(name, operation, wanted):
    """stop/start/reboot one node, then wait until EC2 reports the wanted state."""
    client = _provider_client()
    instance_id = _live_instance(client, name)["InstanceId"]
    _call(f"{operation} {instance_id}", getattr(client, operation), InstanceIds=[instance_id])

    def reached():
        instance = _describe_instance(client, instance_id)
        state = instance["State"]["Name"] if instance else None
        if state in ("shutting-down", "terminated"):
            raise SaltCloudSystemExit(f"{name} ({instance_id}) went {state}")
        return state if state == wanted else None

    _poll(reached, _node_setting("instance_wait_timeout"), f"{name} to be {wanted}")
    return {"instance_id": instance_id, "state": wanted}


def _set_termination_protection(name, enabled):
    client = _provider_client()
    instance = _live_instance(client, name)
    if enabled and instance.get("InstanceLifecycle") == "spot":
        raise SaltCloudSystemExit(f"{name} is a spot instance: EC2 cannot protect those")
    _call(
        f"changing termination protection of {name}",
        client.modify_instance_attribute,
        InstanceId=instance["InstanceId"],
        DisableApiTermination={"Value": enabled},
    )
    return {"instance_id": instance["InstanceId"], "termination_protection": enabled}


def _protected(client, instance_id):
    attribute = _call(
        f"reading termination protection of {instance_id}",
        client.describe_instance_attribute,
        InstanceId=instance_id,
        Attribute="disableApiTermination",
    )
    return bool(attribute["DisableApiTermination"]["Value"])


def _latest_modification(client, volume_id):
    try:
        found = client.describe_volumes_modifications(VolumeIds=[volume_id])
    except botocore.exceptions.ClientError as exc:
        if "NotFound" in exc.response.get("Error", {}).get("Code", ""):
            return None  # EC2 says so for a volume that was never modified
        if is_transient(exc):
            raise  # a wait retries it
        raise SaltCloudSystemExit(aws_error_message(exc)) from exc
    modifications = sorted(found["VolumesModifications"], key=lambda m: m.get("StartTime") or 0)
    return modification_summary(modifications[-1]) if modifications else None


def _await_modification(client, volume_id, timeout):
    def settled():
        modification = _latest_modification(client, volume_id) or {}
        state = modification.get("state")
        if state == "failed":
            raise SaltCloudSystemExit(
                f"EC2 failed to modify {volume_id}: {modification.get('status_message')}"
            )
        return state if state in ("optimizing", "completed") else None

    return _poll(settled, timeout, f"{volume_id} to grow")


def _node_setting(key):
    """A provider setting for actions and destroy (they have no profile)."""
    provider = _provider_config()
    value = provider.get(key, SETTING_DEFAULTS[key])
    return positive_number(value, key)


# =========================================================================== configuration


def node_settings(vm_, provider=None):
    """Validate a VM's merged config and return what create needs, or raise naming the key."""
    provider = provider or {}
    check_provider_only_keys(vm_, provider)
    check_unknown_keys(vm_)
    name = check_node_name(vm_.get("name"), "name")
    check_node_name(minion_id_of(vm_), "minion.id")
    node_class = _required_str(vm_, "class", "node class: use a class profile")
    if not RULES["class"].match(node_class):
        raise SaltCloudConfigError(
            f"'class' {node_class!r} must be letters, digits, '.', '_' or '-'"
        )
    volume = docker_volume_mapping(docker_volume_setting(vm_))
    settings = {
        "name": name,
        "class": node_class,
        "image": check_image_id(_required_str(vm_, "image", "AMI id")),
        "size": _required_str(vm_, "size", "instance type"),
        "keyname": _optional_str(vm_, "keyname"),
        "securitygroup": name_list(vm_.get("securitygroup"), "securitygroup"),
        "securitygroupid": name_list(vm_.get("securitygroupid"), "securitygroupid"),
        "subnetid": _optional_str(vm_, "subnetid"),
        "availability_zone": _optional_str(vm_, "availability_zone"),
        "iam_profile": iam_profile_spec(vm_.get("iam_profile")),
        "ebs_optimized": vm_.get("ebs_optimized", SETTING_DEFAULTS["ebs_optimized"]),
        "userdata": user_data(vm_),
        "private_key": expand_user(_optional_str(vm_, "private_key")),
        "block_device_mappings": block_device_mappings(vm_.get("block_device_mappings"), volume),
        "docker_device": volume["DeviceName"],
        "tags": node_tags(name, node_class, vm_.get("tag")),
        "metadata_options": metadata_options(vm_.get("metadata_options")),
        "spot": spot_options(vm_.get("spot")),
    }
    settings.update(plain_settings(vm_))
    check_combinations(settings)
    return settings


def plain_settings(vm_):
    """ssh_interface, termination_protection and the timeouts, checked."""
    ssh_interface = vm_.get("ssh_interface", SETTING_DEFAULTS["ssh_interface"])
    if ssh_interface not in SSH_INTERFACES:
        raise SaltCloudConfigError(
            f"'ssh_interface' must be one of {list(SSH_INTERFACES)}, got {ssh_interface!r}"
        )
    protection = vm_.get("termination_protection", SETTING_DEFAULTS["termination_protection"])
    if not isinstance(protection, bool):
        raise SaltCloudConfigError(
            f"'termination_protection' must be true or false, got {protection!r}"
        )
    return {
        "ssh_interface": ssh_interface,
        "termination_protection": protection,
        **{
            key: positive_number(vm_.get(key, SETTING_DEFAULTS[key]), key)
            for key in ("instance_wait_timeout", "cleanup_timeout")
        },
    }


def check_combinations(settings):
    """Rules that span keys."""
    if settings["spot"] and settings["termination_protection"]:
        raise SaltCloudConfigError(
            "'termination_protection' cannot be set on a spot instance ('spot'): EC2 refuses it"
        )


def connection_settings(settings):
    """Region, endpoint, credentials and retry settings from a provider config."""
    conn = {}
    for key in CONNECTION_KEYS:
        value = settings.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise SaltCloudConfigError(f"'{key}' must be a non-empty string, got {value!r}")
        conn[key] = value
    if bool(conn["id"]) != bool(conn["key"]):
        raise SaltCloudConfigError("'id' and 'key' go together: set both or neither")
    if conn["endpoint_url"] and urlparse(conn["endpoint_url"]).scheme not in ("http", "https"):
        raise SaltCloudConfigError(
            f"'endpoint_url' must be an http(s) URL, got {conn['endpoint_url']!r}"
        )
    conn["retry_mode"] = settings.get("retry_mode", SETTING_DEFAULTS["retry_mode"])
    if conn["retry_mode"] not in RETRY_MODES:
        raise SaltCloudConfigError(
            f"'retry_mode' must be one of {list(RETRY_MODES)}, got {conn['retry_mode']!r}"
        )
    attempts = settings.get("max_attempts", SETTING_DEFAULTS["max_attempts"])
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 20:
        raise SaltCloudConfigError(f"'max_attempts' must be an integer 1-20, got {attempts!r}")
    conn["max_attempts"] = attempts
    return conn


def check_provider_only_keys(vm_, provider):
    for key in PROVIDER_ONLY_KEYS:
        if key in vm_ and vm_[key] != provider.get(key):
            raise SaltCloudConfigError(
                f"'{key}' is a provider setting (one region, account and retry policy per "
                "provider, so that -Q and -d see every node): set it in the provider, not in "
                "a profile"
            )


# salt-cloud's own keys that look like this driver's (so not typos of them).
SALT_CLOUD_KEYS = ("script", "script_args", "ssh_username", "ssh_port", "size", "image")


def check_unknown_keys(vm_):
    """A key that is not ours but nearly is, is a typo of ours (salt-cloud's own keys and
    any other key pass: salt-cloud has no list of them)."""
    for key in vm_:
        if not isinstance(key, str) or key in DRIVER_KEYS or key in SALT_CLOUD_KEYS:
            continue
        close = difflib.get_close_matches(key, DRIVER_KEYS, n=1, cutoff=0.85)
        if close:
            raise SaltCloudConfigError(f"unknown key '{key}': did you mean '{close[0]}'?")


def check_node_name(name, key):
    """A node name (and minion id) must be safe as a minion id and as a file name."""
    if not isinstance(name, str) or not name:
        raise SaltCloudConfigError(f"'{key}' must be a non-empty string, got {name!r}")
    problem = None
    if len(name.encode("utf-8")) > RULES["node_name_bytes"]:
        problem = f"is longer than {RULES['node_name_bytes']} bytes"
    elif any(char.isspace() or unicodedata.category(char) in ("Cc", "Cf") for char in name):
        problem = "contains whitespace or control characters"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif name.startswith((".", "-")):
        problem = "starts with '.' or '-'"
    if problem:
        raise SaltCloudConfigError(
            f"'{key}' {shorten(name)!r} {problem}: a node name is a minion id and a file "
            "name on the master"
        )
    return name


def check_image_id(image):
    if not image.startswith("ami-"):
        raise SaltCloudConfigError(f"'image' must be an AMI id (ami-...), got {image!r}")
    return image


def docker_volume_setting(vm_):
    """`docker_volume`, or its deprecated alias `docker_disk`."""
    if "docker_disk" in vm_ and "docker_volume" in vm_:
        raise SaltCloudConfigError(
            "both 'docker_volume' and its deprecated alias 'docker_disk' are set (perhaps "
            "through extends): keep 'docker_volume'"
        )
    if "docker_disk" in vm_:
        log.warning("Profile key 'docker_disk' is deprecated: rename it to 'docker_volume'")
        return vm_["docker_disk"], "docker_disk"
    return vm_.get("docker_volume"), "docker_volume"


def docker_volume_mapping(setting):
    """The Docker volume's block device mapping: the profile's over the defaults."""
    value, key = setting if isinstance(setting, tuple) else (setting, "docker_volume")
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SaltCloudConfigError(f"'{key}' must be a mapping, got {value!r}")
    mapping = deep_merge(DOCKER_VOLUME_DEFAULTS, value)
    if set(mapping) - {"DeviceName", "Ebs"}:
        extra = sorted(set(mapping) - {"DeviceName", "Ebs"})
        raise SaltCloudConfigError(f"'{key}' takes only DeviceName and Ebs, not {extra}")
    device = mapping["DeviceName"]
    if not isinstance(device, str) or not RULES["docker_device_name"].match(device):
        raise SaltCloudConfigError(
            f"'{key}.DeviceName' {device!r} is not a data volume name: use /dev/sdb../dev/sdz "
            "or /dev/xvdb../dev/xvdz (sda/xvda are root devices)"
        )
    if not isinstance(mapping["Ebs"], dict):
        raise SaltCloudConfigError(f"'{key}.Ebs' must be a mapping, got {mapping['Ebs']!r}")
    mapping["origin"] = key
    return mapping


def block_device_mappings(extra_mappings, volume):
    """The profile's block_device_mappings plus the Docker volume, device names unique."""
    if extra_mappings is None:
        extra_mappings = []
    if not isinstance(extra_mappings, list):
        raise SaltCloudConfigError(
            f"'block_device_mappings' must be a list of boto3 mappings, got {extra_mappings!r}"
        )
    seen = {}
    for index, mapping in enumerate(extra_mappings):
        key = f"block_device_mappings[{index}]"
        if not isinstance(mapping, dict):
            raise SaltCloudConfigError(f"'{key}' must be a mapping, got {mapping!r}")
        device = mapping.get("DeviceName")
        if not isinstance(device, str) or not RULES["device_name"].match(device):
            raise SaltCloudConfigError(
                f"'{key}.DeviceName' {device!r} is not an EC2 device name (e.g. /dev/sdc)"
            )
        if device in seen:
            raise SaltCloudConfigError(
                f"'block_device_mappings' names {device} twice (entries {seen[device]} and {index})"
            )
        seen[device] = index
    if volume["DeviceName"] in seen:
        raise SaltCloudConfigError(
            f"'block_device_mappings[{seen[volume['DeviceName']]}]' uses "
            f"{volume['DeviceName']}, which is the Docker volume "
            f"('{volume['origin']}.DeviceName'): pick another device name"
        )
    return [copy.deepcopy(mapping) for mapping in extra_mappings] + [volume]


def node_tags(name, node_class, extra_tags):
    """Tags for the instance and its volumes, as a boto3 tag list (the driver's first)."""
    if extra_tags is None:
        extra_tags = {}
    if not isinstance(extra_tags, dict):
        raise SaltCloudConfigError(f"'tag' must map tag names to values, got {extra_tags!r}")
    tags = {"Name": name, "class": node_class, "container": "docker"}
    for key, value in extra_tags.items():
        if key in RESERVED_TAGS:
            raise SaltCloudConfigError(
                f"'tag.{key}' is set by the driver ({', '.join(RESERVED_TAGS)}): remove it"
            )
        if not isinstance(key, str) or isinstance(value, (dict, list)) or value is None:
            raise SaltCloudConfigError(f"'tag.{key}' must map a name to a plain value")
        # YAML `true` would become "True"; AWS tag values are conventionally lower case.
        tags[key] = str(value).lower() if isinstance(value, bool) else str(value)
    check_tags(tags)
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def check_tags(tags):
    """EC2's tag rules: count, key and value length, no aws: prefix."""
    limit = RULES["tags_per_resource"] - 1  # the driver adds docker_volume_device
    if len(tags) > limit:
        raise SaltCloudConfigError(
            f"'tag' makes {len(tags)} tags with the driver's (Name, class, container): EC2 "
            f"allows {RULES['tags_per_resource']} per resource, the driver needs one more"
        )
    key_min, key_max = RULES["tag_key_length"]
    value_max = RULES["tag_value_length"][1]
    for key, value in tags.items():
        where = "name" if key == "Name" else f"tag.{key}"
        if not key_min <= len(key) <= key_max:
            raise SaltCloudConfigError(f"'{where}': tag keys are {key_min}-{key_max} characters")
        if key.lower().startswith(RULES["tag_reserved_prefix"]):
            raise SaltCloudConfigError(f"'{where}': tag keys starting with 'aws:' are AWS's")
        if len(value) > value_max:
            raise SaltCloudConfigError(
                f"'{where}': tag values are at most {value_max} characters, got {len(value)}"
            )


def iam_profile_spec(value):
    if value is None:
        return None
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
    hops = merged.get("HttpPutResponseHopLimit")
    low, high = RULES["hop_limit"]
    if isinstance(hops, int) and not isinstance(hops, bool) and not low <= hops <= high:
        raise SaltCloudConfigError(
            f"'metadata_options.HttpPutResponseHopLimit' must be {low}-{high}, got {hops}"
        )
    return merged


def spot_options(value):
    """`spot: {max_price, interruption_behavior}` as boto3 InstanceMarketOptions."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise SaltCloudConfigError(f"'spot' must be a mapping, got {value!r}")
    for key in value:
        if key not in SPOT_KEYS:
            hint = difflib.get_close_matches(str(key), SPOT_KEYS, n=1)
            raise SaltCloudConfigError(
                f"unknown key 'spot.{key}' (known: {', '.join(SPOT_KEYS)})"
                + (f": did you mean 'spot.{hint[0]}'?" if hint else "")
            )
    behavior = value.get("interruption_behavior", "terminate")
    options = {
        "InstanceInterruptionBehavior": behavior,
        "SpotInstanceType": SPOT_REQUEST_TYPE.get(behavior, "one-time"),
    }
    if value.get("max_price") is not None:
        options["MaxPrice"] = spot_price(value["max_price"])
    return {"MarketType": "spot", "SpotOptions": options}


def spot_price(price):
    text = str(price) if isinstance(price, (int, float)) and not isinstance(price, bool) else price
    if not isinstance(text, str) or not RULES["price"].match(text) or float(text) <= 0:
        raise SaltCloudConfigError(
            f"'spot.max_price' must be a positive price in USD per hour, e.g. '0.05', got {price!r}"
        )
    return text


def user_data(vm_):
    """userdata, or the content of userdata_file; EC2 takes 16 KB."""
    text = _optional_str(vm_, "userdata")
    path = expand_user(_optional_str(vm_, "userdata_file"))
    if text and path:
        raise SaltCloudConfigError("set 'userdata' or 'userdata_file', not both")
    key = "userdata"
    if path:
        key = "userdata_file"
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise SaltCloudConfigError(f"'userdata_file' {path!r}: {reason}") from exc
    if text and len(text.encode("utf-8")) > RULES["user_data_bytes"]:
        raise SaltCloudConfigError(
            f"'{key}' is {len(text.encode('utf-8'))} bytes: EC2 takes at most "
            f"{RULES['user_data_bytes']} (before base64)"
        )
    return text


def name_list(value, key):
    """A config value given as one string or a list of strings, as a list."""
    if value is None:
        return []
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) and item for item in value):
        return list(value)
    raise SaltCloudConfigError(f"'{key}' must be a string or a list of strings, got {value!r}")


def positive_number(value, key):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SaltCloudConfigError(f"'{key}' must be a positive number of seconds, got {value!r}")
    return value


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


def expand_user(path):
    return os.path.expanduser(path) if path else path


def grow_size_argument(kwargs):
    """The size= argument of grow_docker_disk, in GiB."""
    kwargs = dict(kwargs or {})
    unknown = sorted(set(kwargs) - {"size"})
    if unknown:
        raise SaltCloudSystemExit(f"grow_docker_disk takes only size=<GiB>, not {unknown}")
    raw = kwargs.get("size")
    try:
        size = int(str(raw))
    except ValueError:
        size = None
    if size is None or size <= 0:
        raise SaltCloudSystemExit(
            f"grow_docker_disk needs size=<GiB> (a whole number), got {raw!r}"
        )
    return size


def check_growth(volume, size):
    """The volume's current size; refuse shrinking and sizes past the type's maximum."""
    current, volume_type = volume["Size"], volume.get("VolumeType")
    if size < current:
        raise SaltCloudSystemExit(
            f"{volume['VolumeId']} is {current} GiB: EBS volumes cannot shrink (asked {size})"
        )
    rule = RULES["ebs"].get(volume_type)
    if rule and size > rule["size"][1]:
        raise SaltCloudSystemExit(
            f"{volume_type} volumes hold at most {rule['size'][1]} GiB (asked {size})"
        )
    return current


# --------------------------------------------------------------------------- the request


# Where each part of the RunInstances request comes from: request path -> profile key.
REQUEST_ORIGINS = {
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


def run_instances_request(settings, client_token):
    """boto3 RunInstances arguments for one node, and which profile key each part came from."""
    mappings = [
        {key: value for key, value in mapping.items() if key != "origin"}
        for mapping in settings["block_device_mappings"]
    ]
    instance_tags = [
        *settings["tags"],
        {"Key": DOCKER_DEVICE_TAG, "Value": settings["docker_device"]},
    ]
    request = {
        "ImageId": settings["image"],
        "InstanceType": settings["size"],
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": client_token,
        "BlockDeviceMappings": mappings,
        "MetadataOptions": settings["metadata_options"],
        "EbsOptimized": settings["ebs_optimized"],
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": instance_tags},
            {"ResourceType": "volume", "Tags": settings["tags"]},
        ],
        "KeyName": settings["keyname"],
        "SecurityGroupIds": settings["securitygroupid"],
        "SubnetId": settings["subnetid"],
        "IamInstanceProfile": settings["iam_profile"],
        "UserData": settings["userdata"],
        "InstanceMarketOptions": settings["spot"],
    }
    if settings["availability_zone"]:
        request["Placement"] = {"AvailabilityZone": settings["availability_zone"]}
    request = {key: value for key, value in request.items() if value not in (None, "", [])}
    return request, request_origins(settings)


def request_origins(settings):
    """REQUEST_ORIGINS plus the block device mappings and tags of these settings."""
    origins = dict(REQUEST_ORIGINS)
    for index, mapping in enumerate(settings["block_device_mappings"]):
        origins[f"BlockDeviceMappings[{index}]"] = mapping.get(
            "origin", f"block_device_mappings[{index}]"
        )
    for spec_index in (0, 1):
        for index, tag in enumerate(settings["tags"]):
            where = "name" if tag["Key"] == "Name" else f"tag.{tag['Key']}"
            origins[f"TagSpecifications[{spec_index}].Tags[{index}]"] = where
    return origins


def with_security_groups(request, group_ids):
    request = dict(request)
    if group_ids:
        request["SecurityGroupIds"] = list(group_ids)
    return request


def validate_request(service_model, request, origins):
    """Check the request against botocore's EC2 service model, then the value rules the model
    does not carry; raise naming the profile key of every problem found."""
    shape = service_model.operation_model("RunInstances").input_shape
    report = botocore.validate.ParamValidator().validate(request, shape)
    problems = [botocore_problem(error) for error in getattr(report, "_errors", [])]
    if report.has_errors() and not problems:  # botocore changed its report: keep its text
        problems = [("", line) for line in report.generate_report().splitlines()]
    problems += model_value_problems(request, shape)
    if not problems:
        problems = [(path, text) for path, text in value_rule_problems(request)]
    if problems:
        raise SaltCloudConfigError(
            "; ".join(f"'{profile_key(path, origins)}' {text}" for path, text in problems)
        )


def botocore_problem(error):
    """(request path, text) from one botocore validation error tuple."""
    kind, path, details = error
    path = path.lstrip(".")
    if kind == "unknown field":
        unknown, valid = details["unknown_param"], details["valid_names"]
        hint = difflib.get_close_matches(unknown, valid, n=1)
        suffix = f": did you mean {hint[0]}?" if hint else f" (known: {', '.join(valid)})"
        return (f"{path}.{unknown}" if path else unknown, f"is not a known setting{suffix}")
    if kind == "missing required field":
        name = details["required_name"]
        return (f"{path}.{name}" if path else name, "is required")
    if kind == "invalid type":
        wanted = ", ".join(t.split("'")[1] if "'" in t else t for t in details["valid_types"])
        return (path, f"has the wrong type ({details['param']!r}; wanted {wanted})")
    if kind in ("invalid range", "invalid length"):
        return (path, f"is too small ({details['param']!r}; at least {details['min_allowed']})")
    return (path, f"is invalid ({kind})")


def model_value_problems(value, shape, path=""):
    """What botocore's validator does not check but its model says: enums, a boolean where a
    number belongs, max ranges."""
    if shape.type_name == "structure" and isinstance(value, dict):
        return [
            problem
            for key, item in value.items()
            if key in shape.members
            for problem in model_value_problems(
                item, shape.members[key], f"{path}.{key}" if path else key
            )
        ]
    if shape.type_name == "list" and isinstance(value, list):
        return [
            problem
            for index, item in enumerate(value)
            for problem in model_value_problems(item, shape.member, f"{path}[{index}]")
        ]
    problem = scalar_problem(value, shape)
    return [(path, problem)] if problem else []


def scalar_problem(value, shape):
    if shape.type_name == "string" and shape.enum and isinstance(value, str):
        return enum_problem(value, shape)
    if shape.type_name not in ("integer", "long"):
        return None
    if isinstance(value, bool):
        return f"must be a number, got {value!r}"
    high = shape.metadata.get("max")
    if isinstance(value, int) and high is not None and value > high:
        return f"must be at most {high}, got {value}"
    return None


def enum_problem(value, shape):
    if value in shape.enum or shape.name in LIVE_CHECKED_ENUMS:
        return None
    hint = difflib.get_close_matches(value, shape.enum, n=3)
    if len(shape.enum) > 12:
        close = f" (close: {', '.join(hint)})" if hint else ""
        return f"{value!r} is not one of botocore's {len(shape.enum)} values{close}"
    suggestion = f" (did you mean {hint[0]}?)" if hint else ""
    return f"must be one of {shape.enum}, got {value!r}{suggestion}"


def value_rule_problems(request):
    """The RULES table applied to a model-valid request: EBS ranges per volume type."""
    problems = []
    for index, mapping in enumerate(request.get("BlockDeviceMappings", [])):
        ebs = mapping.get("Ebs")
        if isinstance(ebs, dict):
            path = f"BlockDeviceMappings[{index}].Ebs"
            problems += [(f"{path}.{field}", text) for field, text in ebs_problems(ebs)]
    return problems


def ebs_problems(ebs):
    """(field, text) for EBS values out of their volume type's range."""
    volume_type = ebs.get("VolumeType")
    rule = RULES["ebs"].get(volume_type)
    if rule is None:
        return []  # EC2's default type, or one newer than this table: EC2 decides
    problems = []
    size, iops = ebs.get("VolumeSize"), ebs.get("Iops")
    if size is not None and not rule["size"][0] <= size <= rule["size"][1]:
        problems.append(
            (
                "VolumeSize",
                f"{size} GiB is out of range for {volume_type} "
                f"({rule['size'][0]}-{rule['size'][1]} GiB)",
            )
        )
    problems += iops_problems(volume_type, rule, iops, size)
    problems += throughput_problems(volume_type, rule, ebs.get("Throughput"), iops)
    if ebs.get("KmsKeyId") and ebs.get("Encrypted") is False:
        problems.append(("KmsKeyId", "needs Encrypted: true"))
    return problems


def iops_problems(volume_type, rule, iops, size):
    if "iops" not in rule:
        return [("Iops", f"is not settable for {volume_type} (only gp3, io1, io2)")] if iops else []
    if iops is None:
        return [] if volume_type == "gp3" else [("Iops", f"is required for {volume_type}")]
    low, high = rule["iops"]
    if not low <= iops <= high:
        return [("Iops", f"{iops} is out of range for {volume_type} ({low}-{high})")]
    baseline = RULES["gp3_baseline_iops"] if volume_type == "gp3" else 0
    if size and iops > baseline and iops > rule["iops_per_gib"] * size:
        return [("Iops", f"{iops} is more than {rule['iops_per_gib']} per GiB of {size} GiB")]
    return []


def throughput_problems(volume_type, rule, throughput, iops):
    if throughput is None:
        return []
    if "throughput" not in rule:
        return [("Throughput", f"is only settable for gp3, not {volume_type}")]
    low, high = rule["throughput"]
    if not low <= throughput <= high:
        return [("Throughput", f"{throughput} MiB/s is out of range for gp3 ({low}-{high})")]
    iops = iops or RULES["gp3_baseline_iops"]
    most = iops * RULES["gp3_throughput_per_iops"]
    if throughput > max(most, low):
        return [
            (
                "Throughput",
                f"{throughput} MiB/s needs at least {int(throughput * 4)} Iops "
                f"(gp3 gives 0.25 MiB/s per IOPS; Iops is {iops})",
            )
        ]
    return []


def profile_key(path, origins):
    """The profile key a request path came from: BlockDeviceMappings[1].Ebs.Iops ->
    docker_volume.Ebs.Iops."""
    best = ""
    for prefix in origins:
        if (path == prefix or path.startswith((prefix + ".", prefix + "["))) and len(prefix) > len(
            best
        ):
            best = prefix
    if not best:
        return path
    return origins[best] + path[len(best) :]


# =========================================================================== EC2 plumbing


class _StillUnreachable(Exception):
    """EC2 kept failing transiently (throttling, 5xx, lost connections) until a deadline."""


def _provider_config():
    provider = get_configured_provider()
    if provider is False:
        raise SaltCloudSystemExit("no boto3_ec2 provider is configured")
    return provider


def _vm_provider_config(vm_):
    # vm_["provider"] is "<alias>:boto3_ec2" for -p, -m and the cloud client alike.
    alias, _, driver = str(vm_.get("provider") or _get_active_provider_name()).partition(":")
    provider = __opts__["providers"].get(alias, {}).get(driver or __virtualname__)
    if provider is None:
        raise SaltCloudSystemExit(f"provider {vm_.get('provider')!r} is not configured")
    return provider


def _provider_client():
    return _client(connection_settings(_provider_config()))


def _client(conn, fresh=False):
    """A boto3 EC2 client, one per process and connection settings (fresh: a new one).

    The botocore session (with the EC2 service model loaded, the slow part) is kept per
    connection settings and shared with forked workers; clients, which hold connections,
    are never shared across processes.
    """
    key = tuple(conn.get(name) for name in (*CONNECTION_KEYS, "retry_mode", "max_attempts"))
    client_key = (os.getpid(), key)
    if fresh or client_key not in _PROCESS.clients:
        session = _PROCESS.sessions.get(key)
        if session is None:
            session = boto3.session.Session(
                aws_access_key_id=conn.get("id"),
                aws_secret_access_key=conn.get("key"),
                profile_name=conn.get("aws_profile"),
                region_name=conn.get("location"),
            )
            _PROCESS.sessions[key] = session
        # total_max_attempts counts the first attempt (botocore's max_attempts does not).
        retries = {"mode": conn["retry_mode"], "total_max_attempts": conn["max_attempts"]}
        _PROCESS.clients[client_key] = session.client(
            "ec2",
            endpoint_url=conn.get("endpoint_url"),
            config=botocore.config.Config(retries=retries),
        )
    return _PROCESS.clients[client_key]


def _call(what, function, **kwargs):
    try:
        return function(**kwargs)
    except AWS_ERRORS as exc:
        raise SaltCloudSystemExit(f"{what}: {aws_error_message(exc)}") from exc


def _paginate(client, operation, key, **kwargs):
    items = []
    try:
        for page in client.get_paginator(operation).paginate(**kwargs):
            items.extend(page[key])
    except AWS_ERRORS as exc:
        raise SaltCloudSystemExit(f"{operation}: {aws_error_message(exc)}") from exc
    return items


def _poll(check, timeout, what, not_found_is_pending=False):
    """check() until it returns something; transient EC2 errors only delay it.

    The first check runs at once, then after POLL_DELAYS.  Raises _StillUnreachable when
    the deadline passes while EC2 keeps failing, SaltCloudSystemExit when it passes while
    EC2 answers but the condition does not hold.
    """
    deadline = time.monotonic() + timeout
    last_error = None
    for attempt in range(sys.maxsize):
        try:
            result = check()
            last_error = None
            if result is not None:
                return result
        except AWS_ERRORS as exc:
            if not (is_transient(exc) or (not_found_is_pending and is_not_found(exc))):
                raise SaltCloudSystemExit(f"waiting for {what}: {aws_error_message(exc)}") from exc
            last_error = exc
            log.debug("Waiting for %s: %s", what, aws_error_message(exc))
        delay = POLL_DELAYS[min(attempt, len(POLL_DELAYS) - 1)] * random.uniform(0.8, 1.2)
        if time.monotonic() + delay > deadline:
            break
        time.sleep(delay)
    if last_error is not None:
        raise _StillUnreachable(aws_error_message(last_error))
    raise SaltCloudSystemExit(f"gave up waiting for {what} after {timeout} s")


def _run_together(checks):
    """Run independent EC2 reads at once; raise one error naming every failed key."""
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        futures = {key: pool.submit(check) for key, check in checks.items()}
    results, errors = {}, []
    for key, future in futures.items():
        try:
            results[key] = future.result()
        except (SaltCloudSystemExit, SaltCloudConfigError) as exc:
            errors.append(exc)
    if errors:
        kind = (
            SaltCloudConfigError
            if all(isinstance(e, SaltCloudConfigError) for e in errors)
            else SaltCloudSystemExit
        )
        raise kind("; ".join(str(error) for error in errors))
    return results


def describe_instances(client, filters=None, live=True):
    """Instances matching filters (live ones only unless live=False), all pages."""
    filters = list(filters or [])
    if live:
        filters.append({"Name": "instance-state-name", "Values": list(LIVE_STATES)})
    pages = _paginate_raw(client, "describe_instances", Filters=filters)
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def _paginate_raw(client, operation, **kwargs):
    """Pages without error translation: the caller decides what an error means."""
    return list(client.get_paginator(operation).paginate(**kwargs))


def _instances_named(client, names, translate=True):
    """Live instances of these names (translate=False: botocore's errors as they are)."""
    names = [names] if isinstance(names, str) else list(names)
    found = []
    for start_at in range(0, len(names), ID_BATCH):
        batch = names[start_at : start_at + ID_BATCH]
        try:
            found += describe_instances(client, [{"Name": "tag:Name", "Values": batch}])
        except AWS_ERRORS as exc:
            if not translate:
                raise
            raise SaltCloudSystemExit(f"listing instances: {aws_error_message(exc)}") from exc
    return found


def _describe_instance(client, instance_id):
    """The instance, or None while EC2 does not know it yet (eventual consistency)."""
    found = describe_instances(client, [{"Name": "instance-id", "Values": [instance_id]}], False)
    return found[0] if found else None


def _terminate_with_retries(client, ids, deadline):
    """TerminateInstances until EC2 accepts it; back off on transient errors."""

    def terminate():
        client.terminate_instances(InstanceIds=ids)
        return True

    # NotFound: EC2 may not list an instance it launched a moment ago yet.
    _poll(
        terminate,
        max(deadline - time.monotonic(), 1),
        f"EC2 to terminate {', '.join(ids)}",
        not_found_is_pending=True,
    )


def _terminated_within(client, ids, deadline):
    """Wait once for all ids to be terminated; False if the deadline passes first."""

    def all_terminated():
        pending = []
        for start_at in range(0, len(ids), ID_BATCH):
            batch = ids[start_at : start_at + ID_BATCH]
            found = describe_instances(client, [{"Name": "instance-id", "Values": batch}], False)
            pending += [i for i in found if i["State"]["Name"] != "terminated"]
        return True if not pending else None

    try:
        return _poll(all_terminated, max(deadline - time.monotonic(), 1), "termination")
    except (SaltCloudSystemExit, _StillUnreachable) as exc:
        log.warning("Termination of %s not confirmed: %s", ", ".join(ids), exc)
        return False


def _check_image(client, image):
    images = _call(
        f"'image' {image}",
        client.describe_images,
        Filters=[{"Name": "image-id", "Values": [image]}],
    )["Images"]
    if not images or images[0].get("State") not in (None, "available"):
        raise SaltCloudSystemExit(f"'image' {image}: no such AMI available in this region")


def _check_instance_type(client, size):
    _call(f"'size' {size}", client.describe_instance_types, InstanceTypes=[size])


def _check_key_pair(client, keyname):
    if keyname:
        _call(f"'keyname' {keyname}", client.describe_key_pairs, KeyNames=[keyname])


def _security_group_ids(client, settings):
    """Security group ids: the ids as given plus the names resolved in the node's VPC; the
    subnet's zone checked against availability_zone on the way."""
    ids = list(settings["securitygroupid"])
    vpc_id = _subnet_vpc(client, settings)
    names = settings["securitygroup"]
    if not names:
        return ids
    if vpc_id is None:
        vpc_id = _default_vpc(client)
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


def _subnet_vpc(client, settings):
    """The subnet's VPC (None without a subnet); its zone must be availability_zone."""
    if not settings["subnetid"]:
        return None
    subnet = _call(
        f"'subnetid' {settings['subnetid']}",
        client.describe_subnets,
        SubnetIds=[settings["subnetid"]],
    )["Subnets"][0]
    zone = settings["availability_zone"]
    if zone and subnet["AvailabilityZone"] != zone:
        raise SaltCloudConfigError(
            f"'availability_zone' {zone} does not hold 'subnetid' {settings['subnetid']} "
            f"(it is in {subnet['AvailabilityZone']}): set one of them, or both alike"
        )
    return subnet["VpcId"]


def _default_vpc(client):
    vpcs = _call(
        "finding the default VPC",
        client.describe_vpcs,
        Filters=[{"Name": "isDefault", "Values": ["true"]}],
    )["Vpcs"]
    if not vpcs:
        raise SaltCloudConfigError(
            "'securitygroup' names need a VPC: set 'subnetid' (this region has no default VPC)"
        )
    return vpcs[0]["VpcId"]


def _profile_images():
    """AMI ids the profiles of this provider launch."""
    alias = (_get_active_provider_name() or "").split(":")[0]
    images = set()
    for profile in __opts__.get("profiles", {}).values():
        if str(profile.get("provider", "")).split(":")[0] == alias and profile.get("image"):
            images.add(profile["image"])
    return sorted(images)


def is_transient(exc):
    """botocore's own view: would its standard retry mode retry this error?  (Plus an answer
    that is not EC2's XML, e.g. a proxy's HTML error page: botocore says retries may help.)"""
    if isinstance(exc, botocore.parsers.ResponseParserError):
        return True
    response = getattr(exc, "response", None)
    status = (response or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    context = botocore.retries.standard.RetryContext(
        attempt_number=1,
        parsed_response=response,
        http_response=types.SimpleNamespace(status_code=status) if status else None,
        caught_exception=None if response else exc,
    )
    checkers = (
        botocore.retries.standard.TransientRetryableChecker(),
        botocore.retries.standard.ThrottledRetryableChecker(),
    )
    return any(checker.is_retryable(context) for checker in checkers)


def is_not_found(exc):
    code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code", "")
    return code.endswith(".NotFound")


# =========================================================================== the master's files


def _lock_dir():
    """Where per-name create locks live: next to the master's keys, so every salt-cloud run
    that accepts keys into this master shares them (the cloud cachedir if there is no pki)."""
    path = os.path.join(__opts__.get("pki_dir") or __opts__["cachedir"], "boto3_ec2_locks")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@contextlib.contextmanager
def _name_lock(job):
    """Hold the per-name lock from the name check until the launch is settled."""
    path = os.path.join(_lock_dir(), f"{job.name}.lock")
    with open(path, "a+", encoding="utf-8") as handle:
        deadline = time.monotonic() + job.settings["instance_wait_timeout"]
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SaltCloudSystemExit(
                        f"another salt-cloud has been creating {job.name!r} for too long "
                        f"(lock {path})"
                    ) from None
                if not waited:
                    log.warning("Waiting for another salt-cloud creating %s", job.name)
                    waited = True
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _keep_accepted_key(job):
    """Make the master hold this create's key, and keep a copy.

    A concurrent create of the same name (it loses the lock) has salt-cloud accept its own
    key on its way in, over this one: the winner accepts its key again once it owns the
    name, and the loser puts the copy back if it overwrote it later.
    """
    pub_key = job.vm.get("pub_key")
    if not (pub_key and job.settings["deploy"] and __opts__.get("pki_dir")):
        return
    _write_atomic(os.path.join(_lock_dir(), f"{job.name}.pub"), pub_key)
    minions = os.path.join(__opts__["pki_dir"], "minions")
    os.makedirs(minions, exist_ok=True)
    _write_atomic(os.path.join(minions, job.minion_id), pub_key)


def _forget_accepted_key(job):
    """Remove the minion key salt-cloud accepted on the master for this create, if it is
    still the one generated for this run (salt-cloud accepts it before calling create).

    When the name belongs to another create (this one found it taken), put back the key
    that create accepted, which salt-cloud overwrote on its way to this one.
    """
    vm_ = job.vm
    pub_key = vm_.get("pub_key")
    if not pub_key or not __opts__.get("pki_dir"):
        return
    key_path = os.path.join(__opts__["pki_dir"], "minions", job.minion_id or _minion_id(vm_))
    try:
        with open(key_path, encoding="utf-8") as handle:
            if handle.read().strip() != pub_key.strip():
                return
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return
    winner = os.path.join(_lock_dir(), f"{vm_.get('name')}.pub") if job.lost_lock_race else None
    if winner and os.path.isfile(winner):
        with open(winner, encoding="utf-8") as handle:
            _write_atomic(key_path, handle.read())
        log.info("Restored the minion key of the existing %s", vm_.get("name"))
        return
    os.remove(key_path)
    log.info("Removed the minion key accepted for %s", vm_.get("name"))


def _minion_id(vm_):
    """The minion id salt-cloud accepts a key for (as in salt.cloud.Cloud.create)."""
    minion = config.get_cloud_config_value("minion", vm_, __opts__, default={}) or {}
    return minion_id_of({**vm_, "minion": minion})


def _write_node_class(minion_id, node_class):
    """The node record (lifecycle's dockerhosts_nodes): class and key, before the deploy."""
    key = __utils__["dockerhosts_nodes.key_fingerprint"](__opts__, minion_id)
    fields = {"class": node_class, "key": key, "source": "salt-cloud", "state": "launched"}
    __utils__["dockerhosts_nodes.forget"](__opts__, minion_id)
    __utils__["dockerhosts_nodes.update"](__opts__, minion_id, **fields)


def _remove_node_class(minion_id):
    __utils__["dockerhosts_nodes.forget"](__opts__, minion_id)


def _before_destroy(names):
    """The master's side of a destroy, once per batch (lifecycle's node.before_destroy)."""
    import salt.loader  # noqa: PLC0415

    master_conf = os.path.join(os.path.dirname(os.path.abspath(__opts__["conf_file"])), "master")
    master = config.master_config(master_conf)
    runners = salt.loader.runner(master, utils=salt.loader.utils(master))
    ret = runners["node.before_destroy"](names)
    if ret.get("retcode"):
        raise SaltCloudSystemExit(f"node.before_destroy: {ret.get('comment')}")


def _write_atomic(path, text):
    """A file written in full or not at all (temp file in the same directory, renamed)."""
    directory = os.path.dirname(path)
    handle, temp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise


def _run_id():
    """The salt-cloud run this process belongs to: its main process's pid and start time."""
    parent = multiprocessing.parent_process()
    pid = parent.pid if parent is not None else os.getpid()
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            started = stat.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        started = "0"
    return f"{pid}-{started}"


class _SharedResults:
    """Destroy results of one run, shared by its processes through a file."""

    def __init__(self, path):
        self.path = path

    def read(self):
        try:
            with open(self.path, encoding="utf-8") as handle:
                return json.load(handle)
        except (FileNotFoundError, ValueError):
            return {}

    def write(self, results):
        _write_atomic(self.path, json.dumps(results))


@contextlib.contextmanager
def _batch_lock(key):
    """One process of a run destroys a batch; the others wait for it and read its results."""
    directory = os.path.join(__opts__["cachedir"], "boto3_ec2_destroy")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    _remove_old_files(directory, max_age=3600)
    base = os.path.join(directory, "-".join(part or "default" for part in key))
    with open(f"{base}.lock", "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield _SharedResults(f"{base}.json")
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_old_files(directory, max_age):
    now = time.time()
    for entry in os.scandir(directory):
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime > max_age:
                os.remove(entry.path)


# --------------------------------------------------------------------------- events


def _master_listening():
    """False when no salt-master has its event socket here: an event would only wait out
    a 1 s connect timeout and be dropped (salt-cloud run without a master)."""
    if __opts__.get("ipc_mode", "ipc") != "ipc":
        return True
    return os.path.exists(os.path.join(__opts__["sock_dir"], "master_event_pull.ipc"))


def _fire(name, what, suffix, args):
    """Fire salt/cloud/<name>/<suffix> on the master's bus, as salt-cloud's drivers do, over
    one connection per process (a connection per event costs ~0.1 s)."""
    tag = f"salt/cloud/{name}/{suffix}"
    if not _master_listening():
        log.debug("No salt-master listening: not firing %s", tag)
        return
    key = (os.getpid(), __opts__["sock_dir"])
    try:
        if key not in _PROCESS.events:
            _PROCESS.events[key] = salt.utils.event.get_event(
                "master", __opts__["sock_dir"], listen=False
            )
        _PROCESS.events[key].fire_event({**(args or {}), "event": what}, tag)
    except Exception as exc:  # an event is news, not part of the job
        log.warning("Could not fire %s: %s", tag, exc)


def _close_events():
    key = (os.getpid(), __opts__.get("sock_dir"))
    bus = _PROCESS.events.pop(key, None)
    if bus is not None:
        with contextlib.suppress(Exception):
            bus.destroy()


def _fire_vm(vm_, what, suffix):
    args = __utils__["cloud.filter_event"](suffix, vm_, ["name", "profile", "provider", "driver"])
    _fire(vm_["name"], what, suffix, args)


# =========================================================================== signals


class _Interrupted(BaseException):
    """SIGINT or SIGTERM arrived during a create."""

    def __init__(self, signum):
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def _create_signals(job):
    """SIGINT/SIGTERM interrupt the create once (it then cleans up); later signals are noted
    and wait for the clean-up.  In a worker, the parent's death is a SIGTERM too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        job.signals.append(signum)
        if job.interruptible:
            job.interruptible = False
            raise _Interrupted(signum)
        log.warning("%s: signal %s: finishing the clean-up first", job.name, signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    _term_with_parent()
    marker = _worker_marker()
    try:
        yield
    finally:
        if marker:
            with contextlib.suppress(OSError):
                os.remove(marker)
        if not job.signals:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _worker_marker():
    """In a -P worker: a file saying "creating" while this create runs, so that the main
    process, stopping on a signal, waits for this worker's clean-up."""
    guard = _PROCESS.guard
    if guard is None or multiprocessing.parent_process() is None:
        return None
    path = os.path.join(_markers_dir(guard["owner"]), str(os.getpid()))
    with open(path, "w", encoding="ascii"):
        pass
    return path


def _markers_dir(owner):
    path = os.path.join(__opts__["cachedir"], "boto3_ec2_creating", str(owner))
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _term_with_parent():
    """In a salt-cloud worker (-P), get SIGTERM when the main process dies, even by SIGKILL."""
    if multiprocessing.parent_process() is None or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop_if_parent_is_stopping():
    if _PROCESS.guard is not None and _PROCESS.guard.get("stopping"):
        raise SaltCloudSystemExit("salt-cloud is stopping (signal): not starting a create")


def _on_cli_load():
    """When the salt-cloud CLI loads the driver to create nodes: refuse bad node names before
    salt-cloud writes their pre-accepted keys, and with -P make a signal stop every worker's
    create cleanly and end the command non-zero."""
    if multiprocessing.parent_process() is not None:
        return
    if threading.current_thread() is not threading.main_thread():
        return
    _warm_up()
    if not _creating():
        return
    try:
        _check_cli_nodes()
    except SaltCloudConfigError as exc:
        raise SystemExit(f"Error: {exc}; nothing was created") from None
    if __opts__.get("parallel") and _PROCESS.guard is None:
        _install_parallel_guard()


def _check_cli_nodes():
    """`-p <profile> <names>`: each node's config, checked as create will check it, before
    salt-cloud uses it (it generates and pre-accepts each minion's key, under a path made of
    the minion id, before it calls create).  Maps: their names are checked by create."""
    names = [str(name) for name in __opts__.get("names") or ()]
    for name in names:
        check_node_name(name, "name")
    profile = (__opts__.get("profiles") or {}).get(__opts__.get("profile"))
    alias, _, driver = str((profile or {}).get("provider", "")).partition(":")
    if not profile or driver != __virtualname__:
        return
    provider = dict(__opts__["providers"][alias][driver])
    provider.pop("profiles", None)
    main = _main_cloud_config()
    for name in names:
        vm_ = deep_merge(deep_merge(deep_merge(main, provider), profile), {"name": name})
        settings, conn = validated_config(vm_, provider)
        check_node_name(minion_id_of(vm_), "minion.id")
        request, origins = run_instances_request(settings, "validation")
        validate_request(_client(conn).meta.service_model, request, origins)


def _main_cloud_config():
    """salt-cloud's main config file, as salt-cloud merges it under every node's config."""
    try:
        with open(__opts__["conf_file"], encoding="utf-8") as handle:
            return yaml.safe_load(handle) or {}
    except (KeyError, OSError, yaml.YAMLError):
        return {}


def _warm_up():
    """Load the EC2 service model once in salt-cloud's main process, before it forks its
    workers (-P creates and destroys, node queries): where the main process calls EC2 too
    (creates, destroys, actions) or forks many workers, they share one load instead of each
    loading it (~0.2 s of CPU each).  A query (-Q, -F, -S) calls EC2 in one worker only."""
    if getattr(_PROCESS, "warm", False) or __opts__.get("selected_query_option"):
        return
    _PROCESS.warm = True
    try:
        _client(connection_settings(_provider_config()))
    except Exception as exc:  # a bad provider is reported where it is used, naming the key
        log.debug("Not warming up the EC2 client: %s", exc)


def _creating():
    opts = __opts__
    if opts.get("destroy") or opts.get("action") or opts.get("function"):
        return False
    if opts.get("selected_query_option") or opts.get("query"):
        return False
    return bool(opts.get("profile") and opts.get("names")) or bool(opts.get("map"))


def _install_parallel_guard():
    owner = os.getpid()
    _PROCESS.guard = {"owner": owner, "stopping": False}

    def guard(signum, frame):
        if os.getpid() != owner:
            os._exit(128 + signum)  # an idle worker that inherited this handler
        _PROCESS.guard["stopping"] = True
        _stop_workers(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, guard)


def _stop_workers(signum):
    """Signal every worker; wait while those that were creating clean up; exit 128 + signum."""
    children = multiprocessing.active_children()
    log.error("Signal %s: stopping %d salt-cloud workers (each cleans up)", signum, len(children))
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)
    markers = _markers_dir(os.getpid())
    deadline = time.monotonic() + SETTING_DEFAULTS["cleanup_timeout"] + 60
    while time.monotonic() < deadline and any(
        _alive(int(pid)) for pid in os.listdir(markers) if pid.isdigit()
    ):
        multiprocessing.active_children()  # reaps workers that ended
        time.sleep(0.1)
    with contextlib.suppress(OSError):
        for pid in os.listdir(markers):
            os.remove(os.path.join(markers, pid))
        os.rmdir(markers)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(128 + signum)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


# =========================================================================== pure helpers


def _require_action(name, call):
    if call != "action":
        raise SaltCloudSystemExit(f"{name} is an action: salt-cloud -a {name} NAME")


def _refuse_action(name, call):
    if call == "action":
        raise SaltCloudSystemExit(f"{name} is called with its --list option or -f")


def deep_merge(base, override):
    """Return base updated by override, recursing into dicts (lists are replaced)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def minion_id_of(vm_):
    """The minion id for a vm config, as salt-cloud computes the pre-accepted key's name."""
    minion = vm_.get("minion") or {}
    if not isinstance(minion, dict):
        raise SaltCloudConfigError(f"'minion' must be a mapping, got {minion!r}")
    minion_id = minion.get("id", vm_.get("name"))
    domain = minion.get("append_domain")
    if vm_.get("use_fqdn") and vm_.get("domain"):
        domain = vm_["domain"]
    if domain:
        minion_id = f"{minion_id}.{domain}"
    return minion_id if isinstance(minion_id, str) else str(minion_id)


def map_names(rendered):
    """Node names in a rendered salt-cloud map (profile: names, in its accepted shapes)."""
    names = []
    for mapped in (rendered or {}).values():
        entries = [mapped] if isinstance(mapped, str) else mapped
        if isinstance(entries, dict):
            entries = list(entries)
        for entry in entries if isinstance(entries, list) else []:
            names += [entry] if isinstance(entry, str) else list(entry or {})
    return [str(name) for name in names]


def race_winner(instances):
    """Among live instances of one name, the one that launched first (ties: lowest id)."""
    if len(instances) < 2:
        return None
    return min(instances, key=lambda i: (str(i.get("LaunchTime")), i["InstanceId"]))


def protected_instance_id(exc, candidates):
    """The instance EC2 names in an OperationNotPermitted refusal, if it is a candidate."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return None
    error = exc.response.get("Error", {})
    if error.get("Code") != "OperationNotPermitted":
        return None
    for instance_id in re.findall(r"i-[0-9a-f]+", error.get("Message", "")):
        if instance_id in candidates:
            return instance_id
    return None


def docker_volume_mapping_of(instance):
    """The instance's Docker volume mapping: the device its docker_volume_device tag names."""
    device = tag_dict(instance).get(DOCKER_DEVICE_TAG)
    mappings = [m for m in instance.get("BlockDeviceMappings", []) if "Ebs" in m]
    if device is None:
        # Nodes created before the tag: the one EBS volume that is not the root device.
        data = [m for m in mappings if m["DeviceName"] != instance.get("RootDeviceName")]
        if len(data) == 1:
            return data[0]
        raise SaltCloudSystemExit(
            f"{node_name(instance)} has no {DOCKER_DEVICE_TAG} tag and {len(data)} data "
            "volumes: cannot tell which one is Docker's"
        )
    for mapping in mappings:
        if mapping["DeviceName"] == device:
            return mapping
    raise SaltCloudSystemExit(f"{node_name(instance)} has no volume attached as {device}")


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


def docker_volume_grain(instance, device):
    """{device_name, volume_id} of the Docker volume, from a described instance."""
    for mapping in instance.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == device and "Ebs" in mapping:
            return {"device_name": device, "volume_id": mapping["Ebs"]["VolumeId"]}
    raise SaltCloudSystemExit(
        f"instance {instance.get('InstanceId')} has no volume attached as {device}"
    )


def minion_grains(configured_grains, node_class, volume):
    """The grains pushed at deploy.  `docker_disk` is the old name of `docker_ebs_volume`,
    still pushed for one release for minions running older formula code."""
    grains = dict(configured_grains or {})
    grains["class"] = node_class
    grains["docker_ebs_volume"] = dict(volume)
    grains["docker_disk"] = {"device": volume["device_name"], "volume_id": volume["volume_id"]}
    return grains


def create_result(instance, settings):
    """What salt-cloud prints for a created node."""
    volume = docker_volume_grain(instance, settings["docker_device"])
    summary = node_summary(instance)
    return {
        "instance_id": instance["InstanceId"],
        "class": settings["class"],
        "docker_ebs_volume": volume,
        # The old name, kept for one release.
        "docker_disk": {"device": volume["device_name"], "volume_id": volume["volume_id"]},
        "private_ips": summary["private_ips"],
        "public_ips": summary["public_ips"],
        "state": summary["state"],
    }


def is_loopback_endpoint(endpoint_url):
    """True when the EC2 endpoint is on this host (moto): its addresses are made up."""
    host = urlparse(endpoint_url or "").hostname
    if not host:
        return False
    if host == "localhost":
        return True
    return is_loopback_address(host)


def is_loopback_address(address):
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def tag_dict(resource):
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def node_min(instance):
    return {"id": instance["InstanceId"], "state": instance["State"]["Name"]}


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
            "iam_instance_profile": (instance.get("IamInstanceProfile") or {}).get("Arn"),
            "ebs_optimized": instance.get("EbsOptimized"),
            "lifecycle": instance.get("InstanceLifecycle", "on-demand"),
            "metadata_options": {
                key: value
                for key, value in instance.get("MetadataOptions", {}).items()
                if key != "State"
            },
            "launch_time": launch_time.isoformat() if launch_time else None,
            "volumes": {
                mapping["DeviceName"]: volume_summary(
                    volumes_by_id.get(mapping["Ebs"]["VolumeId"], {}), mapping
                )
                for mapping in instance.get("BlockDeviceMappings", [])
                if "Ebs" in mapping
            },
        }
    )
    return details


def volume_summary(volume, mapping):
    ebs = mapping.get("Ebs", {})
    return {
        "device_name": mapping.get("DeviceName"),
        "volume_id": ebs.get("VolumeId"),
        "delete_on_termination": ebs.get("DeleteOnTermination"),
        "size": volume.get("Size"),
        "type": volume.get("VolumeType"),
        "encrypted": volume.get("Encrypted"),
        "iops": volume.get("Iops"),
        "throughput": volume.get("Throughput"),
        "kms_key_id": volume.get("KmsKeyId"),
        "state": volume.get("State"),
        "tags": tag_dict(volume),
    }


def modification_summary(modification):
    return {
        "state": modification.get("ModificationState"),
        "status_message": modification.get("StatusMessage"),
        "original_size": modification.get("OriginalSize"),
        "target_size": modification.get("TargetSize"),
        "progress": modification.get("Progress"),
    }


def instance_type_summary(itype):
    return {
        "vcpus": itype.get("VCpuInfo", {}).get("DefaultVCpus"),
        "memory_mib": itype.get("MemoryInfo", {}).get("SizeInMiB"),
        "architectures": itype.get("ProcessorInfo", {}).get("SupportedArchitectures"),
        "ebs_optimized": itype.get("EbsInfo", {}).get("EbsOptimizedSupport"),
        "current_generation": itype.get("CurrentGeneration"),
    }


def image_summary(image):
    return {
        "name": image.get("Name"),
        "description": image.get("Description"),
        "owner": image.get("OwnerId"),
        "architecture": image.get("Architecture"),
        "state": image.get("State"),
        "creation_date": image.get("CreationDate"),
        "root_device_name": image.get("RootDeviceName"),
    }


def node_name(instance):
    return tag_dict(instance).get("Name") or instance["InstanceId"]


def shorten(text, limit=60):
    return text if len(text) <= limit else f"{text[:limit]}..."


def aws_error_message(exc):
    """One line from a boto3/botocore error: the AWS error code and its message."""
    if HAS_BOTO3 and isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "request")
        return f"{operation} failed: {error.get('Code', 'Error')}: {error.get('Message', exc)}"
    return f"{type(exc).__name__}: {exc}"
