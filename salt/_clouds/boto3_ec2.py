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

What the driver knows of EC2 (errors, reads, waits, instance facts) is ``dockerhosts_ec2``
(``ec2.`` here); it only drives: entry points, the create and destroy runs, actions.

salt-cloud's core runs one process per node with ``-P`` and ends 0 on most failures; so when
the salt-cloud CLI loads this driver for a create, destroy, action or query, the driver runs
the command itself and exits with its own code (``_run_cli``).
"""

import contextlib
import difflib
import functools
import hashlib
import logging
import multiprocessing
import os
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

    HAS_BOTO3 = True
except ImportError:
    HAS_BOTO3 = False

log = logging.getLogger(__name__)

__virtualname__ = "boto3_ec2"

LAUNCH_BATCH = 100  # instances per RunInstances
SELECTION = ("id", "class", "state", "size", "private_ips", "public_ips")  # -S default
ACTIONS = {}  # name -> function: what -a runs (the @_action functions)

# Per process, outliving salt's loaders (each executes this file anew): boto3 clients by
# connection settings (loading the EC2 model is the slow part), the event bus, CLI state.
_PROCESS = sys.modules.setdefault("_boto3_ec2_process", types.ModuleType("_boto3_ec2_process"))
for _name, _default in (("clients", {}), ("events", {}), ("cli", False), ("stopping", None)):
    if not hasattr(_PROCESS, _name):
        setattr(_PROCESS, _name, _default)
_CLIENTS_LOCK, _EVENTS_LOCK = threading.Lock(), threading.Lock()


class _Utils:
    """A utils module by attribute, through the loader (``__utils__`` lists functions only;
    a function's globals are its module): ``ec2.describe(...)``, ``ec2.VOLUME_TAG``."""

    def __init__(self, module, function):
        self.function = f"{module}.{function}"

    def __getattr__(self, name):
        return __utils__[self.function].__globals__[name]


ec2 = _Utils("dockerhosts_ec2", "describe")  # salt/_utils/dockerhosts_ec2.py
profile_rules = _Utils("dockerhosts_profile", "node_settings")  # salt/_utils/dockerhosts_profile.py


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
    volume = ec2.call(client.describe_volumes, VolumeIds=[volume_id])["Volumes"][0]
    tags, state = ec2.tag_dict(volume), volume["State"]
    if tags.get("role") != ec2.VOLUME_TAG or not tags.get("node"):
        problem = "has no node and role=docker_volume tags: not a node's Docker volume"
    elif state != "available":
        problem = f"is {state} ({', '.join(a['InstanceId'] for a in volume['Attachments'])})"
    else:
        ec2.call(client.delete_volume, VolumeId=volume_id)
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
    [found] = ec2.call(client.describe_subnets, what, SubnetIds=[subnet])["Subnets"]
    return found["AvailabilityZone"]


def list_nodes(call=None):
    """Live instances by Name tag: salt-cloud -Q."""
    return _nodes(call, ec2.node_summary)


def list_nodes_min(call=None):
    return _nodes(call, lambda i: {"id": i["InstanceId"], "state": i["State"]["Name"]})


def list_nodes_full(call=None):
    """Live instances with tags, volumes, IAM profile, security groups: salt-cloud -F."""
    return _nodes(call, ec2.node_details, True)


def list_nodes_select(call=None):
    selection = __opts__.get("query.selection") or SELECTION
    return __utils__["cloud.list_nodes_select"](list_nodes_full("function"), selection, call)


def avail_locations(call=None):
    _require("avail_locations", call, None, "function")
    regions = ec2.call(_client().describe_regions)["Regions"]
    return {r["RegionName"]: {"endpoint": r.get("Endpoint")} for r in regions}


def avail_sizes(call=None):
    _require("avail_sizes", call, None, "function")
    sizes = {}
    for item in ec2.pages(_client(), "describe_instance_types", "InstanceTypes"):
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
    images = ec2.call(_client().describe_images, Owners=["self"])["Images"]
    if ids:
        images += ec2.call(_client().describe_images, ImageIds=sorted(ids))["Images"]
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
        return function(client, ec2.live_instance(client, name), dict(kwargs or {}))

    ACTIONS[function.__name__] = action
    return action


@_action
def show_instance(client, instance, kwargs):
    return ec2.node_details(instance, ec2.volumes_of(client, [instance]))


@_action
def show_volumes(client, instance, kwargs):
    return ec2.node_details(instance, ec2.volumes_of(client, [instance]))["volumes"]


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
            f"{ec2.node_name(instance)} is a spot instance: EC2 cannot protect those"
        )
    return ec2.protect(client, instance["InstanceId"], True)


