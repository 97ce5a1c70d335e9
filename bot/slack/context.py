"""What every Slack listener needs: settings, the answerer, the store, the Web API client, the
rate limiter, the durable questions, the waiting line and the answer workers, in one object built once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot.answer import Answerer
from bot.config import Settings
from bot.domains import Domain
from bot.slack.ratelimit import RateLimiter
from bot.slack.waiting import WaitingLine
from bot.store.questions import Questions
from bot.store.store import Store

log = logging.getLogger(__name__)

WORKERS = 4  # answer jobs in parallel: Slack I/O and retrieval overlap; the LLM serialises generation itself
MAX_PENDING = 64  # beyond this, say "busy" at once rather than answer minutes late


def make_client(settings: Settings) -> WebClient:
    """The Web API client: `SLACK_API_URL` as base, and 429s retried after their Retry-After."""
    client = WebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url, timeout=30)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=2))
    return client


class Workers:
    """A bounded pool: `size` threads and at most `max_pending` jobs queued or running."""

    def __init__(self, size: int = WORKERS, max_pending: int = MAX_PENDING):
        self.size = size
        self._pool = ThreadPoolExecutor(size, thread_name_prefix="slack-answer")
        self._slots = threading.BoundedSemaphore(max_pending)

    def submit(self, fn: Callable[..., object], *args: object) -> bool:
        """Queue fn(*args); False (and nothing queued) when the pool is full."""
        if not self._slots.acquire(blocking=False):
            return False
        self._pool.submit(fn, *args).add_done_callback(self._done)
        return True

    def _done(self, future: Future) -> None:
        self._slots.release()
        if future.exception() is not None:  # jobs handle their own errors; this is the safety net
            log.error("answer job crashed", exc_info=future.exception())

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)


@dataclass
class SlackContext:
    settings: Settings
    answerer: Answerer
    store: Store
    client: WebClient
    bot_user_id: str
    limiter: RateLimiter
    workers: Workers = field(default_factory=Workers)
    listeners: Executor | None = None  # bolt's listener pool, drained on close
    questions: Questions | None = None  # type: ignore[assignment]  # set by create(): needs the store
    line: WaitingLine = field(default_factory=WaitingLine)
    background: list = field(default_factory=list)  # threads with a stop(): stopped on close
    _channel_names: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: Settings, answerer: Answerer, store: Store, client: WebClient, bot_user_id: str,
               workers: Workers | None = None, listeners: Executor | None = None) -> SlackContext:
        workers = workers or Workers()
        # The embedded llama.cpp runtime generates one answer at a time; a server runs the workers in parallel.
        slots = 1 if settings.llm_backend == "embedded" else workers.size
        return cls(settings, answerer, store, client, bot_user_id, RateLimiter(settings.rate_limit_per_minute),
                   workers, listeners, Questions(store), WaitingLine(slots))

    @property
    def domains(self) -> list[Domain]:
        return list(self.answerer.discovery.domains.values())

    def domain_title(self, name: str) -> str:
        found = self.answerer.discovery.domains.get(name)
        return found.title if found else name

    def channel_name(self, channel_id: str) -> str | None:
        """The channel's name, looked up only when some domain allows channels by name."""
        if channel_id.startswith("D") or not any(c.startswith("#") for d in self.domains for c in d.channels):
            return None
        if channel_id not in self._channel_names:
            try:
                self._channel_names[channel_id] = self.client.conversations_info(channel=channel_id)["channel"]["name"]
            except SlackApiError as err:
                log.warning("conversations.info failed for %s: %s", channel_id, err.response.get("error"))
                return None
        return self._channel_names[channel_id]

    def whisper(self, channel: str, user: str, text: str, thread_ts: str | None = None) -> None:
        """A note only `user` sees (rate limit, thanks, how-to); best effort, never raises."""
        try:
            self.client.chat_postEphemeral(channel=channel, user=user, text=text, thread_ts=thread_ts)
        except SlackApiError as err:
            log.info("ephemeral note not sent: %s", err.response.get("error"))

    def close(self) -> None:
        """Finish what was accepted: listeners first (they queue answers), then the answers."""
        if self.listeners:
            self.listeners.shutdown(wait=True)
        self.workers.shutdown(wait=True)
        self.line.stop()
        for thread in self.background:
            thread.stop()
