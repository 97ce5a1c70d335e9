"""Store reliability under process death and concurrent writers, with the figures printed (`pytest -s`).

- kill -9 of a writer in the middle of 1,000 feedback inserts, repeated: every acknowledged row survives and
  `PRAGMA integrity_check` says ok.
- 4 concurrent writer processes doing read-then-write: 0 "database is locked" errors. Each op's time span is
  recorded (CLOCK_MONOTONIC is one clock for every process), so the test proves that ops of different writers
  were in flight at once; the same workload with deferred transactions runs as a control and must show lock
  errors, proving the harness sees them when they happen.

Rounds are set by DOMAINBOT_KILL_ROUNDS (default 20; docs/design.md's 200 was measured the same way).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.store.store import Store

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

KILL_WRITER = """
import sys
from bot.store.store import Store
db, exchange_id, start, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = Store(db)
for i in range(start, start + n):
    store.add_feedback(exchange_id, "reaction", "+1", user=f"U{i}", event_key=f"k{i}")
    # acknowledged: add_feedback returned, so the row is committed
    sys.stdout.write(f"{i}\\n")
    sys.stdout.flush()
"""

CONCURRENT_WRITER = """
import json, sqlite3, sys, time
from pathlib import Path
from bot.store.store import Store
db, worker, n, mode, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
store = Store(db)
raw = sqlite3.connect(db, timeout=30, isolation_level=None)
raw.execute("PRAGMA busy_timeout=30000")
counts = {"ok": 0, "locked": 0, "other": 0}
spans = []  # (start, end) of each op in time.monotonic_ns(): one system-wide clock on Linux

def store_op(i):
    # read-then-write through the store: claim, log, then feedback that must find the exchange first
    if store.claim_event(f"w{worker}-{i}"):
        exchange_id = store.log_exchange(source="cli", question=f"q{i}", answer="a", domain="finance",
            kind="answer", router_scores={}, chosen_by="router", citations=[], adapter="base",
            latency_ms=1.0, user=f"U{worker}")
        store.add_feedback(exchange_id, "reaction", "+1", user=f"U{worker}", event_key=f"f{worker}-{i}")

def deferred_op(i):
    # the measured failure: a read, then a write, in a deferred transaction
    raw.execute("BEGIN")
    try:
        n = raw.execute("SELECT count(*) FROM events").fetchone()[0]
        raw.execute("INSERT INTO events (key, created_at) VALUES (?, ?)", (f"d{worker}-{i}-{n}", "t"))
        raw.execute("COMMIT")
    except BaseException:
        raw.execute("ROLLBACK")
        raise

op = {"immediate": store_op, "deferred": deferred_op}[mode]
while not go.exists():
    time.sleep(0.005)
for i in range(n):
    start = time.monotonic_ns()
    try:
        op(i)
        counts["ok"] += 1
    except sqlite3.OperationalError as exc:
        counts["locked" if "locked" in str(exc) else "other"] += 1
    spans.append((start, time.monotonic_ns()))
print(json.dumps({**counts, "spans": spans}))
"""


def seed_exchange(path: Path) -> int:
    store = Store(path)
    exchange_id = store.log_exchange(
        source="cli", question="q", answer="a", domain="finance", kind="answer",
        router_scores={}, chosen_by="router", citations=[], adapter="base", latency_ms=1.0,
    )  # fmt: skip
    store.close()
    return exchange_id


def kill_round(path: Path, exchange_id: int, start: int, rng: random.Random) -> set[int]:
    """Start a writer, kill -9 it after a random number of acknowledgements; return every acknowledged i."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_WRITER, str(path), str(exchange_id), str(start), "1000"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV,
    )  # fmt: skip
    kill_after = rng.randint(1, 900)
    acked: set[int] = set()
    for line in proc.stdout:
        acked.add(int(line))
        if len(acked) >= kill_after:
            os.kill(proc.pid, signal.SIGKILL)
            break
    acked |= {int(line) for line in proc.stdout}  # acknowledgements already in the pipe when it died
    proc.wait()
    return acked


