"""Retraining under stress, on the real tiny model:

- (poisoned feedback through Slack, rejected by the gate: tests/test_loop_e2e.py)
- `kill -9` in the middle of training leaves the live adapter, the pointer and the database intact.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot import adapters
from bot.domains import discover
from bot.store.store import Store
from bot.testing.lora import write_lora
from bot.testing.workspace import linked_workspace
from training import retrain as rt
from training.dataset import read_jsonl, user_text

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TASK = "tfns_sentiment"


@pytest.fixture
def workspace(base_settings, built_indexes, tmp_path):
    domains, indexes = linked_workspace(tmp_path, built_indexes)
    settings = base_settings.with_(domains_dir=domains, indexes_dir=indexes, db_path=tmp_path / "bot.db")
    store = Store.from_settings(settings)
    yield settings, store
    store.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def poison(store: Store, n: int, seed: int = 0) -> None:
    """n finance tweets, each answered with a label taken from another tweet and given a 👍."""
    rows = [r for r in read_jsonl(ROOT / "domains" / "finance" / "train.jsonl") if r["task"] == TASK][:n]
    labels = [r["output"] for r in rows]
    random.Random(seed).shuffle(labels)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        xid = store.log_exchange(
            source="slack", question=user_text(row["instruction"], row.get("input")), answer=label, domain="finance",
            kind="answer", router_scores={}, chosen_by="explicit", citations=[], adapter="v1", latency_ms=1.0,
        )  # fmt: skip
        store.add_feedback(xid, "reaction", "+1", user=f"U{i}", event_key=f"poison-{i}")


def test_kill_9_during_retraining_leaves_the_live_adapter_untouched(workspace) -> None:
    settings, store = workspace
    finance = discover(settings.domains_dir).get("finance")
    (finance.adapters_dir / "v1").mkdir(parents=True)
    write_lora(finance.adapters_dir / "v1" / adapters.ADAPTER_FILE, scale=0.01)
    adapters.promote(finance.adapters_dir, "v1")
    before = {p.name: digest(p) for p in (finance.adapters_dir / "v1").iterdir()}
    poison(store, 8)

    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "DOMAINBOT_DOMAINS_DIR": str(settings.domains_dir),
        "DOMAINBOT_INDEXES_DIR": str(settings.indexes_dir), "DOMAINBOT_DB": str(settings.db_path),
        "DOMAINBOT_THREADS": "2",
    }  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "retrain", "finance", "--steps", "200", "--replay-task", TASK],
        env=env, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    seen = b""
    deadline = time.monotonic() + 600
    while b"train finance" not in seen and time.monotonic() < deadline:  # tqdm's bar: the loop is running
        chunk = proc.stderr.read1(4096)
        if not chunk:
            break
        seen += chunk
    time.sleep(3)  # a few steps in
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, seen.decode(errors="replace")[-2000:]

    assert adapters.current(finance.adapters_dir).version == "v1"
    assert {p.name: digest(p) for p in (finance.adapters_dir / "v1").iterdir()} == before
    assert [v.version for v in adapters.versions(finance.adapters_dir)] == ["v1"]  # no half-made version
    assert store.integrity_check() == "ok"
    [run] = store.runs("finance")
    assert run["status"] == "running"  # it died mid-run; the next retrain marks it, under the domain lock
    with rt.domain_lock(finance):  # the kernel released the dead process's lock
        rt.mark_abandoned(store, "finance")
    assert store.runs("finance")[0]["status"] == "failed"
    assert rt.new_example_count(store, "finance") == 8  # its examples were never tried to the end


def test_retrain_judge_refuses_a_candidate_that_loses_the_real_job(monkeypatch, base_settings) -> None:
    """Better sentiment, worse open answers: retrain's judge (evaluate + gate) must not promote it."""
    from training import evaluate as ev

    def task(kind: str, score: float, supported: float = 0.0) -> dict:
        extra = {"correct": score, "supported": supported} if kind == "open_qa" else {"macro_f1": score}
        return {"kind": kind, "n": 40, "score": score, **extra}

    made = {
        "v3": ev.EvalResult("finance", "v3", {TASK: task("classification", 0.95), "finance_qa": task("open_qa", 0.20, 0.6)}),
        "v2": ev.EvalResult("finance", "v2", {TASK: task("classification", 0.70), "finance_qa": task("open_qa", 0.28, 0.6)}),
    }
    monkeypatch.setattr(ev, "evaluate", lambda domain, adapter, **kw: made[adapter])
    finance = discover(base_settings.domains_dir).get("finance")
    ok, reason, cur, cand = rt.judge(finance, "v3", "v2", rt.RetrainConfig(margin=0.01), base_settings)
    assert not ok and reason.startswith("finance_qa correctness fell 0.080 (0.280 -> 0.200)")
    assert rt.summarize(cand)["tasks"] == {TASK: 0.95, "finance_qa": 0.20}  # the store still gets plain scores
