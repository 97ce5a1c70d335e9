"""HTTP ingress for Slack: v0 signature check in front of bolt, and a threaded server.

We verify requests ourselves instead of with bolt's middleware because bolt answers 500 (not 401)
for a non-numeric timestamp and logs the whole body of a rejected request (docs/design.md "Slack facts").
Request bodies are never logged here, and `quiet_slack_logging` keeps bolt and slack_sdk from doing it.

After the signature, `bot.slack.payload.triage` checks the body's shape: malformed bodies get 400 with a
short reason, `app_rate_limited` and payloads no listener handles get 200 with an empty body (the module
docstring there lists each decision). Only an exception out of bolt's dispatch, a bug of ours, is a 500.

GET `/healthz` and GET `/metrics` (Prometheus, bot.metrics) are unsigned: a load balancer and a scraper call them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from slack_bolt import App, BoltRequest, BoltResponse

from bot import metrics
from bot.errors import new_error_id
from bot.slack.payload import Malformed, Route, for_bolt, triage

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
METRICS_PATH = "/metrics"
WINDOW_S = 300  # Slack's replay window: 5 minutes
MAX_BODY_BYTES = 1 << 20  # Slack payloads are far smaller; refuse to buffer more
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
_UNHANDLED = BoltResponse(status=404, body={"error": "unhandled request"}).body  # bolt: no listener matched


class SignatureError(ValueError):
    """The request is not provably from Slack; the message says why (safe to log: no body in it)."""


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> None:
    """Raise SignatureError unless `body` carries a valid v0 signature from within the last 5 minutes."""
    timestamp = headers.get("X-Slack-Request-Timestamp") or ""
    sig = headers.get("X-Slack-Signature") or ""
    if not timestamp or not sig:
        raise SignatureError("missing X-Slack-Request-Timestamp or X-Slack-Signature")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureError("timestamp is not a number")
    if abs((time.time() if now is None else now) - int(timestamp)) > WINDOW_S:
        raise SignatureError("timestamp outside the 5-minute window")
    if not _SIGNATURE.fullmatch(sig):
        raise SignatureError("malformed signature")
    expected = hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(("v0=" + expected).encode(), sig.encode()):
        raise SignatureError("signature mismatch")


# ----------------------------------------------------------------------------------------------
# Logging


class _NoPayloads(logging.Filter):
    """Rewrite records that embed a payload: bolt puts request bodies into some messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cut = min((i for i in (message.find("{"), message.find("request body"), message.find("Request body"))
                   if i >= 0), default=-1)
        if cut >= 0:
            record.msg = message[:cut].rstrip(" :(") + " [payload not logged]"
            record.args = None
        return True


