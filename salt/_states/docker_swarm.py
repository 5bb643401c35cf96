"""
Docker swarm states on the docker SDK (execution module ``docker_swarm``): each idempotent,
each reporting what it changed, all honouring ``test=True``; a failure is one line naming
what failed (never a traceback), and secret values never appear in what they return.

``engine_ready`` is the node's own part of the highstate; the others converge the swarm from
one manager (salt/docker/swarm/cluster.sls, applied by the ``swarm`` runner): ``node_present``
(labels, availability), ``network_present``, ``secret_present`` / ``config_present`` (immutable
in Docker: a changed value becomes a new version ``<name>.v<N>``), ``service_present`` (create,
or a rolling update following its update_config, rolled back by Docker when its failure_action
says so), ``services_pruned`` (services of the class pillar no longer lists: kept or removed)
and ``versions_pruned`` (secret and config versions no service uses any more).
"""

import functools
import inspect
import logging

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "docker_swarm"


def __virtual__():
    return __virtualname__


def _call(function, *args, **kwargs):
    return __salt__[f"docker_swarm.{function}"](*args, **kwargs)


def _state(function):
    """A state: ``function(ret, ...)`` fills ``ret``; an error (CommandExecutionError is what
    the module raises for every Docker or engine error) makes it fail with one line, never a
    traceback; the values of the secrets it resolved (``ret["__used__"]``) are masked in all
    it returns."""

    @functools.wraps(function)
    def state(name, *args, **kwargs):
        ret = {"name": name, "result": True, "changes": {}, "comment": "", "__used__": []}
        try:
            function(ret, name, *args, **kwargs)
        except Exception as error:  # one line for the operator; the minion's log has the rest
            if not isinstance(error, CommandExecutionError):
                log.exception("docker_swarm.%s %s failed", function.__name__, name)
                error = f"{type(error).__name__}: {error}"
            ret.update(result=False, comment=" ".join(str(error).split()))
        used = ret.pop("__used__")
        return __utils__["dockerhosts_secrets.masked"](ret, used) if used else ret

    # What Salt passes the state: the function's arguments but ``ret``.
    del state.__wrapped__
    signature = inspect.signature(function)
    state.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    return state


def _would(ret, changes, comment):
    """Record a change: planned under test=True (True: the caller stops), else to be made."""
    ret["changes"], ret["comment"] = changes, comment
    if __opts__["test"]:
        ret["result"], ret["comment"] = None, f"would {comment}"
    return bool(__opts__["test"])


def _resolved(value, used):
    """``value`` with its ``{secret: name}`` references resolved from pillar docker_secrets."""
    try:
        return __utils__["dockerhosts_secrets.resolve"](
            value, __pillar__.get("docker_secrets") or {}, used
        )
    except KeyError as error:
        raise CommandExecutionError(error.args[0]) from error


@_state
def engine_ready(ret, name):
    """The engine answers and can be in a swarm (live-restore is incompatible); says whether
    it is in one. Joining is the master's job (salt-run swarm.converge / swarm.admit)."""
    info = _call("node_info")
    if info["live_restore"]:
        raise CommandExecutionError("live-restore is on in daemon.json: swarm mode refuses it")
    if info["state"] == "inactive":
        ret["comment"] = "Docker engine ready for swarm; not in a swarm"
    else:
        role = "manager" if info["is_manager"] else "worker"
        ret["comment"] = f"Docker engine ready for swarm; {info['state']} {role} of a swarm"


# --- nodes ----------------------------------------------------------------------------------------

KEYS_LABEL = "com.docker-hosts.labels"


