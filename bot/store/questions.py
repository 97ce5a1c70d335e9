"""Durable Slack questions: written when their event is claimed, resumed after a crash.

A question row is inserted in the same transaction that claims its event key, before Slack gets its ack, so an
acknowledged question is never only in memory. An event that may be a question (a mention, a DM, a reply in
one of our threads) is `receive`d by the dedupe middleware; the listener then `claim`s it as an Ask (or
`settle`s it when it was a correction, say), and anything else is claimed straight from the listener (/ask). Its owner (the process answering it) holds a lease that it renews while the question is
queued or answering; when the lease lapses, or the owner is provably dead (same host, pid gone), start-up, the
sweeper or a redelivery of the same event takes the question over. `attempts` stops a question that crashes
its process from being retried for ever.

`resume` keeps what answering needs again, including the raw Slack user id (needed to quote `/ask` and to
whisper); it is cleared the moment the question is answered or failed, so at rest only the hash remains.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.store.store import Store

OPEN = ("received", "queued", "answering")
LEASE_S = 20.0  # renewed every LEASE_S / 4 by the owner; a dead owner's questions wait at most this long
MAX_ATTEMPTS = 3  # a question that was being answered when its process died this often is apologised for


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str | None, me: str) -> bool:
    """True when `owner` is provably gone: an earlier process on this host whose pid no longer runs (or was
    reused by us). Another host's owner is never judged here; its lease decides."""
    if not owner or owner == me:
        return False
    try:
        host, pid_text, _ = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return True  # not one of ours: nothing holds it
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return True  # same pid, another nonce: a restarted container's pid 1
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class Claimed:
    id: int
    status: str  # received: only the event is known (resume replays it); queued: an Ask
    resumed: bool  # a stored question taken over (redelivery or resume), not a new one
    attempts: int
    placeholder_ts: str | None
    resume: dict[str, Any]