def test_kill_9_mid_inserts_loses_no_acknowledged_row(tmp_path: Path) -> None:
    rounds = int(os.environ.get("DOMAINBOT_KILL_ROUNDS", "20"))
    path = tmp_path / "kill.db"
    exchange_id = seed_exchange(path)
    rng = random.Random(7)
    acked: set[int] = set()
    killed_mid_run = 0
    for r in range(rounds):
        got = kill_round(path, exchange_id, r * 1000, rng)
        killed_mid_run += len(got) < 1000
        acked |= got

    store = Store(path)
    stored = {row["event_key"] for row in store.feedback_for(exchange_id)}
    lost = [i for i in acked if store._event_hash(f"k{i}") not in stored]
    integrity = store.integrity_check()
    print(
        f"\nkill -9: {rounds} rounds ({killed_mid_run} killed mid-run), {len(acked)} acknowledged, "
        f"{len(stored)} stored, {len(lost)} lost, integrity_check={integrity}"
    )
    assert killed_mid_run >= 0.9 * rounds  # a fast writer may finish before the kill lands; most must not
    assert lost == []
    assert integrity == "ok"
    assert len(stored) >= len(acked)


def run_writers(path: Path, mode: str, n: int, workers: int = 4) -> list[dict]:
    go = path.with_suffix(f".{mode}.go")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_WRITER, str(path), str(w), str(n), mode, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=ENV,
        )  # fmt: skip
        for w in range(workers)
    ]
    time.sleep(1.0)  # let every process import and open the store before the start signal
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


def overlapping_ops(results: list[dict]) -> int:
    """How many ops were in flight while an op of another writer was: proof of real contention."""
    spans = [(start, end, w) for w, r in enumerate(results) for start, end in r["spans"]]
    return sum(any(s < end and start < e and ow != w for s, e, ow in spans) for start, end, w in spans)


def test_four_concurrent_writers_see_no_lock_errors(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    Store(path).close()
    n = 250
    immediate = run_writers(path, "immediate", n)
    deferred = run_writers(path, "deferred", n)

    store = Store(path)
    locked = sum(r["locked"] for r in immediate)
    control = sum(r["locked"] for r in deferred)
    overlapped = overlapping_ops(immediate)
    print(
        f"\n4 writers x {n} read-then-write ops: BEGIN IMMEDIATE {locked} 'database is locked' "
        f"({overlapped} ops overlapped another writer's); deferred control {control} of {4 * n}"
    )
    # The writers really contended: ops of different processes were in flight at the same time ...
    assert overlapped > 0
    # ... and the same harness sees lock errors when the transactions are deferred (measured: 64 to 997 of 1,000
    # over 21 runs on 2 busy cores; ops overlapping another writer's: 844 to 941 of 1,000 over 4 runs).
    assert control > 0
    assert locked == 0
    assert sum(r["other"] for r in immediate) == 0
    assert sum(r["ok"] for r in immediate) == 4 * n
    assert store.db["exchanges"].count == 4 * n
    assert store.db["feedback"].count == 4 * n
    assert store.integrity_check() == "ok"


def test_wal_switch_waits_out_a_replica_that_holds_the_new_file(tmp_path):
    """Two replicas starting on a new database at once: SQLite can answer the journal-mode switch with
    'database is locked' at once (no busy handler); the store retries until the other one lets go."""
    import sqlite3
    import threading
    import time

    from bot.store.store import _enable_wal

    path = tmp_path / "new.db"
    other = sqlite3.connect(path, check_same_thread=False)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN EXCLUSIVE")
    impatient = sqlite3.connect(path, timeout=0)  # no busy handler: the lock answers at once
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        impatient.execute("PRAGMA journal_mode=WAL")
    release = threading.Timer(0.3, other.commit)
    release.start()
    t0 = time.monotonic()
    _enable_wal(impatient)
    assert time.monotonic() - t0 >= 0.25
    assert impatient.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    release.join()
    other.close()
    impatient.close()
