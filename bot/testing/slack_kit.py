"""A local stand-in for Slack, for tests: a Web API server that records every call, a Socket Mode
server, a v0 request signer, and payload builders shaped like Slack's documented examples.

    with FakeSlack() as slack:
        s = settings.with_(slack_api_url=slack.api_url, slack_bot_token=BOT_TOKEN,
                           slack_signing_secret=SIGNING_SECRET)
        app, ctx = bot.slack.app.build(s, answerer, Store.from_settings(s))
        server = bot.slack.ingress.start_http(app, SIGNING_SECRET, host="127.0.0.1", port=0)
        ts = slack.add_message(CHANNEL, "<@UBOT> legal: what is hearsay?")  # so conversations.replies knows it
        status, _ = post_event(server.url, app_mention("<@UBOT> legal: what is hearsay?", ts=ts))
        slack.wait_for(lambda: slack.calls("chat.update"), what="the answer")

tests/test_slack_app.py shows every flow (threads, /ask, buttons, reactions, Socket Mode).

Nothing here talks to the internet; every server binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import mimetypes
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.error import HTTPError
from urllib.parse import parse_qs, quote, urlencode, urlsplit
from urllib.request import Request, urlopen

BOT_TOKEN = "xoxb-fake-bot-token"
APP_TOKEN = "xapp-fake-app-token"
SIGNING_SECRET = "fake-signing-secret"
BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"
TEAM_ID = "T0FAKE"
APP_ID = "A0FAKE"
USER = "U0ALICE"
CHANNEL = "C0GENERAL"
DM = "D0ALICE"

# Fields that slack_sdk may send as JSON text inside a form body.
_JSON_FIELDS = ("blocks", "attachments", "prompts", "metadata", "view", "chunks")

_ts_counter = itertools.count(1)
_ts_base = int(time.time())


def new_ts() -> str:
    """A message timestamp, unique within this process and increasing, like Slack's."""
    return f"{_ts_base}.{next(_ts_counter):06d}"


def new_event_id() -> str:
    return "Ev" + uuid.uuid4().hex[:10].upper()


# ----------------------------------------------------------------------------------------------
# Web API


@dataclass(frozen=True)
class Call:
    method: str
    args: dict[str, Any]
    token: str | None
    at: float  # time.monotonic() on arrival


@dataclass
class _Canned:
    status: int
    body: dict
    headers: dict[str, str]
    after: int = 0  # calls still to let through before this answer is used


Responder = Callable[["FakeSlack", dict[str, Any]], dict[str, Any]]
_METHODS: dict[str, Responder] = {}


def _method(name: str) -> Callable[[Responder], Responder]:
    def register(fn: Responder) -> Responder:
        _METHODS[name] = fn
        return fn

    return register


