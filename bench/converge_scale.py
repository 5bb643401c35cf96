"""
Container converge at scale, on a real salt-master, salt-minion and private dockerd
(tools/container_env.py): first-converge and no-op times of ``salt <node> state.apply docker``
(whole CLI process, as an operator runs it) for 2, 10, 30 and 60 managed containers, and for 2
managed beside 60 unmanaged ones; then the dataserver class's no-op highstate against
``salt <node> test.ping``, with Salt's per-highstate module sync on (default) and off
(``autoload_dynamic_modules: False``). Prints a table and the ratios the issue asks for.
Every command is the ``salt`` CLI as an operator types it: one job (``--static`` would make the
CLI ping the target first, a second job per command).

    sudo unshare --net sh -c 'ip link set lo up; .venv/bin/python -m bench.converge_scale'

Run it with .venv (Salt 3008) and .venv-salt3007 (Salt 3007). Only ratios measured in one run
mean anything on a shared machine.
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import docker
import yaml

from tools.container_env import running_env

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE = "bench-node"
NO_SYNC_NODE = "bench-nosync"
SCALES = (2, 10, 30, 60)
UNMANAGED = 60
SECRETS = ("postgres_user", "postgres_password", "postgres_db")


def containers(count):
    return {
        f"app{index:02d}": {
            "image": "busybox:latest",
            "command": ["httpd", "-f", "-p", "8080"],
            "init": True,
            "labels": {"bench": "yes"},
            "restart_policy": "unless-stopped",
        }
        for index in range(count)
    }


def timed(function, *args):
    started = time.monotonic()
    result = function(*args)
    return time.monotonic() - started, result


def median_of(runs, function, *args):
    return statistics.median(timed(function, *args)[0] for _ in range(runs))


def apply_ok(env, minion, *args):
    code, states, output = env.salt.apply(minion, *args, static=False)
    bad = {k: v["comment"] for k, v in (states or {}).items() if v["result"] is False}
    if code != 0 or states is None or bad:
        raise RuntimeError(f"state.apply failed on {minion}: {bad or output[-2000:]}")
    return states


def ping_ok(env, minion):
    code, data, output = env.salt.salt(minion, "test.ping", static=False)
    if code != 0 or (data or {}).get(minion) is not True:
        raise RuntimeError(f"test.ping failed on {minion}: {output[-2000:]}")


def remove_all(env, minion):
    dockerd = env.dockerds[minion]
    names = dockerd.container_names()
    if names:
        dockerd.cli("rm", "-f", *names)


def unmanaged_containers(env, count):
    """Create ``count`` containers the pillar does not know (removed again when 0)."""
    api = docker.APIClient(base_url=env.dockerds[NODE].url)
    for item in api.containers(all=True, filters={"name": "^/other"}):
        api.remove_container(item["Id"], force=True)
    for index in range(count):
        api.create_container("busybox:latest", ["true"], name=f"other{index:02d}")


def scale_row(env, count, runs, unmanaged=0):
    remove_all(env, NODE)
    unmanaged_containers(env, unmanaged)
    env.write_pillar(NODE, {"docker": {"containers": containers(count)}})
    first, _ = timed(apply_ok, env, NODE, "docker")
    states = apply_ok(env, NODE, "docker")
    changed = [key for key, value in states.items() if value["changes"]]
    if changed:
        raise RuntimeError(f"second run changed {changed}")
    noop = median_of(runs, apply_ok, env, NODE, "docker")
    in_states = sum(value["duration"] for value in states.values()) / 1000
    label = f"{count} managed" + (f" + {unmanaged} unmanaged" if unmanaged else "")
    print(f"  {label}: first {first:.2f} s, no-op {noop:.2f} s", flush=True)
    return {"case": label, "first": first, "noop": noop, "in_states": in_states}


def unmanaged_pair(env, runs):
    """No-op with 2 managed containers, alone and beside 60 unmanaged, measured in turns so
    that the machine's load drifts alike for both."""
    alone, beside = [], []
    for _ in range(runs):
        unmanaged_containers(env, 0)
        alone.append(timed(apply_ok, env, NODE, "docker")[0])
        unmanaged_containers(env, UNMANAGED)
        beside.append(timed(apply_ok, env, NODE, "docker")[0])
    unmanaged_containers(env, 0)
    return statistics.median(alone), statistics.median(beside)


