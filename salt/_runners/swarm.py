"""
Swarm per class, decided on the master: which nodes form a class's swarm, which of them
manage it, who may join it, and in what order it converges.

Identity and entitlement come from the master only: a node belongs to a class when the
master's node class registry says so (runner ``node_class``; until that runner is present,
its files ``<pki_dir>/node_classes/<minion id>`` are read directly), its key is accepted,
and the pillar the master compiles for it enables ``swarm``. Never from a grain.

Join tokens never travel in clear: for each node that may join, a manager seals the token
to that node's public key (the one the master authenticated it with,
``<pki_dir>/minions/<id>``) and only the sealed blob crosses the event bus to that node,
whose private key alone opens it (execution module ``docker_swarm``).

Functions (each returns {result, changes, comment}; ``test=True`` plans without changing):

- ``converge <class>``: managers, then workers, then the cluster (nodes' labels,
  networks, secrets, configs, services) -- what orch.swarm runs step by step;
- ``managers <class>``: the first manager creates the swarm when no node of the class is in
  one (never a second time: see ``forget``); more managers join or are promoted/demoted to
  ``swarm:managers:count``;
- ``workers <class>``: every other member joins as a worker;
- ``cluster <class>``: state docker.swarm.cluster on one manager;
- ``admit <minion id>``: converge the class the registry puts that minion in (for the
  create reactor);
- ``remove_node <minion id>``: drain, leave and remove from the node list (for the destroy
  reactor, or before ``salt-cloud -d``); services move to the remaining nodes;
- ``status <class>``, ``forget <class>``.
"""

import contextlib
import copy
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import salt.cache
import salt.client
import salt.loader
import salt.pillar

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
REGISTRY = "node_classes"
STATE_DIR = "docker-hosts-swarm"
CALL_TIMEOUT = 60
JOIN_PARALLEL = 8
NODE_DOWN_TIMEOUT = 30
MINION_LABEL = "com.docker-hosts.minion"


class SwarmError(Exception):
    """A refusal or failure that ends the step; its message is the step's comment."""


# --- plans (pure) ---------------------------------------------------------------------------


def _largest_odd(number):
    return number if number % 2 else max(number - 1, 1)


def _host(address):
    return str(address).rsplit(":", 1)[0] if address else None


def _in_swarm_of(info, manager_addrs):
    """Whether an active worker's known managers are (some of) this class's managers."""
    return bool({_host(addr) for addr in info["managers"]} & manager_addrs)


def _no_manager_errors(members, infos, known_cluster):
    busy = sorted(m for m, info in infos.items() if info and info["state"] != "inactive")
    silent = sorted(m for m in members if infos.get(m) is None)
    if busy:
        return [f"{', '.join(busy)} already in a swarm but no manager of the class answers"]
    if silent:
        return [f"cannot tell whether a swarm exists: {', '.join(silent)} do not answer"]
    if known_cluster:
        return [
            f"the class had swarm {known_cluster} and none of its nodes is in it now: not "
            "creating another (salt-run swarm.forget <class> first if a new one is wanted)"
        ]
    return []


def plan_managers(members, infos, count, prefer=(), known_cluster=None):
    """
    Who manages the class's swarm. ``infos``: {minion: docker_swarm.node_info() or None when
    it did not answer}. Returns {init, join, promote, demote, managers, errors}: ``init`` only
    when no member is in a swarm, every member answered and the class never had one; existing
    managers stay managers; new ones come from ``prefer`` first, then by minion id.
    """
    managers = sorted(m for m in members if infos.get(m) and infos[m]["is_manager"])
    plan = {"init": None, "join": [], "promote": [], "demote": [], "managers": managers}
    clusters = {infos[m]["cluster_id"] for m in managers}
    if len(clusters) > 1:
        plan["errors"] = [f"nodes of the class manage different swarms: {sorted(clusters)}"]
        return plan
    plan["errors"] = [] if managers else _no_manager_errors(members, infos, known_cluster)
    if plan["errors"]:
        return plan
    addrs = {_host(infos[m]["node_addr"]) for m in managers}
    eligible = [
        m
        for m in [*managers, *prefer, *sorted(members)]
        if m in members
        and infos.get(m)
        and (infos[m]["state"] == "inactive" or m in managers or _in_swarm_of(infos[m], addrs))
    ]
    chosen = list(dict.fromkeys(eligible))[: min(count, _largest_odd(len(members)))]
    if not managers:
        plan["init"], chosen = chosen[0], chosen[1:]
    for minion in chosen:
        if minion in managers:
            continue
        plan["join" if infos[minion]["state"] == "inactive" else "promote"].append(minion)
    plan["demote"] = [m for m in managers if m not in chosen and m != plan["init"]]
    return plan


