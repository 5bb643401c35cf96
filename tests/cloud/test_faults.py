"""Faults between salt-cloud and EC2, concurrent creates and signals: exactly one instance or
none, never an orphan, the right exit code.

Each scenario runs the real salt-cloud CLI through its own fault-injecting proxy
(tools/fault_proxy.py) in front of the local EC2 endpoint; the scenarios are independent and
run at once (module fixture), and each test checks one scenario's outcome: what EC2 holds
afterwards (read with boto3, not through the driver), what reached EC2, the exit code and
what salt-cloud said.  Names start with "f-" so that scenarios never see each other's nodes.
"""

import contextlib
import functools
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tools import cloud_harness as harness
from tools.fault_proxy import FaultProxy

from .conftest import FAULT_PROVIDER, left_on_master, node_record

pytestmark = pytest.mark.cloud

ALL_STATES = ("pending", "running", "shutting-down", "terminated", "stopping", "stopped")


@dataclass
class Outcome:
    returncodes: list
    output: str
    live: list  # live instances of the scenario's names afterwards
    launched: list  # every instance of those names, any state
    proxy: FaultProxy
    extra: dict = field(default_factory=dict)

    @property
    def returncode(self):
        return self.returncodes[0]


class Context:
    """What a scenario needs: the CLIs, a proxy factory, a scratch directory."""

    def __init__(self, fault_cloud, cloud, ec2_endpoint, tmp_path):
        self.cli = fault_cloud
        self.cloud = cloud
        self.endpoint = ec2_endpoint
        self.tmp = tmp_path
        self.proxies = []

    def proxy(self):
        self.proxies.append(FaultProxy(self.endpoint.url).start())
        return self.proxies[-1]

    def finish(self, cli, names, processes, proxy, **extra):
        outputs, codes = [], []
        for process in processes:
            out, err = process.communicate(timeout=240)
            outputs.append(out + err)
            codes.append(process.returncode)
        return Outcome(
            returncodes=codes,
            output="\n".join(outputs),
            live=cli.instances(names),
            launched=cli.instances(names, states=ALL_STATES),
            proxy=proxy,
            extra=extra,
        )


SCENARIOS = {}


def scenario(function):
    SCENARIOS[function.__name__] = function
    return function


def create(ctx, proxy, name, profile="backends", cli=None, **popen):
    cli = (cli or ctx.cli).via(proxy.url)
    deploys = profile.startswith(("test-deploy", "test-fails-after-launch"))
    deploy = () if deploys else ("--no-deploy",)
    return cli.popen("-p", profile, name, *deploy, **popen)


def one_create(ctx, name, profile="backends", rules=(), outage=None):
    proxy = ctx.proxy()
    for action, fault, options in rules:
        proxy.add(action, fault, **options)
    if outage:
        proxy.outage(**outage)
    return ctx.finish(ctx.cli, name, [create(ctx, proxy, name, profile)], proxy)


def signalled_create(ctx, name, hold, signum):
    """Hold an answer, signal salt-cloud while it waits for it, then let the answer go."""
    proxy = ctx.proxy()
    proxy.add(hold["action"], "hold", count=1, match=hold.get("match"))
    process = create(ctx, proxy, name)
    proxy.wait_for(hold["action"], "held", timeout=120)
    process.send_signal(signum)
    proxy.release()
    return ctx.finish(ctx.cli, name, [process], proxy)


