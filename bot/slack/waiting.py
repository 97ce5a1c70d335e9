"""The line of Slack questions waiting for the model, and what waiting users see.

Every accepted question gets a `Ticket` in the `WaitingLine`, in arrival order. A worker answers a ticket only
when fewer than `slots` tickets are ahead of it (`wait_turn`), so the line is first come, first served and the
place we show is the real one. While it waits, a notifier thread posts its placeholder ("2 questions ahead of
yours") and edits it as the line moves. The worker takes the ticket's lock when its turn comes, so the notifier
never posts a second message for a question that has started; the answer then edits that same placeholder.

`slots` is how many answers generate at once: 1 for the embedded llama.cpp runtime (one generation thread),
the worker count for an inference server.

Caps: a user may have `per_user` questions in line (waiting or being answered) and the line holds at most
`max_len`; `join` refuses past either, sets `ticket.refused` to the message that says why and to try again,
and the caller finishes the question as failed (nothing is dropped silently). Both default from the environment
(DOMAINBOT_QUEUE_PER_USER, DOMAINBOT_QUEUE_MAX); 0 means no cap.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slack_sdk.errors import SlackApiError

from bot import metrics
from bot.slack.blocks import WAITING_MARK

log = logging.getLogger(__name__)

RETRY_QUESTION = "retry_question"  # action id of the button under an apology for a question lost in a restart
PER_USER_ENV, MAX_LEN_ENV = "DOMAINBOT_QUEUE_PER_USER", "DOMAINBOT_QUEUE_MAX"
DEFAULT_PER_USER, DEFAULT_MAX_LEN = 5, 100  # 5: a user may fire a few follow-ups at once


def user_cap_message(cap: int) -> str:
    return (f":hourglass_flowing_sand: You already have {cap} question{'s' if cap != 1 else ''} waiting for an "
            "answer. Please ask this one again once one of them is answered.")


def line_full_message(cap: int) -> str:
    return (f":hourglass_flowing_sand: {cap} questions are already waiting for an answer, so I can't take "
            "yours now. Please try again in a few minutes.")


def cap_from_env(name: str, default: int, env: dict[str, str] | None = None) -> int:
    """A cap from the environment: a whole number, 0 for none; ValueError with a clear message otherwise."""
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ValueError(f"{name} must be a whole number (0 for no cap), got {raw!r}")
    return int(raw)


@dataclass(eq=False)
class Ticket:
    ask: Any  # answering.Ask
    reply: Any  # answering.Reply: the one message this question owns
    question_id: int | None = None
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    shown: int | None = None  # the position the placeholder shows now
    shown_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    refused: str | None = None  # set by WaitingLine.join when a cap refused it: what to tell the user

    def queue_ms(self) -> float:
        return round(((self.started or time.monotonic()) - self.submitted) * 1000, 1)


def waiting_message(ahead: int) -> dict:
    who = "1 question" if ahead == 1 else f"{ahead} questions"
    text = f"{WAITING_MARK}: {who} ahead of yours. I'll answer here."
    return {"text": text, "blocks": [{"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}]}


def apology_message(question_id: int, why: str) -> dict:
    text = f":warning: Sorry, I couldn't finish answering your question: {why}"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "actions", "block_id": "retry", "elements": [{
                "type": "button", "action_id": RETRY_QUESTION, "value": str(question_id),
                "text": {"type": "plain_text", "text": "Ask again"},
            }]},
        ],
    }


class WaitingLine:
    def __init__(self, slots: int = 1, *, interval_s: float = 0.5, update_every_s: float = 3.0,
                 per_user: int | None = None, max_len: int | None = None):
        self.slots = max(1, slots)
        self.per_user = cap_from_env(PER_USER_ENV, DEFAULT_PER_USER) if per_user is None else per_user
        self.max_len = cap_from_env(MAX_LEN_ENV, DEFAULT_MAX_LEN) if max_len is None else max_len
        if self.per_user < 0 or self.max_len < 0:
            raise ValueError("queue caps must be 0 (no cap) or more")
        self.interval_s = interval_s
        self.update_every_s = update_every_s  # Slack allows about one write per second per channel
        self._line: list[Ticket] = []
        self._lock = threading.Lock()
        self._turns = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._line)

    def join(self, ticket: Ticket, submit: Callable[[], bool] = lambda: True) -> bool:
        """Add a ticket and run `submit` (queue its job) as one step, so the workers' queue keeps the line's
        order; False (and the ticket not in line) when a cap or submit refuses. A cap sets `ticket.refused`."""
        with self._lock:
            ticket.refused = self._refusal(ticket)
            if ticket.refused:
                metrics.QUEUE_REFUSED.labels("per_user" if self._user_full(ticket) else "line_full").inc()
                return False
            self._line.append(ticket)
            if submit():
                metrics.QUEUE_DEPTH.inc()
                return True
            self._line.remove(ticket)
            metrics.QUEUE_REFUSED.labels("workers_full").inc()
            return False

    def refusal(self, ticket: Ticket) -> str | None:
        """What a user would be told if `ticket` joined now (None: it fits). `join` checks again itself."""
        with self._lock:
            return self._refusal(ticket)

    def _user_full(self, ticket: Ticket) -> bool:
        user = getattr(ticket.ask, "user", None)
        mine = sum(1 for t in self._line if getattr(t.ask, "user", None) == user)
        return bool(self.per_user) and user is not None and mine >= self.per_user

    def _refusal(self, ticket: Ticket) -> str | None:
        if self._user_full(ticket):  # checked first: the user can do something about it
            return user_cap_message(self.per_user)
        if self.max_len and len(self._line) >= self.max_len:
            return line_full_message(self.max_len)
        return None

    def wait_turn(self, ticket: Ticket) -> None:
        """Block until fewer than `slots` tickets are ahead, then mark it started."""
        with self._turns:
            self._turns.wait_for(lambda: self._ahead(ticket) == 0)
        self.start(ticket)

    def ahead(self, ticket: Ticket) -> int:
        with self._lock:
            return self._ahead(ticket)

    def _ahead(self, ticket: Ticket) -> int:
        if ticket not in self._line:
            return 0
        return max(0, self._line.index(ticket) - self.slots + 1)

    def start(self, ticket: Ticket) -> None:
        """A worker picked it up: no more waiting notes (waits for one being posted now)."""
        with ticket.lock:
            ticket.started = time.monotonic()

    def leave(self, ticket: Ticket) -> None:
        with self._turns:
            if ticket in self._line:
                self._line.remove(ticket)
                metrics.QUEUE_DEPTH.dec()
            self._turns.notify_all()

    # -- the notifier --------------------------------------------------------------------------------------

    def run_in_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="slack-waiting-line", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.notify_once()
            except Exception:  # never let the notifier die: answers still go out without it
                log.exception("waiting-line notifier failed")

    def notify_once(self) -> int:
        """Post or update the note of every waiting ticket whose position changed; returns how many."""
        with self._lock:
            waiting = [(t, self._ahead(t)) for t in self._line if t.started is None]
        sent = 0
        now = time.monotonic()
        for ticket, ahead in waiting:
            if ahead == 0 or ahead == ticket.shown:
                continue
            if ticket.shown is not None and now - ticket.shown_at < self.update_every_s:
                continue
            with ticket.lock:
                if ticket.started is not None:
                    continue
                try:
                    ticket.reply.show(waiting_message(ahead))
                except SlackApiError as err:
                    log.info("waiting note not sent: %s", err.response.get("error"))
                    continue
                ticket.shown, ticket.shown_at = ahead, time.monotonic()
                sent += 1
        return sent
