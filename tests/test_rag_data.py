"""RAG training rows (`training/rag_data.py`): built with the real retriever on a tiny domain, checked against
the committed `domains/<d>/train_rag.jsonl` read-only, and formatted by `row_to_example` as served.

The oracles are independent of the builder: positions are read off the answer's [n], passage texts are rebuilt
from corpus.jsonl and the row's spans here, and held-out ids come straight from qa.jsonl / eval.jsonl.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bot.config import ROOT, Settings
from bot.domains import discover
from bot.prompt import SOURCES_HEADER, approx_tokens
from training.dataset import DatasetError, load_corpus, row_to_example

try:
    from bot.guard import NO_SOURCES_TEXT
except ImportError:  # the guard ships separately; its sentence is fixed by the product issue
    NO_SOURCES_TEXT = "My sources don't cover this, so I can't answer it from them."

CITE = re.compile(r"\[(\d+)\]")

TOML = """name = "tiny"
description = "Company agreements: renewal terms and governing law."
examples = ["What is the renewal term?", "Which law governs the agreement?", "How long is the term?"]
system_prompt = "Answer from the numbered sources and cite them."
"""

COMPANIES = ["Acme", "Borealis", "Cobalt", "Dunmore", "Elgin", "Fairway", "Garnet", "Halcyon", "Ibex", "Juniper",
             "Kestrel", "Lumen"]
TERMS = ["two (2) years", "three (3) years", "one (1) year", "five (5) years", "six (6) months", "four (4) years",
         "ten (10) years", "eighteen (18) months", "seven (7) years", "nine (9) months", "eight (8) years",
         "twelve (12) months"]
STATES = ["Kansas", "Delaware", "Ohio", "Texas", "Nevada", "Oregon", "Utah", "Iowa", "Maine", "Idaho", "Vermont",
          "Alaska"]


def _doc(i: int) -> dict:
    name = COMPANIES[i]
    filler = " ".join(f"{name} shall deliver the goods listed in schedule {k} on time." for k in range(6))
    text = (f"The {name} supply agreement renews automatically for successive terms of {TERMS[i]} unless either "
            f"party gives notice. {filler} This agreement is governed by the laws of the State of {STATES[i]}.")
    return {"id": f"doc-{name.lower()}", "title": f"{name} supply agreement", "text": text}


def _qa(i: int, split: str, kind: str) -> dict:
    name = COMPANIES[i]
    question, answer = ((f"What is the renewal term of the {name} supply agreement?", TERMS[i]) if kind == "term"
                        else (f"Which state's law governs the {name} supply agreement?", STATES[i]))
    return {"id": f"qa-{name.lower()}-{kind}", "task": "tiny_qa", "question": question, "answer": answer,
            "aliases": [], "context_id": f"doc-{name.lower()}", "split": split}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, embedder):
    """A domain of 12 supply agreements: 9 train contracts (2 questions each), 2 test and 1 dev contract.
    Small chunks, so documents have several chunks and rows carry spans."""
    from bot.retrieval.index import Retriever
    from training.rag_data import build_domain

    root = tmp_path_factory.mktemp("rag")
    folder = root / "domains" / "tiny"
    (folder / "docs").mkdir(parents=True)
    (folder / "domain.toml").write_text(TOML)
    (folder / "docs" / "corpus.jsonl").write_text("".join(json.dumps(_doc(i)) + "\n" for i in range(12)))
    splits = ["train"] * 9 + ["test", "test", "dev"]
    qa = [_qa(i, splits[i], kind) for i in range(12) for kind in ("term", "law")]
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa))
    (folder / "train.jsonl").write_text(json.dumps({"id": "t1", "task": "other", "instruction": "Hi?",
                                                    "output": "Hello."}) + "\n")
    settings = Settings(domains_dir=root / "domains", indexes_dir=root / "indexes", chunk_tokens=48,
                        chunk_overlap=8)
    domain = discover(settings.domains_dir).get("tiny")
    retriever = Retriever(settings, embedder)
    rows, skipped = build_domain(domain, settings, retriever=retriever, count=approx_tokens)
    again, _ = build_domain(domain, settings, retriever=retriever, count=approx_tokens)
    return {"rows": rows, "again": again, "skipped": skipped, "domain": domain, "settings": settings,
            "qa": qa, "corpus": {d["id"]: d for d in map(_doc, range(12))}}


def _chunk_text(pid: str, row: dict, corpus: dict[str, dict]) -> str:
    """The text a passage id stands for, rebuilt here from the corpus row and the row's span."""
    doc_id = pid.rpartition("#")[0] or pid
    text = corpus[doc_id]["text"]
    span = row.get("spans", {}).get(pid)
    return (text[span[0] : span[1]] if span else text).strip()