def plan_workers(members, infos):
    """Members to join as workers (answering, in no swarm) and members in another swarm."""
    managers = [m for m in members if infos.get(m) and infos[m]["is_manager"]]
    addrs = {_host(infos[m]["node_addr"]) for m in managers}
    join, foreign = [], []
    for minion in members:
        info = infos.get(minion)
        if not info or minion in managers:
            continue
        if info["state"] == "inactive":
            join.append(minion)
        elif not _in_swarm_of(info, addrs):
            foreign.append(minion)
    return {"join": join, "foreign": foreign}


# --- registry, keys, pillar: the master's view --------------------------------------------


def _valid_name(name, what):
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SwarmError(f"{name!r} is not a valid {what}")
    return name


def _class_of(minion_id):
    _valid_name(minion_id, "minion id")
    if "node_class.get" in __salt__:
        try:
            found = __salt__["node_class.get"](minion_id)
        except Exception:  # fail closed: no class, no token
            return None
        return found if isinstance(found, str) and NAME_RE.match(found) else None
    path = os.path.join(__opts__["pki_dir"], REGISTRY, minion_id)
    try:
        with open(path, encoding="utf-8") as handle:
            name = handle.read().strip()
    except OSError:
        return None
    return name if NAME_RE.match(name) else None


def _members(class_name):
    if "node_class.members" in __salt__:
        return sorted(__salt__["node_class.members"](class_name))
    directory = os.path.join(__opts__["pki_dir"], REGISTRY)
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    return sorted(m for m in entries if NAME_RE.match(m) and _class_of(m) == class_name)


def _public_key(minion_id):
    """The key the master accepted for the minion: only its holder can open what is sealed
    with it. Not accepted (pending, rejected, unknown): no key, no token."""
    path = os.path.join(__opts__["pki_dir"], "minions", _valid_name(minion_id, "minion id"))
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def _compile_pillar(minion_id):
    cached = salt.cache.factory(__opts__).fetch(f"minions/{minion_id}", "data") or {}
    pillar = salt.pillar.get_pillar(
        __opts__,
        cached.get("grains") or {},
        minion_id,
        saltenv=__opts__.get("saltenv") or "base",
        pillarenv=__opts__.get("pillarenv"),
    ).compile_pillar()
    if pillar.get("_errors"):
        raise SwarmError(f"the pillar of {minion_id} does not compile: {pillar['_errors']}")
    return pillar


def _validate(pillar):
    validate = salt.loader.raw_mod(__opts__, "docker_swarm", None).get("docker_swarm.validate")
    if validate is None:
        raise SwarmError("module docker_swarm is not on the master: salt-run saltutil.sync_all")
    try:
        return validate(pillar.get("swarm") or {}, secrets=pillar.get("docker_secrets") or {})
    except Exception as error:
        raise SwarmError(str(error)) from error


# --- one run: a class, locked, with its members' answers ---------------------------------------


