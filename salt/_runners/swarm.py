"""
Swarm per class, decided on the master: who is in a class's swarm, who manages it, who may
join, and in what order it converges (docs/swarm.md).

Membership and entitlement come from the master only: the node record's class, while the key
the record was made for is the accepted one (``dockerhosts_nodes.class_of`` / ``members``),
and the pillar the master compiles for the node enabling ``swarm``. Never a grain. A join token
travels only sealed by a manager to that key (``docker_swarm.sealed_join_tokens``), opened by
the joining minion's private key alone.

Each function returns {result, changes, comment, retcode} (salt-run exits with ``retcode``;
every failure is one line); ``test=True`` shows the plan and changes nothing:
``converge <class>``, ``admit <minion>``, ``remove_node <minion>``, ``status <class>``,
``forget <class>``.
"""

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import salt.cache
import salt.client
import salt.fileserver
import salt.loader
import salt.pillar
import yaml

log = logging.getLogger(__name__)

CALL_TIMEOUT = 60
JOIN_PARALLEL = 8
NODE_DOWN_TIMEOUT = 30
MINION_LABEL = "com.docker-hosts.minion"
BANK = "dockerhosts/swarms"  # {class: {cluster_id, since}}: never a second swarm init
LEGACY_DIR = "docker-hosts-swarm"  # where earlier versions kept it: <cachedir>/<dir>/<class>.json
ADDRESSING = ("advertise_addr", "listen_addr", "default_addr_pool", "subnet_size")


class SwarmError(Exception):
    """A refusal or failure that ends the run; its message is the one-line comment."""


# --- plans (pure) ---------------------------------------------------------------------------


def _largest_odd(number):
    return number if number % 2 else max(number - 1, 1)


def _host(address):
    return str(address).rsplit(":", 1)[0] if address else None


def _in_swarm_of(info, manager_addrs):
    """Whether an active worker's known managers are (some of) this class's managers."""
    return bool({_host(addr) for addr in info["managers"]} & manager_addrs)


def _manager_addrs(infos):
    return {_host(info["node_addr"]) for info in infos.values() if info and info["is_manager"]}


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
    addrs = _manager_addrs({m: infos[m] for m in managers})
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
        if minion not in managers:
            plan["join" if infos[minion]["state"] == "inactive" else "promote"].append(minion)
    plan["demote"] = [m for m in managers if m not in chosen and m != plan["init"]]
    return plan


def plan_workers(members, infos, managing=()):
    """Members to join as workers (answering, in no swarm, not in ``managing``: planned
    managers) and members in another swarm."""
    addrs = _manager_addrs(infos)
    join, foreign = [], []
    for minion in members:
        info = infos.get(minion)
        if not info or info["is_manager"] or minion in managing:
            continue
        if info["state"] == "inactive":
            join.append(minion)
        elif not _in_swarm_of(info, addrs):
            foreign.append(minion)
    return {"join": join, "foreign": foreign}


def quorum_problem(nodes):
    """Why the swarm cannot take changes (``docker_swarm.nodes`` of a manager), or None: a
    majority of its managers must be reachable."""
    managers = [node for node in nodes if node["role"] == "manager"]
    reachable = [node for node in managers if node["reachability"] == "reachable"]
    if 2 * len(reachable) > len(managers):
        return None
    down = sorted(_node_name(node) for node in managers if node not in reachable)
    return f"{len(reachable)} of {len(managers)} managers reachable (down: {', '.join(down)})"


def _node_name(node):
    return node["labels"].get(MINION_LABEL) or node["hostname"]


# --- the master's view: node records, keys, pillar, the class's swarm --------------------------


def _checked(name, rule):
    problem = __utils__[f"dockerhosts_names.{rule}_name_problem"](name)
    if problem:
        raise SwarmError(problem)
    return name


def _class_of(minion_id):
    """The node record's class while its key is the accepted one; None otherwise."""
    _checked(minion_id, "node")
    try:
        return __utils__["dockerhosts_nodes.class_of"](__opts__, minion_id)
    except Exception:  # fail closed: an unreadable record gives no class, no token
        log.exception("swarm: cannot read the node record of %s", minion_id)
        return None


def _public_key(minion_id):
    """The accepted key of the minion, only when its node record was made for that key."""
    path = os.path.join(__opts__["pki_dir"], "minions", _checked(minion_id, "node"))
    try:
        with open(path, encoding="utf-8") as handle:
            key = handle.read()
        record = __utils__["dockerhosts_nodes.get"](__opts__, minion_id) or {}
    except Exception:  # fail closed
        return None
    return key if record.get("key") == hashlib.sha256(key.strip().encode()).hexdigest() else None