# Scenarios of one create through its own proxy: name -> one_create's node name, profile and
# faults (rules: action, fault, options; or an outage).
ONE_CREATE = {
    # --- lost answers
    # RunInstances reaches EC2, its answer is lost: botocore retries with the same token.
    "lost_run_instances_answer": {"name": "f-lost", "rules": [("RunInstances", "lose", {})]},
    # Every attempt's answer is lost: the driver finds its instance by client token.
    "every_run_instances_answer_lost": {
        "name": "f-all-lost",
        "rules": [("RunInstances", "lose", {"count": 10})],
    },
    # The connection is reset before EC2 sees RunInstances: retried, launched once.
    "reset_before_run_instances": {"name": "f-reset", "rules": [("RunInstances", "reset", {})]},
    "reset_while_waiting": {
        "name": "f-reset-wait",
        "rules": [("DescribeInstances", "reset", {"count": 4, "match": "instance-id"})],
    },
    # --- throttling
    # Two throttles (the provider allows 3 attempts): launched on the third.
    "throttled_run_instances": {
        "name": "f-throttled",
        "rules": [("RunInstances", "throttle", {"count": 2})],
    },
    "run_instances_unavailable_once": {
        "name": "f-503",
        "rules": [("RunInstances", "unavailable", {})],
    },
    # Throttled on every attempt: nothing launched, and the driver checked by token.
    "run_instances_throttled_throughout": {
        "name": "f-never",
        "rules": [("RunInstances", "throttle", {"count": 20})],
    },
    # Five throttles while waiting for `running` (more than botocore's 3 attempts): the
    # healthy node is kept.
    "throttled_wait_keeps_the_node": {
        "name": "f-thr-wait",
        "rules": [("DescribeInstances", "throttle", {"count": 5, "match": "instance-id"})],
    },
    # A create fails after launch and its TerminateInstances is throttled six times.
    "throttled_cleanup": {
        "name": "f-thr-clean",
        "profile": "test-fails-after-launch",
        "rules": [("TerminateInstances", "throttle", {"count": 6})],
    },
    # --- outages
    # EC2 unreachable for 3 s from the first wait for `running`: the node is kept.
    "outage_after_launch": {
        "name": "f-outage",
        "outage": {"seconds": 3, "trigger": "DescribeInstances", "match": "instance-id"},
    },
    # A create fails after launch; EC2 is unreachable for 3 s from its TerminateInstances.
    "outage_during_cleanup": {
        "name": "f-outage-clean",
        "profile": "test-fails-after-launch",
        "outage": {"seconds": 3, "trigger": "TerminateInstances"},
    },
}
SCENARIOS.update(
    {name: functools.partial(one_create, **faults) for name, faults in ONE_CREATE.items()}
)


@scenario
def outage_longer_than_cleanup_timeout(ctx):
    """EC2 stays unreachable for longer than cleanup_timeout (3 s): the instance id is
    reported, the exit code is non-zero; the test terminates the instance afterwards."""
    outcome = one_create(
        ctx,
        "f-outage-long",
        "test-fails-after-launch-quick",
        outage={"seconds": 120, "trigger": "TerminateInstances"},
    )
    outcome.extra["left"] = [i["InstanceId"] for i in outcome.live]
    if outcome.extra["left"]:  # only this scenario's: the others run at the same time
        ctx.cli.ec2().terminate_instances(InstanceIds=outcome.extra["left"])
    return outcome


# --------------------------------------------------------------------------- signals


@scenario
def sigterm_while_waiting(ctx):
    return signalled_create(
        ctx,
        "f-term-wait",
        {"action": "DescribeInstances", "match": "instance-id"},
        signal.SIGTERM,
    )


@scenario
def sigint_while_waiting(ctx):
    return signalled_create(
        ctx, "f-int-wait", {"action": "DescribeInstances", "match": "instance-id"}, signal.SIGINT
    )


@scenario
def sigint_while_run_instances_is_answered(ctx):
    """EC2 launched, its answer has not arrived: the driver finds the instance by token."""
    return signalled_create(ctx, "f-int-run", {"action": "RunInstances"}, signal.SIGINT)


@scenario
def sigterm_during_deploy(ctx):
    """SIGTERM while the deploy script runs on the node (a real salt-master, sshd)."""
    name = "f-term-deploy"
    proxy = ctx.proxy()
    process = create(ctx, proxy, name, "test-deploy-slow", ctx.cloud, start_new_session=True)
    profiles = yaml.safe_load((ctx.cloud.root / "cloud.profiles.d" / "zz-tests.conf").read_text())
    started = Path(profiles["test-deploy-slow"]["script_args"]) / f"{name}.started"
    deadline = time.monotonic() + 120
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    outcome = ctx.finish(ctx.cloud, name, [process], proxy)
    # The ssh client salt-cloud ran the deploy script with may outlive it: ours to stop.
    for pid in leftover_processes(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGTERM)
    outcome.extra["deploy_started"] = started.exists()
    outcome.extra["left"] = left_on_master(ctx.cloud, name)
    return outcome


