"""The node lifecycle's rules without a master (and the storage growth plan): the node record
(salt.cache localfs in a temp pki_dir: compare-and-set, concurrent writers, a class bound to
its key, the migration of the registry before records), what the reactor's runners do with
what an event names, the status table, the class plan and request of orch.ensure_class, the
converge summary. Loader modules get their dunders the configure_loader_modules way
(pytest-salt-factories)."""

import copy
import hashlib
import multiprocessing
import os
from types import SimpleNamespace

import pytest
import salt.config
from salt.exceptions import CommandExecutionError

from tools.salt_repo import load_module

GIB = 1024**3
MIB = 1024**2

NODES = load_module("utils", "dockerhosts_nodes")
NAMES = load_module("utils", "dockerhosts_names")
CHECKS = load_module("utils", "dockerhosts_checks")
node = load_module("runners", "node")
node_class = load_module("runners", "node_class")
node_record = load_module("modules", "node_record")


def utils_of(*modules):
    """``__utils__`` as Salt's loader builds it: ``<module>.<function>`` -> function."""
    found = {}
    for name, module in modules:
        for attr in dir(module):
            if not attr.startswith("_") and callable(getattr(module, attr)):
                found[f"{name}.{attr}"] = getattr(module, attr)
    return found


@pytest.fixture
def opts(tmp_path):
    pki = tmp_path / "pki"
    (pki / "minions").mkdir(parents=True)
    for node_class in ("backends", "dataserver"):
        (tmp_path / "pillar" / "classes" / node_class).mkdir(parents=True)
    return {
        **copy.deepcopy(salt.config.DEFAULT_MASTER_OPTS),
        "pki_dir": str(pki),
        "cachedir": str(tmp_path / "cache"),
        "pillar_roots": {"base": [str(tmp_path / "pillar")]},
        "__role": "master",
    }


@pytest.fixture
def swarm_calls():
    """Runner swarm as the node runner sees it (``__salt__``): each call is recorded, the
    answers are set by the test."""
    calls = []
    answers = {"swarm.remove_node": {"result": True}, "swarm.admit": {"result": True}}

    def runner(fun):
        return lambda *args, **kwargs: calls.append((fun, args, kwargs)) or answers[fun]

    return SimpleNamespace(calls=calls, answers=answers, functions={f: runner(f) for f in answers})


@pytest.fixture
def configure_loader_modules(opts, swarm_calls):
    utils = utils_of(
        ("dockerhosts_nodes", NODES), ("dockerhosts_names", NAMES), ("dockerhosts_checks", CHECKS)
    )
    dunders = {
        "__opts__": opts,
        "__utils__": utils,
        "__context__": {},
        "__salt__": swarm_calls.functions,
    }
    return {node: dunders, node_class: dunders, node_record: dunders}


def accept(opts, name, key="KEY"):
    """A minion key accepted by the master; its fingerprint."""
    path = os.path.join(opts["pki_dir"], "minions", name)
    with open(path, "w", encoding="ascii") as handle:
        handle.write(f"{key}\n")
    return hashlib.sha256(key.encode()).hexdigest()


# --- the record -------------------------------------------------------------------------------


def test_update_merges_and_compare_and_set_refuses(opts):
    assert NODES.get(opts, "db1") is None
    NODES.update(opts, "db1", state="launching", client_token="t")
    record = NODES.update(opts, "db1", state="launched", instance_id="i-1")
    assert record["client_token"] == "t" and record["instance_id"] == "i-1"
    assert NODES.update(opts, "db1", when=lambda r: r["state"] == "deployed", state="x") is None
    assert NODES.get(opts, "db1")["state"] == "launched"
    assert NODES.names(opts) == ["db1"]
    assert NODES.forget(opts, "db1", when=lambda r: False) is None
    assert NODES.forget(opts, "db1")["instance_id"] == "i-1"
    assert NODES.get(opts, "db1") is None and NODES.forget(opts, "db1") is None


def _count_up(opts, times):
    for _ in range(times):
        with NODES.locked(opts):
            record = NODES.get(opts, "db1") or {}
            NODES.put(opts, "db1", {**record, "count": record.get("count", 0) + 1})


