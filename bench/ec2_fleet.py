"""EC2 at fleet speed (issue 20): salt-cloud's create 1, create N, terminate 1, terminate N and
-Q against the local endpoint, interleaved with the same steps through Ansible's
amazon.aws.ec2_instance where Ansible is installed, in one run.

    .venv/bin/python -m bench.ec2_fleet [--runs 3] [--nodes 20] [--ansible-playbook PATH]

Ansible is a bench-only dependency in a venv of its own (pinned: ansible 12.3.0, the last
for Python 3.11, which carries amazon.aws; and boto3), e.g.

    python3 -m venv .venv-ansible && .venv-ansible/bin/pip install ansible==12.3.0 boto3

and is found at .venv-ansible/bin/ansible-playbook unless --ansible-playbook says otherwise.
Without it, the product's own ratios are printed: create N / create 1 (target <= 4) and
terminate N / terminate 1 (target <= 1.5); with it, each step's ratio to Ansible's (targets:
create N and terminate N <= 0.8). -Q's target is 1.0 s. Whole processes are timed, wall and
CPU (the command and its children), with a salt-master running (salt-cloud fires its events
to it) and the load average at the start and the end. Nothing is deployed (moto's addresses
are not real). Timings on a shared machine are noisy: compare the ratios of one run.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tools import cloud_harness as harness
from tools import ec2_endpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = REPO_ROOT / ".venv-ansible" / "bin" / "ansible-playbook"
STEPS = ("query", "create 1", "terminate 1", "create N", "terminate N")


def timed(command, cwd, env):
    """(wall seconds, CPU seconds) of one command; raise if it failed."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall, after = time.monotonic() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{result.stdout}{result.stderr}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


class SaltCloud:
    title = "salt-cloud"

    def __init__(self, work, endpoint):
        self.root = harness.copy_config(work / "salt", REPO_ROOT)
        self.master = harness.SaltMaster(self.root)
        self.cli = harness.CloudCLI.for_endpoint(self.root, endpoint)

    def command(self, step, run, nodes):
        names = [f"s{run}-{i}" for i in range(nodes)]
        map_file = self.root / f"fleet{run}.map"
        map_file.write_text(yaml.safe_dump({"backends": names}))
        salt_cloud = [str(harness.BIN_DIR / "salt-cloud")]
        return (
            salt_cloud
            + {
                "query": ["-Q"],
                "create 1": ["-p", "backends", f"s{run}-one", "--no-deploy"],
                "terminate 1": ["-d", f"s{run}-one", "-y"],
                "create N": ["-m", str(map_file), "-P", "-y", "--no-deploy"],
                "terminate N": ["-d", *names, "-y"],
            }[step]
        )

    def run(self, step, run, nodes):
        return timed(self.command(step, run, nodes), self.root, self.cli.env)

    def stop(self):
        self.cli.terminate_all()
        self.master.stop()


class Ansible:
    """The same steps as plays of amazon.aws.ec2_instance (its exact_count launches in one
    call), against the same endpoint and seeded names."""

    title = "ansible"

    def __init__(self, work, endpoint, playbook, names):
        self.work, self.playbook, self.names = work / "ansible", playbook, names
        self.work.mkdir()
        self.env = {
            **os.environ,
            **endpoint.env(),
            "ANSIBLE_PYTHON_INTERPRETER": str(playbook.parent / "python"),
            "ANSIBLE_LOCALHOST_WARNING": "False",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        }
        self.endpoint = endpoint

    def play(self, name, task):
        path = self.work / f"{name}.yml"
        play = {"hosts": "localhost", "gather_facts": False, "connection": "local", "tasks": task}
        path.write_text(yaml.safe_dump([play]))
        return path

    def instance(self, count, run, state="running"):
        common = {
            "region": self.endpoint.region,
            "endpoint_url": self.endpoint.url,
            "instance_type": "t3.small",
            "image_id": self.names["images"][0],
            "key_name": self.names["keyname"],
            "wait": True,
            "filters": {
                "tag:fleet": f"a{run}-{count}",
                "instance-state-name": ["pending", "running"],
            },
            "tags": {"fleet": f"a{run}-{count}", "class": "backends"},
        }
        if state == "running":
            return {**common, "exact_count": count, "name": f"a{run}-{count}"}
        return {**common, "state": "absent"}

    def run(self, step, run, nodes):
        count = 1 if step.endswith("1") else nodes
        if step == "query":
            task = [
                {
                    "amazon.aws.ec2_instance_info": {
                        "region": self.endpoint.region,
                        "endpoint_url": self.endpoint.url,
                    }
                }
            ]
        else:
            state = "absent" if step.startswith("terminate") else "running"
            task = [{"amazon.aws.ec2_instance": self.instance(count, run, state)}]
        path = self.play(f"{step.replace(' ', '-')}-{run}", task)
        return timed([str(self.playbook), "-i", "localhost,", str(path)], self.work, self.env)

    def stop(self):
        pass


def measure(tools, runs, nodes):
    times = {tool.title: {step: [] for step in STEPS} for tool in tools}
    for run in range(runs):
        for step in STEPS:
            for tool in tools:
                times[tool.title][step].append(tool.run(step, run, nodes))
    return times


def report(times, nodes, loads):
    median = {
        t: {s: statistics.median(w for w, _ in v) for s, v in steps.items()}
        for t, steps in times.items()
    }
    cpu = {
        t: {s: statistics.median(c for _, c in v) for s, v in steps.items()}
        for t, steps in times.items()
    }
    print(f"load average at the start {loads[0]}, at the end {loads[1]}")
    print(f"{'step':<14}" + "".join(f"{t + ' wall (cpu)':>24}" for t in median))
    for step in STEPS:
        label = step.replace("N", str(nodes))
        print(
            f"{label:<14}"
            + "".join(f"{median[t][step]:>15.2f} s ({cpu[t][step]:4.1f})" for t in median)
        )
    salt = median["salt-cloud"]
    print(f"-Q: {salt['query']:.2f} s (target <= 1.0)")
    print(f"create {nodes} / create 1: {salt['create N'] / salt['create 1']:.2f} (target <= 4)")
    print(
        f"terminate {nodes} / terminate 1: {salt['terminate N'] / salt['terminate 1']:.2f} "
        "(target <= 1.5)"
    )
    if "ansible" in median:
        for step in STEPS:
            ratio = salt[step] / median["ansible"][step]
            print(
                f"{step.replace('N', str(nodes))}: {ratio:.2f}x Ansible"
                + (" (target <= 0.8)" if step.endswith("N") else "")
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--ansible-playbook", type=Path, default=ANSIBLE_PLAYBOOK)
    args = parser.parse_args(argv)
    endpoint = ec2_endpoint.start(REPO_ROOT)
    with tempfile.TemporaryDirectory(prefix="ec2-fleet-") as work:
        tools = [SaltCloud(Path(work), endpoint)]
        try:
            if args.ansible_playbook.exists():
                names = ec2_endpoint.provider_names(REPO_ROOT)
                tools.append(Ansible(Path(work), endpoint, args.ansible_playbook, names))
            else:
                print(f"no Ansible at {args.ansible_playbook}: the product's own ratios only")
            # The first runs in a fresh config dir build caches: not counted.
            tools[0].run("create 1", "warm", 1)
            tools[0].run("terminate 1", "warm", 1)
            loads = [os.getloadavg()]
            times = measure(tools, args.runs, args.nodes)
            loads.append(os.getloadavg())
            report(times, args.nodes, [tuple(round(x, 2) for x in load) for load in loads])
        finally:
            for tool in tools:
                tool.stop()
            endpoint.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
