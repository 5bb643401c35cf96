"""A salt-cloud run as a whole (issues 17.8, 17.10, 20.1), real CLI against the local endpoint:

- a map is checked whole before anything is launched or any minion key is made;
- a run is one process: one RunInstances per profile, each node named, tagged and recorded;
  capacity that falls short is asked for once more, then reported;
- with -P at most `pool_size` nodes deploy at once (default: two per core);
- SIGTERM stops a large map within seconds, and what it launched is terminated;
- every failure exits non-zero, from creates, destroys and actions.

What EC2 holds is read with boto3; what reached EC2 comes from a fault proxy's log.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import left_on_master, node_record

pytestmark = pytest.mark.cloud

ALL_STATES = ("pending", "running", "shutting-down", "terminated", "stopping", "stopped")
WRITES = ("RunInstances", "CreateTags", "TerminateInstances", "ModifyInstanceAttribute")


def output(result):
    return result.stdout + result.stderr


def write_map(path, mapping):
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return str(path)


def tags_of(resource):
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def keys_of(cli, names):
    return sorted(n for n in names if (cli.pki_dir / "minions" / str(n)).exists())


# --------------------------------------------------------------------------- 17.8: checked whole


def test_a_map_is_checked_whole_before_anything_is_made(cloud, fault_proxy, tmp_path):
    """60 names, the last one hostile, with -P and deploy: refused as a whole, naming the bad
    entry; nothing reached EC2 but reads, no key was made (salt-cloud's core made one per
    node and launched the good ones before)."""
    names = [f"whole{i}" for i in range(59)]
    hostile = "../whole-evil"
    map_file = write_map(tmp_path / "hostile.map", {"test-deploy": [*names, hostile]})
    proxy = fault_proxy()
    result = cloud.via(proxy.url).run("-m", map_file, "-P", "-y")
    assert result.returncode != 0, output(result)
    assert f"'{hostile}': 'name'" in output(result) and "nothing was created" in output(result)
    assert [a for a in WRITES if proxy.count(a)] == []
    assert cloud.instances([*names, hostile], states=ALL_STATES) == []
    assert keys_of(cloud, names) == []
    assert [n for n in names if node_record(cloud, n)] == []


@pytest.mark.parametrize(
    ("mapping", "says"),
    [
        ({"backends": ["dupe1"], "dataserver": ["dupe1"]}, "'dupe1' is listed twice"),
        ({"backends": ["dupe2", "dupe2"]}, "'dupe2' is listed twice"),
        ({"backend": ["typo1"]}, "profile 'backend' is not defined (did you mean backends?)"),
        ({"backends": ["ok1", "a b", "$(reboot)", "x" * 300]}, "is not a node name"),
        ({"backends": ["ok2", {"ok3": {"image": "debian"}}]}, "'image' must be an AMI id"),
    ],
)
def test_a_bad_map_is_refused_with_nothing_launched(
    fault_cloud, fault_proxy, tmp_path, mapping, says
):
    proxy = fault_proxy()
    result = fault_cloud.via(proxy.url).run(
        "-m", write_map(tmp_path / "bad.map", mapping), "-P", "-y", "--no-deploy"
    )
    assert result.returncode != 0, output(result)
    assert says in output(result)
    assert [a for a in WRITES if proxy.count(a)] == []


# --------------------------------------------------------------------------- 20.1: batches


def test_a_map_is_launched_one_runinstances_per_profile(fault_cloud, fault_proxy, tmp_path):
    web = [f"batch-web{i}" for i in range(12)]
    db = [f"batch-db{i}" for i in range(8)]
    map_file = write_map(tmp_path / "fleet.map", {"backends": web, "dataserver": db})
    proxy = fault_proxy()
    cli = fault_cloud.via(proxy.url)
    try:
        result = cli.run("-m", map_file, "-P", "-y", "--no-deploy", "--out=json")
        assert result.returncode == 0, output(result)
        tokens = proxy.tokens("RunInstances")
        assert len(tokens) == 2 and len(set(tokens)) == 2, tokens
        for names, node_class in ((web, "backends"), (db, "dataserver")):
            for name in names:
                instance = fault_cloud.instance(name)
                assert tags_of(instance)["class"] == node_class
                assert tags_of(instance)["docker_volume"] == "/dev/sdb"
                [mapping] = instance["BlockDeviceMappings"]
                volume = fault_cloud.volume(mapping["Ebs"]["VolumeId"])
                assert tags_of(volume) == {
                    "Name": name,
                    "node": name,
                    "class": node_class,
                    "role": "docker_volume",
                }
                record = node_record(fault_cloud, name)
                assert record["state"] == "launched" and record["class"] == node_class
                assert record["instance_id"] == instance["InstanceId"]
                assert record["client_token"] == instance["ClientToken"]
                assert record["data_volumes"] == [
                    {
                        "volume_id": volume["VolumeId"],
                        "data_id": volume["VolumeId"],
                        "device_name": "/dev/sdb",
                        "role": "docker_volume",
                    }
                ]
        # Once more: everything exists, nothing is launched.
        again = cli.run("-m", map_file, "-P", "-y", "--no-deploy")
        assert again.returncode == 0, output(again)
        assert len(proxy.tokens("RunInstances")) == 2
        # One batch to terminate them all.
        destroyed = cli.run("-d", "-m", map_file, "-y")
        assert destroyed.returncode == 0, output(destroyed)
        assert proxy.count("TerminateInstances") == 1
        assert fault_cloud.instances([*web, *db]) == []
        assert [n for n in [*web, *db] if node_record(fault_cloud, n)] == []
    finally:
        fault_cloud.run("-d", *web, *db, "-y")


@pytest.mark.parametrize(("short_twice", "created"), [(False, 5), (True, 4)])
def test_short_capacity_is_asked_for_again_then_reported(
    fault_cloud, fault_proxy, tmp_path, short_twice, created
):
    """EC2 launches fewer than asked (MinCount 1): the rest is asked for once more; what is
    still missing fails, named, the others are created, the run exits non-zero."""
    names = [f"cap{int(short_twice)}-{i}" for i in range(5)]
    proxy = fault_proxy()
    proxy.add("RunInstances", "cap", limit=2, count=2 if short_twice else 1)
    result = fault_cloud.via(proxy.url).run(
        "-m", write_map(tmp_path / "cap.map", {"backends": names}), "-y", "--no-deploy"
    )
    try:
        assert len(proxy.tokens("RunInstances")) == 2
        live = fault_cloud.instances(names)
        assert len(live) == created
        if short_twice:
            assert result.returncode == 1, output(result)
            assert "EC2 launched 2 of 3 instances" in output(result)
            missing = sorted(set(names) - {tags_of(i)["Name"] for i in live})
            assert len(missing) == 1 and f"{missing[0]}: EC2 launched 2 of 3" in output(result)
            assert node_record(fault_cloud, missing[0]) is None
        else:
            assert result.returncode == 0, output(result)
    finally:
        fault_cloud.run("-d", *names, "-y")


# --------------------------------------------------------------------------- 17.8: bounded, signals


def test_a_parallel_map_finishes_at_most_pool_size_nodes_at_once(
    fault_cloud, fault_proxy, tmp_path
):
    """-P finishes (tags, deploys, records) at most pool_size nodes at once, two per core by
    default: each node's volume tagging is held 1 s by the proxy, and the proxy sees how many
    are held at the same time."""
    bound = 2 * os.cpu_count()
    names = [f"bound{i}" for i in range(bound + 4)]
    proxy = fault_proxy()
    proxy.add("CreateTags", "delay", count=len(names), seconds=1, match="Tag.2.Key=node")
    try:
        result = fault_cloud.via(proxy.url).run(
            "-m", write_map(tmp_path / "bound.map", {"backends": names}), "-P", "-y", "--no-deploy"
        )
        assert result.returncode == 0, output(result)
        ends = [e.at for e in proxy.log if e.action == "CreateTags" and "Tag.2.Key=node" in e.body]
        assert len(ends) == len(names)
        # Each was held 1 s: how many were held when each one was.
        at_once = max(sum(1 for end in ends if end - 1 <= held - 0.01 < end) for held in ends)
        print(f"nodes finished at once: {at_once} (bound {bound})")
        assert 1 < at_once <= bound
    finally:
        fault_cloud.run("-d", *names, "-y")


def test_sigterm_stops_a_large_parallel_map_within_seconds(fault_cloud, fault_proxy, tmp_path):
    """30 nodes with -P, waiting for `running`: SIGTERM ends the run within seconds, every
    instance it launched is terminated, no process and no record is left."""
    names = [f"sig{i}" for i in range(30)]
    proxy = fault_proxy()
    proxy.add("DescribeInstances", "hold", count=1000, match="instance-id")
    process = fault_cloud.via(proxy.url).popen(
        "-m",
        write_map(tmp_path / "sig.map", {"backends": names}),
        "-P",
        "-y",
        "--no-deploy",
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while len(fault_cloud.instances(names)) < len(names) and time.monotonic() < deadline:
        time.sleep(0.5)
    proxy.wait_for("DescribeInstances", "held", timeout=120)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    proxy.release()
    out, err = process.communicate(timeout=120)
    seconds = time.monotonic() - signalled
    left = subprocess.run(
        ["ps", "-o", "pid=", "-s", str(process.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    print(f"SIGTERM to exit: {seconds:.1f} s")
    assert process.returncode == 128 + signal.SIGTERM, out + err
    assert seconds < 20, out + err
    assert left == []
    launched = fault_cloud.instances(names, states=ALL_STATES)
    assert len(launched) == len(names)
    assert {i["State"]["Name"] for i in launched} <= {"shutting-down", "terminated"}
    assert [n for n in names if node_record(fault_cloud, n)] == []
    assert "interrupted by signal 15" in err


# --------------------------------------------------------------------------- 17.10: exit codes


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("-a", "stop", "nosuch"), "no live instance named 'nosuch'"),
        (("-a", "start", "nosuch"), "no live instance named 'nosuch'"),
        (("-a", "reboot", "nosuch"), "no live instance named 'nosuch'"),
        (("-a", "show_instance", "nosuch"), "no live instance named 'nosuch'"),
        (("-a", "enable_term_protect", "nosuch"), "no live instance named 'nosuch'"),
        (("-a", "grow_docker_volume", "nosuch", "size=10"), "no live instance named 'nosuch'"),
        (("-a", "no_such_action", "nosuch"), "boto3_ec2 has no action 'no_such_action'"),
        (
            ("-a", "grow_docker_disk", "nosuch", "size=10"),
            "renamed: salt-cloud -a grow_docker_volume",
        ),
        (("-d", "nosuch"), "nosuch: no live instance has this name"),
        (("-d", "../nosuch"), "not a node name"),
        (("-p", "nosuch-profile", "x1"), "profile 'nosuch-profile' is not defined"),
        (("-p", "backends", "dup1", "dup1", "--no-deploy"), "'dup1' is listed twice"),
        (("-p", "backends", "bad/name", "--no-deploy"), "'name' 'bad/name' is not a node name"),
    ],
)
def test_every_failure_exits_non_zero(fault_cloud, fault_proxy, args, says):
    proxy = fault_proxy()
    result = fault_cloud.via(proxy.url).run(*args, "-y")
    assert result.returncode != 0, output(result)
    assert says in output(result)
    assert [a for a in WRITES if proxy.count(a)] == []
    assert "Traceback" not in output(result)


def test_a_map_with_one_failing_node_exits_non_zero_and_keeps_the_others(cloud, tmp_path):
    """One node deploys, one fails after its launch: the failed one is terminated and named,
    the other is created, the run exits 1 (salt-cloud's core exited 0)."""
    map_file = write_map(
        tmp_path / "mixed.map",
        {"test-deploy": ["mixed-ok"], "test-fails-after-launch": ["mixed-bad"]},
    )
    try:
        result = cloud.run("-m", map_file, "-P", "-y", "--out=json")
        assert result.returncode == 1, output(result)
        assert "mixed-bad: refusing to SSH to" in output(result)
        assert "was terminated" in output(result)
        assert len(cloud.instances("mixed-ok")) == 1
        assert cloud.instances("mixed-bad") == []
        assert node_record(cloud, "mixed-ok")["state"] == "deployed"
        assert left_on_master(cloud, "mixed-bad") == []
    finally:
        cloud.run("-d", "mixed-ok", "-y")
    assert left_on_master(cloud, "mixed-ok") == []


def test_a_batched_destroy_forks_nothing(fault_cloud, tmp_path):
    """salt-cloud's core listed the nodes in a process pool with a multiprocessing manager it
    never shut down; at exit the manager's finalizer waited up to 1 s (the idle second after a
    20-node destroy's last line). The driver's destroy runs in its one process."""
    names = [f"idle{i}" for i in range(5)]
    created = fault_cloud.run(
        "-m", write_map(tmp_path / "idle.map", {"backends": names}), "-y", "--no-deploy"
    )
    assert created.returncode == 0, output(created)
    forks = tmp_path / "forks"
    command = [sys.executable, str(Path(__file__).parent / "forks.py"), "-d", *names, "-y"]
    env = {**fault_cloud.env, "FORKS_FILE": str(forks)}
    run = {"cwd": fault_cloud.root, "env": env, "capture_output": True, "text": True}
    result = subprocess.run(command, check=False, **run)
    assert result.returncode == 0, output(result)
    assert fault_cloud.instances(names) == []
    # (Salt's grains start ldconfig, file and ip for their probes: no salt-cloud processes.)
    assert [line for line in forks.read_text().splitlines() if line.startswith("os.fork")] == []
