"""
What the boto3_ec2 cloud driver knows of EC2, with no loader state: its errors, reads, waits
and thread pools, and the facts it reads off instances and volumes (summaries, the Docker
volume). The driver reaches it as ``ec2`` (``__utils__``'s module); the functions take the
boto3 client and values, never ``__opts__``, so unit tests call them directly.
"""

import contextlib
import contextvars
import fcntl
import ipaddress
import logging
import os
import queue
import random
import re
import resource
import sys
import threading
import time
import types

from salt.exceptions import SaltCloudConfigError, SaltCloudException, SaltCloudSystemExit

try:
    import botocore.exceptions
    import botocore.parsers
    import botocore.retries.standard

    # What a boto3 call raises when EC2 (or the way to it) fails; a garbled answer (a proxy's
    # HTML error page) is a ResponseParserError, which is no BotoCoreError.
    AWS_ERRORS = (
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        botocore.parsers.ResponseParserError,
    )
except ImportError:  # the driver's __virtual__ says so
    AWS_ERRORS = ()

log = logging.getLogger(__name__)

LIVE_STATES = ("pending", "running", "stopping", "stopped")
GONE = ("shutting-down", "terminated")
POLL_DELAYS = (0.2, 0.5, 1, 2)  # s between polls: the first at once, the last repeated
ID_BATCH = 200  # ids per filter or TerminateInstances
VOLUME_TAG = "docker_volume"  # instance tag (the Docker volume's device), volume role

# ===================================================================== errors


class StillUnreachable(TimeoutError):
    """EC2 kept failing transiently (throttling, 5xx, lost connections) until a deadline."""


def aws_error_message(exc):
    """One line from a boto3/botocore error: the AWS error code and its message."""
    if AWS_ERRORS and isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "request")
        return f"{operation} failed: {error.get('Code', 'Error')}: {error.get('Message', exc)}"
    return f"{type(exc).__name__}: {exc}"


def is_transient(exc):
    """botocore's own view: would its standard retry mode retry this error? (Plus an answer
    that is not EC2's XML, e.g. a proxy's HTML error page.)"""
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
    return (
        (getattr(exc, "response", None) or {})
        .get("Error", {})
        .get("Code", "")
        .endswith(".NotFound")
    )


def ambiguous(exc):
    """May EC2 have acted on a call that failed? Not when it answered with an error (4xx:
    refused, throttled): only when the answer was lost, or was a server error."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return True
    return (exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 500) >= 500


def protected_instance_id(exc, candidates):
    """The instance EC2 names in an OperationNotPermitted refusal, if it is a candidate."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return None
    error = exc.response.get("Error", {})
    if error.get("Code") != "OperationNotPermitted":
        return None
    found = re.findall(r"i-[0-9a-f]+", error.get("Message", ""))
    return next((i for i in found if i in candidates), None)


@contextlib.contextmanager
def translated(what, kind=SaltCloudSystemExit):
    """boto3/botocore errors as one line: what failed, with EC2's code and message."""
    try:
        yield
    except AWS_ERRORS as exc:
        raise kind(f"{what}: {aws_error_message(exc)}" if what else aws_error_message(exc)) from exc


def call(function, what=None, **kwargs):
    with translated(what):
        return function(**kwargs)


# =========================================================== reads and writes


def where(name, values):
    return {"Name": name, "Values": list(values)}


def tag(key, value):
    return {"Key": key, "Value": value}


def pages(client, operation, key, **kwargs):
    with translated(None):
        pages = client.get_paginator(operation).paginate(**kwargs)
        return [item for page in pages for item in page[key]]


def describe(client, filters=(), live=True, raw=False):
    """Instances matching filters (live ones unless live=False), all pages; raw: errors as
    botocore raises them (a poll decides what they mean)."""
    filters = [*filters, *([where("instance-state-name", LIVE_STATES)] if live else [])]
    with contextlib.nullcontext() if raw else translated("listing instances"):
        pages = client.get_paginator("describe_instances").paginate(Filters=filters)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def batches(items, size=ID_BATCH):
    """items in lists of at most `size` (EC2's limit on ids per filter or call)."""
    return [items[first : first + size] for first in range(0, len(items), size)]