def test_concurrent_writers_lose_no_update(opts):
    """Four processes (salt-cloud, reactor runners) each add 25 to one record under the lock."""
    workers = [multiprocessing.Process(target=_count_up, args=(opts, 25)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert NODES.get(opts, "db1")["count"] == 100
    # The lock is an flock on a directory that holds the records: no lock file is left.
    assert sorted(os.listdir(os.path.join(opts["pki_dir"], "dockerhosts"))) == ["nodes"]


def test_a_class_holds_only_for_the_key_it_was_set_for(opts):
    fingerprint = accept(opts, "web1")
    NODES.update(opts, "web1", **{"class": "backends", "key": fingerprint})
    assert NODES.class_of(opts, "web1") == "backends"
    assert NODES.members(opts, "backends") == ["web1"]
    accept(opts, "web1", key="ANOTHER")  # a new machine accepted under the old name
    assert NODES.class_of(opts, "web1") is None and NODES.members(opts, "backends") == []
    os.remove(os.path.join(opts["pki_dir"], "minions", "web1"))
    assert NODES.class_of(opts, "web1") is None


@pytest.mark.parametrize("name", ["../web1", ".hidden", None, "a/b"])
def test_key_fingerprint_stays_in_the_key_directory(opts, name):
    assert NODES.key_fingerprint(opts, name) is None


def test_the_registry_before_records_is_migrated_once(opts):
    legacy = os.path.join(opts["pki_dir"], "node_classes")
    converged = os.path.join(opts["cachedir"], "node_converge")
    os.makedirs(legacy)
    os.makedirs(converged)
    fingerprint = accept(opts, "db1")
    for name, text in (("db1", "dataserver\n"), ("old1", "dataserver\n"), ("x.lock", "")):
        with open(os.path.join(legacy, name), "w", encoding="ascii") as handle:
            handle.write(text)
    with open(os.path.join(converged, "db1.json"), "w", encoding="ascii") as handle:
        handle.write(f'{{"key": "{fingerprint}", "finished": 2, "result": true, "jid": "j"}}')
    # old1 has no accepted key: its class is dropped, not handed to the next key of that name.
    assert NODES.names(opts) == ["db1"]
    record = NODES.get(opts, "db1")
    assert record["class"] == "dataserver" and record["key"] == fingerprint
    assert record["state"] == "converged" and record["converge"]["jid"] == "j"
    assert not os.path.exists(legacy) and not os.path.exists(converged)
    accept(opts, "old1")
    assert NODES.class_of(opts, "old1") is None


# --- the reactor's runners: events only name a node ---------------------------------------------


def deployed(opts, name, **fields):
    fingerprint = accept(opts, name)
    record = {"class": "backends", "key": fingerprint, "source": "salt-cloud", "state": "deployed"}
    return NODES.update(opts, name, **{**record, **fields})


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({}, None),
        ({"state": "converged"}, "its record is converged (by salt-cloud), not deployed"),
        ({"source": "operator"}, "its record is deployed (by operator), not deployed"),
        ({"key": "other"}, "its record is not for the key accepted now"),
    ],
)
def test_created_converges_only_what_salt_cloud_deployed(opts, fields, problem):
    record = deployed(opts, "web1", **fields)
    assert node.created_problem(record, NODES.key_fingerprint(opts, "web1")) == problem
    assert node.created_problem(None, "k") == "it has no node record"


@pytest.mark.parametrize(
    ("tag", "data", "problem"),
    [
        ("salt/cloud/web1/created", {"id": "mallory", "cmd": "_minion_event"}, "fired by minion"),
        ("salt/cloud/../created", {}, "is not a node name"),
        ("salt/cloud/web1/created/x", {}, "not a salt/cloud/<name>/created tag"),
        ("salt/cloud/web2/created", {}, "it has no node record"),
        (None, {}, "not a salt/cloud/<name>/created tag"),
    ],
)
def test_on_created_refuses_with_one_line_and_an_exit_code(tag, data, problem, opts):
    deployed(opts, "web1")
    ret = node.on_created(tag, data)
    assert ret["result"] is False and problem in ret["comment"] and ret["retcode"] == 1
    assert "\n" not in ret["comment"]


