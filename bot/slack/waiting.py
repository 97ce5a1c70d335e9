"""The line of Slack questions waiting for the model, and what waiting users see.

Every accepted question gets a `Ticket` in the `WaitingLine`, in arrival order. A worker answers a ticket only
when fewer than `slots` tickets are ahead of it (`wait_turn`), so the line is first come, first served and the
place we show is the real one. While it waits, a notifier thread posts its placeholder ("2 questions ahead of
yours") and edits it as the line moves. The worker takes the ticket's lock when its turn comes, so the notifier
never posts a second message for a question that has started; the answer then edits that same placeholder.

`slots` is how many answers generate at once: 1 for the embedded llama.cpp runtime (one generation thread),
the worker count for an inference server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slack_sdk.errors import SlackApiError

log = logging.getLogger(__name__)

RETRY_QUESTION = "retry_question"  # action id of the button under an apology for a question lost in a restart


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

    def queue_ms(self) -> float:
        return round(((self.started or time.monotonic()) - self.submitted) * 1000, 1)


def waiting_message(ahead: int) -> dict:
    who = "1 question" if ahead == 1 else f"{ahead} questions"
    text = f":hourglass_flowing_sand: Your question is in line: {who} ahead of yours. I'll answer here."
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
    def __init__(self, slots: int = 1, *, interval_s: float = 0.5, update_every_s: float = 3.0):
        self.slots = max(1, slots)
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
        order; False (and the ticket not in line) when submit refuses."""
        with self._lock:
            self._line.append(ticket)
            if submit():
                return True
            self._line.remove(ticket)
            return False

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
