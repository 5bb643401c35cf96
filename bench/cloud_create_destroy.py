"""Wall time of salt-cloud create and destroy with the boto3_ec2 driver, real CLI, local moto.

    .venv/bin/python -m bench.cloud_create_destroy [--runs 5] [--nodes 20] [--profile]

Starts a local EC2 endpoint (moto on 127.0.0.1) with a request-counting proxy in front of it
and a salt-master, from a temporary copy of the repository's salt-cloud config, then times
whole `salt-cloud` processes, interleaved so that a change in the machine's load hits every
measurement alike:

- `-Q` (a query: salt-cloud's fixed cost), create one node (`-p backends NAME --no-deploy`),
  destroy it (`-d NAME -y`), --runs times;
- --nodes nodes over two classes: created with `-m MAP -P`, destroyed with `-d N1 N2 ... -y`
  (one process), created again and destroyed with `-d -m MAP -P` (one worker per node),
  --fleet-runs times.

It prints medians, the ratios the driver is held to (terminate N / terminate 1, create N /
create 1), and the EC2 API requests of each.  --profile adds where salt-cloud's main process
spends its time in -Q, a create and a destroy (cProfile), by phase.  --compare FILE runs
another version of the driver alongside (its own config copy and master; e.g.
`git show OLD:salt/_clouds/boto3_ec2.py > old.py`), its single-node runs interleaved with
this one's.  Each run's CPU time (salt-cloud and its workers) is reported next to its wall
time: on a busy machine it moves less.

Nothing listens beyond 127.0.0.1 and nothing is deployed (moto's addresses are not real).
Timings on a shared machine are noisy: compare the ratios of one run, not runs.
"""

import argparse
import pstats
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
from tools.fault_proxy import FaultProxy

REPO_ROOT = Path(__file__).resolve().parents[1]
SALT_CLOUD = str(harness.BIN_DIR / "salt-cloud")
# Phases of a salt-cloud run, by the function that bounds them in its main process.
PHASES = (
    ("import salt (salt.cloud, salt.cloud.cli)", "salt/cloud/__init__.py", "<module>"),
    (
        "config and the cloud loader (incl. the driver's import and warm-up)",
        "salt/cloud/__init__.py",
        "__init__",
    ),
    ("  of which: the driver loads the EC2 model and makes a client", "boto3_ec2.py", "_warm_up"),
    (
        "list nodes in a worker process (core's existence check / -Q)",
        "salt/cloud/__init__.py",
        "map_providers_parallel",
    ),
    ("the driver's create", "boto3_ec2.py", "create"),
    ("  of which: EC2 reads before the launch", "boto3_ec2.py", "_check_launch_inputs"),
    ("  of which: RunInstances", "boto3_ec2.py", "_launch"),
    ("  of which: race checks", "boto3_ec2.py", "_resolve_race"),
    ("  of which: waiting for running", "boto3_ec2.py", "_await_running"),
    ("  of which: events to the master", "boto3_ec2.py", "_fire"),
    ("the driver's batch destroy", "boto3_ec2.py", "_destroy_names"),
    ("output", "salt/output/__init__.py", "display_output"),
)