def test_on_key_forgets_a_record_whose_key_went(opts, swarm_calls):
    deployed(opts, "web1", swarm_role="worker")
    deployed(opts, "web2")
    NODES.update(opts, "web3", state="launching")  # a create in flight: no key recorded yet
    # A forged salt/key naming web2 (its key still accepted): nothing happens.
    assert node.on_key("web2")["comment"] == "web2: nothing to forget"
    assert node.on_key("web3")["comment"] == "web3: nothing to forget"
    os.remove(os.path.join(opts["pki_dir"], "minions", "web1"))
    assert node.on_key("web1")["comment"] == "forgot web1"
    assert NODES.get(opts, "web1") is None and NODES.get(opts, "web2") is not None
    assert swarm_calls.calls == [
        ("swarm.remove_node", ("web1",), {"class_name": "backends", "force": True})
    ]
    assert node.on_key("../x")["result"] is False


def test_before_destroy_marks_records_and_refuses_bad_names(opts, swarm_calls):
    deployed(opts, "web1")
    ret = node.before_destroy(["web1", "gone"])
    assert ret["retcode"] == 0 and ret["nodes"] == {"web1": "destroying", "gone": "no record"}
    assert NODES.get(opts, "web1")["state"] == "destroying"
    assert node.before_destroy(["ok", "../x"])["retcode"] == 1
    assert swarm_calls.calls == []  # not swarm members


def test_before_destroy_takes_swarm_members_out_in_one_call(opts, swarm_calls):
    deployed(opts, "web1", swarm_role="manager")
    deployed(opts, "web2", swarm_role="worker")
    deployed(opts, "web3")
    assert node.before_destroy(["web1", "web2", "web3"])["retcode"] == 0
    assert swarm_calls.calls == [("swarm.remove_node", (["web1", "web2"],), {})]
    swarm_calls.answers["swarm.remove_node"] = {"result": False, "comment": "only manager"}
    ret = node.before_destroy(["web2"])
    assert ret["retcode"] == 1 and "only manager; do not destroy ['web2']" in ret["comment"]


@pytest.mark.parametrize(
    "case",
    [
        (False, None, True),
        (True, {"result": True}, True),
        (True, {"result": False, "comment": "no manager answers"}, False),
    ],
)
def test_converge_admits_into_the_swarm_of_a_swarm_class(monkeypatch, swarm_calls, case):
    enabled, admitted, result = case
    pillar = {"swarm": {"enabled": enabled}}
    monkeypatch.setattr(
        node.salt.pillar,
        "get_pillar",
        lambda *args, **kwargs: SimpleNamespace(compile_pillar=lambda: pillar),
    )
    if admitted:
        swarm_calls.answers["swarm.admit"] = admitted
    summary = {"result": True, "comment": "converged"}
    node._admit("web1", summary)
    assert summary["result"] is result
    assert swarm_calls.calls == ([("swarm.admit", ("web1",), {})] if enabled else [])
    if not result:
        assert summary["comment"] == "swarm.admit failed: no manager answers"


def test_a_converge_claim_is_taken_over_only_when_its_process_is_gone(opts):
    mine = {"converge": {"by": node._claimant()}}
    assert node._claim_lost(mine) is False
    host, pid, started = mine["converge"]["by"].split(":")
    assert node._claim_lost({"converge": {"by": f"{host}:{pid}:{int(started) + 1}"}}) is True
    assert node._claim_lost({"converge": {"by": f"{host}:999999999:1"}}) is True
    assert node._claim_lost({"converge": {"by": f"other-{host}:1:1"}}) is False
    deployed(opts, "web1", state="converging", converge={"by": f"{host}:999999999:1"})
    claimed, _ = node._claim("web1", NODES.key_fingerprint(opts, "web1"), 0)
    assert claimed["converge"]["by"] == mine["converge"]["by"]


# --- node_class: the operator's commands ---------------------------------------------------------


def test_set_needs_an_accepted_key_and_starts_a_record_of_its_own(opts):
    assert "salt-key -a web7 first" in node_class.set_("web7", "backends")["comment"]
    NODES.update(opts, "web7", **{"class": "dataserver", "key": "old", "instance_id": "i-9"})
    accept(opts, "web7")
    assert node_class.set_("web7", "backends") == {"web7": "backends"}
    record = NODES.get(opts, "web7")
    assert record["source"] == "operator" and "instance_id" not in record
    assert node_class.get("web7") == "backends" and node_class.list_() == {"web7": "backends"}
    assert node_class.members("backends") == ["web7"]
    assert node_class.unset("web7") is True and node_class.get("web7") is None
    assert node_class.unset("web7") is False