class _Run:
    """One step for one class: members, their pillar and answers, what changed."""

    def __init__(self, class_name, test):
        self.class_name = _valid_name(class_name, "class name")
        self.test = bool(test)
        self.members = _members(class_name)
        self.client = salt.client.LocalClient(mopts=__opts__)
        self.changes, self.notes, self.failures = {}, [], []
        self._settings = {}

    def fork(self):
        """The same run with its own client, for a thread."""
        twin = copy.copy(self)
        twin.client = salt.client.LocalClient(mopts=__opts__)
        return twin

    # answers from minions

    def call(self, minion, fun, arg=(), kwarg=None, timeout=CALL_TIMEOUT):
        """(answered, retcode, return) of ``fun`` on one minion."""
        started = time.monotonic()
        returns = self.client.cmd(
            [minion],
            fun,
            arg=list(arg),
            tgt_type="list",
            timeout=timeout,
            kwarg=kwarg or {},
            full_return=True,
        )
        item = returns.get(minion)
        log.debug("swarm: %s on %s: %.1f s", fun, minion, time.monotonic() - started)
        if not isinstance(item, dict) or "ret" not in item:
            return False, None, "no answer"
        return True, item.get("retcode", 0), item["ret"]

    def probe(self, minions=None):
        """{minion: node_info or None} for ``minions`` (default: the class's members)."""
        minions = sorted(set(minions or self.members))
        if not minions:
            return {}
        returns = self.client.cmd(
            minions,
            "docker_swarm.node_info",
            tgt_type="list",
            timeout=CALL_TIMEOUT,
            full_return=True,
        )
        infos = {}
        for minion in minions:
            item = returns.get(minion) or {}
            ok = isinstance(item.get("ret"), dict) and item.get("retcode", 0) == 0
            infos[minion] = item["ret"] if ok else None
            if not ok:
                self.notes.append(f"{minion} did not answer (treated as not in the swarm)")
        return infos

    def state(self, minion, fun, name, **kwargs):
        """Run one state on a minion; returns its result dict (result False when no answer)."""
        answered, _, ret = self.call(
            minion, "state.single", [fun], {"name": name, "test": self.test, **kwargs}
        )
        if answered and isinstance(ret, dict) and len(ret) == 1:
            return next(iter(ret.values()))
        return {"result": False, "changes": {}, "comment": f"{minion}: {ret}"}

    # pillar and entitlement

    def settings(self, minion):
        if minion not in self._settings:
            started = time.monotonic()
            self._settings[minion] = _validate(_compile_pillar(minion))
            log.debug("swarm: pillar of %s: %.1f s", minion, time.monotonic() - started)
        return self._settings[minion]

    def class_settings(self):
        if not self.members:
            raise SwarmError(f"the registry has no node of class {self.class_name}")
        settings = self.settings(self.members[0])
        if not settings["enabled"]:
            raise SwarmError(f"swarm is not enabled in the pillar of class {self.class_name}")
        return settings

    def refusal(self, minion):
        """Why ``minion`` may not have this class's join token, or None when it may."""
        registered = _class_of(minion)
        if registered != self.class_name:
            where = f"class {registered!r}" if registered else "no class"
            return f"{minion} is not entitled: the master's registry gives it {where}"
        if _public_key(minion) is None:
            return f"{minion} is not entitled: its key is not accepted"
        try:
            enabled = self.settings(minion)["enabled"]
        except SwarmError as error:
            return f"{minion} is not entitled: {error}"
        if not enabled:
            return f"{minion} is not entitled: class {self.class_name!r} does not enable swarm"
        return None

    # outcome

    def record(self, minion, result):
        if result.get("changes"):
            self.changes[minion] = result["changes"]
        if result.get("result") is False:
            self.failures.append(f"{minion}: {result.get('comment')}")
        elif result.get("comment"):
            self.notes.append(f"{minion}: {result['comment']}")

    def outcome(self):
        result = not self.failures
        if result and self.test and self.changes:
            result = None
        return {
            "result": result,
            "changes": self.changes,
            "comment": "; ".join(self.failures + self.notes) or "nothing to do",
        }


def _state_file(class_name, suffix=".json"):
    return __salt__["node.cache_file"](STATE_DIR, class_name, suffix)


def _known_cluster(class_name):
    record = __salt__["node.read_cache_record"](STATE_DIR, class_name)
    return record.get("cluster_id") if record else None


def _remember_cluster(class_name, cluster_id):
    if not cluster_id or cluster_id == _known_cluster(class_name):
        return
    record = {"cluster_id": cluster_id, "since": int(time.time())}
    __salt__["node.write_cache_record"](STATE_DIR, class_name, record)


def _locked(class_name):
    """One step at a time per class, among every master sharing the store (two create
    reactors must not both create a swarm)."""
    _valid_name(class_name, "class name")
    return __utils__["dockerhosts_nodes.locked"](__opts__, f"swarm/{class_name}")


def _finish(outcome):
    if outcome["result"] is False:
        __context__["retcode"] = 1
    return outcome


def _step(class_name, test, body):
    try:
        with _locked(class_name):
            run = _Run(class_name, test)
            body(run)
            return _finish(run.outcome())
    except SwarmError as error:
        return _finish({"result": False, "changes": {}, "comment": str(error)})


# --- steps ------------------------------------------------------------------------------------


def plan_has_manager(infos):
    return any(info and info["is_manager"] for info in infos.values())


def _acting_manager(infos, avoid=None):
    managers = sorted(m for m, info in infos.items() if info and info["is_manager"])
    preferred = [m for m in managers if m != avoid]
    if not (preferred or managers):
        raise SwarmError("no manager of the class answers")
    return (preferred or managers)[0]


