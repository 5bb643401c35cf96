"""
Runner ``node``: the master's side of a node's life, on the node record (salt/_utils/
dockerhosts_nodes.py; docs/lifecycle.md has the states and who moves a node between them).

- ``on_created`` / ``on_key``: the reactor's entry points. An event only names a node: any
  minion can put an event on the master's bus, in forms that hide who sent it, so what is done
  is decided by the record (written by this master's salt-cloud or an operator's command) and
  the key the master has accepted, never by the event's data.
- ``converge``: a node's first converge (wait for its minion, sync custom modules, highstate,
  then ``swarm.admit`` for a class whose pillar enables swarm); ``wait_converged`` waits for it.
- ``before_destroy``: salt-cloud's destroy calls it once per batch, before terminating.
- ``forget``: the operator's command to forget a node (record, key, cached data).
- ``status``: every node at a glance, from the records and one EC2 describe.
- ``ensure_plan``: what orch.ensure_class creates and removes; ``converge_nodes``.

Every failure sets the exit code (``__context__["retcode"]``) and says in one line what
failed, on what, and what to do.
"""

import concurrent.futures
import contextlib
import contextvars
import copy
import itertools
import logging
import os
import re
import socket
import time

import salt.cache
import salt.client
import salt.cloud
import salt.config
import salt.fileserver
import salt.loader
import salt.pillar
import salt.utils.context
import salt.utils.event
import salt.wheel

log = logging.getLogger(__name__)

CREATED_TAG = re.compile(r"salt/cloud/(?P<name>[^/]+)/created")
EVENT_TAG = "dockerhosts/node/{}/converged"
SYNC_FUNCTIONS = {
    "_grains": "saltutil.sync_grains",
    "_modules": "saltutil.sync_modules",
    "_states": "saltutil.sync_states",
    "_utils": "saltutil.sync_utils",
}
REQUEST_KEYS = ("class", "count", "profile", "prefix", "remove_extra")


def _nodes(function, *args, **kwargs):
    return __utils__[f"dockerhosts_nodes.{function}"](__opts__, *args, **kwargs)


def _returning(result, ok):
    """``result`` with the exit code salt-run takes from it; the orchestrate runner and the
    salt.runner state read ``__context__``."""
    retcode = 0 if ok else 1
    __context__["retcode"] = retcode
    return {**result, "retcode": retcode}


def _fail(message, **extra):
    log.warning("node: %s", message)
    return _returning({"result": False, "comment": message, **extra}, ok=False)


def _name_problem(name):
    return __utils__["dockerhosts_names.node_name_problem"](name)


def _drop_cached(name):
    """What the master caches of a minion: grains/pillar/mine, and Salt 3008's session key
    file (which salt-key -d leaves too)."""
    salt.cache.factory(__opts__).flush(f"minions/{name}")
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(__opts__["cachedir"], "sessions", name))


def _claimant():
    """This process, as a converge claim names it: host, pid and the pid's start time."""
    with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as stat:
        started = stat.read().rsplit(")", 1)[1].split()[19]
    return f"{socket.gethostname()}:{os.getpid()}:{started}"


def _claim_lost(record):
    """Whether a ``converging`` record's claimant is gone (a master stopped mid-converge): a
    process of this host that no longer runs. Another host's claim only times out (with
    several masters, converge holds the node's lock instead: see ``converge``)."""
    host, _, process = str((record.get("converge") or {}).get("by")).partition(":")
    if host != socket.gethostname():
        return False
    pid, _, started = process.partition(":")
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19] != started
    except (OSError, ValueError):
        return True


# --- reactor entry points ------------------------------------------------------------------


def created_problem(record, key):
    """Why a ``created`` event may not start a converge, or None: only a node this master's
    salt-cloud deployed, with the key it recorded, whose converge has not started."""
    if not record:
        return "it has no node record"
    if record.get("source") != "salt-cloud" or record.get("state") != "deployed":
        return f"its record is {record.get('state')} (by {record.get('source')}), not deployed"
    if not key or record.get("key") != key:
        return "its record is not for the key accepted now"
    return None


def on_created(tag, data):
    """Reactor on salt/cloud/*/created: converge the node the tag names, if its record says
    salt-cloud deployed it with the key accepted now."""
    match = CREATED_TAG.fullmatch(str(tag))
    name = match.group("name") if match else None
    problem = _name_problem(name) if match else "not a salt/cloud/<name>/created tag"
    if not problem and isinstance(data, dict) and ("id" in data or "cmd" in data):
        problem = f"fired by minion {data.get('id')!r}"
    if not problem:
        problem = created_problem(_nodes("get", name), _nodes("key_fingerprint", name))
    if problem:
        return _fail(f"refused {tag}: {problem}")
    # In the reactor's thread, not a process of its own: Salt daemonizes those, and they
    # outlived a stopped master. reactor_worker_threads (master) bounds how many run at once.
    return converge(name)


