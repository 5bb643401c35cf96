"""The README's "first node by hand" block, run as written in a fresh copy of the checkout:
`bin/demo --hold` in the background (as the README's first shell), then each later line in
`bin/demo --shell` (the second shell), each exiting 0 without a traceback; the node is
converged and runs Docker, and after `salt-cloud -d` the demo removed its VM. Ctrl-C to the
holding demo removes everything, its hold file included."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tools import processes
from tools.checkout_master import copy_checkout
from tools.readme import readme_block

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
UP = "The local EC2 endpoint and salt-master are up"


@pytest.fixture
def checkout(tmp_path_factory):
    root = copy_checkout(tmp_path_factory.mktemp("rd"))
    for venv in (".venv", ".venv-salt3007"):
        (root / venv).symlink_to(os.path.realpath(REPO_ROOT / venv))
    return root


def wait_for(log, text, process, timeout):
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"no {text!r}\n" + log.read_text()[-3000:]
        time.sleep(1)


def test_first_node_by_hand_block_runs_as_written(checkout):
    lines = readme_block("bin/demo --hold")
    assert lines[:2] == ["bin/demo --hold", "bin/demo --shell"], lines
    log = checkout / "demo-hold.out"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            lines[0].split(), cwd=checkout, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for(log, UP, demo, 600)
        said = {}
        for line in lines[2:]:
            started = time.monotonic()
            ran = subprocess.run(
                [*lines[1].split(), "bash", "-ec", line],
                cwd=checkout,
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            )
            assert ran.returncode == 0, f"{line}\n{ran.stdout[-3000:]}{ran.stderr[-3000:]}"
            assert "Traceback" not in ran.stdout + ran.stderr, line
            said[line.split()[0] + " " + line.split()[1]] = ran.stdout
            print(f"README by hand: {line}: {time.monotonic() - started:.0f} s", flush=True)
        assert "CONTAINER ID" in said["salt web1"], said
        assert "converged" in said["salt-run node.wait_converged"], said
        wait_for(log, "web1: instance", demo, 60)
        wait_for(log, "is gone: its VM was removed", demo, 120)
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        processes.wait_or_kill(demo, 180)
    assert demo.returncode == 130, log.read_text()[-3000:]  # as after Ctrl-C in a terminal
    assert not (checkout / ".salt" / "demo-hold.env").exists()