def _set_role(minion, role):
    """``swarm_role`` (manager, worker or None) in the minion's node record, if it has one."""
    record = __utils__["dockerhosts_nodes.get"](__opts__, minion)
    if record is not None and record.get("swarm_role") != role:
        __utils__["dockerhosts_nodes.update"](__opts__, minion, swarm_role=role)


def _formula_data():
    """salt://docker/swarm/defaults.yaml and schema.yaml, as the master's file server has them."""
    server, found = salt.fileserver.Fileserver(__opts__), []
    for name in ("defaults", "schema"):
        path = server.find_file(f"docker/swarm/{name}.yaml", "base").get("path")
        if not path:
            raise SwarmError(f"salt://docker/swarm/{name}.yaml is not on the master's file server")
        with open(path, encoding="utf-8") as handle:
            found.append(yaml.safe_load(handle))
    return found


def _settings_of(minion_id, formula):
    """Pillar ``swarm`` the master compiles for the minion, checked (docker_swarm.validate)."""
    pillar = salt.pillar.get_pillar(
        __opts__, {}, minion_id, saltenv=__opts__.get("saltenv") or "base"
    ).compile_pillar()
    if pillar.get("_errors"):
        raise SwarmError(f"the pillar of {minion_id} does not compile: {pillar['_errors']}")
    modules = salt.loader.minion_mods(__opts__, utils=__utils__, whitelist=["docker_swarm"])
    validate = modules.get("docker_swarm.validate")
    if validate is None:
        raise SwarmError("module docker_swarm is not on the master: salt-run saltutil.sync_all")
    try:
        return validate(pillar.get("swarm"), *formula, secrets=pillar.get("docker_secrets") or {})
    except Exception as error:
        raise SwarmError(_one_line(error)) from error


def _known_cluster(class_name):
    record = salt.cache.factory(__opts__).fetch(BANK, class_name)
    if not record:  # kept by an earlier version: a swarm is never forgotten on upgrade
        legacy = os.path.join(__opts__["cachedir"], LEGACY_DIR, f"{class_name}.json")
        with contextlib.suppress(OSError, ValueError), open(legacy, encoding="utf-8") as handle:
            record = json.load(handle)
    return (record or {}).get("cluster_id")


def _remember_cluster(class_name, cluster_id):
    if cluster_id and cluster_id != _known_cluster(class_name):
        record = {"cluster_id": cluster_id, "since": int(time.time())}
        salt.cache.factory(__opts__).store(BANK, class_name, record)