def instances_named(client, names):
    return [i for batch in batches(names) for i in describe(client, [where("tag:Name", batch)])]


def by_name(instances):
    grouped = {}
    for instance in instances:
        grouped.setdefault(node_name(instance), []).append(instance)
    return grouped


def live_instance(client, name):
    """The one live instance a node name (or an instance id) stands for."""
    if re.fullmatch(r"i-[0-9a-f]+", str(name)):
        found = describe(client, [where("instance-id", [name])])
    else:
        found = instances_named(client, [name])
    if len(found) != 1:
        ids = ", ".join(i["InstanceId"] for i in found)
        raise SaltCloudSystemExit(
            f"{len(found)} live instances are named {name!r} ({ids})"
            if found
            else f"no live instance named {name!r}"
        )
    return found[0]


def volumes_of(client, instances):
    mappings = [m for i in instances for m in i.get("BlockDeviceMappings", []) if "Ebs" in m]
    ids = [mapping["Ebs"]["VolumeId"] for mapping in mappings]
    filters = [[where("volume-id", batch)] for batch in batches(ids)]
    found = [v for f in filters for v in pages(client, "describe_volumes", "Volumes", Filters=f)]
    return {volume["VolumeId"]: volume for volume in found}


def modification(client, volume_id):
    """The volume's latest modification, or None (EC2 says NotFound for one never modified)."""
    try:
        found = client.describe_volumes_modifications(VolumeIds=[volume_id])
    except botocore.exceptions.ClientError as exc:
        if is_not_found(exc) or "NotFound" in exc.response.get("Error", {}).get("Code", ""):
            return None
        if is_transient(exc):
            raise  # a wait retries it
        raise SaltCloudSystemExit(aws_error_message(exc)) from exc
    latest = max(found["VolumesModifications"], key=lambda m: str(m.get("StartTime")), default=None)
    fields = {"state": "ModificationState", "original_size": "OriginalSize"}
    fields.update(target_size="TargetSize", progress="Progress")
    return latest and {key: latest.get(field) for key, field in fields.items()}


def protected(client, iid):
    found = call(
        client.describe_instance_attribute, InstanceId=iid, Attribute="disableApiTermination"
    )
    return found["DisableApiTermination"]["Value"]


def group_ids(client, names, vpc_id):
    if not names:
        return []
    if vpc_id is None:
        vpcs = call(client.describe_vpcs, Filters=[where("isDefault", ["true"])])["Vpcs"]
        if not vpcs:
            raise SaltCloudConfigError(
                "'securitygroup' names need a VPC: set 'subnetid' (this region has no default VPC)"
            )
        vpc_id = vpcs[0]["VpcId"]
    filters = [where("group-name", names), where("vpc-id", [vpc_id])]
    groups = call(client.describe_security_groups, Filters=filters)["SecurityGroups"]
    by_name = {group["GroupName"]: group["GroupId"] for group in groups}
    missing = ", ".join(name for name in names if name not in by_name)
    if missing:
        raise SaltCloudSystemExit(f"'securitygroup' {missing}: no such security group in {vpc_id}")
    return [by_name[name] for name in names]


def volume_to_attach(client, s):
    """The zone of the Docker volume a node takes over: free, and of the node's class."""
    what = f"'docker_volume_id' {s['docker_volume_id']}"
    volume = call(client.describe_volumes, what, VolumeIds=[s["docker_volume_id"]])["Volumes"][0]
    tags = tag_dict(volume)
    if (tags.get("role"), tags.get("class")) != (VOLUME_TAG, s["class"]):
        raise SaltCloudSystemExit(
            f"{what} is not a Docker volume of class {s['class']} (its tags "
            f"say role={tags.get('role')}, class={tags.get('class')})"
        )
    if volume["State"] != "available":
        raise SaltCloudSystemExit(f"{what} is {volume['State']}: destroy its node first")
    return volume["AvailabilityZone"]