def on_key(name):
    """Reactor on salt/key: when ``name``'s record is for a key that is no longer the accepted
    one (deleted, rejected, or another key accepted), forget the record and take the node out
    of its swarm. The event's ``act`` is not trusted: the master's pki_dir decides."""
    if _name_problem(name):
        return _fail(f"refused salt/key event: {_name_problem(name)}")
    key = _nodes("key_fingerprint", name)
    record = _nodes("forget", name, when=lambda r: r.get("key") and r.get("key") != key)
    if record is None:
        log.info("node: salt/key for %s: its record stands (key unchanged or no record)", name)
        return {"result": True, "comment": f"{name}: nothing to forget"}
    log.warning("node: %s: its key was deleted or replaced: forgot its record", name)
    _drop_cached(name)
    if record.get("swarm_role"):  # its key is gone: it cannot leave by itself
        __salt__["swarm.remove_node"](name, class_name=record["class"], force=True)
    return {"result": True, "comment": f"forgot {name}"}


# --- converging --------------------------------------------------------------------------


def _run_job(local, name, fun, arg=(), timeout=60, *, kwarg=None, again=None):
    """One job on minion ``name``, its return read from the master's job cache: {ret, retcode,
    jid}, or None after ``timeout`` (LocalClient.cmd would ask the minion every 10 s whether
    the job still runs, a process each time on a slow node). ``again``: publish the job anew
    every that many seconds, the first return of any counting (a job published before the
    minion connected never reaches it)."""
    get_jid = salt.loader.returners(__opts__, {})[f"{__opts__['master_job_cache']}.get_jid"]
    deadline, jids, publish_at = time.monotonic() + timeout, [], 0
    while time.monotonic() < deadline:
        if time.monotonic() >= publish_at:
            jids += [jid for jid in [local.cmd_async(name, fun, list(arg), kwarg=kwarg)] if jid]
            publish_at = time.monotonic() + again if again else deadline
            if not jids:
                return None
        for jid in jids:
            found = (get_jid(jid) or {}).get(name)
            if found is not None:
                return {"ret": found.get("return"), "retcode": found.get("retcode", 0), "jid": jid}
        time.sleep(0.5)
    return None


def _minion_call(local, name, fun, *args, timeout=20):
    """``_run_job`` that never raises: {ret, retcode}, ret saying why when it did not run."""
    try:
        found = _run_job(local, name, fun, args, timeout=timeout)
    except Exception as error:  # e.g. no master to publish through
        return {"ret": str(error), "retcode": 1}
    return found or {"ret": f"{name} did not answer in {timeout} s", "retcode": 1}


def sync_functions(directories):
    """The saltutil.sync_* calls for the custom module directories the file server has."""
    return [SYNC_FUNCTIONS[d] for d in sorted(directories) if d in SYNC_FUNCTIONS]


def summarize(ret):
    """A highstate job's return -> a summary without the states' changes (they may hold data
    the record has no business keeping)."""
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
    ok = not failed and ret.get("retcode", 0) == 0 and bool(states)
    return {
        "result": ok,
        "comment": "converged" if ok else f"{len(failed)} of {len(states)} states failed",
        "states": len(states),
        "changed": sum(1 for v in states.values() if isinstance(v, dict) and v["changes"]),
        "failed": failed,
        "jid": ret.get("jid"),
    }


def _highstate(name, timeout, minion_wait):
    """Wait for the minion, sync, highstate; the summary says how long each step took."""
    local = salt.client.LocalClient(mopts=__opts__)
    started = time.monotonic()
    deadline = started + minion_wait
    while (_run_job(local, name, "test.ping", timeout=30, again=3) or {}).get("ret") is not True:
        if time.monotonic() > deadline:
            return {"result": False, "comment": f"minion {name} did not answer in {minion_wait} s"}
        time.sleep(1)  # when the publish itself failed
    joined = time.monotonic()
    directories = salt.fileserver.Fileserver(__opts__).dir_list({"saltenv": "base"})
    functions = sync_functions(d for d in directories if "/" not in d)
    if functions:
        _run_job(local, name, functions, [[] for _ in functions], timeout=300)
    synced = time.monotonic()
    # queue: a highstate that a master which died mid-converge started may still run there.
    summary = summarize(
        _run_job(local, name, "state.apply", timeout=timeout, kwarg={"queue": True})
    )
    summary["seconds"] = {
        "minion": round(joined - started, 1),
        "sync": round(synced - joined, 1),
        "highstate": round(time.monotonic() - synced, 1),
    }
    return summary


def _admit(name, summary):
    """``swarm.admit`` when the node's class pillar enables swarm (runner ``swarm`` then
    records the node's swarm_role)."""
    pillar = salt.pillar.get_pillar(__opts__, {}, name, saltenv="base").compile_pillar()
    if not (pillar.get("swarm") or {}).get("enabled"):
        return
    admitted = __salt__["swarm.admit"](name)
    if admitted.get("result") is False:
        summary.update(result=False, comment=f"swarm.admit failed: {admitted.get('comment')}")