@_state
def node_present(ret, name, node_id, class_name, swarm):
    """
    Swarm node ``node_id`` (minion ``name``) has the labels of pillar ``swarm`` (``node_labels``,
    then ``nodes:<id>:labels``, plus ``class`` and the minion id) and its availability (default
    active). Labels set earlier from pillar and gone from it are removed, others' are kept.
    """
    node = swarm["nodes"].get(name, {})
    current = _call("node", node_id)
    if current is None:
        raise CommandExecutionError(f"the swarm has no node {node_id}")
    ours = {**swarm["node_labels"], **node.get("labels", {}), "class": class_name}
    ours["com.docker-hosts.minion"] = name
    before = set(filter(None, current["labels"].get(KEYS_LABEL, "").split(",")))
    kept = {k: v for k, v in current["labels"].items() if k not in before | {KEYS_LABEL}}
    want = {
        "labels": {**kept, **ours, KEYS_LABEL: ",".join(sorted(ours))},
        "availability": node.get("availability", "active"),
    }
    changes = {
        key: {"old": current[key], "new": value}
        for key, value in want.items()
        if current[key] != value
    }
    if not changes:
        ret["comment"] = f"node {node_id} is up to date"
    elif not _would(ret, changes, f"update node {node_id}: {', '.join(changes)}"):
        _call("node_update", node_id, **want)
        ret["comment"] = f"updated node {node_id}: {', '.join(changes)}"


# --- networks, secrets, configs -----------------------------------------------------------------

NETWORK_COMPARED = ("driver", "attachable", "internal", "encrypted", "subnet", "gateway")


@_state
def network_present(ret, name, network, class_name):
    """Swarm network ``name`` exists with pillar's settings. Docker cannot change a network in
    place: a different existing one is reported, not replaced."""
    current = _call("network", name)
    if current is None:
        if not _would(ret, {"network": {"old": None, "new": name}}, f"create network {name}"):
            ret["changes"]["id"] = _call("network_create", name, network, class_name)["id"]
            ret["comment"] = f"created network {name}"
        return
    different = [
        key for key in NETWORK_COMPARED if network[key] is not None and current[key] != network[key]
    ]
    different += [
        f"options:{key}"
        for key, value in network["options"].items()
        if current["options"].get(key) != value
    ]
    if current["scope"] != "swarm":
        different.append("scope")
    if different:
        raise CommandExecutionError(
            f"network {name} exists with other {', '.join(different)}: Docker cannot change a "
            "network in place; remove it (and the services using it) to have it recreated"
        )
    ret["comment"] = f"network {name} is present"


def _current_version(kind, name, data):
    """(latest version entry or None, whether it holds ``data``)."""
    entries = _call("versions", kind, name)
    latest = entries[-1] if entries else None
    return latest, bool(latest) and _call("fingerprint_matches", latest["fingerprint"], data)


def _version_present(ret, kind, name, data, class_name):
    latest, current = _current_version(kind, name, data)
    if current:
        ret["comment"] = f"{kind} {name} is current ({latest['name']})"
        return
    version = latest["version"] + 1 if latest else 1
    new = f"{name}.v{version}"
    changes = {kind: {"old": latest["name"] if latest else None, "new": new}}
    if not _would(ret, changes, f"create {kind} {new}"):
        _call("create_version", kind, name, data, class_name, version)
        ret["comment"] = f"created {kind} {new}"


@_state
def secret_present(ret, name, value, class_name):
    """Swarm secret ``name`` holds ``value`` (``{secret: key}`` of pillar docker_secrets) in
    its latest version ``<name>.v<N>``; a changed value makes version N+1."""
    _version_present(ret, "secret", name, _resolved(value, ret["__used__"]).encode(), class_name)


@_state
def config_present(ret, name, data, class_name):
    """Swarm config ``name`` holds ``data`` in its latest version ``<name>.v<N>``."""
    _version_present(ret, "config", name, str(data).encode(), class_name)


# --- services -------------------------------------------------------------------------------------


def _object_refs(kind, sources, data_of):
    """{pillar name: (id, versioned name)} of the current versions a service uses; under
    test=True a version still to be made gets a placeholder."""
    found = {}
    for source in sorted(set(sources)):
        latest, current = _current_version(kind, source, data_of(source))
        if current:
            found[source] = (latest["id"], latest["name"])
        elif __opts__["test"]:
            found[source] = (
                "(to be created)",
                f"{source}.v{latest['version'] + 1 if latest else 1}",
            )
        else:
            raise CommandExecutionError(f"{kind} {source} has no version holding pillar's value")
    return found


