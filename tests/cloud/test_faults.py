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
from tools.checkout_master import node_record
from tools.fault_proxy import FaultProxy

from .conftest import FAULT_PROVIDER

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
    outcome.extra["key"] = (ctx.cloud.pki_dir / "minions" / name).exists()
    outcome.extra["node_class"] = node_record(ctx.cloud.pki_dir, name) is not None
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
    proxy.wait_for("RunInstances", "relayed", count=3, timeout=120)
    proxy.wait_for("DescribeInstances", "held", count=3, timeout=120)
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
    """Two `salt-cloud -p` of one name at once, with deploy, on one master: the second waits
    for the first's lock, finds the name taken and gives the master the first's key back."""
    name = "f-twin"
    proxy = ctx.proxy()
    proxy.add("RunInstances", "pause", count=1)
    first = create(ctx, proxy, name, "test-deploy", ctx.cloud)
    second = create(ctx, proxy, name, "test-deploy", ctx.cloud)
    # One holds the lock, its RunInstances paused; the other has asked EC2 about the name
    # (the first's instance does not exist yet) and waits for the lock.
    proxy.wait_for("RunInstances", "paused", timeout=120)
    proxy.wait_for("DescribeInstances", match=f"Value.1={name}", count=3, timeout=120)
    time.sleep(0.5)
    proxy.release()
    outcome = ctx.finish(ctx.cloud, name, [first, second], proxy)
    profiles = yaml.safe_load((ctx.cloud.root / "cloud.profiles.d" / "zz-tests.conf").read_text())
    captured = Path(profiles["test-deploy"]["script_args"]) / name / "minion.pub"
    accepted = ctx.cloud.pki_dir / "minions" / name
    outcome.extra["deployed_key"] = captured.read_text() if captured.exists() else None
    outcome.extra["accepted_key"] = accepted.read_text() if accepted.exists() else None
    outcome.extra["node_class"] = (node_record(ctx.cloud.pki_dir, name) or {}).get("class")
    for _ in range(2):
        if ctx.cloud.instances(name):
            ctx.cloud.run("-d", name, "-y")
    return outcome


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
    outcome = outcome_of(fault_runs, "run_instances_throttled_throughout")
    assert outcome.returncode != 0
    assert outcome.launched == []
    assert "EC2 did not launch the instance" in outcome.output
    assert "RequestLimitExceeded" in outcome.output
    assert "client token" in outcome.output


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


def test_sigterm_during_deploy_leaves_no_node_key_or_class(fault_runs):
    outcome = outcome_of(fault_runs, "sigterm_during_deploy")
    assert outcome.extra["deploy_started"], outcome.output
    signalled_outcome(fault_runs, "sigterm_during_deploy", signal.SIGTERM)
    assert_nothing_left(outcome, launched=1)
    assert not outcome.extra["key"]
    assert not outcome.extra["node_class"]


@pytest.mark.parametrize("name", SIGNALLED_MAPS)
def test_signals_stop_parallel_workers_and_their_instances(fault_runs, name):
    outcome = signalled_outcome(fault_runs, name, SIGNALLED_MAPS[name])
    assert_nothing_left(outcome, launched=3)
    assert outcome.extra["workers_left"] == []


def test_same_name_on_one_master_makes_one_node_with_the_right_key(fault_runs):
    outcome = outcome_of(fault_runs, "same_name_on_one_master")
    assert sorted(outcome.returncodes)[0] == 0, outcome.output
    assert len(outcome.launched) == 1, outcome.output
    assert "already exists" in outcome.output
    assert outcome.extra["deployed_key"] is not None
    assert outcome.extra["accepted_key"].strip() == outcome.extra["deployed_key"].strip()
    assert outcome.extra["node_class"] == "backends"


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