@contextlib.contextmanager
def _locked(class_name):
    """One run at a time per class (two admissions must not both create a swarm)."""
    directory = os.path.join(__opts__["cachedir"], "dockerhosts-swarm-locks")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(os.path.join(directory, _checked(class_name, "class")), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _one_line(value):
    return " ".join(str(value).split())


# --- one run: a class, locked, with its members' answers ---------------------------------------


class _Run:
    """One run for one class: members, their settings and answers, what changed."""

    def __init__(self, class_name, test):
        self.class_name, self.test = class_name, bool(test)
        self.members = __utils__["dockerhosts_nodes.members"](__opts__, class_name)
        self.client = salt.client.LocalClient(mopts=__opts__)
        self.changes, self.notes, self.failures, self.down = {}, [], [], []
        self._settings, self.formula = {}, None

    def fork(self):
        """The same run with a client of its own, for a thread."""
        twin = copy.copy(self)
        twin.client = salt.client.LocalClient(mopts=__opts__)
        return twin

    def call(self, minion, fun, *args, timeout=CALL_TIMEOUT, failing=False, **kwargs):
        """``fun`` on one minion; its return, or SwarmError naming what failed (``failing``:
        a non-zero retcode still returns)."""
        returns = self.client.cmd(
            [minion],
            fun,
            arg=list(args),
            kwarg=kwargs,
            tgt_type="list",
            timeout=timeout,
            full_return=True,
        )
        item = returns.get(minion)
        if not isinstance(item, dict) or "ret" not in item:
            raise SwarmError(f"{minion} did not answer {fun}")
        if item.get("retcode", 0) and not failing:
            raise SwarmError(f"{minion}: {_one_line(item['ret'])}")
        return item["ret"]

    def probe(self, minions=None):
        """{minion: node_info, or None when the minion or its engine did not answer}."""
        minions = sorted(set(minions or self.members))
        returns = (
            self.client.cmd(
                minions,
                "docker_swarm.node_info",
                tgt_type="list",
                timeout=CALL_TIMEOUT,
                full_return=True,
            )
            if minions
            else {}
        )
        infos = {}
        for minion in minions:
            item = returns.get(minion) or {}
            ok = isinstance(item.get("ret"), dict) and not item.get("retcode")
            infos[minion] = item["ret"] if ok else None
        return infos

    def settings(self, minion=None):
        minion = minion or (self.members or [None])[0]
        if minion is None:
            raise SwarmError(f"the master has no node record of class {self.class_name}")
        if minion not in self._settings:
            self.formula = self.formula or _formula_data()
            self._settings[minion] = _settings_of(minion, self.formula)
        if not self._settings[minion]["enabled"]:
            raise SwarmError(f"swarm is not enabled in the pillar of class {self.class_name!r}")
        return self._settings[minion]

    def refusal(self, minion):
        """Why ``minion`` may not have this class's join token, or None when it may."""
        recorded = _class_of(minion)
        if recorded != self.class_name:
            where = f"class {recorded!r}" if recorded else "no class"
            return f"{minion} is not entitled: the master's node records give it {where}"
        if _public_key(minion) is None:
            return f"{minion} is not entitled: its key is not the one its node record is for"
        try:
            self.settings(minion)
        except SwarmError as error:
            return f"{minion} is not entitled: {error}"
        return None

    def change(self, step, minion, what):
        self.changes.setdefault(step, {})[minion] = what

    def outcome(self, down_fails=True):
        result = not self.failures and not (down_fails and self.down)
        if result and self.test and self.changes:
            result = None
        down = [f"down: {', '.join(self.down)}"] if self.down else []
        comment = "; ".join(self.failures + down + self.notes) or "nothing to do"
        return {"result": result, "changes": self.changes, "comment": comment}


def _finish(outcome):
    retcode = 1 if outcome["result"] is False else 0
    __context__["retcode"] = retcode
    return {**outcome, "retcode": retcode}


def _guarded(what, class_name, test, body):
    """``body(run)`` for the class, locked; a refusal or any error is one line, exit 1."""
    try:
        with _locked(class_name):
            run = _Run(class_name, test)
            return _finish(body(run))
    except SwarmError as error:
        return _finish({"result": False, "changes": {}, "comment": f"{what}: {error}"})
    except Exception as error:  # no traceback for the operator: the master's log has it
        log.exception("swarm: %s failed", what)
        comment = f"{what} failed: {_one_line(error)} (details in the master's log)"
        return _finish({"result": False, "changes": {}, "comment": comment})


# --- converge -----------------------------------------------------------------------------------


def _health(run, infos):
    """Before any change: quorum lost -> SwarmError, nothing changes; down nodes named; swarm
    nodes of no member reported (never removed by a converge)."""
    managers = sorted(m for m, info in infos.items() if info and info["is_manager"])
    silent = {m for m in run.members if infos.get(m) is None}
    nodes = []
    if managers:
        try:
            nodes = run.call(managers[0], "docker_swarm.nodes")
        except SwarmError as error:
            raise SwarmError(
                f"the swarm of class {run.class_name} cannot take changes and has likely lost "
                f"its quorum ({error}; not answering: {', '.join(sorted(silent)) or 'none'}); "
                "nothing was changed: bring the managers' Docker engines back (docs/swarm.md, "
                "'Quorum')"
            ) from error
    problem = quorum_problem(nodes) if nodes else None
    if problem:
        raise SwarmError(
            f"the swarm of class {run.class_name} has lost its quorum: {problem}; nothing was "
            "changed: bring their Docker engines back (docs/swarm.md, 'Quorum')"
        )
    known = {info["node_id"]: m for m, info in infos.items() if info and info["node_id"]}
    for node in nodes:
        minion = known.get(node["id"]) or node["labels"].get(MINION_LABEL)
        silent.discard(minion)
        if node["state"] == "down" or node["reachability"] == "unreachable":
            run.down.append(f"{minion or node['hostname']} ({node['role']}, unreachable)")
        elif minion not in run.members:
            run.notes.append(
                f"swarm node {node['hostname']} ({minion or 'no minion'}) is not a node of class"
                f" {run.class_name}: salt-run swarm.remove_node {minion or '<minion>'} "
                f"class_name={run.class_name} takes it out"
            )
    run.down.extend(f"{m} (minion or engine not answering)" for m in sorted(silent))


def _join(run, minions, role, manager):
    """Join ``minions`` as ``role``: each entitled one gets the token sealed for it alone.
    Managers join one at a time (raft), workers at once."""
    entitled = []
    for minion in minions:
        refusal = run.refusal(minion)
        if refusal:
            run.failures.append(refusal)
        elif run.test:
            run.change(f"{role}s", minion, {"join": role})
        else:
            entitled.append(minion)
    if not entitled:
        return
    keys = {minion: _public_key(minion) for minion in entitled}
    tokens = run.call(manager, "docker_swarm.sealed_join_tokens", role, keys)

    def join(minion):
        addressing = {key: run.settings(minion)[key] for key in ADDRESSING[:2]}
        sealed = tokens["sealed"][minion]
        try:
            run.fork().call(
                minion,
                "docker_swarm.join",
                sealed,
                role,
                tokens["cluster_id"],
                tokens["managers"],
                addressing=addressing,
            )
            run.change(f"{role}s", minion, {"joined": role})
        except SwarmError as error:
            run.failures.append(str(error))

    parallel = 1 if role == "manager" else min(JOIN_PARALLEL, len(entitled))
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(join, entitled))