def _join_one(run, minion, role, tokens):
    settings = run.settings(minion)
    return run.state(
        minion,
        "docker_swarm.joined",
        tokens["cluster_id"],
        sealed=tokens["sealed"][minion],
        role=role,
        remote_addrs=tokens["managers"],
        addressing={key: settings[key] for key in ("advertise_addr", "listen_addr")},
    )


def _join(run, minions, role, manager):
    """Join ``minions`` as ``role``: each entitled one gets the token sealed for it alone.
    Managers join one at a time (raft), workers all at once."""
    entitled = []
    for minion in minions:
        refusal = run.refusal(minion)
        if refusal:
            run.failures.append(refusal)
        elif run.test:
            run.changes[minion] = {"join": role}
        else:
            entitled.append(minion)
    if not entitled:
        return
    keys = {minion: _public_key(minion) for minion in entitled}
    answered, retcode, tokens = run.call(manager, "docker_swarm.sealed_join_tokens", [role, keys])
    if not answered or retcode or not isinstance(tokens, dict):
        run.failures.append(f"{manager} did not give join tokens: {tokens}")
        return
    if role == "manager" or len(entitled) == 1:
        for minion in entitled:
            run.record(minion, _join_one(run, minion, role, tokens))
        return
    with ThreadPoolExecutor(max_workers=min(JOIN_PARALLEL, len(entitled))) as pool:
        results = pool.map(lambda m: _join_one(run.fork(), m, role, tokens), entitled)
        for minion, result in zip(entitled, list(results), strict=True):
            run.record(minion, result)


def _initialize(run, minion):
    refusal = run.refusal(minion)
    if refusal:
        raise SwarmError(refusal)
    settings = run.settings(minion)
    result = run.state(
        minion,
        "docker_swarm.initialized",
        run.class_name,
        allow_init=True,
        addressing={
            key: settings[key]
            for key in ("advertise_addr", "listen_addr", "default_addr_pool", "subnet_size")
        },
    )
    run.record(minion, result)
    if result.get("result") is False:
        raise SwarmError(f"{minion}: {result.get('comment')}")
    if not run.test:
        _remember_cluster(run.class_name, (result["changes"].get("swarm") or {}).get("new"))


def _set_role(run, manager, minion, node_id, role):
    run.changes[minion] = {
        "role": {"old": "manager" if role == "worker" else "worker", "new": role}
    }
    if run.test:
        return
    answered, retcode, ret = run.call(
        manager, "docker_swarm.node_update", [node_id], {"role": role}
    )
    if not answered or retcode:
        run.failures.append(f"{manager} could not make {minion} a {role}: {ret}")


def _managers_step(run):
    settings = run.class_settings()
    infos = run.probe()
    plan = plan_managers(
        run.members,
        infos,
        settings["managers"]["count"],
        settings["managers"]["prefer"],
        _known_cluster(run.class_name),
    )
    if plan["errors"]:
        raise SwarmError("; ".join(plan["errors"]))
    if plan["init"]:
        _initialize(run, plan["init"])
        if run.test:
            return
    manager = plan["init"] or plan["managers"][0]
    _join(run, plan["join"], "manager", manager)
    for minion in plan["promote"]:
        _set_role(run, manager, minion, infos[minion]["node_id"], "manager")
    for minion in plan["demote"]:
        _set_role(run, manager, minion, infos[minion]["node_id"], "worker")
    if plan["managers"]:
        _remember_cluster(run.class_name, infos[plan["managers"][0]]["cluster_id"])


def _planned_managers(run, infos, settings):
    """In a dry run before the swarm exists: the members the managers step would take."""
    managers = settings["managers"]
    plan = plan_managers(run.members, infos, managers["count"], managers["prefer"])
    return [plan["init"], *plan["join"]] if plan["init"] else []


def _workers_step(run):
    settings = run.class_settings()
    infos = run.probe()
    plan = plan_workers(run.members, infos)
    for minion in plan["foreign"]:
        run.failures.append(f"{minion} is in another swarm: not touched")
    if plan["join"] and run.test and not plan_has_manager(infos):
        for minion in set(plan["join"]) - set(_planned_managers(run, infos, settings)):
            run.changes[minion] = {"join": "worker (once the swarm exists)"}
    elif plan["join"]:
        _join(run, plan["join"], "worker", _acting_manager(infos))


