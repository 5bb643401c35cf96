"""
Docker swarm states on the docker SDK (execution module ``docker_swarm``): each idempotent
(a second run changes nothing and says so), each reporting what it changed, all honouring
``test=True``. Secret values and join tokens never appear in what they return.

On the node itself: ``engine_ready`` (highstate: can this engine be in a swarm, is it),
``initialized`` (first manager; only when the ``swarm`` runner allows it), ``joined`` (with a
join token sealed for this minion by the runner), ``left``.

On a manager, for the whole swarm (salt/docker/swarm/cluster.sls): ``node_present`` (labels,
availability, role), ``network_present``, ``secret_present`` / ``config_present`` (immutable
in Docker: a changed value becomes a new version ``<name>.v<N>``), ``service_present`` (create,
or update: a rolling update following the service's update_config, rolled back by Docker when
its failure_action says so), ``service_absent``, ``services_pruned`` (services of the class
that pillar no longer lists: kept or removed, as pillar says) and ``versions_pruned`` (secret
and config versions no service uses any more).
"""

from salt.exceptions import CommandExecutionError

__virtualname__ = "docker_swarm"


def __virtual__():
    return __virtualname__


def _ret(name):
    return {"name": name, "result": True, "changes": {}, "comment": ""}


def _would(ret, changes, comment):
    """Finish ``ret`` as a change: planned under test=True, else the caller makes it."""
    ret["changes"] = changes
    ret["comment"] = comment
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"would: {comment}"
        return True
    return False


def _failed(ret, comment):
    ret.update(result=False, comment=str(comment))
    return ret


def _call(function, *args, **kwargs):
    return __salt__[f"docker_swarm.{function}"](*args, **kwargs)


def _masked(value, used):
    return __utils__["dockerhosts_secrets.masked"](value, used)


# --- secrets from pillar docker_secrets --------------------------------------------------------


def _resolved(value, used):
    """``value`` with its ``{secret: name}`` references resolved from pillar docker_secrets
    (each value used appended to ``used``, for ``_masked``)."""
    secrets = __pillar__.get("docker_secrets") or {}
    try:
        return __utils__["dockerhosts_secrets.resolve"](value, secrets, used)
    except KeyError as error:
        raise CommandExecutionError(error.args[0]) from error


def _secret_value(ref):
    return _resolved(ref, [])


# --- the node itself ----------------------------------------------------------------------------


def _membership(info):
    if info["state"] == "inactive":
        return "not in a swarm"
    role = "manager" if info["is_manager"] else "worker"
    cluster = f" of swarm {info['cluster_id']}" if info["cluster_id"] else ""
    return f"{info['state']} {role}{cluster} (node {info['node_id']})"


def engine_ready(name):
    """The engine answers and can be in a swarm (live-restore is incompatible); says whether
    it is in one. Joining is the master's job (salt-run state.orchestrate orch.swarm)."""
    ret = _ret(name)
    try:
        info = _call("node_info")
    except CommandExecutionError as error:
        return _failed(ret, error)
    except Exception as error:  # the engine does not answer
        return _failed(ret, f"cannot reach the Docker engine: {error}")
    if info["live_restore"]:
        return _failed(ret, "live-restore is on in daemon.json: swarm mode refuses it")
    ret["comment"] = f"Docker engine ready for swarm; {_membership(info)}"
    return ret


def _init_refusal(info, allow_init):
    if info["state"] != "inactive":
        return f"not creating a swarm: this engine is {_membership(info)}"
    if info["live_restore"]:
        return "live-restore is on in daemon.json: swarm mode refuses it"
    if not allow_init:
        return "no swarm here, and only the swarm runner may create one"
    return None


def initialized(name, allow_init=False, addressing=None):
    """
    This engine is a manager of a swarm. Creates one only with ``allow_init`` (the ``swarm``
    runner sets it after checking that no node of class ``name`` is in a swarm and none ever
    was); never turns a member of a swarm into a new one. ``addressing``: advertise_addr,
    listen_addr, default_addr_pool, subnet_size (pillar swarm:).
    """
    ret = _ret(name)
    info = _call("node_info")
    if info["state"] == "active" and info["is_manager"]:
        ret["comment"] = f"already a manager of swarm {info['cluster_id']}"
        return ret
    refusal = _init_refusal(info, allow_init)
    if refusal:
        return _failed(ret, refusal)
    if _would(ret, {"swarm": {"old": None, "new": "created"}}, f"create a swarm for {name}"):
        return ret
    try:
        info = _call("init", **(addressing or {}))
    except CommandExecutionError as error:
        return _failed(ret, error)
    ret["changes"] = {"swarm": {"old": None, "new": info["cluster_id"]}, "node": info["node_id"]}
    ret["comment"] = f"created swarm {info['cluster_id']} for class {name}"
    return ret


