"""The durable store: exchanges, feedback, handled Slack events, questions and training runs.

`DOMAINBOT_DB` names where they live: a SQLite file (the default) or a PostgreSQL URL (`postgresql://…`), the
shared store for replicas on several hosts (`bot.store.backend`, `bot.store.postgres`). Both get the same
numbered migrations, the same UNIQUE event keys, the same SQL and the same privacy.

Privacy happens here, at the only door to the disk, before any backend sees a row: every user-facing text is
PII-scrubbed (`bot.store.pii`) and every Slack user id is replaced by a salted hash before a row is written.
Event keys are hashed too, so a caller that builds a key from a user id cannot leak it.

Durability and concurrency: see the backends. Every write is one transaction (`write()`): SQLite's
`BEGIN IMMEDIATE`, PostgreSQL's BEGIN; a method returns only after its COMMIT. One connection per Store,
shared by threads behind a lock; scale with processes.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.store.backend import BUSY_TIMEOUT_MS, Backend, StoreUnavailable, is_postgres_url, postgres_url  # noqa: F401
from bot.store.migrations import migrate
from bot.store.pii import scrub, scrub_counted
from bot.store.sqlite_backend import SqliteBackend, _enable_wal  # noqa: F401  (tests import _enable_wal from here)

STORED_QUESTION_CHARS = 20_000  # the policy's limit: a longer question is refused, and stored cut to this
STORED_FEEDBACK_CHARS = 20_000
FEEDBACK_KINDS = frozenset({"reaction", "button", "correction", "reroute", "opt_out"})
_JSON_COLUMNS = (
    "router_scores",
    "citations",
    "example_ids",
    "metrics_current",
    "metrics_candidate",
    "config",
)


class UnknownExchange(LookupError):
    """Feedback names an exchange id the store does not have."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def hash_value(value: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}\x00{value}".encode()).hexdigest()


