"""
salt-cloud driver for Amazon EC2 on boto3 (``driver: boto3_ec2``), for Salt 3008 (no EC2
driver in core) and 3007. salt-cloud loads it from the repository (``cloud_dirs``).

What it promises (docs/cloud-driver.md has every key, action and fault):

- a create run (``-p profile names``, ``-m map`` with or without ``-P``,
  ``-f create_nodes``) is checked whole before anything is written: names, duplicates,
  profiles, every key (``dockerhosts_profile``), then EC2 reads;
- it runs in one process: one RunInstances per profile (one client token per batch), then
  each node tagged, deployed and recorded by a bounded pool of threads; a node that fails is
  terminated and the others go on; SIGINT/SIGTERM terminate what is unfinished, within
  seconds; every failure ends the command non-zero;
- exactly once: the master's node record (``dockerhosts_nodes``) holds a create's client
  token before its RunInstances, so a create that was killed is found on the next run of the
  name and finished (adopted) rather than taken for an existing node;
- a destroy run terminates its nodes in one batch, waits once and forgets their records,
  keys and cached data itself, with one ``node.before_destroy`` runner call per batch.

salt-cloud's core runs one process per node with ``-P`` and ends 0 on most failures; so when
the salt-cloud CLI loads this driver for a create, destroy or action on its nodes, the driver
runs that command itself and exits with its own code (``_run_cli``). Queries, listings and
``-f`` go through salt-cloud's core.
"""

import contextlib
import contextvars
import difflib
import fcntl
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
POLL_DELAYS = (0.2, 0.5, 1, 2)  # s between polls: the first at once, the last repeated
ID_BATCH = 200  # ids per filter / TerminateInstances
LAUNCH_BATCH = 100  # instances per RunInstances
DEFAULT_QUERY_SELECTION = ("id", "class", "state", "size", "private_ips", "public_ips")
INCOMPLETE = ("launching", "launched")  # record states of a create that has not finished
DOCKER_VOLUME_TAG = "docker_volume"
OLD_DOCKER_VOLUME_TAG = "docker_volume_device"

# Per process: boto3 sessions (the EC2 model load is the slow part) by connection settings.
# salt's loader executes this file anew for every loader it builds, so this lives elsewhere.
_PROCESS = sys.modules.setdefault("_boto3_ec2_process", types.ModuleType("_boto3_ec2_process"))
for _name, _default in (("clients", {}), ("events", {}), ("cli", False)):
    if not hasattr(_PROCESS, _name):
        setattr(_PROCESS, _name, _default)
_LOCK = threading.Lock()  # clients
_EVENTS_LOCK = threading.Lock()


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
    """Create one node from salt-cloud's core (CloudClient, the cloud.profile state)."""
    nodes = _plan([vm_])
    _create_nodes(nodes)
    return _node_result(nodes[0], raise_error=True)


def create_nodes(kwargs=None, call=None):
    """Create nodes of one profile as one batch: salt-cloud -f create_nodes aws
    profile=backends names=web1,web2 (what orch.ensure_class calls)."""
    if call != "function":
        raise SaltCloudSystemExit("create_nodes is called with -f")
    kwargs = kwargs or {}
    names = kwargs.get("names") or []
    names = names.split(",") if isinstance(names, str) else list(names)
    results, failed = _create_run([(kwargs.get("profile"), name, {}) for name in names])
    if failed:
        raise SaltCloudSystemExit("; ".join(f"{n}: {results[n]['Error']}" for n in failed))
    return results


def destroy(name, call=None):
    """Terminate one node (salt-cloud's core: CloudClient, cloud.absent, -a destroy)."""
    if call == "function":
        raise SaltCloudSystemExit("destroy is called with -d or -a destroy")
    return destroy_nodes({"names": [name]}, call="function")[name]


def destroy_nodes(kwargs=None, call=None):
    """Terminate nodes in one batch: salt-cloud -f destroy_nodes aws names=web1,web2."""
    if call != "function":
        raise SaltCloudSystemExit("destroy_nodes is called with -f")
    names = (kwargs or {}).get("names") or []
    names = names.split(",") if isinstance(names, str) else list(names)
    results = _destroy_names(names, _alias())
    errors = [
        f"{n}: {r.get('Error', 'no live instance has this name')}"
        for n, r in results.items()
        if r.get("state") != "terminated"
    ]
    if errors:
        raise SaltCloudSystemExit("; ".join(errors))
    return results


def list_nodes(call=None):
    """Live instances by Name tag: salt-cloud -Q."""
    return _nodes(call, node_summary)


def list_nodes_min(call=None):
    return _nodes(call, lambda i: {"id": i["InstanceId"], "state": i["State"]["Name"]})


def list_nodes_full(call=None):
    """Live instances with tags, volumes, IAM profile, security groups: salt-cloud -F."""
    return _nodes(call, node_details, with_volumes=True)


def list_nodes_select(call=None):
    selection = __opts__.get("query.selection") or DEFAULT_QUERY_SELECTION
    return __utils__["cloud.list_nodes_select"](list_nodes_full("function"), selection, call)


def avail_locations(call=None):
    _refuse_action("avail_locations", call)
    regions = _call("listing regions", _client().describe_regions)["Regions"]
    return {r["RegionName"]: {"endpoint": r.get("Endpoint")} for r in regions}


def avail_sizes(call=None):
    _refuse_action("avail_sizes", call)
    pages = _paginate(_client(), "describe_instance_types", "InstanceTypes")
    return {
        t["InstanceType"]: {
            "vcpus": t.get("VCpuInfo", {}).get("DefaultVCpus"),
            "memory_mib": t.get("MemoryInfo", {}).get("SizeInMiB"),
            "architectures": t.get("ProcessorInfo", {}).get("SupportedArchitectures"),
        }
        for t in sorted(pages, key=lambda t: t["InstanceType"])
    }


def avail_images(call=None):
    """The account's own AMIs plus those this provider's profiles use (not the catalogue)."""
    _refuse_action("avail_images", call)
    client, alias = _client(), _alias()
    images = _call("listing images", client.describe_images, Owners=["self"])["Images"]
    wanted = sorted(
        {
            p["image"]
            for p in __opts__.get("profiles", {}).values()
            if str(p.get("provider", "")).split(":")[0] == alias and p.get("image")
        }
    )
    if wanted:
        filters = [{"Name": "image-id", "Values": wanted}]
        images += _call("listing images", client.describe_images, Filters=filters)["Images"]
    return {
        i["ImageId"]: {k.lower(): i.get(k) for k in ("Name", "Description", "State", "OwnerId")}
        for i in images
    }


# --------------------------------------------------------------------------- actions


def show_instance(name, call=None):
    """Everything -F knows about one node: salt-cloud -a show_instance NAME."""
    _require_action("show_instance", call)
    client = _client()
    instance = _live_instance(client, name)
    return node_details(instance, _volumes_of(client, [instance]))


def stop(name, call=None):
    """Stop a node and wait until it is stopped."""
    _require_action("stop", call)
    return _change_state(name, "stop_instances", "stopped")


def start(name, call=None):
    """Start a stopped node and wait until it runs."""
    _require_action("start", call)
    return _change_state(name, "start_instances", "running")


def reboot(name, call=None):
    """Reboot a node and wait until EC2 reports it running."""
    _require_action("reboot", call)
    return _change_state(name, "reboot_instances", "running")


def enable_term_protect(name, call=None):
    _require_action("enable_term_protect", call)
    return _set_termination_protection(name, True)


def disable_term_protect(name, call=None):
    _require_action("disable_term_protect", call)
    return _set_termination_protection(name, False)


def show_term_protect(name, call=None):
    _require_action("show_term_protect", call)
    client = _client()
    instance_id = _live_instance(client, name)["InstanceId"]
    return {"instance_id": instance_id, "termination_protection": _protected(client, instance_id)}


def show_volumes(name, call=None):
    """The node's EBS volumes by device name."""
    _require_action("show_volumes", call)
    client = _client()
    instance = _live_instance(client, name)
    volumes = _volumes_of(client, [instance])
    return {
        m["DeviceName"]: volume_summary(volumes.get(m["Ebs"]["VolumeId"], {}), m)
        for m in instance.get("BlockDeviceMappings", [])
        if "Ebs" in m
    }


