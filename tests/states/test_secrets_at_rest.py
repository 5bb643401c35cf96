"""
Where decrypted secrets land, measured with a real GPG pillar: after a highstate that
re-creates the secret-holding container (so its environment is in play), a pillar refresh
and a `salt-call` run of the same minion logging at trace, every file under the master's and
the minion's root written during the measurement (caches, job cache, pillar cache, minion
data cache, logs at each level) and every event on the master's bus are searched for each
secret value (random per run). Other modules of this package ask for pillar on purpose
(`pillar.items`): such a request's return does land in the master's job cache and both
daemons' debug logs, like any job's return; it is an explicit request for the secrets.

The master runs with the repository's `master` settings (minion_data_cache off, pillar_cache
off); both daemons log to file at debug (salt-factories' default), the extra salt-call at
trace. Docker's own container config (dockerd's data root, outside these trees) must hold the
environment and is not searched.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import salt.version

pytestmark = pytest.mark.states

SALT_CALL = str(Path(sys.executable).with_name("salt-call"))
LOG_LEVEL = re.compile(rb"^\[[^]]*\]\[(?P<logger>[^] :]+)[^]]*\]\[(?P<level>[A-Z]+) *\]")
LEVELS_ALWAYS_ON = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "PROFILE")


def secret_hits(data, secrets):
    return sorted(name for name, value in secrets.items() if value.encode() in data)


def log_hits(path, secrets, offset=0):
    """{level: [secret names]} for the lines of a Salt log file from byte ``offset`` on
    (tracebacks count with the record they belong to)."""
    hits, level = {}, "UNKNOWN"
    for line in path.read_bytes()[offset:].splitlines():
        match = LOG_LEVEL.match(line)
        if match:
            level = match.group("level").decode()
            if level == "TRACE":  # which code logs it matters here
                level = f"TRACE {match.group('logger').decode()}"
        for name in secret_hits(line, secrets):
            hits.setdefault(level, set()).add(name)
    return {level: sorted(names) for level, names in hits.items()}


def log_sizes(root):
    return {str(p): p.stat().st_size for p in Path(root).rglob("*.log") if p.is_file()}


def where_secrets_are(root, secrets, since):
    """{relative path: what was found} for every file under ``root`` written after ``since``
    (the measurement's start: other test modules ask for pillar on purpose), and for the
    part of each log written after it."""
    found = {}
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        if path.suffix == ".log":
            hits = log_hits(path, secrets, since["logs"].get(str(path), 0))
        elif path.stat().st_mtime >= since["time"]:
            hits = secret_hits(path.read_bytes(), secrets)
        else:
            continue
        if hits:
            found[str(path.relative_to(root))] = hits
    return found


@pytest.fixture(scope="module")
def measured(node, salt_master, salt_factories):
    """Run the flows that handle secrets, then search everything."""
    bus = salt_factories.event_listener
    master_root, minion_root = salt_master.config["root_dir"], node.minion.config["root_dir"]
    since = {"time": time.time(), "logs": {**log_sizes(master_root), **log_sizes(minion_root)}}
    # Converge, then put a stale postgres in place, so the container state compares its
    # environment and re-creates it for real.
    node.cli.run("state.apply", minion_tgt=node.minion.id, _timeout=240)
    node.dockerd.cli("rm", "-f", "postgres")
    stale = ("--name", "postgres", "-e", "POSTGRES_PASSWORD=old", "postgres:16", "true")
    node.dockerd.cli("create", *stale)
    ret = node.cli.run("state.apply", minion_tgt=node.minion.id, _timeout=240)
    assert ret.returncode == 0, ret.stdout
    # The listener keeps events for two minutes: take them now.
    events = list(bus.get_events([(salt_master.id, "*")], after_time=since["time"]))
    node.cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=node.minion.id)
    trace_log = Path(node.minion.config["root_dir"]) / "trace-run.log"
    node.dockerd.cli("rm", "-f", "postgres")
    subprocess.run(
        [
            SALT_CALL,
            "-c",
            node.minion.config_dir,
            "--log-file",
            str(trace_log),
            "--log-file-level",
            "trace",
            "-l",
            "quiet",
            "state.apply",
        ],
        capture_output=True,
        check=False,
        timeout=300,
    )
    events += bus.get_events([(salt_master.id, "*")], after_time=since["time"])
    return {
        "state output": ret.stdout + json.dumps(ret.data),
        "master": where_secrets_are(master_root, node.secrets, since),
        "minion": where_secrets_are(minion_root, node.secrets, since),
        "events seen": len(events),
        "events": sorted(
            {e.tag for e in events if secret_hits(json.dumps(e.data).encode(), node.secrets)}
        ),
    }


def report(found):
    return json.dumps(found, indent=1, sort_keys=True)


def test_no_secret_in_state_output(measured):
    assert measured["state output"]
    for value in ("corpus-password",):  # a value that is not a secret: the check works
        assert value not in measured["state output"]


def test_no_secret_on_the_master_bus(measured):
    assert measured["events seen"] > 0
    assert measured["events"] == []


def test_no_secret_in_any_master_file(measured):
    """Pillar cache, minion data cache, job cache, keys, logs at debug: nothing. The master's
    settings that keep it so: minion_data_cache false and pillar_cache false (the repository's
    `master`), which the test master uses."""
    assert measured["master"] == {}, report(measured["master"])


def test_no_secret_in_the_minion_cache(measured):
    """The minion's cache directory (job cache, highstate.cache.p, pillar, files): nothing."""
    cache = {path: hits for path, hits in measured["minion"].items() if not path.endswith(".log")}
    assert cache == {}, report(cache)


def test_no_secret_in_minion_logs_at_debug(measured):
    logs = {
        path: {level: names for level, names in hits.items() if level in LEVELS_ALWAYS_ON}
        for path, hits in measured["minion"].items()
        if path.endswith(".log")
    }
    logs = {path: hits for path, hits in logs.items() if hits}
    assert logs == {}, report(logs)


# Salt 3007 logs each request payload at trace; the minion's `_master_tops` request carries
# its opts, decrypted pillar included. No option turns that off: never log at trace where
# secrets flow. Salt 3008 logs no secret at trace.
KNOWN_TRACE = (
    {"TRACE salt.channel.client"} if salt.version.__saltstack_version__.major < 3008 else set()
)


def test_trace_adds_only_known_places(measured):
    """A minion run logging at trace (a one-off salt-call of the same minion): beyond the
    docker module's debug lines (test above), secrets are only where Salt logs payloads."""
    trace = measured["minion"].get("trace-run.log", {})
    at_trace = {level for level in trace if level.startswith("TRACE")}
    assert at_trace <= KNOWN_TRACE, report(trace)
    assert set(trace) - at_trace <= {"DEBUG"}, report(trace)
