"""The processes a harness starts: stopped (SIGTERM, then SIGKILL when one does not end), or
served in the foreground until a signal."""

import os
import signal
import subprocess
import sys


def wait_or_kill(process, timeout, *, group=False):
    """Wait up to ``timeout`` s for ``process`` to end, then kill it (``group``: its whole
    process group, when it was started in a session of its own)."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait()


def stop(process, timeout, *, group=False):
    """SIGTERM ``process`` if it still runs, then ``wait_or_kill``."""
    if process.poll() is None:
        process.terminate()
        wait_or_kill(process, timeout, group=group)


def serve_until_signalled(stop):
    """For a `python -m tools.X` server in the foreground: wait for Ctrl-C or SIGTERM, then
    ``stop()``. SIGTERM ends it like Ctrl-C: through ``finally``, so the server stops cleanly."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        stop()
