"""
Swarm per class, decided on the master (docs/swarm.md): who is in a class's swarm, who manages
it, who may join, in what order it converges. Membership and entitlement come from the master
only: the node record's class while the key it was made for is the accepted one
(``dockerhosts_nodes``), and the pillar the master compiles for the node enabling ``swarm``;
never a grain. A join token leaves a manager only sealed to that key.

Each function returns {result, changes, comment, retcode} (salt-run exits with ``retcode``;
every failure is one line); ``test=True`` shows the plan and changes nothing.
"""

import contextlib
import functools
import hashlib
import json
import logging
import os
import time

import salt.cache
import salt.client
import salt.fileserver
import salt.loader
import salt.pillar
import yaml

log = logging.getLogger(__name__)

CALL_TIMEOUT = 60
NODE_DOWN_TIMEOUT = 30
MINION_LABEL = "com.docker-hosts.minion"
BANK = "dockerhosts/swarms"  # {class: {cluster_id, since}}: never a second swarm init
LEGACY_DIR = "docker-hosts-swarm"  # where earlier versions kept it: <cachedir>/<dir>/<class>.json
ADDRESSING = ("advertise_addr", "listen_addr", "default_addr_pool", "subnet_size")


class SwarmError(Exception):
    """A refusal or failure that ends the run; its message is the one-line comment."""


# --- plans (pure) ---------------------------------------------------------------------------


def _host(address):
    return str(address).rsplit(":", 1)[0] if address else None


def _in_swarm_of(info, manager_addrs):
    """Whether an active worker's known managers are (some of) this class's managers."""
    return bool({_host(addr) for addr in info["managers"]} & manager_addrs)


def _managing(infos):
    return sorted(minion for minion, info in infos.items() if info and info["is_manager"])


def _manager_addrs(infos):
    return {_host(infos[minion]["node_addr"]) for minion in _managing(infos)}


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
    managers = [m for m in _managing(infos) if m in members]
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
    odd = len(members) if len(members) % 2 else max(len(members) - 1, 1)
    chosen = list(dict.fromkeys(eligible))[: min(count, odd)]
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
    addrs, join, foreign = _manager_addrs(infos), [], []
    for minion in members:
        info = infos.get(minion)
        if info and not info["is_manager"] and minion not in managing:
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


def _role(info):
    if not info or info["state"] != "active":
        return None
    return "manager" if info["is_manager"] else "worker"


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
    with contextlib.suppress(OSError):
        with open(path, encoding="utf-8") as handle:
            key = handle.read()
        record = __utils__["dockerhosts_nodes.get"](__opts__, minion_id) or {}
        return (
            key if record.get("key") == hashlib.sha256(key.strip().encode()).hexdigest() else None
        )
    return None


def _set_role(minion, role):
    """``swarm_role`` (manager, worker or None) in the minion's node record, if it has one."""
    record = __utils__["dockerhosts_nodes.get"](__opts__, minion)
    if record is not None and record.get("swarm_role") != role:
        __utils__["dockerhosts_nodes.update"](__opts__, minion, swarm_role=role)


def _settings_of(minion_id, formula):
    """Pillar ``swarm`` the master compiles for the minion, checked (docker_swarm.validate
    with salt://docker/swarm/defaults.yaml and schema.yaml from the master's file server)."""
    if not formula:
        server = salt.fileserver.Fileserver(__opts__)
        for name in ("defaults", "schema"):
            path = server.find_file(f"docker/swarm/{name}.yaml", "base").get("path")
            if not path:
                raise SwarmError(f"salt://docker/swarm/{name}.yaml is not on the file server")
            with open(path, encoding="utf-8") as handle:
                formula.append(yaml.safe_load(handle))
    saltenv = __opts__.get("saltenv") or "base"
    pillar = salt.pillar.get_pillar(__opts__, {}, minion_id, saltenv=saltenv).compile_pillar()
    if pillar.get("_errors"):
        raise SwarmError(f"the pillar of {minion_id} does not compile: {pillar['_errors']}")
    modules = salt.loader.minion_mods(__opts__, utils=__utils__, whitelist=["docker_swarm"])
    try:
        secrets = pillar.get("docker_secrets") or {}
        return modules["docker_swarm.validate"](pillar.get("swarm"), *formula, secrets=secrets)
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


