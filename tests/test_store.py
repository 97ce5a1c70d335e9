"""The store: migrations, the contract the Slack app codes against, privacy at the door, and thread safety.

Every contract test runs on both backends: SQLite (the default) and a real PostgreSQL server (tests/pg.py).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.store import migrations
from bot.store.store import Store, StoreUnavailable, UnknownExchange, hash_value

pytest_plugins = ("pg",)

SLACK_USER = "U0CANARY42"


def log(store: Store, **changes: object) -> int:
    fields: dict = {
        "source": "slack",
        "question": "What was revenue in 2019?",
        "answer": "Revenue was $12.3m [1].",
        "domain": "finance",
        "kind": "answer",
        "router_scores": {"finance": 0.71, "legal": 0.12},
        "chosen_by": "router",
        "citations": ["tatqa-1#0", "tatqa-1#1"],
        "adapter": "v1",
        "latency_ms": 812.5,
        "tokens_prompt": 300,
        "tokens_completion": 20,
        "channel": "C1",
        "user": SLACK_USER,
        "thread_ts": "100.1",
    }
    fields.update(changes)
    return store.log_exchange(**fields)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def location(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store lives: a new SQLite file, or a new database on the session's PostgreSQL server."""
    return str(tmp_path / "sub" / "bot.db") if backend == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    where = ":memory:" if backend == "sqlite" else request.getfixturevalue("pg_url")
    opened = Store(where, salt="pepper")
    yield opened
    opened.close()