@dataclass
class FakeSlack:
    """Answers Slack Web API methods from memory and records each call in order."""

    bot_user_id: str = BOT_USER_ID
    bot_id: str = BOT_ID
    team_id: str = TEAM_ID
    tokens: tuple[str, ...] | None = (BOT_TOKEN, APP_TOKEN)  # None accepts any token
    channel_names: dict[str, str] = field(default_factory=dict)  # for conversations.info
    socket_mode: FakeSocketMode | None = None
    file_tokens: tuple[str, ...] | None = None  # tokens url_private accepts; None: the same as `tokens`
    _files: dict[str, dict] = field(default_factory=dict)
    _file_bytes: dict[str, bytes] = field(default_factory=dict)
    _calls: list[Call] = field(default_factory=list)
    _messages: dict[str, dict[str, dict]] = field(default_factory=lambda: defaultdict(dict))
    _canned: dict[str, deque[_Canned]] = field(default_factory=lambda: defaultdict(deque))
    _held: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _server: ThreadingHTTPServer | None = None

    # -- lifecycle
    def start(self) -> FakeSlack:
        fake = self

        class Handler(_WebApiHandler):
            slack = fake

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-slack", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        """What SLACK_API_URL should be."""
        return self.base_url + "/api/"

    @property
    def response_url(self) -> str:
        """A slash command's response_url; posts to it are recorded as method "response_url"."""
        return self.base_url + "/response_url/" + uuid.uuid4().hex[:8]

    # -- inspection
    def calls(self, method: str | None = None, **match: Any) -> list[Call]:
        """Recorded calls, optionally of one method and whose args contain every `match` item."""
        with self._lock:
            found = [c for c in self._calls if method is None or c.method == method]
        return [c for c in found if all(c.args.get(k) == v for k, v in match.items())]

    def wait_for(self, predicate: Callable[[], Any], *, timeout: float = 120.0, what: str = "condition") -> Any:
        """Wait until predicate() is truthy and return it; fail with a summary of the calls seen."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [c.method for c in self._calls]
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; calls seen: {seen}")
                self._lock.wait(min(left, 0.5))

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._canned.clear()
            self._held.clear()

    def message(self, channel: str, ts: str) -> dict | None:
        with self._lock:
            msg = self._messages[channel].get(ts)
            return dict(msg) if msg else None

    def messages(self, channel: str) -> list[dict]:
        with self._lock:
            return [dict(m) for _, m in sorted(self._messages[channel].items())]

    # -- scripting
    def add_message(
        self, channel: str, text: str, *, user: str = USER, ts: str | None = None, thread_ts: str | None = None,
        files: list[dict] | None = None,
    ) -> str:
        """Put a user's message into the fake workspace (so conversations.replies returns it), with its files."""
        ts = ts or new_ts()
        msg = {"type": "message", "user": user, "text": text, "ts": ts}
        if thread_ts and thread_ts != ts:
            msg["thread_ts"] = thread_ts
        if files:
            msg.update(files=[dict(f) for f in files], upload=True, subtype="file_share")
        with self._lock:
            self._messages[channel][ts] = msg
        return ts

    def add_file(self, name: str, data: bytes, *, filetype: str | None = None, mimetype: str | None = None,
                 size: int | None = None) -> dict:
        """Upload a file to the fake workspace; returns its file object as files.info and events show it. Its bytes
        are served at url_private(_download), on this server, to a request bearing an accepted token."""
        fid = "F" + uuid.uuid4().hex[:10].upper()
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        url = f"{self.base_url}/files-pri/{self.team_id}-{fid}/{quote(name)}"
        info = {
            "id": fid, "created": int(time.time()), "name": name, "title": name,
            "mimetype": mimetype or mimetypes.guess_type(name)[0] or "application/octet-stream",
            "filetype": filetype or {"md": "markdown", "txt": "text", "htm": "html"}.get(ext, ext),
            "user": USER, "size": len(data) if size is None else size, "mode": "hosted", "is_external": False,
            "url_private": url, "url_private_download": url.replace(f"/{quote(name)}", f"/download/{quote(name)}"),
            "permalink": f"https://fake.slack.test/files/{USER}/{fid}/{quote(name)}",
        }
        with self._lock:
            self._files[fid] = info
            self._file_bytes[fid] = data
        return dict(info)

    def queue(self, method: str, *, status: int = 200, body: dict | None = None, headers: dict | None = None,
              after: int = 0) -> None:
        """Make the next call of `method` get this response instead of the normal one (e.g. a 429); with
        `after`, that many calls are answered normally first (an append that fails mid-way)."""
        with self._lock:
            self._canned[method].append(_Canned(status, body or {"ok": True}, headers or {}, after))

    def hold(self, method: str) -> threading.Event:
        """Hold every call of `method` (recorded, not answered) until the returned event is set: a write that
        is still in flight, deterministically."""
        gate = threading.Event()
        with self._lock:
            self._held[method] = gate
        return gate

    # -- serving (called by the HTTP handler)
    def _handle(self, method: str, args: dict[str, Any], token: str | None) -> _Canned:
        with self._lock:
            self._calls.append(Call(method, args, token, time.monotonic()))
            self._lock.notify_all()
            gate = self._held.get(method)
        if gate is not None:
            gate.wait(60)  # a test that forgets to release it still ends
        with self._lock:
            canned = self._canned[method]
            if canned and canned[0].after == 0:
                return canned.popleft()
            if canned:
                canned[0].after -= 1
            if self.tokens is not None and token not in self.tokens:
                return _Canned(200, {"ok": False, "error": "invalid_auth"}, {})
            responder = _METHODS.get(method)
            body = responder(self, args) if responder else {"ok": True}
            self._lock.notify_all()
            return _Canned(200, body, {})

    def _post(self, channel: str, args: dict[str, Any]) -> dict:
        ts = new_ts()
        msg = {"type": "message", "user": self.bot_user_id, "bot_id": self.bot_id, "ts": ts, "text": args.get("text", "")}
        msg.update({k: args[k] for k in ("blocks", "metadata") if k in args})
        if args.get("thread_ts"):
            msg["thread_ts"] = args["thread_ts"]
        self._messages[channel][ts] = msg
        return msg