def _same_swarm(info, name, remote_addrs):
    if info["is_manager"]:
        return info["cluster_id"] == name
    return bool(set(info["managers"]) & set(remote_addrs))


def joined(name, sealed, role, remote_addrs, addressing=None):
    """
    This engine is in swarm ``name`` (its cluster id). Joins as ``role`` with ``sealed``, the
    join token sealed for this minion by a manager (only this minion's private key opens it),
    through the managers at ``remote_addrs``; ``addressing``: advertise_addr, listen_addr.
    Promotion and demotion are a manager's job.
    """
    ret = _ret(name)
    info = _call("node_info")
    if info["state"] == "active" and _same_swarm(info, name, remote_addrs):
        ret["comment"] = f"already in swarm {name}: {_membership(info)}"
        return ret
    if info["state"] != "inactive":
        return _failed(ret, f"not joining swarm {name}: this engine is {_membership(info)}")
    if _would(ret, {"swarm": {"old": None, "new": name}, "role": role}, f"join swarm {name}"):
        return ret
    try:
        info = _call("join", sealed, role, name, remote_addrs, **(addressing or {}))
    except CommandExecutionError as error:
        return _failed(ret, error)
    ret["changes"] = {"swarm": {"old": None, "new": name}, "role": role, "node": info["node_id"]}
    ret["comment"] = f"joined swarm {name} as {role}"
    return ret


def left(name, force=False):
    """This engine is in no swarm (``force``: leave even as the last manager)."""
    ret = _ret(name)
    info = _call("node_info")
    if info["state"] == "inactive":
        ret["comment"] = "not in a swarm"
        return ret
    changes = {"swarm": {"old": info["cluster_id"] or info["node_id"], "new": None}}
    if _would(ret, changes, "leave the swarm"):
        return ret
    try:
        _call("leave", force=force)
    except CommandExecutionError as error:
        return _failed(ret, error)
    ret["comment"] = "left the swarm"
    return ret


# --- nodes (on a manager) -----------------------------------------------------------------------


def _node_labels(current, minion, class_name, labels, node):
    """The node's label set: pillar's (class-wide, then this node's), ``class`` and the minion
    id; labels set earlier from pillar and gone from it are removed, others' labels kept."""
    keys_label = "com.docker-hosts.labels"
    ours = {
        **labels,
        **node.get("labels", {}),
        "class": class_name,
        "com.docker-hosts.minion": minion,
    }
    before = set(filter(None, current.get(keys_label, "").split(",")))
    kept = {key: value for key, value in current.items() if key not in before | {keys_label}}
    return {**kept, **ours, keys_label: ",".join(sorted(ours))}


def _diff(old, new):
    return {
        key: {"old": old.get(key), "new": new.get(key)} for key in new if old.get(key) != new[key]
    }


def node_present(name, node_id, class_name, labels=None, node=None):
    """
    Swarm node ``node_id`` (minion ``name``) has pillar's labels (``swarm:node_labels`` and
    ``swarm:nodes:<id>:labels``, plus ``class`` and the minion id) and availability
    (``swarm:nodes:<id>:availability``, default active). Roles are the runner's business.
    """
    ret = _ret(name)
    node = node or {}
    current = _call("node", node_id)
    if current is None:
        return _failed(ret, f"the swarm has no node {node_id}")
    want = {
        "labels": _node_labels(current["labels"], name, class_name, labels or {}, node),
        "availability": node.get("availability", "active"),
    }
    changes = _diff(current, want)
    if not changes:
        ret["comment"] = f"node {node_id} is up to date"
        return ret
    if _would(ret, changes, f"update node {node_id}: {', '.join(changes)}"):
        return ret
    try:
        _call("node_update", node_id, **want)
    except CommandExecutionError as error:
        return _failed(ret, error)
    ret["comment"] = f"updated node {node_id}: {', '.join(changes)}"
    return ret


def members_only(name, node_ids):
    """Report swarm nodes that are not nodes of class ``name`` (``node_ids``: the class's, from
    the master's registry): a node reclassified or unknown. Never removes one by itself (a
    registry mistake must not drain a cluster): salt-run swarm.remove_node does."""
    ret = _ret(name)
    strangers = [
        f"{node['hostname']} ({node['labels'].get('com.docker-hosts.minion', 'no minion')})"
        for node in _call("nodes")
        if node["id"] not in set(node_ids)
    ]
    if not strangers:
        ret["comment"] = f"every node of the swarm is a node of class {name}"
        return ret
    ret["comment"] = f"nodes of the swarm not in class {name}: {', '.join(sorted(strangers))}"
    ret["warnings"] = [f"{ret['comment']}; salt-run swarm.remove_node <minion> class_name={name}"]
    return ret


