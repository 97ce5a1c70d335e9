"""Training data: line-numbered errors, empty data, and prompts built exactly as served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bot.config import ROOT, Settings
from bot.domains import discover
from bot.prompt import SOURCES_HEADER
from training.dataset import DatasetError, load_examples, read_jsonl


def _row(i: int, **extra) -> dict:
    return {"id": f"r{i}", "task": "tfns_sentiment", "instruction": "Sentiment? Answer Bearish, Bullish or Neutral.",
            "input": f"tweet number {i}", "output": "Neutral", "context_id": None, **extra}


@pytest.fixture
def finance(tmp_path) -> tuple[Settings, Path]:
    """A copy of the finance plugin whose train.jsonl each test writes."""
    dst = tmp_path / "domains" / "finance"
    shutil.copytree(ROOT / "domains" / "finance", dst, ignore=shutil.ignore_patterns("adapters", "*.jsonl"))
    (dst / "docs").mkdir(exist_ok=True)
    shutil.copy(ROOT / "domains" / "finance" / "docs" / "corpus.jsonl", dst / "docs" / "corpus.jsonl")
    return Settings(domains_dir=tmp_path / "domains"), dst


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def test_malformed_row_names_file_and_line(finance):
    settings, folder = finance
    _write(folder / "train.jsonl", [json.dumps(_row(1)), json.dumps(_row(2)), '{"id": "r3", "task": ', json.dumps(_row(4))])
    with pytest.raises(DatasetError, match=r"train\.jsonl line 3: not valid JSON"):
        load_examples("finance", settings=settings)


def test_row_missing_a_field_names_the_field(finance):
    settings, folder = finance
    bad = _row(2)
    del bad["output"]
    _write(folder / "train.jsonl", [json.dumps(_row(1)), json.dumps(bad)])
    with pytest.raises(DatasetError, match=r"line 2: missing or empty field\(s\): output"):
        load_examples("finance", settings=settings)


def test_non_object_row_is_rejected(finance):
    settings, folder = finance
    _write(folder / "train.jsonl", ['["a", "list"]'])
    with pytest.raises(DatasetError, match="line 1: expected a JSON object"):
        load_examples("finance", settings=settings)


def test_empty_dataset_is_a_clear_error(finance):
    settings, folder = finance
    (folder / "train.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="no training rows for finance"):
        load_examples("finance", settings=settings)


def test_missing_extra_file_is_reported(finance):
    settings, folder = finance
    _write(folder / "train.jsonl", [json.dumps(_row(1))])
    with pytest.raises(DatasetError, match="training file not found: .*nope.jsonl"):
        load_examples("finance", settings=settings, extra_files=["nope.jsonl"])


def test_inline_rows_are_formatted_as_served(finance):
    settings, folder = finance
    _write(folder / "train.jsonl", [json.dumps(_row(1))])
    (ex,) = load_examples("finance", settings=settings)
    domain = discover(settings.domains_dir).get("finance")
    assert ex.messages[0] == {"role": "system", "content": domain.system_prompt}  # no sources for inline text
    assert ex.messages[1] == {"role": "user", "content": "Sentiment? Answer Bearish, Bullish or Neutral.\n\ntweet number 1"}
    assert ex.answer == "Neutral" and ex.task == "tfns_sentiment" and ex.source_id == "r1"


def test_context_id_rows_get_the_corpus_passage_as_source_1(finance):
    settings, folder = finance
    corpus = [json.loads(line) for line in (folder / "docs" / "corpus.jsonl").open()]
    doc = corpus[0]
    row = {"id": "q1", "task": "tatqa_hybrid_qa", "instruction": "What was revenue?", "input": "",
           "context_id": doc["id"], "output": "5 million"}
    _write(folder / "train.jsonl", [json.dumps(row)])
    (ex,) = load_examples("finance", settings=settings)
    system = ex.messages[0]["content"]
    assert f"{SOURCES_HEADER}\n[1] {doc['title']}\n" in system
    assert doc["text"][:80] in system
    assert ex.messages[-1] == {"role": "user", "content": "What was revenue?"}


def test_unknown_context_id_is_reported(finance):
    settings, folder = finance
    _write(folder / "train.jsonl", [json.dumps(_row(1, task="tatqa_hybrid_qa", input="", context_id="nope"))])
    with pytest.raises(DatasetError, match="context_id 'nope' is not in finance's corpus"):
        load_examples("finance", settings=settings)


def test_caps_sample_down_and_repeat_up_and_seed_is_stable(finance):
    settings, folder = finance
    rows = [_row(i) for i in range(10)] + [_row(100 + i, task="other", output="x") for i in range(3)]
    _write(folder / "train.jsonl", [json.dumps(r) for r in rows])
    a = load_examples("finance", settings=settings, task_caps={"tfns_sentiment": 4, "other": 7}, seed=3)
    b = load_examples("finance", settings=settings, task_caps={"tfns_sentiment": 4, "other": 7}, seed=3)
    assert [e.source_id for e in a] == [e.source_id for e in b]
    assert sum(e.task == "tfns_sentiment" for e in a) == 4
    assert sum(e.task == "other" for e in a) == 7  # 3 rows repeated up to 7
    assert len(load_examples("finance", settings=settings, max_examples=5)) == 5


def test_duplicate_rows_across_files_are_dropped(finance):
    settings, folder = finance
    _write(folder / "train.jsonl", [json.dumps(_row(1))])
    _write(folder / "more.jsonl", [json.dumps(_row(1, id="copy")), json.dumps(_row(2))])
    ids = sorted(e.source_id for e in load_examples("finance", settings=settings, extra_files=["more.jsonl"]))
    assert ids == ["r1", "r2"]


def test_read_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(_row(1)) + "\n\n" + json.dumps(_row(2)) + "\n")
    assert [r["id"] for r in read_jsonl(path)] == ["r1", "r2"]


def test_served_phrasing_teaches_the_eval_wording_too():
    """CUAD yes/no and PubMedQA rows are shown half the time the way eval (and users) ask them."""
    examples = load_examples("medical", task_caps={"medquad_qa": 0}, seed=0)
    users = [e.messages[-1]["content"] for e in examples]
    assert any(u.startswith("Answer the research question with yes, no or maybe") for u in users)
    assert any(not u.startswith("Answer the research question") for u in users)
    assert all(e.task == "pubmedqa_reasoning" for e in examples)


def test_balance_gives_every_answer_label_the_same_rows():
    from collections import Counter

    from training.dataset import DatasetError, answer_label, load_examples

    examples = load_examples("finance", task_caps={"tfns_sentiment": 90, "tatqa_hybrid_qa": 6}, seed=2,
                             balance=("tfns_sentiment",))
    labels = Counter(e.answer for e in examples if e.task == "tfns_sentiment")
    assert labels == {"Bearish": 30, "Bullish": 30, "Neutral": 30}
    assert sum(e.task == "tatqa_hybrid_qa" for e in examples) == 6
    assert answer_label({"output": "Yes. Based on the abstract..."}) == "yes"
    with pytest.raises(DatasetError, match="--balance names task.*nope"):
        load_examples("finance", balance=("nope",))