def docker_volume(name, call=None):
    """The node's Docker volume: device, volume, size, state, last modification."""
    _require_action("docker_volume", call)
    client = _client()
    instance = _live_instance(client, name)
    mapping = docker_volume_mapping_of(instance)
    volume_id = mapping["Ebs"]["VolumeId"]
    info = volume_summary(_volumes_of(client, [instance]).get(volume_id, {}), mapping)
    info["modification"] = _latest_modification(client, volume_id)
    return info


def grow_docker_volume(name, kwargs=None, call=None):
    """Grow the Docker volume: salt-cloud -a grow_docker_volume NAME size=<GiB>; waits until
    EC2 reports the modification optimizing or completed. Refuses to shrink."""
    _require_action("grow_docker_volume", call)
    size = _size_argument(kwargs)
    client = _client()
    volume_id = docker_volume_mapping_of(_live_instance(client, name))["Ebs"]["VolumeId"]
    volume = _call(f"describing {volume_id}", client.describe_volumes, VolumeIds=[volume_id])
    old_size = check_growth(volume["Volumes"][0], size)
    if old_size == size:
        return {"volume_id": volume_id, "size": size, "changed": False}
    _call(f"growing {volume_id}", client.modify_volume, VolumeId=volume_id, Size=size)

    def settled():
        modification = _latest_modification(client, volume_id) or {}
        if modification.get("state") == "failed":
            raise SaltCloudSystemExit(f"EC2 failed to grow {volume_id}: {modification}")
        state = modification.get("state")
        return state if state in ("optimizing", "completed") else None

    state = _poll(settled, _provider_setting("instance_wait_timeout"), f"{volume_id} to grow")
    return {"volume_id": volume_id, "old_size": old_size, "size": size, "state": state}


def grow_docker_disk(name, kwargs=None, call=None):
    """The old name of grow_docker_volume: refused, naming the new one."""
    raise SaltCloudSystemExit(
        f"grow_docker_disk was renamed: salt-cloud -a grow_docker_volume {name} size=<GiB>"
    )


# =========================================================================== the CLI


def _cli_command():
    """What this salt-cloud command asks of the driver, when the driver runs it itself: None
    outside the salt-cloud CLI's main thread, for queries, listings, functions, other
    drivers' profiles and when a command is running already."""
    opts = __opts__
    if (
        _PROCESS.cli
        or os.path.basename(sys.argv[0]) != "salt-cloud"
        or multiprocessing.parent_process() is not None
        or threading.current_thread() is not threading.main_thread()
        or opts.get("function")
        or any(opts.get(k) for k in ("list_images", "list_sizes", "list_locations", "bootstrap"))
    ):
        return None
    names = opts.get("names") or []
    if opts.get("selected_query_option"):
        return "query" if opts["selected_query_option"] in QUERIES and not opts.get("map") else None
    if opts.get("destroy"):
        return "destroy" if names or opts.get("map") else None
    if opts.get("action"):
        return "action" if names and not opts.get("map") else None
    if opts.get("profile") and names:
        return "profile"
    return "map" if opts.get("map") else None


def _run_cli(command):
    """Run the command, print its result as salt-cloud would, exit with its code."""
    _PROCESS.cli = True
    ret, code = {}, 0
    try:
        ret, code = globals()[f"_cli_{command}"]()
    except _Interrupted as exc:
        ret, code = getattr(exc, "results", {}), 128 + exc.signum
    except (SaltCloudException, OSError) as exc:
        _say(f"Error: {exc}")
        code = 1
    except Exception as exc:  # no raw traceback for the operator: one line, the rest logged
        log.debug("salt-cloud %s failed", command, exc_info=True)
        _say(f"Error: {aws_error_message(exc)}")
        code = 1
    finally:
        _close_events()
    if ret:
        salt.output.display_output(ret, __opts__.get("output"), opts=__opts__)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    raise SystemExit(code)


QUERIES = {
    "list_nodes": lambda alias: _nodes(None, node_summary, alias=alias),
    "list_nodes_full": lambda alias: _nodes(None, node_details, True, alias),
    "list_nodes_select": lambda alias: __utils__["cloud.list_nodes_select"](
        _nodes(None, node_details, True, alias),
        __opts__.get("query.selection") or DEFAULT_QUERY_SELECTION,
        None,
    ),
}


def _cli_query():
    query = QUERIES[__opts__["selected_query_option"]]
    return {alias: {__virtualname__: query(alias)} for alias in _aliases()}, 0


def _say(line):
    print(line, file=sys.stderr, flush=True)


def _cli_profile():
    opts = __opts__
    return _cli_create_result([(opts["profile"], name, {}) for name in opts["names"]])


def _cli_map():
    entries = map_entries(_render_map(__opts__["map"]))
    return _cli_create_result(entries, confirm=not __opts__.get("assume_yes"))


def _cli_create_result(entries, confirm=False):
    results, failed = _create_run(entries, confirm)
    for name in failed:
        _say(f"Error: {name}: {results[name]['Error']}")
    return results, (1 if failed else 0)


def _cli_destroy():
    """-d names (each must have a live node, or a record to forget) or -d -m map."""
    opts = __opts__
    strict = not opts.get("map")
    names = opts["names"] if strict else [n for _, n, _ in map_entries(_render_map(opts["map"]))]
    ret = {}
    for alias in _aliases():
        results = _destroy_names(names, alias, confirm=not opts.get("assume_yes"))
        names = [n for n, r in results.items() if r.get("state") == "absent"]
        ret[alias] = {__virtualname__: {n: r for n, r in results.items() if n not in names}}
    forgotten = _forget_absent(names, _aliases()[0])
    missing = [n for n in names if n not in forgotten] if strict else []
    ret[_aliases()[0]][__virtualname__].update(
        {n: {"state": "absent", "record": "forgotten"} for n in forgotten}
    )
    errors = [
        (n, r["Error"]) for a in ret.values() for n, r in a[__virtualname__].items() if "Error" in r
    ]
    for name, error in [*errors, *((n, "no live instance has this name") for n in missing)]:
        _say(f"Error: {name}: {error}")
    return ret, (1 if errors or missing else 0)


# The actions -a runs (functions of this module with the same name).
ACTIONS = (
    "show_instance",
    "stop",
    "start",
    "reboot",
    "enable_term_protect",
    "disable_term_protect",
    "show_term_protect",
    "show_volumes",
    "docker_volume",
    "grow_docker_volume",
    "grow_docker_disk",
    "snapshot_docker_volume",
)


def _cli_action():
    opts = __opts__
    action = opts["action"]
    if action not in ACTIONS:
        hint = difflib.get_close_matches(action, ACTIONS, n=1)
        raise SaltCloudSystemExit(
            f"boto3_ec2 has no action {action!r}" + (f": did you mean {hint[0]}?" if hint else "")
        )
    kwargs = dict(arg.split("=", 1) for arg in opts["names"] if "=" in arg)
    names = [arg for arg in opts["names"] if "=" not in arg]
    alias = _aliases()[0]
    ret, failed = {}, False
    for name in names:
        function = globals()[action]
        try:
            args = (name, kwargs) if action.startswith("grow") or kwargs else (name,)
            ret[name] = function(*args, call="action")
        except SaltCloudException as exc:
            _say(f"Error: {name}: {exc}")
            ret[name], failed = {"Error": str(exc)}, True
    return {alias: {__virtualname__: ret}}, (1 if failed else 0)


