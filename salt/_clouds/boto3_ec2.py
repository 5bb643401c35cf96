"""
salt-cloud driver for Amazon EC2 on boto3 (``driver: boto3_ec2``), for Salt 3008 (no EC2
driver in core) and 3007; salt-cloud loads it from the repository (``cloud_dirs``).
docs/cloud-driver.md documents every key, action and fault.

- A create run (``-p``, ``-m`` with or without ``-P``, ``-f create_nodes``) is checked whole
  (names, duplicates, profiles, every key: ``dockerhosts_profile``) before anything is written,
  then runs in one process: one RunInstances per profile, then each node tagged, deployed and
  recorded by a bounded pool of threads. A node that fails is terminated, the others go on;
  SIGINT/SIGTERM terminate what is unfinished; every failure ends the command non-zero.
- Exactly once: each RunInstances carries a client token, put in the node's record
  (``dockerhosts_nodes``) before the call, so a create whose salt-cloud was killed is found on
  the next run of its name and finished.
- A destroy run terminates its nodes in one batch, waits once, and forgets their records, keys
  and cached data itself, after one ``node.before_destroy`` runner call for the batch.

salt-cloud's core runs one process per node with ``-P`` and ends 0 on most failures; so when
the salt-cloud CLI loads this driver for a create, destroy, action or query, the driver runs
the command itself and exits with its own code (``_run_cli``).
"""

import contextlib
import contextvars
import difflib
import fcntl
import functools
import hashlib
import ipaddress
import logging
import multiprocessing
import os
import queue
import random
import re
import resource
import signal
import socket
import sys
import threading
import time
import types
import uuid
from urllib.parse import urlparse

import salt.output
import salt.utils.cloud
import salt.utils.event
import salt.utils.yaml
from salt.exceptions import SaltCloudConfigError, SaltCloudException, SaltCloudSystemExit

from salt import config

try:
    import boto3
    import botocore.config
    import botocore.exceptions
    import botocore.parsers
    import botocore.retries.standard

    HAS_BOTO3 = True
    # What a boto3 call raises when EC2 (or the way to it) fails; a garbled answer (a proxy's
    # HTML error page) is a ResponseParserError, which is no BotoCoreError.
    AWS_ERRORS = (
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        botocore.parsers.ResponseParserError,
    )
except ImportError:
    HAS_BOTO3 = False

log = logging.getLogger(__name__)

__virtualname__ = "boto3_ec2"

LIVE_STATES = ("pending", "running", "stopping", "stopped")
GONE = ("shutting-down", "terminated")
POLL_DELAYS = (0.2, 0.5, 1, 2)  # s between polls: the first at once, the last repeated
ID_BATCH = 200  # ids per filter or TerminateInstances
LAUNCH_BATCH = 100  # instances per RunInstances
VOLUME_TAG = "docker_volume"  # instance tag (the Docker volume's device), volume role
SELECTION = ("id", "class", "state", "size", "private_ips", "public_ips")  # -S default
ACTIONS = {}  # name -> function: what -a runs (the @_action functions)

# Per process, outliving salt's loaders (each executes this file anew): boto3 clients by
# connection settings (loading the EC2 model is the slow part), the event bus, CLI state.
_PROCESS = sys.modules.setdefault("_boto3_ec2_process", types.ModuleType("_boto3_ec2_process"))
for _name, _default in (("clients", {}), ("events", {}), ("cli", False), ("stopping", None)):
    if not hasattr(_PROCESS, _name):
        setattr(_PROCESS, _name, _default)
_CLIENTS_LOCK, _EVENTS_LOCK = threading.Lock(), threading.Lock()


def __virtual__():
    if not HAS_BOTO3:
        return (False, "the boto3_ec2 cloud driver needs boto3")
    if get_configured_provider() is False:
        return False
    command = _cli_command()
    if command:
        _run_cli(command)
    return __virtualname__


def _active_provider():
    try:
        return __active_provider_name__.value()
    except AttributeError:
        return __active_provider_name__


def get_configured_provider():
    return config.is_provider_configured(__opts__, _active_provider() or __virtualname__, ())


# =========================================================================== entry points


def create(vm_):
    """One node from salt-cloud's core (CloudClient, the cloud.profile state)."""
    [node] = _plan([vm_])
    _create_nodes([node])
    if node.error:
        raise SaltCloudSystemExit(f"{node.name}: {node.error}")
    return node.result


def create_nodes(kwargs=None, call=None):
    """Nodes of one profile in one batch: -f create_nodes aws profile=backends names=a,b."""
    _require("create_nodes", call, "function")
    profile = (kwargs or {}).get("profile")
    results, failed = _create_run([(profile, name, {}) for name in _names(kwargs)])
    if failed:
        raise SaltCloudSystemExit("; ".join(f"{n}: {results[n]['Error']}" for n in failed))
    return results


def destroy(name, call=None):
    """One node from salt-cloud's core (CloudClient, cloud.absent, -a destroy)."""
    return destroy_nodes({"names": [name]}, call="function")[name]


def destroy_nodes(kwargs=None, call=None):
    """Nodes in one batch: salt-cloud -f destroy_nodes aws names=web1,web2."""
    _require("destroy_nodes", call, "function")
    results = _destroy_names(_names(kwargs), _alias())
    errors = [
        f"{n}: {r.get('Error', 'no live instance has this name')}"
        for n, r in results.items()
        if r.get("state") != "terminated"
    ]
    if errors:
        raise SaltCloudSystemExit("; ".join(errors))
    return results


def purge_volume(kwargs=None, call=None):
    """Delete a Docker volume that outlived its node: -f purge_volume aws volume_id=vol-...;
    only an unattached volume with this driver's node and role tags."""
    _require("purge_volume", call, "function")
    volume_id, client = str((kwargs or {}).get("volume_id")), _client()
    volume = _call(client.describe_volumes, VolumeIds=[volume_id])["Volumes"][0]
    tags, state = tag_dict(volume), volume["State"]
    if tags.get("role") != VOLUME_TAG or not tags.get("node"):
        problem = "has no node and role=docker_volume tags: not a node's Docker volume"
    elif state != "available":
        problem = f"is {state} ({', '.join(a['InstanceId'] for a in volume['Attachments'])})"
    else:
        _call(client.delete_volume, VolumeId=volume_id)
        return {"volume_id": volume_id, "node": tags["node"], "state": "deleted"}
    raise SaltCloudSystemExit(f"{volume_id} {problem}: not deleting it")


def landing_zone(kwargs=None, call=None):
    """-f landing_zone aws profile=NAME: the zone a node of the profile launches in (its
    availability_zone, else its subnet's), or None where EC2 chooses (node.replace asks)."""
    _require("landing_zone", call, "function")
    vm_ = _vm_config(str((kwargs or {}).get("profile")), "landing-zone", {})
    zone, subnet = vm_.get("availability_zone"), vm_.get("subnetid")
    if zone or not subnet:
        return zone
    client, what = _client(_connection(vm_["provider"].split(":")[0])), f"'subnetid' {subnet}"
    [found] = _call(client.describe_subnets, what, SubnetIds=[subnet])["Subnets"]
    return found["AvailabilityZone"]


def list_nodes(call=None):
    """Live instances by Name tag: salt-cloud -Q."""
    return _nodes(call, node_summary)


def list_nodes_min(call=None):
    return _nodes(call, lambda i: {"id": i["InstanceId"], "state": i["State"]["Name"]})


def list_nodes_full(call=None):
    """Live instances with tags, volumes, IAM profile, security groups: salt-cloud -F."""
    return _nodes(call, node_details, True)


def list_nodes_select(call=None):
    selection = __opts__.get("query.selection") or SELECTION
    return __utils__["cloud.list_nodes_select"](list_nodes_full("function"), selection, call)


def avail_locations(call=None):
    _require("avail_locations", call, None, "function")
    regions = _call(_client().describe_regions)["Regions"]
    return {r["RegionName"]: {"endpoint": r.get("Endpoint")} for r in regions}


def avail_sizes(call=None):
    _require("avail_sizes", call, None, "function")
    sizes = {}
    for item in _pages(_client(), "describe_instance_types", "InstanceTypes"):
        memory = item.get("MemoryInfo", {}).get("SizeInMiB")
        vcpus = item.get("VCpuInfo", {}).get("DefaultVCpus")
        sizes[item["InstanceType"]] = {"vcpus": vcpus, "memory_mib": memory}
    return dict(sorted(sizes.items()))


def avail_images(call=None):
    """The account's own AMIs and those this provider's profiles use (not the catalogue)."""
    _require("avail_images", call, None, "function")
    profiles = __opts__.get("profiles", {}).values()
    ids = {
        p["image"]
        for p in profiles
        if p.get("image") and p.get("provider", "").startswith(f"{_alias()}:")
    }
    images = _call(_client().describe_images, Owners=["self"])["Images"]
    if ids:
        images += _call(_client().describe_images, ImageIds=sorted(ids))["Images"]
    fields = ("Name", "Description", "State", "OwnerId")
    return {i["ImageId"]: {k.lower(): i.get(k) for k in fields} for i in images}


# --------------------------------------------------------------------------- actions


