"""The PostgreSQL store beyond the shared contract (tests/test_store.py runs that on both backends): durability
under kill -9 of a writer and of the server, the lease takeover of questions between hosts, migrations started
by several replicas at once, connections the server drops, clear errors, and the training side reading a
PostgreSQL store exactly as it reads SQLite. A real server throughout (tests/pg.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from bot.config import ROOT, Settings
from bot.store import migrations
from bot.store.backend import StoreUnavailable
from bot.store.postgres import redact, to_pyformat
from bot.store.questions import Questions
from bot.store.store import Store
from bot.testing.net import free_port

if TYPE_CHECKING:
    from pg import PgCluster

pytest_plugins = ("pg",)

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# Prints each id once its write committed: a printed id is an acknowledged row.
WRITER = """
import sys
from bot.store.store import Store
store = Store(sys.argv[1])
exchange_id, start = int(sys.argv[2]), int(sys.argv[3])
for i in range(start, start + 100_000):
    store.add_feedback(exchange_id, "reaction", "+1", user=f"U{i}", event_key=f"k{i}")
    print(i, flush=True)
"""


def seed(store: Store) -> int:
    return store.log_exchange(source="cli", question="q", answer="a", domain="finance", kind="answer",
                              router_scores={}, chosen_by="router", citations=[], adapter="base", latency_ms=1.0)


def stored_ids(url: str, acked: set[int], salt: str = "domainbot") -> set[int]:
    with Store(url, salt=salt) as store:
        keys = {r["event_key"] for r in store.query("SELECT event_key FROM feedback")}
        return {i for i in acked if store._event_hash(f"k{i}") in keys}


def write_until(url: str, exchange_id: int, start: int, stop_after: int, crash) -> tuple[set[int], int]:
    """Run the writer; after `stop_after` acknowledgements call `crash(proc)`; return (acknowledged ids, rc)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url, str(exchange_id), str(start)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=ENV)
    acked: set[int] = set()
    for line in proc.stdout:
        acked.add(int(line))
        if len(acked) >= stop_after:
            crash(proc)
            break
    acked |= {int(line) for line in proc.stdout}  # acknowledgements already in the pipe when it died
    return acked, proc.wait(timeout=60)


# -- durability -----------------------------------------------------------------------------------------


def test_kill_9_of_a_writer_loses_no_acknowledged_row(pg_url: str) -> None:
    with Store(pg_url) as store:
        exchange_id = seed(store)
    acked: set[int] = set()
    for r, stop_after in enumerate((37, 150, 301)):
        got, rc = write_until(pg_url, exchange_id, r * 100_000, stop_after, lambda p: os.kill(p.pid, signal.SIGKILL))
        assert rc == -signal.SIGKILL  # killed mid-stream, not finished
        acked |= got
    assert len(acked) >= 37 + 150 + 301
    assert stored_ids(pg_url, acked) == acked