def _render_map(path):
    """The map as salt-cloud renders it (its renderer, e.g. jinja|yaml)."""
    import salt.loader  # noqa: PLC0415  (maps only)
    import salt.template  # noqa: PLC0415

    if not os.path.isfile(path):
        raise SaltCloudConfigError(f"the map file {path!r} does not exist")
    rendered = salt.template.compile_template(
        path,
        salt.loader.render(__opts__, {}),
        __opts__.get("renderer", "jinja|yaml"),
        __opts__.get("renderer_blacklist"),
        __opts__.get("renderer_whitelist"),
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
            pairs = item.items() if isinstance(item, dict) else [(item, None)]
            for name, overrides in pairs:
                entries.append((profile, name, overrides if isinstance(overrides, dict) else {}))
    return entries


# =========================================================================== create


class _Node:
    """One node of a create run: its config, what EC2 and the master hold for it."""

    def __init__(self, vm_, settings, conn, request):
        self.vm, self.settings, self.conn, self.request = vm_, settings, conn, request
        self.name = vm_["name"]
        self.deploy = config.get_cloud_config_value("deploy", vm_, __opts__, default=True)
        self.token = self.index = self.instance_id = self.instance = None
        self.sent = False  # its RunInstances may have reached EC2
        self.named = self.tagged = False  # its instance / volumes carry its name
        self.keyed = False  # this run accepted its minion key
        self.result = self.error = None

    @property
    def done(self):
        return self.result is not None or self.error is not None


def _create_run(entries, confirm=False):
    """Create (profile, name, overrides) entries: ({name: result}, [failed names])."""
    nodes = _plan([_vm_config(*entry) for entry in _checked_entries(entries)])
    try:
        _create_nodes(nodes, confirm)
    except _Interrupted as exc:
        exc.results = {node.name: _node_result(node) for node in nodes}
        raise
    results = {node.name: _node_result(node) for node in nodes}
    return results, [node.name for node in nodes if node.error]


def _checked_entries(entries):
    """Profiles that exist and are ours, names listed once: every problem at once."""
    problems, seen, profiles = [], {}, __opts__.get("profiles") or {}
    for profile, name, _ in entries:
        if profile not in profiles:
            hint = difflib.get_close_matches(str(profile), profiles, n=1)
            problems.append(
                f"profile {profile!r} is not defined"
                + (f" (did you mean {hint[0]}?)" if hint else "")
            )
        elif str(profiles[profile].get("provider", "")).partition(":")[2] != __virtualname__:
            problems.append(f"profile {profile!r} is not a {__virtualname__} profile")
        if name in seen:
            problems.append(f"{name!r} is listed twice (profiles {seen[name]} and {profile})")
        seen[name] = profile
    _raise_problems(sorted(set(problems), key=problems.index), "nothing was created")
    return entries


def _vm_config(profile, name, overrides):
    """A node's config as salt-cloud merges it: main cloud config, provider, profile, map."""
    import salt.cloud  # noqa: PLC0415

    details = __opts__["profiles"][profile]
    alias, driver = details["provider"].split(":")
    provider = {k: v for k, v in __opts__["providers"][alias][driver].items() if k != "profiles"}
    return salt.cloud.Cloud.vm_config(
        name, _main_cloud_config(), provider, details, {name: overrides}
    )


def _main_cloud_config():
    try:
        with open(__opts__["conf_file"], encoding="utf-8") as handle:
            return salt.utils.yaml.safe_load(handle) or {}
    except (KeyError, OSError):
        return {}


def _raise_problems(problems, outcome, limit=10):
    if problems:
        shown = "; ".join(problems[:limit])
        more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
        raise SaltCloudConfigError(f"{shown}{more}: {outcome}")


def _plan(vms):
    """A _Node per config, every key checked (no EC2 call): all problems at once, each once
    with the nodes it concerns."""
    nodes, problems = [], {}
    model = None
    for vm_ in vms:
        provider = _provider_config(str(vm_.get("provider", "")).split(":")[0])
        conn, conn_problems = __utils__["dockerhosts_profile.connection_settings"](provider)
        if not conn_problems:
            model = model or _client(conn).meta.service_model
        settings, request, _, found = __utils__["dockerhosts_profile.node_settings"](
            vm_, provider, None if conn_problems else model
        )
        found = _name_problems(vm_) + list(conn_problems) + list(found)
        for problem in found + _deploy_problems(vm_, settings):
            text = __utils__["dockerhosts_profile.problems_message"]([problem])
            problems.setdefault(text, []).append(repr(vm_.get("name")))
        nodes.append(_Node(vm_, settings, conn, request))
    _raise_problems(
        [f"{_few(names)}: {text}" if len(vms) > 1 else text for text, names in problems.items()],
        "nothing was created",
    )
    return nodes


def _few(names, limit=3):
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if names[limit:] else "")


def _name_problems(vm_):
    """The node name (= minion id, record key, Name tag) and class, by dockerhosts_names."""
    problems = []
    name_problem = __utils__["dockerhosts_names.node_name_problem"]
    for key, value in (("name", vm_.get("name")), ("minion.id", _minion_id(vm_))):
        problem = name_problem(value)
        if problem:
            problems.append((key, problem))
            break
    if not problems and _minion_id(vm_) != vm_.get("name"):
        problems.append(
            (
                "minion.id",
                f"{_minion_id(vm_)!r} is not the node name "
                f"{vm_.get('name')!r}: a node's minion id is its name",
            )
        )
    if vm_.get("class") is None:
        problems.append(("class", "(node class: use a class profile) is not set"))
    else:
        problem = __utils__["dockerhosts_names.class_name_problem"](vm_["class"])
        if problem:
            problems.append(("class", problem))
    return problems


def _minion_id(vm_):
    minion = vm_.get("minion") or {}
    if not isinstance(minion, dict):
        return vm_.get("name")
    minion_id = str(minion.get("id", vm_.get("name")))
    domain = vm_.get("domain") if vm_.get("use_fqdn") else minion.get("append_domain")
    return f"{minion_id}.{domain}" if domain else minion_id


def _deploy_problems(vm_, settings):
    problems = []
    if not isinstance(vm_.get("minion") or {}, dict):
        problems.append(("minion", f"must be a mapping, got {vm_['minion']!r}"))
    deploy = config.get_cloud_config_value("deploy", vm_, __opts__, default=True)
    key = settings.get("private_key")
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
    """The create run: lock the names, sort out what exists, EC2 reads, launch, finish each
    node in the pool; on a signal, clean up what is unfinished and re-raise."""
    with _name_locks(nodes), _signals() as stopping:
        try:
            by_conn = _by_connection(nodes)
            for conn_nodes in by_conn.values():
                _sort_out(conn_nodes)
            if confirm and not _confirmed(nodes):
                for node in nodes:
                    node.result = node.result or {"Message": "not created (not confirmed)"}
                return
            for node in nodes:
                if not node.done:
                    _fire(node.name, "starting create", "creating", _event_args(node))
            for conn_nodes in by_conn.values():
                _check_launch_inputs(conn_nodes)
            for conn_nodes in by_conn.values():
                _launch_all(conn_nodes)
                _await_running(conn_nodes)
            _tag_docker_volumes([n for n in nodes if n.instance and not n.done])
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
    return groups


def _pool_size():
    """-P: salt-cloud's pool_size, else two per core; without -P one node at a time."""
    if not __opts__.get("parallel"):
        return 1
    return int(__opts__.get("pool_size") or 2 * (os.cpu_count() or 1))


def _confirmed(nodes):
    todo = [n.name for n in nodes if not n.done]
    exist = [n.name for n in nodes if n.done]
    print("\n".join([*(f"  {n} exists" for n in exist), *(f"  {n} is created" for n in todo)]))
    return not todo or input("Proceed? [N/y] ").lower().startswith("y")


def _sort_out(nodes):
    """Which nodes exist (skipped), which a killed create left (adopted: its record holds the
    client token of its launch), which are new. One DescribeInstances per kind of lookup."""
    client = _client(nodes[0].conn)
    live = _by_name(_instances_named(client, [n.name for n in nodes]))
    records = {n.name: _record("get", n.name) for n in nodes}
    unfinished = [n for n in nodes if _unfinished(records[n.name])]
    tokens = sorted({records[n.name]["client_token"] for n in unfinished})
    launched = _describe(client, [{"Name": "client-token", "Values": tokens}]) if tokens else []
    for node in nodes:
        record = records[node.name]
        if node in unfinished:
            found = [
                i
                for i in launched
                if i.get("ClientToken") == record["client_token"]
                and i.get("AmiLaunchIndex", 0) == record.get("launch_index", 0)
            ]
            if found:
                _adopt(node, found[0], record)
                continue
        if live.get(node.name):
            ids = ", ".join(f"{i['InstanceId']} ({i['State']['Name']})" for i in live[node.name])
            node.result = {"Message": f"already exists: {ids}"}


def _unfinished(record):
    """A record of this master's create that never finished (its salt-cloud was killed)."""
    return bool(
        record
        and record.get("state") in INCOMPLETE
        and record.get("client_token")
        and (record["state"] == "launching" or record.get("deploy", True))
    )