@_action
def disable_term_protect(client, instance, kwargs):
    return ec2.protect(client, instance["InstanceId"], False)


@_action
def show_term_protect(client, instance, kwargs):
    iid = instance["InstanceId"]
    return {"instance_id": iid, "termination_protection": ec2.protected(client, iid)}


@_action
def docker_volume(client, instance, kwargs):
    """The node's Docker volume: device, id, size, state, last modification."""
    mapping = ec2.docker_volume_mapping_of(instance)
    volume_id = mapping["Ebs"]["VolumeId"]
    info = ec2.volume_summary(ec2.volumes_of(client, [instance]).get(volume_id, {}), mapping)
    return {**info, "modification": ec2.modification(client, volume_id)}


@_action
def grow_docker_volume(client, instance, kwargs):
    """-a grow_docker_volume NAME size=<GiB>: ModifyVolume, then wait until EC2 says
    optimizing or completed (the new size is usable from then). Refuses to shrink."""
    if set(kwargs) - {"size"}:
        raise SaltCloudSystemExit(f"grow_docker_volume takes size=<GiB>, not {sorted(kwargs)}")
    size = ec2.whole_number(kwargs, "size", None, "grow_docker_volume")
    volume_id = ec2.docker_volume_mapping_of(instance)["Ebs"]["VolumeId"]
    old = check_growth(ec2.call(client.describe_volumes, VolumeIds=[volume_id])["Volumes"][0], size)
    if old == size:
        return {"volume_id": volume_id, "size": size, "changed": False}
    ec2.call(client.modify_volume, VolumeId=volume_id, Size=size)

    def settled():
        state = (ec2.modification(client, volume_id) or {}).get("state")
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
    keep = ec2.whole_number(kwargs, "keep", SNAPSHOTS_KEPT, "snapshot_docker_volume")
    return snapshot_volume(client, instance, keep, str(kwargs.get("why", "snapshot_docker_volume")))


SNAPSHOTS_KEPT = 7


def _stopped(instance, action):
    """Refuses a node that is not stopped: its filesystem would be cut off under it."""
    name, state = ec2.node_name(instance), instance["State"]["Name"]
    if state != "stopped":
        raise SaltCloudSystemExit(f"{name} is {state}: {action} needs it stopped first")


@_action
def detach_docker_volume(client, instance, kwargs):
    """-a detach_docker_volume NAME: a stopped node's Docker volume detached, `available` for
    a node of its class to take over (docker_volume_id)."""
    _stopped(instance, "detach_docker_volume")
    volume_id = ec2.docker_volume_mapping_of(instance)["Ebs"]["VolumeId"]
    ec2.call(client.detach_volume, VolumeId=volume_id, InstanceId=instance["InstanceId"])
    return {"volume_id": volume_id, "state": _released(client, volume_id)}


def _released(client, volume_id):
    """Waits until the volume is attached to nothing (a detach, or its instance's termination,
    takes a while in EC2); its state then."""

    def state():
        found = ec2.call(client.describe_volumes, VolumeIds=[volume_id])["Volumes"][0]
        return None if found["Attachments"] else found["State"]

    return _poll(state, _setting("instance_wait_timeout"), f"{volume_id} to be detached")


