"""
A class becomes a swarm from pillar, through a real salt-master, three minions and three
engines (tests/swarm/conftest.py): bad pillar refused before any change, a dry run, one
manager + two workers, services spread over the nodes and talking across them over the
overlay, the secret inside the task only, a second run with no changes, no token for an
unentitled minion, a rolling update, a failing one rolled back, secret rotation, a node
removed (its tasks rescheduled) and re-admitted, three managers from pillar, services no
longer in pillar, a fresh three-manager cluster; then no join token or secret anywhere in
what Salt wrote, logged (trace level) or put on the event bus.

The tests run in order and share the cluster.
"""

import contextlib
import datetime
import itertools
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from tests.swarm.conftest import CLASS, FINDINGS, INTRUDER, NODES, TIMINGS
from tools.swarm_nodes import failing_requests, start_engine, stop_engine

pytestmark = pytest.mark.swarm


def converged(swarm, test=False):
    """``swarm.converge``, which must not fail: (its outcome, wall seconds)."""
    outcome, returncode, seconds = swarm.converge(test=test)
    assert outcome["result"] is not False and returncode == 0, outcome
    return outcome, seconds


def node_table(swarm):
    """{hostname: (status, availability, manager status)} as a manager lists the nodes."""
    rows = swarm.manager().cli(
        "node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}"
    )
    table = {}
    for row in rows.splitlines():
        fields = [*row.split(), ""]
        table[fields[0]] = (fields[1], fields[2], fields[3])
    return table