def _adopt(node, instance, record):
    state = instance["State"]["Name"]
    node.token, node.index = record["client_token"], record.get("launch_index", 0)
    node.instance_id = instance["InstanceId"]
    if state in ("pending", "running"):
        log.warning(
            "%s: finishing the create that launched %s (client token %s), which was interrupted",
            node.name,
            node.instance_id,
            node.token,
        )
        node.sent = True
        return
    node.error = (
        f"a create of {node.name} was interrupted and its instance {node.instance_id} "
        f"is {state}: start it (salt-cloud -a start {node.name}) and run this again, "
        f"or destroy it (salt-cloud -d {node.name})"
    )


def _check_launch_inputs(nodes):
    """EC2 reads before the first write, once per distinct setting: the AMI, instance type,
    key pair, subnet and security groups."""
    client = _client(nodes[0].conn)
    todo = [n for n in nodes if not n.done and not n.instance_id]
    checks = {}
    for node in todo:
        s = node.settings
        checks[("image", s["image"])] = lambda s=s: _check_image(client, s["image"])
        checks[("size", s["size"])] = lambda s=s: _call(
            f"'size' {s['size']}", client.describe_instance_types, InstanceTypes=[s["size"]]
        )
        if s["keyname"]:
            checks[("keyname", s["keyname"])] = lambda s=s: _call(
                f"'keyname' {s['keyname']}", client.describe_key_pairs, KeyNames=[s["keyname"]]
            )
        groups = (s["subnetid"], s["availability_zone"], tuple(s["securitygroup"]))
        checks[("securitygroup", groups)] = lambda s=s: _security_group_ids(client, s)
    results = _run_together(checks)
    for node in todo:
        s = node.settings
        groups = results[
            ("securitygroup", (s["subnetid"], s["availability_zone"], tuple(s["securitygroup"])))
        ]
        if groups:
            node.request = {**node.request, "SecurityGroupIds": groups}


def _launch_all(nodes):
    """RunInstances per group of nodes with the same request, then what capacity missed
    once more; what is still missing fails."""
    for attempt in (1, 2):
        groups = {}
        for node in nodes:
            if not node.done and not node.instance_id:
                key = repr(
                    sorted((k, v) for k, v in node.request.items() if k != "TagSpecifications")
                )
                groups.setdefault((key, node.settings["class"]), []).append(node)
        for group in groups.values():
            for start_at in range(0, len(group), LAUNCH_BATCH):
                _launch(group[start_at : start_at + LAUNCH_BATCH], last=attempt == 2)


def _launch(group, last):
    """One RunInstances for a group: records first (client token, launch index), then the
    launch, then each instance's Name (right after, or at launch for one node)."""
    client, settings = _client(group[0].conn), group[0].settings
    token = str(uuid.uuid4())
    for index, node in enumerate(group):
        node.token, node.index = token, index
        _record(
            "put",
            node.name,
            {
                "class": settings["class"],
                "source": "salt-cloud",
                "state": "launching",
                "client_token": token,
                "launch_index": index,
                "deploy": bool(node.deploy),
            },
        )
        node.sent = True
        _fire(node.name, "requesting instance", "requesting", _event_args(node))
    request = dict(group[0].request, ClientToken=token, MaxCount=len(group))
    if len(group) > 1:
        request["TagSpecifications"] = [
            {"ResourceType": kind, "Tags": tags}
            for kind, tags in zip(
                ("instance", "volume"),
                __utils__["dockerhosts_profile.node_tags"](settings, node=False),
                strict=True,
            )
        ]
    log.info(
        "Launching %s: %s from %s (client token %s)",
        ", ".join(n.name for n in group),
        settings["size"],
        settings["image"],
        token,
    )
    instances = _run_instances(client, request, group)
    for instance in instances:
        index = instance.get("AmiLaunchIndex", 0)
        if index < len(group):
            group[index].instance_id = instance["InstanceId"]
            group[index].named = group[index].tagged = len(group) == 1
    if len(group) > 1:
        _run_together(
            {n.name: lambda n=n: _name_instance(client, n) for n in group if n.instance_id}
        )
    missing = [n for n in group if not n.instance_id and not n.error]
    for node in missing:
        _record("forget", node.name)
        node.sent = False
        if last:
            node.error = (
                f"EC2 launched {len(group) - len(missing)} of {len(group)} instances "
                f"(client token {token}): no capacity for this one; run it again later"
            )


def _name_instance(client, node):
    _call(
        f"naming {node.instance_id}",
        client.create_tags,
        Resources=[node.instance_id],
        Tags=[{"Key": "Name", "Value": node.name}],
    )
    node.named = True


def _run_instances(client, request, group):
    """The instances RunInstances launched. botocore retries it with the same token; when it
    still fails, EC2 may have launched anyway (a lost answer), unless it refused."""
    try:
        return client.run_instances(**request)["Instances"]
    except AWS_ERRORS as exc:
        error = aws_error_message(exc)
        if not _ambiguous(exc):  # EC2 answered: nothing was launched
            for node in group:
                _record("forget", node.name)
                node.sent, node.error = False, f"EC2 did not launch the instance: {error}"
            return []
        found = _launched_by_token(client, request["ClientToken"], group[0].settings)
        if not found:
            for node in group:
                node.sent, node.error = (
                    False,
                    (
                        f"EC2 did not launch the instance: {error} (no instance carries this "
                        f"create's client token {request['ClientToken']})"
                    ),
                )
                _record("forget", node.name)
        else:
            log.warning(
                "RunInstances reported %s, but EC2 launched %s with this create's client token",
                error,
                ", ".join(i["InstanceId"] for i in found),
            )
        return found


