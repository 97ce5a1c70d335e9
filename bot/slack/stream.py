"""Stream a reply into Slack by editing one message as tokens arrive.

Slack allows about one message write per second per channel, so edits are throttled to one per
`interval_s`. They are sent from a background thread: the token callback runs on the LLM's own
thread and must never wait on the network. A 429 is retried after its Retry-After by the
WebClient's RateLimitErrorRetryHandler (see slack_app.make_client); if the retries run out, the
stream also waits Retry-After before its next edit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

log = logging.getLogger(__name__)

Render = Callable[[str], dict[str, Any]]  # partial text -> chat.update fields (text, blocks)


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


class MessageStream:
    def __init__(
        self, client: WebClient, channel: str, ts: str, *, interval_s: float, render: Render,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.channel = channel
        self.ts = ts
        self.interval_s = interval_s
        self.render = render
        self.clock = clock
        self.updates = 0  # edits sent (for tests and stats)
        self._text = ""
        self._next_at = clock() + interval_s  # the placeholder was just posted: wait one interval
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()

    @property
    def text(self) -> str:
        with self._lock:
            return self._text

    def feed(self, piece: str) -> None:
        """Token callback: append, and start an edit if one is due and none is in flight."""
        with self._lock:
            self._text += piece
            now = self.clock()
            if now < self._next_at or not self._idle.is_set() or not self._text.strip():
                return
            self._idle.clear()
            self._next_at = now + self.interval_s
            snapshot = self._text
        threading.Thread(target=self._push, args=(snapshot,), name="slack-stream", daemon=True).start()

    def _push(self, text: str) -> None:
        try:
            self.client.chat_update(channel=self.channel, ts=self.ts, **self.render(text))
            self.updates += 1
        except SlackApiError as err:
            # A lost intermediate edit is harmless: the final edit carries the whole answer.
            wait = retry_after(err) if err.response.status_code == 429 else 0.0
            with self._lock:
                self._next_at = max(self._next_at, self.clock() + wait)
            log.info("stream edit skipped: %s", err.response.get("error"))
        finally:
            self._idle.set()

    def close(self, timeout: float = 60.0) -> None:
        """Wait for an edit in flight, so the final edit lands last."""
        self._idle.wait(timeout)