class Bench:
    """One driver's salt-cloud runs: wall and CPU seconds, and the EC2 requests of each."""

    def __init__(self, title, root, endpoint, prefix):
        self.title = title
        self.prefix = prefix
        self.proxy = FaultProxy(endpoint.url).start()
        self.cli = harness.CloudCLI.for_endpoint(root, endpoint).via(self.proxy.url)
        self.master = harness.SaltMaster(root)
        self.times, self.cpu, self.requests = {}, {}, {}

    def run(self, label, *args):
        before = len(self.proxy.log)
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = self.cli.run(*args)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            raise SystemExit(f"salt-cloud {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        self.times.setdefault(label, []).append(result.seconds)
        cpu = (after.ru_utime - used.ru_utime) + (after.ru_stime - used.ru_stime)
        self.cpu.setdefault(label, []).append(cpu)
        self.requests[label] = len(self.proxy.log) - before
        return result

    def median(self, label, cpu=False):
        return statistics.median((self.cpu if cpu else self.times)[label])

    def stop(self):
        self.cli.terminate_all()
        self.master.stop()
        self.proxy.stop()


def single_nodes(benches, runs):
    """-Q, create 1, destroy 1, the benches' runs interleaved."""
    for bench in benches:
        # salt-cloud's first run in a fresh config dir also builds its caches: not counted.
        bench.cli.run("-p", "backends", f"{bench.prefix}-warm", "--no-deploy")
        bench.cli.run("-d", f"{bench.prefix}-warm", "-y")
    for run in range(runs):
        for label, args in (
            ("query (-Q)", ("-Q",)),
            ("create 1 (-p)", ("-p", "backends", "{name}", "--no-deploy")),
            ("destroy 1 (-d)", ("-d", "{name}", "-y")),
        ):
            for bench in benches:
                name = f"{bench.prefix}-{run}"
                bench.run(label, *(arg.format(name=name) for arg in args))
    for bench in benches:
        if bench.cli.instances([f"{bench.prefix}-{run}" for run in range(runs)]):
            raise SystemExit(f"{bench.title}: a node was not destroyed")


def fleet(bench, work_dir, size):
    names = [f"{bench.prefix}-map-{index:02d}" for index in range(size)]
    map_file = Path(work_dir) / f"{bench.prefix}.map"
    map_file.write_text(
        yaml.safe_dump({"backends": names[: size // 2], "dataserver": names[size // 2 :]})
    )
    bench.run(f"create {size} (-m -P)", "-m", str(map_file), "-P", "-y", "--no-deploy")
    if len(bench.cli.instances(names)) != size:
        raise SystemExit("the map did not create every node")
    bench.run(f"destroy {size} (-d names)", "-d", *names, "-y")
    bench.run(f"create {size} (-m -P)", "-m", str(map_file), "-P", "-y", "--no-deploy")
    bench.run(f"destroy {size} (-d -m -P)", "-d", "-m", str(map_file), "-P", "-y")
    if bench.cli.instances(names):
        raise SystemExit("the map's nodes were not all destroyed")


def profile_phases(cli, label, *args):
    """cProfile of salt-cloud's main process: seconds per phase (cProfile slows it ~1.5x)."""
    out = Path(tempfile.mkdtemp(prefix="bench-prof-")) / "prof"
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(out), SALT_CLOUD, *args],
        cwd=cli.root,
        env=cli.env,
        capture_output=True,
        check=True,
    )
    wall = time.monotonic() - started
    stats = pstats.Stats(str(out)).stats
    rows = []
    for phase, path, function in PHASES:
        # The outermost of same-named functions (Map.__init__ holds Cloud.__init__).
        seconds = max(
            (
                value[3]
                for (file, _, name), value in stats.items()
                if file.endswith(path) and name == function
            ),
            default=0,
        )
        if seconds >= 0.005:
            rows.append((phase, seconds))
    return label, wall, rows


def report(bench, size):
    print(f"\n{bench.title}")
    print("| salt-cloud run (whole process) | median s | median CPU s | runs | EC2 API requests |")
    print("| --- | --- | --- | --- | --- |")
    for label, values in bench.times.items():
        print(
            f"| {label} | {bench.median(label):.2f} | {bench.median(label, cpu=True):.2f} "
            f"| {len(values)} | {bench.requests[label]} |"
        )
    print()
    print("| ratio | wall | CPU |")
    print("| --- | --- | --- |")
    for many, one in (
        (f"destroy {size} (-d names)", "destroy 1 (-d)"),
        (f"destroy {size} (-d -m -P)", "destroy 1 (-d)"),
        (f"create {size} (-m -P)", "create 1 (-p)"),
        ("query (-Q)", "destroy 1 (-d)"),
    ):
        wall = bench.median(many) / bench.median(one)
        cpu = bench.median(many, cpu=True) / bench.median(one, cpu=True)
        print(f"| {many} / {one} | {wall:.2f} | {cpu:.2f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="single-node create/destroy runs")
    parser.add_argument("--nodes", type=int, default=20, help="nodes in the fleet")
    parser.add_argument("--fleet-runs", type=int, default=3, help="fleet create/destroy runs")
    parser.add_argument("--profile", action="store_true", help="profile -Q, -p and -d by phase")
    parser.add_argument("--compare", type=Path, help="another boto3_ec2.py to run alongside")
    args = parser.parse_args(argv)

    version = subprocess.run(
        [SALT_CLOUD, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="cloud-bench-") as work_dir:
        endpoint = ec2_endpoint.start(REPO_ROOT)
        benches, profiles = [], []
        try:
            roots = {"this driver": (harness.copy_config(Path(work_dir) / "this"), "bench")}
            if args.compare:
                other = harness.copy_config(Path(work_dir) / "other")
                (other / "salt" / "_clouds" / "boto3_ec2.py").write_text(args.compare.read_text())
                roots[f"compared: {args.compare}"] = (other, "other")
            for title, (root, prefix) in roots.items():
                benches.append(Bench(title, root, endpoint, prefix))
            single_nodes(benches, args.runs)
            for _ in range(args.fleet_runs):
                for bench in benches:
                    fleet(bench, work_dir, args.nodes)
            if args.profile:
                cli = benches[0].cli
                profiles.append(profile_phases(cli, "-Q", "-Q"))
                profiles.append(profile_phases(cli, "-p", "-p", "backends", "prof1", "--no-deploy"))
                profiles.append(profile_phases(cli, "-d", "-d", "prof1", "-y"))
        finally:
            for bench in benches:
                bench.stop()
            endpoint.stop()

    print(f"{version}, salt-master on, moto on 127.0.0.1 behind a counting proxy")
    for bench in benches:
        report(bench, args.nodes)
    for label, wall, rows in profiles:
        print(f"\nsalt-cloud {label}: {wall:.2f} s under cProfile, main process by phase")
        print("| phase | s |")
        print("| --- | --- |")
        for phase, seconds in rows:
            print(f"| {phase} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
