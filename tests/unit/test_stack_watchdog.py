"""bin/demo's stack (tools/stack.py): a wait on salt-cloud or on the converge ends as soon as
the node's VM dies, and the teardown stops every process the stack started, also those that
left its process group (the reactor's converge runs detached from the master)."""

import os
import subprocess
import sys
import time

import pytest

from tools import stack, vm


class FakeVM:
    """Stands for tools.vm.Node: a process playing qemu."""

    name = "web1"

    def __init__(self, seconds):
        self.process = subprocess.Popen(["sleep", str(seconds)])

    def running(self):
        return self.process.poll() is None

    def console_tail(self):
        return "--- console: (fake)"


def test_a_dead_vm_ends_the_wait_at_once():
    node = FakeVM(1)
    waiting = subprocess.Popen(["sleep", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = time.monotonic()
    with pytest.raises(vm.NodeError, match="web1: its VM died"):
        stack._communicate_while_running(waiting, node, timeout=60)
    assert time.monotonic() - started < 10
    assert waiting.poll() is not None  # the waiting command was stopped too


def test_the_wait_returns_what_the_command_printed_while_the_vm_runs():
    node = FakeVM(30)
    try:
        done = subprocess.Popen(
            ["sh", "-c", "echo out; echo err >&2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert stack._communicate_while_running(done, node, timeout=30) == ("out\n", "err\n")
    finally:
        node.process.kill()
        node.process.wait()


def test_teardown_stops_marked_processes_that_left_the_group(tmp_path):
    marker = str(tmp_path)
    env = {**os.environ, stack.STACK_MARKER: marker}
    # A daemon the way Salt makes one: a new session, its parent gone.
    launcher = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, subprocess; "
            "p = subprocess.Popen(['sleep', '300'], start_new_session=True, "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(launcher.stdout)
    assert stack._marked_pids(marker) == [pid]
    stack._stop_marked_processes(marker, grace=5)
    assert stack._marked_pids(marker) == []
    assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
