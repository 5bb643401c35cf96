"""Everything on a salt-master's event bus, recorded from a thread: job publications (with
their arguments), returns, runner and orchestration events, minion events. Lets a test prove
that a value never crossed the bus, or that a function was never called on a minion.

Salt-factories' own event listener forgets events after two minutes; this one keeps them
until stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time

import salt.utils.event


class EventRecorder:
    def __init__(self, master_opts):
        self.opts = dict(master_opts)
        self.events = []  # (monotonic time, tag, data)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self):
        bus = salt.utils.event.get_master_event(self.opts, self.opts["sock_dir"], listen=True)
        try:
            bus.subscribe("")
            self._ready.set()
            while not self._stop.is_set():
                event = bus.get_event(wait=0.2, full=True, auto_reconnect=True)
                if event:
                    self.events.append((time.monotonic(), event["tag"], event["data"]))
        finally:
            self._ready.set()
            bus.destroy()

    def start(self, timeout=10):
        # Salt's event client logs every event it reads at trace level: not in this process.
        logging.getLogger("salt.utils.event").setLevel(logging.INFO)
        self._thread.start()
        self._ready.wait(timeout)
        # The subscription is in place once a first round trip has been possible.
        time.sleep(0.5)
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(10)

    def text(self, since=0.0):
        """All recorded events after ``since`` (monotonic), as one searchable text."""
        return "\n".join(
            f"{tag} {json.dumps(data, default=str, sort_keys=True)}"
            for stamp, tag, data in list(self.events)
            if stamp >= since
        )

    def jobs(self, since=0.0):
        """(function, targets, arguments) of every job published after ``since``."""
        found = []
        for stamp, tag, data in list(self.events):
            if stamp >= since and tag.startswith("salt/job/") and tag.endswith("/new"):
                found.append((data.get("fun"), data.get("minions"), data.get("arg")))
        return found


@contextlib.contextmanager
def recording(master_opts):
    recorder = EventRecorder(master_opts).start()
    try:
        yield recorder
    finally:
        recorder.stop()