def _action(function):
    """An action: salt-cloud -a <function> NODE [key=value ...]; the function gets the EC2
    client, the node's live instance and the arguments."""

    @functools.wraps(function)
    def action(name, kwargs=None, call=None):
        _require(function.__name__, call, "action")
        client = _client()
        return function(client, _live_instance(client, name), dict(kwargs or {}))

    ACTIONS[function.__name__] = action
    return action


@_action
def show_instance(client, instance, kwargs):
    return node_details(instance, _volumes_of(client, [instance]))


@_action
def show_volumes(client, instance, kwargs):
    return node_details(instance, _volumes_of(client, [instance]))["volumes"]


@_action
def stop(client, instance, kwargs):
    return _change_state(client, instance, "stop_instances", "stopped")


@_action
def start(client, instance, kwargs):
    return _change_state(client, instance, "start_instances", "running")


@_action
def reboot(client, instance, kwargs):
    """Reboot, and wait until EC2 reports it running (a reboot has no other end state)."""
    return _change_state(client, instance, "reboot_instances", "running")


@_action
def enable_term_protect(client, instance, kwargs):
    if instance.get("InstanceLifecycle") == "spot":
        raise SaltCloudSystemExit(
            f"{node_name(instance)} is a spot instance: EC2 cannot protect those"
        )
    return _protect(client, instance["InstanceId"], True)


@_action
def disable_term_protect(client, instance, kwargs):
    return _protect(client, instance["InstanceId"], False)


@_action
def show_term_protect(client, instance, kwargs):
    iid = instance["InstanceId"]
    return {"instance_id": iid, "termination_protection": _protected(client, iid)}


def _protected(client, iid):
    found = _call(
        client.describe_instance_attribute, InstanceId=iid, Attribute="disableApiTermination"
    )
    return found["DisableApiTermination"]["Value"]


@_action
def docker_volume(client, instance, kwargs):
    """The node's Docker volume: device, id, size, state, last modification."""
    mapping = docker_volume_mapping_of(instance)
    volume_id = mapping["Ebs"]["VolumeId"]
    info = volume_summary(_volumes_of(client, [instance]).get(volume_id, {}), mapping)
    return {**info, "modification": _modification(client, volume_id)}


@_action
def grow_docker_volume(client, instance, kwargs):
    """-a grow_docker_volume NAME size=<GiB>: ModifyVolume, then wait until EC2 says
    optimizing or completed (the new size is usable from then). Refuses to shrink."""
    if set(kwargs) - {"size"}:
        raise SaltCloudSystemExit(f"grow_docker_volume takes size=<GiB>, not {sorted(kwargs)}")
    size = _whole_number(kwargs, "size", None, "grow_docker_volume")
    volume_id = docker_volume_mapping_of(instance)["Ebs"]["VolumeId"]
    old = check_growth(_call(client.describe_volumes, VolumeIds=[volume_id])["Volumes"][0], size)
    if old == size:
        return {"volume_id": volume_id, "size": size, "changed": False}
    _call(client.modify_volume, VolumeId=volume_id, Size=size)

    def settled():
        state = (_modification(client, volume_id) or {}).get("state")
        if state == "failed":
            raise SaltCloudSystemExit(f"EC2 failed to grow {volume_id}")
        return state if state in ("optimizing", "completed") else None

    state = _poll(settled, _setting("instance_wait_timeout"), f"{volume_id} to grow")
    return {"volume_id": volume_id, "old_size": old, "size": size, "state": state}


def grow_docker_disk(name, kwargs=None, call=None):
    """The old name of grow_docker_volume: refused, naming the new one."""
    raise SaltCloudSystemExit(
        f"grow_docker_disk was renamed: salt-cloud -a grow_docker_volume {name} size=N"
    )


ACTIONS["grow_docker_disk"] = grow_docker_disk


@_action
def snapshot_docker_volume(client, instance, kwargs):
    """-a snapshot_docker_volume NAME [keep=7] [why=...]: snapshot the node's Docker volume
    (tagged Name, class, node, role; `why` ends its description), then delete this node's
    older snapshots beyond `keep`. EC2 completes the snapshot in the background."""
    keep = _whole_number(kwargs, "keep", SNAPSHOTS_KEPT, "snapshot_docker_volume")
    return snapshot_volume(client, instance, keep, str(kwargs.get("why", "snapshot_docker_volume")))


SNAPSHOTS_KEPT = 7


def _stopped(instance, action):
    """Refuses a node that is not stopped: its filesystem would be cut off under it."""
    name, state = node_name(instance), instance["State"]["Name"]
    if state != "stopped":
        raise SaltCloudSystemExit(f"{name} is {state}: {action} needs it stopped first")


@_action
def detach_docker_volume(client, instance, kwargs):
    """-a detach_docker_volume NAME: a stopped node's Docker volume detached, `available` for
    a node of its class to take over (docker_volume_id)."""
    _stopped(instance, "detach_docker_volume")
    volume_id = docker_volume_mapping_of(instance)["Ebs"]["VolumeId"]
    _call(client.detach_volume, VolumeId=volume_id, InstanceId=instance["InstanceId"])
    return {"volume_id": volume_id, "state": _released(client, volume_id)}


def _released(client, volume_id):
    """Waits until the volume is attached to nothing (a detach, or its instance's termination,
    takes a while in EC2); its state then."""

    def state():
        found = _call(client.describe_volumes, VolumeIds=[volume_id])["Volumes"][0]
        return None if found["Attachments"] else found["State"]

    return _poll(state, _setting("instance_wait_timeout"), f"{volume_id} to be detached")


@_action
def attach_docker_volume(client, instance, kwargs):
    """-a attach_docker_volume NAME volume_id=vol-...: a free Docker volume of the node's class
    attached to the stopped node as its Docker volume (a replace's way back)."""
    _stopped(instance, "attach_docker_volume")
    volume_id, device = str(kwargs.get("volume_id")), tag_dict(instance).get(VOLUME_TAG)
    _released(client, volume_id)
    _volume_to_attach(client, {"docker_volume_id": volume_id, "class": tag_dict(instance)["class"]})
    name = node_name(instance)
    _attach(client, volume_id, instance["InstanceId"], device, _setting("instance_wait_timeout"))
    _call(client.create_tags, Resources=[volume_id], Tags=[_tag("Name", name), _tag("node", name)])
    return {"volume_id": volume_id, "device_name": device, "state": "attached"}


def _attach(client, volume_id, iid, device, timeout):
    """AttachVolume, then the instance once EC2 shows the volume attached as ``device``."""
    _call(client.attach_volume, VolumeId=volume_id, InstanceId=iid, Device=device)

    def attached():
        found = _describe(client, [_filter("instance-id", [iid])], raw=True)
        mappings = [m for i in found for m in i.get("BlockDeviceMappings", []) if "Ebs" in m]
        done = any(
            m["DeviceName"] == device and m["Ebs"].get("Status") == "attached" for m in mappings
        )
        return found[0] if done else None

    return _poll(attached, timeout, f"{volume_id} to attach to {iid}")


def snapshot_volume(client, instance, keep, why):
    """A snapshot of the instance's Docker volume, then this node's snapshots beyond the
    newest `keep` deleted."""
    name, volume_id = node_name(instance), docker_volume_mapping_of(instance)["Ebs"]["VolumeId"]
    volume = _call(client.describe_volumes, VolumeIds=[volume_id])["Volumes"][0]
    tags = {
        "Name": f"{name} {VOLUME_TAG}",
        "class": tag_dict(instance).get("class", ""),
        "node": name,
        "role": VOLUME_TAG,
        "data_id": tag_dict(volume).get("data_id", volume_id),
    }
    spec = {"ResourceType": "snapshot", "Tags": [_tag(k, v) for k, v in tags.items()]}
    new = _call(
        client.create_snapshot,
        f"snapshot of {name}'s {volume_id}",
        VolumeId=volume_id,
        Description=f"{name} {VOLUME_TAG}: {why}",
        TagSpecifications=[spec],
    )
    filters = [_filter("tag:node", [name]), _filter("tag:role", [VOLUME_TAG])]
    ours = _call(client.describe_snapshots, OwnerIds=["self"], Filters=filters)["Snapshots"]
    ours = [s for s in ours if s["SnapshotId"] != new["SnapshotId"]]  # maybe not listed yet
    # StartTime may have whole seconds only: within one, the record's order (newest first) wins
    recorded = (_record("get", name) or {}).get("snapshots") or []
    rank = {snapshot_id: len(recorded) - i for i, snapshot_id in enumerate(recorded)}
    ours.sort(key=lambda s: (str(s["StartTime"]), rank.get(s["SnapshotId"], 0)), reverse=True)
    for snapshot in ours[keep - 1 :]:
        _call(client.delete_snapshot, SnapshotId=snapshot["SnapshotId"])
    kept = [new["SnapshotId"], *(s["SnapshotId"] for s in ours[: keep - 1])]
    _record("update", name, snapshots=kept, snapshot_time=time.time())
    pruned = [s["SnapshotId"] for s in ours[keep - 1 :]]
    return {
        "snapshot_id": new["SnapshotId"],
        "volume_id": volume_id,
        "kept": kept,
        "pruned": pruned,
    }


# =========================================================================== the CLI