def _references(service, swarm, used):
    networks = {}
    for name in sorted({net["name"] for net in service["networks"]}):
        current = _call("network", name)
        if current is None and not __opts__["test"]:
            raise CommandExecutionError(f"network {name} does not exist")
        networks[name] = current["id"] if current else f"(network {name} to be created)"
    secrets, configs = swarm["secrets"], swarm["configs"]
    return {
        "secrets": _object_refs(
            "secret",
            [ref["source"] for ref in service["secrets"]],
            lambda source: _resolved(secrets[source], used).encode(),
        ),
        "configs": _object_refs(
            "config",
            [ref["source"] for ref in service["configs"]],
            lambda source: str(configs[source]["data"]).encode(),
        ),
        "networks": networks,
    }


def _rollout(ret, name, timeout, updated):
    status = _call("service_wait", name, timeout=timeout, updated=updated)
    where = (
        f"{status['running']}/{status['desired']} tasks running on {len(status['nodes'])} "
        f"node(s) after {status['seconds']} s"
    )
    failed = {
        "rolled_back": f"the update failed and Docker rolled it back ({status['message']})",
        "paused": f"the update failed and is paused ({status['message']})",
        "timeout": f"not converged: {where} ({status['message']})",
    }.get(status["outcome"])
    ret["comment"] += f"; {failed or where}"
    if failed:
        ret["result"] = False


@_state
def service_present(ret, name, class_name, swarm):
    """
    Swarm service ``name`` runs as pillar ``swarm`` (as docker_swarm.validate returns it) says:
    created, or updated (a rolling update per its update_config); then the state waits until
    its tasks run the current spec or the update failed (rolled back or paused: it fails).
    """
    used, service, timeout = ret["__used__"], swarm["services"][name], swarm["converge_timeout"]
    environment = _resolved(service["env"], used)
    refs = _references(service, swarm, used)
    desired = _call("service_spec", name, service, class_name, environment, refs)
    current = _call("service", name)
    if current is None:
        changes = {
            "service": {"old": None, "new": desired["TaskTemplate"]["ContainerSpec"]["Image"]}
        }
    else:
        changes = _call("describe_differences", desired, current["Spec"])
    if not changes:
        ret["comment"] = f"service {name} is up to date"
        return _rollout(ret, name, timeout, updated=False)
    verb = "create" if current is None else "update"
    if _would(ret, changes, f"{verb} service {name}"):
        return None
    if current is None:
        _call("service_create", desired)
    else:
        _call("service_update", current["ID"], current["Version"]["Index"], desired)
    ret["comment"] = f"{verb}d service {name}"
    return _rollout(ret, name, timeout, updated=current is not None)


@_state
def services_pruned(ret, name, keep, policy="keep"):
    """Services this formula made for class ``name`` that pillar no longer lists (not in
    ``keep``): left running (``policy`` keep) or removed (remove). Others' are never touched."""
    unlisted = sorted(set(_call("managed_services", name)) - set(keep))
    if not unlisted:
        ret["comment"] = "no services of this class beyond pillar's"
    elif policy != "remove":
        ret["comment"] = f"kept services no longer in pillar: {', '.join(unlisted)}"
        ret["warnings"] = [f"{ret['comment']} (swarm:unlisted_services: keep)"]
    elif not _would(ret, {"removed": unlisted}, f"remove services {', '.join(unlisted)}"):
        for service in unlisted:
            _call("service_remove", service)
        ret["comment"] = f"removed services no longer in pillar: {', '.join(unlisted)}"


@_state
def versions_pruned(ret, name, secrets=(), configs=()):
    """Secret/config versions made for class ``name`` that no service uses and that are not the
    latest of a name pillar still lists are removed."""
    stale = {}
    for kind, listed in (("secret", set(secrets)), ("config", set(configs))):
        in_use = set(_call("objects_in_use", kind))
        for base, entries in _call("managed_objects", kind, name).items():
            keep = entries[-1:] if base in listed else []
            stale.setdefault(kind, []).extend(
                entry for entry in entries if entry not in keep and entry["id"] not in in_use
            )
    names = {
        kind: [entry["name"] for entry in entries] for kind, entries in stale.items() if entries
    }
    if not names:
        ret["comment"] = "no unused secret or config versions"
    elif not _would(ret, {"removed": names}, "remove unused versions"):
        for kind, entries in stale.items():
            for entry in entries:
                _call("remove_object", kind, entry["id"])
        ret["comment"] = f"removed unused versions: {names}"