def _claim(name, key, deadline, lost=_claim_lost, source="reactor"):
    """Claim the converge of ``name`` for ``key`` (compare-and-set), waiting while another
    process converges it: ``(claimed record, record)``, claimed None when not this one's."""
    while True:
        claimed = _nodes(
            "update",
            name,
            when=lambda r: (
                bool(key and r and r.get("class") and r.get("key") == key)
                and r.get("state") not in ("converged", "failed", "destroying")
                and (r.get("state") != "converging" or lost(r))
            ),
            state="converging",
            converge={"started": time.time(), "by": _claimant(), "source": source},
        )
        record = claimed or _nodes("get", name)
        if claimed or not record or record.get("state") != "converging":
            return claimed, record
        if time.monotonic() > deadline:
            return None, record
        time.sleep(2)


def converge(name, timeout=3600, minion_wait=900, source="reactor"):
    """
    Converge node ``name`` once per incarnation (accepted key): wait for its minion, sync
    custom modules, highstate, then ``swarm.admit`` when its class enables swarm. A converge
    of this incarnation that finished is reported; one that runs is waited for (and taken
    over if the process running it is gone).

    CLI Example: ``salt-run node.converge db1``
    """
    if _name_problem(name):
        return _fail(f"node.converge: {_name_problem(name)}")
    if not _nodes("shared"):
        return _converge(name, timeout, minion_wait, _claim_lost, source)
    # Several masters: the node's lock (a lease a dead master's lets lapse) is held for the
    # whole converge, so a "converging" record found by its holder is a dead master's.
    try:
        with _nodes("locked", f"converge/{name}", wait=timeout + minion_wait):
            return _converge(name, timeout, minion_wait, lambda record: True, source)
    except TimeoutError as error:
        return _fail(f"node.converge {name}: {error} (wait, then retry)")


def _converge(name, timeout, minion_wait, lost, source):
    key = _nodes("key_fingerprint", name)
    claimed, record = _claim(name, key, time.monotonic() + timeout + minion_wait, lost, source)
    if not claimed:
        if not record or not key or record.get("key") != key or not record.get("class"):
            return _fail(f"{name}: no node record with a class for its accepted key")
        if record.get("state") not in ("converged", "failed"):
            return _fail(f"{name}: {record.get('state')}, not converged (wait, then retry)")
        return _returning({name: record}, ok=record["state"] == "converged")
    summary = {"started": claimed["converge"]["started"], "source": source}
    try:
        summary.update(_highstate(name, timeout, minion_wait))
        if summary["result"]:
            _admit(name, summary)
    except Exception as error:  # recorded as a failed converge, not left "converging"
        log.exception("node: converging %s failed", name)
        summary.update(result=False, comment=f"the converge stopped: {error}")
    summary["finished"] = time.time()
    record = _nodes(
        "update",
        name,
        when=lambda r: bool(r) and r.get("key") == key,
        state="converged" if summary["result"] else "failed",
        converge=summary,
    )
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as bus:
        bus.fire_event(summary, EVENT_TAG.format(name))
    if record is None:
        return _fail(f"{name}: forgotten while it converged")
    return _returning({name: record}, ok=summary["result"])