def _ambiguous(exc):
    """May EC2 have acted on a call that failed? Not when it answered with an error (4xx:
    refused, throttled), only when the answer was lost or was a server error."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return True
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 500
    return status >= 500


def _launched_by_token(client, token, settings, seconds=None):
    """The live instances a client token launched; asked until cleanup_timeout."""
    seconds = seconds or settings["cleanup_timeout"]

    def lookup():
        found = _describe(client, [{"Name": "client-token", "Values": [token]}], False, True)
        return [i for i in found if i["State"]["Name"] not in ("shutting-down", "terminated")]

    try:
        return _poll(lookup, seconds, "EC2 to answer a client-token lookup", accept_empty=True)
    except _StillUnreachable as exc:
        raise SaltCloudSystemExit(
            f"RunInstances may have launched instances and EC2 could not be asked for "
            f"{seconds:.0f} s ({exc}): look for client token {token} (aws ec2 "
            f"describe-instances --filters Name=client-token,Values={token})"
        ) from exc


def _await_running(nodes):
    """One poll for every launched node until each runs; a node that ends fails."""
    waiting = {n.instance_id: n for n in nodes if n.instance_id and not n.done}
    if not waiting:
        return
    client = _client(nodes[0].conn)

    def all_running():
        for instance in _describe(
            client, [{"Name": "instance-id", "Values": list(waiting)}], live=False, raw=True
        ):
            node, state = waiting.get(instance["InstanceId"]), instance["State"]["Name"]
            if node and state == "running":
                node.instance = instance
                del waiting[instance["InstanceId"]]
            elif node and state in ("shutting-down", "terminated", "stopping", "stopped"):
                reason = (instance.get("StateReason") or {}).get("Message", "no reason given")
                node.error = f"instance {node.instance_id} went {state}: {reason}"
                del waiting[instance["InstanceId"]]
        return not waiting or None

    timeout = max(n.settings["instance_wait_timeout"] for n in waiting.values())
    try:
        _poll(all_running, timeout, "the instances to run", not_found_is_pending=True)
    except (_StillUnreachable, SaltCloudSystemExit) as exc:
        for node in waiting.values():
            node.error = f"waiting for {node.instance_id} to run: {exc}"
    _settle_races([n for n in nodes if n.instance and not n.done])


def _settle_races(nodes):
    """Two masters (separate locks) may launch one name at once: the earliest launch wins and
    every racer applies the same rule, so exactly one keeps its instance."""
    if not nodes:
        return
    live = _by_name(_instances_named(_client(nodes[0].conn), [n.name for n in nodes]))
    for node in nodes:
        racers = live.get(node.name, [])
        if len(racers) > 1:
            winner = min(racers, key=lambda i: (str(i.get("LaunchTime")), i["InstanceId"]))
            if winner["InstanceId"] != node.instance_id:
                node.error = (
                    f"another salt-cloud launched {node.name!r} first "
                    f"({winner['InstanceId']}): this create lost the race and "
                    f"terminates its own instance {node.instance_id}"
                )


def _tag_docker_volumes(nodes):
    """role=docker_volume on every Docker volume of the run, in one call per connection."""
    for conn_nodes in _by_connection(nodes).values():
        volumes = [_docker_volume_id(n.instance, n.settings) for n in conn_nodes]
        client = _client(conn_nodes[0].conn)
        for start_at in range(0, len(volumes), ID_BATCH):
            _call(
                "tagging Docker volumes",
                client.create_tags,
                Resources=volumes[start_at : start_at + ID_BATCH],
                Tags=[{"Key": "role", "Value": DOCKER_VOLUME_TAG}],
            )


def _finish(node):
    """A running node: volumes named, recorded, deployed, protected, announced. A failure
    (or a signal) fails this node only; the run cleans it up."""
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
    volume_id = _docker_volume_id(instance, settings)
    volumes = [m["Ebs"]["VolumeId"] for m in instance.get("BlockDeviceMappings", []) if "Ebs" in m]
    if not node.named:
        _name_instance(client, node)
    if not node.tagged:
        _call(
            f"tagging the volumes of {node.name}",
            client.create_tags,
            Resources=volumes,
            Tags=[{"Key": "Name", "Value": node.name}, {"Key": "node", "Value": node.name}],
        )
    device = settings["block_device_mappings"][-1]["DeviceName"]
    _checkpoint()
    _record(
        "update",
        node.name,
        state="launched",
        instance_id=node.instance_id,
        availability_zone=instance.get("Placement", {}).get("AvailabilityZone"),
        data_volumes=[{"volume_id": volume_id, "device_name": device, "role": DOCKER_VOLUME_TAG}],
    )
    _legacy_class_entry(node.name, settings["class"])
    ret = _deploy(node, client, {"device_name": device, "volume_id": volume_id})
    if settings["termination_protection"]:
        _call(
            f"protecting {node.instance_id}",
            client.modify_instance_attribute,
            InstanceId=node.instance_id,
            DisableApiTermination={"Value": True},
        )
    node.result = {**ret, **create_result(instance, settings, volume_id)}
    log.info("Created %s (%s)", node.name, node.instance_id)
    _fire(
        node.name,
        "created instance",
        "created",
        {**_event_args(node), "instance_id": node.instance_id},
    )


def _event_args(node):
    return {key: node.vm.get(key) for key in ("name", "profile", "provider", "driver")}


def _deploy(node, client, volume):
    """salt-cloud's SSH deploy with the class and Docker volume grains; the key accepted
    first, the record `deployed` with its fingerprint after."""
    vm_ = node.vm
    vm_["grains"] = {
        **(vm_.get("grains") or {}),
        "class": node.settings["class"],
        DOCKER_VOLUME_TAG: volume,
    }
    vm_["instance_id"] = node.instance_id
    if not node.deploy:
        return {}
    address = ssh_address(node.instance, node.settings["ssh_interface"])
    endpoint = client.meta.endpoint_url
    if is_loopback(urlparse(endpoint).hostname) and not is_loopback(address):
        raise SaltCloudSystemExit(
            f"refusing to SSH to {address}: the EC2 endpoint {endpoint} is local, so its "
            "addresses are not real; put the node in a 127.0.0.0/8 subnet or use --no-deploy"
        )
    if not vm_.get("pub_key"):
        keysize = config.get_cloud_config_value("keysize", vm_, __opts__, default=2048)
        vm_["priv_key"], vm_["pub_key"] = salt.utils.cloud.gen_keys(keysize)
    _checkpoint()
    salt.utils.cloud.accept_key(__opts__["pki_dir"], vm_["pub_key"], node.name)
    node.keyed = True
    vm_.update(
        ssh_host=address,
        key_filename=node.settings["private_key"],
        os=config.get_cloud_config_value("script", vm_, __opts__),
    )
    ret = __utils__["cloud.bootstrap"](vm_, __opts__)
    if "Error" in ret:
        raise SaltCloudSystemExit(f"deploying salt failed: {ret['Error']}")
    _checkpoint()
    fingerprint = hashlib.sha256(vm_["pub_key"].strip().encode()).hexdigest()
    _record("update", node.name, state="deployed", key=fingerprint)
    if not __opts__.get("show_deploy_args"):
        ret.pop("deploy_kwargs", None)
    return ret


def _fail_unfinished(nodes, exc):
    """Clean up every node the run had not finished: its instance terminated (found by client
    token if its id never arrived), its record and key gone; each says what became of it."""
    unfinished = [n for n in nodes if n.result is None and (n.sent or n.keyed)]
    signum = exc.signum if isinstance(exc, _Interrupted) else None
    for conn_nodes in _by_connection(unfinished).values():
        outcome = _terminate_launched(conn_nodes, quick=signum is not None)
        for node in conn_nodes:
            if node.keyed:
                _remove_key_if(node.name, node.vm.get("pub_key"))
            _record("forget", node.name)
            _legacy_class_entry(node.name)
            reason = node.error or (f"interrupted by signal {signum}" if signum else _reason(exc))
            node.error = f"{reason}; {outcome.get(node.name, 'nothing was launched')}"
            node.sent = node.keyed = False
            log.error("Creating %s failed: %s", node.name, node.error)


def _terminate_launched(nodes, quick):
    """{name: what became of its instance}: terminated, retrying through outages for
    cleanup_timeout (quick, after a signal: one try, no wait)."""
    client = _client(nodes[0].conn, fresh=True)  # the old one may hold a half-read connection
    timeout = 5 if quick else max(n.settings["cleanup_timeout"] for n in nodes)
    outcome = {}
    for token in {n.token for n in nodes if n.sent and not n.instance_id and n.token}:
        try:
            found = _launched_by_token(client, token, nodes[0].settings, seconds=timeout)
        except SaltCloudSystemExit as exc:
            outcome.update({n.name: str(exc) for n in nodes if n.token == token})
            continue
        for node in nodes:
            for instance in found:
                if node.token == token and instance.get("AmiLaunchIndex", 0) == node.index:
                    node.instance_id = instance["InstanceId"]
    ids = {n.instance_id: n.name for n in nodes if n.instance_id}
    if not ids:
        return outcome
    try:
        _poll(
            lambda: client.terminate_instances(InstanceIds=list(ids)) and True,
            timeout,
            f"EC2 to terminate {', '.join(ids)}",
            not_found_is_pending=True,
        )
        outcome.update({name: f"instance {i} was terminated" for i, name in ids.items()})
    except (_StillUnreachable, SaltCloudSystemExit) as exc:
        outcome.update(
            {
                name: f"terminating instance {i} FAILED for {timeout} s ({exc}): it is still "
                "running, terminate it by hand"
                for i, name in ids.items()
            }
        )
    return outcome


def _reason(exc):
    return str(exc) if isinstance(exc, SaltCloudException) else aws_error_message(exc)


def _node_result(node, raise_error=False):
    if node.error and raise_error:
        raise SaltCloudSystemExit(f"{node.name}: {node.error}")
    return {"Error": node.error} if node.error else node.result


# =========================================================================== destroy


def _destroy_names(names, alias, confirm=False):
    """Terminate the live nodes of these names in one batch, wait once, forget them:
    {name: result}, `state: absent` for a name no live instance has."""
    client = _client(_connection(alias))
    name_problem = __utils__["dockerhosts_names.node_name_problem"]
    results = {
        n: {"Error": f"not a node name: {name_problem(n)}"} for n in names if name_problem(n)
    }
    valid = [n for n in names if n not in results]
    found = _by_name(_instances_named(client, valid)) if valid else {}
    results.update({n: {"state": "absent"} for n in valid if n not in found})
    if found and (not confirm or _confirm_destroy(found)):
        results.update(_destroy_found(client, found, alias))
    return results


def _destroy_found(client, found, alias):
    previous = {name: _record("get", name) for name in found}
    for name in found:
        _record("update", name, state="destroying")
        _fire(name, "destroying instance", "destroying", {"name": name})
    try:
        _before_destroy(sorted(found))
    except SaltCloudSystemExit as exc:
        for name in found:
            _restore_record(name, previous[name])
        return {name: {"Error": f"{exc}: nothing was terminated"} for name in found}
    instances = [i for found_ in found.values() for i in found_]
    _cancel_spot_requests(client, instances)
    protected = _terminate_unprotected(client, [i["InstanceId"] for i in instances])
    terminated = _terminated(
        client, [i["InstanceId"] for i in instances if i["InstanceId"] not in protected]
    )
    results = {}
    for name, instances_ in found.items():
        results[name] = _destroyed(name, instances_, protected, terminated, alias)
        if "Error" in results[name]:
            _restore_record(name, previous[name])
    _forget_on_master([n for n, r in results.items() if r.get("state") == "terminated"], alias)
    return results


def _forget_absent(names, alias):
    """Names no live instance has whose record says they were (a destroy that was killed, an
    instance terminated outside salt-cloud): their record, key and cached data go. A record
    of a launch in progress (or killed: -p finishes it) stays."""
    stale = [n for n in names if (_record("get", n) or {}).get("state") not in (None, "launching")]
    _forget_on_master(stale, alias)
    return stale


def _confirm_destroy(found):
    print("The following nodes are set to be destroyed:\n" + "\n".join(f"  {n}" for n in found))
    return input("Proceed? [N/y] ").lower().startswith("y")


def _destroyed(name, instances, protected, terminated, alias):
    ids = [i["InstanceId"] for i in instances]
    blocked = [i for i in ids if i in protected]
    if blocked:
        return {
            "Error": f"{name} ({', '.join(blocked)}) has termination protection and was "
            f"not destroyed: run `salt-cloud -a disable_term_protect {name}` first"
        }
    kept = [
        {
            "volume_id": m["Ebs"]["VolumeId"],
            "device_name": m["DeviceName"],
            "availability_zone": i.get("Placement", {}).get("AvailabilityZone"),
        }
        for i in instances
        for m in i.get("BlockDeviceMappings", [])
        if "Ebs" in m and not m["Ebs"].get("DeleteOnTermination", True)
    ]
    for volume in kept:
        log.warning(
            "%s: kept its volume %s (%s, DeleteOnTermination false); delete it with "
            "salt-cloud -f purge_volume %s volume_id=%s",
            name,
            volume["volume_id"],
            volume["availability_zone"],
            alias,
            volume["volume_id"],
        )
    state = "terminated" if all(i in terminated for i in ids) else "shutting-down"
    return {"instance_ids": ids, "state": state, **({"kept_volumes": kept} if kept else {})}


def _before_destroy(names):
    """One `node.before_destroy <names>` runner call for the batch (drains swarm members,
    ...), on this master's config; skipped while the master has no such runner."""
    import salt.runner  # noqa: PLC0415  (destroys only)

    runner = salt.runner.RunnerClient(_master_opts())
    try:
        if "node.before_destroy" not in runner.functions:
            log.info("The master has no node.before_destroy runner: not calling it")
            return
        data = runner.cmd("node.before_destroy", [names], print_event=False, full_return=True)
    finally:
        getattr(runner, "destroy", lambda: None)()
    if not data.get("success", True):
        raise SaltCloudSystemExit(f"node.before_destroy refused: {data.get('return')}")


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
        _legacy_class_entry(name)
        salt.utils.cloud.remove_key(__opts__["pki_dir"], name)
        master_cache.flush(f"minions/{name}")
        if __opts__.get("update_cachedir"):
            __utils__["cloud.delete_minion_cachedir"](name, alias, __opts__)
        _fire(name, "destroyed instance", "destroyed", {"name": name})