def manager_statuses(swarm, want, timeout=60):
    """The nodes' manager statuses, once they are ``want`` (a promotion settles in seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = sorted(status for _, _, status in node_table(swarm).values())
        if statuses == want or time.monotonic() > deadline:
            return statuses
        time.sleep(1)


def swarm_states(swarm):
    return {name: node.swarm_state() for name, node in swarm.engines.items()}


def runner_data(ret):
    assert isinstance(ret.data, dict), f"{ret.stdout}{ret.stderr}"
    return ret.data


def assert_no_change(swarm):
    """``swarm.converge`` of the class succeeds and changes nothing."""
    outcome, returncode, _ = swarm.converge()
    assert outcome["result"] is True and returncode == 0, outcome
    assert not outcome["changes"], outcome["changes"]


def set_web_image(swarm, image):
    swarm.pillar.swarm["services"]["web"]["image"] = image
    swarm.pillar.write()


# --- refusals and the plan, before anything exists --------------------------------------------


def test_bad_pillar_refused_before_any_change(swarm):
    # The whole corpus of bad pillar is in tests/unit/test_docker_swarm.py; here, the
    # refusal stops a real converge before anything changes.
    swarm.pillar.swarm["services"]["web"]["replica"] = 3
    swarm.pillar.write()
    try:
        outcome, returncode, _ = swarm.converge()
    finally:
        del swarm.pillar.swarm["services"]["web"]["replica"]
        swarm.pillar.write()
    assert outcome["result"] is False and returncode == 1
    assert "swarm:services:web:replica: unknown key (did you mean" in outcome["comment"]
    assert "replicas" in outcome["comment"]
    assert not outcome["changes"]
    assert set(swarm_states(swarm).values()) == {"inactive"}


def test_dry_run_plans_and_changes_nothing(swarm):
    plan, _ = converged(swarm, test=True)
    assert plan["result"] is None
    assert set(plan["changes"]["managers"]) == {"sw1"}
    assert set(plan["changes"]["workers"]) == {"sw2", "sw3"}
    assert set(swarm_states(swarm).values()) == {"inactive"}


def test_dry_run_of_three_managers_shows_every_join(swarm):
    swarm.pillar.swarm["managers"]["count"] = 3
    swarm.pillar.write()
    try:
        ret = swarm.runner("swarm.converge", CLASS, "test=True")
    finally:
        swarm.pillar.swarm["managers"]["count"] = 1
        swarm.pillar.write()
    plan = runner_data(ret)
    assert plan["result"] is None, plan
    assert set(plan["changes"]["managers"]) == {"sw1", "sw2", "sw3"}, plan["changes"]
    assert not plan["changes"].get("workers"), plan["changes"]
    assert set(swarm_states(swarm).values()) == {"inactive"}


# --- one manager, two workers -------------------------------------------------------------------


def test_one_manager_two_workers_and_services(swarm):
    outcome, seconds = converged(swarm)
    TIMINGS["first converge: init, 2 joins, services (wall)"] = seconds
    assert set(outcome["changes"]["managers"]) == {"sw1"}
    assert set(outcome["changes"]["workers"]) == {"sw2", "sw3"}
    for name, role in (("sw1", "manager"), ("sw2", "worker"), ("sw3", "worker")):
        assert swarm.registry.record(name)["swarm_role"] == role
    table = node_table(swarm)
    assert table["sw1"] == ("Ready", "Active", "Leader")
    assert table["sw2"] == ("Ready", "Active", "")
    assert table["sw3"] == ("Ready", "Active", "")
    for name in NODES:
        labels = swarm.manager().json("node", "inspect", name)[0]["Spec"]["Labels"]
        assert labels["class"] == CLASS
        assert labels["tier"] == "app"
        assert labels["com.docker-hosts.minion"] == name
    # Three replicas spread over the three nodes; the global service on each.
    assert swarm.tasks("web") == [(name, "app:1") for name in NODES]
    assert swarm.tasks("edge") == [(name, "app:1") for name in NODES]
    swarm.collect_tokens()


def test_highstate_checks_the_swarm_pillar(swarm):
    rendered = swarm.salt("sw1", "state.show_sls", "docker").data
    assert "docker-swarm-settings" in rendered, sorted(rendered)
    ret = swarm.salt("sw1", "state.apply", "docker.swarm")
    (checked,) = ret.data.values()
    assert checked["result"] is True and not checked["changes"]
    assert "pillar swarm: checked (swarm enabled)" in checked["name"]
    swarm.pillar.swarm["services"]["web"]["env"] = {"A": "b"}
    swarm.pillar.write()
    try:
        refused = swarm.salt("sw1", "state.apply", "docker.swarm")
    finally:
        del swarm.pillar.swarm["services"]["web"]["env"]
        swarm.pillar.write()
    assert refused.returncode != 0
    assert "swarm:services:web:env: is under a renamed key: use environment" in refused.stdout


def test_host_mode_port_published_on_every_node(swarm):
    for node in swarm.engines.values():
        with urllib.request.urlopen(f"http://{node.address}:18081/hostname", timeout=5) as reply:
            assert reply.status == 200


def test_second_run_changes_nothing(swarm):
    outcome, seconds = converged(swarm)
    TIMINGS["no-change converge (wall)"] = seconds
    assert outcome["result"] is True and not outcome["changes"], outcome
    status = runner_data(swarm.runner("swarm.status", CLASS))
    assert status["members"] == {"sw1": "manager", "sw2": "worker", "sw3": "worker"}


def remove_by_name(engine, kind, name):
    """Remove the object named exactly ``name``, by its ID (the CLI resolves ID prefixes too)."""
    for row in engine.cli(kind, "ls", "--format", "{{.ID}} {{.Name}}").splitlines():
        if row.split()[1] == name:
            engine.cli(kind, "rm", row.split()[0])


def test_objects_are_found_by_exact_name_never_by_an_id_prefix(swarm):
    # Docker resolves a name it does not know as an ID prefix: pillar objects named after the
    # first letters of other objects' IDs must neither touch those nor be taken for them.
    manager = swarm.manager()
    squatter = manager.cli(
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        "squatter",
        "--replicas",
        "0",
        "--label",
        "keep=me",
        "app:1",
        "sleep",
        "1000",
    ).strip()
    squatnet = manager.cli("network", "create", "--driver", "overlay", "squatnet").strip()
    version = manager.json("service", "inspect", squatter)[0]["Version"]["Index"]
    service_name, network_name = squatter[:4], squatnet[:4]
    swarm.pillar.swarm["networks"][network_name] = {"driver": "overlay"}
    swarm.pillar.swarm["services"][service_name] = {
        "image": "app:1",
        "command": ["sleep", "1000"],
        "endpoint_mode": "dnsrr",
        "networks": [network_name],
        "init": True,
        "stop_grace_period": "1s",
    }
    swarm.pillar.write()
    try:
        first = runner_data(swarm.runner("swarm.converge", CLASS))
        second = runner_data(swarm.runner("swarm.converge", CLASS))
        mine = manager.json("service", "inspect", service_name)[0]
        theirs = manager.json("service", "inspect", squatter)[0]
        network = manager.json("network", "inspect", network_name)[0]
    finally:
        del swarm.pillar.swarm["services"][service_name]
        del swarm.pillar.swarm["networks"][network_name]
        swarm.pillar.write()
        for name in (service_name, "squatter"):
            remove_by_name(manager, "service", name)
        for name in (network_name, "squatnet"):
            remove_by_name(manager, "network", name)
    assert first["result"] is True, first
    assert second["result"] is True and not second["changes"], second
    assert theirs["Spec"]["Name"] == "squatter" and theirs["Version"]["Index"] == version
    assert mine["ID"] != squatter and mine["Spec"]["Name"] == service_name
    assert network["Id"] != squatnet and network["Name"] == network_name


def test_a_task_reaches_tasks_on_the_other_nodes_over_the_overlay(swarm):
    container = swarm.container_of("web", "sw1")
    # dnsrr: the service name resolves to every task's overlay address.
    script = (
        "for ip in $(nslookup web 2>/dev/null | awk '/^Address/ && !/127.0.0.11/ {print $NF}');"
        " do timeout 5 wget -qO- http://$ip:8080/; done"
    )
    assert sorted(swarm.exec("sw1", container, script).split()) == list(NODES)


def test_secret_and_config_inside_every_task(swarm):
    for name in NODES:
        container = swarm.container_of("web", name)
        assert (
            swarm.exec(name, container, "cat /run/secrets/api_token")
            == (swarm.pillar.secrets["api_token"])
        )
        assert swarm.exec(name, container, "cat /etc/motd") == "served by the swarm\n"
        assert (
            swarm.exec(name, container, 'echo "$WEB_KEY"').strip()
            == (swarm.pillar.secrets["web_env_key"])
        )
    names = swarm.manager().cli("secret", "ls", "--format", "{{.Name}}").split()
    assert names == ["api_token.v1"]


# --- entitlement -----------------------------------------------------------------------------


def test_unentitled_minion_gets_no_token(swarm):
    since = time.monotonic()
    refused = runner_data(swarm.runner("swarm.admit", INTRUDER))
    assert refused["result"] is False
    assert (
        "intruder is not entitled: the master's node records give it no class"
        in (refused["comment"])
    )
    swarm.registry.set(INTRUDER, "other")
    try:
        refused = runner_data(swarm.runner("swarm.admit", INTRUDER))
    finally:
        swarm.registry.set(INTRUDER, None)
    assert "intruder is not entitled" in refused["comment"]
    assert "class 'other'" in refused["comment"]
    # The class's converge ignores a minion that only claims the class by grain.
    assert_no_change(swarm)
    jobs = swarm.events.jobs(since)
    assert not [job for job in jobs if job[0] == "docker_swarm.sealed_join_tokens"]
    assert not [job for job in jobs if INTRUDER in (job[1] or [])]


def test_every_runner_failure_exits_non_zero_in_one_line(swarm):
    cases = [
        (("swarm.admit", INTRUDER), "intruder is not entitled"),
        (("swarm.remove_node", INTRUDER), "class"),
        (("swarm.remove_node", "sw1"), "only manager"),
        (("swarm.converge", "nosuchclass"), "nosuchclass"),
        (("swarm.converge", "bad.class"), "bad.class"),
        (("swarm.forget", "../etc"), "../etc"),
    ]
    for args, message in cases:
        ret = swarm.runner(*args)
        assert ret.returncode != 0, (args, ret.stdout, ret.stderr)
        output = f"{ret.stdout}{ret.stderr}"
        assert "Traceback" not in output, (args, output)
        comment = runner_data(ret)["comment"]
        assert message in comment and "\n" not in comment, (args, comment)
    assert swarm_states(swarm)["sw1"] == "active"


# --- updates ----------------------------------------------------------------------------------


def epoch(stamp):
    """Docker's RFC 3339 time with nanoseconds -> seconds since the epoch."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    parsed = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S")
    return parsed.replace(tzinfo=datetime.timezone.utc).timestamp() + float(f"0.{fraction or 0}")


