"""The feedback simulator's pieces that need no model: which questions it asks and how it judges an answer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bot.domains import discover
from training.dataset import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import feedback_loop as fl  # noqa: E402


@pytest.fixture(scope="module")
def finance():
    return discover(ROOT / "domains").get("finance")


def test_qa_questions_come_from_the_train_split_only(finance) -> None:
    items, _ = fl.items_for(finance, "finance_qa")
    splits = {r["id"]: r.get("split") for r in read_jsonl(finance.path / "qa.jsonl", required=("id",))}
    assert items and {splits[i.id] for i in items} == {"train"}


def test_the_judge_accepts_the_gold_and_refuses_another_answer(finance) -> None:
    items, judge = fl.items_for(finance, "finance_qa")
    a, b = next((x, y) for x, y in zip(items, items[1:], strict=False) if x.gold not in y.gold and y.gold not in x.gold)
    assert judge(f"The answer is {a.gold} [1].", a)
    assert not judge(f"The answer is {b.gold} [1].", a)


def test_classification_is_judged_by_its_label(finance) -> None:
    items, judge = fl.items_for(finance, "tfns_sentiment")
    bullish = next(i for i in items if i.gold == "Bullish")
    assert judge("Bullish", bullish) and judge("bullish.", bullish)
    assert not judge("Bearish", bullish)


def test_a_correction_states_the_fact_and_its_source(finance) -> None:
    items, _ = fl.items_for(finance, "finance_qa")
    text = fl.correction_text(items[0], finance)
    assert text.startswith(items[0].gold) and items[0].row["context_id"] in text


def test_an_unknown_task_is_a_clear_error(finance) -> None:
    with pytest.raises(SystemExit, match="has no task 'horoscope'"):
        fl.items_for(finance, "horoscope")


def test_the_table_row_reads_the_recorded_verdict() -> None:
    paired = {"n": 30, "current": 0.2, "candidate": 0.4, "diff": 0.2, "ci_low": 0.05, "ci_high": 0.35, "p_value": 0.01}
    r = {"domain": "finance", "stats": {"events": 150}, "status": "promoted", "wall_s": 600.0,
         "verdict": {"dev": {"finance_qa": paired}, "test": {"finance_qa": {**paired, "current": 0.1, "candidate": 0.3}}}}
    row = fl.row_of("clean", r)
    assert row == ["finance", "clean", "150", "0.100", "0.300", "0.300", "+0.200 [+0.050, +0.350] p=0.01",
                   "promoted", "10.0"]
    assert fl.row_of("poisoned", {**r, "status": "rejected"})[5] == "0.100"  # rejected: the live one stays
    assert fl.markdown([row]).count("\n") == 3
