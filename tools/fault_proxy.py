"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the local EC2 endpoint (moto).

salt-cloud (boto3) is pointed at the proxy (AWS_ENDPOINT_URL); the proxy relays each EC2
Query API request to the endpoint, except when a rule for its Action says otherwise:

- ``lose``: relay the request (EC2 acts on it), then drop the connection without an answer;
- ``reset``: drop the connection before relaying (EC2 never sees the request);
- ``throttle``: answer HTTP 400 ``RequestLimitExceeded`` (EC2's throttling error);
- ``refuse``: answer HTTP 400 ``InsufficientInstanceCapacity`` (EC2 refused, acted on nothing);
- ``cap``: relay with MaxCount lowered to ``limit`` (EC2 had capacity for that many only);
- ``unavailable``: answer HTTP 503 ``ServiceUnavailable``;
- ``delay``: wait ``seconds``, then relay;
- ``hold``: relay, then keep the answer until ``release()`` (or ``seconds``) -- a window in
  which a test can signal the client while EC2 has already acted;
- ``pause``: keep the request back (EC2 has not seen it) until ``release()`` (or ``seconds``);
- ``gather``: keep requests back until ``count`` of them are waiting, then relay them all
  (two clients that must both be past their checks before either acts).

``outage(seconds)`` drops every connection for a while, now or when a request for a given
Action first arrives.  Every request is logged (Action, ClientToken, outcome), so a test can
wait for a point in the conversation and check what reached EC2.

    python -m tools.fault_proxy --upstream http://127.0.0.1:5050 --rule RunInstances:lose:1
"""

import argparse
import http.client
import http.server
import re
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from tools import processes

FAULTS = (
    "lose",
    "reset",
    "throttle",
    "refuse",
    "cap",
    "unavailable",
    "delay",
    "hold",
    "pause",
    "gather",
)
ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
)
ERRORS = {
    "throttle": (400, "RequestLimitExceeded", "Request limit exceeded."),
    "refuse": (
        400,
        "InsufficientInstanceCapacity",
        "We currently do not have sufficient capacity in the Availability Zone you requested.",
    ),
    "unavailable": (503, "ServiceUnavailable", "The service is unavailable. Try again later."),
}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


@dataclass
class Rule:
    """Apply fault to `count` requests for `action` (None: any), after `skip` of them went
    through; with `after`, only once a request for that Action was relayed; with `match`,
    only to requests whose form body contains that text (e.g. ``instance-id``)."""

    action: str | None
    fault: str
    count: int = 1
    skip: int = 0
    seconds: float = 30.0
    after: str | None = None
    match: str | None = None
    limit: int = 1
    applied: int = 0

    def __post_init__(self):
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r} (known: {', '.join(FAULTS)})")


@dataclass
class Outage:
    seconds: float
    trigger: str | None = None  # an Action: the outage starts when it first arrives
    match: str | None = None  # ... in a request whose body contains this
    until: float | None = None


@dataclass
class Entry:
    at: float
    action: str | None
    token: str | None
    outcome: str
    body: str = ""


class FaultProxy:
    """The proxy; start() it, point clients at .url, stop() it."""

    def __init__(self, upstream):
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.rules = []
        self.outages = []
        self.log = []
        self.relayed = set()
        self._lock = threading.Condition()
        self._release = threading.Event()
        self._gathered = {}
        self._server = None
        self._thread = None

    # ------------------------------------------------------------------ control
    def start(self):
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self):
        host, port = self._server.server_address
        return f"http://{host}:{port}"

    def add(self, action, fault, *, count=1, skip=0, seconds=30.0, after=None, match=None, limit=1):
        with self._lock:
            self.rules.append(Rule(action, fault, count, skip, seconds, after, match, limit))

    def outage(self, seconds, trigger=None, match=None):
        """Drop every connection for `seconds`, from now or from the first `trigger` request
        (whose body contains `match`)."""
        with self._lock:
            start = None if trigger else time.monotonic() + seconds
            self.outages.append(Outage(seconds, trigger, match, start))

    def release(self):
        """Let held answers go, and stop holding."""
        with self._lock:
            self.rules = [rule for rule in self.rules if rule.fault not in ("hold", "pause")]
        self._release.set()

    def clear(self):
        with self._lock:
            self.rules.clear()
            self.outages.clear()
        self._release.set()

    def stop(self):
        self.clear()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def count(self, action=None, outcome=None, match=None):
        with self._lock:
            return self.count_unlocked(action, outcome, match)

    def tokens(self, action="RunInstances"):
        with self._lock:
            return [entry.token for entry in self.log if entry.action == action]

    def wait_for(self, action, outcome=None, count=1, timeout=60, match=None):
        """Block until `count` requests for `action` (bodies containing `match`) had
        `outcome`; raise on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.count_unlocked(action, outcome, match) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(e.action, e.outcome) for e in self.log]
                    raise TimeoutError(f"no {count}x {action}/{outcome} in {timeout} s: {seen}")
                self._lock.wait(min(left, 0.2))

    def count_unlocked(self, action, outcome, match=None):
        return sum(
            1
            for entry in self.log
            if (action is None or entry.action == action)
            and (outcome is None or entry.outcome == outcome)
            and (match is None or match in entry.body)
        )

    # ------------------------------------------------------------------ decisions
    def _record(self, action, token, outcome, body=""):
        with self._lock:
            self.log.append(Entry(time.monotonic(), action, token, outcome, body))
            self._lock.notify_all()

    def _gather(self, rule):
        """Wait until rule.count requests of this rule are waiting (or rule.seconds)."""
        deadline = time.monotonic() + rule.seconds
        with self._lock:
            self._gathered[id(rule)] = self._gathered.get(id(rule), 0) + 1
            self._lock.notify_all()
            while self._gathered[id(rule)] < rule.count and time.monotonic() < deadline:
                self._lock.wait(0.1)

    def _in_outage(self, action, body):
        now = time.monotonic()
        with self._lock:
            for outage in self.outages:
                triggered = outage.trigger == action and (outage.match or "") in body
                if outage.until is None and triggered:
                    outage.until = now + outage.seconds
                if outage.until is not None and now < outage.until:
                    return True
        return False

    def _rule_for(self, action, body):
        with self._lock:
            for rule in self.rules:
                if rule.action not in (None, action) or rule.applied >= rule.skip + rule.count:
                    continue
                if rule.after and rule.after not in self.relayed:
                    continue
                if rule.match and rule.match not in body:
                    continue
                rule.applied += 1
                if rule.applied > rule.skip:
                    return rule
        return None

    def _relayed(self, action):
        with self._lock:
            self.relayed.add(action)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients that go away mid-answer are what this proxy is for


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._handle(b"")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self._handle(self.rfile.read(length) if length else b"")

    def _handle(self, body):
        proxy = self.owner
        text = body.decode("utf-8", "replace")
        form = parse_qs(text)
        action = (form.get("Action") or [None])[0]
        token = (form.get("ClientToken") or [None])[0]
        if proxy._in_outage(action, text):
            proxy._record(action, token, "outage", text)
            return self._drop()
        rule = proxy._rule_for(action, text)
        fault = rule.fault if rule else None
        if fault == "reset":
            proxy._record(action, token, "reset", text)
            return self._drop()
        if fault in ERRORS:
            proxy._record(action, token, fault, text)
            return self._answer(*_error_response(fault))
        if fault == "delay":
            time.sleep(rule.seconds)
        if fault == "cap":
            body = re.sub(rb"MaxCount=[0-9]+", b"MaxCount=%d" % rule.limit, body)
        if fault == "gather":
            proxy._gather(rule)
        if fault == "pause":
            proxy._record(action, token, "paused", text)
            proxy._release.wait(rule.seconds)
        status, headers, answer = self._relay(body)
        proxy._relayed(action)
        if fault == "lose":
            proxy._record(action, token, "lost", text)
            return self._drop()
        if fault == "hold":
            proxy._record(action, token, "held", text)
            proxy._release.wait(rule.seconds)
        else:
            proxy._record(action, token, "relayed", text)
        return self._answer(status, headers, answer)

    def _relay(self, body):
        host, port = self.owner.upstream
        upstream = http.client.HTTPConnection(host, port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            answer = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            return response.status, kept, answer
        finally:
            upstream.close()

    def _answer(self, status, headers, body):
        try:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _drop(self):
        """Close the connection with a reset: no answer at all."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.connection.close()


def _error_response(fault):
    status, code, message = ERRORS[fault]
    body = ERROR_BODY.format(code=code, message=message).encode()
    return status, [("Content-Type", "text/xml")], body


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--upstream", required=True, help="the EC2 endpoint, e.g. http://127.0.0.1:5050"
    )
    parser.add_argument(
        "--rule",
        action="append",
        default=[],
        help="Action:fault[:count[:skip]], e.g. RunInstances:lose or DescribeInstances:throttle:3",
    )
    parser.add_argument("--outage", type=float, help="seconds of outage, starting at once")
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.upstream).start()
    for spec in args.rule:
        action, fault, *numbers = spec.split(":")
        count, skip = ([int(n) for n in numbers] + [1, 0][len(numbers) :])[:2]
        proxy.add(action or None, fault, count=count, skip=skip)
    if args.outage:
        proxy.outage(args.outage)
    print(f"export AWS_ENDPOINT_URL={proxy.url}", flush=True)
    processes.serve_until_signalled(proxy.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