def task_starts(swarm, service):
    manager = swarm.manager()
    ids = manager.cli("service", "ps", service, "-q", "--filter", "desired-state=running").split()
    tasks = manager.json("inspect", *ids)
    return sorted(task["Status"]["Timestamp"] for task in tasks)


def test_rolling_update_follows_update_config(swarm):
    set_web_image(swarm, "app:2")
    outcome, seconds = converged(swarm)
    TIMINGS["rolling update, 3 tasks (wall)"] = seconds
    web = outcome["changes"]["cluster"]["service web"]
    assert web["TaskTemplate.ContainerSpec.Image"] == {"old": "app:1", "new": "app:2"}
    assert swarm.tasks("web") == [(name, "app:2") for name in NODES]
    # parallelism 1, delay 1s: one task at a time, at least a second apart.
    starts = [epoch(stamp) for stamp in task_starts(swarm, "web")]
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(starts))


def test_failing_update_is_rolled_back(swarm):
    set_web_image(swarm, "app:broken")
    try:
        outcome, returncode, seconds = swarm.converge()
    finally:
        set_web_image(swarm, "app:2")
    TIMINGS["failed update + rollback (wall)"] = seconds
    assert outcome["result"] is False and returncode == 1
    assert "service web: the update failed and Docker rolled it back" in outcome["comment"]
    service = swarm.manager().json("service", "inspect", "web")[0]
    assert service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == "app:2"
    assert service["UpdateStatus"]["State"] == "rollback_completed"
    # The tasks of the rolled-back spec start again within seconds.
    wait_for(lambda: swarm.tasks("web") == [(name, "app:2") for name in NODES])
    # Pillar back on the image Docker rolled back to: nothing to do.
    assert_no_change(swarm)