@_method("auth.test")
def _auth_test(slack: FakeSlack, args: dict) -> dict:
    return {
        "ok": True,
        "url": "https://fake.slack.test/",
        "team": "Fake Co",
        "user": "domainbot",
        "team_id": slack.team_id,
        "user_id": slack.bot_user_id,
        "bot_id": slack.bot_id,
        "is_enterprise_install": False,
    }


@_method("chat.postMessage")
def _chat_post(slack: FakeSlack, args: dict) -> dict:
    channel = args.get("channel")
    if not channel:
        return {"ok": False, "error": "channel_not_found"}
    return {"ok": True, "channel": channel, "ts": (msg := slack._post(channel, args))["ts"], "message": msg}


@_method("chat.postEphemeral")
def _chat_ephemeral(slack: FakeSlack, args: dict) -> dict:
    return {"ok": True, "message_ts": new_ts()}


@_method("chat.update")
def _chat_update(slack: FakeSlack, args: dict) -> dict:
    channel, ts = args.get("channel"), args.get("ts")
    msg = slack._messages[channel].get(ts) if channel else None
    if msg is None:
        return {"ok": False, "error": "message_not_found"}
    msg.update({k: args[k] for k in ("text", "blocks") if k in args})
    return {"ok": True, "channel": channel, "ts": ts, "text": msg["text"], "message": dict(msg)}


@_method("conversations.replies")
def _replies(slack: FakeSlack, args: dict) -> dict:
    channel, ts = args.get("channel"), args.get("ts")
    in_channel = slack._messages.get(channel, {})
    if ts not in in_channel:
        return {"ok": False, "error": "thread_not_found"}
    thread = [m for t, m in sorted(in_channel.items()) if t == ts or m.get("thread_ts") == ts]
    return {"ok": True, "messages": [dict(m) for m in thread], "has_more": False}


@_method("files.info")
def _files_info(slack: FakeSlack, args: dict) -> dict:
    info = slack._files.get(args.get("file", ""))
    return {"ok": True, "file": dict(info)} if info else {"ok": False, "error": "file_not_found"}


@_method("views.open")
def _views_open(slack: FakeSlack, args: dict) -> dict:
    view = args.get("view") or {}
    return {"ok": True, "view": {"id": "V" + uuid.uuid4().hex[:8].upper(), **view}}


@_method("conversations.info")
def _conversations_info(slack: FakeSlack, args: dict) -> dict:
    channel = args.get("channel", "")
    name = slack.channel_names.get(channel)
    if name is None:
        return {"ok": False, "error": "channel_not_found"}
    return {"ok": True, "channel": {"id": channel, "name": name, "is_channel": True, "is_member": True}}


