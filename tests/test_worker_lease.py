"""One retrain per domain across hosts: two `domainbot worker`s sharing one real PostgreSQL server (tests/pg.py).

Each "host" has its own domains folder, so retrain's per-host file lock cannot see the other worker: only the
lease in training/worker.py keeps them apart. The retrain that runs is the real one with a missing base model,
which records a failed run after taking its locks (fast, and a run row per retrain to count).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bot.config import ROOT, load_settings
from bot.store.store import Store
from training import retrain as rt
from training.worker import retrain_lease, run_once

pytest_plugins = ("pg",)

HOLDER = """
import sys, time
from bot.config import Settings
from training.worker import retrain_lease
with retrain_lease(Settings(db_url=sys.argv[1]), "finance") as held:
    print("held", held, flush=True)
    time.sleep(600)
"""


def host(tmp_path: Path, name: str, url: str):
    """A worker host's settings: its own domains folder (real domain files linked), the shared Postgres."""
    root = tmp_path / name / "domains"
    folder = root / "finance"
    folder.mkdir(parents=True)
    for item in (ROOT / "domains" / "finance").iterdir():
        if item.name != "adapters":
            (folder / item.name).symlink_to(item)
    return load_settings().with_(
        domains_dir=root, db_url=url, db_path=tmp_path / name / "unused.db", indexes_dir=tmp_path / name / "indexes",
        domain_allowlist=(), model_path=tmp_path / "missing.gguf",
    )  # fmt: skip


def liked(store: Store, n: int) -> None:
    for i in range(n):
        ex = store.log_exchange(source="slack", question=f"question {i}", answer="an answer", domain="finance",
                                kind="answer", router_scores={}, chosen_by="router", citations=[], adapter="base",
                                latency_ms=1.0)  # fmt: skip
        store.add_feedback(ex, "reaction", "+1", user="U1", event_key=f"finance-{i}")


def test_two_workers_on_two_hosts_retrain_a_domain_once(pg_url: str, tmp_path: Path, caplog) -> None:
    a, b = host(tmp_path, "a", pg_url), host(tmp_path, "b", pg_url)
    store_a, store_b = Store.from_settings(a), Store.from_settings(b)
    liked(store_a, 2)
    inside, b_done = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_retrain(domain, **kw):  # worker A's real retrain, held open until worker B's pass is over
        calls.append("a")
        inside.set()
        assert b_done.wait(60)
        return rt.retrain(domain, **kw)

    def counting_retrain(domain, **kw):
        calls.append("b")
        return rt.retrain(domain, **kw)

    out_a: list = []
    worker_a = threading.Thread(target=lambda: out_a.extend(run_once(a, store_a, min_examples=2,
                                                                      retrain_fn=slow_retrain)))
    worker_a.start()
    try:
        assert inside.wait(60)
        with caplog.at_level(logging.WARNING, logger="training.worker"):
            out_b = run_once(b, store_b, min_examples=2, retrain_fn=counting_retrain)
    finally:
        b_done.set()
        worker_a.join(60)
    assert [(o.domain, o.status) for o in out_b] == [("finance", "skipped")]
    assert "another worker holds its retrain lease" in caplog.text
    assert calls == ["a"]
    assert [(o.domain, o.status) for o in out_a] == [("finance", "failed")]  # the missing base model
    assert [r["status"] for r in store_b.runs("finance")] == ["failed"]  # one run, seen from either host
    # The lease is free again, and B does not retry the signals A's run tried.
    assert run_once(b, store_b, min_examples=2, retrain_fn=counting_retrain) == [] and calls == ["a"]
    store_a.close()
    store_b.close()


def test_a_killed_holder_frees_the_lease(pg_url: str, tmp_path: Path) -> None:
    b = host(tmp_path, "b", pg_url)
    store = Store.from_settings(b)
    liked(store, 2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, pg_url], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env)  # fmt: skip
    try:
        assert proc.stdout.readline().split() == ["held", "True"]
        with retrain_lease(b, "finance") as held, retrain_lease(b, "legal") as other:
            assert (held, other) == (False, True)  # per domain
        assert [o.status for o in run_once(b, store, min_examples=2)] == ["skipped"]
        assert store.runs("finance") == []
    finally:
        proc.kill()  # SIGKILL: no cleanup in the holder, only its socket closing
        proc.wait()
    deadline = time.monotonic() + 30
    while True:  # the server ends the dead client's session when it reads the closed socket
        with retrain_lease(b, "finance") as held:
            if held or time.monotonic() > deadline:
                break
        time.sleep(0.2)
    assert held
    assert [o.status for o in run_once(b, store, min_examples=2)] == ["failed"]
    assert [r["status"] for r in store.runs("finance")] == ["failed"]
    store.close()


def test_sqlite_needs_no_lease(tmp_path: Path) -> None:
    settings = load_settings().with_(db_url=None, db_path=tmp_path / "bot.db")
    with retrain_lease(settings, "finance") as one, retrain_lease(settings, "finance") as two:
        assert one and two  # one host: retrain's file lock serialises the processes


@pytest.mark.parametrize("domain", ["finance", "legal", "medical"])
def test_lease_keys_fit_postgres_int4(domain: str) -> None:
    from training.worker import lease_key

    assert -(2**31) <= lease_key(domain) < 2**31


def test_retrain_by_hand_waits_for_no_one_and_starts_nothing_while_a_worker_holds_the_lease(
        pg_url: str, tmp_path: Path, monkeypatch, capsys) -> None:  # fmt: skip
    from bot.cli import main

    b = host(tmp_path, "b", pg_url)
    for key, value in {"DOMAINBOT_DB": pg_url, "DOMAINBOT_DOMAINS_DIR": str(b.domains_dir),
                       "DOMAINBOT_INDEXES_DIR": str(b.indexes_dir), "DOMAINBOT_MODEL": str(b.model_path)}.items():
        monkeypatch.setenv(key, value)
    store = Store.from_settings(b)
    liked(store, 2)
    with retrain_lease(b, "finance") as held:  # another host's worker, mid-run
        assert held
        assert main(["retrain", "finance"]) == 1
        assert "a worker on another host is retraining it now" in capsys.readouterr().err
        assert store.runs("finance") == []
    assert main(["retrain", "finance"]) == 2  # lease free: the real retrain runs (and fails on the missing base)
    assert [r["status"] for r in store.runs("finance")] == ["failed"]
    store.close()