def parallel_map(ctx, prefix, signum, group):
    """-m map -P with three nodes: signal once all three launched and wait for `running`."""
    names = [f"{prefix}{index}" for index in range(3)]
    map_file = ctx.tmp / f"{prefix}.map"
    map_file.write_text(yaml.safe_dump({"backends": names}))
    proxy = ctx.proxy()
    proxy.add("DescribeInstances", "hold", count=100, match="instance-id")
    process = ctx.cli.via(proxy.url).popen(
        "-m", str(map_file), "-P", "-y", "--no-deploy", start_new_session=True
    )
    deadline = time.monotonic() + 120
    while len(ctx.cli.instances(names)) < len(names) and time.monotonic() < deadline:
        time.sleep(0.2)
    proxy.wait_for("DescribeInstances", "held", timeout=120)
    if group:
        os.killpg(process.pid, signum)  # as Ctrl-C in a terminal does
    else:
        process.send_signal(signum)
    proxy.release()
    outcome = ctx.finish(ctx.cli, names, [process], proxy)
    outcome.extra["workers_left"] = workers_left_after(process.pid, grace=30)
    return outcome


def workers_left_after(session, grace):
    """The processes of a session still there `grace` seconds after its leader exited
    (workers finish their own clean-up and exit on their own; a loaded machine is slow)."""
    deadline = time.monotonic() + grace
    while (left := leftover_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def leftover_processes(session):
    found = subprocess.run(
        ["ps", "-o", "pid=", "-s", str(session)], capture_output=True, text=True, check=False
    )
    return found.stdout.split()


@scenario
def sigterm_to_a_parallel_map(ctx):
    return parallel_map(ctx, "f-pterm", signal.SIGTERM, group=False)


@scenario
def ctrl_c_on_a_parallel_map(ctx):
    return parallel_map(ctx, "f-pint", signal.SIGINT, group=True)


# --------------------------------------------------------------------------- concurrent creates


@scenario
def same_name_on_one_master(ctx):
    """Two `salt-cloud -p` of one name at once, with deploy, on one master: the first holds
    the name's lock for its whole create; the second finds it held and changes nothing."""
    name = "f-twin"
    proxy = ctx.proxy()
    proxy.add("RunInstances", "pause", count=1)
    first = create(ctx, proxy, name, "test-deploy", ctx.cloud)
    proxy.wait_for("RunInstances", "paused", timeout=120)
    second = create(ctx, proxy, name, "test-deploy", ctx.cloud)
    second_out, second_err = second.communicate(timeout=120)
    proxy.release()
    outcome = ctx.finish(ctx.cloud, name, [first], proxy)
    outcome.returncodes.append(second.returncode)
    outcome.output += second_out + second_err
    outcome.extra.update(deployed_keys(ctx, name))
    outcome.extra["record"] = node_record(ctx.cloud, name)
    if ctx.cloud.instances(name):
        ctx.cloud.run("-d", name, "-y")
    return outcome


def deployed_keys(ctx, name):
    """The key the deploy script received for `name`, and the one the master accepted."""
    profiles = yaml.safe_load((ctx.cloud.root / "cloud.profiles.d" / "zz-tests.conf").read_text())
    captured = Path(profiles["test-deploy"]["script_args"]) / name / "minion.pub"
    accepted = ctx.cloud.pki_dir / "minions" / name
    return {
        "deployed_key": captured.read_text().strip() if captured.exists() else None,
        "accepted_key": accepted.read_text().strip() if accepted.exists() else None,
    }


def killed_launch(ctx, name, before_second=None):
    """SIGKILL a `-p test-deploy` whose RunInstances reached EC2 (its answer held back),
    then run the same create again."""
    proxy = ctx.proxy()
    proxy.add("RunInstances", "hold", count=1)
    first = create(ctx, proxy, name, "test-deploy", ctx.cloud, start_new_session=True)
    proxy.wait_for("RunInstances", "held", timeout=120)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    proxy.release()
    launched = [i["InstanceId"] for i in ctx.cloud.instances(name)]
    record = node_record(ctx.cloud, name)
    if before_second:
        before_second(launched)
    second = create(ctx, proxy, name, "test-deploy", ctx.cloud)
    outcome = ctx.finish(ctx.cloud, name, [second], proxy)
    outcome.extra.update(deployed_keys(ctx, name), killed=launched, killed_record=record)
    outcome.extra["record"] = node_record(ctx.cloud, name)
    outcome.extra["tokens"] = proxy.tokens("RunInstances")
    for instance in ctx.cloud.instances(name):
        ctx.cloud.ec2().terminate_instances(InstanceIds=[instance["InstanceId"]])
    ctx.cloud.run("-d", name, "-y")
    return outcome


@scenario
def killed_after_launch_is_finished(ctx):
    return killed_launch(ctx, "f-killed")


@scenario
def killed_after_launch_then_stopped(ctx):
    """The killed create's instance was stopped since: reported, non-zero, nothing done."""

    def stop(ids):
        ctx.cloud.ec2().stop_instances(InstanceIds=ids)

    return killed_launch(ctx, "f-killed-stopped", before_second=stop)


@scenario
def refused_launch_with_an_unanswered_token_lookup(ctx):
    """EC2 refuses RunInstances (400) and would not answer a client-token lookup: a refusal
    launched nothing, so nothing is looked up and the create ends at once (it used to wait
    out cleanup_timeout)."""
    proxy = ctx.proxy()
    proxy.add("RunInstances", "refuse", count=10)
    proxy.add("DescribeInstances", "unavailable", count=1000, match="client-token")
    return ctx.finish(ctx.cli, "f-refused", [create(ctx, proxy, "f-refused")], proxy)


@scenario
def same_name_on_two_masters(ctx):
    """Two masters (separate locks) launch one name at once: the later launch terminates
    its own instance."""
    name = "f-race"
    other = harness.CloudCLI.for_endpoint(
        harness.copy_config(ctx.tmp / "second-master", provider=FAULT_PROVIDER), ctx.endpoint
    )
    proxy = ctx.proxy()
    proxy.add("RunInstances", "gather", count=2, seconds=60)
    processes = [create(ctx, proxy, name), create(ctx, proxy, name, cli=other)]
    return ctx.finish(ctx.cli, name, processes, proxy)


# --------------------------------------------------------------------------- run them all


@pytest.fixture(scope="module")
def fault_runs(fault_cloud, cloud, ec2_endpoint, tmp_path_factory):
    ctx = Context(fault_cloud, cloud, ec2_endpoint, tmp_path_factory.mktemp("faults"))
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=len(SCENARIOS)) as pool:
            futures = {name: pool.submit(timed, run, ctx) for name, run in SCENARIOS.items()}
        results = {}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except Exception as exc:  # reported by that scenario's test
                results[name] = exc
        results["seconds"] = time.monotonic() - started
        yield results
    finally:
        for proxy in ctx.proxies:
            proxy.stop()
        fault_cloud.terminate_all()