def data_id(client, settings, volume_id):
    """The id of the data on a node's Docker volume: the id of the volume it began on, which
    the node's disk gate knows it by (its LVM marker). A volume restored from a snapshot gets
    the snapshot's as tag data_id; a volume without the tag began itself."""
    if settings["docker_volume_id"]:
        volume = call(client.describe_volumes, VolumeIds=[volume_id])["Volumes"][0]
        return tag_dict(volume).get("data_id", volume_id)
    snapshot_id = settings["block_device_mappings"][-1]["Ebs"].get("SnapshotId")
    if not snapshot_id:
        return volume_id
    snapshot = call(client.describe_snapshots, SnapshotIds=[snapshot_id])["Snapshots"][0]
    data_id = tag_dict(snapshot).get("data_id") or snapshot["VolumeId"]
    call(client.create_tags, Resources=[volume_id], Tags=[tag("data_id", data_id)])
    return data_id


def protect(client, instance_id, enabled):
    setting = {"Value": enabled}
    call(client.modify_instance_attribute, InstanceId=instance_id, DisableApiTermination=setting)
    return {"instance_id": instance_id, "termination_protection": enabled}


def terminate_unprotected(client, ids):
    """TerminateInstances; EC2 refuses the whole call for a protected instance and names it:
    leave that one out and ask again. Returns the protected ids."""
    pending, protected = list(ids), set()
    while pending:
        try:
            for batch in batches(pending):
                call(client.terminate_instances, InstanceIds=batch)
            break
        except SaltCloudSystemExit as exc:
            refused = protected_instance_id(exc.__cause__, pending)
            if refused is None:
                raise
            pending.remove(refused)
            protected.add(refused)
    return protected


def placement(client, s):
    """What EC2 reads settle in the request: security group ids (names resolved in the node's
    VPC: its subnet's, or the default one) and the zone of a Docker volume to attach; the
    subnet's zone checked against them."""
    zone, vpc_id = s["availability_zone"], None
    if s["docker_volume_id"]:
        volume_zone = volume_to_attach(client, s)
        if zone and zone != volume_zone:
            raise SaltCloudConfigError(
                f"'docker_volume_id' {s['docker_volume_id']} is in "
                f"{volume_zone}, not in 'availability_zone' {zone}"
            )
        zone = volume_zone
    if s["subnetid"]:
        what = f"'subnetid' {s['subnetid']}"
        subnet = call(client.describe_subnets, what, SubnetIds=[s["subnetid"]])["Subnets"][0]
        if zone and subnet["AvailabilityZone"] != zone:
            raise SaltCloudConfigError(
                f"'availability_zone' {zone} does not hold 'subnetid' "
                f"{s['subnetid']} (it is in {subnet['AvailabilityZone']})"
            )
        vpc_id = subnet["VpcId"]
    ids = [*s["securitygroupid"], *group_ids(client, s["securitygroup"], vpc_id)]
    return {
        **({"SecurityGroupIds": ids} if ids else {}),
        **({"Placement": {"AvailabilityZone": zone}} if zone else {}),
    }


def snapshot_volume(client, instance, keep, why, recorded):
    """A snapshot of the instance's Docker volume, then this node's snapshots beyond the
    newest `keep` deleted; `recorded`: the node's snapshot ids, newest first."""
    name = node_name(instance)
    volume_id = docker_volume_mapping_of(instance)["Ebs"]["VolumeId"]
    volume = call(client.describe_volumes, VolumeIds=[volume_id])["Volumes"][0]
    tags = {
        "Name": f"{name} {VOLUME_TAG}",
        "class": tag_dict(instance).get("class", ""),
        "node": name,
        "role": VOLUME_TAG,
        "data_id": tag_dict(volume).get("data_id", volume_id),
    }
    spec = {"ResourceType": "snapshot", "Tags": [tag(k, v) for k, v in tags.items()]}
    new = call(
        client.create_snapshot,
        f"snapshot of {name}'s {volume_id}",
        VolumeId=volume_id,
        Description=f"{name} {VOLUME_TAG}: {why}",
        TagSpecifications=[spec],
    )
    filters = [where("tag:node", [name]), where("tag:role", [VOLUME_TAG])]
    ours = call(client.describe_snapshots, OwnerIds=["self"], Filters=filters)["Snapshots"]
    ours = [s for s in ours if s["SnapshotId"] != new["SnapshotId"]]  # maybe not listed yet
    # StartTime may have whole seconds only: within one, the record's order (newest first) wins
    rank = {snapshot_id: len(recorded) - i for i, snapshot_id in enumerate(recorded)}
    ours.sort(key=lambda s: (str(s["StartTime"]), rank.get(s["SnapshotId"], 0)), reverse=True)
    for snapshot in ours[keep - 1 :]:
        call(client.delete_snapshot, SnapshotId=snapshot["SnapshotId"])
    kept = [new["SnapshotId"], *(s["SnapshotId"] for s in ours[: keep - 1])]
    pruned = [s["SnapshotId"] for s in ours[keep - 1 :]]
    return {
        "snapshot_id": new["SnapshotId"],
        "volume_id": volume_id,
        "kept": kept,
        "pruned": pruned,
    }


