"""
Runner ``node``: what the master does around a node's life (salt/reactor/, salt/orch/).

- ``converge``: a node's first converge — wait until its minion answers, sync the custom
  module types the file server has, apply the highstate; the result is recorded on the master
  (``<cachedir>/node_converge/<id>.json``, summary only) and fired as
  ``dockerhosts/node/<id>/converged``. One converge per node at a time: a second caller waits
  for the running one and reports its result instead of starting another.
- ``wait_converged``: the operator's side: waits for that record, prints it, exits non-zero
  when the converge failed or did not finish in time.
- ``on_created`` / ``on_destroyed``: the reactor's entry points (salt/reactor/). Minions can
  put events on the master's bus, so nothing in an event is trusted: the node must have an
  accepted key (and a class in the node class registry) before it is converged, and is
  forgotten only once salt-cloud has removed its key or EC2 no longer has it.
- ``forget``: remove what the master keeps about a destroyed node.
- ``class_plan`` / ``ensure_plan``: which nodes a class needs created to have ``count`` live
  ones, and which are extra; ``converge_nodes`` converges the new ones (salt/orch/).
- ``cache_file`` / ``read_cache_record`` / ``write_cache_record``: small JSON records the
  master keeps in a subdirectory of its cachedir (the converge records; runner ``swarm``'s
  cluster records too).
"""

import concurrent.futures
import contextlib
import copy
import difflib
import hashlib
import json
import logging
import os
import re
import tempfile
import time

import salt.cache
import salt.client
import salt.cloud
import salt.config
import salt.fileserver
import salt.loader
import salt.runner
import salt.utils.context
import salt.utils.event
import salt.wheel

log = logging.getLogger(__name__)

__virtualname__ = "node"

# A minion id that is safe as a file name and as salt-cloud's node name.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
CLASS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CLOUD_TAG_RE = re.compile(r"^salt/cloud/(?P<name>[^/]+)/(?P<what>created|destroyed)$")
RECORD_DIR = "node_converge"
# A file name that cannot leave its directory: no separator, not "." or "..".
FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
EVENT_TAG = "dockerhosts/node/{}/converged"
# Custom module types a minion needs before its first highstate, by their salt:// directory.
SYNC_FUNCTIONS = {
    "_grains": "saltutil.sync_grains",
    "_modules": "saltutil.sync_modules",
    "_states": "saltutil.sync_states",
    "_utils": "saltutil.sync_utils",
}
MISSING = object()


def __virtual__():
    return __virtualname__


# --- names, keys, records -------------------------------------------------------------------


def check_name(name):
    """``name`` if it is a valid minion id for a node, else ValueError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"{name!r} is not a node name (letters, digits, '.', '_', '-'; at most 253)"
        )
    return name


def _key_path(name):
    return os.path.join(__opts__["pki_dir"], "minions", name)


def key_fingerprint(name):
    """sha256 of the node's accepted key: one per node incarnation (salt-cloud makes a new
    key per create). None when the key is not accepted."""
    try:
        with open(_key_path(name), "rb") as handle:
            return hashlib.sha256(handle.read().strip()).hexdigest()
    except FileNotFoundError:
        return None


def cache_file(directory, name, suffix=".json"):
    """
    Path of ``<cachedir>/<directory>/<name><suffix>`` on the master; the directory is made
    (mode 0700) when missing. ``directory`` and ``name`` must be plain file names.

    Small records the master keeps live there, one JSON file each (``read_cache_record``,
    ``write_cache_record``), and their lock files: this runner's converge records
    (``node_converge``), runner ``swarm``'s clusters (``docker-hosts-swarm``; it calls
    these through ``__salt__``).

    CLI Example: ``salt-run node.cache_file node_converge db1``
    """
    for part in (directory, name):
        if not isinstance(part, str) or not FILE_NAME_RE.fullmatch(part):
            raise ValueError(f"{part!r} is not a plain file name")
    path = os.path.join(__opts__["cachedir"], directory)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return os.path.join(path, f"{name}{suffix}")


def read_cache_record(directory, name):
    """
    The JSON record ``<cachedir>/<directory>/<name>.json`` (``cache_file``), or None when
    there is none or it cannot be read.

    CLI Example: ``salt-run node.read_cache_record node_converge db1``
    """
    path = cache_file(directory, name)
    if _shared_store():
        return salt.cache.factory(__opts__).fetch(f"dockerhosts/{directory}", name) or None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_cache_record(directory, name, record):
    """
    Replace the JSON record ``<cachedir>/<directory>/<name>.json`` (``cache_file``) with
    ``record``, atomically: a reader sees the old record or the new one, never part of one.

    CLI Example: ``salt-run node.write_cache_record node_converge db1 '{...}'``
    """
    path = cache_file(directory, name)
    if _shared_store():
        return salt.cache.factory(__opts__).store(f"dockerhosts/{directory}", name, record)
    handle, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(record, out, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _shared_store():
    """Whether several masters share this master's records (docs/multimaster.md)."""
    return __opts__.get("cache", "localfs") != "localfs"


