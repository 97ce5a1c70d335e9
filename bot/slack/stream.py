"""Stream a reply into Slack as tokens arrive: natively, or by editing one message.

`NativeStream` uses Slack's streaming methods: chat.startStream opens a reply in the thread, chat.appendStream
adds the text generated since the last append, and chat.stopStream ends it with the blocks that follow the text
(sources, disclaimer, 👍/👎). `MessageStream` posts a placeholder and edits it with chat.update. `open_stream`
picks native streaming where Slack allows it (DOMAINBOT_SLACK_STREAMING=native, a thread, no message of ours
there yet) and falls back to edits when chat.startStream is refused.

The grounding guard may change the text after it was streamed (Answer.draft vs Answer.text), and streamed text
cannot be taken back. So `NativeStream.finish` stops the stream and then replaces the whole message with the
final, guarded answer by chat.update (the Python SDK documents chat.update on a streamed message's ts). If that
edit is refused, the answer is posted anew in the thread and the draft deleted, unless the stopped message
already says exactly the guarded text. An append that fails mid-way ends the streaming; the answer still
arrives through the same finish.

Slack allows about one message write per second per channel, so writes are throttled to one per `interval_s`
and sent from a background thread: the token callback runs on the LLM's own thread and must never wait on the
network. A 429 is retried after its Retry-After by the WebClient's RateLimitErrorRetryHandler (see
context.make_client); if the retries run out, the stream also waits Retry-After before its next write, and no
text is lost (the next write carries it).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.slack import blocks
from bot.slack.context import SlackContext

log = logging.getLogger(__name__)

Render = Callable[[str], dict[str, Any]]  # partial text -> chat.update fields (text, blocks)
Clock = Callable[[], float]


def retry_after(err: SlackApiError, default: float = 1.0) -> float:
    headers = getattr(err.response, "headers", None) or {}
    for key, value in headers.items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                return max(0.0, float(raw))
            except (TypeError, ValueError):
                return default
    return default


class _Throttled:
    """Text fed from the LLM thread, written to Slack at most once per interval, one write at a time."""

    def __init__(self, interval_s: float, clock: Clock):
        self.interval_s = interval_s
        self.clock = clock
        self._text = ""
        self._next_at = clock() + interval_s  # a message was just posted or started: wait one interval
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None

    @property
    def text(self) -> str:
        with self._lock:
            return self._text

    def feed(self, piece: str) -> None:
        """Token callback: append, and start a write if one is due and none is in flight."""
        with self._lock:
            self._text += piece
            now = self.clock()
            if now < self._next_at or not self._idle.is_set() or not self._due():
                return
            self._idle.clear()
            self._next_at = now + self.interval_s
            self._writer = threading.Thread(target=self._run, args=(self._text,), name="slack-stream", daemon=True)
            writer = self._writer
        writer.start()

    def close(self, timeout: float = 60.0) -> None:
        """Wait for a write in flight, so the final write lands last."""
        with self._lock:
            writer = self._writer
        if writer is not None:
            writer.join(timeout)

    def _run(self, snapshot: str) -> None:
        try:
            self._write(snapshot)
        except SlackApiError as err:
            wait = retry_after(err) if err.response.status_code == 429 else 0.0
            with self._lock:
                self._next_at = max(self._next_at, self.clock() + wait)
            self._failed(err)
        finally:
            self._idle.set()

    def _due(self) -> bool:  # called with the lock held
        return bool(self._text.strip())

    def _write(self, snapshot: str) -> None:
        raise NotImplementedError

    def _failed(self, err: SlackApiError) -> None:
        log.info("stream write skipped: %s", err.response.get("error"))


class MessageStream(_Throttled):
    """Edits one posted message (the placeholder at `ts`) with chat.update."""

    def __init__(self, client: WebClient, channel: str, ts: str, *, interval_s: float, render: Render,
                 clock: Clock = time.monotonic):
        super().__init__(interval_s, clock)
        self.client = client
        self.channel = channel
        self.ts = ts
        self.render = render
        self.updates = 0  # edits sent (for tests and stats)

    def _write(self, snapshot: str) -> None:
        # A lost intermediate edit is harmless: the final edit carries the whole answer.
        self.client.chat_update(channel=self.channel, ts=self.ts, **self.render(snapshot))
        self.updates += 1


class NativeStream(_Throttled):
    """A reply streamed with chat.startStream / appendStream / stopStream. Create it with `start`."""

    def __init__(self, client: WebClient, channel: str, ts: str, thread_ts: str, *, interval_s: float,
                 clock: Clock = time.monotonic):
        super().__init__(interval_s, clock)
        self.client = client
        self.channel = channel
        self.ts = ts
        self.thread_ts = thread_ts
        self.appends = 0  # appends sent (for tests and stats)
        self.broken: str | None = None  # the error that ended streaming early
        self._sent = 0  # how much of the text Slack has
        self._stopped = False

    @classmethod
    def start(cls, client: WebClient, channel: str, thread_ts: str, *, user: str, team: str | None, intro: str,
              interval_s: float, clock: Clock = time.monotonic) -> NativeStream | None:
        """chat.startStream in the thread; None (and the reason logged) when Slack refuses it."""
        try:
            resp = client.chat_startStream(channel=channel, thread_ts=thread_ts, markdown_text=intro,
                                           recipient_user_id=user, recipient_team_id=team)
        except SlackApiError as err:
            log.info("native streaming refused (%s): editing a message instead", err.response.get("error"))
            return None
        if not resp.get("ts"):
            log.warning("chat.startStream answered without a ts: editing a message instead")
            return None
        return cls(client, channel, str(resp["ts"]), thread_ts, interval_s=interval_s, clock=clock)

    def _due(self) -> bool:
        return self.broken is None and bool(self._text[self._sent:].strip())

    def _write(self, snapshot: str) -> None:
        with self._lock:
            delta = snapshot[self._sent:]
        self.client.chat_appendStream(channel=self.channel, ts=self.ts, markdown_text=delta)
        with self._lock:
            self._sent = len(snapshot)
        self.appends += 1

    def _failed(self, err: SlackApiError) -> None:
        if err.response.status_code == 429:  # the text stays unsent; the next append carries it
            log.info("stream append rate limited")
            return
        self.broken = err.response.get("error") or "error"
        log.warning("native stream broke (%s): the answer will replace the message", self.broken)

    def stop(self, **final: Any) -> bool:
        """chat.stopStream once, after any append in flight (best effort); True when Slack accepted it."""
        self.close()
        if self._stopped:
            return False
        self._stopped = True
        try:
            self.client.chat_stopStream(channel=self.channel, ts=self.ts, **{k: v for k, v in final.items() if v})
            return True
        except SlackApiError as err:
            log.info("chat.stopStream failed: %s", err.response.get("error"))
            return False

    def finish(self, message: blocks.Message, answer_text: str) -> str:
        """End the stream and leave the final message in the thread; returns the ts it has."""
        self.close()  # no append lands after the stop
        with self._lock:
            rest, streamed = self._text[self._sent:], self._text
        if self.broken is None:
            stopped = self.stop(markdown_text=rest, blocks=blocks.trailer(message))
        else:
            self.stop()  # out of the streaming state, if Slack still has it there
            stopped = False  # its text stops where the append failed: never keep it as the answer
        try:
            self.client.chat_update(channel=self.channel, ts=self.ts, **message)
            return self.ts
        except SlackApiError as err:
            log.warning("could not replace the streamed draft (%s)", err.response.get("error"))
        if stopped and streamed.strip() == answer_text.strip():
            return self.ts  # the stopped message already says the guarded answer, with its sources and 👍/👎
        ts = self.client.chat_postMessage(channel=self.channel, thread_ts=self.thread_ts, **message)["ts"]
        try:  # the draft may say what the guard removed
            self.client.chat_delete(channel=self.channel, ts=self.ts)
        except SlackApiError as err:
            log.warning("the streamed draft could not be deleted: %s", err.response.get("error"))
        return ts


# -------------------------------------------------------------------------------- choosing a stream


class _Ask(Protocol):
    channel: str
    user: str
    thread_ts: str | None


class _Reply(Protocol):
    ts: str | None
    question_id: int | None
    webhook: Any

    def show(self, message: blocks.Message) -> None: ...


_teams: weakref.WeakKeyDictionary[WebClient, str] = weakref.WeakKeyDictionary()


def workspace_team(client: WebClient) -> str | None:
    """The bot's workspace (auth.test, asked once per client): the recipient team of a stream."""
    if client not in _teams:
        try:
            _teams[client] = client.auth_test()["team_id"]
        except (SlackApiError, KeyError) as err:
            log.warning("auth.test gave no team id: %s", err)
            return None
    return _teams[client]


