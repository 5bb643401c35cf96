"""The e2e tier: salt-cloud deploys into qemu VM nodes, highstate builds storage on a real kernel.

Needs the node image (bin/build-node-image, run by bin/setup: it needs network, the tests
have none). Stage timings of every node are printed at the end of the session.
"""

import logging
import os
from pathlib import Path

import pytest

from tools import stack as stack_module
from tools import vm

E2E_DIR = Path(__file__).resolve().parent


# A failing node test would otherwise print every EC2 call boto made, in full.
for noisy in ("botocore", "boto3", "urllib3"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
_TIMINGS: list[str] = []


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """Endpoint + master + config copy, shared by the nodes of every storage mode."""
    work = tmp_path_factory.mktemp("e2e")
    local = stack_module.Stack(work, log=lambda message: print(message, flush=True))
    try:
        # Both images must be built, unless DOCKERHOSTS_E2E_NODES picks nodes (a partial run).
        local.start(releases=() if os.environ.get("DOCKERHOSTS_E2E_NODES") else vm.RELEASES)
        yield local
    finally:
        try:
            local.close()
        finally:
            _TIMINGS.append(local.timer.report())


def pytest_terminal_summary(terminalreporter):
    for report in _TIMINGS:
        if report:
            terminalreporter.write_sep("-", "e2e stage timings")
            terminalreporter.write_line(report)
