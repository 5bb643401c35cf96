"""salt-cloud -a <action> and destroy batches, real CLI against the local EC2 endpoint.

The flows below are independent (each its own nodes) and run at once (module fixture); each
records what salt-cloud answered and what EC2 held at each step (read with boto3, not
through the driver), and the tests check those records.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from tools.fault_proxy import FaultProxy

from .conftest import DEVICE, class_node

pytestmark = pytest.mark.cloud


class Flow:
    """One flow's salt-cloud runs and observations, by step name."""

    def __init__(self, cli):
        self.cli = cli
        self.steps = {}

    def run(self, step, *args):
        result = self.cli.run("--out=json", *args)
        self.steps[step] = result
        return result

    def action(self, step, name, verb, *kwargs):
        result = self.run(step, "-a", verb, name, *kwargs, "-y")
        if result.returncode == 0:
            answer = json.loads(result.stdout)
            self.steps[step].data = answer.get("aws", {}).get("boto3_ec2", {}).get(name)
        return result

    def note(self, step, value):
        self.steps[step] = value


def output(result):
    return result.stdout + result.stderr


def state(cli, instance_id):
    found = cli.ec2().describe_instances(InstanceIds=[instance_id])
    return found["Reservations"][0]["Instances"][0]["State"]["Name"]


def protected(cli, instance_id):
    attribute = cli.ec2().describe_instance_attribute(
        InstanceId=instance_id, Attribute="disableApiTermination"
    )
    return attribute["DisableApiTermination"]["Value"]


def make_map(tmp_path, names):
    path = tmp_path / f"{names[0]}.map"
    half = len(names) // 2
    path.write_text(yaml.safe_dump({"backends": names[:half], "dataserver": names[half:]}))
    return path


def node_flow(ctx):
    """act1 (dataserver): stop/start/reboot, termination protection, volumes, growing."""
    flow, cli, name = Flow(ctx["cloud"]), ctx["cloud"], "act1"
    flow.run("create", "-p", "dataserver", name, "--no-deploy")
    instance_id = cli.instance(name)["InstanceId"]
    flow.note("instance_id", instance_id)
    try:
        for verb in ("stop", "start", "reboot"):
            flow.action(verb, name, verb)
            flow.note(f"state after {verb}", state(cli, instance_id))
            if verb == "stop":
                flow.run("query while stopped", "-Q")
        flow.action("enable_term_protect", name, "enable_term_protect")
        flow.note("protected", protected(cli, instance_id))
        flow.action("show_term_protect", name, "show_term_protect")
        flow.run("destroy protected", "-d", name, "-y")
        flow.note("state after refused destroy", state(cli, instance_id))
        flow.action("disable_term_protect", name, "disable_term_protect")
        flow.note("protected after disable", protected(cli, instance_id))
        flow.action("show_volumes", name, "show_volumes")
        flow.action("docker_volume", name, "docker_volume")
        size = class_node("dataserver")["volume"]["Ebs"]["VolumeSize"]
        flow.action("grow", name, "grow_docker_volume", f"size={size + 10}")
        volume_id = flow.steps["docker_volume"].data["volume_id"]
        flow.note("size after grow", cli.volume(volume_id)["Size"])
        flow.action("docker_volume after grow", name, "docker_volume")
        flow.action("grow again", name, "grow_docker_volume", f"size={size + 10}")
        flow.action("shrink", name, "grow_docker_volume", f"size={size}")
        for bad in ("size=big", "size=-1", "iops=3000"):
            flow.action(f"grow {bad}", name, "grow_docker_volume", bad)
        flow.note("size at the end", cli.volume(volume_id)["Size"])
        flow.action("unknown node", "no-such-node", "stop")
    finally:
        if cli.instances(name):
            cli.run("-a", "disable_term_protect", name, "-y")
            cli.run("-d", name, "-y")
    return flow


def spot_flow(ctx):
    flow, cli, name = Flow(ctx["cloud"]), ctx["cloud"], "spot1"
    try:
        flow.run("create", "-p", "test-spot", name, "--no-deploy")
        flow.note("instance", cli.instance(name))
        flow.run("full query", "-F")
        flow.action("enable_term_protect", name, "enable_term_protect")
    finally:
        flow.run("destroy", "-d", name, "-y")
    flow.note("live after destroy", cli.instances(name))
    return flow


