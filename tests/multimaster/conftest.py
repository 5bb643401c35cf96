"""
Two masters sharing one fleet, as docs/multimaster.md sets them up: failover multi-master,
the same master key on both, ``master.d/multimaster.conf`` (the shared store: Debian's
``redis-server``; the resume schedule) on both, each master in its own network namespace,
the store in another, four light minions (no Docker: a file, a slow step, one data-changing
step) each in its own. n01 and n02 list m1 first, n03 and n04 list m2 first: each master is
the active one for half of the fleet (tools/multimaster.py). n05 lists m1 first and only m1
has its key, as for a node created through m1 after m2 joined.
"""

import shutil
import time
from pathlib import Path

import pytest
import yaml

from tools import multimaster

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMINGS = {}
# The slow step of a first converge: the window in which a master is killed.
SLOW_STEP = 12
# The tier runs the resume schedule every few seconds (the fragment: every 30 s).
RESUME_EVERY = 3
# A dead master's locks lapse after this (the fragment's default: 30 s).
LEASE = 10
SEED_RECORDS = (
    "for name in {names!r}:\n"
    "    nodes.update(opts, name, key=nodes.key_fingerprint(opts, name), **{{'class': 'light'}},\n"
    "                 source='salt-cloud', state='deployed')\n"
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "multimaster: two salt-masters in network namespaces sharing a Redis store, light "
        "minions failing over between them (minutes)",
    )


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/multimaster/" in str(item.fspath):
            item.add_marker(pytest.mark.multimaster)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_line(
            "multimaster tier: "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in TIMINGS.items())
        )


def fragment():
    """master.d/multimaster.conf as shipped, with this tier's store address and schedule."""
    settings = yaml.safe_load((REPO_ROOT / "master.d" / "multimaster.conf").read_text())
    settings["schedule"]["dockerhosts-resume-converges"]["seconds"] = RESUME_EVERY
    settings["dockerhosts_lock_lease"] = LEASE
    return settings


@pytest.fixture(scope="module")
def fleet():
    if not shutil.which(multimaster.REDIS):
        pytest.fail("redis-server is not installed: apt-get install redis-server (bin/setup)")
    started = time.monotonic()
    settings = fragment()
    with multimaster.fleet(
        masters=2,
        minions=5,
        pillar={"light_sleep": SLOW_STEP},
        master_extra={k: v for k, v in settings.items() if not k.startswith("cache.redis.host")},
        reverse_order=("n03", "n04"),
        late=("n05",),  # salt-cloud on m1 created it after m2 had joined: only m1 has its key
    ) as running:
        TIMINGS["up"] = time.monotonic() - started
        # What salt-cloud records as it deploys a node: class, bound to the accepted key.
        code, output = running.python("m1", SEED_RECORDS.format(names=sorted(running.minions)))
        assert code == 0, output
        yield running