@_action
def attach_docker_volume(client, instance, kwargs):
    """-a attach_docker_volume NAME volume_id=vol-...: a free Docker volume of the node's class
    attached to the stopped node as its Docker volume (a replace's way back)."""
    _stopped(instance, "attach_docker_volume")
    volume_id, device = str(kwargs.get("volume_id")), ec2.tag_dict(instance).get(ec2.VOLUME_TAG)
    _released(client, volume_id)
    ec2.volume_to_attach(
        client, {"docker_volume_id": volume_id, "class": ec2.tag_dict(instance)["class"]}
    )
    name = ec2.node_name(instance)
    _attach(client, volume_id, instance["InstanceId"], device, _setting("instance_wait_timeout"))
    ec2.call(
        client.create_tags,
        Resources=[volume_id],
        Tags=[ec2.tag("Name", name), ec2.tag("node", name)],
    )
    return {"volume_id": volume_id, "device_name": device, "state": "attached"}


def _attach(client, volume_id, iid, device, timeout):
    """AttachVolume, then the instance once EC2 shows the volume attached as ``device``."""
    ec2.call(client.attach_volume, VolumeId=volume_id, InstanceId=iid, Device=device)

    def attached():
        found = ec2.describe(client, [ec2.where("instance-id", [iid])], raw=True)
        mappings = [m for i in found for m in i.get("BlockDeviceMappings", []) if "Ebs" in m]
        done = any(
            m["DeviceName"] == device and m["Ebs"].get("Status") == "attached" for m in mappings
        )
        return found[0] if done else None

    return _poll(attached, timeout, f"{volume_id} to attach to {iid}")


def snapshot_volume(client, instance, keep, why):
    """ec2.snapshot_volume, in the order the node's record keeps, which it then updates."""
    recorded = (_record("get", node_name := ec2.node_name(instance)) or {}).get("snapshots")
    taken = ec2.snapshot_volume(client, instance, keep, why, recorded or [])
    _record("update", node_name, snapshots=taken["kept"], snapshot_time=time.time())
    return taken


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
        _say(f"Error: {ec2.aws_error_message(exc)}")
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
        entries = ec2.map_entries(ec2.render_map(opts["map"], opts))
    results, failed = _create_run(entries, confirm=opts.get("map") and not opts.get("assume_yes"))
    for name in failed:
        _say(f"Error: {name}: {results[name]['Error']}")
    return results, 1 if failed else 0


def _cli_destroy():
    """-d names (each must have a live node, or a stale record to forget) or -d -m map."""
    opts, alias = __opts__, _aliases()[0]
    names = (
        [n for _, n, _ in ec2.map_entries(ec2.render_map(opts["map"], opts))]
        if opts.get("map")
        else []
    )
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
    "list_nodes": lambda: _nodes(None, ec2.node_summary),
    "list_nodes_full": lambda: _nodes(None, ec2.node_details, True),
    "list_nodes_select": list_nodes_select,
}


def _cli_query():
    return {_aliases()[0]: {__virtualname__: QUERIES[__opts__["selected_query_option"]]()}}, 0


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
    profiles = __opts__.get("profiles") or {}
    _raise_problems(profile_rules.entries_problems(entries, profiles, __virtualname__))
    nodes = _plan([_vm_config(*entry) for entry in entries])
    try:
        _create_nodes(nodes, confirm)
    except _Interrupted as exc:
        exc.results = {n.name: n.outcome() for n in nodes}
        raise
    return {n.name: n.outcome() for n in nodes}, [n.name for n in nodes if n.error]


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


