"""One command: `salt-cloud -p <profile> <name>` with the README's master running ends with the
node converged (reactor on salt/cloud/*/created → node.on_created → highstate), and
`salt-run node.wait_converged <name>` shows the result, non-zero when the highstate failed.
`salt-cloud -d` makes the master forget the node. Events forged by a minion change nothing."""

import json
import subprocess
import time

import pytest

from tests.master.conftest import BROKEN_PREFIX, PROFILE, TIER_DIR
from tests.master.test_master_from_checkout import accept_key, wait_for_minion
from tools.checkout_master import BIN_DIR, HostMinion


def cloud_create(checkout, name):
    result = checkout.master.run("salt-cloud", "--out=json", "-p", PROFILE, name, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def wait_converged(checkout, name, timeout=180):
    result = checkout.master.run(
        "salt-run",
        "--out=json",
        "node.wait_converged",
        name,
        f"timeout={timeout}",
        timeout=timeout + 60,
    )
    return result, json.loads(result.stdout or "null")


def destroy(checkout, name):
    result = checkout.master.run("salt-cloud", "--out=json", "-y", "-d", name, timeout=300)
    # The instance is gone: so is the machine's minion (here a process on this host).
    HostMinion(checkout.nodes, name).stop()
    return result


def record_path(checkout, name):
    return checkout.cachedir / "node_converge" / f"{name}.json"


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def master_log(checkout):
    path = checkout.root / ".salt" / "var" / "log" / "salt" / "master"
    return path.read_text(errors="replace") if path.exists() else ""


def test_salt_cloud_p_ends_with_the_node_converged(checkout):
    name = "oc1"
    try:
        cloud_create(checkout, name)
        result, waited = wait_converged(checkout, name)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        record = waited[name]
        assert record["result"] is True and record["comment"] == "converged", record
        assert record["source"] == "reactor" and record["failed"] == {}
        assert record["states"] > 0 and record["jid"]
        daemon_json = checkout.nodes / name / "etc" / "docker" / "daemon.json"
        assert json.loads(daemon_json.read_text())["log-driver"] == "json-file"
        # Waiting again reports the same converge; none is started twice.
        again, waited_again = wait_converged(checkout, name)
        assert again.returncode == 0 and waited_again[name]["jid"] == record["jid"]
    finally:
        destroyed = destroy(checkout, name)
    assert destroyed.returncode == 0, destroyed.stderr[-3000:]
    # The destroy reactor: key (salt-cloud), cached data and the converge record are gone.
    wait_until(
        lambda: (
            not record_path(checkout, name).exists()
            and not (checkout.cachedir / "minions" / name).exists()
        ),
        60,
        f"the master did not forget {name}",
    )
    assert not (checkout.pki / "minions" / name).exists()


def test_a_failed_converge_is_visible_and_non_zero(checkout):
    name = f"{BROKEN_PREFIX}-1"
    try:
        cloud_create(checkout, name)
        result, waited = wait_converged(checkout, name)
        assert result.returncode != 0, result.stdout
        record = waited[name]
        assert record["result"] is False
        assert any("docker-config" in key for key in record["failed"]), record
    finally:
        destroy(checkout, name)


def test_wait_converged_for_an_unknown_node_fails_at_once(checkout):
    result, waited = wait_converged(checkout, "never-created", timeout=5)
    assert result.returncode != 0
    assert "no accepted minion key" in waited["comment"]


@pytest.fixture(scope="module")
def victim_and_mallory(checkout):
    """A converged node, and another accepted minion that turns hostile."""
    cloud_create(checkout, "victim")
    result, _ = wait_converged(checkout, "victim")
    assert result.returncode == 0, result.stdout[-3000:]
    mallory = HostMinion(checkout.nodes, "mallory")
    mallory.write_config(grains={"class": "backends"})
    mallory.start(env=checkout.env)
    try:
        accept_key(checkout.master, "mallory")
        wait_for_minion(checkout.master, "mallory")
        yield mallory
    finally:
        mallory.stop()
        destroy(checkout, "victim")


def forge(minion, tag, data, form):
    """Run tests/master/forge_event.py as the hostile minion."""
    result = subprocess.run(
        [
            str(BIN_DIR / "python"),
            str(TIER_DIR / "forge_event.py"),
            str(minion.config_dir),
            tag,
            json.dumps(data),
            form,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("form", ["plain", "pretag"])
def test_forged_events_from_a_minion_change_nothing(checkout, victim_and_mallory, form):
    record_before = json.loads(record_path(checkout, "victim").read_text())
    key = checkout.pki / "minions" / "victim"
    # A destroy event for a live node, a create event for a node that has no key, and a
    # create event for the converged node.
    forge(victim_and_mallory, "salt/cloud/victim/destroyed", {"name": "victim"}, form)
    forge(victim_and_mallory, f"salt/cloud/ghost-{form}/created", {"name": f"ghost-{form}"}, form)
    forge(victim_and_mallory, "salt/cloud/victim/created", {"name": "victim"}, form)
    if form == "plain":
        # The master put mallory's id into the event: refused as a minion's, at once.
        wait_until(
            lambda: (
                "salt/cloud/victim/destroyed: fired by minion 'mallory'" in master_log(checkout)
            ),
            30,
            "the reactor did not refuse the forged destroy",
        )
    else:
        # Nothing shows the sender: the master-side facts decide (EC2 still has victim).
        wait_until(
            lambda: (
                "victim: key still accepted and the node is not known to be gone"
                in master_log(checkout)
            ),
            60,
            "node.forget did not refuse a live node",
        )
    wait_until(
        lambda: f"salt/cloud/ghost-{form}/created" in master_log(checkout),
        30,
        "the reactor did not refuse the create event of a node without a key",
    )
    assert key.exists(), "a forged event removed a live node's key"
    assert not record_path(checkout, f"ghost-{form}").exists()
    time.sleep(3)
    record_after = json.loads(record_path(checkout, "victim").read_text())
    assert record_after == record_before, "a forged create started another converge"