@pytest.mark.parametrize(
    "call",
    [
        lambda: node_class.set_("../db1", "dataserver"),
        lambda: node_class.set_("db1", "data.server"),
        lambda: node_class.set_("db1", "data server"),
        lambda: node_class.set_("db1", "webservers"),
        lambda: node_class.get("a/b"),
        lambda: node_class.members("*"),
    ],
)
def test_node_class_refuses_bad_names_non_zero(call):
    ret = call()
    assert ret["result"] is False and "is not a" in ret["comment"], ret
    assert node_class.__context__["retcode"] == 1


def test_the_classes_are_the_folders_of_pillar_classes(opts):
    assert NODES.classes(opts) == ["backends", "dataserver"]
    assert NODES.class_problem(opts, "backends") is None
    assert "no folder pillar/classes/web" in NODES.class_problem(opts, "web")


def test_pillar_top_asks_the_record_for_the_minion_it_renders(opts):
    deployed(opts, "web1")
    assert node_record.class_of("web1") == "backends"
    assert node_record.class_of("web2") is None


# --- keys a node brings from another master -------------------------------------------------------


def test_a_pending_key_is_accepted_only_when_its_record_was_made_for_it(opts):
    """A node created through another master fails over to this one with the key that master's
    salt-cloud accepted: its record (shared) holds that key's fingerprint. Any other pending
    key stays pending: an unknown name, another key under a known name, a node being
    destroyed."""
    pending = os.path.join(opts["pki_dir"], "minions_pre")
    os.makedirs(pending)
    for name, key in (("web1", "K1"), ("web2", "OTHER"), ("web3", "K3"), ("stranger", "KS")):
        with open(os.path.join(pending, name), "w", encoding="ascii") as handle:
            handle.write(f"{key}\n")
    fingerprint = {k: hashlib.sha256(k.encode()).hexdigest() for k in ("K1", "K2", "K3")}
    NODES.update(opts, "web1", key=fingerprint["K1"], state="converged", **{"class": "backends"})
    NODES.update(opts, "web2", key=fingerprint["K2"], state="converged", **{"class": "backends"})
    NODES.update(opts, "web3", key=fingerprint["K3"], state="destroying", **{"class": "backends"})
    assert node._accept_recorded_keys() == ["web1"]
    assert sorted(os.listdir(pending)) == ["stranger", "web2", "web3"]
    assert NODES.key_fingerprint(opts, "web1") == fingerprint["K1"]
    assert node._accept_recorded_keys() == []


# --- jobs on minions -----------------------------------------------------------------------------


def test_a_ping_published_before_the_minion_listened_is_published_again(monkeypatch, opts):
    """A job published before the minion connected never reaches it: with ``again`` the job
    is published anew and the first answer to any of them counts (a node's converge waited
    30 s for a lost first ping)."""
    published, answers = [], {}

    class Local:
        def cmd_async(self, name, fun, arg, kwarg=None):
            published.append(fun)
            if len(published) == 2:  # the minion listens from now on
                answers[f"j{len(published)}"] = {name: {"return": True}}
            return f"j{len(published)}"

    returners = {f"{opts['master_job_cache']}.get_jid": answers.get}
    monkeypatch.setattr(node.salt.loader, "returners", lambda *args: returners)
    found = node._run_job(Local(), "n1", "test.ping", timeout=10, again=0.1)
    assert found == {"ret": True, "retcode": 0, "jid": "j2"}
    published.clear()
    assert node._run_job(Local(), "n1", "test.ping", timeout=0.3) is None
    assert published == ["test.ping"]


# --- status ---------------------------------------------------------------------------------------


