"""
A fleet of light minions converging through one master and through two (issue 21): 10, 50
and 100 minions (no Docker: tools/multimaster.py's light highstate, a file and a data step),
every master in its own network namespace with the shared store (redis-server) as
docs/multimaster.md sets them up. For each size and topology: the wall time of the first
converge of every minion (``salt -L <its minions> state.apply``, one command per master, run
at once), the masters' CPU seconds per node (every process of each master's process group,
from /proc), their resident memory after the converge, the minions' CPU seconds per node, the
"CPU floor" (masters' and minions' CPU seconds over the cores: the least wall time that work
allows here, where minions and masters share the cores), what a master and a minion spend
idle (CPU % over a 20 s window before the converge: a share of every per-node number that
grows with the wall time), and the load average. Then the
growth 10 -> 100 of wall time and of CPU per node (linear or better: wall time ratio <= 10,
CPU per node ratio <= 1).

    unshare --net sh -c 'ip link set lo up; exec .venv/bin/python -m bench.fleet'

The machine is shared: only ratios measured in one run on a quiet machine mean anything.
"""

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

from tools import multimaster

SIZES = (10, 50, 100)
# The minion settings docs/multimaster.md gives operators (the tier's 5 s check is for fast
# failover timings; here every minion shares this machine's cores, and each check is a job).
MINION_SETTINGS = {"master_alive_interval": 30}
IDLE_WINDOW = 20  # s
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def group_usage(pgids):
    """{pgid: (CPU seconds, resident bytes)} of every live process in each process group."""
    usage = dict.fromkeys(pgids, (0.0, 0))
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) in usage:
            cpu, rss = usage[int(fields[2])]
            ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
            usage[int(fields[2])] = (cpu + ticks / TICKS, rss + int(fields[21]) * PAGE)
    return usage


def idle_rates(masters, minions, seconds=IDLE_WINDOW):
    """CPU seconds per second of all ``masters`` and of all ``minions`` (process groups)
    while the fleet is up and idle."""
    before = group_usage([*masters, *minions])
    time.sleep(seconds)
    after = group_usage([*masters, *minions])

    def rate(pgids):
        return sum(after[p][0] - before[p][0] for p in pgids) / seconds

    return rate(masters), rate(minions)


def converge(fleet_, master, minions):
    code, data = fleet_.cli_json(
        master,
        "salt",
        "--static",
        "-t",
        "600",
        "-L",
        ",".join(minions),
        "state.apply",
        timeout=900,
    )
    good = [m for m, ret in (data or {}).items() if isinstance(ret, dict) and ret]
    good = [m for m in good if all(s.get("result") for s in data[m].values())]
    if sorted(good) != sorted(minions):
        raise RuntimeError(f"{master}: {len(minions) - len(good)} minions did not converge")
    return code


def measure(size, masters):
    names = [f"n{i:02d}" for i in range(1, size + 1)]
    reverse = names[size // 2 :] if masters == 2 else ()
    with multimaster.fleet(
        masters=2,
        minions=size,
        groups=max(1, size // 25),
        reverse_order=reverse,
        minion_extra=MINION_SETTINGS,
        start_timeout=10 * size,  # 100 minions authenticating on 2 cores take minutes
    ) as fleet_:
        # The CLI asks the minions that have not returned yet whether they still run the job;
        # on a loaded machine a busy minion answers later than the default 10 s and would be
        # dropped from the output although it converges. The CLI reads this from the master's
        # file (set once the fleet is up: the start's short pings must not wait for it).
        for daemon in fleet_.masters.values():
            with open(daemon.config_dir / "master", "a", encoding="utf-8") as config:
                config.write("gather_job_timeout: 120\n")
        plan = {"m1": [n for n in names if n not in reverse], "m2": list(reverse)}
        plan = {master: minions for master, minions in plan.items() if minions}
        pgids = {name: daemon.process.pid for name, daemon in fleet_.masters.items()}
        minions = [daemon.process.pid for daemon in fleet_.minions.values()]
        idle_master, idle_minion = idle_rates(list(pgids.values()), minions)
        before = group_usage([*pgids.values(), *minions])
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(plan)) as pool:
            list(pool.map(lambda item: converge(fleet_, *item), plan.items()))
        wall = time.monotonic() - started
        after = group_usage([*pgids.values(), *minions])
        cpu = sum(after[pgids[name]][0] - before[pgids[name]][0] for name in plan)
        rss = sum(after[pgids[name]][1] for name in plan)
        minion_cpu = sum(after[pgid][0] - before[pgid][0] for pgid in minions)
    return {
        "minions": size,
        "masters": masters,
        "wall": wall,
        "cpu_per_node": cpu / size,
        "minion_cpu_per_node": minion_cpu / size,
        # What the processes spend when nothing runs (CPU s per s): each master's and each
        # minion's share of the per-node numbers above is this rate times the wall time.
        "idle_master": idle_master / len(pgids),
        "idle_minion": idle_minion / size,
        # The least wall time the CPU work allows on this machine's cores.
        "cpu_floor": (cpu + minion_cpu) / os.cpu_count(),
        "rss_mib": rss / 2**20,
        "load": os.getloadavg(),
    }


def report(rows):
    print(
        f"{'minions':>8}{'masters':>9}{'wall s':>9}{'CPU floor s':>13}{'master CPU s/node':>19}"
        f"{'minion CPU s/node':>19}{'idle CPU % master':>19}{'idle CPU % minion':>19}"
        f"{'RSS MiB':>9}  load avg"
    )
    for row in rows:
        load = " ".join(f"{value:.2f}" for value in row["load"])
        print(
            f"{row['minions']:>8}{row['masters']:>9}{row['wall']:>9.1f}{row['cpu_floor']:>13.1f}"
            f"{row['cpu_per_node']:>19.3f}{row['minion_cpu_per_node']:>19.3f}"
            f"{100 * row['idle_master']:>19.2f}{100 * row['idle_minion']:>19.2f}"
            f"{row['rss_mib']:>9.0f}  {load}"
        )
    by = {(row["minions"], row["masters"]): row for row in rows}
    small, large = min(r["minions"] for r in rows), max(r["minions"] for r in rows)
    for masters in (1, 2):
        if (small, masters) in by and (large, masters) in by and small != large:
            a, b = by[(small, masters)], by[(large, masters)]
            print(
                f"{masters} master(s), {small} -> {large} minions:"
                f" wall x{b['wall'] / a['wall']:.2f}"
                f" (linear: x{large / small:.0f}), CPU per node"
                f" x{b['cpu_per_node'] / a['cpu_per_node']:.2f} (linear or better: <= 1)"
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args(argv)
    import salt.version  # noqa: PLC0415 - only to say which Salt ran

    print(f"Salt {salt.version.__version__}, load average {os.getloadavg()}", flush=True)
    rows = []
    for size in args.sizes:
        for masters in (1, 2):
            rows.append(measure(size, masters))
            print(rows[-1], flush=True)
    report(rows)


if __name__ == "__main__":
    main()