def _cli_command():
    """The command the driver runs itself: in the salt-cloud CLI's main thread, with one
    boto3_ec2 provider, for a create, destroy, action or node query; else None (salt-cloud's
    core runs it)."""
    opts = __opts__
    query = opts.get("selected_query_option")
    if (
        _PROCESS.cli
        or os.path.basename(sys.argv[0]) != "salt-cloud"
        or multiprocessing.parent_process() is not None
        or threading.current_thread() is not threading.main_thread()
        or len(_aliases()) != 1
        or any(opts.get(k) for k in ("function", "list_images", "list_sizes", "list_locations"))
    ):
        return None
    if query:
        return "query" if query in QUERIES and not opts.get("map") else None
    if opts.get("destroy") or opts.get("action"):
        wanted = opts.get("names") or (opts.get("destroy") and opts.get("map"))
        return ("destroy" if opts.get("destroy") else "action") if wanted else None
    return "create" if (opts.get("profile") and opts.get("names")) or opts.get("map") else None


def _run_cli(command):
    """Run the command, print its result as salt-cloud would, exit with its code."""
    _PROCESS.cli = True
    ret, code = {}, 1
    try:
        ret, code = globals()[f"_cli_{command}"]()
    except _Interrupted as exc:
        ret, code = getattr(exc, "results", {}), 128 + exc.signum
    except (SaltCloudException, OSError) as exc:
        _say(f"Error: {exc}")
    except Exception as exc:  # no raw traceback for the operator: one line, the rest logged
        log.debug("salt-cloud %s failed", command, exc_info=True)
        _say(f"Error: {aws_error_message(exc)}")
    finally:
        _close_events()
    if ret:
        salt.output.display_output(ret, __opts__.get("output"), opts=__opts__)
    sys.stdout.flush()
    raise SystemExit(code)


def _say(line):
    print(line, file=sys.stderr, flush=True)


def _cli_create():
    opts = __opts__
    entries = [(opts["profile"], name, {}) for name in opts.get("names") or []]
    if opts.get("map"):
        entries = map_entries(_render_map(opts["map"]))
    results, failed = _create_run(entries, confirm=opts.get("map") and not opts.get("assume_yes"))
    for name in failed:
        _say(f"Error: {name}: {results[name]['Error']}")
    return results, 1 if failed else 0


def _cli_destroy():
    """-d names (each must have a live node, or a stale record to forget) or -d -m map."""
    opts, alias = __opts__, _aliases()[0]
    names = [n for _, n, _ in map_entries(_render_map(opts["map"]))] if opts.get("map") else []
    results = _destroy_names(names or opts["names"], alias, confirm=not opts.get("assume_yes"))
    absent = [n for n, r in results.items() if r.get("state") == "absent"]
    for name in _forget_absent(absent, alias):
        results[name] = {"state": "absent", "record": "forgotten"}
    problems = {n: r["Error"] for n, r in results.items() if "Error" in r}
    if not opts.get("map"):
        problems.update(
            {n: "no live instance has this name" for n in absent if not results[n].get("record")}
        )
    for name, problem in problems.items():
        _say(f"Error: {name}: {problem}")
    shown = {n: r for n, r in results.items() if r.get("state") != "absent" or r.get("record")}
    return {alias: {__virtualname__: shown}}, 1 if problems else 0


def _cli_action():
    opts, action = __opts__, __opts__["action"]
    if action not in ACTIONS:
        hint = difflib.get_close_matches(action, ACTIONS, n=1)
        raise SaltCloudSystemExit(
            f"boto3_ec2 has no action {action!r}" + (f": did you mean {hint[0]}?" if hint else "")
        )
    kwargs = dict(arg.split("=", 1) for arg in opts["names"] if "=" in arg)
    ret, failed = {}, False
    for name in [arg for arg in opts["names"] if "=" not in arg]:
        try:
            ret[name] = ACTIONS[action](name, kwargs, call="action")
        except SaltCloudException as exc:
            _say(f"Error: {name}: {exc}")
            ret[name], failed = {"Error": str(exc)}, True
    return {_aliases()[0]: {__virtualname__: ret}}, 1 if failed else 0


QUERIES = {
    "list_nodes": lambda: _nodes(None, node_summary),
    "list_nodes_full": lambda: _nodes(None, node_details, True),
    "list_nodes_select": list_nodes_select,
}


def _cli_query():
    return {_aliases()[0]: {__virtualname__: QUERIES[__opts__["selected_query_option"]]()}}, 0


def _render_map(path):
    """The map as salt-cloud renders it (its renderer, e.g. jinja|yaml)."""
    import salt.loader  # noqa: PLC0415  (maps only)
    import salt.template  # noqa: PLC0415

    if not os.path.isfile(path):
        raise SaltCloudConfigError(f"the map file {path!r} does not exist")
    opts, renderer = __opts__, __opts__.get("renderer", "jinja|yaml")
    allowed = (opts.get("renderer_blacklist"), opts.get("renderer_whitelist"))
    rendered = salt.template.compile_template(
        path, salt.loader.render(opts, {}), renderer, *allowed
    )
    if not isinstance(rendered, dict) or not rendered:
        raise SaltCloudConfigError(f"the map {path!r} maps no profile to names")
    return rendered


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


# =========================================================================== create


class _Node:
    """One node of a create run: its config, and what EC2 and the master hold for it."""

    def __init__(self, vm_, settings, conn, request):
        self.vm, self.settings, self.conn, self.request = vm_, settings, conn, request
        self.name = vm_["name"]
        self.deploy = config.get_cloud_config_value("deploy", vm_, __opts__, default=True)
        self.token = self.index = self.instance_id = self.instance = None
        self.result = self.error = None
        self.sent = False  # its RunInstances may have reached EC2
        self.keyed = False  # this run accepted its minion key
        self.named = self.tagged = False  # its instance / volumes carry its name

    @property
    def done(self):
        return self.result is not None or self.error is not None

    def outcome(self):
        return {"Error": self.error} if self.error else self.result


def _create_run(entries, confirm=False):
    """Create (profile, name, overrides) entries: ({name: result}, [failed names])."""
    nodes = _plan([_vm_config(*entry) for entry in _checked_entries(entries)])
    try:
        _create_nodes(nodes, confirm)
    except _Interrupted as exc:
        exc.results = {n.name: n.outcome() for n in nodes}
        raise
    return {n.name: n.outcome() for n in nodes}, [n.name for n in nodes if n.error]


def _checked_entries(entries):
    """Profiles that exist and are ours, each name once: every problem at once."""
    problems, seen, profiles = [], {}, __opts__.get("profiles") or {}
    for profile, name, _ in entries:
        hint = difflib.get_close_matches(str(profile), profiles, n=1)
        if profile not in profiles:
            problems.append(
                f"profile {profile!r} is not defined"
                + (f" (did you mean {hint[0]}?)" if hint else "")
            )
        elif not str(profiles[profile].get("provider")).endswith(f":{__virtualname__}"):
            problems.append(f"profile {profile!r} is not a {__virtualname__} profile")
        if name in seen:
            problems.append(f"{name!r} is listed twice (profiles {seen[name]} and {profile})")
        seen[name] = profile
    _raise_problems(list(dict.fromkeys(problems)))
    return entries


def _vm_config(profile, name, overrides):
    """A node's config as salt-cloud merges it: main cloud config, provider, profile, map."""
    import salt.cloud  # noqa: PLC0415

    details = __opts__["profiles"][profile]
    alias, driver = details["provider"].split(":")
    provider = {k: v for k, v in __opts__["providers"][alias][driver].items() if k != "profiles"}
    main = {}
    with contextlib.suppress(KeyError, OSError), open(__opts__["conf_file"]) as handle:
        main = salt.utils.yaml.safe_load(handle) or {}
    return salt.cloud.Cloud.vm_config(name, main, provider, details, {name: overrides})


def _raise_problems(problems, limit=10):
    if problems:
        more = f"; and {len(problems) - limit} more" if problems[limit:] else ""
        raise SaltCloudConfigError(f"{'; '.join(problems[:limit])}{more}: nothing was created")


def _plan(vms):
    """A _Node per config, every key checked (no EC2 call): every problem once, with the
    nodes it concerns."""
    nodes, problems, model, profile = [], {}, None, "dockerhosts_profile."
    for vm_ in vms:
        provider = _provider_config(str(vm_.get("provider")).split(":")[0])
        conn, found = __utils__[profile + "connection_settings"](provider)
        model = model or (None if found else _client(conn).meta.service_model)
        checked = __utils__[profile + "node_settings"](vm_, provider, None if found else model)
        settings, request, _, more = checked
        for problem in [*_name_problems(vm_), *found, *more, *_deploy_problems(vm_, settings)]:
            text = __utils__[profile + "problems_message"]([problem])
            problems.setdefault(text, []).append(repr(vm_.get("name")))
        nodes.append(_Node(vm_, settings, conn, request))
    _raise_problems([f"{_few(n)}: {t}" if len(vms) > 1 else t for t, n in problems.items()])
    return nodes


def _few(names, limit=3):
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if names[limit:] else "")


def _name_problems(vm_):
    """The node name (= minion id, record key, Name tag) and class, by dockerhosts_names."""
    name, minion_id, problems = vm_.get("name"), _minion_id(vm_), []
    for key, value in (("name", name), ("minion.id", minion_id)):
        problem = __utils__["dockerhosts_names.node_name_problem"](value)
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
    problem = __utils__["dockerhosts_names.class_name_problem"](vm_["class"])
    return [*problems, *([("class", problem)] if problem else [])]