def open_stream(ctx: SlackContext, ask: _Ask, reply: _Reply, title: str) -> MessageStream | NativeStream | None:
    """A native stream where allowed and accepted, else the placeholder with chat.update edits (None when the
    answer can only be shown at the end, e.g. through a response_url)."""
    settings = ctx.settings
    if settings.slack_streaming == "native" and ask.thread_ts and reply.ts is None and reply.webhook is None:
        native = NativeStream.start(ctx.client, ask.channel, ask.thread_ts, user=ask.user,
                                    team=ask.team_id or workspace_team(ctx.client), intro=blocks.stream_intro(title),
                                    interval_s=settings.stream_interval_s)
        if native is not None:
            reply.ts = native.ts
            _remember(ctx, reply)
            return native
    reply.show(blocks.thinking_message(title))
    if reply.ts:
        return MessageStream(ctx.client, ask.channel, reply.ts, interval_s=settings.stream_interval_s,
                             render=partial(blocks.streaming_message, title))
    return None


def _remember(ctx: SlackContext, reply: _Reply) -> None:
    """Record the streamed message as the question's placeholder: a resumed answer edits it, not posts again."""
    if reply.question_id is None or ctx.questions is None or reply.ts is None:
        return
    try:
        ctx.questions.set_placeholder(reply.question_id, reply.ts)
    except Exception:  # a resume would post a new message: harmless
        log.exception("could not record the placeholder of question %s", reply.question_id)