def _managers(run, settings, infos):
    """The managers part; returns the members that manage (or would) for the workers part."""
    managers = settings["managers"]
    plan = plan_managers(
        run.members, infos, managers["count"], managers["prefer"], _known_cluster(run.class_name)
    )
    if plan["errors"]:
        raise SwarmError("; ".join(plan["errors"]))
    manager = plan["init"] or plan["managers"][0]
    if plan["init"]:
        refusal = run.refusal(plan["init"])
        if refusal:
            raise SwarmError(refusal)
        addressing = {key: run.settings(plan["init"])[key] for key in ADDRESSING}
        if not run.test:
            created = run.call(plan["init"], "docker_swarm.init", **addressing)
            _remember_cluster(run.class_name, created["cluster_id"])
        run.change("managers", plan["init"], {"swarm": "created"})
    _join(run, plan["join"], "manager", manager)
    if run.down and (plan["promote"] or plan["demote"]):
        run.notes.append("no manager promoted or demoted while a node of the class is down")
        plan["promote"], plan["demote"] = [], []
    for minion in plan["promote"] + plan["demote"]:
        role = "manager" if minion in plan["promote"] else "worker"
        run.change("managers", minion, {"role": role})
        if not run.test:
            run.call(manager, "docker_swarm.node_update", infos[minion]["node_id"], role=role)
    if plan["managers"]:
        _remember_cluster(run.class_name, infos[plan["managers"][0]]["cluster_id"])
    return [plan["init"], *plan["join"], *plan["promote"]]


def _cluster(run, settings, infos):
    """Nodes' labels, networks, secrets, configs, services: docker_swarm.converge on a manager."""
    managers = sorted(_managing(infos))
    if not managers:
        run.notes.append("nodes, networks, secrets and services once the swarm exists")
        return
    addrs = _manager_addrs(infos)
    nodes = {
        minion: info["node_id"]
        for minion, info in infos.items()
        if info and info["state"] == "active" and (info["is_manager"] or _in_swarm_of(info, addrs))
    }
    timeout = CALL_TIMEOUT + settings["converge_timeout"] * (1 + len(settings["services"]))
    outcome = run.call(
        managers[0],
        "docker_swarm.converge",
        run.class_name,
        nodes,
        settings,
        test=run.test,
        timeout=timeout,
    )
    if outcome["changes"]:
        run.changes["cluster"] = outcome["changes"]
    run.failures += outcome["failures"]
    run.notes += outcome["notes"]


def _acting_manager(infos, avoid=None):
    managers = sorted(_managing(infos))
    chosen = [m for m in managers if m != avoid] or managers
    if not chosen:
        raise SwarmError("no manager of the class answers")
    return chosen[0]


def _managing(infos):
    return {minion for minion, info in infos.items() if info and info["is_manager"]}


def _role(info):
    if not info or info["state"] != "active":
        return None
    return "manager" if info["is_manager"] else "worker"


def _converge(run):
    settings = run.settings()
    infos = run.probe()
    _health(run, infos)
    managing = _managers(run, settings, infos)
    if not run.test:
        infos, managing = run.probe(), ()
    plan = plan_workers(run.members, infos, managing)
    run.failures.extend(f"{minion} is in another swarm: not touched" for minion in plan["foreign"])
    if plan["join"]:
        _join(run, plan["join"], "worker", None if run.test else _acting_manager(infos))
    if not run.test:
        infos = run.probe()
        for minion, info in infos.items():
            if info is not None:
                _set_role(minion, _role(info))
    _cluster(run, settings, infos)


def converge(class_name, test=False):
    """The class's swarm as pillar says: managers, workers, then (on a manager) nodes' labels,
    networks, secrets, configs and services."""

    def body(run):
        _converge(run)
        return run.outcome()

    return _guarded(f"swarm of class {class_name}", class_name, test, body)