# --- networks, secrets, configs (on a manager) --------------------------------------------------


NETWORK_COMPARED = ("driver", "attachable", "internal", "encrypted", "subnet", "gateway")


def _network_differences(current, settings):
    found = [
        key
        for key in NETWORK_COMPARED
        if settings[key] is not None and current[key] != settings[key]
    ]
    found.extend(
        f"options:{key}"
        for key, value in settings["options"].items()
        if current["options"].get(key) != value
    )
    if current["scope"] != "swarm":
        found.append("scope")
    return found


def network_present(name, network, class_name):
    """Swarm network ``name`` exists with pillar's settings. Docker cannot change a network in
    place: a different existing one is reported, not replaced."""
    ret = _ret(name)
    current = _call("network", name)
    if current is not None:
        different = _network_differences(current, network)
        if different:
            return _failed(
                ret,
                f"network {name} exists with other {', '.join(different)}: Docker cannot change "
                "a network in place; remove it (and the services using it) to have it recreated",
            )
        ret["comment"] = f"network {name} is present"
        return ret
    changes = {"network": {"old": None, "new": name}, "driver": network["driver"]}
    if _would(ret, changes, f"create network {name}"):
        return ret
    try:
        created = _call("network_create", name, network, class_name)
    except CommandExecutionError as error:
        return _failed(ret, error)
    ret["changes"]["id"] = created["id"]
    ret["comment"] = f"created network {name}"
    return ret


def _current_version(kind, name, data):
    """(latest version entry or None, whether it holds ``data``)."""
    entries = _call("versions", kind, name)
    latest = entries[-1] if entries else None
    return latest, bool(latest) and _call("fingerprint_matches", latest["fingerprint"], data)


def _version_present(kind, name, data, class_name):
    ret = _ret(name)
    latest, current = _current_version(kind, name, data)
    if current:
        ret["comment"] = f"{kind} {name} is current ({latest['name']})"
        return ret
    version = latest["version"] + 1 if latest else 1
    new = f"{name}.v{version}"
    changes = {kind: {"old": latest["name"] if latest else None, "new": new}}
    if _would(ret, changes, f"create {kind} {new}"):
        return ret
    try:
        _call("create_version", kind, name, data, class_name, version)
    except CommandExecutionError as error:
        return _failed(ret, error)
    ret["comment"] = f"created {kind} {new}"
    return ret


def secret_present(name, value, class_name):
    """Swarm secret ``name`` holds ``value`` (``{secret: key}`` of pillar docker_secrets) in
    its latest version ``<name>.v<N>``; a changed value makes version N+1 (secrets are
    immutable). The value is never in the output."""
    try:
        data = _secret_value(value).encode()
    except CommandExecutionError as error:
        return _failed(_ret(name), error)
    return _version_present("secret", name, data, class_name)


def config_present(name, data, class_name):
    """Swarm config ``name`` holds ``data`` in its latest version ``<name>.v<N>``."""
    return _version_present("config", name, str(data).encode(), class_name)


# --- services (on a manager) --------------------------------------------------------------------


def _object_refs(kind, refs, data_of):
    """{pillar name: (id, versioned name)} of the current versions a service uses; in test
    mode a version still to be made gets a placeholder."""
    found = {}
    for source in sorted({ref["source"] for ref in refs}):
        latest, current = _current_version(kind, source, data_of(source))
        if not current and not __opts__["test"]:
            raise CommandExecutionError(f"{kind} {source} has no version holding pillar's value")
        if current:
            found[source] = (latest["id"], latest["name"])
        else:
            version = latest["version"] + 1 if latest else 1
            found[source] = ("(to be created)", f"{source}.v{version}")
    return found


def _network_refs(networks):
    found = {}
    for name in sorted({net["name"] for net in networks}):
        current = _call("network", name)
        if current is None and not __opts__["test"]:
            raise CommandExecutionError(f"network {name} does not exist")
        found[name] = current["id"] if current else f"(network {name} to be created)"
    return found


def _references(service, secrets, configs):
    return {
        "secrets": _object_refs(
            "secret", service["secrets"], lambda source: _secret_value(secrets[source]).encode()
        ),
        "configs": _object_refs(
            "config", service["configs"], lambda source: str(configs[source]["data"]).encode()
        ),
        "networks": _network_refs(service["networks"]),
    }


def _summary(spec):
    mode = spec["Mode"].get("Replicated", {}).get("Replicas", "global")
    return {"image": spec["TaskTemplate"]["ContainerSpec"]["Image"], "replicas": mode}


def _wait_comment(status):
    where = f"on {len(status['nodes'])} node(s)"
    return (
        f"{status['running']}/{status['desired']} tasks running {where} after {status['seconds']} s"
    )