def _minion_id(vm_):
    minion = vm_.get("minion") if isinstance(vm_.get("minion"), dict) else {}
    domain = vm_.get("domain") if vm_.get("use_fqdn") else minion.get("append_domain")
    minion_id = str(minion.get("id", vm_.get("name")))
    return f"{minion_id}.{domain}" if domain else minion_id


def _deploy_problems(vm_, settings):
    problems, key = [], settings.get("private_key")
    if not isinstance(vm_.get("minion") or {}, dict):
        problems.append(("minion", f"must be a mapping, got {vm_['minion']!r}"))
    deploy = config.get_cloud_config_value("deploy", vm_, __opts__, default=True)
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


def _create_nodes(nodes, confirm=False):
    """The run: lock the names, sort out what exists, EC2 reads, launch, finish each node in
    the pool; on a signal or an error, clean up what is unfinished and re-raise."""
    with _name_locks(nodes), _signals() as stopping:
        try:
            groups = _by_connection(nodes)
            for group in groups:
                _sort_out(group)
            if confirm and not _confirmed(nodes):
                return
            for node in [n for n in nodes if not n.done]:
                _fire(node.name, "starting create", "creating", _event_args(node))
            for group in groups:
                _check_launch_inputs(group)
                _launch_all(group)
                _await_running(group)
            _in_pool(_finish, [n for n in nodes if not n.done], _pool_size(), stopping)
            _fail_unfinished(nodes, None)  # those that failed before the pool (races, waits)
        except BaseException as exc:
            stopping.set()
            _fail_unfinished(nodes, exc)
            raise


def _by_connection(nodes):
    groups = {}
    for node in nodes:
        groups.setdefault(tuple(sorted(node.conn.items())), []).append(node)
    return list(groups.values())


def _pool_size():
    """-P: salt-cloud's pool_size, else two per core; without -P one node at a time."""
    if not __opts__.get("parallel"):
        return 1
    return int(__opts__.get("pool_size") or 2 * (os.cpu_count() or 1))


def _confirmed(nodes):
    print("\n".join(f"  {n.name}: {'exists' if n.done else 'to be created'}" for n in nodes))
    if input("Proceed? [N/y] ").lower().startswith("y"):
        return True
    for node in nodes:
        node.result = node.result or {"Message": "not created (not confirmed)"}
    return False


def _sort_out(nodes):
    """Which nodes exist (skipped), which a killed create left (adopted: the record holds its
    launch's client token), which are new: one DescribeInstances per lookup."""
    client = _client(nodes[0].conn)
    live = _by_name(_instances_named(client, [n.name for n in nodes]))
    records = {n.name: _record("get", n.name) or {} for n in nodes}
    unfinished = {n.name for n in nodes if _unfinished(records[n.name])}
    tokens = sorted({records[name]["client_token"] for name in unfinished})
    launched = _describe(client, [_filter("client-token", tokens)], False) if tokens else []
    for node in nodes:
        record = records[node.name]
        mine = (record.get("client_token"), record.get("launch_index", 0))
        found = [
            i
            for i in launched
            if node.name in unfinished
            and i["State"]["Name"] not in GONE
            and (i.get("ClientToken"), i.get("AmiLaunchIndex", 0)) == mine
        ]
        if found:
            _adopt(node, found[0], record)
        elif live.get(node.name):
            ids = ", ".join(f"{i['InstanceId']} ({i['State']['Name']})" for i in live[node.name])
            node.result = {"Message": f"already exists: {ids}"}


def _unfinished(record):
    """A record of this master's create that never finished (its salt-cloud was killed)."""
    record = record or {}
    state, deploy = record.get("state"), record.get("deploy", True)
    return bool(record.get("client_token")) and (
        state == "launching" or (state == "launched" and deploy)
    )


def _adopt(node, instance, record):
    node.token, node.index = record["client_token"], record.get("launch_index", 0)
    node.instance_id, state = instance["InstanceId"], instance["State"]["Name"]
    if state not in ("pending", "running"):
        node.error = (
            f"a create of {node.name} was interrupted and its instance "
            f"{node.instance_id} is {state}: start it (-a start) and run this again, "
            "or destroy it (-d)"
        )
        return
    log.warning(
        "%s: finishing the interrupted create that launched %s (client token %s)",
        node.name,
        node.instance_id,
        node.token,
    )
    node.sent = True


def _check_launch_inputs(nodes):
    """EC2 reads before the first write, once per distinct value: AMI (and a snapshot to
    restore), instance type, key pair, subnet, security groups, a Docker volume to attach."""
    client, checks = _client(nodes[0].conn), {}
    todo = [n for n in nodes if not n.done and not n.instance_id]
    for s in [n.settings for n in todo]:
        checks[("image", s["image"])] = functools.partial(_check_image, client, s)
        what, size = f"'size' {s['size']}", [s["size"]]
        checks[what] = functools.partial(
            _call, client.describe_instance_types, what, InstanceTypes=size
        )
        if s["keyname"]:
            what, keys = f"'keyname' {s['keyname']}", [s["keyname"]]
            checks[what] = functools.partial(_call, client.describe_key_pairs, what, KeyNames=keys)
        checks[_placement_key(s)] = functools.partial(_placement, client, s)
    results = _run_together(checks)
    for node in todo:
        node.request = {**node.request, **results[_placement_key(node.settings)]}


def _placement_key(s):
    return (
        "placement",
        s["subnetid"],
        s["availability_zone"],
        tuple(s["securitygroup"]),
        s["docker_volume_id"],
    )


def _placement(client, s):
    """What EC2 reads settle in the request: security group ids (names resolved in the node's
    VPC: its subnet's, or the default one) and the zone of a Docker volume to attach; the
    subnet's zone checked against them."""
    zone, vpc_id = s["availability_zone"], None
    if s["docker_volume_id"]:
        volume_zone = _volume_to_attach(client, s)
        if zone and zone != volume_zone:
            raise SaltCloudConfigError(
                f"'docker_volume_id' {s['docker_volume_id']} is in "
                f"{volume_zone}, not in 'availability_zone' {zone}"
            )
        zone = volume_zone
    if s["subnetid"]:
        what = f"'subnetid' {s['subnetid']}"
        subnet = _call(client.describe_subnets, what, SubnetIds=[s["subnetid"]])["Subnets"][0]
        if zone and subnet["AvailabilityZone"] != zone:
            raise SaltCloudConfigError(
                f"'availability_zone' {zone} does not hold 'subnetid' "
                f"{s['subnetid']} (it is in {subnet['AvailabilityZone']})"
            )
        vpc_id = subnet["VpcId"]
    ids = [*s["securitygroupid"], *_group_ids(client, s["securitygroup"], vpc_id)]
    return {
        **({"SecurityGroupIds": ids} if ids else {}),
        **({"Placement": {"AvailabilityZone": zone}} if zone else {}),
    }


def _group_ids(client, names, vpc_id):
    if not names:
        return []
    if vpc_id is None:
        vpcs = _call(client.describe_vpcs, Filters=[_filter("isDefault", ["true"])])["Vpcs"]
        if not vpcs:
            raise SaltCloudConfigError(
                "'securitygroup' names need a VPC: set 'subnetid' (this region has no default VPC)"
            )
        vpc_id = vpcs[0]["VpcId"]
    filters = [_filter("group-name", names), _filter("vpc-id", [vpc_id])]
    groups = _call(client.describe_security_groups, Filters=filters)["SecurityGroups"]
    by_name = {group["GroupName"]: group["GroupId"] for group in groups}
    missing = ", ".join(name for name in names if name not in by_name)
    if missing:
        raise SaltCloudSystemExit(f"'securitygroup' {missing}: no such security group in {vpc_id}")
    return [by_name[name] for name in names]


def _volume_to_attach(client, s):
    """The zone of the Docker volume a node takes over: free, and of the node's class."""
    what = f"'docker_volume_id' {s['docker_volume_id']}"
    volume = _call(client.describe_volumes, what, VolumeIds=[s["docker_volume_id"]])["Volumes"][0]
    tags = tag_dict(volume)
    if (tags.get("role"), tags.get("class")) != (VOLUME_TAG, s["class"]):
        raise SaltCloudSystemExit(
            f"{what} is not a Docker volume of class {s['class']} (its tags "
            f"say role={tags.get('role')}, class={tags.get('class')})"
        )
    if volume["State"] != "available":
        raise SaltCloudSystemExit(f"{what} is {volume['State']}: destroy its node first")
    return volume["AvailabilityZone"]


def _check_image(client, s):
    what, ebs = f"'image' {s['image']}", s["block_device_mappings"][-1]["Ebs"]
    images = _call(client.describe_images, what, Filters=[_filter("image-id", [s["image"]])])
    if images["Images"][:1] == [] or images["Images"][0].get("State") not in (None, "available"):
        raise SaltCloudSystemExit(f"{what}: no such AMI available in this region")
    if ebs.get("SnapshotId") and not s["docker_volume_id"]:
        what = f"'docker_volume.Ebs.SnapshotId' {ebs['SnapshotId']}"
        size = _completed(client, what, ebs["SnapshotId"], s["instance_wait_timeout"])["VolumeSize"]
        if ebs.get("VolumeSize", size) < size:
            raise SaltCloudConfigError(
                f"'docker_volume.Ebs.VolumeSize' {ebs['VolumeSize']} is "
                f"smaller than {what} ({size} GiB)"
            )