def test_a_server_crash_loses_no_acknowledged_row_where_the_database_default_is_async_commit(
    own_pg_cluster: PgCluster,
) -> None:
    """kill -9 of every server process mid-stream, with `synchronous_commit = off` as the database's default (a
    commit acknowledged before its WAL is written): the store turns it back on, so every acknowledged row is
    there after crash recovery."""
    cluster = own_pg_cluster
    url = cluster.create_database()
    cluster.admin(f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET synchronous_commit = off")
    with Store(url) as store:
        exchange_id = seed(store)
    acked, rc = write_until(url, exchange_id, 0, 400, lambda p: cluster.kill())
    assert rc != 0  # the writer lost its server mid-stream
    cluster.start()  # crash recovery replays the WAL
    assert stored_ids(url, acked) == acked


def test_our_sessions_commit_synchronously_and_wait_for_locks(pg_url: str, pg_server: PgCluster) -> None:
    pg_server.admin(f"ALTER DATABASE {pg_url.rsplit('/', 1)[1]} SET synchronous_commit = off")
    with psycopg.connect(pg_url) as raw:
        assert raw.execute("SHOW synchronous_commit").fetchone()[0] == "off"  # the default we override
    with Store(pg_url) as store:
        assert store.db.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        assert store.db.execute("SHOW lock_timeout").fetchone()[0] == "30s"  # SQLite's busy_timeout
        assert store.integrity_check() == "ok"


# -- several hosts --------------------------------------------------------------------------------------


def host(url: str, name: str, now: list[float]) -> Questions:
    """A Questions of another host (its pid is never judged here: only the lease counts), on its own connection."""
    return Questions(Store(url), owner=f"{name}:1:{name}", lease_s=20.0, clock=lambda: now[0])


def test_a_question_another_host_holds_is_skipped_not_waited_for(pg_url: str) -> None:
    now = [1000.0]
    a, b = host(pg_url, "host-a", now), host(pg_url, "host-b", now)
    b.store.db.execute("SET lock_timeout = 3000")  # without SKIP LOCKED the calls below would fail, not hang
    claimed = a.claim("Ev1", source="slack", channel="C1", user="U7", question="Q?", resume={"n": 1})
    assert claimed is not None and not claimed.resumed
    assert b.take_stale() == [] and b.claim("Ev1", source="slack", channel="C1", user="U7", question="Q?",
                                             resume={}) is None  # a's lease holds
    now[0] += 60  # a's lease lapsed: a died
    with psycopg.connect(pg_url) as busy:  # a host in the middle of updating that row
        busy.execute("SELECT id FROM questions WHERE id = %s FOR UPDATE", (claimed.id,))
        assert b.take_stale() == []  # skipped at once, not taken twice
    taken = b.take_stale()
    assert [(t.id, t.resumed, t.resume) for t in taken] == [(claimed.id, True, {"n": 1})]
    with psycopg.connect(pg_url) as raw:
        assert raw.execute("SELECT owner FROM questions WHERE id = %s", (claimed.id,)).fetchone()[0] == b.owner
    for q in (a, b):
        q.store.close()


def test_our_listener_gets_its_question_while_another_replica_checks_the_duplicate(pg_url: str) -> None:
    """Both replicas got the same event: web.1's middleware received it; web.2's duplicate check holds the row
    for a moment just as web.1's listener claims it. The listener waits for the row; it must not drop the
    question as a duplicate (then nobody answers it)."""
    now = [1000.0]
    a = host(pg_url, "host-a", now)
    a.store.db.execute("SET lock_timeout = 20000")
    received = a.receive("Ev1", source="slack", channel="C1", user="U7", text="Q?", event={"type": "app_mention"})
    got: list = []
    with psycopg.connect(pg_url) as other:  # web.2, inside its duplicate check
        other.execute("SELECT id FROM questions WHERE id = %s FOR UPDATE", (received.id,))
        listener = threading.Thread(target=lambda: got.append(
            a.claim("Ev1", source="slack", channel="C1", user="U7", question="Q?", resume={"thread": "1.0"})))
        listener.start()
        listener.join(timeout=1.0)
        assert got == [] and listener.is_alive()  # waiting for the row, not skipping it
    listener.join(timeout=30)
    assert [(c.id, c.status, c.resumed) for c in got] == [(received.id, "queued", False)]
    assert a.get(received.id)["status"] == "queued"
    a.store.close()


def test_two_sweepers_racing_take_a_lapsed_question_once(pg_url: str) -> None:
    now = [1000.0]
    a = host(pg_url, "host-a", now)
    ids = [a.claim(f"Ev{i}", source="slack", channel="C1", user="U7", question="Q?", resume={}).id for i in range(20)]
    now[0] += 60
    sweepers = [host(pg_url, f"host-{n}", now) for n in "bc"]
    got: dict[str, list[int]] = {}
    go = threading.Barrier(2)

    def sweep(q: Questions) -> None:
        go.wait()
        got[q.owner] = [t.id for t in q.take_stale()]

    threads = [threading.Thread(target=sweep, args=(q,)) for q in sweepers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(i for taken in got.values() for i in taken) == ids  # each question taken, by one sweeper
    owners = {r["id"]: r["owner"] for r in a.store.query("SELECT id, owner FROM questions")}
    assert all(owners[i] == owner for owner, taken in got.items() for i in taken)
    for q in (a, *sweepers):
        q.store.close()


def test_replicas_opening_a_fresh_database_at_once_migrate_it_once(pg_url: str) -> None:
    results: list[list[str] | BaseException] = []

    def open_store() -> None:
        try:
            with Store(pg_url) as store:
                results.append(store.migrations_applied)
        except BaseException as exc:  # collected and asserted below
            results.append(exc)

    with psycopg.connect(pg_url) as held:  # another replica in the middle of migrating
        held.execute("SELECT pg_advisory_xact_lock(%s)", (0x646F6D61696E626F,))
        threads = [threading.Thread(target=open_store) for _ in range(4)]
        for t in threads:
            t.start()
        threads[0].join(timeout=1.0)
        assert results == [] and threads[0].is_alive()  # they wait for the lock
    for t in threads:
        t.join(timeout=60)
    names = [fn.__name__ for fn in migrations.MIGRATIONS]
    assert sorted(results, key=len) == [[], [], [], names]
    with psycopg.connect(pg_url) as raw:
        assert raw.execute("SELECT count(*) FROM _migrations").fetchone()[0] == len(names)


# -- connections and errors -----------------------------------------------------------------------------


def terminate(pg_url: str, pg_server: PgCluster) -> int:
    """Drop the store's server connections, as a restart or failover would; returns how many."""
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        return len(admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (pg_url.rsplit("/", 1)[1], "domainbot")).fetchall())


def test_a_connection_the_server_dropped_is_reopened(pg_url: str, pg_server: PgCluster) -> None:
    with Store(pg_url) as store:
        assert terminate(pg_url, pg_server) == 1
        assert store.claim_event("Ev1") is True  # a write: begun again on a new connection
        assert terminate(pg_url, pg_server) == 1
        assert store.exchanges() == []  # a read
        assert store.claim_event("Ev1") is False


def test_unreachable_and_malformed_urls_fail_clearly_without_the_password() -> None:
    down = f"postgresql://bob:s3cr%23t@127.0.0.1:{free_port()}/bot"
    with pytest.raises(StoreUnavailable, match=r"cannot connect to PostgreSQL at postgresql://bob:\*\*\*@") as err:
        Store(down)
    assert "s3cr" not in str(err.value)
    with pytest.raises(StoreUnavailable, match="not a valid PostgreSQL URL") as err:
        Store("postgresql://bob:s3cret@127.0.0.1:5432/bot?nonsense=1")
    assert "s3cret" not in str(err.value)
    assert redact("postgresql://h/db?password=s3cret&sslmode=require") == "postgresql://h/db?password=***&sslmode=require"


def test_a_postgres_url_without_psycopg_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import bot.store.postgres

    monkeypatch.setattr(bot.store.postgres, "psycopg", None)
    with pytest.raises(StoreUnavailable, match=r"psycopg is not installed: pip install 'psycopg\[binary\]"):
        Store("postgresql://127.0.0.1/bot")


def test_a_url_folded_by_a_path_still_names_the_server(pg_url: str) -> None:
    # bot/config.py reads DOMAINBOT_DB into a Path, which folds "//" to "/"
    settings = Settings(db_path=Path(pg_url), user_hash_salt="s3")
    assert "//" not in str(settings.db_path)
    with Store.from_settings(settings) as store:
        assert (store.dialect, store.path) == ("postgresql", pg_url)
    with Store(pg_url.replace("postgresql://", "postgres://", 1)) as store:
        assert store.migrations_applied == []  # the same database, through libpq's alias


def test_placeholders_and_percent_signs_reach_the_server_intact(pg_url: str) -> None:
    assert to_pyformat("SELECT '?%' AS a, \"x?\" FROM t WHERE b LIKE 'z%' AND c = ?") == (
        "SELECT '?%%' AS a, \"x?\" FROM t WHERE b LIKE 'z%%' AND c = %s")
    with Store(pg_url) as store:
        row = store.query("SELECT '?' AS q, '100%' AS p, ? AS v, 'ab' LIKE 'a%' AS liked", (5,))[0]
        assert row == {"q": "?", "p": "100%", "v": 5, "liked": True}
        with pytest.raises(ValueError, match="named parameters"):
            store.query("SELECT :x AS x", {"x": 1})


# -- the training side reads PostgreSQL as it reads SQLite ----------------------------------------------


def fill(store: Store) -> None:
    """The same history on either backend: questions, votes, a correction, a reroute, an opt-out, runs."""
    a = store.log_exchange(source="slack", question="What was revenue in 2019?", answer="Revenue was $12.3m [1].",
                           domain="finance", kind="answer", router_scores={"finance": 0.8},
                           chosen_by="router", citations=["doc-1#0"], adapter="base", latency_ms=5.0,
                           channel="C1", user="U1", event_key="Ev1")
    b = store.log_exchange(source="slack", question="Is this clause valid?", answer="No.", domain="finance",
                           kind="answer", router_scores={}, chosen_by="router", citations=[], adapter="v1",
                           latency_ms=2.5, user="U2", guard_verdict="supported")
    store.add_feedback(a, "reaction", "+1", user="U3", event_key="r1")
    store.add_feedback(a, "correction", "Revenue was $12.4m.", user="U3", event_key="c1")
    store.add_feedback(b, "button", "-1", user="U4", event_key="b1")
    store.add_feedback(b, "reroute", "legal", user="U4", event_key="p1")
    store.add_feedback(b, "opt_out", "see_no_evil", user="U5", event_key="o1")
    run = store.start_run("finance", current_version="base", config={"max_steps": 3})
    store.finish_run(run, status="promoted", reason="ok", candidate_version="v1", promoted=True,
                     example_ids=["exchange-1"], metrics_candidate={"overall": 0.6})


def test_report_feedback_loop_and_retrain_read_postgres_as_they_read_sqlite(pg_url: str, tmp_path: Path) -> None:
    from training import feedback as fd
    from training import report, retrain

    def clock() -> str:
        return "2026-03-01T09:00:00.000+00:00"

    seen = []
    for where in (str(tmp_path / "bot.db"), pg_url):
        with Store(where, clock=clock) as store:
            fill(store)
            exchanges, feedback, runs = store.exchanges(), store.feedback(), store.runs()
            seen.append({
                "exchanges": exchanges, "feedback": feedback, "runs": runs,
                "router_examples": store.router_examples(), "opted_out": store.opted_out(),
                "summaries": report.summaries(exchanges, feedback, runs),
                "judged": fd.judge(exchanges, feedback),
                "new_examples": retrain.new_example_count(store, "finance"),
                "consumed": retrain.consumed_ids(store, "finance"),
                "view": store.query("SELECT * FROM exchange_feedback ORDER BY id"),
            })
    sqlite_view, postgres_view = seen
    assert sqlite_view["exchanges"][0]["question"] == "What was revenue in 2019?"  # the history is there
    assert sqlite_view["consumed"] == {"exchange-1"} and sqlite_view["router_examples"] == {}
    for key in sqlite_view:
        assert postgres_view[key] == sqlite_view[key], key


def test_domainbot_db_with_a_url_reaches_postgres_through_load_settings(pg_url: str, monkeypatch) -> None:
    from bot.config import load_settings

    monkeypatch.setenv("DOMAINBOT_DB", pg_url)
    settings = load_settings()
    assert settings.db_url == pg_url  # kept as text: a Path would fold the "//"
    with Store.from_settings(settings) as store:
        assert store.dialect == "postgresql"
        store.log_exchange(source="chat", question="q", answer="a", domain="legal", adapter="base",
                           router_scores={}, chosen_by="router", citations=[], kind="answer", latency_ms=1.0)
    with Store.from_settings(load_settings()) as again:
        assert again.count("exchanges") == 1