def test_secret_rotation_makes_a_new_version(swarm):
    old = swarm.pillar.secrets["api_token"]
    swarm.pillar.set_secret("api_token", f"{old}-rotated")
    outcome, _ = converged(swarm)
    cluster = outcome["changes"]["cluster"]
    assert cluster["secret api_token"] == {"old": "api_token.v1", "new": "api_token.v2"}
    assert "service web" in cluster
    assert cluster["secrets removed"] == ["api_token.v1"]
    for name in NODES:
        container = swarm.container_of("web", name)
        assert swarm.exec(name, container, "cat /run/secrets/api_token") == f"{old}-rotated"
    assert swarm.manager().cli("secret", "ls", "--format", "{{.Name}}").split() == ["api_token.v2"]


# --- nodes leave and come back ---------------------------------------------------------------


def test_a_batch_of_nodes_is_drained_and_removed_in_one_call(swarm):
    # What the lifecycle does before destroying nodes (or after their keys were deleted).
    started = time.monotonic()
    ret = swarm.runner("swarm.remove_node", "sw2,sw3")
    TIMINGS["remove 2 nodes in one call (drain, leave, rm)"] = time.monotonic() - started
    outcome = runner_data(ret)
    assert outcome["result"] is True and ret.returncode == 0, outcome
    removed = outcome["changes"]["removed"]
    assert set(removed) == {"sw2", "sw3"}
    assert all(removed[name]["drained"] and removed[name]["left"] for name in removed)
    # Services at full strength on what is left, before the second node went.
    assert removed["sw3"]["services"] == {"edge": "1/1 (converged)", "web": "3/3 (converged)"}
    assert swarm.registry.record("sw2")["swarm_role"] is None
    assert swarm.registry.record("sw3")["swarm_role"] is None
    assert swarm.engines["sw2"].swarm_state() == swarm.engines["sw3"].swarm_state() == "inactive"
    assert set(node_table(swarm)) == {"sw1"}
    assert swarm.tasks("web") == [("sw1", "app:2")] * 3
    assert swarm.tasks("edge") == [("sw1", "app:1")]
    again = runner_data(swarm.runner("swarm.remove_node", "sw3"))
    assert again["result"] is True
    assert not again["changes"]