def _gold_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r["task"].endswith("_missing")]


def _missing_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["task"].endswith("_missing")]


# ---------------------------------------------------------------- the tiny domain, built with the real retriever


def test_tiny_build_has_gold_and_missing_rows(tiny):
    rows = tiny["rows"]
    gold, missing = _gold_rows(rows), _missing_rows(rows)
    assert len(gold) == 18  # 9 train contracts x 2 questions; nothing skipped
    assert 2 <= len(missing) <= 5  # about 17 % of the rows
    assert {r["task"] for r in gold} == {"tiny_rag"} and {r["task"] for r in missing} == {"tiny_rag_missing"}
    assert any(r.get("spans") for r in rows)  # multi-chunk docs: chunk spans are stored


def test_tiny_gold_sits_where_the_answer_cites_it(tiny):
    by_id = {r["id"]: r for r in tiny["qa"]}
    for row in _gold_rows(tiny["rows"]):
        (n,) = map(int, CITE.findall(row["output"]))
        assert row["passages"][n - 1] == row["gold"]
        assert row["gold"].rpartition("#")[0] == by_id[row["source_id"]]["context_id"]
        answer = CITE.sub("", row["output"]).strip(" .")
        assert answer == by_id[row["source_id"]]["answer"]
        assert answer in _chunk_text(row["gold"], row, tiny["corpus"])
        assert 1 <= len(row["passages"]) <= tiny["domain"].top_k


def test_tiny_gold_positions_vary(tiny):
    positions = {int(CITE.search(r["output"])[1]) for r in _gold_rows(tiny["rows"])}
    assert len(positions) >= 2  # seeded, not always first


def test_tiny_missing_rows_drop_the_gold_document(tiny):
    by_id = {r["id"]: r for r in tiny["qa"]}
    for row in _missing_rows(tiny["rows"]):
        gold_doc = by_id[row["source_id"]]["context_id"]
        assert row["output"] == NO_SOURCES_TEXT
        assert gold_doc not in {p.rpartition("#")[0] for p in row["passages"]}
        answer = by_id[row["source_id"]]["answer"]
        assert not any(answer in _chunk_text(p, row, tiny["corpus"]) for p in row["passages"])
        assert row["passages"]  # the next hits moved up


def test_tiny_held_out_documents_never_appear(tiny):
    held = {r["context_id"] for r in tiny["qa"] if r["split"] != "train"}
    assert len(held) == 3
    for row in tiny["rows"]:
        assert not held & {p.rpartition("#")[0] for p in row["passages"]}, row["id"]


def test_tiny_build_is_deterministic(tiny):
    assert tiny["rows"] == tiny["again"]


def test_tiny_rows_format_as_served(tiny):
    """Each row's prompt lists its passages as [1..k] in order, with the texts rebuilt from the corpus."""
    domain, settings = tiny["domain"], tiny["settings"]
    corpus = load_corpus(domain)
    for row in tiny["rows"]:
        ex = row_to_example(row, domain, corpus, budget=4000, count=approx_tokens, where=row["id"])
        blocks = [f"[{n}] {tiny['corpus'][p.rpartition('#')[0]]['title']}\n{_chunk_text(p, row, tiny['corpus'])}"
                  for n, p in enumerate(row["passages"], 1)]
        assert ex.messages[0]["content"] == f"{domain.system_prompt}\n\n{SOURCES_HEADER}\n" + "\n\n".join(blocks)
        assert ex.messages[-1] == {"role": "user", "content": row["instruction"]}
        assert ex.answer == row["output"] and ex.task == row["task"]
    assert settings.prompt_budget < 4000  # the large budget above only keeps texts whole for comparison


# ---------------------------------------------------------------- row_to_example with `passages`


def _finance():
    domain = discover(ROOT / "domains").get("finance")
    return domain, load_corpus(domain)


def test_row_to_example_shows_listed_passages_in_order():
    domain, corpus = _finance()
    a, b, c = sorted(d for d in corpus if len(corpus[d].text) > 300)[:3]
    text_b = corpus[b].text
    row = {"id": "x", "task": "finance_rag", "instruction": "What was revenue?", "input": "",
           "passages": [c, f"{b}#1", f"{a}#0"], "spans": {f"{b}#1": [10, 200]}, "output": "1 [2]."}
    ex = row_to_example(row, domain, corpus, budget=100_000, count=approx_tokens)
    system = ex.messages[0]["content"]
    expected = [f"[1] {corpus[c].title}\n{corpus[c].text}", f"[2] {corpus[b].title}\n{text_b[10:200].strip()}",
                f"[3] {corpus[a].title}\n{corpus[a].text.strip()}"]
    assert system == f"{domain.system_prompt}\n\n{SOURCES_HEADER}\n" + "\n\n".join(expected)
    assert ex.messages[1] == {"role": "user", "content": "What was revenue?"}


