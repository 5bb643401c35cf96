"""The pure parts of the one-command path: which events the reactor acts on (runner node),
the class plan of orch.ensure_class, the converge summary, and the storage growth plan."""

import json

import pytest
from salt.exceptions import CommandExecutionError

from tools.salt_repo import load_module

GIB = 1024**3
MIB = 1024**2


@pytest.fixture(scope="module")
def node():
    return load_module("runners", "node")


@pytest.fixture(scope="module")
def storage():
    return load_module("modules", "docker_storage")


SALT_CLOUD_DATA = {
    "name": "db1",
    "profile": "dataserver",
    "provider": "aws:boto3_ec2",
    "driver": "boto3_ec2",
    "event": "created instance",
    "_stamp": "x",
}


@pytest.mark.parametrize(
    ("tag", "data", "problem"),
    [
        ("salt/cloud/db1/created", SALT_CLOUD_DATA, None),
        ("salt/cloud/db1/destroyed", SALT_CLOUD_DATA, "is not salt/cloud/<name>/created"),
        ("salt/cloud/db1/created/x", SALT_CLOUD_DATA, "is not salt/cloud/<name>/created"),
        ("salt/cloud/../created", {**SALT_CLOUD_DATA, "name": ".."}, "does not name a valid"),
        ("salt/cloud/-x/created", {**SALT_CLOUD_DATA, "name": "-x"}, "does not name a valid"),
        ("salt/cloud/db1/created", "text", "not a mapping"),
        (
            "salt/cloud/db1/created",
            {**SALT_CLOUD_DATA, "id": "web1", "cmd": "_minion_event"},
            "fired by minion 'web1'",
        ),
        ("salt/cloud/db1/created", {**SALT_CLOUD_DATA, "name": "db2"}, "names 'db2'"),
        (None, SALT_CLOUD_DATA, "is not salt/cloud"),
    ],
)
def test_event_problem(node, tag, data, problem):
    found = node.event_problem(tag, data, "created")
    if problem is None:
        assert found is None
    else:
        assert problem in found


def test_class_plan_creates_the_missing_and_names_extras_newest_first(node):
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


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"class": "b", "cont": 1}, "did you mean count"),
        ({"clas": "b", "count": 1}, "did you mean class"),
        ({"class": "b"}, "count: missing"),
        ({"class": "b", "count": 1.5}, "whole number"),
        ({"class": "b", "count": 1001}, "whole number"),
        ({"class": "a b", "count": 1}, "not a class name"),
        ({"class": "b", "count": 1, "remove_extra": "no"}, "remove_extra"),
        ([], "must be a mapping"),
    ],
)
def test_bad_ensure_requests(node, request_, message):
    with pytest.raises(ValueError, match=message):
        node.check_request(request_)


def test_summary_keeps_failures_not_changes(node):
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


def test_sync_only_the_custom_types_the_tree_has(node):
    assert node.sync_functions(["_states", "_modules", "_clouds", "_runners", "docker"]) == [
        "saltutil.sync_modules",
        "saltutil.sync_states",
    ]


@pytest.fixture
def cachedir(node, tmp_path, monkeypatch):
    monkeypatch.setattr(node, "__opts__", {"cachedir": str(tmp_path)}, raising=False)
    return tmp_path


def test_cache_records_are_json_files_in_a_cachedir_subdirectory(node, cachedir):
    assert node.read_record("db1") is None
    node.write_cache_record("node_converge", "db1", {"key": "k", "result": True})
    path = cachedir / "node_converge" / "db1.json"
    assert json.loads(path.read_text()) == {"key": "k", "result": True}
    assert node.read_record("db1") == {"key": "k", "result": True}
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["db1.json"]
    path.write_text("{not json")
    assert node.read_record("db1") is None


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "", ".hidden", None])
def test_cache_records_stay_in_their_directory(node, cachedir, name):
    with pytest.raises(ValueError, match="is not a plain file name"):
        node.cache_file("node_converge", name)
    with pytest.raises(ValueError, match="is not a plain file name"):
        node.cache_file(name, "db1")


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