def protected_profile_flow(ctx):
    flow, cli, name = Flow(ctx["cloud"]), ctx["cloud"], "prot1"
    try:
        flow.run("create", "-p", "test-protected", name, "--no-deploy")
        flow.note("protected", protected(cli, cli.instance(name)["InstanceId"]))
        flow.run("destroy protected", "-d", name, "-y")
        flow.note("live after refused destroy", len(cli.instances(name)))
    finally:
        cli.run("-a", "disable_term_protect", name, "-y")
        flow.run("destroy", "-d", name, "-y")
    flow.note("live after destroy", cli.instances(name))
    return flow


def batch_of_names_flow(ctx):
    flow, cli = Flow(ctx["fault_cloud"]), ctx["fault_cloud"]
    names = [f"batch{i}" for i in range(4)]
    flow.run("create", "-m", str(make_map(ctx["tmp"], names)), "-P", "-y", "--no-deploy")
    flow.note("live before", len(cli.instances(names)))
    proxy = ctx["proxy"]()
    flow.cli = cli.via(proxy.url)
    flow.run("destroy", "-d", *names, "-y")
    flow.note("live after", cli.instances(names))
    actions = ("TerminateInstances", "StopInstances", "DescribeInstances")
    flow.note("requests", {a: proxy.count(a) for a in actions})
    return flow


def batch_of_a_map_flow(ctx):
    flow, cli = Flow(ctx["fault_cloud"]), ctx["fault_cloud"]
    names = [f"pbatch{i}" for i in range(6)]
    map_file = str(make_map(ctx["tmp"], names))
    flow.run("create", "-m", map_file, "-P", "-y", "--no-deploy")
    flow.note("live before", len(cli.instances(names)))
    proxy = ctx["proxy"]()
    flow.cli = cli.via(proxy.url)
    flow.run("destroy", "-d", "-m", map_file, "-P", "-y")
    flow.note("live after", cli.instances(names))
    flow.note("terminate calls", proxy.count("TerminateInstances"))
    return flow


def batch_with_a_protected_node_flow(ctx):
    flow, cli = Flow(ctx["fault_cloud"]), ctx["fault_cloud"]
    names = ["mixed0", "mixed1", "mixed2"]
    try:
        flow.run("create", "-m", str(make_map(ctx["tmp"], names)), "-P", "-y", "--no-deploy")
        flow.action("protect", "mixed1", "enable_term_protect")
        flow.run("destroy", "-d", *names, "-y")
        flow.note("live after", [i["InstanceId"] for i in cli.instances(names)])
        flow.note("mixed1", cli.instance("mixed1")["InstanceId"])
    finally:
        cli.run("-a", "disable_term_protect", "mixed1", "-y")
        cli.run("-d", *names, "-y")
    flow.note("live at the end", cli.instances(names))
    return flow


FLOWS = (
    node_flow,
    spot_flow,
    protected_profile_flow,
    batch_of_names_flow,
    batch_of_a_map_flow,
    batch_with_a_protected_node_flow,
)


@pytest.fixture(scope="module")
def flows(cloud, fault_cloud, ec2_endpoint, tmp_path_factory):
    proxies = []

    def proxy():
        proxies.append(FaultProxy(ec2_endpoint.url).start())
        return proxies[-1]

    ctx = {
        "cloud": cloud,
        "fault_cloud": fault_cloud,
        "proxy": proxy,
        "tmp": tmp_path_factory.mktemp("actions"),
    }
    try:
        with ThreadPoolExecutor(max_workers=len(FLOWS)) as pool:
            futures = {flow.__name__: pool.submit(flow, ctx) for flow in FLOWS}
        yield {name: future.result().steps for name, future in futures.items()}
    finally:
        for started in proxies:
            started.stop()


def ok(result):
    assert result.returncode == 0, output(result)
    return result.data


def refused(result, *texts):
    assert result.returncode != 0, output(result)
    for text in texts:
        assert text in output(result)


def test_stop_start_reboot_wait_for_their_state(flows):
    steps = flows["node_flow"]
    instance_id = steps["instance_id"]
    assert ok(steps["stop"]) == {"instance_id": instance_id, "state": "stopped"}
    assert steps["state after stop"] == "stopped"
    # A stopped node is still the node: -Q lists it, start brings it back.
    queried = json.loads(steps["query while stopped"].stdout)["aws"]["boto3_ec2"]["act1"]
    assert queried["state"] == "stopped"
    assert ok(steps["start"])["state"] == "running"
    assert steps["state after start"] == "running"
    assert ok(steps["reboot"])["state"] == "running"
    assert steps["state after reboot"] == "running"


