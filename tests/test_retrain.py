"""Retrain bookkeeping without the model: what counts as new, locks, abandoned runs, failures, the worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot import adapters
from bot.config import load_settings
from bot.domains import discover
from bot.errors import UserFacingError
from bot.store.store import Store
from training import retrain as rt
from training.worker import due_domains, run_once

ROOT = Path(__file__).resolve().parent.parent


def tmp_domains(tmp_path: Path, names: tuple[str, ...] = ("finance", "legal")) -> Path:
    """The real domains, linked file by file, with their own (empty) adapters folders."""
    root = tmp_path / "domains"
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        for item in (ROOT / "domains" / name).iterdir():
            if item.name != "adapters":
                (folder / item.name).symlink_to(item)
    return root


@pytest.fixture
def env(tmp_path: Path):
    settings = load_settings().with_(
        domains_dir=tmp_domains(tmp_path), db_path=tmp_path / "bot.db", indexes_dir=tmp_path / "indexes",
        domain_allowlist=(),
    )  # fmt: skip
    store = Store.from_settings(settings)
    yield settings, store
    store.close()


def liked(store: Store, domain: str = "finance", n: int = 1) -> list[int]:
    ids = []
    for i in range(n):
        ex = store.log_exchange(
            source="slack", question=f"question {i}", answer="an answer", domain=domain, kind="answer",
            router_scores={}, chosen_by="router", citations=[], adapter="base", latency_ms=1.0,
        )  # fmt: skip
        store.add_feedback(ex, "reaction", "+1", user="U1", event_key=f"{domain}-{i}")
        ids.append(ex)
    return ids


def test_summarize_accepts_objects_and_mappings() -> None:
    class Task:
        macro_f1 = 0.5

    class Result:
        overall = 0.6
        tasks = {"tfns": Task(), "qa": {"score": 0.7}, "plain": 0.1}

    assert rt.summarize(Result()) == {"overall": 0.6, "tasks": {"tfns": 0.5, "qa": 0.7, "plain": 0.1}}
    assert rt.summarize({"overall": 1, "tasks": {"a": 0.2}}) == {"overall": 1.0, "tasks": {"a": 0.2}}
    with pytest.raises(TypeError, match="cannot read a score"):
        rt.summarize({"overall": 1, "tasks": {}}) and rt._task_score(object())


def test_new_examples_count_until_a_run_tries_them(env) -> None:
    _, store = env
    liked(store, n=3)
    assert rt.new_example_count(store, "finance") == 3
    run = store.start_run("finance", current_version="base")
    assert rt.new_example_count(store, "finance") == 3  # a running run hasn't tried them yet
    store.finish_run(run, status="rejected", reason="worse", example_ids=["exchange-1", "exchange-2"])
    assert rt.new_example_count(store, "finance") == 1
    assert rt.consumed_ids(store, "finance") == set()  # rejected: still new to the live adapter
    run = store.start_run("finance", current_version="base")
    store.finish_run(run, status="promoted", reason="ok", example_ids=["exchange-3"])
    assert rt.consumed_ids(store, "finance") == {"exchange-3"}
    assert rt.new_example_count(store, "finance") == 0


def test_due_domains_uses_the_threshold(env) -> None:
    _, store = env
    liked(store, "finance", 3)
    liked(store, "legal", 1)
    assert [(d.domain, d.new_examples) for d in due_domains(store, ["finance", "legal"], 2)] == [
        ("finance", 3)
    ]
    assert [d.domain for d in due_domains(store, ["finance", "legal"], 1)] == ["finance", "legal"]


def test_abandoned_runs_are_marked_failed(env) -> None:
    _, store = env
    run = store.start_run("finance", current_version="base")
    other = store.start_run("legal", current_version="base")
    rt.mark_abandoned(store, "finance")
    assert store.runs("finance")[0]["status"] == "failed"
    assert "interrupted" in store.runs("finance")[0]["reason"]
    assert store.runs("legal")[0]["id"] == other and store.runs("legal")[0]["status"] == "running"
    assert run != other


def test_one_retrain_per_domain(env) -> None:
    settings, _ = env
    finance = discover(settings.domains_dir).get("finance")
    with rt.domain_lock(finance):
        with pytest.raises(rt.RetrainBusy, match="already running"):
            with rt.domain_lock(finance):
                pass
    with rt.domain_lock(finance):  # released
        pass


def test_mix_is_seeded_and_repeats_feedback() -> None:
    mixed = rt.mix(["f1", "f2"], ["r1", "r2", "r3"], 2, seed=5)
    assert sorted(mixed) == ["f1", "f1", "f2", "f2", "r1", "r2", "r3"]
    assert mixed == rt.mix(["f1", "f2"], ["r1", "r2", "r3"], 2, seed=5)


def test_warm_start_prefers_kept_peft_weights(tmp_path: Path, env) -> None:
    settings, _ = env
    finance = discover(settings.domains_dir).get("finance")
    assert rt.warm_start_dir(finance, "base") is None
    v1 = finance.adapters_dir / "v1"
    v1.mkdir(parents=True)
    assert rt.warm_start_dir(finance, "v1") == v1
    (v1 / "peft").mkdir()
    (v1 / "peft" / "adapter_config.json").write_text("{}")
    assert rt.warm_start_dir(finance, "v1") == v1 / "peft"


def test_note_verdict_updates_meta(tmp_path: Path) -> None:
    (tmp_path / adapters.META_FILE).write_text(json.dumps({"version": "v2"}))
    rt.note_verdict(tmp_path, False, "tfns dropped 3 points")
    meta = json.loads((tmp_path / adapters.META_FILE).read_text())
    assert meta == {"version": "v2", "gate": {"promoted": False, "reason": "tfns dropped 3 points"}}


def test_nothing_new_is_skipped_without_loading_the_model(env) -> None:
    settings, store = env
    out = rt.retrain("finance", settings=settings, store=store)
    assert (out.status, out.live_version) == ("skipped", "base")
    assert "0 new feedback" in out.reason
    assert store.runs("finance")[0]["status"] == "skipped"


def test_unknown_domain_is_a_clear_error(env) -> None:
    from bot.domains import UnknownDomain

    settings, store = env
    with pytest.raises(UnknownDomain):
        rt.retrain("astrology", settings=settings, store=store)


def test_a_failing_retrain_is_recorded_and_the_live_adapter_untouched(env, tmp_path: Path) -> None:
    from training.errors import TrainingError

    settings, store = env
    settings = settings.with_(model_path=tmp_path / "missing.gguf")
    finance = discover(settings.domains_dir).get("finance")
    (finance.adapters_dir / "v1").mkdir(parents=True)
    (finance.adapters_dir / "v1" / adapters.ADAPTER_FILE).write_bytes(b"live adapter bytes")
    adapters.set_current(finance.adapters_dir, "v1")
    liked(store, n=2)
    with pytest.raises(TrainingError, match="base model not found"):
        rt.retrain("finance", settings=settings, store=store)
    run = store.runs("finance")[-1]
    assert run["status"] == "failed" and "base model not found" in run["reason"]
    assert adapters.current(finance.adapters_dir).version == "v1"
    assert (finance.adapters_dir / "v1" / adapters.ADAPTER_FILE).read_bytes() == b"live adapter bytes"
    assert [v.version for v in adapters.versions(finance.adapters_dir)] == ["v1"]


def test_worker_pass_survives_a_failure_and_does_not_spin(env, tmp_path: Path) -> None:
    settings, store = env
    settings = settings.with_(model_path=tmp_path / "missing.gguf")
    liked(store, "finance", 2)
    first = run_once(settings, store, min_examples=2)
    assert [(o.domain, o.status) for o in first] == [("finance", "failed")]
    assert "base model not found" in first[0].reason
    assert run_once(settings, store, min_examples=2) == []  # the same examples are not retried in a loop
    liked(store, "legal", 1)
    assert run_once(settings, store, min_examples=2) == []  # below N


def test_replay_caps_keep_only_the_named_tasks(env) -> None:
    settings, _ = env
    legal = discover(settings.domains_dir).get("legal")
    assert rt.replay_caps(legal, ()) == {}
    assert rt.replay_caps(legal, ("cuad_yes_no",)) == {
        "cuad_extract": 0,
        "cuad_clause_type": 0,
        "unfair_tos": 0,
    }
    with pytest.raises(UserFacingError, match="has no task"):
        rt.replay_caps(legal, ("legalbench_hearsay",))  # an eval-only task name


def test_the_live_adapters_eval_is_cached_by_what_it_depends_on(env, monkeypatch, tmp_path: Path) -> None:
    """Evaluated once per (adapter file, items, settings); a changed adapter file or split is evaluated again."""
    from training import evaluate as ev

    settings, _ = env
    finance = discover(settings.domains_dir).get("finance")
    (finance.adapters_dir / "v1").mkdir(parents=True)
    gguf = finance.adapters_dir / "v1" / "adapter.gguf"
    gguf.write_bytes(b"adapter one")
    calls: list[tuple[str, str]] = []

    def evaluate(domain, adapter, **kw):
        calls.append((adapter, kw["split"]))
        tasks = {"finance_qa": {"kind": "open_qa", "n": 2, "score": len(calls) / 10}}
        return ev.EvalResult("finance", adapter, tasks, items=[{"id": "q1", "task": "finance_qa", "correct": True}])

    monkeypatch.setattr(ev, "evaluate", evaluate)
    cfg = rt.RetrainConfig(eval_cache=str(tmp_path / "cache"))
    kw = {"limit": 2, "tasks": None, "settings": settings, "answerer": object(), "with_retrieval": False,
          "split": "dev", "progress": False}  # fmt: skip
    first = rt.live_eval(finance, "v1", cfg, dict(kw))
    again = rt.live_eval(finance, "v1", cfg, dict(kw))
    assert calls == [("v1", "dev")]
    assert again.to_dict() == first.to_dict()  # the first run's numbers and answers, read back
    rt.live_eval(finance, "v1", cfg, {**kw, "split": "test"})
    gguf.write_bytes(b"adapter two")  # another adapter under the same version name
    rt.live_eval(finance, "v1", cfg, dict(kw))
    assert calls == [("v1", "dev"), ("v1", "test"), ("v1", "dev")]
    rt.live_eval(finance, "v1", rt.RetrainConfig(), dict(kw))  # no cache folder: always evaluated
    assert len(calls) == 4