def _restore_record(name, record):
    if record:
        _record("put", name, record)
    else:
        _record("forget", name)


def _cancel_spot_requests(client, instances):
    """A persistent spot request would relaunch a terminated instance: cancel it first."""
    requests = [i["SpotInstanceRequestId"] for i in instances if i.get("SpotInstanceRequestId")]
    if requests:
        _call(
            "cancelling spot requests",
            client.cancel_spot_instance_requests,
            SpotInstanceRequestIds=requests,
        )


def _terminate_unprotected(client, ids):
    """TerminateInstances; EC2 refuses the whole call for a protected instance and names it:
    leave that one out and ask again. Returns the protected ids."""
    pending, protected = list(ids), set()
    while pending:
        try:
            for start_at in range(0, len(pending), ID_BATCH):
                _call(
                    "terminating",
                    client.terminate_instances,
                    InstanceIds=pending[start_at : start_at + ID_BATCH],
                )
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
        found = _describe(client, [{"Name": "instance-id", "Values": ids}], False, True)
        terminated.update(i["InstanceId"] for i in found if i["State"]["Name"] == "terminated")
        return len(terminated) == len(ids) or None

    if ids:
        try:
            _poll(all_done, _provider_setting("instance_wait_timeout"), "termination")
        except (SaltCloudSystemExit, _StillUnreachable) as exc:
            log.warning("Termination of %s not confirmed: %s", ", ".join(ids), exc)
    return terminated


# =========================================================================== node listings, actions


def _nodes(call, summarize, with_volumes=False, alias=None):
    if call == "action":
        raise SaltCloudSystemExit("node listings are called with -Q, -F, -S or -f")
    client = _client(_connection(alias))
    instances = _describe(client)
    volumes = _volumes_of(client, instances) if with_volumes else None
    nodes = {}
    for instance in instances:
        name = node_name(instance)
        if name in nodes:
            log.warning("Two live instances are named %s; listing %s", name, instance["InstanceId"])
        nodes[name] = summarize(instance, volumes) if with_volumes else summarize(instance)
    return nodes


def _volumes_of(client, instances):
    ids = [
        m["Ebs"]["VolumeId"]
        for i in instances
        for m in i.get("BlockDeviceMappings", [])
        if "Ebs" in m
    ]
    volumes = {}
    for start_at in range(0, len(ids), ID_BATCH):
        filters = [{"Name": "volume-id", "Values": ids[start_at : start_at + ID_BATCH]}]
        for volume in _paginate(client, "describe_volumes", "Volumes", Filters=filters):
            volumes[volume["VolumeId"]] = volume
    return volumes


def _live_instance(client, name):
    """The one live instance a node name (or an instance id) stands for."""
    if re.fullmatch(r"i-[0-9a-f]+", str(name)):
        found = _describe(client, [{"Name": "instance-id", "Values": [name]}])
    else:
        found = _instances_named(client, [name])
    if not found:
        raise SaltCloudSystemExit(f"no live instance named {name!r}")
    if len(found) > 1:
        ids = ", ".join(i["InstanceId"] for i in found)
        raise SaltCloudSystemExit(f"{len(found)} live instances are named {name!r} ({ids})")
    return found[0]


def _change_state(name, operation, wanted):
    client = _client()
    instance_id = _live_instance(client, name)["InstanceId"]
    _call(f"{operation} {instance_id}", getattr(client, operation), InstanceIds=[instance_id])

    def reached():
        found = _describe(client, [{"Name": "instance-id", "Values": [instance_id]}], False, True)
        state = found[0]["State"]["Name"] if found else None
        if state in ("shutting-down", "terminated"):
            raise SaltCloudSystemExit(f"{name} ({instance_id}) went {state}")
        return state == wanted or None

    _poll(reached, _provider_setting("instance_wait_timeout"), f"{name} to be {wanted}")
    return {"instance_id": instance_id, "state": wanted}


def _set_termination_protection(name, enabled):
    client = _client()
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
    modifications = sorted(found["VolumesModifications"], key=lambda m: str(m.get("StartTime")))
    if not modifications:
        return None
    latest = modifications[-1]
    return {
        "state": latest.get("ModificationState"),
        "original_size": latest.get("OriginalSize"),
        "target_size": latest.get("TargetSize"),
        "progress": latest.get("Progress"),
    }


def _size_argument(kwargs):
    kwargs = dict(kwargs or {})
    if set(kwargs) - {"size"}:
        raise SaltCloudSystemExit(
            f"grow_docker_volume takes only size=<GiB>, not {sorted(set(kwargs) - {'size'})}"
        )
    raw = str(kwargs.get("size"))
    if not raw.isdigit() or int(raw) <= 0:
        raise SaltCloudSystemExit(
            f"grow_docker_volume needs size=<GiB> (a whole number), got {kwargs.get('size')!r}"
        )
    return int(raw)


