"""Open questions (qa.jsonl, kind "open_qa"): scoring on hand-made answers, the eval hook, the gate.

Every expected value is written by hand from the rule in training/qa_eval.py's docstring, not computed by it.
No model: the serving path is a fake that returns hand-made answers.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bot.answer import Citation
from bot.prompt import Passage
from training import metrics, qa_eval
from training.evaluate import EvalResult, gate, load_eval_rows, table
from training.retrain import summarize


# ---- numbers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "want"), [
    ("3,778", [(3778.0, 0, "")]),
    ("$3.8 million [1]", [(3.8, 1, "million")]),  # the [1] marker is not a number
    ("(1,234)", [(-1234.0, 0, "")]),  # accounting negative
    ("-17.95%", [(-17.95, 2, "%")]),
    ("fell 12.5 percent", [(12.5, 1, "%")]),
    ("from 2018-2019", [(2018.0, 0, ""), (2019.0, 0, "")]),  # a range, not minus 2019
    ("KCNJ2 and COL6A1", []),  # gene names hold digits, not numbers
    ("1.5bn", [(1.5, 1, "billion")]),
])
def test_numbers_in_text(text, want):
    assert [(n.value, n.decimals, n.unit) for n in metrics.numbers_in(text)] == want


# ---- correctness -----------------------------------------------------------------------------------------
LAW = {"answer": "New York", "aliases": ["State of New York", "New York law"], "scale": ""}
NOTICE = {"answer": "ninety (90) days", "aliases": ["90 days", "90-day"], "scale": ""}


@pytest.mark.parametrize(("row", "text", "want"), [
    (LAW, "It is governed by the laws of the State of NEW YORK [1].", True),
    (LAW, "new-york.", True),  # punctuation and case normalised
    (LAW, "Yorkshire law applies.", False),  # whole words only
    (LAW, "Delaware.", False),
    (NOTICE, "At least 90-day notice is required.", True),  # an alias
    (NOTICE, "Ninety (90) days' written notice.", True),
    (NOTICE, "Nine days.", False),
])
def test_text_answers_and_aliases(row, text, want):
    assert qa_eval.is_correct(text, row) is want


SPAN_THOUSANDS = {"answer": "3,778", "aliases": ["3778"], "scale": "thousand", "answer_type": "span"}
SPAN_UNITS = {"answer": "$1,128,447", "aliases": ["1128447"], "scale": "", "answer_type": "span"}


@pytest.mark.parametrize(("row", "text", "want"), [
    (SPAN_THOUSANDS, "3778", True),
    (SPAN_THOUSANDS, "It was $3,778 thousand.", True),
    (SPAN_THOUSANDS, "About $3.8 million [2].", True),  # 3,778 thousand rounds to 3.8 million
    (SPAN_THOUSANDS, "$3,778,000", True),
    (SPAN_THOUSANDS, "$3.7 million", False),
    (SPAN_THOUSANDS, "$4 million", False),  # one significant digit is too rough to count
    (SPAN_THOUSANDS, "3,779", False),
    (SPAN_THOUSANDS, "3,778%", False),  # a percent is another unit
    (SPAN_UNITS, "1,128,447", True),
    (SPAN_UNITS, "$1.13 million", True),
    (SPAN_UNITS, "$1,128 thousand", True),
    (SPAN_UNITS, "$1,128", False),  # no table scale for a figure given in units
])
def test_numbers_match_across_formats_and_scales(row, text, want):
    assert qa_eval.is_correct(text, row) is want


ARITH_THOUSANDS = {"answer": "90882 thousand", "aliases": [], "scale": "thousand", "answer_value": 90882.0,
                   "answer_type": "arithmetic"}
ARITH_PERCENT = {"answer": "-17.95%", "aliases": [], "scale": "percent", "answer_value": -17.95,
                 "answer_type": "arithmetic"}


@pytest.mark.parametrize(("row", "text", "want"), [
    (ARITH_THOUSANDS, "90,882", True),  # as the table shows it (in thousands)
    (ARITH_THOUSANDS, "The total is $90.9 million.", True),
    (ARITH_THOUSANDS, "$90,882,000", True),
    (ARITH_THOUSANDS, "90,883", False),
    (ARITH_THOUSANDS, "$90.8 million", False),
    (ARITH_THOUSANDS, "90,882 million", False),  # wrong scale
    (ARITH_PERCENT, "-17.95%", True),
    (ARITH_PERCENT, "It fell by 17.95%.", True),  # a decrease in words may drop the sign
    (ARITH_PERCENT, "It rose by 17.95%.", False),
    (ARITH_PERCENT, "-18%", True),
    (ARITH_PERCENT, "-17.5%", False),
    (ARITH_PERCENT, "-17.95 million", False),
])
def test_arithmetic_rows_score_on_value_and_scale(row, text, want):
    assert qa_eval.is_correct(text, row) is want


MULTI = {"answer": "$ 67,719; $ 107,444", "aliases": ["$ 67,719, $ 107,444"], "scale": "thousand",
         "answer_spans": ["$ 67,719", "$ 107,444"], "answer_type": "multi-span"}
GENES = {"answer": "COL6A1; COL6A2; COL6A3", "aliases": ["COL6A1, COL6A2, and COL6A3"],
         "answer_spans": ["COL6A1", "COL6A2", "COL6A3"]}


@pytest.mark.parametrize(("row", "text", "want"), [
    (MULTI, "They were $107,444 and $67,719.", True),  # any order
    (MULTI, "$67.7 million and $107.4 million", True),
    (MULTI, "$67,719 only", False),  # one span missing
    (GENES, "Mutations in the col6a3, COL6A1 or COL6A2 genes.", True),
    (GENES, "COL6A1 and COL6A2.", False),
])
def test_multi_span_needs_every_span(row, text, want):
    assert qa_eval.is_correct(text, row) is want


# ---- citations, support, retrieval, abstention -------------------------------------------------------------
GOLD = "cuad-008-governing-law"


def _answer(text: str, *, cited: list[str], shown: list[str], guard: dict | None, kind: str = "answer"):
    passages = [Passage(f"{d}#0", d, f"Text of {d}: revenue 3,778 in 2019.", 1.0, d) for d in shown]
    citations = [Citation(i, f"{d}#0", d, d, cited=d in cited) for i, d in enumerate(shown, 1)]
    return SimpleNamespace(text=text, kind=kind, citations=citations, passages=passages, guard=guard)


def test_answer_record_reads_cited_citations_and_the_guard():
    ans = _answer("New York [2].", cited=[GOLD], shown=["other", GOLD],
                  guard={"verdict": "supported", "cited": [2], "dropped": []})
    rec = qa_eval.answer_record(ans)
    assert rec == {"cited": [GOLD], "shown": ["other", GOLD], "guard": "supported", "unsupported": [],
                   "abstained": False}
    shown_only = qa_eval.answer_record(_answer("New York.", cited=[], shown=[GOLD], guard=None))
    assert shown_only["cited"] == [] and shown_only["guard"] is None  # shown but not cited; no guard yet
    assert qa_eval.cites_gold([f"{GOLD}#3"], GOLD) and not qa_eval.cites_gold(["cuad-008-governing-law-x#0"], GOLD)


def test_unsupported_numbers_are_those_no_passage_shows():
    passages = ["| | 2019 | 2018 |\n| Revenue | 3,778 | 3,512 |", "Growth was 12.5 percent."]
    assert qa_eval.unsupported_numbers("Revenue was $3.8 million in 2019 [1], up 12.5% [2].", passages) == []
    assert len(qa_eval.unsupported_numbers("Revenue was $4.2 million in 2019 [1].", passages)) == 1
    assert len(qa_eval.unsupported_numbers("Revenue rose 266 [1].", passages)) == 1  # computed: not shown


def _item(output: str, *, retrieved: bool, cited: bool, guard: str | None, unsupported=(), abstained=False,
          answer_type: str = "span", in_train: bool = True) -> dict:
    return {"output": output, "answer": "New York", "aliases": ["State of New York"], "context_id": GOLD,
            "shown": [f"{GOLD}#0"] if retrieved else ["other#0"], "cited": [GOLD] if cited else [],
            "guard": guard, "unsupported": list(unsupported), "abstained": abstained, "answer_type": answer_type,
            "in_train_jsonl": in_train}


def test_task_measures_on_hand_made_items():
    items = [
        _item("New York [1].", retrieved=True, cited=True, guard="supported", answer_type="span"),
        _item("State of New York.", retrieved=True, cited=False, guard="trimmed", answer_type="arithmetic"),
        _item("Delaware, since 1999 [1].", retrieved=True, cited=True, guard="supported", unsupported=["1999"],
              answer_type="span", in_train=False),
        _item("The sources do not say.", retrieved=False, cited=False, guard="supported", abstained=True,
              in_train=False),
        _item("The closest my sources come: ...", retrieved=False, cited=False, guard="quoted"),
        _item("Delaware [1].", retrieved=False, cited=True, guard="supported"),  # invented
    ]
    s = qa_eval.score_task(items)
    assert s["kind"] == "open_qa" and s["n"] == 6
    assert s["correct"] == pytest.approx(2 / 6) and s["score"] == s["correct"]
    assert s["correct_when_retrieved"] == pytest.approx(2 / 3)
    assert s["cites_gold_of_correct"] == pytest.approx(1 / 2)
    assert s["supported"] == pytest.approx(4 / 6)  # not item 3 (a number no passage shows) nor the quote
    assert s["unsupported_numbers"] == 1
    assert s["retrieved"] == pytest.approx(3 / 6)
    assert s["abstain_right"] == pytest.approx(2 / 3) and s["invented"] == 1  # "quoted" counts as abstaining
    assert s["by_type"] == {"arithmetic": {"n": 1, "correct": 1.0}, "span": {"n": 5, "correct": pytest.approx(1 / 5)}}
    assert s["not_in_train"] == {"n": 2, "correct": 0.0, "supported": 0.5}
    assert [it["correct"] for it in items] == [True, True, False, False, False, False]


def test_abstentions_are_told_from_answers():
    for say in ("The sources do not mention the governing law.", "I don't know."):
        assert qa_eval.is_abstention(say)
    assert not qa_eval.is_abstention("New York law governs the agreement [1].")


# ---- the eval hook ---------------------------------------------------------------------------------------
def test_qa_rows_load_by_split_and_employees_name_the_company():
    from bot.config import Settings
    from training.dataset import resolve_domain

    legal, finance = resolve_domain("legal", Settings()), resolve_domain("finance", Settings())
    dev = load_eval_rows(legal, ["legal_qa"], None, "dev")
    assert len(dev) == 30 and {r["split"] for r in dev} == {"dev"}  # data README: 30 dev, 51 test
    assert len(load_eval_rows(legal, ["legal_qa"], None, "test")) == 51
    everything = load_eval_rows(legal, None, None)  # eval.jsonl (290) + qa test (51)
    assert len(everything) == 290 + 51
    assert len(load_eval_rows(legal, ["cuad_yes_no"], None)) == 60  # the old tasks as before
    row = next(r for r in load_eval_rows(finance, ["finance_qa"], None, "dev") if r.get("named_question"))
    assert qa_eval.question_of(row) == row["named_question"] != row["question"]


class FakeAnswerer:
    """Answers the first question with the gold (citing its passage), abstains on the second, invents the third."""

    def __init__(self, domain):
        self.calls: list[tuple[str, object]] = []
        self.retriever = None
        self.domain = domain

    def answer(self, q, *, on_token=None):
        from training.dataset import read_jsonl

        question, passages = q.text, q.passages

        rows = [r for r in read_jsonl(self.domain.path / "qa.jsonl", required=()) if r["split"] == "dev"]
        row = rows[len(self.calls)]
        self.calls.append((question, passages))
        gold = row["context_id"]
        texts = [f"{row['answer']} [1].", "The sources do not say.", "Delaware [1]."]
        shown = [gold] if len(self.calls) == 1 else ["cuad-999-other"]
        ps = [Passage(f"{d}#0", d, f"{row['answer']} is in here.", 1.0, d) for d in shown]
        text = texts[len(self.calls) - 1]
        cites = [Citation(1, ps[0].chunk_id, d, d, cited="[1]" in text) for d in shown]
        return SimpleNamespace(text=text, kind="answer", adapter="base", notes=[], timings={"total_s": 0.1},
                               citations=cites, passages=ps, guard={"verdict": "supported"})


def test_evaluate_asks_open_questions_with_retrieval_and_scores_them():
    from bot.config import Settings
    from training.dataset import resolve_domain
    from training.evaluate import evaluate

    legal = resolve_domain("legal", Settings())
    fake = FakeAnswerer(legal)
    result = evaluate(legal, "base", 3, ["legal_qa"], settings=Settings(), answerer=fake, with_retrieval=False,
                      progress=False, split="dev")
    assert [p for _, p in fake.calls] == [None, None, None]  # retrieval on: no gold passage handed in
    s = result.tasks["legal_qa"]
    assert (s["n"], s["correct"], s["retrieved"], s["abstain_right"], s["invented"]) == (3, 1 / 3, 1 / 3, 0.5, 1)
    assert s["cites_gold_of_correct"] == 1.0 and result.split == "dev" and result.fingerprint["split"] == "dev"
    assert result.fingerprint["qa"]["legal_qa"]  # the qa.jsonl hash: a changed file is never reused
    printed = table([result])
    for measure in ("correct when retrieved", "cites gold (of correct)", "supported", "unsupported numbers",
                    "abstain right"):
        assert measure in printed


# ---- the gate --------------------------------------------------------------------------------------------
def _qa(correct: float, supported: float) -> dict:
    return {"kind": "open_qa", "n": 50, "score": correct, "correct": correct, "supported": supported}


def _cls(f1: float) -> dict:
    return {"kind": "classification", "n": 50, "score": f1, "macro_f1": f1, "accuracy": f1}


def test_gate_refuses_a_classification_gain_bought_with_the_real_job():
    current = EvalResult("finance", "v2", {"tfns_sentiment": _cls(0.60), "finance_qa": _qa(0.30, 0.70)})
    candidate = EvalResult("finance", "v3", {"tfns_sentiment": _cls(0.90), "finance_qa": _qa(0.25, 0.70)})
    assert candidate.overall > current.overall  # better on average: the old gate would pass it
    ok, reason = gate(candidate, current, 0.01)
    assert not ok and "finance_qa correctness fell 0.050 (0.300 -> 0.250)" in reason


def test_gate_refuses_a_drop_in_supported_answers_and_a_missing_qa_score():
    current = EvalResult("legal", "v2", {"cuad_yes_no": _cls(0.5), "legal_qa": _qa(0.30, 0.70)})
    worse_support = EvalResult("legal", "v3", {"cuad_yes_no": _cls(0.8), "legal_qa": _qa(0.32, 0.60)})
    ok, reason = gate(worse_support, current, 0.05)
    assert not ok and "legal_qa supported rate fell 0.100" in reason
    ok, reason = gate(EvalResult("legal", "v3", {"cuad_yes_no": _cls(0.9)}), current, 0.05)
    assert not ok and "legal_qa was scored for the current adapter but not for the candidate" in reason
    within = EvalResult("legal", "v3", {"cuad_yes_no": _cls(0.6), "legal_qa": _qa(0.295, 0.695)})
    assert gate(within, current, 0.01)[0]  # inside the margin, and better overall


def test_gate_still_reads_plain_dicts_and_retrain_summaries():
    current = {"overall": 0.5, "tasks": {"legal_qa": _qa(0.4, 0.8), "cuad_yes_no": _cls(0.6)}}
    candidate = {"overall": 0.7, "tasks": {"legal_qa": _qa(0.2, 0.8), "cuad_yes_no": _cls(1.0)}}
    assert not gate(candidate, current, 0.01)[0]
    result = EvalResult("legal", "v3", {"legal_qa": _qa(0.4, 0.8), "cuad_yes_no": _cls(0.6)})
    assert summarize(result) == {"overall": pytest.approx(0.5), "tasks": {"legal_qa": 0.4, "cuad_yes_no": 0.6}}
    assert gate({"tasks": {"a": 0.5}}, {"tasks": {"a": 0.5}}, 0.0)[0]