@_method("apps.connections.open")
def _connections_open(slack: FakeSlack, args: dict) -> dict:
    if slack.socket_mode is None:
        return {"ok": False, "error": "socket_mode_not_enabled"}
    return {"ok": True, "url": slack.socket_mode.url}


@_method("chat.delete")
def _chat_delete(slack: FakeSlack, args: dict) -> dict:
    channel, ts = args.get("channel"), args.get("ts")
    if not channel or slack._messages[channel].pop(ts, None) is None:
        return {"ok": False, "error": "message_not_found"}
    return {"ok": True, "channel": channel, "ts": ts}


# Native streaming (chat.startStream / appendStream / stopStream). The error names are the methods' documented
# ones, except `invalid_arguments` for a missing thread_ts: the docs mark it required but name no error for it.
# A streaming message keeps its text in one markdown block (an assumption about what Slack returns) and has
# streaming_state "in_progress" until it is stopped ("completed").


def _stream_text(args: dict) -> str:
    chunks = args.get("chunks") or []
    return (args.get("markdown_text") or "") + "".join(
        c.get("text", "") for c in chunks if isinstance(c, dict) and c.get("type") == "markdown_text")


def _streaming(slack: FakeSlack, args: dict) -> tuple[dict | None, dict | None]:
    """(the message in streaming state, None) or (None, the error response)."""
    channel, ts = args.get("channel"), args.get("ts")
    if not channel:
        return None, {"ok": False, "error": "channel_not_found"}
    msg = slack._messages[channel].get(ts)
    if msg is None:
        return None, {"ok": False, "error": "message_not_found"}
    if msg.get("streaming_state") != "in_progress":
        return None, {"ok": False, "error": "message_not_in_streaming_state"}
    return msg, None


def _add_streamed(msg: dict, text: str) -> None:
    msg["text"] += text
    msg["blocks"][0]["text"] = msg["text"]


@_method("chat.startStream")
def _start_stream(slack: FakeSlack, args: dict) -> dict:
    channel, thread_ts = args.get("channel"), args.get("thread_ts")
    if not channel:
        return {"ok": False, "error": "channel_not_found"}
    if not thread_ts:
        return {"ok": False, "error": "invalid_arguments"}
    if not channel.startswith("D"):  # "Required when streaming to channels"
        if not args.get("recipient_team_id"):
            return {"ok": False, "error": "missing_recipient_team_id"}
        if not args.get("recipient_user_id"):
            return {"ok": False, "error": "missing_recipient_user_id"}
    text = _stream_text(args)
    msg = slack._post(channel, {"text": text, "thread_ts": thread_ts})
    msg.update(streaming_state="in_progress", blocks=[{"type": "markdown", "text": text}])
    return {"ok": True, "channel": channel, "ts": msg["ts"]}


@_method("chat.appendStream")
def _append_stream(slack: FakeSlack, args: dict) -> dict:
    msg, error = _streaming(slack, args)
    if msg is None:
        return error or {}
    text = _stream_text(args)
    if not text and not args.get("chunks"):
        return {"ok": False, "error": "no_text"}
    _add_streamed(msg, text)
    return {"ok": True, "channel": args["channel"], "ts": msg["ts"]}


@_method("chat.stopStream")
def _stop_stream(slack: FakeSlack, args: dict) -> dict:
    msg, error = _streaming(slack, args)
    if msg is None:
        return error or {}
    _add_streamed(msg, _stream_text(args))
    msg["blocks"] = msg["blocks"][:1] + list(args.get("blocks") or [])  # "rendered at the bottom"
    msg["streaming_state"] = "completed"
    return {"ok": True, "channel": args["channel"], "ts": msg["ts"], "message": dict(msg)}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops bursts of concurrent calls (each drop: a 1 s SYN retry)