def _completed(client, what, snapshot_id, timeout):
    """The snapshot once EC2 has completed it (EC2 restores only a completed one; node.replace
    restores one it has just taken)."""

    def completed():
        found = _call(client.describe_snapshots, what, SnapshotIds=[snapshot_id])["Snapshots"][0]
        if found.get("State") == "error":
            raise SaltCloudSystemExit(f"{what} failed in EC2: {found.get('StateMessage')}")
        return found if found.get("State", "completed") == "completed" else None

    return _poll(completed, timeout, f"{what} to complete")


def _launch_all(nodes):
    """RunInstances per group of nodes with the same request; what capacity left short is
    asked for once more, then fails."""
    for last in (False, True):
        groups = {}
        for node in [n for n in nodes if not n.done and not n.instance_id]:
            key = {k: v for k, v in node.request.items() if k != "TagSpecifications"}
            groups.setdefault(repr(sorted(key.items())), []).append(node)
        for group in groups.values():
            for first in range(0, len(group), LAUNCH_BATCH):
                _launch(group[first : first + LAUNCH_BATCH], last)


def _launch(group, last):
    """One RunInstances for a group: the records first (client token, launch index), then the
    launch, then each instance's Name (at launch for one node, right after for a batch)."""
    client, settings, token = _client(group[0].conn), group[0].settings, str(uuid.uuid4())
    for index, node in enumerate(group):
        node.token, node.index, node.sent = token, index, True
        record = {"class": settings["class"], "source": "salt-cloud", "state": "launching"}
        record.update(client_token=token, launch_index=index, deploy=bool(node.deploy))
        record["profile"] = node.vm.get("profile")
        _record("put", node.name, record)
        _fire(node.name, "requesting instance", "requesting", _event_args(node))
    request = dict(group[0].request, ClientToken=token, MaxCount=len(group))
    if len(group) > 1:
        tags = __utils__["dockerhosts_profile.node_tags"](settings, node=False)
        specs = request["TagSpecifications"]
        request["TagSpecifications"] = [{**s, "Tags": t} for s, t in zip(specs, tags, strict=False)]
    log.info("Launching %s (client token %s)", ", ".join(n.name for n in group), token)
    for instance in _run_instances(client, request, group):
        node = group[instance.get("AmiLaunchIndex", 0)]
        node.instance_id, node.named = instance["InstanceId"], len(group) == 1
        node.tagged = node.named and not settings["docker_volume_id"]
    if len(group) > 1:
        _run_together(
            {n.name: functools.partial(_name_instance, client, n) for n in group if n.instance_id}
        )
    for node in [n for n in group if not n.instance_id and not n.error]:
        _record("forget", node.name)
        node.sent = False
        if last:
            got = sum(bool(n.instance_id) for n in group)
            node.error = (
                f"EC2 launched {got} of {len(group)} instances (client token {token}): "
                "no capacity for this one; run it again later"
            )


def _name_instance(client, node):
    _call(client.create_tags, Resources=[node.instance_id], Tags=[_tag("Name", node.name)])
    node.named = True


def _run_instances(client, request, group):
    """The instances RunInstances launched. botocore retries it with the same token; when it
    still fails, EC2 may have launched anyway (a lost answer), unless it refused."""
    try:
        return client.run_instances(**request)["Instances"]
    except AWS_ERRORS as exc:
        error, token = aws_error_message(exc), request["ClientToken"]
        found = _ambiguous(exc) and _launched_by_token(client, token, group)
        if found:
            ids = ", ".join(i["InstanceId"] for i in found)
            log.warning(
                "RunInstances said %s, but EC2 launched %s with this create's client token",
                error,
                ids,
            )
            return found
        lookup = f" (no instance carries client token {token})" if _ambiguous(exc) else ""
        for node in group:
            _record("forget", node.name)
            node.sent, node.error = False, f"EC2 did not launch the instance: {error}{lookup}"
        return []


def _ambiguous(exc):
    """May EC2 have acted on a call that failed? Not when it answered with an error (4xx:
    refused, throttled): only when the answer was lost, or was a server error."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return True
    return (exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 500) >= 500


def _launched_by_token(client, token, nodes, seconds=None):
    """The live instances a client token launched, asked for until cleanup_timeout."""
    seconds = seconds or nodes[0].settings["cleanup_timeout"]

    def lookup():
        found = _describe(client, [_filter("client-token", [token])], False, raw=True)
        return [i for i in found if i["State"]["Name"] not in GONE]

    try:
        return _poll(lookup, seconds, "EC2 to answer a client-token lookup", accept_empty=True)
    except _StillUnreachable as exc:
        raise SaltCloudSystemExit(
            f"RunInstances may have launched instances and EC2 could not be asked for {seconds} "
            f"s ({exc}): look for client token {token} (aws ec2 describe-instances)"
        ) from exc


def _await_running(nodes):
    """One poll for every launched node until each runs (a node that ends fails), a race with
    another master settled, existing Docker volumes attached, Docker volumes tagged."""
    waiting = {n.instance_id: n for n in nodes if n.instance_id and not n.done}
    if not waiting:
        return
    client = _client(nodes[0].conn)

    def all_running():
        for instance in _describe(client, [_filter("instance-id", waiting)], False, raw=True):
            node, state = waiting.get(instance["InstanceId"]), instance["State"]["Name"]
            if node and state == "running":
                node.instance = waiting.pop(instance["InstanceId"]) and instance
            elif node and state in (*GONE, "stopping", "stopped"):
                reason = (instance.get("StateReason") or {}).get("Message", "no reason given")
                waiting.pop(node.instance_id)
                node.error = f"instance {node.instance_id} went {state}: {reason}"
        return not waiting or None

    try:
        timeout = max(n.settings["instance_wait_timeout"] for n in waiting.values())
        _poll(all_running, timeout, "the instances to run", not_found_is_pending=True)
    except (_StillUnreachable, SaltCloudSystemExit) as exc:
        for node in waiting.values():
            node.error = f"waiting for {node.instance_id} to run: {exc}"
    running = [n for n in nodes if n.instance and not n.done]
    _settle_races(client, running)
    for node in [n for n in running if not n.done and n.settings["docker_volume_id"]]:
        _attach_docker_volume(client, node)
    volumes = [_docker_volume_id(n.instance, n.settings) for n in running if not n.done]
    for first in range(0, len(volumes), ID_BATCH):
        batch, tags = volumes[first : first + ID_BATCH], [_tag("role", VOLUME_TAG)]
        _call(client.create_tags, Resources=batch, Tags=tags)


def _settle_races(client, nodes):
    """Two masters (separate locks) may launch one name at once: the earliest launch wins and
    every racer applies the same rule, so exactly one keeps its instance."""
    live = _by_name(_instances_named(client, [n.name for n in nodes]))
    for node in nodes:
        racers = live.get(node.name, [])
        winner = min(racers, key=lambda i: (str(i.get("LaunchTime")), i["InstanceId"]))
        if len(racers) > 1 and winner["InstanceId"] != node.instance_id:
            node.error = (
                f"another salt-cloud launched {node.name!r} first "
                f"({winner['InstanceId']}): this create lost the race and terminates "
                f"its own instance {node.instance_id}"
            )


def _attach_docker_volume(client, node):
    """A node that takes over a Docker volume (`docker_volume_id`): attached as the profile's
    would be, before the deploy."""
    device, volume_id = _docker_device(node.settings), node.settings["docker_volume_id"]
    try:
        timeout = node.settings["instance_wait_timeout"]
        node.instance = _attach(client, volume_id, node.instance_id, device, timeout)
    except (SaltCloudSystemExit, _StillUnreachable) as exc:
        node.error = f"attaching {volume_id}: {exc}"


def _finish(node):
    """A running node: named, recorded, deployed, protected, announced. A failure (or a
    signal) fails this node only; it is cleaned up at once."""
    try:
        _finish_node(node)
    except _Stopped:
        return  # the main thread cleans up
    except Exception as exc:  # one node's failure: report it with its clean-up
        log.debug("Creating %s failed", node.name, exc_info=True)
        node.error = _reason(exc)
        with contextlib.suppress(_Stopped):
            _fail_unfinished([node], exc)


def _data_id(client, settings, volume_id):
    """The id of the data on a node's Docker volume: the id of the volume it began on, which
    the node's disk gate knows it by (its LVM marker). A volume restored from a snapshot gets
    the snapshot's as tag data_id; a volume without the tag began itself."""
    if settings["docker_volume_id"]:
        volume = _call(client.describe_volumes, VolumeIds=[volume_id])["Volumes"][0]
        return tag_dict(volume).get("data_id", volume_id)
    snapshot_id = settings["block_device_mappings"][-1]["Ebs"].get("SnapshotId")
    if not snapshot_id:
        return volume_id
    snapshot = _call(client.describe_snapshots, SnapshotIds=[snapshot_id])["Snapshots"][0]
    data_id = tag_dict(snapshot).get("data_id") or snapshot["VolumeId"]
    _call(client.create_tags, Resources=[volume_id], Tags=[_tag("data_id", data_id)])
    return data_id