def check_growth(volume, size):
    """The volume's current size; refuse shrinking and sizes past the type's maximum."""
    current, volume_type = volume["Size"], volume.get("VolumeType")
    if size < current:
        raise SaltCloudSystemExit(
            f"{volume['VolumeId']} is {current} GiB: EBS volumes cannot shrink (asked {size})"
        )
    problems = __utils__["dockerhosts_profile.ebs_problems"](
        {"VolumeType": volume_type, "VolumeSize": size}
    )
    for field, text in problems:
        if field == "VolumeSize":
            raise SaltCloudSystemExit(f"{volume['VolumeId']}: {text}")
    return current


# =========================================================================== EC2 plumbing


class _StillUnreachable(Exception):
    """EC2 kept failing transiently (throttling, 5xx, lost connections) until a deadline."""


class _Interrupted(BaseException):
    """SIGINT or SIGTERM arrived during a create run."""

    def __init__(self, signum):
        super().__init__(f"signal {signum}")
        self.signum = signum


class _Stopped(Exception):
    """The run is stopping (a signal): a pool thread gives up its node."""


def _aliases():
    return [a for a, drivers in __opts__["providers"].items() if __virtualname__ in drivers]


def _alias():
    return (_active_provider() or "").split(":")[0] or _aliases()[0]


def _provider_config(alias=None):
    alias = alias or _alias()
    provider = __opts__["providers"].get(alias, {}).get(__virtualname__)
    if provider is None:
        raise SaltCloudSystemExit(
            f"provider {alias!r} is not a configured {__virtualname__} provider"
        )
    return provider


def _connection(alias=None):
    conn, problems = __utils__["dockerhosts_profile.connection_settings"](_provider_config(alias))
    if problems:
        raise SaltCloudConfigError(__utils__["dockerhosts_profile.problems_message"](problems))
    return conn


def _provider_setting(key):
    return _connection()[key]


def _client(conn=None, fresh=False):
    """A boto3 EC2 client per connection settings, shared by this process's threads (boto3
    clients are thread-safe, sessions are not: both are made under a lock)."""
    conn = conn or _connection()
    key = (
        os.getpid(),
        *(
            conn.get(k)
            for k in (
                "location",
                "endpoint_url",
                "id",
                "key",
                "aws_profile",
                "retry_mode",
                "max_attempts",
            )
        ),
    )
    with _LOCK, _translated("connecting to EC2", SaltCloudConfigError):
        if fresh or key not in _PROCESS.clients:
            session = boto3.session.Session(
                aws_access_key_id=conn.get("id"),
                aws_secret_access_key=conn.get("key"),
                profile_name=conn.get("aws_profile"),
                region_name=conn.get("location"),
            )
            # total_max_attempts counts the first attempt (botocore's max_attempts does not).
            retries = {"mode": conn["retry_mode"], "total_max_attempts": conn["max_attempts"]}
            _PROCESS.clients[key] = session.client(
                "ec2",
                endpoint_url=conn.get("endpoint_url"),
                config=botocore.config.Config(retries=retries, max_pool_connections=32),
            )
        return _PROCESS.clients[key]


def _call(what, function, **kwargs):
    with _translated(what):
        return function(**kwargs)


@contextlib.contextmanager
def _translated(what, kind=SaltCloudSystemExit):
    """boto3/botocore errors as one line: what failed, and EC2's code and message."""
    try:
        yield
    except AWS_ERRORS as exc:
        raise kind(f"{what}: {aws_error_message(exc)}") from exc


def _paginate(client, operation, key, **kwargs):
    with _translated(operation):
        return [
            item
            for page in client.get_paginator(operation).paginate(**kwargs)
            for item in page[key]
        ]


def _describe(client, filters=(), live=True, raw=False):
    """Instances matching filters (live ones unless live=False), all pages; raw: errors as
    botocore raises them (a poll decides what they mean)."""
    filters = list(filters)
    if live:
        filters.append({"Name": "instance-state-name", "Values": list(LIVE_STATES)})
    try:
        pages = client.get_paginator("describe_instances").paginate(Filters=filters)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
    except AWS_ERRORS as exc:
        if raw:
            raise
        raise SaltCloudSystemExit(f"listing instances: {aws_error_message(exc)}") from exc


def _instances_named(client, names):
    return [
        instance
        for start_at in range(0, len(names), ID_BATCH)
        for instance in _describe(
            client, [{"Name": "tag:Name", "Values": names[start_at : start_at + ID_BATCH]}]
        )
    ]


def _by_name(instances):
    grouped = {}
    for instance in instances:
        grouped.setdefault(node_name(instance), []).append(instance)
    return grouped


def _poll(check, timeout, what, not_found_is_pending=False, accept_empty=False):
    """check() until it returns something (accept_empty: anything but None); transient EC2
    errors only delay it. The first check at once, then after POLL_DELAYS; a stopping run
    ends the wait."""
    deadline = time.monotonic() + timeout
    last_error = None
    for attempt in range(sys.maxsize):
        try:
            result = check()
            last_error = None
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
        key, call = item
        try:
            results[key] = call()
        except SaltCloudException as exc:
            errors.append(exc)

    _in_pool(run, list(calls.items()), 8)
    if errors:
        kind = (
            SaltCloudConfigError
            if all(isinstance(e, SaltCloudConfigError) for e in errors)
            else SaltCloudSystemExit
        )
        raise kind("; ".join(str(e) for e in errors))
    return results


def _in_pool(function, items, size, stopping=None):
    """function(item) for each item, at most `size` at once, in daemon threads (a signal must
    not wait for them); returns when all are done. The waiting main thread takes signals."""
    pending = queue.SimpleQueue()
    for item in items:
        pending.put(item)
    done = threading.Semaphore(0)

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
    """Sleep `delay` seconds; in a pool thread, raise _Stopped as soon as the run stops (the
    main thread cleans up, and takes signals while it sleeps)."""
    stopping = getattr(_PROCESS, "stopping", None)
    if stopping is None or threading.current_thread() is threading.main_thread():
        time.sleep(delay)
    elif stopping.wait(delay):
        raise _Stopped()


@contextlib.contextmanager
def _signals():
    """In the CLI: the first SIGINT/SIGTERM interrupts the run (it cleans up), later ones
    wait for the clean-up. Yields the run's `stopping` event."""
    stopping = threading.Event()
    _PROCESS.stopping = stopping
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

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        for child in _children():
            with contextlib.suppress(OSError):
                child.terminate()  # ssh sessions of unfinished deploys
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _children():
    if not getattr(_PROCESS, "stopping", threading.Event()).is_set():
        return []
    import psutil  # noqa: PLC0415  (a Salt dependency)

    return psutil.Process().children(recursive=True)


def _check_image(client, image):
    images = _call(
        f"'image' {image}",
        client.describe_images,
        Filters=[{"Name": "image-id", "Values": [image]}],
    )["Images"]
    if not images or images[0].get("State") not in (None, "available"):
        raise SaltCloudSystemExit(f"'image' {image}: no such AMI available in this region")


def _security_group_ids(client, settings):
    """The ids given plus the names resolved in the node's VPC (the subnet's, or the default
    one); the subnet's zone checked against availability_zone on the way."""
    ids, vpc_id = list(settings["securitygroupid"]), None
    if settings["subnetid"]:
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
        vpc_id = subnet["VpcId"]
    names = settings["securitygroup"]
    if not names:
        return ids
    if vpc_id is None:
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
        Filters=[{"Name": "group-name", "Values": names}, {"Name": "vpc-id", "Values": [vpc_id]}],
    )["SecurityGroups"]
    by_name = {g["GroupName"]: g["GroupId"] for g in groups}
    missing = [g for g in names if g not in by_name]
    if missing:
        raise SaltCloudSystemExit(
            f"'securitygroup' {', '.join(missing)}: no such security group in {vpc_id}"
        )
    return ids + [by_name[g] for g in names if by_name[g] not in ids]


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
    code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code", "")
    return code.endswith(".NotFound")


# =========================================================================== the master


def _record(function, name, *args, **fields):
    """The node record (dockerhosts_nodes): get, put, update, forget."""
    if not __opts__.get("pki_dir"):
        return None
    return __utils__[f"dockerhosts_nodes.{function}"](__opts__, name, *args, **fields)


