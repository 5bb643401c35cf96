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

import datetime
import itertools
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from tests.swarm.conftest import CLASS, FINDINGS, INTRUDER, NODES, TIMINGS

pytestmark = pytest.mark.swarm


def changes(states):
    return {key: value["changes"] for key, value in states.items() if value["changes"]}


def failures(states):
    return {key: value["comment"] for key, value in states.items() if value["result"] is False}


def seconds_of(states, *ids):
    return sum(states[state_id]["duration"] for state_id in ids) / 1000


def converged(swarm, test=False):
    """Orchestrate; assert no step failed; return the steps by id and the wall time."""
    states, seconds = swarm.orchestrate(test=test)
    assert not failures(states), failures(states)
    return states, seconds


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


def assert_no_change(swarm, function):
    """A runner step (or swarm.converge) on the class succeeds and changes nothing."""
    outcome = runner_data(swarm.runner(function, CLASS))
    assert outcome["result"] is True, outcome
    assert not outcome["changes"], outcome["changes"]


def set_web_image(swarm, image):
    swarm.pillar.swarm["services"]["web"]["image"] = image
    swarm.pillar.write()


# --- refusals and the plan, before anything exists --------------------------------------------


def test_bad_pillar_refused_before_any_change(swarm):
    # The whole corpus of bad pillar is in tests/unit/test_docker_swarm.py; here, the
    # refusal stops a real orchestration before anything changes.
    swarm.pillar.swarm["services"]["web"]["replica"] = 3
    swarm.pillar.write()
    try:
        states, _ = swarm.orchestrate()
    finally:
        del swarm.pillar.swarm["services"]["web"]["replica"]
        swarm.pillar.write()
    assert states["swarm-managers"]["result"] is False
    assert (
        "swarm:services:web:replica: unknown key (did you mean 'replicas'?)"
        in states["swarm-managers"]["comment"]
    )
    assert not changes(states)
    assert set(swarm_states(swarm).values()) == {"inactive"}


def test_dry_run_plans_and_changes_nothing(swarm):
    states, _ = swarm.orchestrate(test=True)
    assert not failures(states), failures(states)
    assert states["swarm-managers"]["result"] is None
    assert set(states["swarm-managers"]["changes"]) == {"sw1"}
    assert set(states["swarm-workers"]["changes"]) == {"sw2", "sw3"}
    assert set(swarm_states(swarm).values()) == {"inactive"}


# --- one manager, two workers -------------------------------------------------------------------


def test_one_manager_two_workers_and_services(swarm):
    states, seconds = converged(swarm)
    TIMINGS["init + 2 joins"] = seconds_of(states, "swarm-managers", "swarm-workers")
    TIMINGS["services to full replicas"] = seconds_of(states, "swarm-cluster")
    TIMINGS["first orchestrate (wall)"] = seconds
    assert set(states["swarm-managers"]["changes"]) == {"sw1"}
    assert set(states["swarm-workers"]["changes"]) == {"sw2", "sw3"}
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


def test_highstate_includes_the_nodes_part(swarm):
    rendered = swarm.salt("sw1", "state.show_sls", "docker").data
    assert "docker-swarm-engine-ready" in rendered, sorted(rendered)
    ret = swarm.salt("sw1", "state.apply", "docker.swarm")
    engine = next(v for v in ret.data.values() if v["__id__"] == "docker-swarm-engine-ready")
    assert engine["result"] is True
    assert "active manager of swarm" in engine["comment"]
    assert not engine["changes"]


def test_host_mode_port_published_on_every_node(swarm):
    for node in swarm.engines.values():
        with urllib.request.urlopen(f"http://{node.address}:18081/hostname", timeout=5) as reply:
            assert reply.status == 200


def test_second_run_changes_nothing(swarm):
    states, seconds = converged(swarm)
    TIMINGS["no-change orchestrate (wall)"] = seconds
    assert not changes(states)
    assert all(state["result"] is True for state in states.values())
    status = runner_data(swarm.runner("swarm.status", CLASS))
    assert status["members"]["sw1"]["is_manager"] is True
    assert {member["state"] for member in status["members"].values()} == {"active"}


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
    # The class's own workers step ignores a minion that only claims the class by grain.
    workers = runner_data(swarm.runner("swarm.workers", CLASS))
    assert workers["result"] is True
    assert not workers["changes"]
    jobs = swarm.events.jobs(since)
    assert not [job for job in jobs if job[0] == "docker_swarm.sealed_join_tokens"]
    assert not [job for job in jobs if INTRUDER in (job[1] or [])]


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
    states, _ = converged(swarm)
    TIMINGS["rolling update, 3 tasks"] = seconds_of(states, "swarm-cluster")
    web = states["swarm-cluster"]["changes"]["sw1"]["docker-swarm-service-web"]
    assert web["TaskTemplate.ContainerSpec.Image"] == {"old": "app:1", "new": "app:2"}
    assert swarm.tasks("web") == [(name, "app:2") for name in NODES]
    # parallelism 1, delay 1s: one task at a time, at least a second apart.
    starts = [epoch(stamp) for stamp in task_starts(swarm, "web")]
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(starts))


