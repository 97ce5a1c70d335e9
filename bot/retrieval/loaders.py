"""Documents in a domain's `docs/` folder → `Doc`s, through langchain's loaders and splitters.

A PDF gives one Doc per page (`page`, 1-based), Markdown and HTML one per heading section (`heading`, the path
"Guide > Weekends"), a DOCX or TXT file one Doc; `.jsonl` files hold ready rows (`id`, `title`, `text`). A file
that cannot be read is skipped with a message naming it (`DocumentError`), so the rest of the domain still
indexes; only a malformed `.jsonl` row stops the build, as that file is the curated corpus.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bot.errors import IndexError_

PDF = (".pdf",)
DOCX = (".docx",)
HTML = (".html", ".htm")
MARKDOWN = (".md", ".markdown")
TEXT = (".txt",)
JSONL = (".jsonl",)
SUPPORTED = tuple(sorted(PDF + DOCX + HTML + MARKDOWN + TEXT + JSONL))
# page furniture, not content: menus, scripts and site headers would otherwise fill every chunk
HTML_DROP = ("nav", "script", "style", "header", "footer", "noscript", "template", "iframe", "svg", "form")
HEADINGS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]

logging.getLogger("pypdf").setLevel(logging.ERROR)  # "EOF marker not found" etc.: we report the file ourselves


@dataclass(frozen=True)
class Doc:
    id: str
    title: str
    text: str
    metadata: dict = field(default_factory=dict)


class DocumentError(Exception):
    """A document that cannot be indexed; the message names the file and says why."""


@dataclass
class Folder:
    """What a docs folder holds: the documents read, the files skipped (with why) and every file's sha256."""

    docs: list[Doc]
    skipped: dict[str, str]  # relative path -> message
    sources: dict[str, str]  # relative path -> sha256 of its bytes


