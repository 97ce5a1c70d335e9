"""Numbered schema migrations for the Domainbot store (sqlite-utils).

A migration is a function decorated with `@migration`; its name starts with a 3-digit number and the list
runs in that order. Each one runs exactly once per database, recorded in `_migrations`, inside the caller's
`BEGIN IMMEDIATE` transaction so two processes opening a fresh database never both apply it.
Never edit a migration that has shipped: add the next number.

Plain column types (TEXT time stamps in ISO 8601 UTC, JSON in TEXT, declared foreign keys) keep the file
browsable in datasette as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[Migration] = []
NAME_RE = re.compile(r"^m(\d{3})_\w+$")


def migration(fn: Migration) -> Migration:
    if not NAME_RE.match(fn.__name__):
        raise ValueError(f"migration {fn.__name__!r} must be named m<NNN>_<what>")
    number = int(NAME_RE.match(fn.__name__).group(1))
    if MIGRATIONS and number <= int(NAME_RE.match(MIGRATIONS[-1].__name__).group(1)):
        raise ValueError(f"migration {fn.__name__!r} is out of order")
    MIGRATIONS.append(fn)
    return fn


def applied(db: sqlite_utils.Database) -> set[str]:
    if "_migrations" not in db.table_names():
        return set()
    return {row["name"] for row in db["_migrations"].rows}


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the pending migrations; the caller holds a write transaction. Returns the names applied."""
    db["_migrations"].create({"name": str, "applied_at": str}, pk="name", if_not_exists=True)
    done = applied(db)
    ran = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        fn(db)
        db["_migrations"].insert({"name": fn.__name__, "applied_at": datetime.now(UTC).isoformat()})
        ran.append(fn.__name__)
    return ran


@migration
def m001_exchanges(db: sqlite_utils.Database) -> None:
    db["exchanges"].create(
        {
            "id": int,
            "created_at": str,
            "source": str,  # slack | cli
            "channel": str,
            "user_hash": str,  # salted sha256 of the Slack user id; the raw id is never stored
            "thread_ts": str,
            "message_ts": str,  # the bot's reply, set once it is posted
            "event_key": str,  # sha256 of the Slack event key, UNIQUE: a retried event logs once
            "question": str,  # PII-scrubbed
            "answer": str,  # PII-scrubbed
            "domain": str,
            "kind": str,  # answer | abstain | refused | redirect | not_allowed
            "router_scores": str,  # JSON {domain: score}
            "chosen_by": str,  # router | explicit | thread | button | none
            "citations": str,  # JSON [chunk_id, ...]
            "adapter": str,  # base | vN
            "latency_ms": float,
            "tokens_prompt": int,
            "tokens_completion": int,
            "pii_redactions": int,
        },
        pk="id",
        not_null={"created_at", "source", "question", "answer", "kind", "adapter"},
        defaults={"tokens_prompt": 0, "tokens_completion": 0, "pii_redactions": 0},
    )
    db["exchanges"].create_index(["event_key"], unique=True)
    db["exchanges"].create_index(["channel", "message_ts"])
    db["exchanges"].create_index(["channel", "thread_ts"])
    db["exchanges"].create_index(["domain", "created_at"])


@migration
def m002_feedback(db: sqlite_utils.Database) -> None:
    db["feedback"].create(
        {
            "id": int,
            "exchange_id": int,
            "kind": str,  # reaction | button | correction | reroute | opt_out
            "value": str,  # "+1", "-1", "removed:+1", the corrected answer, the picked domain
            "user_hash": str,
            "created_at": str,
            "event_key": str,  # sha256 of the Slack event key: retries and repeats insert once
        },
        pk="id",
        not_null={"exchange_id", "kind", "value", "created_at", "event_key"},
        foreign_keys=[("exchange_id", "exchanges", "id")],
    )
    db["feedback"].create_index(["event_key"], unique=True)
    db["feedback"].create_index(["exchange_id"])
    db["feedback"].create_index(["kind", "created_at"])


@migration
def m003_events(db: sqlite_utils.Database) -> None:
    # Slack event ids already handled, across processes (web + worker).
    db["events"].create({"key": str, "created_at": str}, pk="key")


@migration
def m004_training_runs(db: sqlite_utils.Database) -> None:
    db["training_runs"].create(
        {
            "id": int,
            "domain": str,
            "started_at": str,
            "finished_at": str,
            "status": str,  # running | promoted | rejected | failed | skipped
            "current_version": str,  # the live adapter when the run started
            "candidate_version": str,
            "promoted": int,
            "reason": str,
            "n_feedback_examples": int,
            "n_replay_examples": int,
            "example_ids": str,  # JSON: the feedback examples it used, "exchange-<id>[-correction-<id>]", never text
            "metrics_current": str,  # JSON EvalResult summary
            "metrics_candidate": str,
            "config": str,  # JSON
        },
        pk="id",
        not_null={"domain", "started_at", "status"},
    )
    db["training_runs"].create_index(["domain", "started_at"])


@migration
def m005_views(db: sqlite_utils.Database) -> None:
    # Ready-made views so an owner browsing in datasette sees votes beside each answer.
    db.create_view(
        "exchange_feedback",
        """
        select e.id, e.created_at, e.domain, e.adapter, e.chosen_by, e.question, e.answer,
               sum(f.kind in ('reaction', 'button') and f.value = '+1') as thumbs_up,
               sum(f.kind in ('reaction', 'button') and f.value = '-1') as thumbs_down,
               sum(f.kind = 'correction') as corrections,
               sum(f.kind = 'reroute') as reroutes,
               max(f.kind = 'opt_out') as opted_out
        from exchanges e left join feedback f on f.exchange_id = e.id
        group by e.id
        """,
    )


@migration
def m006_guard_verdict(db: sqlite_utils.Database) -> None:
    # The grounding guard's verdict per answer, so the owner report can show it per adapter version.
    db["exchanges"].add_column("guard_verdict", str)


@migration
def m007_durable_questions(db: sqlite_utils.Database) -> None:
    # A Slack question is written when its event is claimed, before it is answered, so a crash loses nothing:
    # start-up and the sweeper resume what is left queued or answering once its owner's lease has lapsed.
    db["questions"].create(
        {
            "id": int,
            "event_key": str,  # the claimed event's hash (events.key): one question per delivery source
            "created_at": str,
            "updated_at": str,
            "status": str,  # queued | answering | answered | failed
            "source": str,
            "channel": str,
            "user_hash": str,
            "question": str,  # scrubbed, cut to STORED_QUESTION_CHARS
            "question_chars": int,  # the length the user sent
            "resume": str,  # JSON: what answering needs again (thread, flags, the raw user id); cleared when done
            "placeholder_ts": str,  # our message for it, once posted: resumed answers edit it
            "owner": str,  # host:pid:nonce of the process holding it
            "lease_until": float,  # unix time; the owner renews it while the question is queued or answering
            "attempts": int,
            "exchange_id": int,
            "queue_ms": float,
            "answer_ms": float,
        },
        pk="id",
        not_null={"event_key", "created_at", "status"},
    )
    db["questions"].create_index(["event_key"], unique=True)
    db["questions"].create_index(["status", "lease_until"])
    db["exchanges"].add_column("question_chars", int)
    db["exchanges"].add_column("queue_ms", float)
    db["exchanges"].add_column("answer_ms", float)