def quiet_slack_logging() -> logging.Logger:
    """The base logger to hand bolt (it copies level and filters into each of its loggers): warnings
    and up, payloads stripped. slack_sdk, whose debug logs hold request bodies and Socket Mode
    messages, is held at WARNING too, whatever the root level."""
    bolt = logging.getLogger("domainbot.bolt")
    bolt.setLevel(logging.WARNING)
    if not any(isinstance(f, _NoPayloads) for f in bolt.filters):
        bolt.addFilter(_NoPayloads())
    for name in ("slack_bolt", "slack_sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return bolt


class _ThrottledWarning:
    """Log the first occurrence, then at most one line per `every_s` with a count: a flood of forged
    requests must not become a flood of log lines."""

    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s
        self._last = -every_s
        self._skipped = 0
        self._lock = threading.Lock()

    def __call__(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.every_s:
                self._skipped += 1
                return
            skipped, self._skipped, self._last = self._skipped, 0, now
        suffix = f" ({skipped} more since the last report)" if skipped else ""
        log.warning(message + suffix, *args)


# ----------------------------------------------------------------------------------------------
# Server


class SlackHTTPServer(ThreadingHTTPServer):
    """One thread per connection, so a slow request never delays another's ack."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's default of 5 drops bursts: a dropped SYN costs a 1 s retry (measured)

    def __init__(self, address: tuple[str, int], app: App, signing_secret: str, path: str = EVENTS_PATH):
        self.app = app
        self.signing_secret = signing_secret
        self.path = path
        # accepted / rejected / malformed / dispatched / unhandled / app_rate_limited: for tests and ops
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self.warn_rejected = _ThrottledWarning()
        self.warn_malformed = _ThrottledWarning()
        self.warn_rate_limited = _ThrottledWarning()
        super().__init__(address, _SlackHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    def count(self, what: str) -> None:
        with self._stats_lock:
            self.stats[what] += 1
        metrics.SLACK_REQUESTS.labels(what).inc()

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, args=(0.2,), name="slack-http", daemon=True)
        thread.start()
        return thread


class _SlackHandler(BaseHTTPRequestHandler):
    server: SlackHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, as Slack's delivery uses
    # Headers and body go out in two writes; with Nagle on, the second waits for the client's delayed
    # ACK (40 ms per response on keep-alive connections, measured). Acks must be fast: send at once.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._reply(200, b"ok", "text/plain")
        elif path == METRICS_PATH:
            self._reply(200, metrics.exposition(), metrics.CONTENT_TYPE)
        else:
            self._reply(404, b'{"error":"not found"}')

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        body = self._read_body()
        if body is None:
            return
        if url.path != self.server.path:
            self._reply(404, b'{"error":"not found"}')
            return
        try:
            verify(self.server.signing_secret, self.headers, body)
        except SignatureError as err:
            self.server.count("rejected")
            self.server.warn_rejected("rejected Slack request from %s: %s", self.client_address[0], err)
            self._reply(401, b'{"error":"invalid signature"}')
            return
        self.server.count("accepted")
        self._dispatch(body, url.query)

    def _read_body(self) -> bytes | None:
        raw = self.headers.get("Content-Length")
        if raw is None or not raw.isdigit():
            self._reply(411, b'{"error":"Content-Length required"}', close=True)
            return None
        if int(raw) > MAX_BODY_BYTES:
            self._reply(413, b'{"error":"payload too large"}', close=True)
            return None
        return self.rfile.read(int(raw))

    def _dispatch(self, body: bytes, query: str) -> None:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            self._refuse("body is not UTF-8")
            return
        content_type = self.headers.get("Content-Type")
        try:
            route = triage(text, content_type)
        except Malformed as err:
            self._refuse(str(err))
            return
        if route is Route.RATE_LIMITED:
            self.server.count("app_rate_limited")
            self.server.warn_rate_limited("Slack sent app_rate_limited: it is dropping this app's events "
                                          "(over 30,000 an hour from one workspace)")
            self._reply(200, b"", "text/plain")
            return
        headers = {k.lower(): [v] for k, v in self.headers.items()}
        try:
            request = BoltRequest(body=for_bolt(text, content_type), query=query, headers=headers)
        except Exception as err:  # bolt's parsing choked on a shape triage let through: still the sender's fault
            self._refuse(f"bolt cannot read this payload ({type(err).__name__})")
            return
        try:
            resp = self.server.app.dispatch(request)
        except Exception:  # a bug in a listener: never show it to Slack, keep it findable in the logs
            error_id = new_error_id()
            log.exception("dispatch failed [error %s]", error_id)
            metrics.count_error("dispatch")
            self._reply(500, f'{{"error":"internal error {error_id}"}}'.encode())
            return
        self.server.count("dispatched")
        if resp.status == 404 and resp.body == _UNHANDLED:  # legal but not ours: a non-2xx would be retried
            self.server.count("unhandled")
            self._reply(200, b"", "text/plain")
            return
        content_type = (resp.headers.get("content-type") or ["application/json"])[0]
        self._reply(resp.status, (resp.body or "").encode(), content_type)

    def _refuse(self, reason: str) -> None:
        """400 for a signed body that is not a Slack payload; `reason` is fixed text, never body content."""
        self.server.count("malformed")
        self.server.warn_malformed("refused malformed Slack request from %s: %s", self.client_address[0], reason)
        self._reply(400, json.dumps({"error": f"malformed request: {reason}"}).encode())

    def _reply(self, status: int, payload: bytes, content_type: str = "application/json", close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        # http.server writes request lines to stderr; send them to debug logs (no bodies in them).
        log.debug("%s %s", self.client_address[0], format % args)


def start_http(app: App, signing_secret: str, *, host: str = "0.0.0.0", port: int = 3000) -> SlackHTTPServer:
    """Listen on host:port (0: any free port) and serve in a background thread."""
    server = SlackHTTPServer((host, port), app, signing_secret)
    server.serve_in_thread()
    return server