# ========================================================== waits and threads


def poll(check, timeout, what, *, sleep=time.sleep, not_found_is_pending=False, accept_empty=False):
    """check() until it returns something (accept_empty: anything but None); transient EC2
    errors only delay it. The first check at once, then sleep(s) for POLL_DELAYS."""
    deadline, last_error = time.monotonic() + timeout, None
    for attempt in range(sys.maxsize):
        try:
            result, last_error = check(), None
            if result is not None and (accept_empty or result != []):
                return result
        except AWS_ERRORS as exc:
            if not (is_transient(exc) or (not_found_is_pending and is_not_found(exc))):
                raise SaltCloudSystemExit(f"waiting for {what}: {aws_error_message(exc)}") from exc
            last_error = exc
            log.debug("Waiting for %s: %s", what, aws_error_message(exc))
        delay = POLL_DELAYS[min(attempt, len(POLL_DELAYS) - 1)] * random.uniform(0.8, 1.2)
        if time.monotonic() + delay > deadline:
            break
        sleep(delay)
    if last_error is not None:
        raise StillUnreachable(aws_error_message(last_error))
    raise SaltCloudSystemExit(f"gave up waiting for {what} after {timeout} s")


def run_together(calls):
    """Independent EC2 calls at once: {key: result}; one error naming every failure."""
    results, errors = {}, []

    def run(item):
        try:
            results[item[0]] = item[1]()
        except SaltCloudException as exc:
            errors.append(exc)

    in_pool(run, list(calls.items()), 8)
    if errors:
        config_only = all(isinstance(e, SaltCloudConfigError) for e in errors)
        kind = SaltCloudConfigError if config_only else SaltCloudSystemExit
        raise kind("; ".join(str(e) for e in errors))
    return results


def in_pool(function, items, size, stopping=None):
    """function(item) for each item, at most `size` at once, in daemon threads (a signal must
    not wait for them); returns when all are done. The waiting main thread takes signals."""
    pending, done = queue.SimpleQueue(), threading.Semaphore(0)
    for item in items:
        pending.put(item)

    def work():
        while True:
            try:
                item = pending.get_nowait()
            except queue.Empty:
                return
            try:
                if stopping is None or not stopping.is_set():
                    function(item)
            finally:
                done.release()

    # Salt's loader dunders (__utils__, __opts__) live in a context variable: each thread runs
    # in a copy of this one's context.
    context = contextvars.copy_context()
    for _ in range(min(size, len(items))):
        threading.Thread(target=context.copy().run, args=(work,), daemon=True).start()
    for _ in items:
        while not done.acquire(timeout=0.5):
            pass


