"""Real documents in a domain's docs/: PDF pages, DOCX, HTML and Markdown sections, and every bad file's message.

Each file is written by the test from known text (fpdf2, pypdf, python-docx), so the loaded text, page numbers
and heading paths are checked against what the test put there.
"""

from __future__ import annotations

import json

import pytest

from bot.answer import Answer, Citation, citations_for
from bot.commands import render_text
from bot.domains import ManifestError, discover, parse_manifest
from bot.errors import IndexError_
from bot.prompt import Passage
from bot.retrieval.index import Retriever, load_docs
from bot.retrieval.loaders import DocumentError, load_file, load_folder
from bot.router import RouteResult
from bot.testing.documents import make_docx, make_domain, make_encrypted_pdf, make_pdf, make_scanned_pdf

PAGES = [
    "Master Services Agreement. This agreement is made between Acme Corp and Globex Ltd.",
    "Fees. The customer pays a monthly fee of 4,200 euros, due on the fifth day of each month.",
    "Termination. Either party may end this agreement with ninety days written notice.",
]

HTML = """<!doctype html><html><head><title>Leave policy</title><style>body { color: red }</style>
<script>var tracking = "script words must not be indexed";</script></head>
<body><header>Intranet header banner</header>
<nav><a href="/">Home</a> | <a href="/hr">HR menu</a></nav>
<h1>Leave</h1><p>Staff get <b>twenty five</b> days of annual leave.</p>
<div><h2>Sick leave</h2><p>Sick leave needs a doctor's note after three days.</p></div>
<h1>Travel</h1><p>Book trains for trips under four hours.</p>
<footer>Copyright footer text</footer></body></html>"""


@pytest.fixture
def docs(tmp_path):
    return make_domain(tmp_path / "domains")


@pytest.fixture
def retriever(base_settings, embedder, tmp_path):
    """The real embedder and FAISS, with indexes under tmp_path."""
    return Retriever(base_settings.with_(indexes_dir=tmp_path / "indexes"), embedder)


def _domain(docs_dir):
    return discover(docs_dir.parent.parent).domains[docs_dir.parent.name]


def _message(path, docs_dir) -> str:
    with pytest.raises(DocumentError) as caught:
        load_file(path, docs_dir)
    return str(caught.value)


# ---------------------------------------------------------------- good documents


def test_pdf_gives_one_doc_per_page_with_its_1_based_page_number(docs):
    make_pdf(docs / "Master Services Agreement.pdf", PAGES)
    loaded = load_file(docs / "Master Services Agreement.pdf", docs)
    assert [d.metadata["page"] for d in loaded] == [1, 2, 3]
    assert [" ".join(d.text.split()) for d in loaded] == PAGES
    assert {d.id for d in loaded} == {"Master Services Agreement.pdf"}
    assert {d.metadata["file"] for d in loaded} == {"Master Services Agreement.pdf"}
    assert loaded[0].title == "Master Services Agreement"


def test_docx_text_is_read(docs):
    make_docx(docs / "handbook.docx", [("h1", "Expenses"), ("p", "Claim expenses within thirty days."),
                                       ("p", "Receipts over fifty euros are required.")])
    [doc] = load_file(docs / "handbook.docx", docs)
    lines = [line for line in doc.text.splitlines() if line.strip()]
    assert lines == ["Expenses", "Claim expenses within thirty days.", "Receipts over fifty euros are required."]
    assert doc.metadata == {"file": "handbook.docx"} and doc.title == "handbook"


def test_html_drops_navigation_scripts_styles_header_and_footer_and_keeps_heading_paths(docs):
    (docs / "leave.html").write_text(HTML)
    loaded = load_file(docs / "leave.html", docs)
    text = " ".join(d.text for d in loaded)
    for furniture in ("HR menu", "Home", "script words", "color: red", "Intranet header", "Copyright footer"):
        assert furniture not in text
    sections = {d.metadata.get("heading"): " ".join(d.text.split()) for d in loaded}
    assert set(sections) == {"Leave", "Leave > Sick leave", "Travel"}
    assert "Staff get twenty five days of annual leave." in sections["Leave"]  # inline markup kept in the sentence
    assert "doctor's note after three days" in sections["Leave > Sick leave"]
    assert "trains for trips under four hours" in sections["Travel"]
    assert {d.title for d in loaded} == {"Leave policy"}


def test_markdown_sections_carry_their_heading_path(docs):
    (docs / "parking.md").write_text(
        "# Parking guide\nPark in zone B on weekdays.\n\n## Weekends\nZone C is open.\n\n"
        "### Holidays\nThe garage closes.\n\n# Bikes\nRacks are by the door.\n")
    loaded = load_file(docs / "parking.md", docs)
    got = [(d.metadata.get("heading"), d.text.splitlines()[-1]) for d in loaded]
    assert got == [
        ("Parking guide", "Park in zone B on weekdays."),
        ("Parking guide > Weekends", "Zone C is open."),
        ("Parking guide > Weekends > Holidays", "The garage closes."),
        ("Bikes", "Racks are by the door."),
    ]
    assert {d.title for d in loaded} == {"Parking guide"}


