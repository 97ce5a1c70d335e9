"""promote / rollback switch the `current` pointer atomically and keep a history."""

from __future__ import annotations

import json

import pytest

from bot import adapters


def _version(root, name: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / adapters.ADAPTER_FILE).write_bytes(b"GGUF")
    (root / name / adapters.META_FILE).write_text(json.dumps({"version": name}))


def test_promote_then_rollback_restores_previous_versions(tmp_path):
    for v in ("v1", "v2", "v3"):
        _version(tmp_path, v)
    adapters.promote(tmp_path, "v1")
    adapters.promote(tmp_path, "v2")
    adapters.promote(tmp_path, "v3")
    assert adapters.current(tmp_path).version == "v3"
    assert adapters.rollback(tmp_path) == "v2"
    assert adapters.current(tmp_path).version == "v2"
    assert adapters.rollback(tmp_path) == "v1"
    assert adapters.rollback(tmp_path) == "base"
    assert adapters.current(tmp_path) is None
    with pytest.raises(adapters.AdapterError, match="nothing to roll back"):
        adapters.rollback(tmp_path)
    actions = [(h["action"], h["from"], h["to"]) for h in adapters.history(tmp_path)]
    assert actions[:3] == [("promote", "base", "v1"), ("promote", "v1", "v2"), ("promote", "v2", "v3")]
    assert actions[3:] == [("rollback", "v3", "v2"), ("rollback", "v2", "v1"), ("rollback", "v1", "base")]


def test_rollback_skips_a_deleted_version(tmp_path):
    for v in ("v1", "v2", "v3"):
        _version(tmp_path, v)
    for v in ("v1", "v2", "v3"):
        adapters.promote(tmp_path, v)
    (tmp_path / "v2" / adapters.ADAPTER_FILE).unlink()
    assert adapters.rollback(tmp_path) == "v1"


def test_promote_rejects_unknown_or_malformed_versions(tmp_path):
    _version(tmp_path, "v1")
    with pytest.raises(adapters.AdapterError, match=r"no adapter v7 .*versions: v1"):
        adapters.promote(tmp_path, "v7")
    with pytest.raises(adapters.AdapterError, match="not a version name"):
        adapters.promote(tmp_path, "../etc")
    assert not (tmp_path / adapters.POINTER).exists()  # nothing half-done


def test_promote_base_and_pointer_is_whole_after_each_switch(tmp_path):
    _version(tmp_path, "v1")
    adapters.promote(tmp_path, "v1")
    adapters.promote(tmp_path, "base")
    assert (tmp_path / adapters.POINTER).read_text() == "base\n"
    assert adapters.rollback(tmp_path) == "v1"
    assert not list(tmp_path.glob(".current-*"))  # temp files were renamed into place


def test_history_survives_a_torn_line(tmp_path):
    _version(tmp_path, "v1")
    adapters.promote(tmp_path, "v1")
    with (tmp_path / adapters.HISTORY_FILE).open("a") as f:
        f.write('{"action": "prom')  # a crash mid-write
    assert len(adapters.history(tmp_path)) == 1
    assert adapters.rollback(tmp_path) == "base"
    assert [h["action"] for h in adapters.history(tmp_path)] == ["promote", "rollback"]  # the new line is whole