def admit(minion_id, test=False):
    """``minion_id`` joins the swarm of its class (as the class's plan says: worker or
    manager) and the class converges with it: the lifecycle's step after a node's first
    highstate. A node of the class down elsewhere is named but does not fail it."""
    what = f"swarm.admit {minion_id}"
    try:
        class_name = _class_of(minion_id)
    except SwarmError as error:
        return _finish({"result": False, "changes": {}, "comment": f"{what}: {error}"})
    if not class_name:
        comment = f"{what}: {minion_id} is not entitled: the master's node records give it no class"
        return _finish({"result": False, "changes": {}, "comment": comment})

    def body(run):
        refusal = run.refusal(minion_id)
        if refusal:
            raise SwarmError(refusal)
        _converge(run)
        return run.outcome(down_fails=False)

    return _guarded(what, class_name, test, body)


# --- removing a node ----------------------------------------------------------------------------


def _node_of(run, manager, minion, infos):
    """The swarm node id of ``minion``: from the minion itself, else by its label."""
    info = infos.get(minion)
    if info and info["state"] != "inactive" and info["node_id"]:
        return info["node_id"]
    found = [n["id"] for n in run.call(manager, "docker_swarm.nodes") if _node_name(n) == minion]
    return found[0] if found else None


def _left(run, minion):
    try:
        run.call(minion, "docker_swarm.leave")
    except SwarmError as error:
        run.notes.append(f"{minion} did not leave ({error})")
        return False
    return True


def _remove(run, minion, force):
    infos = run.probe([*run.members, minion])
    if _managing(infos) == {minion} and not force:
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
        run.change("removed", minion, {"node": node_id})
        return
    # Demoted and drained: its tasks run on the other nodes before it goes.
    wait = run.settings()["converge_timeout"]
    drained = run.call(
        manager, "docker_swarm.drain", node_id, run.class_name, wait, timeout=CALL_TIMEOUT + wait
    )
    if drained["stuck"]:
        run.failures.append(f"not back to full strength without {minion}: {drained['stuck']}")
    left = _left(run, minion)
    deadline = time.monotonic() + NODE_DOWN_TIMEOUT
    # One that could not leave (gone already) is removed once the managers see it down.
    while (
        not left and (run.call(manager, "docker_swarm.node", node_id) or {}).get("state") != "down"
    ):
        if time.monotonic() > deadline:
            raise SwarmError(f"{minion} did not leave and its node is not down: not removed")
        time.sleep(1)
    run.call(manager, "docker_swarm.node_remove", node_id)
    _set_role(minion, None)
    run.change("removed", minion, {"node": node_id, "left": left, **drained})


def remove_node(minion_id, class_name=None, force=False, test=False):
    """
    ``minion_id`` out of its class's swarm: demoted if a manager, drained (its tasks move to
    the other nodes), left, removed from the node list. ``class_name`` defaults to the node
    record's. The only manager is removed only with ``force`` (which ends the swarm).
    """
    what = f"swarm.remove_node {minion_id}"
    try:
        found = class_name or _class_of(minion_id)
    except SwarmError as error:
        return _finish({"result": False, "changes": {}, "comment": f"{what}: {error}"})
    if not found:
        comment = f"{what}: it has no class in the master's node records: pass class_name"
        return _finish({"result": False, "changes": {}, "comment": comment})
    return _guarded(what, found, test, lambda run: _remove(run, minion_id, force) or run.outcome())


def status(class_name):
    """The class's members, their swarm membership and the swarm's health (exit 1 when a node
    is down or the quorum is lost)."""

    def body(run):
        infos = run.probe()
        _health(run, infos)
        roles = {minion: _role(info) if info else "no answer" for minion, info in infos.items()}
        return {**run.outcome(), "cluster": _known_cluster(class_name), "members": roles}

    return _guarded(f"swarm.status {class_name}", class_name, False, body)


def forget(class_name):
    """Forget that the class had a swarm, so ``converge`` may create a new one: only for a
    swarm gone for good (while a member is in one, nothing is created anyway)."""

    def body(run):
        known = _known_cluster(class_name)
        salt.cache.factory(__opts__).flush(BANK, class_name)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(__opts__["cachedir"], LEGACY_DIR, f"{class_name}.json"))
        changes = {"cluster": {"old": known, "new": None}} if known else {}
        return {"result": True, "changes": changes, "comment": f"forgot swarm {known}"}

    return _guarded(f"swarm.forget {class_name}", class_name, False, body)
