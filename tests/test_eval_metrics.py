"""Scoring is strict and honest: unparseable output is wrong, and the majority baseline is reported."""

from __future__ import annotations

import json

import pytest

from bot.prompt import Passage
from training import metrics
from training.evaluate import (
    EvalResult,
    chart,
    gate,
    save_results,
    score_task,
    table,
)
from training.qa_eval import contract_name, named_question

LABELS = ["Bearish", "Bullish", "Neutral"]


@pytest.mark.parametrize(("text", "want"), [
    ("Bullish", "Bullish"), ("bullish.", "Bullish"), ("**Neutral**", "Neutral"), (" Bearish\nbecause", "Bearish"),
    ("I think Bullish", None), ("Bullishness", None), ("", None), ("Neutral-ish", "Neutral"),
])
def test_parse_label_is_strict(text, want):
    assert metrics.parse_label(text, LABELS) == want


def test_parse_label_prefers_the_longest_label():
    labels = ["Other", "Unilateral change", "Unilateral termination"]
    assert metrics.parse_label("Unilateral termination of the account", labels) == "Unilateral termination"


def test_macro_f1_matches_a_hand_computed_value():
    golds = ["a", "a", "b", "c"]
    preds = ["a", "b", "b", None]
    # a: tp1 fp0 fn1 -> 2/3; b: tp1 fp1 fn0 -> 2/3; c: tp0 -> 0
    assert metrics.macro_f1(preds, golds) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert metrics.accuracy(preds, golds) == 0.5


def test_one_label_printer_scores_the_majority_baseline_not_more():
    golds = ["Neutral"] * 6 + ["Bullish"] * 3 + ["Bearish"]
    preds = ["Neutral"] * 10
    label, acc, f1 = metrics.majority(golds)
    assert (label, acc) == ("Neutral", 0.6)
    assert metrics.macro_f1(preds, golds) == pytest.approx(f1)
    assert f1 == pytest.approx(0.75 / 3)


def test_numbers_and_scales_normalise():
    assert metrics.exact_match("$1,496.50 million", "1496.5") == 1.0
    assert metrics.exact_match("-22.22%", "-22.22 percent") == 1.0
    assert metrics.exact_match("(1,234)", "-1234") == 1.0
    assert metrics.exact_match("the 2019", "2019") == 1.0
    assert metrics.exact_match("2018", "2019") == 0.0


def test_token_f1_and_derivation_stripping():
    assert metrics.token_f1("successive 1 year", "succesive 1 year") == pytest.approx(2 / 3)
    assert metrics.token_f1("", "") == 1.0 and metrics.token_f1("x", "") == 0.0
    assert metrics.strip_derivation("-12.6 million (derivation: 44.1-56.7)") == "-12.6 million"


def test_recall_at_k_counts_gold_in_top_k():
    ranked = [["d1", "d2"], ["d3", "d1"], ["d4", "d5"]]
    gold = ["d1", "d1", "d9"]
    assert metrics.recall_at_k(ranked, gold, 1) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(ranked, gold, 2) == pytest.approx(2 / 3)


def test_score_task_classification_reports_unparsed_and_majority():
    items = [{"gold": "Yes", "output": "Yes."}, {"gold": "No", "output": "Maybe so"}, {"gold": "Yes", "output": "no"}]
    s = score_task("classification", items, ["Yes", "No"])
    assert s["accuracy"] == pytest.approx(1 / 3) and s["unparsed"] == 1
    assert s["majority_label"] == "Yes" and s["majority_accuracy"] == pytest.approx(2 / 3)
    assert [it["pred"] for it in items] == ["Yes", None, "No"]


def test_score_task_qa_uses_token_f1_and_em():
    items = [{"gold": "9/26/2018", "output": "9/26/2018"}, {"gold": "New York", "output": "the State of New York"}]
    s = score_task("extraction", items, [])
    assert s["exact_match"] == 0.5 and 0.5 < s["token_f1"] < 1.0 and s["score"] == s["token_f1"]


def _result(adapter: str, **scores: float) -> EvalResult:
    return EvalResult("finance", adapter, {t: {"kind": "qa", "n": 10, "score": v, "token_f1": v, "exact_match": v}
                                           for t, v in scores.items()})


def test_gate_accepts_better_and_rejects_a_task_drop_or_worse_overall():
    assert gate(_result("v2", a=0.8, b=0.5), _result("v1", a=0.7, b=0.5), 0.01)[0]
    ok, reason = gate(_result("v2", a=0.9, b=0.4), _result("v1", a=0.7, b=0.5), 0.05)
    assert not ok and "b dropped 0.100" in reason
    ok, reason = gate(_result("v2", a=0.695, b=0.5), _result("v1", a=0.7, b=0.5), 0.01)
    assert not ok and "worse overall" in reason
    assert gate({"tasks": {"a": 0.5}}, {"tasks": {"a": 0.5}}, 0.0)[0]  # plain dicts work too (retrain)
    assert not gate(_result("v2", a=1.0), _result("v1", b=0.1))[0]  # nothing in common


