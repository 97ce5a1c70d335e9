"""Incremental re-indexing: a changed or added file re-embeds only its own chunks, a deleted file leaves the index.

The embedder is the real one wrapped in a counter of the texts it is given; each test file is small enough to be
exactly one chunk per section, so the test knows how many chunks each change must embed.
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from bot.cli import main
from bot.domains import discover
from bot.retrieval.index import Retriever
from bot.testing.documents import make_domain, make_pdf


class CountingEmbedder:
    """The real embedder, counting every text it encodes for the index."""

    def __init__(self, real, fingerprint: str | None = None):
        self._real = real
        self._fingerprint = fingerprint
        self.texts: list[str] = []

    def encode(self, texts, progress: bool = False):
        self.texts.extend(texts)
        return self._real.encode(texts, progress)

    def fingerprint(self) -> str:
        return self._fingerprint or self._real.fingerprint()

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def counting(embedder):
    return CountingEmbedder(embedder)


@pytest.fixture
def docs(tmp_path):
    docs = make_domain(tmp_path / "domains", "office")
    (docs / "parking.md").write_text("# Parking\nPark in zone B on weekdays.\n\n## Weekends\nZone C opens on weekends.\n")
    (docs / "canteen.txt").write_text("The canteen serves lunch from noon until two.\n")
    make_pdf(docs / "Lease.pdf", ["The rent is 900 euros a month.", "The lease ends on 31 March 2031."])
    return docs  # 2 + 1 + 2 = 5 chunks


@pytest.fixture
def retriever(base_settings, counting, tmp_path):
    return Retriever(base_settings.with_(indexes_dir=tmp_path / "indexes"), counting)


def _domain(docs):
    return discover(docs.parent.parent).domains["office"]


def _vectors(retriever, domain) -> dict[str, np.ndarray]:
    folder = retriever.index_dir(domain)
    index = faiss.read_index(str(folder / "index.faiss"))
    rows = [json.loads(x) for x in (folder / "chunks.jsonl").read_text().splitlines()]
    return dict(zip([r["chunk_id"] for r in rows], index.reconstruct_n(0, index.ntotal), strict=True))


def test_first_build_embeds_every_chunk(docs, retriever, counting):
    report = retriever.refresh(_domain(docs))
    assert report.action == "built (missing)"
    assert (report.embedded, report.reused) == (5, 0) and len(counting.texts) == 5
    assert report.added == ["Lease.pdf", "canteen.txt", "parking.md"]


def test_a_changed_file_re_embeds_only_its_own_chunks(docs, retriever, counting):
    domain = _domain(docs)
    retriever.refresh(domain)
    counting.texts.clear()
    (docs / "canteen.txt").write_text("The canteen serves lunch from half past eleven until two.\n")
    report = retriever.refresh(domain)
    assert report.action == "built (stale)" and report.changed == ["canteen.txt"]
    assert (report.embedded, report.reused) == (1, 4)
    assert len(counting.texts) == 1 and "half past eleven" in counting.texts[0]
    hit = retriever.search(domain, "when does the canteen open for lunch?", k=1, min_score=0.0)[0]
    assert "half past eleven" in hit.text


def test_one_changed_section_of_a_file_re_embeds_that_section_only(docs, retriever, counting):
    domain = _domain(docs)
    retriever.refresh(domain)
    counting.texts.clear()
    (docs / "parking.md").write_text("# Parking\nPark in zone B on weekdays.\n\n## Weekends\nZone D opens on weekends.\n")
    report = retriever.refresh(domain)
    assert report.changed == ["parking.md"] and (report.embedded, report.reused) == (1, 4)
    assert "Zone D" in counting.texts[0]


def test_an_added_file_embeds_only_its_chunks(docs, retriever, counting):
    domain = _domain(docs)
    retriever.refresh(domain)
    counting.texts.clear()
    make_pdf(docs / "Insurance.pdf", ["Fire insurance covers the building.", "Flood damage is excluded.",
                                      "Claims go to the broker within a week."])
    report = retriever.refresh(domain)
    assert report.added == ["Insurance.pdf"] and (report.embedded, report.reused) == (3, 5)
    assert {t.split("\n", 1)[1].strip() for t in counting.texts} == {
        "Fire insurance covers the building.", "Flood damage is excluded.", "Claims go to the broker within a week."}


def test_a_deleted_file_leaves_the_index_and_the_search_results(docs, retriever, counting):
    domain = _domain(docs)
    retriever.refresh(domain)
    assert any(h.doc_id == "Lease.pdf" for h in retriever.search(domain, "rent per month lease", k=5, min_score=0.0))
    counting.texts.clear()
    (docs / "Lease.pdf").unlink()
    report = retriever.refresh(domain)
    assert report.removed == ["Lease.pdf"] and (report.embedded, report.reused) == (0, 3) and not counting.texts
    hits = retriever.search(domain, "rent per month lease", k=5, min_score=0.0)
    assert hits and all(h.doc_id != "Lease.pdf" for h in hits)
    rows = (retriever.index_dir(domain) / "chunks.jsonl").read_text()
    assert "900 euros" not in rows


def test_reused_vectors_equal_freshly_embedded_ones(docs, retriever, counting):
    domain = _domain(docs)
    retriever.refresh(domain)
    (docs / "canteen.txt").write_text("The canteen is closed in August.\n")
    retriever.refresh(domain)
    incremental = _vectors(retriever, domain)
    counting.texts.clear()
    report = retriever.refresh(domain, force=True)  # --force: everything embedded again
    assert report.action == "rebuilt" and (report.embedded, report.reused) == (5, 0) and len(counting.texts) == 5
    fresh = _vectors(retriever, domain)
    assert incremental.keys() == fresh.keys()
    for chunk_id, vector in fresh.items():
        # llama.cpp's sums depend a little on which texts share a batch (~3e-5 per component); another chunk's
        # vector would be far off (cosine < 0.9)
        assert float(incremental[chunk_id] @ vector) > 0.99999, chunk_id


def test_a_tampered_previous_index_is_not_reused(docs, retriever, counting):
    domain = _domain(docs)
    retriever.refresh(domain)
    chunks = retriever.index_dir(domain) / "chunks.jsonl"
    chunks.write_text(chunks.read_text().replace("zone B", "zone Q"))
    counting.texts.clear()
    report = retriever.refresh(domain)
    assert report.action == "built (corrupt)" and (report.embedded, report.reused) == (5, 0)
    assert not any("zone Q" in t for t in counting.texts)


def test_vectors_of_other_embedding_weights_are_not_reused(docs, base_settings, embedder, tmp_path):
    domain = _domain(docs)
    settings = base_settings.with_(indexes_dir=tmp_path / "indexes")
    Retriever(settings, CountingEmbedder(embedder)).refresh(domain)
    other = CountingEmbedder(embedder, fingerprint="other-weights")
    report = Retriever(settings, other).refresh(domain)
    assert report.action == "built (stale)" and (report.embedded, report.reused) == (5, 0) and len(other.texts) == 5


def test_an_unchanged_domain_is_up_to_date_and_embeds_nothing(docs, retriever, counting):
    domain = _domain(docs)
    retriever.refresh(domain)
    counting.texts.clear()
    report = retriever.refresh(domain)
    assert report.action == "up to date" and not counting.texts
    assert report.lines() == ["office: up to date"]


def test_index_command_prints_what_changed_and_what_was_skipped(docs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOMAINBOT_DOMAINS_DIR", str(docs.parent.parent))
    monkeypatch.setenv("DOMAINBOT_INDEXES_DIR", str(tmp_path / "indexes"))
    monkeypatch.setenv("DOMAINBOT_DB", str(tmp_path / "db.sqlite"))
    assert main(["index", "office"]) == 0
    assert "office: built (missing) · files: 3 added, 0 changed, 0 removed · chunks: 5 embedded, 0 reused" in (
        capsys.readouterr().out)
    (docs / "canteen.txt").write_text("Lunch is served from noon.\n")
    (docs / "parking.md").unlink()
    (docs / "rota.md").write_text("# Rota\nThe desk is staffed from eight.\n")
    (docs / "budget.xlsx").write_bytes(b"PK")
    assert main(["index", "office"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "office: built (stale) · files: 2 added, 1 changed, 1 removed · chunks: 2 embedded, 2 reused"
    assert out[1:] == ["  + budget.xlsx", "  + rota.md", "  ~ canteen.txt", "  - parking.md",
                       "  skipped budget.xlsx: .xlsx files are not supported; supported types are .docx, .htm, "
                       ".html, .jsonl, .markdown, .md, .pdf, .txt"]
    assert main(["index", "office"]) == 0
    assert capsys.readouterr().out.splitlines() == ["office: up to date", out[-1]]  # still says what it skips
