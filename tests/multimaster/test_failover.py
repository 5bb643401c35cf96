"""
What an operator sees with two masters sharing the fleet (docs/multimaster.md): a node
converges through either master and both report it; the active master dies (SIGKILL, the
runner in flight with it) mid-converge and the other one finishes the converge, applying the
data step once; the store restarts and nothing is forgotten; the dead master comes back and
reads the same records. The tests run in order on one fleet (conftest.py).
"""

import subprocess
import time

from tests.multimaster.conftest import TIMINGS
from tools.multimaster import answering, wait_for

CONVERGE_WAIT = 180


def converged(fleet, master, name, timeout=CONVERGE_WAIT):
    """``salt-run node.wait_converged`` on ``master``: (exit code, the node's record)."""
    code, data = fleet.cli_json(
        master,
        "salt-run",
        "node.wait_converged",
        name,
        f"timeout={timeout}",
        timeout=timeout + 60,
    )
    return code, (data or {}).get(name)


def test_a_node_converges_through_either_master_and_both_report_it(fleet):
    started = time.monotonic()
    runs = {
        name: fleet.start_cli(master, "salt-run", "node.converge", name)
        for name, master in (("n01", "m1"), ("n03", "m2"))
    }
    for process in runs.values():
        assert process.wait(timeout=CONVERGE_WAIT) == 0
    TIMINGS["converge via m1 and via m2"] = time.monotonic() - started
    for master in ("m1", "m2"):
        for name in ("n01", "n03"):
            code, found = converged(fleet, master, name, timeout=5)
            assert code == 0 and found["state"] == "converged", (master, name, found)
            assert found["converge"]["changed"] == 3
    assert fleet.minion_file("n01", "ledger") == "applied\n"
    assert fleet.minion_file("n03", "ledger") == "applied\n"


def test_records_written_through_one_master_are_read_through_the_other(fleet):
    code, output = fleet.python("m1", "nodes.update(opts, 'n02', note='written through m1')")
    assert code == 0, output
    assert fleet.records("m2")["n02"]["note"] == "written through m1"


def test_the_active_master_dies_mid_converge_and_the_other_finishes_it(fleet):
    runner = fleet.start_cli("m1", "salt-run", "node.converge", "n02")
    # The light highstate writes its file first, then sleeps: m1 dies in that window.
    wait_for(lambda: fleet.minion_file("n02", "converged.txt"), 60, "n02's converge to start")
    killed = time.monotonic()
    fleet.kill_master("m1")
    assert runner.poll() is not None  # the runner in flight died with its master
    minions = ["n01", "n02", "n03", "n04"]
    wait_for(lambda: answering(fleet, "m2", minions, timeout=3) == minions, 60, "failover")
    TIMINGS["minions on m2 after the SIGKILL"] = time.monotonic() - killed
    code, found = converged(fleet, "m2", "n02")
    TIMINGS["n02 converged through m2 after the SIGKILL"] = time.monotonic() - killed
    assert code == 0, found
    assert found["state"] == "converged" and found["converge"]["source"] == "resume", found
    # The data step ran once although two highstates ran on n02.
    assert fleet.minion_file("n02", "ledger") == "applied\n"
    assert fleet.records("m2")["n02"]["class"] == "light"


def test_a_node_whose_key_only_the_dead_master_had_is_let_in_by_the_other(fleet):
    """n05's key is on m1 only (its salt-cloud ran there); m1 is dead since the test before:
    m2 accepts the key its record was made for, and n05 answers through m2. A pending key
    that no record was made for stays pending."""
    stranger = fleet.masters["m2"].config_dir / "pki" / "minions_pre" / "stranger"
    stranger.parent.mkdir(parents=True, exist_ok=True)
    stranger.write_text("-----BEGIN PUBLIC KEY-----\nnot a node's\n-----END PUBLIC KEY-----\n")
    wait_for(lambda: answering(fleet, "m2", ["n05"], timeout=3) == ["n05"], 90, "n05 on m2")
    m2_keys = fleet.masters["m2"].config_dir / "pki"
    assert (m2_keys / "minions" / "n05").exists()
    assert (m2_keys / "minions_pre" / "stranger").exists()
    assert not (m2_keys / "minions" / "stranger").exists()


def test_one_swarm_init_when_the_master_holding_the_class_lock_dies(fleet):
    """A stand-in for the swarm runner's init step (real swarms need dockerd per node): the
    same lock (``dockerhosts_nodes.locked``, ``swarm/<class>``) and the same memory (Salt's
    cache, bank ``dockerhosts/swarms``) that salt/_runners/swarm.py uses.
    The first master remembers its init and dies holding the lock; the second one waits for
    the lease, finds the memory and does not init again."""
    fleet.start_master("m1")
    step = (
        "import os, time\n"
        "cache = __import__('salt.cache').cache.factory(opts)\n"
        "with utils['dockerhosts_nodes.locked'](opts, 'swarm/light'):\n"
        "    known = cache.fetch('dockerhosts/swarms', 'light')\n"
        "    if not known:\n"
        "        with open({ledger!r}, 'a') as out: out.write(opts['id'] + '\\n')\n"
        "        cache.store('dockerhosts/swarms', 'light', {{'cluster_id': opts['id']}})\n"
        "        time.sleep(600)\n"
        "print('known', known)\n"
    )
    ledger = fleet.root / "swarm-inits"
    first = subprocess.Popen(
        fleet.python_command("m1", step.format(ledger=str(ledger))),
        start_new_session=True,
    )
    fleet.started.append(("m1", first))
    wait_for(ledger.exists, 60, "the first init")
    fleet.kill_master("m1")
    started = time.monotonic()
    code, output = fleet.python("m2", step.format(ledger=str(ledger)))
    TIMINGS["class lock free after its holder died"] = time.monotonic() - started
    assert code == 0, output
    assert "known {'cluster_id': 'm1'}" in output
    assert ledger.read_text() == "m1\n"


def test_the_store_restarts_and_nothing_is_forgotten(fleet):
    before = fleet.records("m2")
    fleet.restart_store(down_seconds=2)
    assert fleet.records("m2") == before
    code, found = converged(fleet, "m2", "n02", timeout=5)
    assert code == 0 and found["state"] == "converged"
    runner = fleet.start_cli("m2", "salt-run", "node.converge", "n04")
    assert runner.wait(timeout=CONVERGE_WAIT) == 0
    assert fleet.minion_file("n04", "ledger") == "applied\n"


def test_a_master_rejoins_and_reads_the_same_fleet(fleet):
    fleet.start_master("m1")
    # Read one after the other, the two views may straddle a write (a master's schedule):
    # the same store shows the same records through both within a few reads.
    views = []

    def same_records():
        views[:] = [fleet.records("m1"), fleet.records("m2")]
        return views[0] == views[1]

    try:
        wait_for(same_records, 30, "the same records through m1 and m2")
    except RuntimeError:
        differing = {n: (r, views[1].get(n)) for n, r in views[0].items() if r != views[1].get(n)}
        raise AssertionError(f"m1 and m2 read different records: {differing}") from None
    for name in ("n01", "n02", "n03", "n04"):
        code, found = converged(fleet, "m1", name, timeout=5)
        assert code == 0 and found["state"] == "converged", (name, found)
    # Minions stay with the master they failed over to (no failback configured).
    minions = ["n01", "n02", "n03", "n04"]
    assert answering(fleet, "m2", minions, timeout=5) == minions