def dataserver_pillar(port):
    data = yaml.safe_load((REPO_ROOT / "pillar" / "dataserver.sls").read_text())
    postgres = data["docker"]["containers"]["postgres"]
    postgres.update(
        command=["httpd", "-f", "-p", "5432", "-h", "/"],
        init=True,
        log_driver="json-file",
        log_opt={"max-size": "1m"},
        port_bindings=[f"127.0.0.1:{port}:5432"],
    )
    data["node_class"] = "dataserver"
    return data


def highstate_rows(env, runs):
    rows = []
    for port, minion in enumerate((NODE, NO_SYNC_NODE), start=35432):
        remove_all(env, minion)
        env.write_pillar(minion, dataserver_pillar(port))
        apply_ok(env, minion)
        apply_ok(env, minion)
        pings, highstates = [], []
        for _ in range(runs):  # in turns, so that load drifts alike for both
            pings.append(timed(ping_ok, env, minion)[0])
            highstates.append(timed(apply_ok, env, minion)[0])
        ping, highstate = statistics.median(pings), statistics.median(highstates)
        rows.append({"minion": minion, "ping": ping, "highstate": highstate})
    return rows


def report(rows, pair, highstates):
    print(f"{'case':<28}{'first converge':>16}{'no-op':>10}{'no-op in states':>18}")
    for row in rows:
        print(
            f"{row['case']:<28}{row['first']:>14.2f} s{row['noop']:>8.2f} s"
            f"{row['in_states']:>16.2f} s"
        )
    by_case = {row["case"]: row for row in rows}
    print()
    ratio = by_case["60 managed"]["noop"] / by_case["2 managed"]["noop"]
    print(f"no-op 60 / no-op 2 = {ratio:.2f}  (target <= 3)")
    print(
        f"no-op 2 + {UNMANAGED} unmanaged / no-op 2, in turns: {pair[1]:.2f} s / {pair[0]:.2f} s"
        f" = {pair[1] / pair[0]:.2f}  (target <= 1.10)"
    )
    for row in highstates:
        sync = "module sync off" if row["minion"] == NO_SYNC_NODE else "module sync on (default)"
        print(
            f"dataserver no-op highstate / test.ping, {sync}: {row['highstate']:.2f} s / "
            f"{row['ping']:.2f} s = {row['highstate'] / row['ping']:.2f}  (target <= 2)"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="no-op runs per case (median)")
    args = parser.parse_args(argv)
    import salt.version  # noqa: PLC0415 - only to say which Salt ran

    print(f"Salt {salt.version.__version__}")
    # The daemons cache their modules' bytecode, as salt-minion does on a node (a shell that
    # sets PYTHONDONTWRITEBYTECODE would make every job compile the formula's modules again).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    grains = {"grains": {"class": "dataserver"}}
    extra = {NODE: grains, NO_SYNC_NODE: {**grains, "autoload_dynamic_modules": False}}
    with running_env([NODE, NO_SYNC_NODE], minion_extra_by_id=extra) as env:
        env.write_secrets({name: f"{name}-bench" for name in SECRETS})
        rows = [scale_row(env, count, args.runs) for count in SCALES]
        rows.append(scale_row(env, 2, args.runs, unmanaged=UNMANAGED))
        pair = unmanaged_pair(env, args.runs)
        highstates = highstate_rows(env, args.runs)
        remove_all(env, NODE)
        remove_all(env, NO_SYNC_NODE)
    report(rows, pair, highstates)


if __name__ == "__main__":
    main()