class _WebApiHandler(BaseHTTPRequestHandler):
    slack: FakeSlack
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each response waits ~40 ms for a delayed ACK

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/files-pri/"):
            self._serve_file()
        else:
            self._serve(b"")

    def _serve_file(self) -> None:
        """url_private: the bytes for an accepted bearer token; otherwise what Slack does, a redirect to its
        sign-in page (an HTML page, never the file). Recorded as method "files-pri"."""
        fid = self.path.split("/")[2].rsplit("-", 1)[-1]
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        slack = self.slack
        slack._handle("files-pri", {"file": fid}, token)
        accepted = slack.file_tokens if slack.file_tokens is not None else slack.tokens
        data = slack._file_bytes.get(fid)
        if accepted is not None and token not in accepted:
            body = b"<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to Fake Co</body></html>"
            self.send_response(302)
            self.send_header("Location", f"{slack.base_url}/?redir={quote(self.path)}")
            self.send_header("Content-Type", "text/html; charset=utf-8")
        elif data is None:
            body = b"Not Found"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
        else:
            body = data
            self.send_response(200)
            self.send_header("Content-Type", slack._files[fid]["mimetype"])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self._serve(self.rfile.read(length))

    def _serve(self, body: bytes) -> None:
        url = urlsplit(self.path)
        method = url.path.removeprefix("/api/") if url.path.startswith("/api/") else url.path.split("/")[1]
        args = _parse_args(url.query, body, self.headers.get("Content-Type", ""))
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else args.pop("token", None)
        canned = self.slack._handle(method, args, token)
        payload = json.dumps(canned.body).encode()
        self.send_response(canned.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in canned.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass


def _parse_args(query: str, body: bytes, content_type: str) -> dict[str, Any]:
    args: dict[str, Any] = {k: v[-1] for k, v in parse_qs(query).items()}
    if body and content_type.startswith("application/json"):
        args.update(json.loads(body))
    elif body:
        args.update({k: v[-1] for k, v in parse_qs(body.decode("utf-8")).items()})
    for key in _JSON_FIELDS:
        value = args.get(key)
        if isinstance(value, str) and value[:1] in "[{":
            args[key] = json.loads(value)
    return args


# ----------------------------------------------------------------------------------------------
# Socket Mode


class FakeSocketMode:
    """Slack's side of Socket Mode: pushes envelopes over a WebSocket and collects the app's acks."""

    def __init__(self) -> None:
        from websockets.sync.server import serve

        self._acks: dict[str, dict] = {}
        self._connection: Any = None
        self._cond = threading.Condition()
        self._server = serve(self._session, "127.0.0.1", 0)
        threading.Thread(target=self._server.serve_forever, name="fake-socket-mode", daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"ws://{host}:{port}/link/?ticket=fake"

    def _session(self, connection: Any) -> None:
        with self._cond:
            self._connection = connection
            self._cond.notify_all()
        connection.send(json.dumps({"type": "hello", "num_connections": 1, "connection_info": {"app_id": APP_ID}}))
        for raw in connection:
            ack = json.loads(raw)
            with self._cond:
                self._acks[ack.get("envelope_id", "")] = ack
                self._cond.notify_all()

    def wait_connected(self, timeout: float = 30.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._connection is not None, timeout):
                raise AssertionError("the app never opened the Socket Mode connection")

    def send(self, payload: dict, *, type: str = "events_api", retry_attempt: int = 0) -> str:  # noqa: A002
        """Deliver one envelope; returns its envelope_id."""
        self.wait_connected()
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "type": type,
            "payload": payload,
            "accepts_response_payload": type != "events_api",
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        self._connection.send(json.dumps(envelope))
        return envelope_id

    def wait_ack(self, envelope_id: str, timeout: float = 30.0) -> dict:
        with self._cond:
            if not self._cond.wait_for(lambda: envelope_id in self._acks, timeout):
                raise AssertionError(f"envelope {envelope_id} was never acknowledged")
            return self._acks[envelope_id]

    def close(self) -> None:
        self._server.shutdown()


# ----------------------------------------------------------------------------------------------
# Signing and sending requests to the bot


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return "v0=" + digest


def signed_headers(secret: str, body: bytes, *, timestamp: int | str | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature(secret, ts, body)}


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float = 30.0) -> tuple[int, str]:
    """POST and return (status, body text) for any status, 4xx and 5xx included."""
    try:
        with urlopen(Request(url, data=body, headers=headers, method="POST"), timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except HTTPError as err:
        return err.code, err.read().decode()


def post_event(
    url: str, payload: dict, secret: str = SIGNING_SECRET, *, retry_num: int | None = None,
    timestamp: int | str | None = None,
) -> tuple[int, str]:
    """Send an Events API payload, signed, as Slack does (JSON body)."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **signed_headers(secret, body, timestamp=timestamp)}
    if retry_num:
        headers |= {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"}
    return post(url, body, headers)


def post_form(url: str, fields: dict[str, str], secret: str = SIGNING_SECRET) -> tuple[int, str]:
    """Send a slash command (its fields) or an interaction ({"payload": json}), signed, form-encoded."""
    body = urlencode(fields).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(secret, body)}
    return post(url, body, headers)


def post_interaction(url: str, payload: dict, secret: str = SIGNING_SECRET) -> tuple[int, str]:
    return post_form(url, {"payload": json.dumps(payload)}, secret)


# ----------------------------------------------------------------------------------------------
# Payload builders (shapes follow api.slack.com's examples)


def event_callback(event: dict, *, event_id: str | None = None, team_id: str = TEAM_ID) -> dict:
    return {
        "token": "unused-verification-token",
        "team_id": team_id,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or new_event_id(),
        "event_time": int(time.time()),
        "authorizations": [
            {"enterprise_id": None, "team_id": team_id, "user_id": BOT_USER_ID, "is_bot": True,
             "is_enterprise_install": False}
        ],
        "is_ext_shared_channel": False,
        "event_context": "4-fake",
    }


def _message_event(
    type_: str, text: str, *, channel: str, user: str, ts: str | None, thread_ts: str | None, channel_type: str,
    files: list[dict] | None = None,
) -> dict:
    event = {
        "type": type_,
        "user": user,
        "text": text,
        "ts": ts or new_ts(),
        "channel": channel,
        "channel_type": channel_type,
        "event_ts": "",
        "team": TEAM_ID,
        "blocks": [{"type": "rich_text", "block_id": "b1", "elements": [
            {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}]}],
    }
    event["event_ts"] = event["ts"]
    if thread_ts:
        event["thread_ts"] = thread_ts
    if type_ == "app_mention":
        event.pop("channel_type")
    if files:  # a message with files is subtype file_share; a mention carries them as they are
        event.update(files=[dict(f) for f in files], upload=True, display_as_bot=False)
        if type_ == "message":
            event["subtype"] = "file_share"
    return event


def app_mention(
    text: str, *, channel: str = CHANNEL, user: str = USER, ts: str | None = None, thread_ts: str | None = None,
    event_id: str | None = None, files: list[dict] | None = None,
) -> dict:
    event = _message_event("app_mention", text, channel=channel, user=user, ts=ts, thread_ts=thread_ts,
                           channel_type="channel", files=files)
    return event_callback(event, event_id=event_id)


def message(
    text: str, *, channel: str = CHANNEL, user: str = USER, ts: str | None = None, thread_ts: str | None = None,
    channel_type: str = "channel", event_id: str | None = None, bot_id: str | None = None,
    subtype: str | None = None, files: list[dict] | None = None,
) -> dict:
    event = _message_event("message", text, channel=channel, user=user, ts=ts, thread_ts=thread_ts,
                           channel_type=channel_type, files=files)
    if bot_id:
        event["bot_id"] = bot_id
    if subtype:
        event["subtype"] = subtype
    return event_callback(event, event_id=event_id)


def im_message(text: str, *, channel: str = DM, **kw: Any) -> dict:
    return message(text, channel=channel, channel_type="im", **kw)


def reaction(
    name: str, *, channel: str, ts: str, user: str = USER, added: bool = True, item_user: str = BOT_USER_ID,
    event_id: str | None = None,
) -> dict:
    event = {
        "type": "reaction_added" if added else "reaction_removed",
        "user": user,
        "reaction": name,
        "item_user": item_user,
        "item": {"type": "message", "channel": channel, "ts": ts},
        "event_ts": new_ts(),
    }
    return event_callback(event, event_id=event_id)


def assistant_thread_started(*, channel: str = DM, thread_ts: str | None = None, user: str = USER) -> dict:
    event = {
        "type": "assistant_thread_started",
        "assistant_thread": {
            "user_id": user,
            "context": {"channel_id": CHANNEL, "team_id": TEAM_ID, "enterprise_id": None},
            "channel_id": channel,
            "thread_ts": thread_ts or new_ts(),
        },
        "event_ts": new_ts(),
    }
    return event_callback(event)


def slash_command(
    command: str, text: str, *, channel: str = CHANNEL, user: str = USER, trigger_id: str | None = None,
    response_url: str = "https://hooks.slack.test/commands/T0FAKE/1/fake",
) -> dict[str, str]:
    return {
        "token": "unused-verification-token",
        "team_id": TEAM_ID,
        "team_domain": "fakeco",
        "channel_id": channel,
        "channel_name": "general",
        "user_id": user,
        "user_name": "alice",
        "command": command,
        "text": text,
        "api_app_id": APP_ID,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or f"{uuid.uuid4().int % 10**12}.fake",
    }


def block_action(
    action_id: str, value: str, *, channel: str, message_ts: str, user: str = USER, thread_ts: str | None = None,
    trigger_id: str | None = None, element: str = "button",
) -> dict:
    """A click on a block element: a button, or one of a feedback_buttons element's buttons (element=...)."""
    container = {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False}
    msg = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": message_ts, "text": ""}
    if thread_ts:
        container["thread_ts"] = msg["thread_ts"] = thread_ts
    return {
        "type": "block_actions",
        "user": {"id": user, "username": "alice", "name": "alice", "team_id": TEAM_ID},
        "api_app_id": APP_ID,
        "token": "unused-verification-token",
        "container": container,
        "trigger_id": trigger_id or f"{uuid.uuid4().int % 10**12}.fake",
        "team": {"id": TEAM_ID, "domain": "fakeco"},
        "channel": {"id": channel, "name": "general"},
        "message": msg,
        "response_url": "https://hooks.slack.test/actions/T0FAKE/1/fake",
        "actions": [{
            "action_id": action_id, "block_id": "b-" + action_id, "value": value, "type": element,
            "action_ts": f"{time.time():.6f}",
        }],
    }


def view_submission(callback_id: str, private_metadata: str, values: dict, *, user: str = USER) -> dict:
    """`values` is {block_id: {action_id: {"type": "plain_text_input", "value": ...}}}, as Slack sends it."""
    return {
        "type": "view_submission",
        "team": {"id": TEAM_ID, "domain": "fakeco"},
        "user": {"id": user, "username": "alice", "name": "alice", "team_id": TEAM_ID},
        "api_app_id": APP_ID,
        "token": "unused-verification-token",
        "trigger_id": f"{uuid.uuid4().int % 10**12}.fake",
        "view": {
            "id": "V" + uuid.uuid4().hex[:8].upper(),
            "type": "modal",
            "callback_id": callback_id,
            "private_metadata": private_metadata,
            "state": {"values": values},
            "hash": "fake",
        },
    }


def url_verification(challenge: str) -> dict:
    return {"token": "unused-verification-token", "challenge": challenge, "type": "url_verification"}