@contextlib.contextmanager
def name_locks(directory, names):
    """A lock per name in `directory` for a whole create (held while it runs, so a killed
    create leaves none held), taken without waiting: a name another salt-cloud is creating
    refuses the run. Each lock file is removed while held: none stays."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if len(names) + 256 > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    try:
        for name in names:
            path = os.path.join(directory, f"{name}.lock")
            held.append((path, _lock_file(path)))
            if held[-1][1] is None:
                raise SaltCloudSystemExit(
                    f"{name} is being created by another salt-cloud "
                    f"on this master (it holds {path}): nothing was done"
                )
        yield
    finally:
        for path, handle in held:
            if handle is not None:
                with contextlib.suppress(OSError):
                    os.remove(path)
                handle.close()


def _lock_file(path):
    """The open, flocked lock file, or None if another process holds it. A file its holder
    removed between our open and flock is no lock any more: open again."""
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                return handle
        handle.close()


# ============================================= facts of instances and volumes


def tag_dict(resource):
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def node_name(instance):
    return tag_dict(instance).get("Name") or instance["InstanceId"]


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
    tags, launched = tag_dict(instance), instance.get("LaunchTime")
    groups = instance.get("SecurityGroups", [])
    options = {k: v for k, v in instance.get("MetadataOptions", {}).items() if k != "State"}
    return {
        **node_summary(instance),
        "name": tags.get("Name"),
        "class": tags.get("class"),
        "tags": tags,
        "availability_zone": instance.get("Placement", {}).get("AvailabilityZone"),
        "vpc_id": instance.get("VpcId"),
        "subnet_id": instance.get("SubnetId"),
        "key_name": instance.get("KeyName"),
        "security_groups": {group["GroupId"]: group["GroupName"] for group in groups},
        "iam_instance_profile": (instance.get("IamInstanceProfile") or {}).get("Arn"),
        "lifecycle": instance.get("InstanceLifecycle", "on-demand"),
        "metadata_options": options,
        "launch_time": launched.isoformat() if launched else None,
        "keeps_data": keeps_data(instance),
        "volumes": {
            m["DeviceName"]: volume_summary(volumes_by_id.get(m["Ebs"]["VolumeId"], {}), m)
            for m in instance.get("BlockDeviceMappings", [])
            if "Ebs" in m
        },
    }


def volume_summary(volume, mapping):
    fields = ("Size", "Encrypted", "Iops", "Throughput", "State", "AvailabilityZone")
    return {
        "device_name": mapping.get("DeviceName"),
        "volume_id": mapping.get("Ebs", {}).get("VolumeId"),
        "delete_on_termination": mapping.get("Ebs", {}).get("DeleteOnTermination"),
        "type": volume.get("VolumeType"),
        **{re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): volume.get(k) for k in fields},
        "tags": tag_dict(volume),
    }


def keeps_data(instance):
    """Whether the instance's Docker volume outlives it (a data class's: DeleteOnTermination
    false), the one test of it (destroy's snapshot; node.replace and node.snapshot_data read it
    from list_nodes_full)."""
    device = tag_dict(instance).get(VOLUME_TAG)
    return any(
        m.get("DeviceName") == device and m.get("Ebs", {}).get("DeleteOnTermination") is False
        for m in instance.get("BlockDeviceMappings", [])
    )


def docker_volume_mapping_of(instance):
    """The instance's Docker volume mapping: the device its docker_volume tag names."""
    tags, iid = tag_dict(instance), instance["InstanceId"]
    if VOLUME_TAG not in tags and "docker_volume_device" in tags:
        device = tags["docker_volume_device"]
        raise SaltCloudSystemExit(
            f"{node_name(instance)} carries the old tag docker_volume_device: re-tag it (aws ec2 "
            f"create-tags --resources {iid} --tags Key={VOLUME_TAG},Value={device}; aws ec2 "
            f"delete-tags --resources {iid} --tags Key=docker_volume_device)"
        )
    for mapping in instance.get("BlockDeviceMappings", []):
        if "Ebs" in mapping and mapping["DeviceName"] == tags.get(VOLUME_TAG):
            return mapping
    raise SaltCloudSystemExit(
        f"{node_name(instance)} has no Docker volume (tag {VOLUME_TAG}: {tags.get(VOLUME_TAG)!r})"
    )


def docker_device(settings):
    return settings["block_device_mappings"][-1]["DeviceName"]


def docker_volume_id(instance, settings):
    for mapping in instance.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == docker_device(settings) and "Ebs" in mapping:
            return mapping["Ebs"]["VolumeId"]
    raise SaltCloudSystemExit(
        f"instance {instance['InstanceId']} has no volume attached as {docker_device(settings)}"
    )