def test_built_index_keeps_file_and_page_per_chunk_and_search_cites_the_page(docs, retriever):
    make_pdf(docs / "Master Services Agreement.pdf", PAGES)
    make_docx(docs / "handbook.docx", [("p", "Claim expenses within thirty days of the trip.")])
    domain = _domain(docs)
    assert retriever.ensure_index(domain).startswith("built")
    rows = [json.loads(x) for x in (retriever.index_dir(domain) / "chunks.jsonl").read_text().splitlines()]
    pages = {r["meta"]["page"]: r["text"] for r in rows if r["doc_id"] == "Master Services Agreement.pdf"}
    assert {p: " ".join(t.split()) for p, t in pages.items()} == dict(enumerate(PAGES, 1))
    assert len({r["chunk_id"] for r in rows}) == len(rows)  # pages of one file number their chunks on
    hit = retriever.search(domain, "How much is the monthly fee?", k=1, min_score=0.0)[0]
    assert (hit.metadata["file"], hit.metadata["page"]) == ("Master Services Agreement.pdf", 2)
    assert "url" not in hit.metadata  # no docs_url in the manifest: no link
    cite = citations_for("See [1].", [hit])[0]
    assert (cite.file, cite.page, cite.label) == ("Master Services Agreement.pdf", 2,
                                                 "Master Services Agreement.pdf, p. 2")
    expense = retriever.search(domain, "When must expenses be claimed?", k=1, min_score=0.0)[0]
    assert expense.doc_id == "handbook.docx" and "page" not in expense.metadata


def test_docs_url_links_each_file_and_a_pdf_at_its_page(tmp_path, retriever):
    docs = make_domain(tmp_path / "domains", extra='docs_url = "https://wiki.example.com/legal/"\n')
    make_pdf(docs / "Master Services Agreement.pdf", PAGES)
    domain = _domain(docs)
    assert domain.docs_url == "https://wiki.example.com/legal/"
    hit = retriever.search(domain, "notice period to terminate", k=1, min_score=0.0)[0]
    assert hit.metadata["page"] == 3
    assert hit.metadata["url"] == "https://wiki.example.com/legal/Master%20Services%20Agreement.pdf#page=3"


def test_docs_url_must_be_http(tmp_path):
    docs = make_domain(tmp_path / "domains", extra='docs_url = "file:///etc/passwd"\n')
    with pytest.raises(ManifestError, match=r"docs: `docs_url` must be an http\(s\) URL"):
        parse_manifest(docs.parent)
    assert "docs_url" in discover(tmp_path / "domains").errors["docs"]


# ---------------------------------------------------------------- citations


def _passage(n: int, meta: dict) -> Passage:
    return Passage(f"c{n}#0", f"Title {n}", "text", 0.5, f"c{n}", meta)


def test_citation_labels_name_file_and_page_or_heading():
    passages = [
        _passage(1, {"contract_file": "X"}),  # a corpus row: named by its title, as before
        _passage(2, {"file": "Master Services Agreement.pdf", "page": 14}),
        _passage(3, {"file": "parking.md", "heading": "Parking guide > Weekends"}),
        _passage(4, {"file": "handbook.docx"}),
    ]
    cites = {c.n: c for c in citations_for("Fees are due monthly [2].", passages)}
    assert cites[2].cited and not cites[1].cited
    assert [cites[n].label for n in (1, 2, 3, 4)] == [
        "Title 1", "Master Services Agreement.pdf, p. 14", "parking.md, Parking guide > Weekends", "handbook.docx"]
    assert (cites[1].file, cites[1].page, cites[1].heading) == (None, None, None)


def test_cli_and_json_show_file_and_page():
    cites = [Citation(2, "msa#5", "Master Services Agreement", "Master Services Agreement.pdf", cited=True,
                      file="Master Services Agreement.pdf", page=14),
             Citation(1, "d1#0", "Leases", "d1")]
    answer = Answer("The fee is due monthly [2].", "legal", RouteResult("legal", {}, "explicit", "q"), citations=cites)
    text = render_text(answer)
    assert "  [2] Master Services Agreement.pdf, p. 14\n" in text
    assert "  [1] Leases  (d1#0)" not in text  # only the cited source is listed ...
    assert "also searched: [1]" in text  # ... and the other is named by number
    out = answer.to_dict()["citations"][0]
    assert (out["file"], out["page"], out["heading"]) == ("Master Services Agreement.pdf", 14, None)


# ---------------------------------------------------------------- bad documents


def test_encrypted_pdf_is_named_and_says_encrypted(docs):
    make_encrypted_pdf(docs / "locked.pdf", PAGES)
    assert _message(docs / "locked.pdf", docs) == (
        "locked.pdf: the PDF is encrypted (password-protected); save an unprotected copy to index it")


def test_corrupt_pdf_is_named_and_says_unreadable(docs):
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    assert _message(docs / "broken.pdf", docs).startswith("broken.pdf: not a readable PDF (")