def public_key(swarm, minion):
    return (Path(swarm.master.config["pki_dir"]) / "minions" / minion).read_text()


def test_reclassified_node_is_not_rejoined_and_cannot_open_anothers_token(swarm):
    swarm.registry.set("sw3", "other")
    refused = runner_data(swarm.runner("swarm.admit", "sw3"))
    assert refused["result"] is False
    assert "sw3 is not entitled" in refused["comment"]
    assert "class 'other'" in refused["comment"]
    # The class converges without it (sw2, removed with it, joins again).
    outcome, _ = converged(swarm)
    assert set(outcome["changes"]["workers"]) == {"sw2"}
    assert swarm.engines["sw3"].swarm_state() == "inactive"
    # A token sealed for sw2, handed to sw3: it cannot open it.
    recipients = json.dumps({"sw2": public_key(swarm, "sw2")})
    sealed = swarm.salt("sw1", "docker_swarm.sealed_join_tokens", "worker", recipients).data
    for blob in (sealed["sealed"]["sw2"], "dhswarm1.AAAA.BBBB.CCCC"):
        ret = swarm.salt(
            "sw3",
            "docker_swarm.join",
            blob,
            "worker",
            sealed["cluster_id"],
            json.dumps(sealed["managers"]),
        )
        assert ret.returncode != 0
        assert "cannot open the sealed join token" in ret.stdout
    assert swarm.engines["sw3"].swarm_state() == "inactive"


def test_node_of_the_class_joins_when_admitted(swarm):
    swarm.registry.set("sw3", CLASS)
    started = time.monotonic()
    ret = runner_data(swarm.runner("swarm.admit", "sw3"))
    TIMINGS["admit a new node (join + services)"] = time.monotonic() - started
    assert ret["result"] is True, ret
    assert set(ret["changes"]["workers"]) == {"sw3"}
    assert node_table(swarm)["sw3"] == ("Ready", "Active", "")
    assert swarm.registry.record("sw3")["swarm_role"] == "worker"
    assert ("sw3", "app:1") in swarm.tasks("edge")
    assert len(swarm.tasks("web")) == 3
    again = runner_data(swarm.runner("swarm.admit", "sw3"))
    assert again["result"] is True
    assert not again["changes"]


def test_a_reclassified_member_is_reported_not_removed(swarm):
    swarm.registry.set("sw2", "other")
    try:
        outcome, _, _ = swarm.converge()
    finally:
        swarm.registry.set("sw2", CLASS)
    assert outcome["result"] is True, outcome
    assert "swarm node sw2 (sw2) is not a node of class backends" in outcome["comment"]
    assert node_table(swarm)["sw2"] == ("Ready", "Active", "")