def _plan(vms):
    """A _Node per config, every key checked (no EC2 call): every problem once, with the
    nodes it concerns."""
    nodes, problems, model = [], {}, None
    names = [__utils__[f"dockerhosts_names.{kind}_name_problem"] for kind in ("node", "class")]
    for vm_ in vms:
        provider = _provider_config(str(vm_.get("provider")).split(":")[0])
        conn, found = profile_rules.connection_settings(provider)
        model = model or (None if found else _client(conn).meta.service_model)
        settings, request, _, more = profile_rules.node_settings(
            vm_, provider, None if found else model
        )
        deploy = config.get_cloud_config_value("deploy", vm_, __opts__, default=True)
        more += profile_rules.deploy_problems(vm_, settings, deploy)
        for problem in [*profile_rules.name_problems(vm_, *names), *found, *more]:
            text = profile_rules.problems_message([problem])
            problems.setdefault(text, []).append(vm_.get("name"))
        nodes.append(_Node(vm_, settings, conn, request))
    _raise_problems(profile_rules.run_problems(problems, len(vms)))
    return nodes


def _raise_problems(problems, limit=10):
    if problems:
        more = f"; and {len(problems) - limit} more" if problems[limit:] else ""
        raise SaltCloudConfigError(f"{'; '.join(problems[:limit])}{more}: nothing was created")


def _create_nodes(nodes, confirm=False):
    """The run: lock the names, sort out what exists, EC2 reads, launch, finish each node in
    the pool; on a signal or an error, clean up what is unfinished and re-raise."""
    with ec2.name_locks(_locks_directory(), [n.name for n in nodes]), _signals() as stopping:
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
            ec2.in_pool(_finish, [n for n in nodes if not n.done], _pool_size(), stopping)
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
    live = ec2.by_name(ec2.instances_named(client, [n.name for n in nodes]))
    records = {n.name: _record("get", n.name) or {} for n in nodes}
    unfinished = {n.name for n in nodes if _unfinished(records[n.name])}
    tokens = sorted({records[name]["client_token"] for name in unfinished})
    launched = ec2.describe(client, [ec2.where("client-token", tokens)], False) if tokens else []
    for node in nodes:
        record = records[node.name]
        mine = (record.get("client_token"), record.get("launch_index", 0))
        found = [
            i
            for i in launched
            if node.name in unfinished
            and i["State"]["Name"] not in ec2.GONE
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
            ec2.call, client.describe_instance_types, what, InstanceTypes=size
        )
        if s["keyname"]:
            what, keys = f"'keyname' {s['keyname']}", [s["keyname"]]
            checks[what] = functools.partial(
                ec2.call, client.describe_key_pairs, what, KeyNames=keys
            )
        checks[_placement_key(s)] = functools.partial(ec2.placement, client, s)
    results = ec2.run_together(checks)
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


