"""The README's master: `bin/salt-master` in a fresh clone, with the repository's own `master`
file, serves that clone's states, pillar and custom modules, and a minion converges through
it. (Before: `salt-master -c .` with relative file_roots, which resolved against `/`, the
daemon's working directory: the minion found no top file.)"""

import json
import os
import time

import salt.version
import yaml

from tools.checkout_master import HostMinion, node_record


def salt_json(master, *args, timeout=300):
    result = master.run("salt", "--out=json", "--static", *args, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout)


def accept_key(master, minion_id, timeout=60):
    """Accept the minion's key once it has asked for it (salt-key from the root)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        master.run("salt-key", "-y", "-a", minion_id)
        keys = json.loads(master.run("salt-key", "--out=json", "-L").stdout)
        if minion_id in keys.get("minions", []):
            return
        time.sleep(1)
    raise AssertionError(f"key of {minion_id} never showed up on the master")


def wait_for_minion(master, minion_id, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = master.run("salt", "--out=json", "--timeout=5", minion_id, "test.ping")
        if result.returncode == 0 and json.loads(result.stdout or "{}").get(minion_id) is True:
            return
        time.sleep(1)
    raise AssertionError(f"{minion_id} does not answer the master")


def has_runner(master, function):
    """Whether the master's runners (salt-run from the root) include `function`."""
    return f"{function}:" in master.run("salt-run", "-d", function).stdout


def node_class_set(master, minion_id, node_class):
    """Assign the class in the master's registry when this master has the node_class runner
    (the formula branch); the grain alone decides on a master without it."""
    if has_runner(master, "node_class.set"):
        result = master.run("salt-run", "node_class.set", minion_id, node_class)
        assert result.returncode == 0, result.stderr


def test_master_from_clone_serves_its_states_pillar_and_modules(checkout):
    master = checkout.master
    # The daemon works from / (so nothing relative may be left in its paths).
    assert os.readlink(f"/proc/{master.process.pid}/cwd") == "/"
    minion = HostMinion(checkout.nodes, "readme1")
    minion.write_config(grains={"class": "backends"})
    minion.start(env=checkout.env)
    try:
        # salt-key, salt, salt-run from the root: the Saltfile points them at the same config.
        accept_key(master, "readme1")
        node_class_set(master, "readme1", "backends")
        wait_for_minion(master, "readme1")

        top = salt_json(master, "readme1", "cp.get_file_str", "salt://top.sls")
        assert top["readme1"] == (checkout.root / "salt" / "top.sls").read_text()
        # 3008 masks pillar values unless unmask=True, which 3007 does not know.
        unmask = ["unmask=True"] if salt.version.__saltstack_version__.major >= 3008 else []
        pillar = salt_json(master, "readme1", "pillar.item", "docker", *unmask)["readme1"]
        assert pillar["docker"]["storage"]["mode"] == "none"

        first = salt_json(master, "readme1", "state.apply", timeout=600)["readme1"]
        assert isinstance(first, dict) and first, first
        assert all(ret["result"] is True for ret in first.values()), first
        daemon_json = checkout.nodes / "readme1" / "etc" / "docker" / "daemon.json"
        # Written by the formula (custom module docker_host builds it) from the clone's pillar.
        assert json.loads(daemon_json.read_text())["log-opts"]["max-size"] == "10m"
        again = salt_json(master, "readme1", "state.apply", timeout=600)["readme1"]
        assert not {key: ret["changes"] for key, ret in again.items() if ret["changes"]}

        # The master's own runners come from the clone too (module_dirs).
        assert has_runner(master, "node.wait_converged")
    finally:
        minion.stop()
        master.run("salt-key", "-y", "-d", "readme1")


def test_every_relative_path_of_master_is_made_absolute(checkout):
    """bin/salt-master's include overrides each path option `master` names relative to the
    root, so the daemon (working directory /) and its re-reads of the file see no relative
    path; a path option added to `master` later is covered too, or this fails."""
    config = yaml.safe_load((checkout.root / "master").read_text())
    generated = yaml.safe_load((checkout.root / ".salt" / "checkout.conf").read_text())
    assert config["default_include"] == ".salt/checkout.conf"
    relative = {
        key
        for key, value in config.items()
        if key in ("root_dir", "file_roots", "pillar_roots") or key.endswith("_dirs")
    }
    assert relative <= set(generated)
    assert generated["root_dir"] == str(checkout.root / ".salt")
    assert generated["file_roots"] == {"base": [str(checkout.root / "salt")]}
    assert generated["pillar_roots"] == {"base": [str(checkout.root / "pillar")]}
    for key in relative - {"root_dir", "file_roots", "pillar_roots"}:
        assert all(os.path.isabs(path) for path in generated[key]), (key, generated[key])


def test_the_registry_before_node_records_is_migrated(checkout):
    """Issue 19.1: a master whose pki_dir still holds the registry files of before
    (node_classes/<id>) gives each minion the class its file named, through the node record;
    an entry whose minion has no accepted key is dropped, not handed to a later key."""
    master = checkout.master
    minion = HostMinion(checkout.nodes, "legacy1")
    minion.write_config()
    minion.start(env=checkout.env)
    try:
        accept_key(master, "legacy1")
        legacy = checkout.pki / "node_classes"
        legacy.mkdir(mode=0o700)
        (legacy / "legacy1").write_text("backends\n")
        (legacy / "stale1").write_text("dataserver\n")
        wait_for_minion(master, "legacy1")
        unmask = ["unmask=True"] if salt.version.__saltstack_version__.major >= 3008 else []
        pillar = salt_json(master, "legacy1", "pillar.item", "node_class", *unmask)["legacy1"]
        assert pillar["node_class"] == "backends"
        assert not legacy.exists()
        assert node_record(checkout.pki, "legacy1")["class"] == "backends"
        assert node_record(checkout.pki, "stale1") is None
    finally:
        minion.stop()
        master.run("salt-key", "-y", "-d", "legacy1")
