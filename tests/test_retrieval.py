import json
import shutil

import pytest

from bot.config import ROOT
from bot.domains import discover
from bot.errors import IndexError_
from bot.retrieval.index import Doc, Retriever, chunk_doc, docs_hash, load_docs

TOML = """name = "{name}"
description = "Tiny test domain."
examples = ["a?", "b?", "c?"]
system_prompt = "s"
"""


@pytest.fixture
def tiny(tmp_path):
    folder = tmp_path / "domains" / "tiny"
    (folder / "docs").mkdir(parents=True)
    (folder / "domain.toml").write_text(TOML.format(name="tiny"))
    rows = [
        {"id": "d1", "title": "Leases", "text": "A lease lets a tenant use property for rent.", "url": "u1"},
        {"id": "d2", "title": "Volcanoes", "text": "Volcanoes erupt lava and ash from magma chambers."},
    ]
    (folder / "docs" / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "docs" / "guide.md").write_text("# Parking guide\nPark in zone B on weekdays.\n")
    return discover(tmp_path / "domains").domains["tiny"]


@pytest.fixture
def retriever(settings, embedder, tmp_path):
    return Retriever(settings.with_(indexes_dir=tmp_path / "indexes"), embedder)


def test_load_docs_reads_jsonl_and_markdown(tiny):
    docs = load_docs(tiny)
    assert {d.id for d in docs} == {"d1", "d2", "guide.md"}
    md = next(d for d in docs if d.id == "guide.md")
    assert md.title == "Parking guide"
    assert next(d for d in docs if d.id == "d1").metadata["url"] == "u1"


def test_malformed_docs_row_names_file_and_line(tiny):
    (tiny.docs_dir / "bad.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(IndexError_, match=r"bad.jsonl:1"):
        load_docs(tiny)


def test_chunking_splits_long_docs_with_overlap(embedder):
    doc = Doc("long", "T", " ".join(f"word{i}" for i in range(600)))
    chunks = chunk_doc(doc, embedder.tokenizer, size=100, overlap=20)
    assert len(chunks) > 3
    assert [c.chunk_id for c in chunks[:2]] == ["long#0", "long#1"]
    assert all(embedder.count_tokens(c.text) <= 110 for c in chunks)


def test_build_search_and_manifest(tiny, retriever):
    assert retriever.status(tiny) == "missing"
    assert retriever.ensure_index(tiny).startswith("built")
    manifest = json.loads((retriever.index_dir(tiny) / "manifest.json").read_text())
    assert manifest["docs_hash"] == docs_hash(tiny.docs_dir)
    assert manifest["embedding_model"] and manifest["chunk_tokens"] and manifest["n_chunks"] == 3
    assert set(manifest["files"]) == {"index.faiss", "chunks.jsonl"}
    assert retriever.ensure_index(tiny) == "up to date"
    hits = retriever.search(tiny, "where do lava and ash come from?", k=2, min_score=0.0)
    assert hits[0].doc_id == "d2" and hits[0].title == "Volcanoes"


def test_docs_change_makes_index_stale_and_rebuilds(tiny, retriever):
    retriever.ensure_index(tiny)
    (tiny.docs_dir / "more.md").write_text("# Holidays\nThe office closes on public holidays.\n")
    assert retriever.status(tiny) == "stale"
    retriever._loaded.clear()
    hits = retriever.search(tiny, "when does the office close?", k=1, min_score=0.0)
    assert hits[0].doc_id == "more.md"


@pytest.mark.parametrize("victim", ["index.faiss", "chunks.jsonl"])
def test_tampered_or_corrupt_files_are_never_loaded_and_get_rebuilt(tiny, retriever, victim):
    retriever.ensure_index(tiny)
    path = retriever.index_dir(tiny) / victim
    path.write_bytes(b"garbage" * 10)
    assert retriever.status(tiny) == "corrupt"
    retriever._loaded.clear()
    assert retriever.search(tiny, "lease rent tenant", k=1, min_score=0.0)[0].doc_id == "d1"
    assert retriever.status(tiny) == "ready"


def test_missing_index_is_built_on_first_use(tiny, retriever):
    shutil.rmtree(retriever.index_dir(tiny), ignore_errors=True)
    assert retriever.search(tiny, "parking zone", k=1, min_score=0.0)[0].doc_id == "guide.md"


def test_empty_docs_folder_gives_clear_error(tiny, retriever):
    for f in tiny.docs_dir.iterdir():
        f.unlink()
    with pytest.raises(IndexError_, match="no documents"):
        retriever.ensure_index(tiny)


def test_real_medical_index_finds_gold_passage(answerer):
    med = answerer.domain("medical")
    hits = answerer.retriever.search(med, "What are the treatments for severe congenital neutropenia ?")
    assert "medquad-3-0000900-5" in [h.doc_id for h in hits]
    assert all(h.chunk_id.startswith(h.doc_id + "#") for h in hits)


def test_named_legal_question_uses_keywords(answerer):
    legal = answerer.domain("legal")
    hits = answerer.retriever.search(legal, "ENDORSEMENT AGREEMENT (ADAMS GOLF): when does the term expire?")
    assert any(h.doc_id.startswith("cuad-004") for h in hits)


def test_a_named_contract_brings_its_clause_to_the_top(answerer):
    """Found only by meaning within the contract the question names (dense and BM25 alone missed it in the top 5)."""
    legal = answerer.domain("legal")
    question = ("ORBSATCORP STRATEGIC ALLIANCE AGREEMENT: Is there a restriction on the ability of a party to compete "
                "with the counterparty or operate in a certain geography or business or technology sector?")
    assert answerer.retriever.search(legal, question, k=5, min_score=0.0)[0].doc_id == "cuad-327-non-compete"
    loaded = answerer.retriever.load(legal)
    named = loaded.named(question)
    assert named and {loaded.chunks[i].metadata["contract_file"] for i in named} == {
        loaded.chunks[named[0]].metadata["contract_file"]}
    # topic words, however rare in titles, are not names: they fill many texts
    assert loaded.named("Is there a non-compete clause in the agreement?") == []
    assert answerer.retriever.load(answerer.domain("finance")).named("What was the revenue in 2019?") == []


def test_langchain_vector_store_view(answerer):
    med = answerer.domain("medical")
    loaded = answerer.retriever.load(med)
    store = loaded.store  # made on first use: answering never imports langchain
    docs = store.similarity_search("asthma treatment", k=2)
    # the same top passage as an exhaustive inner product over the index's own vectors
    import numpy as np

    q = answerer.retriever.embedder.encode_one("asthma treatment")
    every = np.stack([loaded.vectors.reconstruct(i) for i in range(loaded.vectors.ntotal)])
    assert len(docs) == 2 and docs[0].page_content == loaded.chunks[int(np.argmax(every @ q))].text
    assert loaded.store is store


def test_shipped_index_root_is_gitignored():
    ignored = (ROOT / ".gitignore").read_text()
    assert "/indexes/*" in ignored


def test_retrieval_only_eval_reports_named_and_evidence_recall(answerer, base_settings):
    from training.evaluate import retrieval_only, table

    result = retrieval_only(answerer.domain("legal"), base_settings, retriever=answerer.retriever)
    assert set(result.retrieval) == {"as asked", "named", "named, evidence rows"}
    named, evidence = result.retrieval["named"], result.retrieval["named, evidence rows"]
    assert evidence["n"] < named["n"] == result.retrieval["as asked"]["n"]
    assert 0.0 <= named["recall@1"] <= named["recall@5"] <= 1.0
    assert "retrieval (named, evidence rows)" in table([result])