def timed(run, ctx):
    started = time.monotonic()
    outcome = run(ctx)
    outcome.extra["seconds"] = round(time.monotonic() - started, 1)
    return outcome


def outcome_of(fault_runs, name):
    outcome = fault_runs[name]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def assert_one_node(outcome):
    assert outcome.returncode == 0, outcome.output
    assert len(outcome.live) == 1, outcome.output
    assert len(outcome.launched) == 1, [i["InstanceId"] for i in outcome.launched]


def assert_nothing_left(outcome, launched):
    assert outcome.live == [], outcome.output
    assert len(outcome.launched) == launched, outcome.output
    for instance in outcome.launched:
        assert instance["InstanceId"] in outcome.output  # the user is told which one
        assert instance["State"]["Name"] in ("shutting-down", "terminated")


def test_lost_answer_is_retried_with_the_same_token(fault_runs):
    outcome = outcome_of(fault_runs, "lost_run_instances_answer")
    assert_one_node(outcome)
    tokens = outcome.proxy.tokens("RunInstances")
    assert len(tokens) == 2 and tokens[0] == tokens[1]
    assert outcome.proxy.count("RunInstances", "lost") == 1


def test_every_answer_lost_the_driver_finds_its_instance_by_token(fault_runs):
    outcome = outcome_of(fault_runs, "every_run_instances_answer_lost")
    assert_one_node(outcome)
    assert outcome.proxy.count("RunInstances", "lost") == 3  # FAULT_PROVIDER: 3 attempts
    assert "EC2 launched" in outcome.output and "with this create's client token" in (
        outcome.output
    )