def converge_nodes(nodes, timeout=3600, minion_wait=900):
    """
    ``converge`` for each node of ``nodes`` (a list), all at once; fails if any fails.

    CLI Example: ``salt-run node.converge_nodes '[backends-1, backends-2]'``
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        # Each thread runs in a copy of this one's context: the loader's dunders live there.
        futures = {
            name: pool.submit(contextvars.copy_context().run, converge, name, timeout, minion_wait)
            for name in nodes
        }
        returned = {name: future.result() for name, future in futures.items()}
    results = {name: ret.get(name) or ret for name, ret in returned.items()}
    ok = all(ret.get("retcode") == 0 for ret in returned.values())
    return _returning(results, ok=ok)


def wait_converged(name, timeout=3600):
    """
    Wait for node ``name``'s converge (started by the reactor when salt-cloud created it) and
    print its result; exits non-zero when it failed or did not finish within ``timeout``.

    CLI Example: ``salt-cloud -p dataserver db1 && salt-run node.wait_converged db1``
    """
    if _name_problem(name):
        return _fail(f"node.wait_converged: {_name_problem(name)}")
    deadline = time.monotonic() + float(timeout)
    while True:
        key = _nodes("key_fingerprint", name)
        record = _nodes("get", name)
        if key is None or not record or record.get("key") not in (key, None):
            return _fail(f"{name}: no accepted key with a node record (not created, or gone)")
        if record.get("state") in ("converged", "failed"):
            return _returning({name: record}, ok=record["state"] == "converged")
        if time.monotonic() > deadline:
            return _fail(f"{name}: not converged after {timeout} s (it is {record.get('state')})")
        time.sleep(1)


def resume(minion_wait=10):
    """
    Converge again the nodes whose converge a dead master left unfinished (a ``converging``
    record whose lock no master holds) and whose minion answers this master: every master's
    schedule runs it when several share the store (master.d/multimaster.conf).

    Before that, a pending key is accepted when the node's record was made for exactly that
    key: a node created through another master (whose salt-cloud accepted its key there) is
    let in when it fails over to this one; no other key is.

    CLI Example: ``salt-run node.resume``
    """
    accepted = _accept_recorded_keys()
    local = salt.client.LocalClient(mopts=__opts__)
    stalled = [
        name
        for name, record in _nodes("records").items()
        if record.get("state") == "converging"
        and not _nodes("held", f"converge/{name}")
        and (_run_job(local, name, "test.ping", timeout=minion_wait) or {}).get("ret") is True
    ]
    for name in stalled:
        converge(name, source="resume")
    return {"result": True, "resumed": stalled, "accepted": accepted}


def _accept_recorded_keys():
    """Accept each pending key whose node record (shared by the masters) holds its
    fingerprint; the names accepted."""
    pending = os.path.join(__opts__["pki_dir"], "minions_pre")
    names = sorted(os.listdir(pending)) if os.path.isdir(pending) else []
    recorded = [
        name
        for name in names
        if not _name_problem(name)
        and (record := _nodes("get", name) or {}).get("key")
        and record.get("state") != "destroying"
        and _nodes("key_fingerprint", name, keys="minions_pre") == record["key"]
    ]
    for name in recorded:  # what salt-key -a does with the pki_dir's files (key_fingerprint's)
        log.warning("node: accepting %s's key, which its record was made for", name)
        os.replace(os.path.join(pending, name), os.path.join(__opts__["pki_dir"], "minions", name))
    return recorded


# --- leaving --------------------------------------------------------------------------------


def before_destroy(names):
    """
    What salt-cloud's destroy runs once per batch, before it terminates: each node's record
    is marked ``destroying``, the master's cached data of each node is dropped, and the swarm
    members among them are drained, leave and are removed from their swarms (one call of
    runner ``swarm``). Fails, naming them, when the swarm members could not be removed: do
    not terminate those.

    CLI Example: ``salt-run node.before_destroy '[web1, web2]'``
    """
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if _name_problem(n)]
    if bad:
        return _fail(f"node.before_destroy: {_name_problem(bad[0])}")
    marked = {name: _nodes("update", name, when=bool, state="destroying") for name in names}
    for name in names:
        _drop_cached(name)
    members = [name for name, record in marked.items() if (record or {}).get("swarm_role")]
    removed = __salt__["swarm.remove_node"](members) if members else {}
    if removed.get("result") is False:
        return _fail(f"node.before_destroy: {removed.get('comment')}; do not destroy {members}")
    nodes = {name: "destroying" if record else "no record" for name, record in marked.items()}
    return _returning({"result": True, "nodes": nodes}, ok=True)


def forget(name):
    """
    The operator's command to forget node ``name``: its record, accepted key and the master's
    cached data. Refused while EC2 lists a live instance of the record (or cannot be asked):
    destroy that with salt-cloud -d instead.

    CLI Example: ``salt-run node.forget web1``
    """
    if _name_problem(name):
        return _fail(f"node.forget: {_name_problem(name)}")
    record = _nodes("get", name) or {}
    if record.get("instance_id"):
        try:
            live = live_nodes().get(name, {}).get("id") == record["instance_id"]
        except Exception as error:  # fail closed: unknown means "still there"
            return _fail(f"{name}: cannot ask EC2 whether it is gone ({error}); retry later")
        if live:
            return _fail(f"{name}: {record['instance_id']} is live: salt-cloud -d {name}")
    _nodes("forget", name)
    salt.wheel.WheelClient(__opts__).cmd("key.delete", [name])
    _drop_cached(name)
    return _returning({"result": True, "comment": f"forgot {name}"}, ok=True)


# --- EC2 as the master sees it -------------------------------------------------------------


def _cloud_client():
    """salt-cloud's client for this checkout's `cloud` config, usable from the master's
    processes (working directory /): relative cloud_dirs are taken from the checkout."""
    root = os.path.dirname(os.path.abspath(__opts__["conf_file"]))
    # The master's options without any cloud configuration (3007 refuses providers twice).
    master = {k: v for k, v in __opts__.items() if k not in ("providers", "profiles")}
    opts = salt.config.cloud_config(
        os.path.join(root, "cloud"), master_config=copy.deepcopy(master)
    )
    opts["cloud_dirs"] = [os.path.join(root, path) for path in opts.get("cloud_dirs") or []]
    # A runner's output is its return (--out=json): no deploy session printed into it.
    opts["display_ssh_output"] = False
    return salt.cloud.CloudClient(opts=opts)


def _driver_calls(client, name):
    """Per configured provider: a function calling its driver's function ``name`` in this
    process, as salt-cloud would (raises when a driver did not load)."""
    cloud = client.loaded = getattr(client, "loaded", None) or salt.cloud.Cloud(client.opts)
    for alias, drivers in client.opts["providers"].items():
        for driver in drivers:
            function = cloud.clouds.get(f"{driver}.{name}")
            if function is None:
                raise RuntimeError(f"cloud provider {alias!r}: driver {driver!r} did not load")

            def call(*args, function=function, provider=f"{alias}:{driver}", **kwargs):
                with salt.utils.context.func_globals_inject(
                    function, __active_provider_name__=provider
                ):
                    return function(*args, **kwargs)

            yield call


def _act(client, action, name, **kwargs):
    """Driver action ``action`` on node ``name`` in this process (salt-cloud -a): the answer of
    the provider that has the node, else the first provider's error."""
    errors = []
    for call in _driver_calls(client, action):
        try:
            return call(name, kwargs, call="action")
        except Exception as error:  # a provider without this node; the next one is asked
            errors.append(error)
    raise errors[0]