def test_status_rows_say_what_is_wrong():
    converged = {"state": "converged", "key": "k", "class": "backends", "instance_id": "i-1"}
    assert node._row("web1", converged, {"id": "i-1"}, "k")["problem"] is None
    assert node._row("web1", converged, None, "k")["problem"] == "key without a live instance"
    ghost = node._row("web2", {}, {"id": "i-2", "class": "backends"}, None)
    assert ghost["problem"] == "instance without an accepted key" and ghost["class"] == "backends"
    failed = {**converged, "state": "failed", "converge": {"comment": "1 of 9 states failed"}}
    assert "converge failed: 1 of 9" in node._row("web1", failed, {"id": "i-1"}, "k")["problem"]
    by_hand = {"state": "deployed", "key": "k", "class": "backends", "source": "operator"}
    assert node._row("web3", by_hand, None, "k")["problem"] is None
    assert node._row("web3", by_hand, None, "other")["problem"] == "record is for another key"


def test_status_shows_the_newest_snapshot_as_the_driver_records_them():
    snapshotted = {"state": "converged", "snapshots": ["snap-new", "snap-old"]}
    assert node._row("db1", snapshotted, None, None)["last_snapshot"] == "snap-new"
    taken = {**snapshotted, "snapshot_time": 86400}
    assert node._row("db1", taken, None, None)["last_snapshot"] == "snap-new (1970-01-02 00:00:00)"
    assert node._row("db1", {}, None, None)["last_snapshot"] is None


# --- orch.ensure_class ----------------------------------------------------------------------------


def test_class_plan_creates_the_missing_and_names_extras_newest_first():
    live = {
        "backends-1": {"class": "backends", "launch_time": "2026-01-01"},
        "backends-4": {"class": "backends", "launch_time": "2026-01-03"},
        "db1": {"class": "dataserver", "launch_time": "2026-01-02"},
    }
    grow = node.plan(live, "backends", 4, "backends", taken=["backends-2"])
    assert grow == {
        "live": ["backends-1", "backends-4"],
        "create": ["backends-3", "backends-5"],
        "extra": [],
    }
    shrink = node.plan(live, "backends", 1, "backends")
    assert shrink["create"] == [] and shrink["extra"] == ["backends-4"]
    assert node.plan(live, "backends", 2, "backends")["create"] == []


def test_a_replacement_is_named_after_the_node_with_the_first_free_number():
    assert node._replacement_name("db1", {"db1"}) == "db1-1"
    assert node._replacement_name("backends-2", {"backends-1", "backends-2"}) == "backends-3"
    assert node._replacement_name("web-7", {"web-7"}) == "web-1"


REPLACEABLE = {
    "record": {"state": "converged", "class": "dataserver"},
    "live": {"db1": {"state": "running"}, "web1": {"state": "running"}},
    "taken": {"db1", "web1"},
    "profiles": {"dataserver": {"class": "dataserver"}, "backends": {"class": "backends"}},
}


@pytest.mark.parametrize(
    ("name", "new", "profile", "changes", "problem"),
    [
        ("db1", "db2", "dataserver", {}, None),
        ("db9", "db2", "dataserver", {}, "db9: no live instance has this name"),
        ("db1", "db2", "dataserver", {"live": {"db1": {"state": "stopped"}}}, "db1 is stopped"),
        ("db1", "db2", "dataserver", {"record": {"state": "failed"}}, "db1 is failed: converge"),
        ("db1", "db2", "dataserver", {"record": {}}, "db1 is not recorded"),
        ("db1", "web1", "dataserver", {}, "new: web1 is taken"),
        ("db1", "../x", "dataserver", {}, "new: '../x' is not a node name"),
        ("db1", "db2", "backends", {}, "profile: 'backends' is of class 'backends'"),
        ("db1", "db2", "nope", {}, "profile: 'nope' is not a salt-cloud profile"),
    ],
)
def test_replace_refuses_what_it_cannot_do(name, new, profile, changes, problem):
    found = node._replace_problem(name, new, profile, **{**REPLACEABLE, **changes})
    assert (found is None) if problem is None else (problem in found), found