@pytest.mark.parametrize(
    "name",
    [
        "reset_before_run_instances",
        "reset_while_waiting",
        "throttled_run_instances",
        "run_instances_unavailable_once",
        "throttled_wait_keeps_the_node",
        "outage_after_launch",
    ],
)
def test_transient_faults_do_not_cost_the_node(fault_runs, name):
    assert_one_node(outcome_of(fault_runs, name))


def test_throttled_throughout_launches_nothing_and_says_so(fault_runs):
    """A throttled call is one EC2 refused: nothing launched, no lookup needed."""
    outcome = outcome_of(fault_runs, "run_instances_throttled_throughout")
    assert outcome.returncode != 0
    assert outcome.launched == []
    assert "EC2 did not launch the instance" in outcome.output
    assert "RequestLimitExceeded" in outcome.output
    assert outcome.proxy.count("DescribeInstances", match="client-token") == 0


def test_a_refused_launch_ends_at_once(fault_runs):
    outcome = outcome_of(fault_runs, "refused_launch_with_an_unanswered_token_lookup")
    assert outcome.returncode == 1, outcome.output
    assert "EC2 did not launch the instance" in outcome.output
    assert "InsufficientInstanceCapacity" in outcome.output
    assert outcome.launched == []
    # It used to look for the client token until cleanup_timeout (600 s by default).
    assert outcome.proxy.count("DescribeInstances", match="client-token") == 0


def test_a_killed_create_is_finished_by_the_next_run_of_its_name(fault_runs):
    """SIGKILL after RunInstances: the record holds the launch's client token; the next -p of
    the name deploys, keys and records that instance (it used to say "already exists", exit
    0, and leave it without key or class)."""
    outcome = outcome_of(fault_runs, "killed_after_launch_is_finished")
    [killed] = outcome.extra["killed"]
    assert outcome.extra["killed_record"]["state"] == "launching"
    assert outcome.returncode == 0, outcome.output
    assert [i["InstanceId"] for i in outcome.launched] == [killed]
    assert outcome.extra["tokens"] == [outcome.extra["killed_record"]["client_token"]]
    assert outcome.extra["deployed_key"] is not None
    assert outcome.extra["accepted_key"] == outcome.extra["deployed_key"]
    record = outcome.extra["record"]
    assert (record["state"], record["class"], record["instance_id"]) == (
        "deployed",
        "backends",
        killed,
    )


def test_a_killed_create_that_cannot_be_finished_is_reported(fault_runs):
    outcome = outcome_of(fault_runs, "killed_after_launch_then_stopped")
    [killed] = outcome.extra["killed"]
    assert outcome.returncode == 1, outcome.output
    assert f"its instance {killed} is stopp" in outcome.output
    assert "already exists" not in outcome.output
    assert outcome.extra["accepted_key"] is None