def _function(client, function, **kwargs):
    """Driver function ``function`` (salt-cloud -f) of the first provider, in this process."""
    return next(_driver_calls(client, function))(kwargs, call="function")


def _purge_command(client):
    return __utils__["dockerhosts_ec2.purge_command"](next(iter(client.opts["providers"])))


def live_nodes(client=None):
    """{name: details} of every live node of every configured provider (list_nodes_full).
    Raises when a provider's driver cannot be asked: never read as "no nodes"."""
    nodes = {}
    for list_nodes_full in _driver_calls(client or _cloud_client(), "list_nodes_full"):
        nodes.update(list_nodes_full())
    return nodes


def snapshot_data(keep=7, min_age_hours=0):
    """
    A snapshot of the Docker volume of every live node whose volume outlives it (a data
    class's), each node's snapshots beyond the newest ``keep`` deleted: the driver's
    ``snapshot_docker_volume`` action per node, taken while the node's minion holds the
    volume's filesystem frozen (``docker_storage.freeze``; a snapshot taken without, the
    minion not answering, is kept and reported). Nodes snapshotted less than
    ``min_age_hours`` ago are skipped, so that the masters' schedules (``master`` file) take
    one snapshot per period between them. Exits non-zero naming the nodes that failed.

    CLI Example: ``salt-run node.snapshot_data keep=14``
    """
    if not str(keep).isdigit() or int(keep) < 1:
        return _fail(f"node.snapshot_data: keep must be a whole number from 1, got {keep!r}")
    if not re.fullmatch(r"\d+(\.\d+)?", str(min_age_hours)):
        return _fail(f"node.snapshot_data: min_age_hours must be a number, got {min_age_hours!r}")
    client = _cloud_client()
    try:
        live = live_nodes(client)
        snapshotters = list(_driver_calls(client, "snapshot_docker_volume"))
    except Exception as error:  # one line, not a traceback
        return _fail(f"node.snapshot_data: cannot ask EC2 ({error}); nothing was snapshotted")
    since = time.time() - float(min_age_hours) * 3600
    data = [name for name, node in sorted(live.items()) if node.get("keeps_data")]
    due = [n for n in data if ((_nodes("get", n) or {}).get("snapshot_time") or 0) <= since]
    taken, failed, local = {}, {}, salt.client.LocalClient(mopts=__opts__)
    for name in due:
        frozen = _minion_call(local, name, "docker_storage.freeze", 60)
        try:
            for snapshot in snapshotters:
                taken[name] = snapshot(name, {"keep": keep}, call="action")["snapshot_id"]
        except Exception as error:  # the others go on; this one is reported
            failed[name] = f"no snapshot ({error})"
        finally:
            if not frozen["retcode"]:
                _minion_call(local, name, "docker_storage.thaw")
        if name in taken and frozen["retcode"]:
            why = frozen["ret"]
            failed[name] = f"{taken[name]} is crash-consistent (docker_storage.freeze: {why})"
    result = {"snapshots": taken, "skipped": sorted(set(data) - set(due))}
    if failed:
        listed = "; ".join(f"{name}: {error}" for name, error in failed.items())
        return _fail(f"node.snapshot_data: {listed}", **result)
    return _returning({"result": True, **result}, ok=True)


def _row(name, record, instance, key):
    """One line of ``status``: what the master and EC2 know of a node, and what is wrong."""
    converge_ = record.get("converge") or {}
    volumes = record.get("data_volumes") or []
    snapshots = record.get("snapshots") or []
    problems = []
    if instance and not key:
        problems.append("instance without an accepted key")
    if key and record.get("instance_id") and not instance:
        problems.append("key without a live instance")
    if record and key and record.get("key") != key:
        problems.append("record is for another key")
    if record.get("state") == "failed":
        problems.append(f"converge failed: {converge_.get('comment')}")
    return {
        "node": name,
        "class": record.get("class") or (instance or {}).get("class"),
        "instance": (instance or {}).get("id") or record.get("instance_id"),
        "state": record.get("state") or "no record",
        "key": "accepted" if key else "none",
        "converged": time.strftime("%F %T", time.gmtime(converge_["finished"]))
        if converge_.get("finished")
        else None,
        "result": converge_.get("comment"),
        "swarm_role": record.get("swarm_role"),
        "data_volume": ", ".join(v.get("volume_id", "?") for v in volumes) or None,
        "last_snapshot": _snapshot_row(snapshots, record.get("snapshot_time")),
        "problem": "; ".join(problems) or None,
    }


def _snapshot_row(snapshots, taken):
    """The newest snapshot (the record lists them newest first) and when it was taken."""
    if not snapshots:
        return None
    return (
        f"{snapshots[0]} ({time.strftime('%F %T', time.gmtime(taken))})" if taken else snapshots[0]
    )


