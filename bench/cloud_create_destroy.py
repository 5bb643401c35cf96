"""Wall time of salt-cloud create and destroy with the boto3_ec2 driver, real CLI, local moto.

    .venv/bin/python -m bench.cloud_create_destroy [--runs 5] [--map-size 20] [--no-master]

Starts a local EC2 endpoint (moto on 127.0.0.1) and a salt-master from a temporary copy of
the repository's salt-cloud config, then times whole `salt-cloud` processes:

- create one node (`-p backends NAME --no-deploy`) and destroy it (`-d NAME -y`), --runs
  times, median and range (after one first run, reported apart);
- a map of --map-size nodes over two classes, created with `-m MAP -P` and destroyed with
  `-d -m MAP -P`.

--no-master skips the salt-master, to show what salt-cloud's event timeouts cost.
Nothing listens beyond 127.0.0.1 and nothing is deployed (moto's addresses are not real).
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

from tools import cloud_harness as harness
from tools import ec2_endpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


def timed(cli, *args):
    result = cli.run(*args)
    if result.returncode != 0:
        raise SystemExit(f"salt-cloud {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.seconds


def single_nodes(cli, runs):
    # salt-cloud's first run in a fresh config dir also builds its caches: timed apart.
    first = timed(cli, "-p", "backends", "bench-first", "--no-deploy")
    timed(cli, "-d", "bench-first", "-y")
    creates, destroys = [], []
    for run in range(runs):
        name = f"bench-{run}"
        creates.append(timed(cli, "-p", "backends", name, "--no-deploy"))
        if len(cli.instances(name)) != 1:
            raise SystemExit(f"{name} was not created")
        destroys.append(timed(cli, "-d", name, "-y"))
        if cli.instances(name):
            raise SystemExit(f"{name} was not destroyed")
    return first, creates, destroys


def node_map(cli, work_dir, size):
    names = [f"bench-map-{index:02d}" for index in range(size)]
    map_file = Path(work_dir) / "bench.map"
    map_file.write_text(
        yaml.safe_dump({"backends": names[: size // 2], "dataserver": names[size // 2 :]})
    )
    create = timed(cli, "-m", str(map_file), "-P", "-y", "--no-deploy")
    live = {node["InstanceId"] for name in names for node in cli.instances(name)}
    if len(live) != size:
        raise SystemExit(f"the map created {len(live)} of {size} nodes")
    destroy = timed(cli, "-d", "-m", str(map_file), "-P", "-y")
    if cli.live_count():
        raise SystemExit("the map's nodes were not all destroyed")
    return create, destroy


def row(label, values):
    if len(values) == 1:
        return f"| {label} | {values[0]:.2f} | - | 1 |"
    return (
        f"| {label} | {statistics.median(values):.2f} | "
        f"{min(values):.2f}-{max(values):.2f} | {len(values)} |"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="single-node create/destroy runs")
    parser.add_argument("--map-size", type=int, default=20, help="nodes in the map")
    parser.add_argument("--no-master", action="store_true", help="run without a salt-master")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cloud-bench-") as work_dir:
        root = harness.copy_config(Path(work_dir) / "config")
        endpoint = ec2_endpoint.start(REPO_ROOT)
        master = None
        cli = harness.CloudCLI.for_endpoint(root, endpoint)
        try:
            master = None if args.no_master else harness.SaltMaster(root)
            first, creates, destroys = single_nodes(cli, args.runs)
            map_create, map_destroy = node_map(cli, work_dir, args.map_size)
        finally:
            cli.terminate_all()
            if master:
                master.stop()
            endpoint.stop()

    salt_version = harness.subprocess.run(
        [str(harness.BIN_DIR / "salt-cloud"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(f"{salt_version}, salt-master {'off' if args.no_master else 'on'}, moto on 127.0.0.1")
    print("| salt-cloud run (whole process) | median s | range s | runs |")
    print("| --- | --- | --- | --- |")
    print(row("create 1 node (-p), first run in a fresh config dir", [first]))
    print(row("create 1 node (-p)", creates))
    print(row("destroy 1 node (-d)", destroys))
    print(row(f"create {args.map_size}-node map (-m -P)", [map_create]))
    print(row(f"destroy {args.map_size}-node map (-d -m -P)", [map_destroy]))
    print(row(f"  per node, create map of {args.map_size}", [map_create / args.map_size]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