def _state_outcome(run, minion, ret):
    if not isinstance(ret, dict):
        run.failures.append(f"{minion}: {ret}")
        return
    for state in ret.values():
        if not isinstance(state, dict):
            continue
        if state.get("changes"):
            run.changes.setdefault(minion, {})[state.get("__id__")] = state["changes"]
        if state.get("result") is False:
            run.failures.append(f"{state.get('__id__')}: {state.get('comment')}")
        run.notes.extend(state.get("warnings") or [])


def _cluster_step(run):
    settings = run.class_settings()
    infos = run.probe()
    if run.test and not plan_has_manager(infos):
        run.changes["cluster"] = "nodes, networks, secrets, services once the swarm exists"
        return
    manager = _acting_manager(infos)
    addrs = {_host(info["node_addr"]) for info in infos.values() if info and info["is_manager"]}
    nodes = {
        minion: info["node_id"]
        for minion, info in infos.items()
        if info and info["state"] == "active" and (info["is_manager"] or _in_swarm_of(info, addrs))
    }
    pillar = {"swarm_run": {"class": run.class_name, "nodes": nodes}}
    answered, _, ret = run.call(
        manager,
        "state.apply",
        ["docker.swarm.cluster"],
        {"pillar": pillar, "test": run.test},
        timeout=CALL_TIMEOUT + settings["converge_timeout"],
    )
    _state_outcome(run, manager, ret if answered else "no answer")
    if not run.failures:
        run.notes.append(f"cluster converged on {manager} ({len(nodes)} nodes)")


def managers(class_name, test=False):
    """The class's swarm exists and has its managers (creating it only when no node of the
    class is in one and it never had one)."""
    return _step(class_name, test, _managers_step)


def workers(class_name, test=False):
    """Every other member of the class is in the swarm as a worker."""
    return _step(class_name, test, _workers_step)


def cluster(class_name, test=False):
    """Nodes' labels/availability, networks, secrets, configs and services, on a manager."""
    return _step(class_name, test, _cluster_step)


def converge(class_name, test=False):
    """managers, workers, cluster: what orch.swarm does, in one call."""
    steps = {"managers": managers, "workers": workers, "cluster": cluster}
    outcomes = {}
    for name, step in steps.items():
        outcomes[name] = step(class_name, test=test)
        if name == "managers" and outcomes[name]["result"] is False:
            break
    results = [item["result"] for item in outcomes.values()]
    return _finish(
        {
            "result": False if False in results else (None if None in results else True),
            "changes": {
                name: item["changes"] for name, item in outcomes.items() if item["changes"]
            },
            "comment": "; ".join(f"{name}: {item['comment']}" for name, item in outcomes.items()),
        }
    )


def admit(minion_id, test=False):
    """Converge the swarm of the class the master's registry gives ``minion_id`` (refused
    when that class does not enable swarm for it). For the create reactor."""
    class_name, refusal = None, None
    try:
        class_name = _class_of(minion_id)
        refusal = _Run(class_name, test).refusal(minion_id) if class_name else None
    except SwarmError as error:
        refusal = str(error)
    if not class_name and not refusal:
        refusal = f"{minion_id} is not entitled: the master's registry gives it no class"
    if refusal:
        return _finish({"result": False, "changes": {}, "comment": refusal})
    return converge(class_name, test=test)


# --- removing a node ------------------------------------------------------------------------


def _node_of(run, manager, minion, infos):
    """The swarm node id of ``minion``: from the minion itself, else by its label."""
    info = infos.get(minion)
    if info and info["state"] != "inactive" and info["node_id"]:
        return info["node_id"]
    _, _, listed = run.call(manager, "docker_swarm.nodes")
    for node in listed if isinstance(listed, list) else []:
        if node["labels"].get(MINION_LABEL) == minion:
            return node["id"]
    return None


def _manager_call(run, manager, fun, *args, **kwargs):
    answered, retcode, ret = run.call(manager, fun, args, kwargs)
    if not answered or retcode:
        raise SwarmError(f"{manager}: {fun} failed: {ret}")
    return ret


def _wait(run, manager, call, done, timeout):
    deadline = time.monotonic() + timeout
    while True:
        ret = _manager_call(run, manager, *call)
        if done(ret) or time.monotonic() > deadline:
            return done(ret)
        time.sleep(1)