def _locked(class_name):
    """One run at a time per class among every master sharing the store (two admissions must
    not both create a swarm)."""
    return __utils__["dockerhosts_nodes.locked"](__opts__, f"swarm/{_checked(class_name, 'class')}")


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
        self._settings, self._formula = {}, []

    def cmd(self, minions, fun, args=(), kwargs=None, timeout=CALL_TIMEOUT):
        return self.client.cmd(
            minions,
            fun,
            arg=list(args),
            kwarg=kwargs or {},
            tgt_type="list",
            timeout=timeout,
            full_return=True,
        )

    def call(self, minion, fun, *args, timeout=CALL_TIMEOUT, **kwargs):
        """``fun`` on one minion: its return, or SwarmError naming what failed."""
        item = self.cmd([minion], fun, args, kwargs, timeout).get(minion)
        if not isinstance(item, dict) or "ret" not in item:
            raise SwarmError(f"{minion} did not answer {fun}")
        if item.get("retcode"):
            raise SwarmError(f"{minion}: {_one_line(item['ret'])}")
        return item["ret"]

    def probe(self, minions=None):
        """{minion: node_info, or None when the minion or its engine did not answer}."""
        minions = sorted(set(minions or self.members))
        found = self.cmd(minions, "docker_swarm.node_info") if minions else {}
        items = {minion: found.get(minion) or {} for minion in minions}
        return {
            m: i["ret"] if isinstance(i.get("ret"), dict) and not i.get("retcode") else None
            for m, i in items.items()
        }

    def settings(self, minion=None):
        minion = minion or (self.members or [None])[0]
        if minion is None:
            raise SwarmError(f"the master has no node record of class {self.class_name}")
        if minion not in self._settings:
            self._settings[minion] = _settings_of(minion, self._formula)
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
        down = [f"down: {', '.join(self.down)}"] if self.down else []
        comment = "; ".join(self.failures + down + self.notes) or "nothing to do"
        if result and self.test and self.changes:
            result = None
        return {"result": result, "changes": self.changes, "comment": comment}


def _finish(outcome):
    retcode = 1 if outcome["result"] is False else 0
    __context__["retcode"] = retcode
    return {**outcome, "retcode": retcode}


def _failed(comment):
    return _finish({"result": False, "changes": {}, "comment": comment})


def _guarded(what, class_name, test, body):
    """``body(run)`` for the class, locked; a refusal or any error is one line, exit 1."""
    try:
        with _locked(class_name):
            return _finish(body(_Run(class_name, test)))
    except SwarmError as error:
        return _failed(f"{what}: {error}")
    except Exception as error:  # no traceback for the operator: the master's log has it
        log.exception("swarm: %s failed", what)
        return _failed(f"{what} failed: {_one_line(error)} (details in the master's log)")


# --- converge -----------------------------------------------------------------------------------