def test_failing_update_is_rolled_back(swarm):
    set_web_image(swarm, "app:broken")
    try:
        states, _ = swarm.orchestrate()
    finally:
        set_web_image(swarm, "app:2")
    TIMINGS["failed update + rollback"] = seconds_of(states, "swarm-cluster")
    assert states["swarm-cluster"]["result"] is False
    assert "docker-swarm-service-web" in states["swarm-cluster"]["comment"]
    assert "Docker rolled it back" in states["swarm-cluster"]["comment"]
    service = swarm.manager().json("service", "inspect", "web")[0]
    assert service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == "app:2"
    assert service["UpdateStatus"]["State"] == "rollback_completed"
    assert swarm.tasks("web") == [(name, "app:2") for name in NODES]
    # Pillar back on the image Docker rolled back to: nothing to do.
    assert_no_change(swarm, "swarm.cluster")


def test_secret_rotation_makes_a_new_version(swarm):
    old = swarm.pillar.secrets["api_token"]
    swarm.pillar.set_secret("api_token", f"{old}-rotated")
    states, _ = converged(swarm)
    cluster = states["swarm-cluster"]["changes"]["sw1"]
    assert cluster["docker-swarm-secret-api_token"] == {
        "secret": {"old": "api_token.v1", "new": "api_token.v2"}
    }
    assert "docker-swarm-service-web" in cluster
    assert cluster["docker-swarm-versions-unused"] == {"removed": {"secret": ["api_token.v1"]}}
    for name in NODES:
        container = swarm.container_of("web", name)
        assert swarm.exec(name, container, "cat /run/secrets/api_token") == f"{old}-rotated"
    assert swarm.manager().cli("secret", "ls", "--format", "{{.Name}}").split() == ["api_token.v2"]


# --- nodes leave and come back ---------------------------------------------------------------


def test_removed_node_is_drained_and_its_tasks_rescheduled(swarm):
    started = time.monotonic()
    ret = runner_data(swarm.runner("swarm.remove_node", "sw3"))
    TIMINGS["remove a node (drain, leave, rm)"] = time.monotonic() - started
    assert ret["result"] is True, ret
    assert ret["changes"]["sw3"]["drained"] is True
    assert ret["changes"]["sw3"]["left"] is True
    assert ret["changes"]["sw3"]["services"] == {
        "edge": "2/2 (converged)",
        "web": "3/3 (converged)",
    }
    assert swarm.engines["sw3"].swarm_state() == "inactive"
    assert set(node_table(swarm)) == {"sw1", "sw2"}
    web = swarm.tasks("web")
    assert len(web) == 3
    assert {node for node, _ in web} == {"sw1", "sw2"}
    assert swarm.tasks("edge") == [("sw1", "app:1"), ("sw2", "app:1")]
    again = runner_data(swarm.runner("swarm.remove_node", "sw3"))
    assert again["result"] is True
    assert not again["changes"]


def public_key(swarm, minion):
    return (Path(swarm.master.config["pki_dir"]) / "minions" / minion).read_text()


def test_reclassified_node_is_not_rejoined_and_cannot_open_anothers_token(swarm):
    swarm.registry.set("sw3", "other")
    refused = runner_data(swarm.runner("swarm.admit", "sw3"))
    assert refused["result"] is False
    assert "sw3 is not entitled: class 'other' does not enable swarm" in refused["comment"]
    assert_no_change(swarm, "swarm.workers")
    assert swarm.engines["sw3"].swarm_state() == "inactive"
    # A token sealed for sw2, handed to sw3: it cannot open it.
    recipients = json.dumps({"sw2": public_key(swarm, "sw2")})
    sealed = swarm.salt("sw1", "docker_swarm.sealed_join_tokens", "worker", recipients).data
    for blob in (sealed["sealed"]["sw2"], "dhswarm1.AAAA.BBBB.CCCC"):
        ret = swarm.salt(
            "sw3",
            "state.single",
            "docker_swarm.joined",
            f"name={sealed['cluster_id']}",
            f"sealed={blob}",
            "role=worker",
            f"remote_addrs={json.dumps(sealed['managers'])}",
        )
        (result,) = ret.data.values()
        assert result["result"] is False
        assert "cannot open the sealed join token" in result["comment"]
    assert swarm.engines["sw3"].swarm_state() == "inactive"