def _decode(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    for col in _JSON_COLUMNS:
        if isinstance(out.get(col), str):
            out[col] = json.loads(out[col])
    return out


def open_backend(location: Path | str) -> Backend:
    if is_postgres_url(location):
        from bot.store.postgres import PostgresBackend  # psycopg is only needed for a PostgreSQL URL

        return PostgresBackend(postgres_url(location))
    return SqliteBackend(location)


class Store:
    def __init__(
        self, path: Path | str, *, salt: str = "domainbot", clock: Callable[[], str] = utc_now
    ) -> None:
        """`path`: a SQLite file (":memory:" too) or a PostgreSQL URL."""
        self.backend: Backend = open_backend(path)
        self.path = self.backend.location
        self.dialect = self.backend.dialect
        self.db = self.backend.native  # sqlite_utils.Database, or the psycopg Connection
        self.salt = salt
        self.clock = clock
        self._lock = threading.RLock()
        try:
            with self.write() as db:
                self.migrations_applied = migrate(db)
        except BaseException:
            self.backend.close()
            raise

    @classmethod
    def from_settings(cls, settings: Any) -> Store:
        # db_url: a PostgreSQL URL kept as text (a Path folds its "//"); db_path: the SQLite file.
        return cls(getattr(settings, "db_url", None) or settings.db_path, salt=settings.user_hash_salt)

    # -- plumbing ---------------------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Backend]:
        """One write transaction (SQLite: BEGIN IMMEDIATE, so read-then-write never hits a lock upgrade)."""
        with self._lock, self.backend.transaction() as db:
            yield db

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        with self._lock:
            return self.backend.query(sql, params)

    def _one(self, sql: str, params: tuple | dict = ()) -> dict[str, Any] | None:
        rows = self.query(sql, params)
        return _decode(rows[0]) if rows else None

    def count(self, table: str) -> int:
        with self._lock:
            return self.backend.count(table)

    def hash_user(self, user: str | None) -> str | None:
        return hash_value(user, self.salt) if user else None

    def _event_hash(self, key: str) -> str:
        return hash_value(key, self.salt + ":event")

    @staticmethod
    def clean_question(text: str) -> tuple[str, int]:
        """The question as stored: cut to STORED_QUESTION_CHARS before scrubbing (scrubbing is linear, but a
        1 MB message still need not be kept), and its original length."""
        return scrub(text[:STORED_QUESTION_CHARS]), len(text)

    def close(self) -> None:
        with self._lock:
            self.backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def integrity_check(self) -> str:
        with self._lock:
            return self.backend.integrity_check()

    # -- Slack events -----------------------------------------------------------------------------------

    def claim_event(self, key: str) -> bool:
        """True the first time `key` is seen (by any process), False for a duplicate."""
        with self.write() as db:
            cur = db.execute(
                "INSERT INTO events (key, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (self._event_hash(key), self.clock()),
            )
            return cur.rowcount == 1

    # -- exchanges --------------------------------------------------------------------------------------

    def log_exchange(
        self,
        *,
        source: str,
        question: str,
        answer: str,
        domain: str | None,
        kind: str,
        router_scores: dict[str, float],
        chosen_by: str,
        citations: list[str],
        adapter: str,
        latency_ms: float,
        tokens_prompt: int = 0,
        tokens_completion: int = 0,
        channel: str | None = None,
        user: str | None = None,
        thread_ts: str | None = None,
        message_ts: str | None = None,
        event_key: str | None = None,
        guard_verdict: str | None = None,
        queue_ms: float | None = None,
        answer_ms: float | None = None,
    ) -> int:
        """Store one question and its answer; returns the exchange id (the existing one for a repeated event_key)."""
        clean_q, n_q = scrub_counted(question[:STORED_QUESTION_CHARS])
        clean_a, n_a = scrub_counted(answer)
        row = {
            "created_at": self.clock(),
            "source": source,
            "channel": channel,
            "user_hash": self.hash_user(user),
            "thread_ts": thread_ts,
            "message_ts": message_ts,
            "event_key": self._event_hash(event_key) if event_key else None,
            "question": clean_q,
            "answer": clean_a,
            "domain": domain,
            "kind": kind,
            "router_scores": json.dumps({k: round(float(v), 6) for k, v in router_scores.items()}),
            "chosen_by": chosen_by,
            "citations": json.dumps(list(citations)),
            "adapter": adapter,
            "latency_ms": float(latency_ms),
            "tokens_prompt": int(tokens_prompt),
            "tokens_completion": int(tokens_completion),
            "pii_redactions": n_q + n_a,
            "question_chars": len(question),
            "queue_ms": queue_ms,  # Slack: waiting for a worker; latency_ms is the whole wait the user saw
            "answer_ms": answer_ms,
            "guard_verdict": guard_verdict,  # supported | trimmed | quoted | no-sources (None: no answer was generated)
        }
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.write() as db:
            inserted = db.execute(
                f"INSERT INTO exchanges ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING RETURNING id",
                tuple(row.values()),
            ).fetchone()
            if inserted is not None:
                return int(inserted[0])
            # A repeated event_key: the first delivery's row (on PostgreSQL the insert waited for its commit).
            existing = db.execute(
                "SELECT id FROM exchanges WHERE event_key = ?", (row["event_key"],)
            ).fetchone()
            return int(existing[0])

    def set_exchange_message(self, exchange_id: int, channel: str, message_ts: str) -> None:
        with self.write() as db:
            cur = db.execute(
                "UPDATE exchanges SET channel = ?, message_ts = ? WHERE id = ?",
                (channel, message_ts, exchange_id),
            )
            if cur.rowcount == 0:
                raise UnknownExchange(f"no exchange {exchange_id}")

    def exchange(self, exchange_id: int) -> dict | None:
        return self._one("SELECT * FROM exchanges WHERE id = ?", (exchange_id,))

    def exchange_by_message(self, channel: str, message_ts: str) -> dict | None:
        return self._one(
            "SELECT * FROM exchanges WHERE channel = ? AND message_ts = ? ORDER BY id DESC LIMIT 1",
            (channel, message_ts),
        )

    def thread_domain(self, channel: str, thread_ts: str) -> str | None:
        """The domain of the latest routed exchange in that thread (the thread may start at the reply itself)."""
        row = self._one(
            "SELECT domain FROM exchanges WHERE channel = ? AND (thread_ts = ? OR message_ts = ?)"
            " AND domain IS NOT NULL ORDER BY id DESC LIMIT 1",
            (channel, thread_ts, thread_ts),
        )
        return row["domain"] if row else None

    def exchanges(self, domain: str | None = None, *, since_id: int = 0) -> list[dict]:
        sql = "SELECT * FROM exchanges WHERE id > ?" + (" AND domain = ?" if domain else "") + " ORDER BY id"
        params = (since_id, domain) if domain else (since_id,)
        return [_decode(r) for r in self.query(sql, params)]

    # -- feedback ---------------------------------------------------------------------------------------

    def add_feedback(
        self, exchange_id: int, kind: str, value: str, *, user: str | None, event_key: str
    ) -> bool:
        """Record one piece of feedback; False when `event_key` was already recorded (retries count once)."""
        if kind not in FEEDBACK_KINDS:
            raise ValueError(f"unknown feedback kind {kind!r}; expected one of {sorted(FEEDBACK_KINDS)}")
        if not event_key:
            raise ValueError("feedback needs an event_key so that retries count once")
        row = (
            exchange_id,
            kind,
            scrub(str(value)[:STORED_FEEDBACK_CHARS]),
            self.hash_user(user),
            self.clock(),
            self._event_hash(event_key),
        )
        with self.write() as db:
            if db.execute("SELECT 1 FROM exchanges WHERE id = ?", (exchange_id,)).fetchone() is None:
                raise UnknownExchange(f"no exchange {exchange_id}")
            cur = db.execute(
                "INSERT INTO feedback (exchange_id, kind, value, user_hash, created_at, event_key)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                row,
            )
            return cur.rowcount == 1

    def feedback_for(self, exchange_id: int) -> list[dict]:
        return self.query("SELECT * FROM feedback WHERE exchange_id = ? ORDER BY id", (exchange_id,))

    def feedback(self, domain: str | None = None) -> list[dict]:
        """All feedback rows joined with their exchange's domain and adapter, oldest first."""
        sql = (
            "SELECT f.*, e.domain, e.adapter FROM feedback f JOIN exchanges e ON e.id = f.exchange_id"
            + (" WHERE e.domain = ?" if domain else "")
            + " ORDER BY f.id"
        )
        return self.query(sql, (domain,) if domain else ())

    def opted_out(self) -> set[int]:
        return {
            r["exchange_id"]
            for r in self.query("SELECT DISTINCT exchange_id FROM feedback WHERE kind = 'opt_out'")
        }

    def router_examples(self) -> dict[str, list[str]]:
        """Questions users re-routed with a button, grouped by the domain they picked (opt-outs excluded).

        A question's latest pick wins; each question appears once per domain.
        """
        rows = self.query(
            "SELECT f.exchange_id, f.value, e.question FROM feedback f JOIN exchanges e ON e.id = f.exchange_id"
            " WHERE f.kind = 'reroute' AND f.exchange_id NOT IN"
            " (SELECT exchange_id FROM feedback WHERE kind = 'opt_out') ORDER BY f.id"
        )
        latest = {r["exchange_id"]: (r["value"], r["question"]) for r in rows}
        out: dict[str, list[str]] = {}
        for picked, question in latest.values():
            if question not in out.setdefault(picked, []):
                out[picked].append(question)
        return out

    # -- training runs ----------------------------------------------------------------------------------

    def start_run(self, domain: str, *, current_version: str, config: dict | None = None) -> int:
        with self.write() as db:
            row = db.execute(
                "INSERT INTO training_runs (domain, started_at, status, current_version, promoted, config)"
                " VALUES (?, ?, 'running', ?, 0, ?) RETURNING id",
                (domain, self.clock(), current_version, json.dumps(config or {}, default=str)),
            ).fetchone()
            return int(row[0])

    def finish_run(self, run_id: int, *, status: str, reason: str, **fields: Any) -> None:
        values = {"status": status, "reason": reason, "finished_at": self.clock(), **fields}
        for col in _JSON_COLUMNS:
            if col in values and not isinstance(values[col], str):
                values[col] = json.dumps(values[col], default=str)
        if "promoted" in values:
            values["promoted"] = int(bool(values["promoted"]))
        with self.write() as db:
            unknown = sorted(set(values) - set(db.columns("training_runs")))
            if unknown:
                raise ValueError(f"training_runs has no column {', '.join(unknown)}")
            sets = ", ".join(f"{col} = ?" for col in values)  # names checked against the table just above
            cur = db.execute(f"UPDATE training_runs SET {sets} WHERE id = ?", (*values.values(), run_id))
            if cur.rowcount == 0:
                raise LookupError(f"no training run {run_id}")

    def runs(self, domain: str | None = None) -> list[dict]:
        sql = "SELECT * FROM training_runs" + (" WHERE domain = ?" if domain else "") + " ORDER BY id"
        return [_decode(r) for r in self.query(sql, (domain,) if domain else ())]

    def last_run(self, domain: str, *, statuses: tuple[str, ...] = ("promoted", "rejected")) -> dict | None:
        marks = ", ".join("?" for _ in statuses)
        return self._one(
            f"SELECT * FROM training_runs WHERE domain = ? AND status IN ({marks}) ORDER BY id DESC LIMIT 1",
            (domain, *statuses),
        )