@pytest.mark.parametrize(
    ("request_", "messages"),
    [
        ({"class": "b", "cont": 1}, ["cont: unknown key (did you mean count?)", "count: missing"]),
        ({"clas": "b", "count": 1}, ["did you mean class", "class: missing"]),
        ({"class": "b", "count": 1, "colour": "red"}, ["colour: unknown key ("]),
        ({"class": "b"}, ["count: missing"]),
        ({"class": "b", "count": 1.5}, ["count: 1.5 is not a whole number"]),
        ({"class": "b", "count": 1001}, ["whole number"]),
        ({"class": "a b", "count": True}, ["is not a class name", "count: True"]),
        ({"class": "b", "count": 1, "remove_extra": "no"}, ["remove_extra: 'no'"]),
        ({"class": "b", "count": 1, "prefix": "../x"}, ["prefix: '../x' is not a node name"]),
        ({"class": "web", "count": 1}, ["class: 'web' has no folder (classes: b, backends)"]),
        ([], ["must be a mapping"]),
    ],
)
def test_every_problem_of_a_bad_ensure_request_at_once(request_, messages):
    problems = " ".join(node.request_problems(request_, ["b", "backends"]))
    for message in messages:
        assert message in problems


def test_summary_keeps_failures_not_changes():
    ret = {
        "jid": "1",
        "retcode": 2,
        "ret": {
            "a": {"result": True, "changes": {"diff": "secret"}, "comment": "ok"},
            "b": {"result": False, "changes": {}, "comment": "broken"},
        },
    }
    summary = node.summarize(ret)
    assert summary["result"] is False and summary["failed"] == {"b": "broken"}
    assert "secret" not in str(summary)
    assert node.summarize({"ret": ["Rendering SLS failed"], "retcode": 1})["result"] is False
    assert node.summarize(None)["comment"] == "the minion did not return"
    ok = node.summarize({"ret": {"a": {"result": True, "changes": {}}}, "retcode": 0})
    assert ok["result"] is True and ok["changed"] == 0


def test_sync_only_the_custom_types_the_tree_has():
    assert node.sync_functions(["_states", "_modules", "_clouds", "_runners", "docker"]) == [
        "saltutil.sync_modules",
        "saltutil.sync_states",
    ]


# --- storage growth (module docker_storage) --------------------------------------------------


@pytest.fixture(scope="module")
def storage():
    return load_module("modules", "docker_storage")


def sizes(disk_gib, pv_gib, vg_free_mib, lv_gib, extent=4 * MIB):
    return {
        "disk": disk_gib * GIB,
        "pv": pv_gib * GIB - 4 * MIB,
        "extent": extent,
        "vg_free": vg_free_mib * MIB,
        "lv": lv_gib * GIB,
    }


def test_growth_plan(storage):
    assert storage.plan(sizes(4, 4, 0, 4), "overlay2") == []
    assert storage.plan(sizes(6, 4, 0, 4), "overlay2") == ["pvresize", "lvextend", "growfs"]
    assert storage.plan(sizes(6, 4, 0, 4), "devicemapper") == ["pvresize", "lvextend"]
    assert storage.plan(sizes(6, 4, 0, 4), "devicemapper", grow_lv=False) == ["pvresize"]
    # Free space left in the VG (a step that failed last time): the LV takes it.
    assert storage.plan(sizes(4, 4, 100, 4), "overlay2") == ["lvextend", "growfs"]
    with pytest.raises(CommandExecutionError, match="shrank"):
        storage.plan(sizes(3, 4, 0, 4), "overlay2")


def test_thin_pool_grows_only_past_its_share(storage):
    found = sizes(4, 4, 160, 4)
    found["lv"] = int(0.95 * (4 * GIB - 4 * MIB))
    assert storage._lv_may_grow(found, "95%VG") is False
    assert storage._lv_may_grow({**found, "disk": 6 * GIB}, "95%VG") is True
    assert storage._lv_may_grow(found, "100%FREE") is True
    assert storage._lv_may_grow(found, "2G") is False


def test_the_status_table_keeps_the_runners_column_order():
    table = load_module("output", "node_status").output
    rows = [
        {"node": "web1", "class": "backends", "problem": None},
        {"node": "web22", "class": "backends", "problem": "instance without an accepted key"},
    ]
    assert table({"nodes": rows, "retcode": 1}).splitlines() == [
        "node   class     problem",
        "web1   backends  -",
        "web22  backends  instance without an accepted key",
    ]
    assert "no node" in table({"nodes": [], "retcode": 0})