def _drain_and_remove(run, manager, minion, node_id, timeout):
    node = _manager_call(run, manager, "docker_swarm.node", node_id)
    if node["role"] == "manager":
        _manager_call(run, manager, "docker_swarm.node_update", node_id, role="worker")
    _manager_call(run, manager, "docker_swarm.node_update", node_id, availability="drain")
    drained = _wait(run, manager, ("docker_swarm.node_tasks", node_id), lambda t: not t, timeout)
    # The tasks it ran are running elsewhere before the node goes.
    services = _manager_call(
        run, manager, "docker_swarm.services_wait", run.class_name, timeout=timeout
    )
    stuck = {name: state for name, state in services.items() if "(converged)" not in state}
    if stuck:
        run.failures.append(f"services not back to full strength without {minion}: {stuck}")
    left = run.state(minion, "docker_swarm.left", minion, force=False).get("result") is True
    # A node that left is gone for good: remove it at once. One that could not leave (its
    # minion does not answer) is removed once the managers see it down, never while up.
    down = left or _wait(
        run,
        manager,
        ("docker_swarm.node", node_id),
        lambda n: not n or n["state"] == "down",
        NODE_DOWN_TIMEOUT,
    )
    if not down:
        raise SwarmError(f"{minion} did not leave and its node {node_id} is not down: not removed")
    _manager_call(run, manager, "docker_swarm.node_remove", node_id, force=True)
    run.changes[minion] = {
        "drained": drained,
        "services": services,
        "left": left,
        "removed": node_id,
        "demoted": node["role"] == "manager",
    }


def _remove_step(run, minion, force):
    infos = run.probe([*run.members, minion])
    managers = [m for m, info in infos.items() if info and info["is_manager"]]
    if managers == [minion] and not force:
        raise SwarmError(
            f"{minion} is the swarm's only manager: removing it ends the swarm "
            "(raise swarm:managers:count first)"
        )
    manager = _acting_manager(infos, avoid=minion)
    node_id = _node_of(run, manager, minion, infos)
    if node_id is None:
        run.notes.append(f"{minion} is not in the swarm")
        return
    if run.test:
        run.changes[minion] = {"drain, leave, remove": node_id}
        return
    timeout = run.class_settings()["converge_timeout"]
    _drain_and_remove(run, manager, minion, node_id, timeout)


def remove_node(minion_id, class_name=None, force=False, test=False):
    """
    Take ``minion_id`` out of its class's swarm: demote (if a manager), drain (its tasks
    move to the other nodes), leave, remove from the node list. ``class_name`` defaults to the
    registry's (pass it when the registry entry is already gone). The destroy reactor calls
    this; so can the operator before ``salt-cloud -d``. Refuses to remove the only manager.
    """
    try:
        class_name = class_name or _class_of(minion_id)
        _valid_name(minion_id, "minion id")
    except SwarmError as error:
        return _finish({"result": False, "changes": {}, "comment": str(error)})
    if not class_name:
        return _finish(
            {
                "result": False,
                "changes": {},
                "comment": f"{minion_id} has no class in the registry: pass class_name",
            }
        )
    return _step(class_name, test, lambda run: _remove_step(run, minion_id, force))


def status(class_name):
    """The class's members and their swarm membership as the master sees it (no secrets)."""
    try:
        with _locked(class_name):
            run = _Run(class_name, False)
            infos = run.probe()
    except SwarmError as error:
        return _finish({"result": False, "changes": {}, "comment": str(error)})
    return {
        "class": class_name,
        "cluster": _known_cluster(class_name),
        "members": {
            minion: (
                {key: info[key] for key in ("state", "is_manager", "node_id", "cluster_id")}
                if info
                else "no answer"
            )
            for minion, info in infos.items()
        },
    }


def forget(class_name):
    """Forget that the class had a swarm, so ``managers`` may create a new one. Only for a
    swarm that is gone for good: while any member is in it, nothing is created anyway."""
    try:
        with _locked(class_name):
            known = _known_cluster(class_name)
            with contextlib.suppress(FileNotFoundError):
                os.remove(_state_file(class_name))
            if __opts__.get("cache", "localfs") != "localfs":  # shared by several masters
                __salt__["node.write_cache_record"](STATE_DIR, class_name, {})
    except SwarmError as error:
        return _finish({"result": False, "changes": {}, "comment": str(error)})
    changes = {"cluster": {"old": known, "new": None}} if known else {}
    return {"result": True, "changes": changes, "comment": f"forgot swarm {known}"}