# ---- promotion by hand: the recorded gate verdict decides ------------------------------------------------
MANIFEST = '''name = "toy"
description = "A toy domain for promotion tests."
examples = ["one question?", "another question?", "a third question?"]
system_prompt = "Answer from the sources."
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A minimal domain in a tmp domains/ folder (never the repository's), the CLI pointed at it."""
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "domain.toml").write_text(MANIFEST)
    monkeypatch.setenv("DOMAINBOT_DOMAINS_DIR", str(tmp_path))
    root = tmp_path / "toy" / "adapters"
    for v in ("v1", "v2"):
        _version(root, v)
    adapters.promote(root, "v1")
    adapters.update_meta(root / "v2", gate={"promoted": False, "reason": "toy_qa correctness fell 0.080"})
    return root


def _pointer(root) -> str:
    return (root / adapters.POINTER).read_text().strip()


def test_hand_promotion_over_a_failed_gate_is_refused(toy, capsys):
    from bot.cli import main

    history_before = (toy / adapters.HISTORY_FILE).read_text()
    assert main(["promote", "toy", "v2"]) == 2
    err = capsys.readouterr().err
    assert "v2 failed its gate: toy_qa correctness fell 0.080" in err and '--force --reason "why"' in err
    assert _pointer(toy) == "v1" and (toy / adapters.HISTORY_FILE).read_text() == history_before
    assert "forced" not in json.loads((toy / "v2" / adapters.META_FILE).read_text())


def test_force_without_a_reason_is_refused(toy, capsys):
    from bot.cli import main

    assert main(["promote", "toy", "v2", "--force"]) == 2
    assert "--force needs --reason" in capsys.readouterr().err
    assert main(["promote", "toy", "v2", "--force", "--reason", "   "]) == 2  # a blank reason is no reason
    assert _pointer(toy) == "v1" and len(adapters.history(toy)) == 1


def test_force_with_a_reason_promotes_and_records_it(toy, capsys):
    from bot.cli import main

    why = "hotfix for the renewal-term answers; qa drop is in the noise on 30 items"
    assert main(["promote", "toy", "v2", "--force", "--reason", why]) == 0
    assert f"toy: v2 is now live (forced: {why})" in capsys.readouterr().out
    assert _pointer(toy) == "v2"
    forced = json.loads((toy / "v2" / adapters.META_FILE).read_text())["forced"]
    assert forced["reason"] == why and forced["at"][:2] == "20"
    assert forced["overrode"] == "v2 failed its gate: toy_qa correctness fell 0.080"
    last = adapters.history(toy)[-1]
    assert (last["action"], last["from"], last["to"], last["forced"], last["reason"]) == ("promote", "v1", "v2", True, why)
    assert adapters.rollback(toy) == "v1"  # the forced line is an ordinary promotion for rollback


def test_adapters_promote_is_the_same_command(toy, capsys):
    from bot.cli import main

    assert main(["adapters", "promote", "toy", "v2"]) == 2
    assert "failed its gate" in capsys.readouterr().err
    assert main(["adapters", "promote", "toy", "v2", "--force", "--reason", "owner sign-off"]) == 0
    assert _pointer(toy) == "v2" and adapters.history(toy)[-1]["reason"] == "owner sign-off"


def test_a_never_judged_version_needs_force_unless_it_has_served(toy):
    _version(toy, "v3")  # trained by hand, never evaluated against the live version
    with pytest.raises(adapters.AdapterError, match=r"v3 has no recorded gate verdict .*domainbot eval toy --adapter v3"):
        adapters.promote_by_hand(toy, "v3")
    adapters.update_meta(toy / "v3", gate={"passed": True, "reason": "vs v1: overall 0.40 -> 0.45"})
    assert adapters.promote_by_hand(toy, "v3") == "v3"  # a passing verdict: no force needed
    assert adapters.promote_by_hand(toy, "v1") == "v1"  # no verdict, but it served before: going back is fine
    assert adapters.promote_by_hand(toy, "base") == "base"  # turning the adapter off is always allowed
    assert "forced" not in adapters.history(toy)[-1]


def test_retrain_style_promotion_is_not_gated_here(toy):
    assert adapters.promote(toy, "v2") == "v2"  # retrain applies the gate itself before calling promote


def test_the_verdict_domainbot_eval_records_is_the_one_promote_reads(toy):
    from types import SimpleNamespace

    from training.cli import _record_gate
    from training.evaluate import EvalResult

    _version(toy, "v3")
    qa = lambda c: {"kind": "open_qa", "n": 10, "score": c, "correct": c, "supported": 0.5}  # noqa: E731
    live = EvalResult("toy", "v1", {"toy_qa": qa(0.4), "cls": {"kind": "classification", "n": 10, "score": 0.5}})
    cand = EvalResult("toy", "v3", {"toy_qa": qa(0.3), "cls": {"kind": "classification", "n": 10, "score": 0.9}},
                      limit=10, split="dev")
    verdict = _record_gate(SimpleNamespace(adapters_dir=toy), cand, live, 0.01)
    assert verdict["passed"] is False and verdict["reason"].startswith("vs v1: toy_qa correctness fell 0.100")
    assert (verdict["against"], verdict["split"], verdict["limit"]) == ("v1", "dev", 10)
    with pytest.raises(adapters.AdapterError, match="v3 failed its gate: vs v1: toy_qa correctness fell"):
        adapters.promote_by_hand(toy, "v3")
    _record_gate(SimpleNamespace(adapters_dir=toy), cand, EvalResult("toy", "v1", {"toy_qa": qa(0.3)}), 0.01)
    assert adapters.promote_by_hand(toy, "v3") == "v3"  # a fresh, passing verdict replaces the old one
