"""Fixtures and guards shared by every test tier."""

import logging
import signal
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_sessionstart(session):
    # Tests start daemons that listen and connect; they must never reach another host.
    # bin/test runs them in a network namespace with only `lo`: refuse anything else.
    # if_nameindex asks the kernel for this namespace's interfaces (/sys/class/net does not
    # follow `unshare --net` unless sysfs is remounted).
    interfaces = {name for _, name in socket.if_nameindex()}
    if interfaces != {"lo"}:
        pytest.exit(
            "tests must run in a private network namespace with only `lo`"
            f" (found {sorted(interfaces)}): run them through bin/test",
            returncode=3,
        )


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # SIGTERM (CI timeouts, `kill`) ends the run like Ctrl-C does: pytest then tears the
    # fixtures down, so the daemons, namespaces and loop devices they started are removed.
    signal.signal(signal.SIGTERM, _interrupt)


def pytest_unconfigure(config):
    # Salt's log handlers flush records forwarded by the test daemons at interpreter exit,
    # after pytest closed its streams; each would print a "--- Logging error ---" traceback.
    # Those records are in the daemons' own logs already.
    logging.raiseExceptions = False


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def salt_factories_default_root_dir(tmp_path_factory):
    # The default is /tmp/<id> plus /tmp/scripts: keep everything under pytest's tmp dir.
    return tmp_path_factory.mktemp("salt-factories")


@pytest.fixture(scope="session")
def salt_factories_config():
    # slow_stop makes each daemon teardown take ~15 s longer for nothing.
    return {"slow_stop": False}