def test_passages_take_precedence_over_context_id_and_budget_cuts_the_tail():
    domain, corpus = _finance()
    ids = sorted(corpus, key=lambda d: -len(corpus[d].text))[:4]  # long passages: the budget shows 1-2
    row = {"id": "x", "task": "finance_rag", "instruction": "Q?", "passages": ids, "context_id": ids[3],
           "output": "A [1]."}
    ex = row_to_example(row, domain, corpus, budget=512, count=approx_tokens)
    system = ex.messages[0]["content"]
    assert f"[1] {corpus[ids[0]].title}\n" in system  # the listed order, not the context_id passage first
    assert f"[4] {corpus[ids[3]].title}" not in system  # cut by the serving budget, as at serving time


@pytest.mark.parametrize("pid, span, match", [
    ("no-such-doc#0", None, "not in the corpus"),
    ("no-such-doc", None, "not in the corpus"),
    ("FIRST#1", [5, 2], "span"),
    ("FIRST#1", [0, 10**9], "span"),
])
def test_bad_passages_are_dataset_errors(pid, span, match):
    domain, corpus = _finance()
    pid = pid.replace("FIRST", sorted(corpus)[0])
    row = {"id": "x", "task": "finance_rag", "instruction": "Q?", "passages": [pid], "output": "A.",
           **({"spans": {pid: span}} if span else {})}
    with pytest.raises(DatasetError, match=rf"f\.jsonl \(x\): .*{match}"):
        row_to_example(row, domain, corpus, budget=512, where="f.jsonl (x)")


# ---------------------------------------------------------------- the committed files, read-only


def _committed(name: str) -> list[dict]:
    path = ROOT / "domains" / name / "train_rag.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not generated")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _raw_corpus(name: str) -> dict[str, dict]:
    rows = (json.loads(line) for line in (ROOT / "domains" / name / "docs" / "corpus.jsonl").open(encoding="utf-8"))
    return {r["id"]: r for r in rows}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["finance", "legal", "medical"])
def test_committed_rows_never_show_dev_test_or_eval_passages(name):
    folder = ROOT / "domains" / name
    held = {r["context_id"] for r in _read(folder / "qa.jsonl") if r.get("split") in ("dev", "test")}
    held |= {r["context_id"] for r in _read(folder / "eval.jsonl") if r.get("context_id")}
    rows = _committed(name)
    shown = {p.rpartition("#")[0] or p for r in rows for p in r["passages"]}
    assert held and not held & shown


@pytest.mark.parametrize("name", ["finance", "legal", "medical"])
def test_committed_gold_rows_cite_the_gold_passage(name):
    rows, corpus = _committed(name), _raw_corpus(name)
    gold = _gold_rows(rows)
    assert gold and {r["task"] for r in gold} <= {f"{name}_rag", f"{name}_rag_arith"}
    for row in gold:
        n = {int(x) for x in CITE.findall(row["output"])}
        assert len(n) == 1, row["id"]
        assert row["passages"][n.pop() - 1] == row["gold"], row["id"]
        text = re.sub(r"\s+", " ", _chunk_text(row["gold"], row, corpus)).lower()
        if row["kind"] == "arithmetic":  # every operand of the shown derivation is in the gold passage
            derivation = row["output"].split("] (", 1)[1]
            operands = [n.rstrip(",.") for n in re.findall(r"\d[\d,]*\.?\d*", derivation)]
            assert all(n in text for n in operands if len(n) > 1 and n not in ("10", "100")), row["id"]
        elif row["kind"] == "sentence":  # each cited sentence is quoted from the gold passage
            for sentence in re.split(r"\s*\[\d+\][.!]\s*", row["output"]):
                assert not sentence or sentence.lower() in text, (row["id"], sentence)
        else:  # the first answer span (as the passage writes it) is in the gold passage
            first = CITE.sub("", row["output"]).strip(" .").split(", ")[0].split(" and ")[0]
            first = re.sub(r" (thousand|million|billion)$|%$", "", first).lower()
            assert first in text, (row["id"], first)


@pytest.mark.parametrize("name", ["finance", "legal", "medical"])
def test_committed_missing_rows_answer_no_sources_without_the_gold(name):
    rows = _committed(name)
    gold_doc = {r["source_id"]: r["gold"].rpartition("#")[0] for r in _gold_rows(rows)}
    missing = _missing_rows(rows)
    assert 0.12 <= len(missing) / len(rows) <= 0.22
    for row in missing:
        assert row["output"] == NO_SOURCES_TEXT
        assert gold_doc[row["source_id"]] not in {p.rpartition("#")[0] for p in row["passages"]}