def test_scanned_pdf_without_text_layer_needs_ocr(docs):
    make_scanned_pdf(docs / "scan.pdf", n_pages=2)
    assert _message(docs / "scan.pdf", docs) == (
        "scan.pdf: no text layer on any of its 2 page(s) (a scanned document?); it needs OCR before it can be indexed")


@pytest.mark.parametrize("name", ["empty.pdf", "empty.docx", "empty.md", "empty.html"])
def test_zero_byte_file_is_named_and_says_empty(docs, name):
    (docs / name).write_bytes(b"")
    assert _message(docs / name, docs) == f"{name}: the file is empty (0 bytes)"


@pytest.mark.parametrize("name", ["figures.xlsx", "diagram.png", "notes"])
def test_unsupported_type_lists_the_supported_ones(docs, name):
    (docs / name).write_bytes(b"PK\x03\x04 not for us")
    message = _message(docs / name, docs)
    assert message.startswith(f"{name}: ") and "not supported; supported types are" in message
    assert all(ext in message for ext in (".pdf", ".docx", ".html", ".md", ".txt", ".jsonl"))


def test_corrupt_docx_is_named(docs):
    (docs / "broken.docx").write_bytes(b"this is not a zip archive")
    assert _message(docs / "broken.docx", docs).startswith("broken.docx: not a readable Word document (")


def test_html_with_only_navigation_has_no_text(docs):
    (docs / "menu.html").write_text("<html><body><nav>Home | About</nav><script>x()</script></body></html>")
    assert _message(docs / "menu.html", docs) == "menu.html: no text to index in it"


def test_bad_files_are_skipped_with_their_messages_and_the_rest_still_indexes(docs, retriever):
    make_pdf(docs / "Master Services Agreement.pdf", PAGES)
    make_encrypted_pdf(docs / "locked.pdf", ["secret terms"])
    make_scanned_pdf(docs / "scan.pdf", n_pages=1)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\ngarbage")
    (docs / "empty.md").write_bytes(b"")
    (docs / "figures.xlsx").write_bytes(b"PK")
    folder = load_folder(docs)
    assert set(folder.skipped) == {"locked.pdf", "scan.pdf", "broken.pdf", "empty.md", "figures.xlsx"}
    assert all(message.startswith(name + ": ") for name, message in folder.skipped.items())
    assert {d.id for d in load_docs(_domain(docs))} == {"Master Services Agreement.pdf"}
    report = retriever.refresh(_domain(docs))
    assert report.skipped == folder.skipped
    assert retriever.search(_domain(docs), "termination notice", k=1, min_score=0.0)[0].metadata["page"] == 3


def test_a_domain_of_only_bad_files_says_why_each_was_skipped(docs, retriever):
    make_scanned_pdf(docs / "scan.pdf", n_pages=1)
    (docs / "figures.xlsx").write_bytes(b"PK")
    with pytest.raises(IndexError_, match=r"^docs: no documents in .*; skipped ") as caught:
        retriever.ensure_index(_domain(docs))
    assert "scan.pdf: no text layer on any of its 1 page(s)" in str(caught.value)
    assert "figures.xlsx: .xlsx files are not supported" in str(caught.value)


def test_bot_logs_skipped_files_when_it_builds(docs, retriever, caplog):
    make_pdf(docs / "ok.pdf", PAGES[:1])
    make_scanned_pdf(docs / "scan.pdf", n_pages=1)
    with caplog.at_level("WARNING", logger="bot.retrieval.index"):
        retriever.ensure_index(_domain(docs))
    assert any("scan.pdf: no text layer" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- done: answered from and cited with its page


@pytest.mark.slow
def test_dropped_pdf_and_docx_are_answered_from_and_cited_with_their_page(tmp_path, base_settings, embedder, runtime):
    from bot.answer import Answerer, Question

    docs = make_domain(tmp_path / "domains")
    (docs / "intro.md").write_text("# Office\nThe office opens at nine.\n")
    settings = base_settings.with_(domains_dir=tmp_path / "domains", indexes_dir=tmp_path / "indexes",
                                   db_path=tmp_path / "db.sqlite")
    retriever = Retriever(settings, embedder)
    answerer = Answerer(settings, discover(settings.domains_dir), retriever, runtime)
    assert answerer.answer(Question("When does the office open?", domain="docs")).citations
    make_pdf(docs / "Master Services Agreement.pdf", PAGES)  # dropped in after the index was built
    make_docx(docs / "handbook.docx", [("p", "Claim travel expenses within thirty days of the trip.")])
    # what the live reload calls on a docs change: the index picks the new files up
    assert retriever.ensure_index(answerer.domain("docs")) == "built (stale)"
    answer = answerer.answer(Question("What is the monthly fee in the Master Services Agreement?", domain="docs"))
    assert answer.kind == "answer"
    labels = [c.label for c in answer.citations]
    assert "Master Services Agreement.pdf, p. 2" in labels, labels
    assert any(p.metadata.get("page") == 2 and "4,200 euros" in p.text for p in answer.passages)
    answer = answerer.answer(Question("How long do I have to claim travel expenses?", domain="docs"))
    assert "handbook.docx" in [c.label for c in answer.citations]