def cells(location: str) -> list[str]:
    """Every value in every table, read past the Store (sqlite3 or psycopg directly)."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                " AND table_type = 'BASE TABLE'")]
            return [str(v) for t in tables for row in conn.execute(f'select * from "{t}"') for v in row]
    with sqlite3.connect(location) as conn:
        return [
            str(v)
            for (table,) in conn.execute("select name from sqlite_master where type='table'")
            for row in conn.execute(f"select * from [{table}]")
            for v in row
        ]


# -- migrations -----------------------------------------------------------------------------------------


def test_migrations_run_once_on_a_fresh_db(store: Store) -> None:
    names = [fn.__name__ for fn in migrations.MIGRATIONS]
    assert store.migrations_applied == names
    assert migrations.applied(store.backend) == set(names)
    assert {"exchanges", "feedback", "events", "training_runs", "questions"} <= set(store.backend.table_names())
    assert "exchange_feedback" in store.backend.view_names()
    with store.write() as db:
        assert migrations.migrate(db) == []


def test_migrations_are_numbered_in_order() -> None:
    numbers = [int(fn.__name__[1:4]) for fn in migrations.MIGRATIONS]
    assert numbers == sorted(set(numbers))


def test_migration_decorator_rejects_bad_names_and_order() -> None:
    before = list(migrations.MIGRATIONS)

    def add_things(db: object) -> None: ...

    def m000_too_early(db: object) -> None: ...

    with pytest.raises(ValueError, match="must be named"):
        migrations.migration(add_things)
    with pytest.raises(ValueError, match="out of order"):
        migrations.migration(m000_too_early)
    assert migrations.MIGRATIONS == before


def test_reopening_a_store_applies_nothing_and_keeps_rows(location: str) -> None:
    first = Store(location)
    exchange_id = log(first)
    first.close()
    with Store(location) as again:
        assert again.migrations_applied == []
        assert again.exchange(exchange_id)["question"] == "What was revenue in 2019?"


def test_file_db_uses_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    store = Store(tmp_path / "bot.db")
    pragma = lambda name: store.db.execute(f"PRAGMA {name}").fetchone()[0]  # noqa: E731
    assert pragma("journal_mode") == "wal"
    assert pragma("busy_timeout") >= 5000
    assert pragma("foreign_keys") == 1
    assert pragma("synchronous") == 1  # NORMAL
    assert store.integrity_check() == "ok"


def test_from_settings_uses_db_path_and_salt(tmp_path: Path) -> None:
    from bot.config import Settings

    settings = Settings(db_path=tmp_path / "x.db", user_hash_salt="s3")
    store = Store.from_settings(settings)
    assert store.path == str(tmp_path / "x.db")
    assert store.hash_user("U1") == hash_value("U1", "s3")


# -- exchanges ------------------------------------------------------------------------------------------


def test_log_exchange_round_trip(store: Store) -> None:
    exchange_id = log(store)
    row = store.exchange(exchange_id)
    assert row["router_scores"] == {"finance": 0.71, "legal": 0.12}
    assert row["citations"] == ["tatqa-1#0", "tatqa-1#1"]
    assert (row["adapter"], row["chosen_by"], row["source"], row["kind"]) == (
        "v1",
        "router",
        "slack",
        "answer",
    )
    assert row["latency_ms"] == 812.5
    assert (row["tokens_prompt"], row["tokens_completion"]) == (300, 20)
    assert row["user_hash"] == hash_value(SLACK_USER, "pepper")
    assert store.exchange(exchange_id + 99) is None


def test_a_retried_event_logs_one_exchange(store: Store) -> None:
    first = log(store, event_key="Ev123")
    second = log(store, event_key="Ev123", answer="a retry")
    assert first == second
    assert store.count("exchanges") == 1
    assert log(store) != first  # no key: always a new row


def test_message_lookup_and_thread_domain(store: Store) -> None:
    exchange_id = log(store, thread_ts="100.1")
    assert store.exchange_by_message("C1", "200.2") is None
    store.set_exchange_message(exchange_id, "C1", "200.2")
    assert store.exchange_by_message("C1", "200.2")["id"] == exchange_id
    assert store.thread_domain("C1", "100.1") == "finance"
    log(store, thread_ts="100.1", domain="legal")
    log(store, thread_ts="100.1", domain=None, kind="abstain")  # an abstention doesn't reset the thread
    assert store.thread_domain("C1", "100.1") == "legal"
    assert store.thread_domain("C1", "999.9") is None
    assert store.thread_domain("C2", "100.1") is None


def test_a_thread_can_start_at_the_bots_reply(store: Store) -> None:
    exchange_id = log(store, thread_ts=None)
    store.set_exchange_message(exchange_id, "C1", "300.3")
    assert store.thread_domain("C1", "300.3") == "finance"


def test_set_message_on_unknown_exchange_raises(store: Store) -> None:
    with pytest.raises(UnknownExchange):
        store.set_exchange_message(42, "C1", "1.0")


# -- feedback -------------------------------------------------------------------------------------------


def test_feedback_counts_once_per_event_key(store: Store) -> None:
    exchange_id = log(store)
    assert store.add_feedback(exchange_id, "reaction", "+1", user="U1", event_key="r1") is True
    assert store.add_feedback(exchange_id, "reaction", "+1", user="U1", event_key="r1") is False
    assert store.add_feedback(exchange_id, "button", "-1", user="U2", event_key="b1") is True
    rows = store.feedback_for(exchange_id)
    assert [(r["kind"], r["value"]) for r in rows] == [("reaction", "+1"), ("button", "-1")]
    assert rows[0]["user_hash"] == hash_value("U1", "pepper")
    view = store.query("select * from exchange_feedback")[0]
    assert (view["thumbs_up"], view["thumbs_down"]) == (1, 1)


def test_feedback_errors_are_clear(store: Store) -> None:
    exchange_id = log(store)
    with pytest.raises(ValueError, match="unknown feedback kind"):
        store.add_feedback(exchange_id, "smile", "+1", user="U1", event_key="k")
    with pytest.raises(ValueError, match="event_key"):
        store.add_feedback(exchange_id, "reaction", "+1", user="U1", event_key="")
    with pytest.raises(UnknownExchange):
        store.add_feedback(exchange_id + 1, "reaction", "+1", user="U1", event_key="k2")
    assert store.feedback_for(exchange_id) == []


def test_feedback_join_and_opt_out(store: Store) -> None:
    a, b = log(store), log(store, domain="legal")
    store.add_feedback(a, "opt_out", "see_no_evil", user="U1", event_key="o1")
    store.add_feedback(b, "correction", "The answer is 7.", user="U1", event_key="c1")
    assert store.opted_out() == {a}
    assert [r["domain"] for r in store.feedback()] == ["finance", "legal"]
    assert [r["kind"] for r in store.feedback("legal")] == ["correction"]


def test_router_examples_from_reroutes(store: Store) -> None:
    a = log(store, question="Can I expense a taxi?", domain=None, kind="abstain", chosen_by="none")
    b = log(store, question="Is this clause enforceable?", domain="finance")
    c = log(store, question="Private question", domain=None, kind="abstain")
    store.add_feedback(a, "reroute", "medical", user="U1", event_key="p1")
    store.add_feedback(a, "reroute", "finance", user="U1", event_key="p2")  # the latest pick wins
    store.add_feedback(b, "reroute", "legal", user="U2", event_key="p3")
    store.add_feedback(c, "reroute", "legal", user="U3", event_key="p4")
    store.add_feedback(c, "opt_out", "see_no_evil", user="U3", event_key="o4")
    assert store.router_examples() == {
        "finance": ["Can I expense a taxi?"],
        "legal": ["Is this clause enforceable?"],
    }


def test_claim_event_is_shared_across_connections_via_the_store(location: str) -> None:
    one, two = Store(location), Store(location)
    assert one.claim_event("Ev1") is True
    assert two.claim_event("Ev1") is False
    assert two.claim_event("Ev2") is True


# -- training runs --------------------------------------------------------------------------------------


def test_training_run_records(store: Store) -> None:
    run = store.start_run("finance", current_version="v1", config={"max_steps": 3})
    assert store.runs("finance")[0]["status"] == "running"
    assert store.last_run("finance") is None
    store.finish_run(
        run,
        status="rejected",
        reason="tfns dropped 3.0 points",
        candidate_version="v2",
        metrics_candidate={"overall": 0.5},
        example_ids=["exchange-1", "exchange-2"],
        promoted=False,
    )
    row = store.last_run("finance")
    assert (row["status"], row["promoted"], row["candidate_version"]) == ("rejected", 0, "v2")
    assert row["metrics_candidate"] == {"overall": 0.5}
    assert row["example_ids"] == ["exchange-1", "exchange-2"]
    assert row["config"] == {"max_steps": 3}
    assert store.runs("legal") == []


def test_store_misuse_errors_are_clear(store: Store) -> None:
    run = store.start_run("finance", current_version="v1")
    with pytest.raises(ValueError, match="training_runs has no column colour"):
        store.finish_run(run, status="failed", reason="x", colour="red")
    with pytest.raises(LookupError, match="no training run 999"):
        store.finish_run(999, status="failed", reason="x")
    with pytest.raises(ValueError, match="no table 'nope'"):
        store.count("nope")
    assert store.runs()[0]["status"] == "running"  # the refused updates changed nothing


def test_an_unopenable_sqlite_file_is_reported_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match=f"cannot open the SQLite store {tmp_path}"):
        Store(tmp_path)  # a folder, not a file


# -- privacy --------------------------------------------------------------------------------------------

CANARY_TEXT = (
    "I am jane.canary@example.com, card 4111 1111 1111 1111, SSN 123-45-6789, IBAN GB82 WEST 1234 5698 7654 32, "
    "MRN: 99887766, phone +44 20 7946 0958."
)
CANARY_SECRETS = [
    "jane.canary@example.com",
    "4111 1111 1111 1111",
    "4111111111111111",
    "123-45-6789",
    "GB82 WEST 1234 5698 7654 32",
    "GB82WEST12345698765432",
    "99887766",
    "7946 0958",
    SLACK_USER,
]


def on_disk(location: str, request: pytest.FixtureRequest) -> bytes:
    """Every byte the database keeps: SQLite's db, -wal and -shm; PostgreSQL's data directory (tables, WAL)."""
    if location.startswith("postgresql://"):
        cluster = request.getfixturevalue("pg_server")
        cluster.admin("CHECKPOINT")  # the rows reach the table files as well as the WAL
        return b"".join(p.read_bytes() for p in cluster.data.rglob("*") if p.is_file())
    return b"".join(p.read_bytes() for p in Path(location).parent.iterdir())


def test_planted_canaries_never_reach_the_disk(location: str, request: pytest.FixtureRequest) -> None:
    store = Store(location)
    exchange_id = log(
        store,
        question=CANARY_TEXT,
        answer="You said: " + CANARY_TEXT,
        user=SLACK_USER,
        event_key=f"{SLACK_USER}-Ev1",
    )
    store.add_feedback(exchange_id, "correction", CANARY_TEXT, user=SLACK_USER, event_key=f"{SLACK_USER}:c")
    store.add_feedback(exchange_id, "reaction", "+1", user=SLACK_USER, event_key=f"{SLACK_USER}:r")
    store.claim_event(f"event-from-{SLACK_USER}")
    assert store.exchange(exchange_id)["pii_redactions"] == 12
    store.close()

    blobs = on_disk(location, request)
    found = [s for s in CANARY_SECRETS if s.encode() in blobs]
    stored = cells(location)
    found += [s for s in CANARY_SECRETS if any(s in c for c in stored)]
    assert found == []
    assert any("[EMAIL]" in c and "[CARD]" in c and "[IBAN]" in c for c in stored)
    assert b"[EMAIL]" in blobs  # the scan reads where the rows are


# -- threads --------------------------------------------------------------------------------------------


def test_threads_can_share_one_store(location: str) -> None:
    store = Store(location)
    exchange_id = log(store)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                store.add_feedback(exchange_id, "reaction", "+1", user=f"U{n}", event_key=f"{n}-{i}")
                store.claim_event(f"{n}-{i % 10}")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.feedback_for(exchange_id)) == 200
    assert store.count("events") == 40