def _finish_rollout(ret, name, timeout, updated):
    status = _call("service_wait", name, timeout=timeout, updated=updated)
    outcome = status["outcome"]
    if outcome == "converged":
        ret["comment"] += f"; {_wait_comment(status)}"
        return ret
    if outcome == "rolled_back":
        message = f"the update failed and Docker rolled it back ({status['message']})"
    elif outcome == "paused":
        message = f"the update failed and is paused ({status['message']})"
    else:
        message = f"not converged: {_wait_comment(status)} ({status['message']})"
    ret["comment"] += f"; {message}"
    ret["result"] = False
    return ret


def service_present(name, service, class_name, definitions=None, timeout=120):
    """
    Swarm service ``name`` runs as pillar says (``service`` as docker_swarm.validate returns
    it; ``definitions``: pillar swarm:secrets and swarm:configs it refers to). Creates it, or
    updates it (a rolling update per its update_config), then waits until its tasks run the
    current spec or the update failed (rolled back/paused: the state fails). Env values from
    ``{secret: ...}`` are masked in the output.
    """
    ret = _ret(name)
    used = []
    try:
        env = _resolved(service["env"], used)
        definitions = definitions or {}
        refs = _references(service, definitions.get("secrets", {}), definitions.get("configs", {}))
    except CommandExecutionError as error:
        return _failed(ret, error)
    desired = _call("service_spec", name, service, class_name, env, refs)
    current = _call("service", name)
    if current is None:
        changes = {"service": {"old": None, "new": _summary(desired)}}
    else:
        changes = _call("describe_differences", desired, current["Spec"])
    if not changes:
        ret["comment"] = f"service {name} is up to date"
        return _finish_rollout(ret, name, timeout, updated=False)
    verb = "create" if current is None else "update"
    if _would(ret, _masked(changes, used), f"{verb} service {name}"):
        return ret
    try:
        if current is None:
            _call("service_create", desired)
        else:
            _call("service_update", current["ID"], current["Version"]["Index"], desired)
    except CommandExecutionError as error:
        return _failed(ret, _masked(str(error), used))
    ret["comment"] = f"{verb}d service {name}"
    return _finish_rollout(ret, name, timeout, updated=current is not None)


def service_absent(name):
    """Swarm service ``name`` does not exist."""
    ret = _ret(name)
    if _call("service", name) is None:
        ret["comment"] = f"service {name} is absent"
        return ret
    if _would(ret, {"service": {"old": name, "new": None}}, f"remove service {name}"):
        return ret
    _call("service_remove", name)
    ret["comment"] = f"removed service {name}"
    return ret


def services_pruned(name, keep, policy="keep"):
    """Services this formula made for class ``name`` that pillar no longer lists (not in
    ``keep``): left running (``policy`` keep) or removed (remove). Others' services are never
    touched."""
    ret = _ret(name)
    unlisted = sorted(set(_call("managed_services", name)) - set(keep))
    if not unlisted:
        ret["comment"] = "no services of this class beyond pillar's"
        return ret
    if policy != "remove":
        ret["comment"] = f"kept services no longer in pillar: {', '.join(unlisted)}"
        ret["warnings"] = [f"{ret['comment']} (swarm:unlisted_services: keep)"]
        return ret
    if _would(ret, {"removed": unlisted}, f"remove services {', '.join(unlisted)}"):
        return ret
    for service in unlisted:
        _call("service_remove", service)
    ret["comment"] = f"removed services no longer in pillar: {', '.join(unlisted)}"
    return ret


def _unused_versions(kind, name, listed):
    in_use = set(_call("objects_in_use", kind))
    stale = []
    for base, entries in _call("managed_objects", kind, name).items():
        keep_latest = entries[-1:] if base in listed else []
        stale.extend(
            entry for entry in entries if entry not in keep_latest and entry["id"] not in in_use
        )
    return stale


def versions_pruned(name, secrets=(), configs=()):
    """Secret/config versions made for class ``name`` that no service uses and that are not
    the latest of a name pillar still lists are removed."""
    ret = _ret(name)
    stale = {
        kind: _unused_versions(kind, name, set(listed))
        for kind, listed in (("secret", secrets), ("config", configs))
    }
    names = {
        kind: [entry["name"] for entry in entries] for kind, entries in stale.items() if entries
    }
    if not names:
        ret["comment"] = "no unused secret or config versions"
        return ret
    if _would(ret, {"removed": names}, "remove unused versions"):
        return ret
    for kind, entries in stale.items():
        for entry in entries:
            _call("remove_object", kind, entry["id"])
    ret["comment"] = f"removed unused versions: {names}"
    return ret
