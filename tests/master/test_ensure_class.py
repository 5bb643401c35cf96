"""`salt-run state.orchestrate orch.ensure_class pillar='{class, count}'`: the class gets exactly
`count` live nodes — the missing ones created in parallel by salt-cloud and converged, extra
ones reported and removed only when asked; a second run changes nothing; a bad request is
refused before EC2 is touched."""

import json

import pytest

from tests.master.conftest import WORKERS_PROFILE
from tests.master.test_one_command import node_record
from tools.checkout_master import HostMinion

CLASS = "workers"


def orchestrate(checkout, **request):
    result = checkout.master.run(
        "salt-run",
        "--out=json",
        "state.orchestrate",
        "orch.ensure_class",
        f"pillar={json.dumps(request)}",
        timeout=900,
    )
    try:
        states = next(iter(json.loads(result.stdout)["data"].values()))
    except (ValueError, KeyError, StopIteration, AttributeError):
        states = {}
    return result, states


def live_nodes(checkout, node_class=CLASS):
    """(launch time, name) of each live node of the class, as EC2 holds them."""
    reservations = checkout.ec2.describe_instances(
        Filters=[
            {"Name": "tag:class", "Values": [node_class]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    return [
        (i["LaunchTime"], next(t["Value"] for t in i["Tags"] if t["Key"] == "Name"))
        for r in reservations
        for i in r["Instances"]
    ]


def live(checkout, node_class=CLASS):
    return sorted(name for _, name in live_nodes(checkout, node_class))


def newest(checkout, node_class=CLASS):
    """The live node of the class launched last (by name among equal launch times): the one
    an extra node is chosen as. Both were created at once, so EC2's times decide, not order."""
    return max(live_nodes(checkout, node_class))[1]


def converged(checkout, name):
    record = node_record(checkout, name)
    return record and record["state"] == "converged" and record["converge"]["result"] is True


def comments(states):
    return " ".join(str(ret.get("comment")) for ret in states.values())


@pytest.fixture
def workers(checkout):
    yield
    for name in live(checkout):
        checkout.master.run("salt-cloud", "-y", "-d", name, timeout=300)
    for name in ("workers-1", "workers-2", "workers-3"):
        HostMinion(checkout.nodes, name).stop()


def test_ensure_class_creates_converges_reports_and_removes_when_asked(checkout, workers):
    request = {"class": CLASS, "count": 2, "profile": WORKERS_PROFILE}
    result, states = orchestrate(checkout, **request)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert live(checkout) == ["workers-1", "workers-2"]
    for name in ("workers-1", "workers-2"):
        assert converged(checkout, name), node_record(checkout, name)
    created = [key for key, ret in states.items() if key.startswith("cloud_") and ret["changes"]]
    assert len(created) == 2, states

    # Idempotent: nothing created, nothing converged, nothing changed.
    again, states = orchestrate(checkout, **request)
    assert again.returncode == 0, again.stdout[-4000:]
    assert not {key: ret["changes"] for key, ret in states.items() if ret["changes"]}
    assert "created: none" in comments(states)

    # One too many: the newest is reported, kept.
    extra = newest(checkout)
    (kept,) = {"workers-1", "workers-2"} - {extra}
    fewer, states = orchestrate(checkout, **{**request, "count": 1})
    assert fewer.returncode == 0, fewer.stdout[-4000:]
    assert f"extra: {extra}" in comments(states) and "kept" in comments(states)
    assert live(checkout) == ["workers-1", "workers-2"]

    # Removed only when asked; salt-cloud's destroy forgets it.
    removed, states = orchestrate(checkout, **{**request, "count": 1, "remove_extra": True})
    assert removed.returncode == 0, removed.stdout[-4000:]
    HostMinion(checkout.nodes, extra).stop()
    assert live(checkout) == [kept]
    assert node_record(checkout, extra) is None
    assert converged(checkout, kept)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"class": CLASS, "cont": 2}, "cont: unknown key (did you mean count?)"),
        ({"class": CLASS}, "count: missing"),
        ({"count": 1}, "class: missing"),
        ({"class": CLASS, "count": -1}, "count: -1 is not a whole number"),
        ({"class": CLASS, "count": "3"}, "count: '3' is not a whole number"),
        ({"class": CLASS, "count": True}, "count: True is not a whole number"),
        ({"class": "no such/class", "count": 1}, "is not a class name"),
        ({"class": CLASS, "count": 1, "profile": "nope"}, "profile: 'nope' is not a salt-cloud"),
        ({"class": CLASS, "count": 1, "profile": "backends"}, "is of class 'backends'"),
        ({"class": CLASS, "count": 1, "colour": "red"}, "colour: unknown key"),
        ({"class": CLASS, "count": 1, "remove_extra": "yes"}, "remove_extra: 'yes' is not"),
        ({"class": CLASS, "count": 1, "prefix": "../x"}, "is not a node name"),
    ],
)
def test_a_bad_request_is_refused_before_ec2_is_touched(checkout, request_, message):
    before = checkout.ec2.describe_instances()["Reservations"]
    result, _ = orchestrate(checkout, **request_)
    assert result.returncode != 0, result.stdout[-3000:]
    assert message in result.stdout, result.stdout[-3000:]
    assert checkout.ec2.describe_instances()["Reservations"] == before