def test_termination_protection_makes_destroy_refuse(flows):
    steps = flows["node_flow"]
    instance_id = steps["instance_id"]
    assert ok(steps["enable_term_protect"])["termination_protection"] is True
    assert steps["protected"] is True
    assert ok(steps["show_term_protect"])["termination_protection"] is True
    refused(
        steps["destroy protected"],
        f"act1 ({instance_id}) has termination protection and was not destroyed",
        "salt-cloud -a disable_term_protect act1",
    )
    assert steps["state after refused destroy"] == "running"
    assert ok(steps["disable_term_protect"])["termination_protection"] is False
    assert steps["protected after disable"] is False


def test_show_volumes_and_docker_volume(flows):
    steps = flows["node_flow"]
    volumes = ok(steps["show_volumes"])
    assert list(volumes) == [DEVICE]
    disk = volumes[DEVICE]
    ebs = class_node("dataserver")["volume"]["Ebs"]
    assert (disk["size"], disk["type"], disk["encrypted"], disk["state"]) == (
        ebs["VolumeSize"],
        ebs["VolumeType"],
        ebs["Encrypted"],
        "in-use",
    )
    docker = ok(steps["docker_volume"])
    assert docker["device_name"] == DEVICE
    assert docker["volume_id"] == disk["volume_id"]
    assert docker["modification"] is None


def test_grow_docker_volume_grows_the_volume_and_refuses_to_shrink(flows):
    steps = flows["node_flow"]
    volume_id = ok(steps["docker_volume"])["volume_id"]
    size = class_node("dataserver")["volume"]["Ebs"]["VolumeSize"]
    assert ok(steps["grow"]) == {
        "volume_id": volume_id,
        "old_size": size,
        "size": size + 10,
        "state": "completed",
    }
    assert steps["size after grow"] == size + 10
    assert ok(steps["docker_volume after grow"])["modification"]["target_size"] == size + 10
    # The same size again changes nothing.
    assert ok(steps["grow again"])["changed"] is False
    refused(
        steps["shrink"],
        f"{volume_id} is {size + 10} GiB: EBS volumes cannot shrink (asked {size})",
    )
    for bad in ("size=big", "size=-1", "iops=3000"):
        refused(steps[f"grow {bad}"], "grow_docker_volume")
    assert steps["size at the end"] == size + 10


def test_actions_refuse_unknown_nodes(flows):
    result = flows["node_flow"]["unknown node"]
    refused(result, "no live instance named 'no-such-node'")


def test_spot_profile_launches_a_spot_instance(flows):
    steps = flows["spot_flow"]
    assert steps["create"].returncode == 0, output(steps["create"])
    assert steps["instance"]["InstanceLifecycle"] == "spot"
    listed = json.loads(steps["full query"].stdout)["aws"]["boto3_ec2"]["spot1"]
    assert listed["lifecycle"] == "spot"
    refused(steps["enable_term_protect"], "spot instance: EC2 cannot protect those")
    assert steps["live after destroy"] == []


def test_termination_protection_profile_key(flows):
    steps = flows["protected_profile_flow"]
    assert steps["create"].returncode == 0, output(steps["create"])
    assert steps["protected"] is True
    refused(steps["destroy protected"], "has termination protection")
    assert steps["live after refused destroy"] == 1
    assert steps["live after destroy"] == []


def test_destroy_of_several_names_is_one_batch(flows):
    steps = flows["batch_of_names_flow"]
    assert steps["live before"] == 4, output(steps["create"])
    destroyed = json.loads(steps["destroy"].stdout)["aws"]["boto3_ec2"]
    assert sorted(destroyed) == [f"batch{i}" for i in range(4)]
    assert steps["live after"] == []
    # One TerminateInstances for all four, and one wait (not one per node): salt-cloud's
    # own listing, the driver's lookup of the names, the wait for the two dataserver nodes to
    # stop (before their volumes' snapshots), the wait for the termination.
    assert steps["requests"]["TerminateInstances"] == 1
    assert steps["requests"]["StopInstances"] == 1
    assert steps["requests"]["DescribeInstances"] <= 4, steps["requests"]


def test_destroy_of_a_map_in_parallel_is_one_batch(flows):
    steps = flows["batch_of_a_map_flow"]
    assert steps["live before"] == 6, output(steps["create"])
    assert steps["destroy"].returncode == 0, output(steps["destroy"])
    assert steps["live after"] == []
    # salt-cloud runs one destroy per node in parallel workers: one of them terminates all.
    assert steps["terminate calls"] == 1


def test_a_protected_node_in_a_batch_is_refused_and_the_rest_destroyed(flows):
    steps = flows["batch_with_a_protected_node_flow"]
    assert steps["create"].returncode == 0, output(steps["create"])
    refused(steps["destroy"], "mixed1 (", "has termination protection and was not destroyed")
    assert steps["live after"] == [steps["mixed1"]]
    assert steps["live at the end"] == []