@pytest.mark.parametrize("name", ["throttled_cleanup", "outage_during_cleanup"])
def test_cleanup_outlasts_throttling_and_outages(fault_runs, name):
    outcome = outcome_of(fault_runs, name)
    assert outcome.returncode != 0
    assert_nothing_left(outcome, launched=1)
    assert "refusing to SSH" in outcome.output and "was terminated" in outcome.output
    assert outcome.proxy.count("TerminateInstances", "relayed") >= 1


def test_unreachable_past_cleanup_timeout_reports_the_instance(fault_runs):
    outcome = outcome_of(fault_runs, "outage_longer_than_cleanup_timeout")
    assert outcome.returncode != 0
    [left] = outcome.extra["left"]
    assert f"terminating instance {left} FAILED for 3 s" in outcome.output
    assert "terminate it by hand" in outcome.output


def signalled_outcome(fault_runs, name, signum):
    """The outcome of a scenario that signalled salt-cloud: it ended as ``signum`` ends it."""
    outcome = outcome_of(fault_runs, name)
    assert outcome.returncode == 128 + signum, outcome.output
    return outcome


# Scenario -> the signal it sends salt-cloud.
SIGNALLED_CREATES = {
    "sigterm_while_waiting": signal.SIGTERM,
    "sigint_while_waiting": signal.SIGINT,
    "sigint_while_run_instances_is_answered": signal.SIGINT,
}
SIGNALLED_MAPS = {
    "sigterm_to_a_parallel_map": signal.SIGTERM,
    "ctrl_c_on_a_parallel_map": signal.SIGINT,
}


@pytest.mark.parametrize("name", SIGNALLED_CREATES)
def test_signals_end_the_create_non_zero_with_nothing_left(fault_runs, name):
    outcome = signalled_outcome(fault_runs, name, SIGNALLED_CREATES[name])
    assert_nothing_left(outcome, launched=1)
    assert "interrupted by signal" in outcome.output and "was terminated" in outcome.output


def test_sigterm_during_deploy_leaves_no_node_key_or_record(fault_runs):
    outcome = outcome_of(fault_runs, "sigterm_during_deploy")
    assert outcome.extra["deploy_started"], outcome.output
    signalled_outcome(fault_runs, "sigterm_during_deploy", signal.SIGTERM)
    assert_nothing_left(outcome, launched=1)
    assert outcome.extra["left"] == []


@pytest.mark.parametrize("name", SIGNALLED_MAPS)
def test_signals_stop_parallel_workers_and_their_instances(fault_runs, name):
    outcome = signalled_outcome(fault_runs, name, SIGNALLED_MAPS[name])
    assert_nothing_left(outcome, launched=3)
    assert outcome.extra["workers_left"] == []


def test_same_name_on_one_master_makes_one_node_with_the_right_key(fault_runs):
    outcome = outcome_of(fault_runs, "same_name_on_one_master")
    assert outcome.returncodes == [0, 1], outcome.output
    assert len(outcome.launched) == 1, outcome.output
    assert "f-twin is being created by another salt-cloud on this master" in outcome.output
    assert outcome.extra["deployed_key"] is not None
    assert outcome.extra["accepted_key"] == outcome.extra["deployed_key"]
    assert outcome.extra["record"]["state"] == "deployed"


def test_same_name_on_two_masters_leaves_one_node(fault_runs):
    outcome = outcome_of(fault_runs, "same_name_on_two_masters")
    assert sorted(outcome.returncodes) == [0, 1], outcome.output
    assert len(outcome.live) == 1
    assert len(outcome.launched) == 2
    assert "lost the race and terminates its own instance" in outcome.output
    loser = [i for i in outcome.launched if i["State"]["Name"] != "running"]
    assert len(loser) == 1 and loser[0]["InstanceId"] in outcome.output


def test_fault_scenarios_report_their_time(fault_runs):
    """Not a timing test (timings here are noisy): what each scenario took, for the record."""
    seconds = {
        name: outcome.extra.get("seconds")
        for name, outcome in fault_runs.items()
        if isinstance(outcome, Outcome)
    }
    print(f"fault scenarios: {fault_runs['seconds']:.0f} s together; each: {seconds}")