def status(node_class=None):
    """
    Every node (or every node of ``node_class``) in one table: node, class, instance, state,
    key, last converge and its result, swarm role, data volume, last snapshot, and what is
    wrong; from the records and one EC2 describe. ``--out=json`` for scripts. Exits non-zero
    when something is wrong (an instance without a key, a key without an instance, a failed
    converge) or EC2 cannot be asked.

    CLI Example: ``salt-run node.status backends``
    """
    try:
        live = live_nodes()
    except Exception as error:  # one line, not a traceback
        return _fail(f"node.status: cannot ask EC2 ({error}); check the provider and retry")
    records = _nodes("records")
    rows = [
        _row(name, records.get(name) or {}, live.get(name), _nodes("key_fingerprint", name))
        for name in sorted(set(records) | set(live))
    ]
    rows = [row for row in rows if node_class in (None, row["class"])]
    __context__["retcode"] = 1 if any(row["problem"] for row in rows) else 0
    # salt-run exits with data's retcode; salt/_output/node_status.py prints the table.
    return {"outputter": "node_status", "data": {"nodes": rows, "retcode": __context__["retcode"]}}


# --- replacing ------------------------------------------------------------------------------


class _StepFailed(Exception):
    """A step of a replace failed: its message says which and why."""


def _step(what, function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except Exception as error:  # one line naming the step, not a traceback
        raise _StepFailed(f"{what}: {error}") from error


def _replacement_name(name, taken):
    """``<name without a trailing -N>-<first free N>``: db1 -> db1-1, backends-2 -> backends-3
    when backends-1 is taken."""
    stem = re.sub(r"-\d+$", "", name)
    return next(f"{stem}-{n}" for n in itertools.count(1) if f"{stem}-{n}" not in taken)


def _replace_problem(name, new, profile, *, record, live, taken, profiles):
    """Pure: why node ``name`` cannot be replaced by ``new`` from ``profile``, or None."""
    node = live.get(name)
    found = profiles.get(profile) or {}
    if node is None:
        return f"{name}: no live instance has this name"
    if node.get("state") != "running":
        return f"{name} is {node.get('state')}, not running: start it (salt-cloud -a start)"
    if record.get("state") != "converged":
        return f"{name} is {record.get('state') or 'not recorded'}: converge it first"
    if _name_problem(new) or new in taken:
        return f"new: {_name_problem(new) or f'{new} is taken'}"
    if found.get("class") != record.get("class"):
        what = f"of class {found.get('class')!r}" if found else "not a salt-cloud profile"
        return f"profile: {profile!r} is {what} ({name} is of {record.get('class')!r})"
    return None


def _move_volume(client, name, moved):
    """The old node's Docker stopped (its containers shut down cleanly) and the volume's
    filesystems unmounted (state docker.release), the node stopped, its Docker volume
    snapshotted and detached; ``moved`` says how far it got."""
    local = salt.client.LocalClient(mopts=__opts__)
    moved["released"] = True
    released = summarize(_run_job(local, name, "state.apply", ["docker.release"], timeout=600))
    if not released["result"]:
        failed = released.get("failed") or released.get("errors") or released["comment"]
        raise _StepFailed(f"releasing the volume on {name} (state docker.release): {failed}")
    moved["stopped"] = True
    _step(f"stopping {name}", _act, client, "stop", name)
    why = "before replace"
    snapshot = _step(f"snapshot of {name}", _act, client, "snapshot_docker_volume", name, why=why)
    moved["snapshot_id"] = snapshot["snapshot_id"]
    _step(f"detaching {name}'s volume", _act, client, "detach_docker_volume", name)
    moved["volume_id"] = snapshot["volume_id"]


def _bring_up(client, new, profile, volume, wait):
    """The new node created (on the old one's volume, or on a volume restored from its
    snapshot in another zone), converged, on the same data, its containers healthy: its
    record."""
    overrides = {}
    if volume and volume["restore"]:  # merged into the profile's docker_volume
        overrides = {new: {"docker_volume": {"Ebs": {"SnapshotId": volume["snapshot_id"]}}}}
    elif volume:
        overrides = {new: {"docker_volume_id": volume["volume_id"]}}
    created = _step(f"creating {new}", client.profile, profile, [new], vm_overrides=overrides)
    error = (created.get(new) or {}).get("Error") if isinstance(created, dict) else created
    if error or new not in created:
        raise _StepFailed(f"creating {new}: {error or 'salt-cloud created nothing'}")
    waited = wait_converged(new, timeout=3600)
    converged = waited.get(new) or {}
    if converged.get("state") != "converged":
        why = (converged.get("converge") or {}).get("comment") or waited.get("comment")
        raise _StepFailed(f"converging {new}: {why}")
    data_ids = [v.get("data_id") for v in converged.get("data_volumes") or []]
    if volume and data_ids != [volume["data_id"]]:
        raise _StepFailed(f"{new} holds data {data_ids}, not {volume['data_id']}")
    local = salt.client.LocalClient(mopts=__opts__)
    checked = _minion_call(local, new, "docker_containers.unhealthy", wait, timeout=wait + 60)
    if checked["retcode"] or checked["ret"]:
        raise _StepFailed(f"containers of {new}: {checked['ret']}")
    return converged


def _put_back(client, name, new, moved):
    """After a failed step: the new node destroyed, the old one given its volume back,
    started and converged again. What could not be done, in one line, or None."""
    with contextlib.suppress(Exception):
        if new in live_nodes(client):
            if moved.get("volume_id"):  # off first: the destroy would snapshot it as the new's
                with contextlib.suppress(Exception):
                    _act(client, "stop", new)
                    detached = _act(client, "detach_docker_volume", new)["volume_id"]
                    if detached != moved["volume_id"]:  # a copy restored for it, not the data
                        moved["restored"] = detached
            client.destroy([new])
    volume = {"volume_id": moved.get("volume_id")}
    steps = [
        ("re-attaching its volume", "volume_id" in moved, "attach_docker_volume", volume),
        ("starting it", moved.get("stopped"), "start", {}),
    ]
    try:
        for what, needed, action, kwargs in steps:
            if needed:
                _step(what, _act, client, action, name, **kwargs)
        if moved.get("released"):  # Docker and its storage back (a start boots them anyway)
            back = _highstate(name, 1800, 600)
            if not back["result"]:
                raise _StepFailed(f"its highstate: {back['comment']}")
    except _StepFailed as failure:  # reported: the operator finishes by hand
        return f"{name}: {failure}"
    return None


def replace(name, new=None, profile=None, wait=300):
    """
    Replace node ``name`` by a new node ``new`` (default ``<name without -N>-<next N>``) of its
    class, from ``profile`` (default: the one it was created from; a new AMI or size comes
    from there), then destroy the old one.

    - A class whose Docker volume outlives its nodes (``dataserver``): the old node is stopped
      (Docker and its containers shut down cleanly, the filesystems unmounted), its volume
      snapshotted (``before replace``) and detached; the new node launches in the volume's
      zone with it attached.
    - Any other class: the new node is created beside the old one.

    The new node must converge and its containers run healthy within ``wait`` seconds
    (``docker_containers.unhealthy``) before the old one is destroyed (swarm members drained
    and removed by the destroy). On any failure the new node is destroyed and the old one
    serves again (its volume re-attached, started); exit non-zero naming the step.

    CLI Example: ``salt-run node.replace db1 new=db2 profile=dataserver-2027``
    """
    client = _cloud_client()
    record = _nodes("get", name) or {}
    try:
        live = live_nodes(client)
    except Exception as error:  # one line, not a traceback
        return _fail(f"node.replace {name}: cannot ask EC2 ({error}); nothing was changed")
    taken = _taken(live)
    new = new or _replacement_name(name, taken)
    profile = profile or record.get("profile") or record.get("class")
    profiles = client.opts.get("profiles") or {}
    problem = _replace_problem(
        name, new, profile, record=record, live=live, taken=taken, profiles=profiles
    )
    if problem:
        return _fail(f"node.replace {name}: {problem}; nothing was changed")
    keeps_data, old_zone = live[name].get("keeps_data"), live[name].get("availability_zone")
    try:  # a profile landing in another zone than the volume: restore its snapshot there
        zone = keeps_data and _function(client, "landing_zone", profile=profile)
    except Exception as error:  # one line, not a traceback
        return _fail(f"node.replace {name}: profile {profile!r}: {error}; nothing was changed")
    moved, volume, started, purge = {}, None, time.monotonic(), _purge_command(client)
    try:
        if keeps_data:
            _move_volume(client, name, moved)
            data_id = ((record.get("data_volumes") or [{}])[0]).get("data_id")
            volume = {"volume_id": moved["volume_id"], "data_id": data_id or moved["volume_id"]}
            volume.update(snapshot_id=moved["snapshot_id"], restore=zone not in (None, old_zone))
        converged = _bring_up(client, new, profile, volume, float(wait))
    except _StepFailed as failure:
        left = _put_back(client, name, new, moved)
        outcome = f"NOT put back: {left}" if left else f"{new} destroyed, {name} serves again"
        if moved.get("restored"):
            outcome += f"; {new}'s restored volume is left: {purge}{moved['restored']}"
        snapshot_id = moved.get("snapshot_id")
        return _fail(f"node.replace {name}: {failure}; {outcome}", snapshot_id=snapshot_id)
    result = {
        "result": True,
        "replaced": name,
        "by": new,
        "volume_id": moved.get("volume_id"),
        "snapshot_id": moved.get("snapshot_id"),
        "data_volumes": converged.get("data_volumes"),
        "seconds": round(time.monotonic() - started, 1),
    }
    if volume and volume["restore"]:  # the old volume stays where it was, detached
        result["left"] = f"{moved['volume_id']} in {old_zone}: {purge}{moved['volume_id']}"
    try:
        client.destroy([name])
        left = name in live_nodes(client) and "it is still live"
    except Exception as error:  # one line, not a traceback
        left = str(error)
    if left:
        again = f"salt-cloud -d {name}"
        return _fail(f"node.replace {name}: {new} serves; destroying {name}: {left}: {again}")
    return _returning(result, ok=True)


def replace_plan(node_class, batch=1):
    """
    What ``salt/orch/replace.sls`` runs: the live nodes of ``node_class``, oldest first, each
    with its replacement's name, in groups of ``batch`` nodes that are replaced at the same
    time (the orchestration starts a group once the one before it is replaced whole). Refused,
    before anything changes, for an unknown class, a bad batch or when EC2 cannot be asked.

    CLI Example: ``salt-run node.replace_plan dataserver batch=2``
    """
    problem = _nodes("class_problem", node_class)
    if not problem and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        problem = f"batch: {batch!r} is not a whole number of nodes (1 or more)"
    if problem:
        return _fail(f"orch.replace: {problem}; nothing was changed")
    try:
        live = live_nodes()
    except Exception as error:  # one line, not a traceback
        return _fail(f"orch.replace {node_class}: cannot ask EC2 ({error}); nothing was changed")
    nodes, taken = [], _taken(live)
    for name in plan(live, node_class, 0, node_class)["live"]:
        nodes.append({"name": name, "new": _replacement_name(name, taken)})
        taken.add(nodes[-1]["new"])
    groups = [nodes[first : first + batch] for first in range(0, len(nodes), batch)]
    return _returning({"result": True, "class": node_class, "groups": groups}, ok=True)


def _taken(live):
    """Names a new node may not take: live instances, records, keys (accepted or pending)."""
    pki = __opts__["pki_dir"]
    keys = [*os.listdir(f"{pki}/minions"), *os.listdir(f"{pki}/minions_pre")]
    return {*live, *_nodes("names"), *keys}


# --- class size ------------------------------------------------------------------------------


def plan(live, node_class, count, prefix, taken=()):
    """Pure: names to create so that ``node_class`` has ``count`` live nodes, and the extra
    ones (newest first) when it has more."""
    members = sorted(
        (name for name, node in live.items() if node.get("class") == node_class),
        key=lambda name: (str(live[name].get("launch_time") or ""), name),
    )
    create, used, number = [], set(live) | set(taken), 1
    while len(members) + len(create) < count:
        if f"{prefix}-{number}" not in used:
            create.append(f"{prefix}-{number}")
        number += 1
    extra = list(reversed(members))[: max(0, len(members) - count)]
    return {"live": members, "create": create, "extra": extra}


def request_problems(request, classes):
    """Pure: every problem of an ensure_class request ({class, count, profile, prefix,
    remove_extra}), given the classes that exist."""
    if not isinstance(request, dict):
        yield "the request must be a mapping: {class: <name>, count: <n>}"
        return
    suggest = __utils__["dockerhosts_checks.suggestion"]
    for key in set(request) - set(REQUEST_KEYS):
        yield f"{key}: unknown key{suggest(key, REQUEST_KEYS)} ({', '.join(REQUEST_KEYS)})"
    for key in ("class", "count"):
        if key not in request:
            yield f"{key}: missing (the request is {{class: <name>, count: <n>}})"
    count, node_class = request.get("count", 0), request.get("class", "")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 1000:
        yield f"count: {count!r} is not a whole number from 0 to 1000"
    problem = __utils__["dockerhosts_names.class_name_problem"](node_class)
    problem = problem or (node_class not in classes and f"{node_class!r} has no folder")
    if "class" in request and problem:
        yield f"class: {problem} (classes: {', '.join(classes)})"
    if not isinstance(request.get("remove_extra", False), bool):
        yield f"remove_extra: {request['remove_extra']!r} is not true or false"
    if "prefix" in request and _name_problem(request["prefix"]):
        yield f"prefix: {_name_problem(request['prefix'])}"


def ensure_plan(request):
    """
    What ``salt/orch/ensure_class.sls`` does for a request ({class, count; profile, prefix,
    remove_extra}): the class's live nodes (EC2 tag ``class``), the names to create with the
    profile (default: the class's) and the extra nodes. Refused, before anything changes, on
    a bad request, a profile of another class, or when EC2 cannot be asked.

    CLI Example: ``salt-run node.ensure_plan '{class: backends, count: 3}'``
    """
    problems = list(request_problems(request, _nodes("classes")))
    if problems:
        return _fail(f"orch.ensure_class: {'; '.join(problems)}; nothing was changed")
    node_class = request["class"]
    profile = request.get("profile") or node_class
    try:
        client = _cloud_client()
        found = client.opts.get("profiles", {}).get(profile)
        if not found or found.get("class") != node_class:
            what = f"of class {found.get('class')!r}" if found else "not a salt-cloud profile"
            return _fail(f"orch.ensure_class: profile: {profile!r} is {what} ({node_class} asked)")
        accepted = os.listdir(os.path.join(__opts__["pki_dir"], "minions"))
        live = live_nodes(client)
    except Exception as error:  # one line, not a traceback
        return _fail(f"orch.ensure_class: cannot ask EC2 ({error}); nothing was changed")
    result = plan(live, node_class, request["count"], request.get("prefix") or node_class, accepted)
    result.update(request, profile=profile, remove_extra=request.get("remove_extra", False))
    return _returning(result, ok=True)