def read_record(name):
    """Node ``name``'s converge record, or None."""
    return read_cache_record(RECORD_DIR, name)


def _converge_lock(name, timeout):
    """Held while a converge of ``name`` runs, by one process of every master sharing the
    store; waits up to ``timeout`` for another one. A dead master's lock lapses."""
    return __utils__["dockerhosts_nodes.locked"](__opts__, f"converge/{name}", wait=timeout)


def _returning(result, ok):
    """``result`` with the exit code salt-run takes from it (a top-level ``retcode``); the
    orchestrate runner and the salt.runner state read ``__context__``."""
    retcode = 0 if ok else 1
    __context__["retcode"] = retcode
    return {**result, "retcode": retcode}


def _fail(message, **extra):
    log.warning("node: %s", message)
    return _returning({"result": False, "comment": message, **extra}, ok=False)


# --- the node class registry (runner node_class, built on the formula branch) -------------


def _runner_client():
    return salt.runner.RunnerClient(__opts__)


def node_class(name):
    """The node's class from the registry; None when unassigned; MISSING when this master has
    no ``node_class`` runner."""
    runner = _runner_client()
    if "node_class.get" not in runner.functions:
        return MISSING
    return runner.cmd("node_class.get", [name], print_event=False) or None


def _unset_node_class(name):
    runner = _runner_client()
    if "node_class.unset" in runner.functions:
        runner.cmd("node_class.unset", [name], print_event=False)


# --- converging --------------------------------------------------------------------------


def _local():
    return salt.client.LocalClient(mopts=__opts__)