@contextlib.contextmanager
def _name_locks(nodes):
    """A lock per name on this master for the whole create (a create in progress holds it; a
    killed one does not), taken without waiting: a name being created by another salt-cloud
    refuses the run. Each lock file is removed while held, so none stays."""
    directory = os.path.join(__opts__.get("pki_dir") or __opts__["cachedir"], "boto3_ec2_locks")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard and len(nodes) + 256 > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    try:
        for node in nodes:
            path = os.path.join(directory, f"{node.name}.lock")
            handle = _lock_file(path)
            if handle is None:
                raise SaltCloudSystemExit(
                    f"{node.name} is being created by another salt-cloud "
                    f"on this master (it holds {path}): nothing was done"
                )
            held.append((path, handle))
        yield
    finally:
        for path, handle in held:
            with contextlib.suppress(OSError):
                os.remove(path)
            handle.close()


def _lock_file(path):
    """The open, flocked lock file, or None if another process holds it. A file removed (by
    its holder) between open and flock is not the lock any more: try again."""
    while True:
        handle = open(path, "a+", encoding="utf-8")  # held past this function
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()


def _legacy_class_entry(name, node_class=None):
    """<pki_dir>/node_classes/<name>: the class registry pillar reads until it reads the node
    record (lifecycle's change); written before the deploy, removed with the node. TEMPORARY:
    goes once main's pillar reads the record."""
    path = os.path.join(__opts__["pki_dir"], "node_classes", name)
    if node_class is None:
        with contextlib.suppress(OSError):
            os.remove(path)
        return
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(f"{path}.tmp", "w", encoding="utf-8") as handle:
        handle.write(f"{node_class}\n")
    os.replace(f"{path}.tmp", path)


def _remove_key_if(minion_id, pub_key):
    """Remove the accepted key of minion_id if it is still pub_key (this run's)."""
    path = os.path.join(__opts__["pki_dir"], "minions", minion_id)
    with contextlib.suppress(OSError):
        with open(path, encoding="utf-8") as handle:
            if pub_key and handle.read().strip() == pub_key.strip():
                os.remove(path)


def _master_listening():
    """Whether a salt-master answers on its event socket here. A master that stopped leaves
    the socket file behind: connect, do not just look (a stale one would make each event
    wait out a 1 s timeout)."""
    if __opts__.get("ipc_mode", "ipc") != "ipc":
        return True
    path = os.path.join(__opts__["sock_dir"], "master_event_pull.ipc")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
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
            if not _master_listening():
                log.info("No salt-master listens on %s: events are not fired", __opts__["sock_dir"])
                _PROCESS.events[key] = None
            else:
                _PROCESS.events[key] = salt.utils.event.get_event(
                    "master", __opts__["sock_dir"], listen=False
                )
        if _PROCESS.events[key] is None:
            return
        try:
            _PROCESS.events[key].fire_event({**args, "event": what}, tag)
        except Exception as exc:  # an event is news, not part of the job
            log.warning("Could not fire %s: %s", tag, exc)


def _close_events():
    bus = _PROCESS.events.pop((os.getpid(), __opts__.get("sock_dir")), None)
    if bus is not None:
        with contextlib.suppress(Exception):
            bus.destroy()


# =========================================================================== pure helpers


def _require_action(name, call):
    if call != "action":
        raise SaltCloudSystemExit(f"{name} is an action: salt-cloud -a {name} NAME")


def _refuse_action(name, call):
    if call == "action":
        raise SaltCloudSystemExit(f"{name} is called with its --list option or -f")


def protected_instance_id(exc, candidates):
    """The instance EC2 names in an OperationNotPermitted refusal, if it is a candidate."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return None
    error = exc.response.get("Error", {})
    if error.get("Code") != "OperationNotPermitted":
        return None
    return next(
        (i for i in re.findall(r"i-[0-9a-f]+", error.get("Message", "")) if i in candidates), None
    )


def docker_volume_mapping_of(instance):
    """The instance's Docker volume mapping: the device its docker_volume tag names."""
    tags = tag_dict(instance)
    if DOCKER_VOLUME_TAG not in tags and OLD_DOCKER_VOLUME_TAG in tags:
        device, iid = tags[OLD_DOCKER_VOLUME_TAG], instance["InstanceId"]
        raise SaltCloudSystemExit(
            f"{node_name(instance)} carries the old tag {OLD_DOCKER_VOLUME_TAG}: re-tag it "
            f"(aws ec2 create-tags --resources {iid} --tags Key={DOCKER_VOLUME_TAG},"
            f"Value={device}; aws ec2 delete-tags --resources {iid} "
            f"--tags Key={OLD_DOCKER_VOLUME_TAG})"
        )
    for mapping in instance.get("BlockDeviceMappings", []):
        if "Ebs" in mapping and mapping["DeviceName"] == tags.get(DOCKER_VOLUME_TAG):
            return mapping
    raise SaltCloudSystemExit(
        f"{node_name(instance)} has no Docker volume (tag {DOCKER_VOLUME_TAG}: "
        f"{tags.get(DOCKER_VOLUME_TAG)!r})"
    )


def _docker_volume_id(instance, settings):
    device = settings["block_device_mappings"][-1]["DeviceName"]
    for mapping in instance.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == device and "Ebs" in mapping:
            return mapping["Ebs"]["VolumeId"]
    raise SaltCloudSystemExit(
        f"instance {instance['InstanceId']} has no volume attached as {device}"
    )


def ssh_address(instance, ssh_interface):
    """The address salt-cloud deploys to, by ssh_interface."""
    kind = "Private" if ssh_interface == "private_ips" else "Public"
    address = instance.get(f"{kind}IpAddress")
    if not address:
        raise SaltCloudSystemExit(
            f"instance {instance.get('InstanceId')} has no "
            f"{kind.lower()} address (ssh_interface: {ssh_interface})"
        )
    return address


def create_result(instance, settings, volume_id):
    """What salt-cloud prints for a created node."""
    summary = node_summary(instance)
    device = settings["block_device_mappings"][-1]["DeviceName"]
    return {
        "instance_id": instance["InstanceId"],
        "class": settings["class"],
        DOCKER_VOLUME_TAG: {"device_name": device, "volume_id": volume_id},
        **{k: summary[k] for k in ("private_ips", "public_ips", "state")},
    }


def is_loopback(host):
    """True for localhost and 127.0.0.0/8 (::1): a local endpoint's addresses are made up."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
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
    tags, launch_time = tag_dict(instance), instance.get("LaunchTime")
    return {
        **node_summary(instance),
        "name": tags.get("Name"),
        "class": tags.get("class"),
        "tags": tags,
        "availability_zone": instance.get("Placement", {}).get("AvailabilityZone"),
        "vpc_id": instance.get("VpcId"),
        "subnet_id": instance.get("SubnetId"),
        "key_name": instance.get("KeyName"),
        "security_groups": {
            g["GroupId"]: g["GroupName"] for g in instance.get("SecurityGroups", [])
        },
        "iam_instance_profile": (instance.get("IamInstanceProfile") or {}).get("Arn"),
        "ebs_optimized": instance.get("EbsOptimized"),
        "lifecycle": instance.get("InstanceLifecycle", "on-demand"),
        "metadata_options": {
            k: v for k, v in instance.get("MetadataOptions", {}).items() if k != "State"
        },
        "launch_time": launch_time.isoformat() if launch_time else None,
        "volumes": {
            m["DeviceName"]: volume_summary(volumes_by_id.get(m["Ebs"]["VolumeId"], {}), m)
            for m in instance.get("BlockDeviceMappings", [])
            if "Ebs" in m
        },
    }


def volume_summary(volume, mapping):
    ebs = mapping.get("Ebs", {})
    return {
        "device_name": mapping.get("DeviceName"),
        "volume_id": ebs.get("VolumeId"),
        "delete_on_termination": ebs.get("DeleteOnTermination"),
        **{k.lower(): volume.get(k) for k in ("Size", "Encrypted", "Iops", "Throughput", "State")},
        "type": volume.get("VolumeType"),
        "kms_key_id": volume.get("KmsKeyId"),
        "availability_zone": volume.get("AvailabilityZone"),
        "tags": tag_dict(volume),
    }


def aws_error_message(exc):
    """One line from a boto3/botocore error: the AWS error code and its message."""
    if HAS_BOTO3 and isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "request")
        return f"{operation} failed: {error.get('Code', 'Error')}: {error.get('Message', exc)}"
    return f"{type(exc).__name__}: {exc}"