def _finish_node(node):
    client, settings, instance = _client(node.conn), node.settings, node.instance
    volume_id, device = _docker_volume_id(instance, settings), _docker_device(settings)
    volumes = [m["Ebs"]["VolumeId"] for m in instance.get("BlockDeviceMappings", []) if "Ebs" in m]
    if not node.named:
        _name_instance(client, node)
    if not node.tagged:  # a batch's, an adopted one's, or one that took over a Docker volume
        tags = [_tag("Name", node.name), _tag("node", node.name), _tag("class", settings["class"])]
        _call(client.create_tags, Resources=volumes, Tags=tags)
    _checkpoint()
    zone = instance.get("Placement", {}).get("AvailabilityZone")
    volume = {"device_name": device, "volume_id": volume_id}
    volume["data_id"] = _data_id(client, settings, volume_id)
    data = [{**volume, "role": VOLUME_TAG}]
    _record(
        "update",
        node.name,
        state="launched",
        instance_id=node.instance_id,
        availability_zone=zone,
        data_volumes=data,
    )
    ret = _deploy(node, client, volume)
    if settings["termination_protection"]:
        _protect(client, node.instance_id, True)
    summary = node_summary(instance)
    node.result = {
        **ret,
        "instance_id": node.instance_id,
        "class": settings["class"],
        VOLUME_TAG: volume,
    }
    node.result.update({k: summary[k] for k in ("private_ips", "public_ips", "state")})
    log.info("Created %s (%s)", node.name, node.instance_id)
    args = {**_event_args(node), "instance_id": node.instance_id}
    _fire(node.name, "created instance", "created", args)


def _event_args(node):
    return {key: node.vm.get(key) for key in ("name", "profile", "provider", "driver")}


def _deploy(node, client, volume):
    """salt-cloud's SSH deploy with the class and Docker volume grains: the key accepted
    first, the record `deployed` with its fingerprint after."""
    vm_, settings = node.vm, node.settings
    vm_["grains"] = {**(vm_.get("grains") or {}), "class": settings["class"], VOLUME_TAG: volume}
    if not node.deploy:
        return {}
    address, endpoint = (
        ssh_address(node.instance, settings["ssh_interface"]),
        client.meta.endpoint_url,
    )
    if is_loopback(urlparse(endpoint).hostname) and not is_loopback(address):
        raise SaltCloudSystemExit(
            f"refusing to SSH to {address}: the EC2 endpoint {endpoint} "
            "is local, so its addresses are not real; put the node in a "
            "127.0.0.0/8 subnet or use --no-deploy"
        )
    if not vm_.get("pub_key"):
        keysize = config.get_cloud_config_value("keysize", vm_, __opts__, default=2048)
        vm_["priv_key"], vm_["pub_key"] = salt.utils.cloud.gen_keys(keysize)
    _checkpoint()
    salt.utils.cloud.accept_key(__opts__["pki_dir"], vm_["pub_key"], node.name)
    node.keyed = True
    # The class follows this key (pillar's class_of): recorded before the minion first asks.
    key = hashlib.sha256(vm_["pub_key"].strip().encode()).hexdigest()
    _record("update", node.name, key=key)
    script = config.get_cloud_config_value("script", vm_, __opts__)
    vm_.update(ssh_host=address, key_filename=settings["private_key"], os=script)
    ret = __utils__["cloud.bootstrap"](vm_, __opts__)
    if "Error" in ret:
        raise SaltCloudSystemExit(f"deploying salt failed: {ret['Error']}")
    _checkpoint()
    _record("update", node.name, state="deployed")
    if not __opts__.get("show_deploy_args"):
        ret.pop("deploy_kwargs", None)
    return ret


def _fail_unfinished(nodes, exc):
    """Clean up every node the run left unfinished: its instance terminated (found by client
    token if its id never came back), its record and key gone; each says what became of it."""
    unfinished = [n for n in nodes if n.result is None and (n.sent or n.keyed)]
    signum = exc.signum if isinstance(exc, _Interrupted) else None
    for group in _by_connection(unfinished):
        outcome = _terminate_launched(group, quick=signum is not None)
        for node in group:
            if node.keyed:
                _remove_key_if(node.name, node.vm.get("pub_key"))
            _record("forget", node.name)
            reason = node.error or (f"interrupted by signal {signum}" if signum else _reason(exc))
            node.error = f"{reason}; {outcome.get(node.name, 'nothing was launched')}"
            node.sent = node.keyed = False
            log.error("Creating %s failed: %s", node.name, node.error)


def _terminate_launched(nodes, quick):
    """{name: what became of its instance}: terminated, retrying through outages until
    cleanup_timeout (quick, after a signal: a few seconds)."""
    client = _client(nodes[0].conn, fresh=True)  # the old one may hold a half-read connection
    timeout = 5 if quick else max(n.settings["cleanup_timeout"] for n in nodes)
    outcome = {}
    for token in {n.token for n in nodes if not n.instance_id}:
        try:
            found = _launched_by_token(client, token, nodes, timeout)
        except SaltCloudSystemExit as exc:
            outcome.update({n.name: str(exc) for n in nodes if n.token == token})
            continue
        for node, instance in [(n, i) for n in nodes for i in found if n.token == token]:
            if instance.get("AmiLaunchIndex", 0) == node.index:
                node.instance_id = instance["InstanceId"]
    ids = {n.instance_id: n.name for n in nodes if n.instance_id}
    try:
        if ids:
            terminate = functools.partial(client.terminate_instances, InstanceIds=list(ids))
            _poll(terminate, timeout, "EC2 to terminate", not_found_is_pending=True)
        outcome.update({name: f"instance {i} was terminated" for i, name in ids.items()})
        for node in [n for n in nodes if n.instance and n.instance_id in ids]:
            outcome[node.name] += _kept_volume_left(client, node)
    except (_StillUnreachable, SaltCloudSystemExit) as exc:
        outcome.update(
            {
                name: f"terminating instance {i} FAILED for {timeout} s ({exc}): it is "
                "still running, terminate it by hand"
                for i, name in ids.items()
            }
        )
    return outcome


def _kept_volume_left(client, node):
    """A new Docker volume that outlives its instance (a data class's) stays after a failed
    create: tagged so that purge_volume takes it, and named with that command."""
    if node.settings["docker_volume_id"] or not keeps_data(node.instance):
        return ""  # no volume, or one taken over: the data, back to its owner
    volume_id = docker_volume_mapping_of(node.instance)["Ebs"]["VolumeId"]
    tags = [_tag("node", node.name), _tag("role", VOLUME_TAG)]
    with contextlib.suppress(*AWS_ERRORS, SaltCloudSystemExit):
        _call(client.create_tags, Resources=[volume_id], Tags=tags)
    purge = f"salt-cloud -f purge_volume {_alias()} volume_id={volume_id}"
    return f"; its Docker volume {volume_id} outlives it (DeleteOnTermination: false): {purge}"


def _reason(exc):
    return str(exc) if isinstance(exc, SaltCloudException) else aws_error_message(exc)


# =========================================================================== destroy


def _destroy_names(names, alias, confirm=False):
    """Terminate the live nodes of these names in one batch, wait once, forget them:
    {name: result}, `state: absent` for a name no live instance has."""
    client = _client(_connection(alias))
    problem = __utils__["dockerhosts_names.node_name_problem"]
    results = {n: {"Error": f"not a node name: {problem(n)}"} for n in names if problem(n)}
    valid = [n for n in names if n not in results]
    found = _by_name(_instances_named(client, valid)) if valid else {}
    results.update({n: {"state": "absent"} for n in valid if n not in found})
    if found and (not confirm or _confirm_destroy(found)):
        results.update(_destroy_found(client, found, alias))
    return results


def _confirm_destroy(found):
    print("The following nodes are set to be destroyed:\n" + "\n".join(f"  {n}" for n in found))
    return input("Proceed? [N/y] ").lower().startswith("y")


def _destroy_found(client, found, alias):
    previous = {name: _record("get", name) for name in found}
    for name in found:
        _record("update", name, state="destroying")
        _fire(name, "destroying instance", "destroying", {"name": name})
    try:
        _before_destroy(sorted(found))
        snapshots = _snapshot_kept_volumes(client, found)
    except SaltCloudSystemExit as exc:
        for name in found:
            _restore_record(name, previous[name])
        return {name: {"Error": f"{exc}: nothing was terminated"} for name in found}
    instances = [i for found_ in found.values() for i in found_]
    spot = [i["SpotInstanceRequestId"] for i in instances if i.get("SpotInstanceRequestId")]
    if spot:  # a persistent spot request would launch the instance again
        _call(client.cancel_spot_instance_requests, SpotInstanceRequestIds=spot)
    protected = _terminate_unprotected(client, [i["InstanceId"] for i in instances])
    terminated = _terminated(
        client, [i["InstanceId"] for i in instances if i["InstanceId"] not in protected]
    )
    results = {
        n: _destroyed(n, i, protected, terminated, alias, snapshots=snapshots)
        for n, i in found.items()
    }
    for name in [n for n, r in results.items() if "Error" in r]:
        _restore_record(name, previous[name])
    _forget_on_master([n for n, r in results.items() if r.get("state") == "terminated"], alias)
    return results