def docs_files(docs_dir: Path) -> list[Path]:
    """Every file under docs/, supported or not (an unsupported one is reported, not silently ignored)."""
    if not docs_dir.is_dir():
        return []
    return sorted(
        p for p in docs_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(docs_dir).parts)
    )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _reason(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__


def pretty_stem(path: Path) -> str:
    return path.stem.replace("-", " ").replace("_", " ").strip() or path.name


# ---------------------------------------------------------------- one loader per type


def jsonl_docs(path: Path) -> Iterator[Doc]:
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            doc_id, text = str(row["id"]), str(row["text"])
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexError_(f"{path}:{n}: each docs row needs JSON with `id` and `text` ({exc})") from exc
        meta = {k: v for k, v in row.items() if k not in ("id", "title", "text") and isinstance(v, str | int | float)}
        yield Doc(doc_id, str(row.get("title") or doc_id), text, meta)


def pdf_docs(path: Path, rel: str) -> list[Doc]:
    from langchain_community.document_loaders import PyPDFLoader
    from pypdf.errors import DependencyError, FileNotDecryptedError, WrongPasswordError

    try:
        pages = PyPDFLoader(str(path), mode="page").load()
    except (FileNotDecryptedError, WrongPasswordError, DependencyError) as exc:
        raise DocumentError(f"{rel}: the PDF is encrypted (password-protected); save an unprotected copy to index it"
                            ) from exc
    except Exception as exc:  # a broken file can fail anywhere in pypdf; it skips this file, not the domain
        raise DocumentError(f"{rel}: not a readable PDF ({_reason(exc)}); is the file damaged?") from exc
    title = pretty_stem(path)
    docs = [
        Doc(rel, title, page.page_content, {"file": path.name, "page": int(page.metadata.get("page", i)) + 1})
        for i, page in enumerate(pages) if page.page_content.strip()
    ]
    if not docs:
        raise DocumentError(f"{rel}: no text layer on any of its {len(pages)} page(s) (a scanned document?); "
                            "it needs OCR before it can be indexed")
    return docs


def docx_docs(path: Path, rel: str) -> list[Doc]:
    from langchain_community.document_loaders import Docx2txtLoader

    try:
        text = "\n".join(d.page_content for d in Docx2txtLoader(str(path)).load())
    except Exception as exc:  # a broken zip or XML part: skip this file, not the domain
        raise DocumentError(f"{rel}: not a readable Word document ({_reason(exc)}); is the file damaged?") from exc
    return [Doc(rel, pretty_stem(path), text, {"file": path.name})]


def markdown_sections(text: str, rel: str, title: str, file: str) -> list[Doc]:
    """One Doc per heading section; `heading` is the path of headings above it ("Guide > Weekends")."""
    from langchain_text_splitters import MarkdownHeaderTextSplitter

    splitter = MarkdownHeaderTextSplitter(HEADINGS, strip_headers=False)
    docs = []
    for section in splitter.split_text(text):
        meta: dict = {"file": file}
        path = " > ".join(str(section.metadata[key]) for _, key in HEADINGS if section.metadata.get(key))
        if path:
            meta["heading"] = path
        docs.append(Doc(rel, title, section.page_content, meta))
    return docs


def _title(text: str, path: Path) -> str:
    """A leading Markdown heading, else the file name."""
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    return first.lstrip("# ").strip() if first.startswith("#") else pretty_stem(path)


def markdown_docs(path: Path, rel: str) -> list[Doc]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return markdown_sections(text, rel, _title(text, path), path.name)


def text_docs(path: Path, rel: str) -> list[Doc]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [Doc(rel, _title(text, path), text, {"file": path.name})]


def html_docs(path: Path, rel: str) -> list[Doc]:
    """The page's content as Markdown (navigation, scripts, styles, site header and footer dropped), split by
    its headings. bs4 finds the content; markdownify keeps the headings that give the sections their path."""
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    soup = BeautifulSoup(path.read_bytes(), "html.parser")  # detects the page's own encoding
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(HTML_DROP):
        tag.decompose()
    for tag in soup.select('[role="navigation"], [role="banner"], [role="contentinfo"], [aria-hidden="true"]'):
        tag.decompose()
    body = soup.body or soup
    if not title:
        h1 = body.find("h1")
        title = h1.get_text(" ", strip=True) if h1 else pretty_stem(path)
    converter = MarkdownConverter(heading_style="ATX", strip=["a", "img", "b", "strong", "i", "em", "u"])
    return markdown_sections(converter.convert_soup(body), rel, title, path.name)


LOADERS = {
    **dict.fromkeys(PDF, pdf_docs), **dict.fromkeys(DOCX, docx_docs), **dict.fromkeys(HTML, html_docs),
    **dict.fromkeys(MARKDOWN, markdown_docs), **dict.fromkeys(TEXT, text_docs),
}


def load_file(path: Path, docs_dir: Path) -> list[Doc]:
    """The Docs of one file; raises DocumentError naming the file when it cannot be indexed."""
    rel = str(path.relative_to(docs_dir))
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        kind = f"{suffix} files are" if suffix else "files without an extension are"
        raise DocumentError(f"{rel}: {kind} not supported; supported types are {', '.join(SUPPORTED)}")
    if path.stat().st_size == 0:
        raise DocumentError(f"{rel}: the file is empty (0 bytes)")
    if suffix in JSONL:
        return list(jsonl_docs(path))
    docs = [d for d in LOADERS[suffix](path, rel) if d.text.strip()]
    if not docs:
        raise DocumentError(f"{rel}: no text to index in it")
    return docs


def load_folder(docs_dir: Path) -> Folder:
    folder = Folder([], {}, {})
    for path in docs_files(docs_dir):
        rel = str(path.relative_to(docs_dir))
        folder.sources[rel] = file_sha256(path)
        try:
            folder.docs.extend(load_file(path, docs_dir))
        except DocumentError as exc:
            folder.skipped[rel] = str(exc)
    return folder