def _check_image(client, s):
    what, ebs = f"'image' {s['image']}", s["block_device_mappings"][-1]["Ebs"]
    images = ec2.call(client.describe_images, what, Filters=[ec2.where("image-id", [s["image"]])])
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
        found = ec2.call(client.describe_snapshots, what, SnapshotIds=[snapshot_id])["Snapshots"][0]
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
            for batch in ec2.batches(group, LAUNCH_BATCH):
                _launch(batch, last)


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
        tags = profile_rules.node_tags(settings, node=False)
        specs = request["TagSpecifications"]
        request["TagSpecifications"] = [{**s, "Tags": t} for s, t in zip(specs, tags, strict=False)]
    log.info("Launching %s (client token %s)", ", ".join(n.name for n in group), token)
    for instance in _run_instances(client, request, group):
        node = group[instance.get("AmiLaunchIndex", 0)]
        node.instance_id, node.named = instance["InstanceId"], len(group) == 1
        node.tagged = node.named and not settings["docker_volume_id"]
    if len(group) > 1:
        ec2.run_together(
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
    ec2.call(client.create_tags, Resources=[node.instance_id], Tags=[ec2.tag("Name", node.name)])
    node.named = True


def _run_instances(client, request, group):
    """The instances RunInstances launched. botocore retries it with the same token; when it
    still fails, EC2 may have launched anyway (a lost answer), unless it refused."""
    try:
        return client.run_instances(**request)["Instances"]
    except ec2.AWS_ERRORS as exc:
        error, token = ec2.aws_error_message(exc), request["ClientToken"]
        found = ec2.ambiguous(exc) and _launched_by_token(client, token, group)
        if found:
            ids = ", ".join(i["InstanceId"] for i in found)
            log.warning(
                "RunInstances said %s, but EC2 launched %s with this create's client token",
                error,
                ids,
            )
            return found
        lookup = f" (no instance carries client token {token})" if ec2.ambiguous(exc) else ""
        for node in group:
            _record("forget", node.name)
            node.sent, node.error = False, f"EC2 did not launch the instance: {error}{lookup}"
        return []


def _launched_by_token(client, token, nodes, seconds=None):
    """The live instances a client token launched, asked for until cleanup_timeout."""
    seconds = seconds or nodes[0].settings["cleanup_timeout"]

    def lookup():
        found = ec2.describe(client, [ec2.where("client-token", [token])], False, raw=True)
        return [i for i in found if i["State"]["Name"] not in ec2.GONE]

    try:
        return _poll(lookup, seconds, "EC2 to answer a client-token lookup", accept_empty=True)
    except ec2.StillUnreachable as exc:
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
        for instance in ec2.describe(client, [ec2.where("instance-id", waiting)], False, raw=True):
            node, state = waiting.get(instance["InstanceId"]), instance["State"]["Name"]
            if node and state == "running":
                node.instance = waiting.pop(instance["InstanceId"]) and instance
            elif node and state in (*ec2.GONE, "stopping", "stopped"):
                reason = (instance.get("StateReason") or {}).get("Message", "no reason given")
                waiting.pop(node.instance_id)
                node.error = f"instance {node.instance_id} went {state}: {reason}"
        return not waiting or None

    try:
        timeout = max(n.settings["instance_wait_timeout"] for n in waiting.values())
        _poll(all_running, timeout, "the instances to run", not_found_is_pending=True)
    except (ec2.StillUnreachable, SaltCloudSystemExit) as exc:
        for node in waiting.values():
            node.error = f"waiting for {node.instance_id} to run: {exc}"
    running = [n for n in nodes if n.instance and not n.done]
    _settle_races(client, running)
    for node in [n for n in running if not n.done and n.settings["docker_volume_id"]]:
        _attach_docker_volume(client, node)
    volumes = [ec2.docker_volume_id(n.instance, n.settings) for n in running if not n.done]
    for batch in ec2.batches(volumes):
        ec2.call(client.create_tags, Resources=batch, Tags=[ec2.tag("role", ec2.VOLUME_TAG)])


def _settle_races(client, nodes):
    """Two masters (separate locks) may launch one name at once: the earliest launch wins and
    every racer applies the same rule, so exactly one keeps its instance."""
    live = ec2.by_name(ec2.instances_named(client, [n.name for n in nodes]))
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
    device, volume_id = ec2.docker_device(node.settings), node.settings["docker_volume_id"]
    try:
        timeout = node.settings["instance_wait_timeout"]
        node.instance = _attach(client, volume_id, node.instance_id, device, timeout)
    except (SaltCloudSystemExit, ec2.StillUnreachable) as exc:
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


def _finish_node(node):
    client, settings, instance = _client(node.conn), node.settings, node.instance
    volume_id, device = ec2.docker_volume_id(instance, settings), ec2.docker_device(settings)
    volumes = [m["Ebs"]["VolumeId"] for m in instance.get("BlockDeviceMappings", []) if "Ebs" in m]
    if not node.named:
        _name_instance(client, node)
    if not node.tagged:  # a batch's, an adopted one's, or one that took over a Docker volume
        tags = [
            ec2.tag("Name", node.name),
            ec2.tag("node", node.name),
            ec2.tag("class", settings["class"]),
        ]
        ec2.call(client.create_tags, Resources=volumes, Tags=tags)
    _checkpoint()
    zone = instance.get("Placement", {}).get("AvailabilityZone")
    volume = {"device_name": device, "volume_id": volume_id}
    volume["data_id"] = ec2.data_id(client, settings, volume_id)
    data = [{**volume, "role": ec2.VOLUME_TAG}]
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
        ec2.protect(client, node.instance_id, True)
    summary = ec2.node_summary(instance)
    node.result = {
        **ret,
        "instance_id": node.instance_id,
        "class": settings["class"],
        ec2.VOLUME_TAG: volume,
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
    vm_["grains"] = {
        **(vm_.get("grains") or {}),
        "class": settings["class"],
        ec2.VOLUME_TAG: volume,
    }
    if not node.deploy:
        return {}
    address, endpoint = (
        ec2.ssh_address(node.instance, settings["ssh_interface"]),
        client.meta.endpoint_url,
    )
    if ec2.is_loopback(urlparse(endpoint).hostname) and not ec2.is_loopback(address):
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
    except (ec2.StillUnreachable, SaltCloudSystemExit) as exc:
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
    if node.settings["docker_volume_id"] or not ec2.keeps_data(node.instance):
        return ""  # no volume, or one taken over: the data, back to its owner
    volume_id = ec2.docker_volume_mapping_of(node.instance)["Ebs"]["VolumeId"]
    tags = [ec2.tag("node", node.name), ec2.tag("role", ec2.VOLUME_TAG)]
    with contextlib.suppress(*ec2.AWS_ERRORS, SaltCloudSystemExit):
        ec2.call(client.create_tags, Resources=[volume_id], Tags=tags)
    purge = ec2.purge_command(_alias(), volume_id)
    return f"; its Docker volume {volume_id} outlives it (DeleteOnTermination: false): {purge}"


def _reason(exc):
    return str(exc) if isinstance(exc, SaltCloudException) else ec2.aws_error_message(exc)


# =========================================================================== destroy


def _destroy_names(names, alias, confirm=False):
    """Terminate the live nodes of these names in one batch, wait once, forget them:
    {name: result}, `state: absent` for a name no live instance has."""
    client = _client(_connection(alias))
    problem = __utils__["dockerhosts_names.node_name_problem"]
    results = {n: {"Error": f"not a node name: {problem(n)}"} for n in names if problem(n)}
    valid = [n for n in names if n not in results]
    found = ec2.by_name(ec2.instances_named(client, valid)) if valid else {}
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
        ec2.call(client.cancel_spot_instance_requests, SpotInstanceRequestIds=spot)
    protected = ec2.terminate_unprotected(client, [i["InstanceId"] for i in instances])
    terminated = _terminated(
        client, [i["InstanceId"] for i in instances if i["InstanceId"] not in protected]
    )
    results = {
        n: ec2.destroyed(n, i, protected, terminated, alias, snapshots=snapshots)
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
        instance
        for instances in found.values()
        for instance in instances
        if ec2.keeps_data(instance)
    ]
    ids = [
        i["InstanceId"]
        for i in kept
        if i["State"]["Name"] != "stopped" and not ec2.protected(client, i["InstanceId"])
    ]
    if ids:  # one stop and one wait for the batch
        ec2.call(client.stop_instances, InstanceIds=ids)

        def all_stopped():
            found = ec2.describe(client, [ec2.where("instance-id", ids)], False, raw=True)
            return all(i["State"]["Name"] == "stopped" for i in found) or None

        _poll(all_stopped, _setting("instance_wait_timeout"), "the data nodes to stop")
    taken = (snapshot_volume(client, i, SNAPSHOTS_KEPT, "before destroy") for i in kept)
    return {snapshot["volume_id"]: snapshot["snapshot_id"] for snapshot in taken}


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


def _terminated(client, ids):
    """The ids EC2 reports terminated, waiting once for all (instance_wait_timeout)."""
    terminated = set()

    def all_done():
        found = ec2.describe(client, [ec2.where("instance-id", ids)], False, raw=True)
        terminated.update(i["InstanceId"] for i in found if i["State"]["Name"] == "terminated")
        return len(terminated) == len(ids) or None

    if ids:
        try:
            _poll(all_done, _setting("instance_wait_timeout"), "termination")
        except (SaltCloudSystemExit, ec2.StillUnreachable) as exc:
            log.warning("Termination of %s not confirmed: %s", ", ".join(ids), exc)
    return terminated


# =========================================================================== listings, actions


def _nodes(call, summarize, with_volumes=False):
    _require("node listings", call, None, "function")
    client = _client()
    instances = ec2.describe(client)
    volumes = ec2.volumes_of(client, instances) if with_volumes else None
    nodes = {}
    for instance in instances:
        if ec2.node_name(instance) in nodes:
            log.warning(
                "Two live instances are named %s: listing %s",
                ec2.node_name(instance),
                instance["InstanceId"],
            )
        nodes[ec2.node_name(instance)] = (
            summarize(instance, volumes) if with_volumes else summarize(instance)
        )
    return nodes


def _change_state(client, instance, operation, wanted):
    name, iid = ec2.node_name(instance), instance["InstanceId"]
    ec2.call(getattr(client, operation), InstanceIds=[iid])

    def reached():
        found = ec2.describe(client, [ec2.where("instance-id", [iid])], False, raw=True)
        state = found[0]["State"]["Name"] if found else None
        if state in ("shutting-down", "terminated"):
            raise SaltCloudSystemExit(f"{name} ({iid}) went {state}")
        return state == wanted or None

    _poll(reached, _setting("instance_wait_timeout"), f"{name} to be {wanted}")
    return {"instance_id": iid, "state": wanted}


def check_growth(volume, size):
    """The volume's current size; refuse shrinking and sizes past the type's maximum."""
    if size < volume["Size"]:
        raise SaltCloudSystemExit(
            f"{volume['VolumeId']} is {volume['Size']} GiB: EBS volumes "
            f"cannot shrink (asked {size})"
        )
    ebs = {"VolumeType": volume.get("VolumeType"), "VolumeSize": size}
    for field, text in profile_rules.ebs_problems(ebs):
        if field == "VolumeSize":
            raise SaltCloudSystemExit(f"{volume['VolumeId']}: {text}")
    return volume["Size"]


# =========================================================================== EC2 plumbing


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
    conn, problems = profile_rules.connection_settings(_provider_config(alias))
    if problems:
        raise SaltCloudConfigError(profile_rules.problems_message(problems))
    return conn


def _setting(key):
    return _connection()[key]


def _client(conn=None, fresh=False):
    """A boto3 EC2 client per connection settings, shared by this process's threads (boto3
    clients are thread-safe, sessions are not: both are made under a lock)."""
    conn = conn or _connection()
    names = ("location", "endpoint_url", "id", "key", "aws_profile", "retry_mode", "max_attempts")
    key = (os.getpid(), *(conn.get(name) for name in names))
    with _CLIENTS_LOCK, ec2.translated("connecting to EC2", SaltCloudConfigError):
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


def _poll(check, timeout, what, **kwargs):
    """ec2.poll, its sleeps cut short when the run stops (_checkpoint)."""
    return ec2.poll(check, timeout, what, sleep=_checkpoint, **kwargs)


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


# =========================================================================== the master


def _record(function, name, *args, **fields):
    """The node record (dockerhosts_nodes): get, put, update, forget."""
    if not __opts__.get("pki_dir"):
        return None
    return __utils__[f"dockerhosts_nodes.{function}"](__opts__, name, *args, **fields)


def _locks_directory():
    return os.path.join(__opts__.get("pki_dir") or __opts__["cachedir"], "boto3_ec2_locks")


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