def test_contract_names_for_the_named_retrieval_variant():
    assert contract_name("ADAMSGOLFINC_03_21_2005-EX-10.17-ENDORSEMENT AGREEMENT.PDF") == "ADAMSGOLFINC ENDORSEMENT AGREEMENT"
    edgar = "CerenceInc_20191002_8-K_EX-10.4_11827494_EX-10.4_Intellectual Property Agreement.pdf"
    assert contract_name(edgar) == "CerenceInc Intellectual Property Agreement"
    p = Passage("c#0", "X — clause", "t", metadata={"contract_file": "ACME_01_01_2001-EX-10.1-SUPPLY AGREEMENT.PDF"})
    assert named_question("Is there a cap?", p) == "ACME SUPPLY AGREEMENT: Is there a cap?"
    assert named_question("Q?", Passage("d#0", "Annual report: Revenue", "t")) == "Annual report: Revenue: Q?"


def test_table_chart_and_results_files(tmp_path):
    base = EvalResult("finance", "base", {"tfns": score_task("classification", [{"gold": "Neutral", "output": "Bearish"}], LABELS)},
                      {"as asked": {"n": 1, "recall@1": 0.0, "recall@5": 1.0}})
    tuned = EvalResult("finance", "v1", {"tfns": score_task("classification", [{"gold": "Neutral", "output": "Neutral"}], LABELS)},
                       {"as asked": {"n": 1, "recall@1": 1.0, "recall@5": 1.0}})
    text = table([base, tuned])
    assert "| tfns" in text and "1.000 / 1.000" in text and "recall@5" in text and "majority" in text
    path, png = save_results([base, tuned], tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(path.read_text())
    assert saved["v1"]["tasks"]["tfns"]["macro_f1"] == 1.0 and saved["base"]["overall"] == 0.0
    assert EvalResult.from_dict(json.loads((tmp_path / "eval_v1.json").read_text())).overall == 1.0
    assert chart([base], tmp_path / "one.png").is_file()


def test_saved_base_results_are_reused_only_for_the_same_setup(tmp_path):
    from bot.config import Settings
    from training.dataset import resolve_domain
    from training.evaluate import cached, fingerprint

    settings = Settings()
    domain = resolve_domain("finance", settings)
    result = EvalResult("finance", "base", {"t": score_task("qa", [{"gold": "a", "output": "a"}], [])},
                        fingerprint=fingerprint(domain, "base", settings, 5, None))
    save_results([result], tmp_path)
    assert cached(domain, "base", settings, 5, None, tmp_path).tasks["t"]["score"] == 1.0
    assert cached(domain, "base", settings, 6, None, tmp_path) is None  # another limit
    assert cached(domain, "base", settings.with_(prompt_budget=500), 5, None, tmp_path) is None  # another prompt
    assert cached(domain, "base", settings, 5, None, tmp_path, split="dev") is None  # another qa.jsonl split


def test_the_fingerprint_follows_the_qa_file(tmp_path):
    import shutil

    from bot.config import Settings
    from training.dataset import resolve_domain
    from training.evaluate import fingerprint

    shutil.copytree(Settings().domains_dir / "legal", tmp_path / "legal", ignore=shutil.ignore_patterns("adapters"))
    settings = Settings(domains_dir=tmp_path)
    domain = resolve_domain("legal", settings)
    before = fingerprint(domain, "base", settings, 5, None)
    with (tmp_path / "legal" / "qa.jsonl").open("a") as f:
        f.write("\n")  # any change to the questions invalidates saved results
    after = fingerprint(domain, "base", settings, 5, None)
    assert before["qa"]["legal_qa"] != after["qa"]["legal_qa"] and before["split"] == "test"


def test_evidence_rows_skip_the_label_whose_passage_does_not_answer():
    from types import SimpleNamespace

    from training.evaluate import holds_evidence

    legal = SimpleNamespace(tasks={"cuad_yes_no": {"evidence_when": "Yes"}})
    assert holds_evidence(legal, {"task": "cuad_yes_no", "answer": "Yes"})
    assert not holds_evidence(legal, {"task": "cuad_yes_no", "answer": "No"})
    assert holds_evidence(legal, {"task": "cuad_extract", "answer": "30 days"})


def test_a_partial_eval_keeps_the_recorded_numbers_of_the_tasks_it_did_not_run(tmp_path):
    """`domainbot eval legal --tasks legal_qa` once replaced every task's recorded metrics with that one task."""
    from types import SimpleNamespace

    from bot import adapters
    from training.evaluate import record_metrics

    folder = tmp_path / "adapters" / "v4"
    folder.mkdir(parents=True)
    (folder / adapters.META_FILE).write_text(json.dumps({"version": "v4", "metrics": {
        "overall": 0.6, "base": {"cuad_yes_no": 0.5},
        "tasks": {"cuad_yes_no": {"kind": "classification", "n": 60, "score": 0.8},
                  "legal_qa": {"kind": "open_qa", "n": 30, "score": 0.4}}}}))  # fmt: skip
    qa = {"kind": "open_qa", "n": 51, "score": 0.5098, "correct": 0.5098}
    record_metrics(SimpleNamespace(adapters_dir=tmp_path / "adapters"),
                   EvalResult("legal", "v4", {"legal_qa": qa}, limit=None, split="test"))  # fmt: skip
    meta = json.loads((folder / adapters.META_FILE).read_text())
    assert meta["version"] == "v4"
    assert meta["metrics"]["tasks"]["cuad_yes_no"] == {"kind": "classification", "n": 60, "score": 0.8}
    assert meta["metrics"]["tasks"]["legal_qa"] == {**qa, "limit": None, "split": "test"}
    assert meta["metrics"]["overall"] == pytest.approx((0.8 + 0.5098) / 2, abs=1e-4)
    assert meta["metrics"]["base"] == {"cuad_yes_no": 0.5}  # no base run this time: the recorded one stays