def test_a_member_replaced_as_node_replace_does_keeps_services_at_full_replicas(swarm):
    """node.replace of a swarm class, in the order the master runs it: the new node (sw3
    here) is admitted by its converge (swarm.admit) before the old one (sw2) is destroyed
    (salt-cloud -d runs node.before_destroy: drained, left, removed). Every service is at
    full replicas at each step, and no task stays on the old node."""
    assert (
        runner_data(swarm.runner("swarm.remove_node", "sw3"))["result"] is True
    )  # not yet created
    full = {"edge": [("sw1", "app:1"), ("sw2", "app:1")], "web": 3}
    assert swarm.tasks("edge") == full["edge"] and len(swarm.tasks("web")) == full["web"]
    swarm.registry.set("sw3", CLASS)
    admitted = runner_data(swarm.runner("swarm.admit", "sw3"))
    assert admitted["result"] is True and set(admitted["changes"]["workers"]) == {"sw3"}
    assert len(swarm.tasks("edge")) == 3 and len(swarm.tasks("web")) == 3
    started = time.monotonic()
    ret = swarm.runner("node.before_destroy", "sw2")
    TIMINGS["the replaced node drained and removed"] = time.monotonic() - started
    assert ret.returncode == 0 and runner_data(ret)["result"] is True, ret.stdout
    assert set(node_table(swarm)) == {"sw1", "sw3"}
    assert swarm.engines["sw2"].swarm_state() == "inactive"
    assert swarm.tasks("edge") == [("sw1", "app:1"), ("sw3", "app:1")]
    web = swarm.tasks("web")
    assert len(web) == 3 and "sw2" not in {node for node, _ in web}, web
    # sw2 back as a member, for the tests after this one.
    swarm.registry.set("sw2", CLASS)
    assert runner_data(swarm.runner("swarm.admit", "sw2"))["result"] is True


# --- more managers, fewer services -------------------------------------------------------------


def test_three_managers_from_pillar(swarm):
    swarm.pillar.swarm["managers"]["count"] = 3
    swarm.pillar.write()
    outcome, _ = converged(swarm)
    assert set(outcome["changes"]["managers"]) == {"sw2", "sw3"}
    want = ["Leader", "Reachable", "Reachable"]
    assert manager_statuses(swarm, want) == want
    assert_no_change(swarm)
    assert {swarm.registry.record(name)["swarm_role"] for name in NODES} == {"manager"}
    swarm.collect_tokens()


@contextlib.contextmanager
def engines_down(swarm, *names):
    """The engines of ``names`` stopped (their minions still run), then back, the swarm healthy."""
    for name in names:
        stop_engine(swarm.engines[name])
    try:
        yield
    finally:
        for name in names:
            start_engine(swarm.engines[name])
        wait_for(lambda: sorted(s for _, _, s in node_table(swarm).values()) == MANAGERS_UP)
        wait_for(lambda: set(swarm_states(swarm).values()) == {"active"})