def _snapshot_kept_volumes(client, found):
    """Volume id -> the snapshot taken just before the destroy of each Docker volume that
    outlives its instance (a data class's): the data as it was at the end, whatever later
    becomes of the volume, consistent (the instance stopped first: its database shut down
    cleanly, its filesystems unmounted; one with termination protection is not stopped, it
    stays). A failed stop or snapshot stops the destroy."""
    kept = [
        instance for instances in found.values() for instance in instances if keeps_data(instance)
    ]
    ids = [
        i["InstanceId"]
        for i in kept
        if i["State"]["Name"] != "stopped" and not _protected(client, i["InstanceId"])
    ]
    if ids:  # one stop and one wait for the batch
        _call(client.stop_instances, InstanceIds=ids)

        def all_stopped():
            found = _describe(client, [_filter("instance-id", ids)], False, raw=True)
            return all(i["State"]["Name"] == "stopped" for i in found) or None

        _poll(all_stopped, _setting("instance_wait_timeout"), "the data nodes to stop")
    taken = (snapshot_volume(client, i, SNAPSHOTS_KEPT, "before destroy") for i in kept)
    return {snapshot["volume_id"]: snapshot["snapshot_id"] for snapshot in taken}


def _destroyed(name, instances, protected, terminated, alias, *, snapshots):
    ids = [i["InstanceId"] for i in instances]
    blocked = [i for i in ids if i in protected]
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
            "stopped, before the destroy); delete it with salt-cloud -f purge_volume %s "
            "volume_id=%s",
            name,
            volume["volume_id"],
            volume["availability_zone"],
            volume["snapshot_id"],
            alias,
            volume["volume_id"],
        )
    state = "terminated" if set(ids) <= terminated else "shutting-down"
    return {"instance_ids": ids, "state": state, **({"kept_volumes": kept} if kept else {})}


def _before_destroy(names):
    """One `node.before_destroy <names>` call for the batch (drains swarm members, ...), in
    this process with the master's config and runners: no job, no event, so a stopped master
    is no obstacle; skipped while the master has no such runner."""
    import salt.loader  # noqa: PLC0415  (destroys only)

    opts = _master_opts()
    try:
        runners = salt.loader.runner(opts, utils=salt.loader.utils(opts))
        if "node.before_destroy" not in runners:
            log.info("The master has no node.before_destroy runner: not calling it")
            return
        ret = runners["node.before_destroy"](names)
    except Exception as error:  # one line, not a traceback
        raise SaltCloudSystemExit(f"node.before_destroy failed: {error}") from error
    if ret.get("retcode"):
        raise SaltCloudSystemExit(f"node.before_destroy refused: {ret.get('comment')}")


def _master_opts():
    """The master's config (salt-cloud's cachedir is not the master's), read once."""
    path = os.path.join(os.path.dirname(__opts__["conf_file"]), "master")
    if getattr(_PROCESS, "master_opts", (None,))[0] != path:
        _PROCESS.master_opts = (path, config.master_config(path))
    return _PROCESS.master_opts[1]


def _forget_on_master(names, alias):
    """A terminated node's record, key and the master's cached data for it."""
    if not names:
        return
    import salt.cache  # noqa: PLC0415

    master_cache = salt.cache.factory(_master_opts())
    for name in names:
        _record("forget", name)
        salt.utils.cloud.remove_key(__opts__["pki_dir"], name)
        master_cache.flush(f"minions/{name}")
        if __opts__.get("update_cachedir"):
            __utils__["cloud.delete_minion_cachedir"](name, alias, __opts__)
        _fire(name, "destroyed instance", "destroyed", {"name": name})


def _forget_absent(names, alias):
    """Names no live instance has whose record says they were (a destroy that was killed, an
    instance terminated outside salt-cloud): their record, key and cached data go. A record
    of a launch (in progress, or killed: -p finishes it) stays."""
    stale = [n for n in names if (_record("get", n) or {}).get("state") not in (None, "launching")]
    _forget_on_master(stale, alias)
    return stale


def _restore_record(name, record):
    if record:
        _record("put", name, record)
    else:
        _record("forget", name)


def _terminate_unprotected(client, ids):
    """TerminateInstances; EC2 refuses the whole call for a protected instance and names it:
    leave that one out and ask again. Returns the protected ids."""
    pending, protected = list(ids), set()
    while pending:
        try:
            for first in range(0, len(pending), ID_BATCH):
                _call(client.terminate_instances, InstanceIds=pending[first : first + ID_BATCH])
            break
        except SaltCloudSystemExit as exc:
            refused = protected_instance_id(exc.__cause__, pending)
            if refused is None:
                raise
            pending.remove(refused)
            protected.add(refused)
    return protected


def _terminated(client, ids):
    """The ids EC2 reports terminated, waiting once for all (instance_wait_timeout)."""
    terminated = set()

    def all_done():
        found = _describe(client, [_filter("instance-id", ids)], False, raw=True)
        terminated.update(i["InstanceId"] for i in found if i["State"]["Name"] == "terminated")
        return len(terminated) == len(ids) or None

    if ids:
        try:
            _poll(all_done, _setting("instance_wait_timeout"), "termination")
        except (SaltCloudSystemExit, _StillUnreachable) as exc:
            log.warning("Termination of %s not confirmed: %s", ", ".join(ids), exc)
    return terminated


# =========================================================================== listings, actions


def _nodes(call, summarize, with_volumes=False):
    _require("node listings", call, None, "function")
    client = _client()
    instances = _describe(client)
    volumes = _volumes_of(client, instances) if with_volumes else None
    nodes = {}
    for instance in instances:
        if node_name(instance) in nodes:
            log.warning(
                "Two live instances are named %s: listing %s",
                node_name(instance),
                instance["InstanceId"],
            )
        nodes[node_name(instance)] = (
            summarize(instance, volumes) if with_volumes else summarize(instance)
        )
    return nodes


def _volumes_of(client, instances):
    ids = [
        m["Ebs"]["VolumeId"]
        for i in instances
        for m in i.get("BlockDeviceMappings", [])
        if "Ebs" in m
    ]
    return {
        v["VolumeId"]: v
        for first in range(0, len(ids), ID_BATCH)
        for v in _pages(
            client,
            "describe_volumes",
            "Volumes",
            Filters=[_filter("volume-id", ids[first : first + ID_BATCH])],
        )
    }


def _live_instance(client, name):
    """The one live instance a node name (or an instance id) stands for."""
    if re.fullmatch(r"i-[0-9a-f]+", str(name)):
        found = _describe(client, [_filter("instance-id", [name])])
    else:
        found = _instances_named(client, [name])
    if len(found) != 1:
        ids = ", ".join(i["InstanceId"] for i in found)
        raise SaltCloudSystemExit(
            f"{len(found)} live instances are named {name!r} ({ids})"
            if found
            else f"no live instance named {name!r}"
        )
    return found[0]


def _change_state(client, instance, operation, wanted):
    name, iid = node_name(instance), instance["InstanceId"]
    _call(getattr(client, operation), InstanceIds=[iid])

    def reached():
        found = _describe(client, [_filter("instance-id", [iid])], False, raw=True)
        state = found[0]["State"]["Name"] if found else None
        if state in ("shutting-down", "terminated"):
            raise SaltCloudSystemExit(f"{name} ({iid}) went {state}")
        return state == wanted or None

    _poll(reached, _setting("instance_wait_timeout"), f"{name} to be {wanted}")
    return {"instance_id": iid, "state": wanted}


def _protect(client, instance_id, enabled):
    setting = {"Value": enabled}
    _call(client.modify_instance_attribute, InstanceId=instance_id, DisableApiTermination=setting)
    return {"instance_id": instance_id, "termination_protection": enabled}


def _modification(client, volume_id):
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
    fields = ("ModificationState", "OriginalSize", "TargetSize", "Progress")
    return latest and dict(
        zip(
            ("state", "original_size", "target_size", "progress"),
            (latest.get(f) for f in fields),
            strict=True,
        )
    )


def _whole_number(kwargs, key, default, action):
    raw = str(kwargs.get(key, default))
    if not raw.isdigit() or int(raw) <= 0:
        raise SaltCloudSystemExit(f"{action} needs {key}=<a whole number>, got {raw!r}")
    return int(raw)


def check_growth(volume, size):
    """The volume's current size; refuse shrinking and sizes past the type's maximum."""
    if size < volume["Size"]:
        raise SaltCloudSystemExit(
            f"{volume['VolumeId']} is {volume['Size']} GiB: EBS volumes "
            f"cannot shrink (asked {size})"
        )
    ebs = {"VolumeType": volume.get("VolumeType"), "VolumeSize": size}
    for field, text in __utils__["dockerhosts_profile.ebs_problems"](ebs):
        if field == "VolumeSize":
            raise SaltCloudSystemExit(f"{volume['VolumeId']}: {text}")
    return volume["Size"]


# =========================================================================== EC2 plumbing


class _StillUnreachable(Exception):
    """EC2 kept failing transiently (throttling, 5xx, lost connections) until a deadline."""


class _Interrupted(BaseException):
    """SIGINT or SIGTERM arrived during a create run."""

    def __init__(self, signum):
        super().__init__(f"signal {signum}")
        self.signum = signum


class _Stopped(Exception):
    """The run is stopping (a signal): a pool thread leaves its node to the clean-up."""


def _aliases():
    return [a for a, drivers in __opts__["providers"].items() if __virtualname__ in drivers]


def _alias():
    return (_active_provider() or "").split(":")[0] or _aliases()[0]


def _provider_config(alias=None):
    provider = __opts__["providers"].get(alias or _alias(), {}).get(__virtualname__)
    if provider is None:
        raise SaltCloudSystemExit(f"no {__virtualname__} provider {alias!r} is configured")
    return provider