def test_node_of_the_class_joins_when_admitted(swarm):
    swarm.registry.set("sw3", CLASS)
    started = time.monotonic()
    ret = runner_data(swarm.runner("swarm.admit", "sw3"))
    TIMINGS["admit a new node (join + services)"] = time.monotonic() - started
    assert ret["result"] is True, ret
    assert "sw3" in ret["changes"]["workers"]
    assert node_table(swarm)["sw3"] == ("Ready", "Active", "")
    assert ("sw3", "app:1") in swarm.tasks("edge")
    again = runner_data(swarm.runner("swarm.admit", "sw3"))
    assert again["result"] is True
    assert not again["changes"]


def test_a_reclassified_member_is_reported_not_removed(swarm):
    swarm.registry.set("sw2", "other")
    try:
        outcome = runner_data(swarm.runner("swarm.cluster", CLASS))
    finally:
        swarm.registry.set("sw2", CLASS)
    assert outcome["result"] is True, outcome
    assert "nodes of the swarm not in class backends: sw2 (sw2)" in outcome["comment"]
    assert node_table(swarm)["sw2"] == ("Ready", "Active", "")


# --- more managers, fewer services -------------------------------------------------------------


def test_three_managers_from_pillar(swarm):
    swarm.pillar.swarm["managers"]["count"] = 3
    swarm.pillar.write()
    states, _ = converged(swarm)
    assert set(states["swarm-managers"]["changes"]) == {"sw2", "sw3"}
    want = ["Leader", "Reachable", "Reachable"]
    assert manager_statuses(swarm, want) == want
    assert_no_change(swarm, "swarm.managers")
    swarm.collect_tokens()


def test_services_no_longer_in_pillar_are_kept_or_removed(swarm):
    edge = swarm.pillar.swarm["services"].pop("edge")
    swarm.pillar.write()
    try:
        kept = runner_data(swarm.runner("swarm.cluster", CLASS))
        assert kept["result"] is True, kept
        assert "kept services no longer in pillar: edge" in kept["comment"]
        assert swarm.tasks("edge")
        swarm.pillar.swarm["unlisted_services"] = "remove"
        swarm.pillar.write()
        removed = runner_data(swarm.runner("swarm.cluster", CLASS))
        assert removed["result"] is True, removed
        manager = next(iter(removed["changes"]))
        assert removed["changes"][manager]["docker-swarm-services-unlisted"] == {
            "removed": ["edge"]
        }
        assert "edge" not in swarm.manager().cli("service", "ls", "--format", "{{.Name}}").split()
    finally:
        swarm.pillar.swarm["services"]["edge"] = edge
        swarm.pillar.swarm["unlisted_services"] = "keep"
        swarm.pillar.write()


# --- a new cluster, never by accident ----------------------------------------------------------


def test_fresh_three_manager_cluster_only_after_forget(swarm):
    for name in ("sw3", "sw2", "sw1"):
        ret = swarm.salt(name, "state.single", "docker_swarm.left", f"name={name}", "force=True")
        (result,) = ret.data.values()
        assert result["result"] is True, result
    assert set(swarm_states(swarm).values()) == {"inactive"}
    states, _ = swarm.orchestrate()
    assert states["swarm-managers"]["result"] is False
    assert "not creating another" in states["swarm-managers"]["comment"]
    assert set(swarm_states(swarm).values()) == {"inactive"}
    assert runner_data(swarm.runner("swarm.forget", CLASS))["result"] is True
    states, _seconds = converged(swarm)
    TIMINGS["fresh 3-manager cluster: init + 2 manager joins"] = seconds_of(
        states, "swarm-managers", "swarm-workers"
    )
    TIMINGS["fresh cluster: services to full replicas"] = seconds_of(states, "swarm-cluster")
    want = ["Leader", "Reachable", "Reachable"]
    assert manager_statuses(swarm, want) == want
    assert swarm.tasks("web") == [(name, "app:2") for name in NODES]
    swarm.collect_tokens()
    assert_no_change(swarm, "swarm.converge")


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