def ssh_address(instance, ssh_interface):
    """The address salt-cloud deploys to, by ssh_interface."""
    kind = "Private" if ssh_interface == "private_ips" else "Public"
    if not instance.get(f"{kind}IpAddress"):
        raise SaltCloudSystemExit(
            f"instance {instance.get('InstanceId')} has no {kind.lower()} "
            f"address (ssh_interface: {ssh_interface})"
        )
    return instance[f"{kind}IpAddress"]


def is_loopback(host):
    """localhost or 127.0.0.0/8 (::1): a local endpoint's addresses are made up."""
    try:
        return host == "localhost" or ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def destroyed(name, instances, protected_ids, terminated, alias, *, snapshots):
    """A destroyed node's result: its state, the volumes that outlive it (each logged with
    the command that deletes it), or why termination protection kept it."""
    ids = [i["InstanceId"] for i in instances]
    blocked = [i for i in ids if i in protected_ids]
    if blocked:
        return {
            "Error": f"{name} ({', '.join(blocked)}) has termination protection and was not "
            f"destroyed: run `salt-cloud -a disable_term_protect {name}` first"
        }
    kept = [
        {
            "volume_id": m["Ebs"]["VolumeId"],
            "device_name": m["DeviceName"],
            "availability_zone": i.get("Placement", {}).get("AvailabilityZone"),
            "snapshot_id": snapshots.get(m["Ebs"]["VolumeId"]),
        }
        for i in instances
        for m in i.get("BlockDeviceMappings", [])
        if "Ebs" in m and not m["Ebs"].get("DeleteOnTermination", True)
    ]
    for volume in kept:
        log.warning(
            "%s: kept its volume %s in %s (DeleteOnTermination: false; snapshot %s taken "
            "stopped, before the destroy); delete it with %s",
            name,
            volume["volume_id"],
            volume["availability_zone"],
            volume["snapshot_id"],
            purge_command(alias, volume["volume_id"]),
        )
    state = "terminated" if set(ids) <= terminated else "shutting-down"
    return {"instance_ids": ids, "state": state, **({"kept_volumes": kept} if kept else {})}


# ========================================================== command arguments


def whole_number(kwargs, key, default, action):
    raw = str(kwargs.get(key, default))
    if not raw.isdigit() or int(raw) <= 0:
        raise SaltCloudSystemExit(f"{action} needs {key}=<a whole number>, got {raw!r}")
    return int(raw)


def map_entries(rendered):
    """(profile, name, overrides) of a rendered map in every shape salt-cloud accepts
    (profile: name | [name | {name: overrides}] | {name: overrides}), duplicates kept."""
    entries = []
    for profile, mapped in rendered.items():
        items = [mapped] if isinstance(mapped, str) else mapped
        if isinstance(items, dict):
            items = [{name: overrides} for name, overrides in items.items()]
        for item in items if isinstance(items, list) else [items]:
            for name, overrides in item.items() if isinstance(item, dict) else [(item, None)]:
                entries.append((profile, name, overrides if isinstance(overrides, dict) else {}))
    return entries


def render_map(path, opts):
    """The map as salt-cloud renders it (its renderer, e.g. jinja|yaml)."""
    import salt.loader  # noqa: PLC0415  (maps only)
    import salt.template  # noqa: PLC0415

    if not os.path.isfile(path):
        raise SaltCloudConfigError(f"the map file {path!r} does not exist")
    renderer = opts.get("renderer", "jinja|yaml")
    allowed = (opts.get("renderer_blacklist"), opts.get("renderer_whitelist"))
    rendered = salt.template.compile_template(
        path, salt.loader.render(opts, {}), renderer, *allowed
    )
    if not isinstance(rendered, dict) or not rendered:
        raise SaltCloudConfigError(f"the map {path!r} maps no profile to names")
    return rendered


def purge_command(alias, volume_id=""):
    """The command that deletes a Docker volume which outlived its node."""
    return f"salt-cloud -f purge_volume {alias} volume_id={volume_id}"