def _connection(alias=None):
    conn, problems = __utils__["dockerhosts_profile.connection_settings"](_provider_config(alias))
    if problems:
        raise SaltCloudConfigError(__utils__["dockerhosts_profile.problems_message"](problems))
    return conn


def _setting(key):
    return _connection()[key]


def _client(conn=None, fresh=False):
    """A boto3 EC2 client per connection settings, shared by this process's threads (boto3
    clients are thread-safe, sessions are not: both are made under a lock)."""
    conn = conn or _connection()
    names = ("location", "endpoint_url", "id", "key", "aws_profile", "retry_mode", "max_attempts")
    key = (os.getpid(), *(conn.get(name) for name in names))
    with _CLIENTS_LOCK, _translated("connecting to EC2", SaltCloudConfigError):
        if fresh or key not in _PROCESS.clients:
            session = boto3.session.Session(
                aws_access_key_id=conn.get("id"),
                aws_secret_access_key=conn.get("key"),
                profile_name=conn.get("aws_profile"),
                region_name=conn.get("location"),
            )
            # total_max_attempts counts the first attempt (botocore's max_attempts does not).
            retries = {"mode": conn["retry_mode"], "total_max_attempts": conn["max_attempts"]}
            settings = botocore.config.Config(retries=retries, max_pool_connections=32)
            _PROCESS.clients[key] = session.client(
                "ec2", endpoint_url=conn.get("endpoint_url"), config=settings
            )
        return _PROCESS.clients[key]


def _call(function, what=None, **kwargs):
    with _translated(what):
        return function(**kwargs)


@contextlib.contextmanager
def _translated(what, kind=SaltCloudSystemExit):
    """boto3/botocore errors as one line: what failed, with EC2's code and message."""
    try:
        yield
    except AWS_ERRORS as exc:
        raise kind(f"{what}: {aws_error_message(exc)}" if what else aws_error_message(exc)) from exc


def _pages(client, operation, key, **kwargs):
    with _translated(None):
        pages = client.get_paginator(operation).paginate(**kwargs)
        return [item for page in pages for item in page[key]]


def _filter(name, values):
    return {"Name": name, "Values": list(values)}


def _tag(key, value):
    return {"Key": key, "Value": value}


def _describe(client, filters=(), live=True, raw=False):
    """Instances matching filters (live ones unless live=False), all pages; raw: errors as
    botocore raises them (a poll decides what they mean)."""
    filters = [*filters, *([_filter("instance-state-name", LIVE_STATES)] if live else [])]
    with contextlib.nullcontext() if raw else _translated("listing instances"):
        pages = client.get_paginator("describe_instances").paginate(Filters=filters)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def _instances_named(client, names):
    return [
        i
        for first in range(0, len(names), ID_BATCH)
        for i in _describe(client, [_filter("tag:Name", names[first : first + ID_BATCH])])
    ]


def _by_name(instances):
    grouped = {}
    for instance in instances:
        grouped.setdefault(node_name(instance), []).append(instance)
    return grouped


def _poll(check, timeout, what, not_found_is_pending=False, accept_empty=False):
    """check() until it returns something (accept_empty: anything but None); transient EC2
    errors only delay it. The first check at once, then after POLL_DELAYS."""
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
        _checkpoint(delay)
    if last_error is not None:
        raise _StillUnreachable(aws_error_message(last_error))
    raise SaltCloudSystemExit(f"gave up waiting for {what} after {timeout} s")


def _run_together(calls):
    """Independent EC2 calls at once: {key: result}; one error naming every failure."""
    results, errors = {}, []

    def run(item):
        try:
            results[item[0]] = item[1]()
        except SaltCloudException as exc:
            errors.append(exc)

    _in_pool(run, list(calls.items()), 8)
    if errors:
        config_only = all(isinstance(e, SaltCloudConfigError) for e in errors)
        kind = SaltCloudConfigError if config_only else SaltCloudSystemExit
        raise kind("; ".join(str(e) for e in errors))
    return results


def _in_pool(function, items, size, stopping=None):
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


def _checkpoint(delay=0):
    """Sleep `delay` s; in a pool thread, raise _Stopped as soon as the run stops (the main
    thread cleans up, and takes signals while it sleeps)."""
    stopping = _PROCESS.stopping
    if stopping is None or threading.current_thread() is threading.main_thread():
        time.sleep(delay)
    elif stopping.wait(delay):
        raise _Stopped()


@contextlib.contextmanager
def _signals():
    """In the CLI: the first SIGINT/SIGTERM interrupts the run (it cleans up, then ends the
    ssh sessions of unfinished deploys); later ones wait. Yields the run's `stopping` event."""
    stopping = _PROCESS.stopping = threading.Event()
    if not _PROCESS.cli or threading.current_thread() is not threading.main_thread():
        yield stopping
        return
    fired = []

    def interrupt(signum, frame):
        fired.append(signum)
        if len(fired) == 1:
            stopping.set()
            raise _Interrupted(signum)
        log.warning("Signal %s: still cleaning up", signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        if stopping.is_set():
            import psutil  # noqa: PLC0415  (a Salt dependency)

            for child in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.terminate()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


# =========================================================================== the master


def _record(function, name, *args, **fields):
    """The node record (dockerhosts_nodes): get, put, update, forget."""
    if not __opts__.get("pki_dir"):
        return None
    return __utils__[f"dockerhosts_nodes.{function}"](__opts__, name, *args, **fields)


@contextlib.contextmanager
def _name_locks(nodes):
    """A lock per name on this master for a whole create (held while it runs, so a killed
    create leaves none held), taken without waiting: a name another salt-cloud is creating
    refuses the run. Each lock file is removed while held: none stays."""
    directory = os.path.join(__opts__.get("pki_dir") or __opts__["cachedir"], "boto3_ec2_locks")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if len(nodes) + 256 > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    try:
        for node in nodes:
            path = os.path.join(directory, f"{node.name}.lock")
            held.append((path, _lock_file(path)))
            if held[-1][1] is None:
                raise SaltCloudSystemExit(
                    f"{node.name} is being created by another salt-cloud "
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


def _remove_key_if(minion_id, pub_key):
    """Remove minion_id's accepted key if it is still pub_key (this run's)."""
    path = os.path.join(__opts__["pki_dir"], "minions", minion_id)
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as handle:
        if pub_key and handle.read().strip() == pub_key.strip():
            os.remove(path)


def _master_listening():
    """Whether a salt-master answers on its event socket here. A stopped master leaves the
    socket file behind: connect, do not just look (each event would wait out a 1 s timeout)."""
    if __opts__.get("ipc_mode", "ipc") != "ipc":
        return True
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(os.path.join(__opts__["sock_dir"], "master_event_pull.ipc"))
        except OSError:
            return False
    return True


def _fire(name, what, suffix, args):
    """salt/cloud/<name>/<suffix> on the master's bus, as salt-cloud's drivers fire it, over one
    connection per process (threads take turns)."""
    tag = f"salt/cloud/{name}/{suffix}"
    with _EVENTS_LOCK:
        key = (os.getpid(), __opts__["sock_dir"])
        if key not in _PROCESS.events:
            listening = _master_listening()
            if not listening:
                log.info("No salt-master listens on %s: events are not fired", key[1])
            _PROCESS.events[key] = listening and salt.utils.event.get_event(
                "master", key[1], listen=False
            )
        try:
            if _PROCESS.events[key]:
                _PROCESS.events[key].fire_event({**args, "event": what}, tag)
        except Exception as exc:  # an event is news, not part of the job
            log.warning("Could not fire %s: %s", tag, exc)


def _close_events():
    bus = _PROCESS.events.pop((os.getpid(), __opts__.get("sock_dir")), None)
    if bus:
        with contextlib.suppress(Exception):
            bus.destroy()


# =========================================================================== pure helpers


def _require(name, call, *allowed):
    if call not in allowed:
        usage = {"action": f"-a {name} NAME", "function": f"-f {name} PROVIDER"}
        raise SaltCloudSystemExit(f"{name}: salt-cloud {usage.get(allowed[-1], 'listing')}")


def _names(kwargs):
    names = (kwargs or {}).get("names") or []
    return names.split(",") if isinstance(names, str) else list(names)


def protected_instance_id(exc, candidates):
    """The instance EC2 names in an OperationNotPermitted refusal, if it is a candidate."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return None
    error = exc.response.get("Error", {})
    if error.get("Code") != "OperationNotPermitted":
        return None
    found = re.findall(r"i-[0-9a-f]+", error.get("Message", ""))
    return next((i for i in found if i in candidates), None)


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


def _docker_device(settings):
    return settings["block_device_mappings"][-1]["DeviceName"]


def _docker_volume_id(instance, settings):
    for mapping in instance.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == _docker_device(settings) and "Ebs" in mapping:
            return mapping["Ebs"]["VolumeId"]
    raise SaltCloudSystemExit(
        f"instance {instance['InstanceId']} has no volume attached as {_docker_device(settings)}"
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


def aws_error_message(exc):
    """One line from a boto3/botocore error: the AWS error code and its message."""
    if HAS_BOTO3 and isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "request")
        return f"{operation} failed: {error.get('Code', 'Error')}: {error.get('Message', exc)}"
    return f"{type(exc).__name__}: {exc}"