def _run_job(local, name, fun, arg=(), timeout=60, *, kwarg=None):
    """Publish one job to minion ``name`` and wait for its return in the master's job cache:
    ``{"ret", "retcode", "jid"}``, or None after ``timeout``. (Not LocalClient.cmd: while it
    waits it asks the minion every 10 s whether the job still runs, a process each time on
    the minion, which a slow node pays for dearly.)"""
    jid = local.cmd_async(name, fun, list(arg), kwarg=kwarg)
    if not jid:
        return None
    get_jid = salt.loader.returners(__opts__, {})[f"{__opts__['master_job_cache']}.get_jid"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = (get_jid(jid) or {}).get(name)
        if found is not None:
            return {"ret": found.get("return"), "retcode": found.get("retcode", 0), "jid": jid}
        time.sleep(2)
    return None


def _wait_for_minion(local, name, timeout):
    """One ping at a time (each waits 30 s for its answer) until the minion answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = _run_job(local, name, "test.ping", timeout=30)
        if answer and answer["ret"] is True:
            return True
        time.sleep(5)
    return False


def sync_functions(directories):
    """The saltutil.sync_* calls for the custom module directories the file server has."""
    return [SYNC_FUNCTIONS[d] for d in sorted(directories) if d in SYNC_FUNCTIONS]


def _sync(local, name, timeout):
    directories = salt.fileserver.Fileserver(__opts__).dir_list({"saltenv": "base"})
    functions = sync_functions(d for d in directories if "/" not in d)
    if functions:
        _run_job(local, name, functions, [[] for _ in functions], timeout=timeout)


def summarize(ret):
    """A highstate job's return ({ret, retcode, jid}, from the job cache) -> a summary without the
    states' changes (they may hold data the record has no business keeping)."""
    if not isinstance(ret, dict) or "ret" not in ret:
        return {"result": False, "comment": "the minion did not return", "failed": {}}
    states = ret["ret"]
    if not isinstance(states, dict):
        errors = states if isinstance(states, list) else [str(states)]
        return {"result": False, "comment": "the highstate did not run", "errors": errors}
    failed = {
        key: value.get("comment", "")
        for key, value in states.items()
        if not isinstance(value, dict) or value.get("result") is not True
    }
    changed = sum(1 for value in states.values() if isinstance(value, dict) and value["changes"])
    ok = not failed and ret.get("retcode", 0) == 0 and bool(states)
    return {
        "result": ok,
        "comment": "converged" if ok else f"{len(failed)} of {len(states)} states failed",
        "states": len(states),
        "changed": changed,
        "failed": failed,
        "highstate_retcode": ret.get("retcode"),
    }


def _fire(name, summary):
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as bus:
        bus.fire_event(summary, EVENT_TAG.format(name))


def _run_highstate(name, timeout, minion_wait):
    """Wait for the minion, sync, highstate; the summary says how long each step took."""
    local = _local()
    started = time.monotonic()
    if not _wait_for_minion(local, name, minion_wait):
        return {"result": False, "comment": f"minion {name} did not answer in {minion_wait} s"}
    joined = time.monotonic()
    _sync(local, name, timeout=300)
    synced = time.monotonic()
    # queue: a highstate that a dead master started may still run there; wait for it.
    returned = _run_job(local, name, "state.apply", timeout=timeout, kwarg={"queue": True})
    summary = summarize(returned)
    summary["seconds"] = {
        "minion": round(joined - started, 1),
        "sync": round(synced - joined, 1),
        "highstate": round(time.monotonic() - synced, 1),
    }
    if returned:
        summary["jid"] = returned["jid"]
    return summary


def converge(name, timeout=3600, minion_wait=900, source="cli"):
    """
    Converge node ``name`` once: wait for its minion, sync custom modules, highstate.

    A converge of this node incarnation (same accepted key) that already finished or is
    running is reported instead of starting another.

    CLI Example: ``salt-run node.converge db1``
    """
    name = check_name(name)
    fingerprint = key_fingerprint(name)
    if fingerprint is None:
        return _fail(f"{name}: no accepted minion key; nothing to converge")
    with _converge_lock(name, timeout + minion_wait):
        record = read_record(name)
        if record and record.get("key") == fingerprint and record.get("finished"):
            log.info("node: %s already converged by %s", name, record.get("source"))
        else:
            record = {"key": fingerprint, "source": source, "started": time.time()}
            write_cache_record(RECORD_DIR, name, record)
            record.update(_run_highstate(name, timeout, minion_wait))
            record["finished"] = time.time()
            write_cache_record(RECORD_DIR, name, record)
            _fire(name, record)
    return _returning({name: record}, ok=record.get("result"))


def converge_nodes(nodes, timeout=3600, minion_wait=900, source="orchestrate"):
    """
    ``converge`` for each node of ``nodes`` (a list), all at once; fails if any fails.

    CLI Example: ``salt-run node.converge_nodes '[backends-1, backends-2]'``
    """
    names = [check_name(name) for name in nodes]
    results = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        futures = {
            name: pool.submit(converge, name, timeout, minion_wait, source) for name in names
        }
        for name, future in futures.items():
            returned = future.result()
            results[name] = returned.get(name) or {
                key: value for key, value in returned.items() if key != "retcode"
            }
    return _returning(results, ok=all(record.get("result") for record in results.values()))


def wait_converged(name, timeout=3600):
    """
    Wait for node ``name``'s converge (started by the reactor when salt-cloud created it) and
    print its result; exits non-zero when it failed or did not finish within ``timeout``.

    CLI Example: ``salt-cloud -p dataserver db1 && salt-run node.wait_converged db1``
    """
    name = check_name(name)
    deadline = time.monotonic() + float(timeout)
    while True:
        fingerprint = key_fingerprint(name)
        if fingerprint is None:
            return _fail(f"{name}: no accepted minion key (not created, or destroyed)")
        record = read_record(name)
        if record and record.get("key") == fingerprint and record.get("finished"):
            return _returning({name: record}, ok=record.get("result"))
        if time.monotonic() > deadline:
            state = "still running" if record and record.get("key") == fingerprint else "none"
            return _fail(f"{name}: not converged after {timeout} s (converge: {state})")
        time.sleep(2)


def resume(minion_wait=10):
    """
    Start again the converges a dead master left unfinished (no master holds their lock),
    for the nodes whose minion answers this master: each master's schedule runs it when
    several share the store (docs/multimaster.md).

    CLI Example: ``salt-run node.resume``
    """
    resumed = []
    for name in salt.cache.factory(__opts__).list(f"dockerhosts/{RECORD_DIR}"):
        record = read_record(name) or {}
        if record.get("finished") or record.get("key") != key_fingerprint(name):
            continue
        if __utils__["dockerhosts_nodes.held"](__opts__, f"converge/{name}"):
            continue
        answer = _run_job(_local(), name, "test.ping", timeout=minion_wait)
        if answer and answer["ret"] is True:
            _start("node.converge", name=name, source="resume")
            resumed.append(name)
    return {"result": True, "resumed": resumed}


# --- reactor entry points ------------------------------------------------------------------


def event_problem(tag, data, expected):
    """Why an event may not act for the node its tag names, or None. Pure: checks only what
    the event itself shows (a minion's ``event.fire_master`` carries its id and ``cmd``)."""
    match = CLOUD_TAG_RE.match(tag or "")
    if not match or match.group("what") != expected:
        return f"tag {tag!r} is not salt/cloud/<name>/{expected}"
    if not NAME_RE.match(match.group("name")):
        return f"tag {tag!r} does not name a valid node"
    if not isinstance(data, dict):
        return "event data is not a mapping"
    if data.get("cmd") == "_minion_event" or "id" in data:
        return f"fired by minion {data.get('id')!r}, not by salt-cloud"
    if data.get("name") != match.group("name"):
        return f"event data names {data.get('name')!r}, the tag {match.group('name')!r}"
    return None


def _start(fun, **kwargs):
    """Run runner ``fun`` in a process of its own (the reactor's threads stay free)."""
    return _runner_client().asynchronous(fun, {"arg": [], "kwarg": kwargs})


def on_created(tag, data):
    """Reactor on salt/cloud/*/created: converge the node salt-cloud just created."""
    problem = event_problem(tag, data, "created")
    name = CLOUD_TAG_RE.match(tag).group("name") if not problem else None
    if not problem and key_fingerprint(name) is None:
        problem = f"{name} has no accepted minion key"
    if not problem:
        assigned = node_class(name)
        if assigned is None:
            problem = f"{name} has no class in the node class registry"
    if problem:
        return _fail(f"ignoring {tag}: {problem}")
    _start("node.converge", name=name, source="reactor")
    return {"result": True, "comment": f"converging {name}"}


def on_destroyed(tag, data):
    """Reactor on salt/cloud/*/destroyed: forget the node once it is really gone."""
    problem = event_problem(tag, data, "destroyed")
    if problem:
        return _fail(f"ignoring {tag}: {problem}")
    _start("node.forget", name=CLOUD_TAG_RE.match(tag).group("name"))
    return {"result": True, "comment": "forgetting"}


# --- forgetting a destroyed node ------------------------------------------------------------


def _checkout_dir():
    return __opts__.get("checkout_dir") or os.path.dirname(os.path.abspath(__opts__["conf_file"]))


def _cloud_client():
    """salt-cloud's client for this checkout's `cloud` config, usable from the master's
    processes (working directory /): relative cloud_dirs are taken from the checkout."""
    root = _checkout_dir()
    # The master's options without any cloud configuration they may carry already (3007
    # refuses providers given twice).
    master = {k: v for k, v in __opts__.items() if k not in ("providers", "profiles")}
    opts = salt.config.cloud_config(
        os.path.join(root, "cloud"), master_config=copy.deepcopy(master)
    )
    opts["cloud_dirs"] = [os.path.join(root, path) for path in opts.get("cloud_dirs") or []]
    return salt.cloud.CloudClient(opts=opts)


def live_nodes():
    """{name: details} of every live node of every configured provider (its driver's
    list_nodes_full). Raises when a configured provider's driver cannot be asked: never
    read as "no nodes"."""
    client = _cloud_client()
    cloud = salt.cloud.Cloud(client.opts)
    nodes = {}
    for alias, drivers in client.opts["providers"].items():
        for driver in drivers:
            function = f"{driver}.list_nodes_full"
            if function not in cloud.clouds:
                raise RuntimeError(f"cloud provider {alias!r}: driver {driver!r} did not load")
            with salt.utils.context.func_globals_inject(
                cloud.clouds[function], __active_provider_name__=f"{alias}:{driver}"
            ):
                nodes.update(cloud.clouds[function]())
    return nodes


def _instance_gone(name):
    try:
        return name not in live_nodes()
    except Exception as error:  # fail closed: unknown means "still there"
        log.warning("node: cannot tell whether %s is gone: %s", name, error)
        return False


def _remove_master_data(name):
    cache = salt.cache.factory(__opts__)
    cache.flush(f"minions/{name}")
    with contextlib.suppress(FileNotFoundError):
        os.remove(cache_file(RECORD_DIR, name))
    if _shared_store():
        cache.flush(f"dockerhosts/{RECORD_DIR}", name)
    _unset_node_class(name)


def forget(name, grace=10):
    """
    Remove what the master keeps about destroyed node ``name``: its key (salt-cloud -d removes
    it right after the destroy event), cached grains/pillar/mine, converge record and node
    class registry entry. Refused while the key is accepted and EC2 still has the node, or
    cannot be asked.

    CLI Example: ``salt-run node.forget db1``
    """
    name = check_name(name)
    removed = []
    if key_fingerprint(name) is not None:
        if not _instance_gone(name):
            return _fail(f"{name}: key still accepted and the node is not known to be gone")
        deadline = time.monotonic() + float(grace)
        while key_fingerprint(name) is not None and time.monotonic() < deadline:
            time.sleep(1)
        if key_fingerprint(name) is not None:
            salt.wheel.WheelClient(__opts__).cmd("key.delete", [name])
            removed.append("key")
    _remove_master_data(name)
    removed += ["cache", "converge record", "node class"]
    return {"result": True, "comment": f"forgot {name}", "removed": removed}


# --- class size ------------------------------------------------------------------------------


def plan(live, node_class_name, count, prefix, taken=()):
    """Pure: names to create so that ``node_class_name`` has ``count`` live nodes, and the
    extra ones (newest first) when it has more."""
    members = sorted(
        (name for name, node in live.items() if node.get("class") == node_class_name),
        key=lambda name: (str(live[name].get("launch_time") or ""), name),
    )
    create = []
    used = set(live) | set(taken)
    number = 1
    while len(members) + len(create) < count:
        candidate = f"{prefix}-{number}"
        if candidate not in used:
            create.append(candidate)
        number += 1
    extra = list(reversed(members))[: max(0, len(members) - count)]
    return {"live": members, "create": create, "extra": extra}


def _check_plan_args(node_class_name, count):
    if not isinstance(node_class_name, str) or not CLASS_RE.match(node_class_name):
        raise ValueError(f"class: {node_class_name!r} is not a class name")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 1000:
        raise ValueError(f"count: {count!r} is not a whole number from 0 to 1000")


REQUEST_KEYS = ("class", "count", "profile", "prefix", "remove_extra")


def check_request(request):
    """The ensure_class request ({class, count, profile, prefix, remove_extra}) checked:
    required keys, types, and a key that looks like a misspelt one is refused."""
    if not isinstance(request, dict):
        raise ValueError("the request must be a mapping: {class: <name>, count: <n>}")
    for key in request:
        close = difflib.get_close_matches(str(key), REQUEST_KEYS, n=1, cutoff=0.7)
        if key not in REQUEST_KEYS and close:
            raise ValueError(f"{key}: unknown key (did you mean {close[0]}?)")
    for key in ("class", "count"):
        if key not in request:
            raise ValueError(f"{key}: missing (the request is {{class: <name>, count: <n>}})")
    if not isinstance(request.get("remove_extra", False), bool):
        raise ValueError(f"remove_extra: {request['remove_extra']!r} is not true or false")
    _check_plan_args(request["class"], request["count"])
    return request


def ensure_plan(request):
    """
    ``class_plan`` for an ensure_class request (the orchestration's pillar), plus whether the
    extra nodes are to be removed. Raises on a bad request, before anything is created.

    CLI Example: ``salt-run node.ensure_plan '{class: backends, count: 3}'``
    """
    request = check_request(request)
    plan_ = class_plan(
        request["class"], request["count"], request.get("profile"), request.get("prefix")
    )
    plan_["remove_extra"] = request.get("remove_extra", False)
    return plan_


def class_plan(node_class, count, profile=None, prefix=None):
    """
    What ``salt/orch/ensure_class.sls`` does for ``{class, count}``: the class's live nodes
    (EC2 tag ``class``), the names to create with ``profile`` (default: the class) and the
    extra nodes. Raises on bad input or when a provider cannot be asked.

    CLI Example: ``salt-run node.class_plan backends 3``
    """
    _check_plan_args(node_class, count)
    profile = profile or node_class
    prefix = check_name(prefix or node_class)
    client = _cloud_client()
    if profile not in client.opts.get("profiles", {}):
        raise ValueError(f"profile: {profile!r} is not a salt-cloud profile")
    accepted = os.listdir(os.path.join(__opts__["pki_dir"], "minions"))
    result = plan(live_nodes(), node_class, count, prefix, taken=accepted)
    result.update({"class": node_class, "count": count, "profile": profile})
    return result