def _health(run, infos):
    """Before any change: quorum lost -> SwarmError, nothing changes; down nodes named; swarm
    nodes of no member reported (never removed by a converge)."""
    silent, managers, nodes = {m for m in run.members if not infos.get(m)}, _managing(infos), []
    if managers:
        try:
            nodes = run.call(managers[0], "docker_swarm.nodes")
        except SwarmError as error:
            raise SwarmError(
                f"the swarm of class {run.class_name} cannot take changes and has likely lost "
                f"its quorum ({error}; not answering: {', '.join(sorted(silent)) or 'none'}); "
                "nothing was changed: bring the managers' Docker engines back (docs/swarm.md)"
            ) from error
    problem = quorum_problem(nodes)
    if nodes and problem:
        raise SwarmError(
            f"the swarm of class {run.class_name} has lost its quorum: {problem}; nothing was "
            "changed: bring their Docker engines back (docs/swarm.md, 'Health and quorum')"
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
    """Join ``minions`` as ``role``, each entitled one with the token sealed for it alone."""
    entitled = [m for m in minions if not run.refusal(m)]
    run.failures.extend(run.refusal(m) for m in minions if m not in entitled)
    if run.test or not entitled:
        for minion in entitled:
            run.change(f"{role}s", minion, {"join": role})
        return
    keys = {minion: _public_key(minion) for minion in entitled}
    tokens = run.call(manager, "docker_swarm.sealed_join_tokens", role, keys)
    for minion in entitled:  # one at a time: a manager's join changes the raft
        addressing = {key: run.settings(minion)[key] for key in ADDRESSING[:2]}
        args = (tokens["sealed"][minion], role, tokens["cluster_id"], tokens["managers"])
        try:
            run.call(minion, "docker_swarm.join", *args, addressing=addressing)
            run.change(f"{role}s", minion, {"joined": role})
        except SwarmError as error:
            run.failures.append(str(error))


def _managers(run, settings, infos):
    """The managers part; returns the members that manage (or would) for the workers part."""
    count, prefer = settings["managers"]["count"], settings["managers"]["prefer"]
    plan = plan_managers(run.members, infos, count, prefer, _known_cluster(run.class_name))
    if plan["errors"]:
        raise SwarmError("; ".join(plan["errors"]))
    manager = plan["init"] or plan["managers"][0]
    if plan["init"]:
        refusal = run.refusal(manager)
        if refusal:
            raise SwarmError(refusal)
        if not run.test:
            addressing = {key: run.settings(manager)[key] for key in ADDRESSING}
            created = run.call(manager, "docker_swarm.init", **addressing)
            _remember_cluster(run.class_name, created["cluster_id"])
        run.change("managers", manager, {"swarm": "created"})
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
        _remember_cluster(run.class_name, infos[manager]["cluster_id"])
    return [plan["init"], *plan["join"], *plan["promote"]]


def _cluster(run, settings, infos):
    """Nodes' labels, networks, secrets, configs, services: docker_swarm.converge on a manager."""
    managers = _managing(infos)
    if not managers:
        run.notes.append("nodes, networks, secrets and services once the swarm exists")
        return
    addrs = _manager_addrs(infos)
    nodes = {
        minion: info["node_id"]
        for minion, info in infos.items()
        if _role(info) and (info["is_manager"] or _in_swarm_of(info, addrs))
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


def _converge(run):
    settings, infos = run.settings(), run.probe()
    _health(run, infos)
    managing = _managers(run, settings, infos)
    if not run.test:
        infos, managing = run.probe(), ()
    plan = plan_workers(run.members, infos, managing)
    run.failures.extend(f"{minion} is in another swarm: not touched" for minion in plan["foreign"])
    if plan["join"]:
        _join(run, plan["join"], "worker", None if run.test else _managing(infos)[0])
    if not run.test:
        infos = run.probe()
        for minion, info in infos.items():
            if info is not None:
                _set_role(minion, _role(info))
    _cluster(run, settings, infos)
    return run


def converge(class_name, test=False):
    """The class's swarm as pillar says: the health check, managers, workers, then (on a
    manager) nodes' labels, networks, secrets, configs and services."""
    what = f"swarm of class {class_name}"
    return _guarded(what, class_name, test, lambda run: _converge(run).outcome())


def admit(minion_id, test=False):
    """``minion_id`` joins the swarm of its class (as the class's plan says: worker or
    manager) and the class converges with it: the lifecycle's step after a node's first
    highstate. A node of the class down elsewhere is named but does not fail it."""
    what = f"swarm.admit {minion_id}"
    try:
        class_name = _class_of(minion_id)
    except SwarmError as error:
        return _failed(f"{what}: {error}")
    if not class_name:
        return _failed(
            f"{what}: {minion_id} is not entitled: the master's node records give it no class"
        )

    def body(run):
        refusal = run.refusal(minion_id)
        if refusal:
            raise SwarmError(refusal)
        return _converge(run).outcome(down_fails=False)

    return _guarded(what, class_name, test, body)


# --- removing nodes -----------------------------------------------------------------------------


def _node_of(run, manager, minion, infos):
    """The swarm node id of ``minion``: from the minion itself, else by its label."""
    if _role(infos.get(minion)):
        return infos[minion]["node_id"]
    found = [n["id"] for n in run.call(manager, "docker_swarm.nodes") if _node_name(n) == minion]
    return found[0] if found else None


def _left(run, minion, force=False):
    try:
        return bool(run.call(minion, "docker_swarm.leave", force=force) or True)
    except SwarmError as error:
        run.notes.append(f"{minion} did not leave ({error})")
        return False


def _down(run, manager, node_id):
    """Whether the managers see the node down (or no longer have it), waiting a while."""
    deadline = time.monotonic() + NODE_DOWN_TIMEOUT
    while (run.call(manager, "docker_swarm.node", node_id) or {"state": "down"})["state"] != "down":
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def _remove(run, minion, force):
    """Demote, drain (its tasks run on the other nodes before it goes), leave, remove."""
    infos = run.probe([*run.members, minion])
    if _managing(infos) == [minion]:
        if not force:
            raise SwarmError(
                f"{minion} is the swarm's only manager: removing it ends the swarm (raise "
                "swarm:managers:count first, or pass force=True when the whole class goes)"
            )
        run.change("removed", minion, "the swarm ended with its last manager")
        if not run.test and _left(run, minion, force=True):
            _set_role(minion, None)
        return
    manager = next(m for m in _managing(infos) if m != minion)
    node_id = _node_of(run, manager, minion, infos)
    if node_id is None:
        run.notes.append(f"{minion} is not in the swarm")
        return
    run.change("removed", minion, {"node": node_id})
    if run.test:
        return
    wait = run.settings()["converge_timeout"]
    drained = run.call(
        manager, "docker_swarm.drain", node_id, run.class_name, wait, timeout=CALL_TIMEOUT + wait
    )
    if drained["stuck"]:
        run.failures.append(f"not back to full strength without {minion}: {drained['stuck']}")
    # One that could not leave is removed once the managers see it down (a node gone already),
    # or at once with ``force`` (its key was deleted: it will not answer again).
    left = _left(run, minion)
    if not (left or force or _down(run, manager, node_id)):
        raise SwarmError(f"{minion} did not leave and its node is not down: not removed")
    run.call(manager, "docker_swarm.node_remove", node_id)
    _set_role(minion, None)
    run.change("removed", minion, {"node": node_id, "left": left, **drained})


def remove_node(names, class_name=None, force=False, test=False):
    """
    Nodes out of their class's swarm, one call for a batch (``names``: one, a list or
    comma-separated): each demoted if a manager, drained (its tasks move to the other nodes),
    left, removed from the node list, its record's ``swarm_role`` cleared. The class is
    ``class_name``, else the node record's (the lifecycle calls this before it forgets a
    destroyed node or one whose key was deleted). ``force``: remove one that cannot leave at
    once (its key is gone), and let the last manager leave (the whole class goes).
    """
    names = names.split(",") if isinstance(names, str) else [str(name) for name in names]
    groups, refused = {}, []
    for name in names:
        problem = __utils__["dockerhosts_names.node_name_problem"](name)
        record = {} if problem else __utils__["dockerhosts_nodes.get"](__opts__, name) or {}
        found = class_name or record.get("class")
        if problem or not found:
            why = problem or "no class in the master's node records: pass class_name"
            refused.append(f"swarm.remove_node {name}: {why}")
        else:
            groups.setdefault(found, []).append(name)

    def body(run, members):
        for member in members:
            _remove(run, member, force)
        return run.outcome(down_fails=False)

    outcomes = [
        _guarded(
            f"swarm.remove_node {','.join(members)}",
            group,
            test,
            functools.partial(body, members=members),
        )
        for group, members in groups.items()
    ]
    changes = {}
    for outcome in outcomes:
        for step, found in outcome["changes"].items():
            changes.setdefault(step, {}).update(found)
    results = [outcome["result"] for outcome in outcomes] + [False] * len(refused)
    result = False if False in results else (None if None in results else True)
    comment = "; ".join(refused + [outcome["comment"] for outcome in outcomes])
    return _finish({"result": result, "changes": changes, "comment": comment})


def status(class_name):
    """The class's members, their role and the swarm's health (exit 1: a node is down)."""

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