class Questions:
    """The questions table of one Store (same connection, same lock, same transactions, either backend)."""

    def __init__(self, store: Store, owner: str | None = None, *, lease_s: float = LEASE_S,
                 clock: Any = time.time):
        self.store = store
        self.owner = owner or new_owner()
        self.lease_s = lease_s
        self.clock = clock

    def receive(self, event_key: str, *, source: str, channel: str, user: str | None, text: str,
                event: dict[str, Any]) -> Claimed | None:
        """The middleware's claim of an event that may be a question: stored as `received` with the event's
        fields, so a crash before the listener runs can replay it. None for a duplicate."""
        return self._claim(event_key, "received", source, channel, user, text, {"event": event, "key": event_key})

    def claim(self, event_key: str, *, source: str, channel: str, user: str | None, question: str,
              resume: dict[str, Any]) -> Claimed | None:
        """Claim the event and store its question in one transaction, queued. An event this process received
        becomes this question. A repeated event whose question is still open and unowned (lease lapsed, owner
        dead): taken over. Anything else: None (a duplicate; nothing to do)."""
        return self._claim(event_key, "queued", source, channel, user, question, resume)

    def _claim(self, event_key: str, status: str, source: str, channel: str, user: str | None, text: str,
               resume: dict[str, Any]) -> Claimed | None:
        store, key, now = self.store, self.store._event_hash(event_key), self.clock()
        clean, chars = store.clean_question(text)
        with store.write() as db:
            # PostgreSQL: a concurrent claim of the same key makes this insert wait for that commit, then skip.
            fresh = db.execute("INSERT INTO events (key, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                               (key, store.clock())).rowcount == 1
            if fresh:
                new = db.execute(
                    "INSERT INTO questions (event_key, created_at, updated_at, status, source, channel, user_hash,"
                    " question, question_chars, resume, owner, lease_until, attempts)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0) RETURNING id",
                    (key, store.clock(), store.clock(), status, source, channel, store.hash_user(user), clean,
                     chars, json.dumps(resume), self.owner, now + self.lease_s),
                ).fetchone()
                return Claimed(int(new[0]), status, False, 0, None, resume)
            # Locked for the update below, read as it is once any other holder commits. Never skipped: a replica
            # checking a duplicate delivery holds the row for a moment, and our own listener must still get it.
            found = db.one("SELECT * FROM questions WHERE event_key = ?" + db.row_lock, (key,))
            if found is None:
                return None  # an event claimed without a question (an older version, a reaction)
            if status == "queued" and found["owner"] == self.owner and found["status"] in ("received", "queued"):
                # Our middleware received (or took over) this very delivery; the listener makes it the question.
                # A second delivery never gets here: the middleware drops it while we hold the lease.
                db.execute(
                    "UPDATE questions SET status = 'queued', source = ?, question = ?, question_chars = ?,"
                    " resume = ?, updated_at = ? WHERE id = ?",
                    (source, clean, chars, json.dumps(resume), store.clock(), found["id"]),
                )
                return Claimed(int(found["id"]), "queued", False, int(found["attempts"] or 0),
                               found["placeholder_ts"], resume)
            if not self._takeable(found, now):
                return None
            return self._take(db, found, now)

    def settle(self, event_key: str) -> None:
        """The listener is done with an event it received: one that did not become a question (a correction,
        a message that turned out not to be for us) leaves no row."""
        with self.store.write() as db:
            db.execute("DELETE FROM questions WHERE event_key = ? AND status = 'received' AND owner = ?",
                       (self.store._event_hash(event_key), self.owner))

    def _takeable(self, row: dict, now: float) -> bool:
        return row["status"] in OPEN and (
            (row["lease_until"] or 0) < now or owner_is_dead(row["owner"], self.owner))


    def _take(self, db: Any, row: dict, now: float) -> Claimed | None:
        status = "queued" if row["status"] == "answering" else row["status"]
        cur = db.execute(
            "UPDATE questions SET owner = ?, lease_until = ?, status = ?, updated_at = ?"
            " WHERE id = ? AND owner IS NOT DISTINCT FROM ? AND status IN ('received', 'queued', 'answering')",
            (self.owner, now + self.lease_s, status, self.store.clock(), row["id"], row["owner"]),
        )
        if cur.rowcount != 1:
            return None  # another process took it in between
        return Claimed(int(row["id"]), status, True, int(row["attempts"] or 0), row["placeholder_ts"],
                       json.loads(row["resume"] or "{}"))

    def take_stale(self, grace_s: float = 0.0) -> list[Claimed]:
        """Every open question whose owner's lease lapsed (`grace_s` ago) or whose owner died, now ours."""
        now = self.clock()
        taken = []
        with self.store.write() as db:
            # PostgreSQL: rows another host's sweeper holds are skipped, not waited for (it is taking them).
            rows = db.query("SELECT * FROM questions WHERE status IN ('received', 'queued', 'answering') ORDER BY id"
                            + db.row_lock_skip)
            for row in rows:
                if self._takeable(row, now - grace_s) and (claimed := self._take(db, row, now)):
                    taken.append(claimed)
        return taken

    def start(self, question_id: int) -> int:
        """Mark it answering; returns the attempt number (1 for the first try)."""
        with self.store.write() as db:
            row = db.execute(
                "UPDATE questions SET status = 'answering', attempts = attempts + 1, lease_until = ?,"
                " updated_at = ? WHERE id = ? RETURNING attempts",
                (self.clock() + self.lease_s, self.store.clock(), question_id),
            ).fetchone()
            return int(row[0])

    def set_placeholder(self, question_id: int, ts: str) -> None:
        with self.store.write() as db:
            db.execute("UPDATE questions SET placeholder_ts = ?, updated_at = ? WHERE id = ?",
                       (ts, self.store.clock(), question_id))

    def is_placeholder(self, channel: str, ts: str) -> bool:
        """Some question already holds the message at `ts` in `channel` as its placeholder."""
        return bool(self.store.query("SELECT 1 FROM questions WHERE channel = ? AND placeholder_ts = ? LIMIT 1",
                                     (channel, ts)))

    def finish(self, question_id: int, status: str, *, exchange_id: int | None = None,
               queue_ms: float | None = None, answer_ms: float | None = None) -> None:
        """answered | failed: the raw user id in `resume` is dropped here."""
        if status not in ("answered", "failed"):
            raise ValueError(f"a question finishes as answered or failed, not {status!r}")
        with self.store.write() as db:
            db.execute(
                "UPDATE questions SET status = ?, exchange_id = ?, queue_ms = ?, answer_ms = ?, resume = NULL,"
                " owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
                (status, exchange_id, queue_ms, answer_ms, self.store.clock(), question_id),
            )

    def renew(self) -> int:
        """Extend the lease of every open question this process owns; returns how many."""
        with self.store.write() as db:
            return db.execute(
                "UPDATE questions SET lease_until = ? WHERE owner = ? AND status IN ('received', 'queued', 'answering')",
                (self.clock() + self.lease_s, self.owner),
            ).rowcount

    def get(self, question_id: int) -> dict | None:
        rows = self.store.query("SELECT * FROM questions WHERE id = ?", (question_id,))
        return rows[0] if rows else None

    def open(self) -> list[dict]:
        return self.store.query("SELECT * FROM questions WHERE status IN ('received', 'queued', 'answering') ORDER BY id")