def wait_for(condition, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(AssertionError):
            if condition():
                return
        assert time.monotonic() < deadline, "timed out"
        time.sleep(1)


MANAGERS_UP = ["Leader", "Reachable", "Reachable"]


def web_version(swarm):
    return swarm.manager().json("service", "inspect", "web")[0]["Version"]["Index"]


def assert_one_line_failure(ret, *words):
    outcome = runner_data(ret)
    assert ret.returncode != 0, outcome
    assert outcome["result"] is False, outcome
    assert "Traceback" not in f"{ret.stdout}{ret.stderr}"
    assert "\n" not in outcome["comment"], outcome["comment"]
    for word in words:
        assert word in outcome["comment"], outcome["comment"]
    return outcome


def test_quorum_lost_fails_in_one_line_and_changes_nothing(swarm):
    before = web_version(swarm)
    swarm.pillar.swarm["services"]["web"]["replicas"] = 2
    swarm.pillar.write()
    try:
        with engines_down(swarm, "sw2", "sw3"):
            ret = swarm.runner("swarm.converge", CLASS)
    finally:
        swarm.pillar.swarm["services"]["web"]["replicas"] = 3
        swarm.pillar.write()
    assert_one_line_failure(ret, "lost its quorum", "sw2", "sw3", "nothing was changed")
    assert web_version(swarm) == before
    assert {state for state in swarm_states(swarm).values()} == {"active"}


def test_one_manager_down_converges_the_rest_and_names_it(swarm):
    swarm.pillar.swarm["node_labels"]["rack"] = "r1"
    swarm.pillar.write()
    try:
        with engines_down(swarm, "sw3"):
            manager = swarm.engines["sw1"]
            wait_for(
                lambda: "Unreachable" in manager.cli("node", "ls", "--format", "{{.ManagerStatus}}")
            )
            ret = swarm.runner("swarm.converge", CLASS)
            labels = {
                name: manager.json("node", "inspect", name)[0]["Spec"]["Labels"]
                for name in ("sw1", "sw2", "sw3")
            }
        outcome = assert_one_line_failure(ret, "sw3", "down")
        assert "not in class" not in outcome["comment"]
        assert "not a node of class" not in outcome["comment"]
        assert labels["sw1"]["rack"] == labels["sw2"]["rack"] == "r1"
        assert "rack" not in labels["sw3"]
        back = runner_data(swarm.runner("swarm.converge", CLASS))
        assert back["result"] is True, back
        assert swarm.manager().json("node", "inspect", "sw3")[0]["Spec"]["Labels"]["rack"] == "r1"
    finally:
        del swarm.pillar.swarm["node_labels"]["rack"]
        swarm.pillar.write()


def test_docker_error_during_secret_rotation_is_one_line(swarm):
    old = swarm.pillar.secrets["api_token"]
    swarm.pillar.set_secret("api_token", f"{old}-again")
    before = web_version(swarm)
    with failing_requests(
        swarm.engines["sw1"],
        lambda method, path: "/secrets" in path,
        message="rpc error: code = Unknown desc = injected fault",
    ):
        ret = swarm.runner("swarm.converge", CLASS)
    assert_one_line_failure(ret, "injected fault", "secret")
    assert web_version(swarm) == before
    fixed = runner_data(swarm.runner("swarm.converge", CLASS))
    assert fixed["result"] is True, fixed
    container = swarm.container_of("web", "sw1")
    assert swarm.exec("sw1", container, "cat /run/secrets/api_token") == f"{old}-again"


EDGE_SERVICE = {
    # The least or most the check accepts, for each option Docker could refuse.
    "image": "app:1",
    "replicas": 1,
    "command": ["sleep", "1000"],
    "endpoint_mode": "dnsrr",
    "ports": [
        {"target": 1, "published": 65535, "mode": "host", "protocol": "tcp"},
        {"target": 65535, "mode": "host", "protocol": "udp"},
    ],
    "max_replicas_per_node": 1,
    "resources": {
        "mem_limit": "6M",
        "cpu_limit": 0.01,
        "mem_reservation": "6M",
        "cpu_reservation": 0.01,
    },
    "restart_policy": {"condition": "on-failure", "delay": 0, "max_attempts": 1000000},
    "update_config": {"parallelism": 0, "max_failure_ratio": 1, "order": "start-first"},
    "rollback_config": {"parallelism": 1000000, "failure_action": "continue", "monitor": 0},
    "healthcheck": {"test": ["NONE"], "retries": 0, "interval": 0, "start_period": "1ms"},
    "stop_grace_period": 0,
    "secrets": [{"source": "api_token", "target": "t", "uid": 65534, "gid": "0", "mode": 0}],
    "configs": [{"source": "motd", "target": "/m", "mode": 0o777}],
    "environment": {"_": "", "A1": 0},
    "container_labels": {"a.b/c-d_e": ""},
    "log_driver": "json-file",
    "log_opt": {"max-size": "1k", "max-file": 1},
    "init": True,
}


def test_values_at_the_edges_of_the_check_are_taken_by_docker(swarm):
    swarm.pillar.swarm["services"]["edges"] = EDGE_SERVICE
    swarm.pillar.write()
    try:
        outcome, returncode, _ = swarm.converge()
        created = swarm.manager().json("service", "inspect", "edges")[0]["Spec"]
        tasks = swarm.tasks("edges")
        again, _, _ = swarm.converge()
    finally:
        del swarm.pillar.swarm["services"]["edges"]
        swarm.pillar.write()
        remove_by_name(swarm.manager(), "service", "edges")
    assert outcome["result"] is True and returncode == 0, outcome
    assert "service edges" in outcome["changes"]["cluster"]
    assert again["result"] is True and "service edges" not in again["changes"].get("cluster", {})
    resources = created["TaskTemplate"]["Resources"]
    assert resources["Limits"] == {"NanoCPUs": 10**7, "MemoryBytes": 6 * 2**20}
    assert created["UpdateConfig"]["MaxFailureRatio"] == 1
    assert len(tasks) == 1


def test_services_no_longer_in_pillar_are_kept_or_removed(swarm):
    edge = swarm.pillar.swarm["services"].pop("edge")
    swarm.pillar.write()
    try:
        kept, _, _ = swarm.converge()
        assert kept["result"] is True, kept
        assert "kept services no longer in pillar: edge" in kept["comment"]
        assert swarm.tasks("edge")
        swarm.pillar.swarm["unlisted_services"] = "remove"
        swarm.pillar.write()
        removed, _, _ = swarm.converge()
        assert removed["result"] is True, removed
        assert removed["changes"]["cluster"]["services removed"] == ["edge"]
        assert "edge" not in swarm.manager().cli("service", "ls", "--format", "{{.Name}}").split()
    finally:
        swarm.pillar.swarm["services"]["edge"] = edge
        swarm.pillar.swarm["unlisted_services"] = "keep"
        swarm.pillar.write()


# --- a new cluster, never by accident ----------------------------------------------------------


def test_fresh_three_manager_cluster_only_after_forget(swarm):
    for name in ("sw3", "sw2", "sw1"):
        ret = swarm.salt(name, "docker_swarm.leave", "force=True")
        assert ret.returncode == 0, ret.stdout
    assert set(swarm_states(swarm).values()) == {"inactive"}
    outcome, returncode, _ = swarm.converge()
    assert outcome["result"] is False and returncode == 1
    assert "not creating another" in outcome["comment"]
    assert set(swarm_states(swarm).values()) == {"inactive"}
    assert runner_data(swarm.runner("swarm.forget", CLASS))["result"] is True
    _, seconds = converged(swarm)
    TIMINGS["fresh 3-manager cluster: init, 2 manager joins, services (wall)"] = seconds
    want = ["Leader", "Reachable", "Reachable"]
    assert manager_statuses(swarm, want) == want
    assert swarm.tasks("web") == [(name, "app:2") for name in NODES]
    swarm.collect_tokens()
    assert_no_change(swarm)


# --- nothing leaked ---------------------------------------------------------------------------


def salt_files(swarm):
    roots = [Path(swarm.master.config["root_dir"])]
    roots += [Path(minion.config["root_dir"]) for minion in swarm.minions.values()]
    for root in roots:
        for directory, _, files in os.walk(root):
            for name in files:
                path = Path(directory) / name
                if path.is_file() and not path.is_symlink():  # not sockets or links
                    yield path


def test_no_join_token_or_secret_value_in_salt_files_events_or_output(swarm):
    assert len(swarm.tokens) >= 4, "tokens of both clusters were collected"
    secret_values = {value for value in swarm.pillar.secrets.values()}
    events = swarm.events.text()
    outputs = "\n".join(swarm.outputs)
    for token in swarm.tokens:
        assert token not in events
        assert token not in outputs
    for value in secret_values:
        assert value not in events
        assert value not in outputs
    token_bytes = [token.encode() for token in swarm.tokens]
    secret_bytes = [value.encode() for value in secret_values]
    secret_hits = set()
    for path in salt_files(swarm):
        data = path.read_bytes()
        leaked = [token for token in token_bytes if token in data]
        assert not leaked, f"a join token is in {path}"
        if any(value in data for value in secret_bytes):
            secret_hits.add(str(path))
    # Where Salt itself keeps decrypted pillar (facts.md): reported, not this code's output.
    root = str(Path(swarm.master.config["root_dir"]).parent)
    FINDINGS.append(
        "secret values in Salt's own files: "
        + (", ".join(sorted(hit.replace(root, "") for hit in secret_hits)) or "none")
    )
    assert not [hit for hit in secret_hits if "/jobs/" in hit], secret_hits
