"""`domainbot retrain | report | worker` through the real CLI entry point (cheap paths, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main
from bot.store.store import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    domains = tmp_path / "domains"
    for name in ("finance", "legal"):
        (domains / name).mkdir(parents=True)
        for item in (ROOT / "domains" / name).iterdir():
            if item.name != "adapters":
                (domains / name / item.name).symlink_to(item)
    monkeypatch.setenv("DOMAINBOT_DOMAINS_DIR", str(domains))
    monkeypatch.setenv("DOMAINBOT_DB", str(tmp_path / "bot.db"))
    monkeypatch.setenv("DOMAINBOT_INDEXES_DIR", str(tmp_path / "indexes"))
    monkeypatch.delenv("DOMAINBOT_DOMAINS", raising=False)
    return tmp_path


def test_report_prints_a_table_and_writes_html(env: Path, capsys: pytest.CaptureFixture) -> None:
    store = Store(env / "bot.db")
    xid = store.log_exchange(
        source="cli", question="q", answer="a", domain="finance", kind="answer", router_scores={},
        chosen_by="router", citations=[], adapter="base", latency_ms=1.0,
    )  # fmt: skip
    store.add_feedback(xid, "reaction", "-1", user="U1", event_key="k")
    store.close()
    assert main(["report", "finance", "--out", str(env / "rep")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["domain", "exchanges", "up"]
    assert "finance" in out and str(env / "rep" / "index.html") in out
    assert (env / "rep" / "feedback_over_time.png").is_file()


def test_report_for_an_unknown_domain_is_a_clear_error(env: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", "astrology"]) == 2
    assert "astrology" in capsys.readouterr().err


def test_retrain_with_nothing_new_is_skipped(env: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["retrain", "finance"]) == 0
    out = capsys.readouterr().out
    assert "finance: skipped (0 new feedback example(s); need 1)" in out
    assert "live adapter: base" in out


def test_bad_flags_are_refused(env: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["retrain", "finance", "--steps", "0"])
    assert exc.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--alpha", "1.5"], "must be between 0 and 1"),
    (["--loss-alpha", "0"], "must be between 0 and 1"),
    (["--lr", "0"], "must be above 0"),
    (["--kto-steps", "-1"], "must be 0 or more"),
    (["--test-limit", "-3"], "must be 0 or more"),
])
def test_bad_gate_and_kto_flags_are_refused(env: Path, capsys: pytest.CaptureFixture, flags, message) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["retrain", "finance", *flags])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_gate_and_kto_flags_reach_the_retrain_config() -> None:
    import argparse

    from training.feedback_cli import _retrain_config, _train_flags
    from training.retrain import RetrainConfig

    p = argparse.ArgumentParser()
    _train_flags(p)
    cfg = _retrain_config(p.parse_args(["--kto-steps", "0", "--alpha", "0.1", "--test-limit", "5", "--loss-alpha", "0.3",
                                       "--lr", "1e-3"]))
    assert (cfg.kto_steps, cfg.alpha, cfg.test_limit, cfg.loss_alpha, cfg.lr) == (0, 0.1, 5, 0.3, 1e-3)
    defaults = RetrainConfig()
    unset = _retrain_config(p.parse_args([]))
    assert (unset.kto_steps, unset.alpha, unset.test_limit) == (defaults.kto_steps, defaults.alpha, defaults.test_limit)
    assert (unset.loss_alpha, unset.lr) == (defaults.loss_alpha, defaults.lr)


def test_worker_once_with_nothing_due(env: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["worker", "--once", "--min-new", "3"]) == 0
    assert "no domain has enough new feedback examples yet" in capsys.readouterr().out


def test_retrain_of_an_unknown_domain_is_a_clear_error(env: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["retrain", "astrology"]) == 2
    assert "unknown domain 'astrology'; known domains: finance, legal" in capsys.readouterr().err
