"""Per-domain FAISS indexes: chunking, building with a manifest, verified loading, hybrid search.

Index files are `index.faiss` (faiss's own format) and `chunks.jsonl` (plain JSON): nothing is ever
unpickled. `manifest.json` records the docs hash, the embedding model, the chunking and a sha256 of each
file; a file whose hash does not match is never loaded, and the index is rebuilt instead. It also records
each document's sha256 and the files skipped (with why). A rebuild embeds only chunks whose text is new
(see `incremental.py`); documents are read by `loaders.py` (PDF, DOCX, HTML, Markdown, text, JSONL rows).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import faiss
import numpy as np
from tqdm import tqdm

from bot.config import Settings
from bot.domains import Domain
from bot.errors import IndexError_
from bot.guard import subject_terms
from bot.prompt import Passage
from bot.retrieval.bm25 import BM25, terms
from bot.retrieval.embeddings import Embedder, get_embedder
from bot.retrieval.incremental import IndexReport, chunk_key, diff_sources, embed_text, previous_index
from bot.retrieval.loaders import SUPPORTED, Doc, docs_files, file_sha256, load_folder

log = logging.getLogger(__name__)

__all__ = ["Doc", "IndexReport", "Retriever", "chunk_doc", "docs_hash", "load_docs"]

INDEX_FORMAT = 3  # 3: documents other than JSONL rows, with their page or heading path
RRF_K = 60
NAMED_SHARE = 0.8  # a chunk's title matches the question's name if it scores this share of the best title
NAMED_MAX_CHUNKS = 40  # more matches than this is a topic word (e.g. "agreement"), not a name


# ---------------------------------------------------------------- documents


def docs_hash(docs_dir: Path) -> str:
    h = hashlib.sha256()
    for path in docs_files(docs_dir):
        h.update(str(path.relative_to(docs_dir)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def load_docs(domain: Domain) -> list[Doc]:
    """Every readable document of a domain (rows of `docs/*.jsonl`, pages of PDFs, sections of Markdown and HTML,
    DOCX and text files); files that cannot be read are skipped (`load_folder` says why)."""
    return load_folder(domain.docs_dir).docs


def source_url(base: str, doc_id: str, page: int | None = None) -> str:
    """A document's link under the domain's `docs_url`; a PDF's opens at the page (the #page= open parameter)."""
    return f"{base.rstrip('/')}/{quote(doc_id)}" + (f"#page={page}" if page else "")


def chunk_doc(doc: Doc, tokenizer, size: int, overlap: int, first: int = 0) -> list[Passage]:
    """Split on embedding-model tokens so each chunk fits the encoder; keep the original text spans.
    `first` numbers the chunks on from an earlier page or section of the same document."""
    offsets = tokenizer.encode(doc.text, add_special_tokens=False).offsets
    if len(offsets) <= size:
        return [Passage(f"{doc.id}#{first}", doc.title, doc.text.strip(), 0.0, doc.id, doc.metadata)]
    chunks, start, n = [], 0, first
    step = max(1, size - overlap)
    while start < len(offsets):
        end = min(start + size, len(offsets))
        text = doc.text[offsets[start][0] : offsets[end - 1][1]].strip()
        chunks.append(Passage(f"{doc.id}#{n}", doc.title, text, 0.0, doc.id, doc.metadata))
        n += 1
        if end == len(offsets):
            break
        start += step
    return chunks


# ---------------------------------------------------------------- the index on disk


@dataclass
class LoadedIndex:
    domain: str
    chunks: list[Passage]
    vectors: faiss.Index
    keywords: BM25
    manifest: dict
    embedder: Embedder | None = None  # what the langchain view embeds queries with
    titles: BM25 | None = None  # over titles (and contract file names) alone: finds a source the question names
    _store: object = None

    @property
    def store(self):
        """A langchain-community FAISS vector store over the same index, for chains and tools that want one.
        Made on first use: importing langchain costs ~0.7 s that answering a question does not need."""
        if self._store is None:
            self._store = _as_langchain(self, self.embedder)
        return self._store

    def named(self, query: str) -> list[int]:
        """Chunks of the source(s) the question names, if it names few enough to be a name and not a topic."""
        if self.titles is None:  # an index built by hand (bench/serve.py) has no title index
            return []
        # a name is rare everywhere; a topic word ("revenue") fills texts even where it is rare in titles
        rare = [t for t in set(terms(query)) if t in self.titles.vocab and self.keywords.df(t) <= NAMED_MAX_CHUNKS]
        if not rare:
            return []
        scores = self.titles.scores(" ".join(rare))  # every rare term is in some title: the best score is > 0
        hits = np.flatnonzero(scores >= NAMED_SHARE * scores.max())
        return [int(i) for i in hits] if len(hits) <= NAMED_MAX_CHUNKS else []

    def dense(self, qvec: np.ndarray, k: int) -> list[tuple[int, float]]:
        scores, ids = self.vectors.search(qvec.reshape(1, -1).astype(np.float32), k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]


def _make_faiss(vectors: np.ndarray, hnsw_above: int) -> faiss.Index:
    dim = vectors.shape[1]
    if len(vectors) > hnsw_above:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def _as_langchain(loaded: LoadedIndex, embedder: Embedder):
    """Expose the index as a langchain-community FAISS vector store (for chains and tools that want one)."""
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS
    from langchain_community.vectorstores.utils import DistanceStrategy
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings

    class _Emb(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embedder.encode(texts).tolist()

        def embed_query(self, text: str) -> list[float]:
            return embedder.encode_one(text).tolist()

    docs = {
        c.chunk_id: Document(page_content=c.text, metadata={"title": c.title, "doc_id": c.doc_id, **c.metadata})
        for c in loaded.chunks
    }
    return FAISS(
        embedding_function=_Emb(),
        index=loaded.vectors,
        docstore=InMemoryDocstore(docs),
        index_to_docstore_id={i: c.chunk_id for i, c in enumerate(loaded.chunks)},
        distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
    )


class Retriever:
    def __init__(self, settings: Settings, embedder: Embedder | None = None):
        self.settings = settings
        self._embedder = embedder
        self._loaded: dict[str, LoadedIndex] = {}
        self._lock = threading.Lock()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            path = str(self.settings.embed_model_path) if self.settings.embed_model_path else None
            self._embedder = get_embedder(path, self.settings.n_threads)
        return self._embedder

    def index_dir(self, domain: Domain) -> Path:
        return self.settings.indexes_dir / domain.name

    # -------- state

    def _expected(self, domain: Domain) -> dict:
        return {
            "format": INDEX_FORMAT,
            "docs_hash": docs_hash(domain.docs_dir),
            "embedding_model": self.embedder.name,
            "embedding_fingerprint": self.embedder.fingerprint(),
            "chunk_tokens": self.settings.chunk_tokens,
            "chunk_overlap": self.settings.chunk_overlap,
        }

    def status(self, domain: Domain) -> str:
        """'ready', 'missing', 'stale' or 'corrupt'."""
        manifest_path = self.index_dir(domain) / "manifest.json"
        if not manifest_path.exists():
            return "missing"
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            return "corrupt"
        expected = self._expected(domain)
        if any(manifest.get(k) != v for k, v in expected.items()):
            return "stale"
        for name, digest in manifest.get("files", {}).items():
            path = self.index_dir(domain) / name
            if not path.exists() or file_sha256(path) != digest:
                return "corrupt"
        return "ready"

    # -------- build

    @contextmanager
    def _build_lock(self, domain: Domain) -> Iterator[None]:
        self.settings.indexes_dir.mkdir(parents=True, exist_ok=True)
        with open(self.settings.indexes_dir / f".{domain.name}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # several processes may start at once; one builds
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _chunks(self, docs: list[Doc], domain: Domain, progress: bool) -> list[Passage]:
        tok = self.embedder.tokenizer
        size = min(self.settings.chunk_tokens, self.embedder.max_seq_length - 16)
        chunks: list[Passage] = []
        numbered: dict[str, int] = {}  # the pages or sections of one file number their chunks on
        for doc in tqdm(docs, desc=f"chunk {domain.name}", unit="doc", disable=not progress, leave=False):
            part = chunk_doc(doc, tok, size, self.settings.chunk_overlap, first=numbered.get(doc.id, 0))
            numbered[doc.id] = numbered.get(doc.id, 0) + len(part)
            chunks.extend(part)
        return chunks

    def _embed(self, texts: list[str], domain: Domain, progress: bool) -> np.ndarray:
        vectors = [np.zeros((0, self.embedder.dim), dtype=np.float32)]
        batch = 256
        with tqdm(total=len(texts), desc=f"embed {domain.name}", unit="chunk", disable=not progress) as bar:
            for i in range(0, len(texts), batch):
                vectors.append(self.embedder.encode(texts[i : i + batch]))
                bar.update(len(texts[i : i + batch]))
        return np.vstack(vectors).astype(np.float32, copy=False)

    def build(self, domain: Domain, progress: bool = True, reuse: bool = True) -> dict:
        """Read the docs, chunk them, embed the chunks not in the previous index (all of them if not `reuse`),
        and swap the new index in. A file that cannot be read is skipped and logged; the rest still indexes."""
        expected = self._expected(domain)  # before reading: a file changed meanwhile makes the index stale
        folder = load_folder(domain.docs_dir)
        if not folder.docs:
            skipped = "; ".join(folder.skipped.values())
            raise IndexError_(f"{domain.name}: no documents in {domain.docs_dir} (add {', '.join(SUPPORTED)} files)"
                              + (f"; skipped {skipped}" if skipped else ""))
        chunks = self._chunks(folder.docs, domain, progress)
        target = self.index_dir(domain)
        previous = previous_index(target, self.embedder.fingerprint())
        cached = previous.vectors if reuse else {}
        keys = [chunk_key(c) for c in chunks]
        todo = {k: embed_text(c) for k, c in zip(keys, chunks, strict=True) if k not in cached}
        fresh = dict(zip(todo, self._embed(list(todo.values()), domain, progress), strict=True))
        matrix = np.vstack([fresh[k] if k in fresh else cached[k] for k in keys]).astype(np.float32, copy=False)
        index = _make_faiss(matrix, self.settings.hnsw_above)

        tmp = target.with_name(f".{domain.name}.building")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        faiss.write_index(index, str(tmp / "index.faiss"))
        with (tmp / "chunks.jsonl").open("w", encoding="utf-8") as f:
            for c in chunks:
                row = {"chunk_id": c.chunk_id, "doc_id": c.doc_id, "title": c.title, "text": c.text, "meta": c.metadata}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        manifest = {
            **expected,
            "domain": domain.name,
            "n_docs": len(folder.docs),
            "n_chunks": len(chunks),
            "index_type": type(index).__name__,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {name: file_sha256(tmp / name) for name in ("index.faiss", "chunks.jsonl")},
            "sources": folder.sources,
            "skipped": folder.skipped,
            "changes": {
                **diff_sources(previous.manifest.get("sources", {}), folder.sources),
                "embedded": len(todo),
                "reused": sum(k not in fresh for k in keys),
            },
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        old = target.with_name(f".{domain.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        self._loaded.pop(domain.name, None)
        return manifest

    def forget(self, name: str) -> None:
        """Drop a loaded index so the next search loads the one on disk; answers in flight keep theirs."""
        with self._lock:
            self._loaded.pop(name, None)

    def refresh(self, domain: Domain, progress: bool = False, force: bool = False, log_skipped: bool = True) -> IndexReport:
        """Build the index if it is missing, stale or corrupt, re-embedding only new or changed chunks (`force`:
        rebuild and re-embed everything). The report says which files changed and which were skipped; a build
        also logs the skipped files unless the caller prints the report (`log_skipped=False`)."""
        state = self.status(domain)
        if state == "ready" and not force:
            return IndexReport.from_manifest(domain.name, "up to date", self._manifest(domain), built=False)
        with self._build_lock(domain):
            state = self.status(domain)  # another process may have built it meanwhile
            if state == "ready" and not force:
                return IndexReport.from_manifest(domain.name, "up to date", self._manifest(domain), built=False)
            if state == "corrupt":
                log.warning("index for %s is corrupt; rebuilding it", domain.name)
            manifest = self.build(domain, progress=progress, reuse=not force)
        for message in manifest["skipped"].values() if log_skipped else ():
            log.warning("%s: skipped %s", domain.name, message)
        return IndexReport.from_manifest(domain.name, "rebuilt" if force else f"built ({state})", manifest, built=True)

    def ensure_index(self, domain: Domain, progress: bool = False, force: bool = False) -> str:
        """Build the index if it is missing, stale or corrupt. Returns what was done."""
        return self.refresh(domain, progress=progress, force=force).action

    def _manifest(self, domain: Domain) -> dict:
        try:
            return json.loads((self.index_dir(domain) / "manifest.json").read_text())
        except (OSError, ValueError):
            return {}

    # -------- load and search

    def load(self, domain: Domain) -> LoadedIndex:
        with self._lock:
            cached = self._loaded.get(domain.name)
            if cached is not None:
                return cached
            self.ensure_index(domain)
            folder = self.index_dir(domain)
            manifest = json.loads((folder / "manifest.json").read_text())
            for name, digest in manifest["files"].items():  # vouch for every file before reading it
                if file_sha256(folder / name) != digest:
                    raise IndexError_(f"{domain.name}: {name} does not match its manifest; run `domainbot index {domain.name} --force`")
            try:
                vectors = faiss.read_index(str(folder / "index.faiss"))
            except RuntimeError as exc:
                raise IndexError_(f"{domain.name}: cannot read index.faiss ({exc}); run `domainbot index {domain.name} --force`") from exc
            chunks = []
            with (folder / "chunks.jsonl").open(encoding="utf-8") as f:
                for line in f:
                    r = json.loads(line)
                    chunks.append(Passage(r["chunk_id"], r["title"], r["text"], 0.0, r["doc_id"], r.get("meta", {})))
            keywords = BM25([f"{c.title} {c.metadata.get('contract_file', '')} {c.text}" for c in chunks])
            titles = BM25([f"{c.title} {c.metadata.get('contract_file', '')}" for c in chunks])
            loaded = LoadedIndex(domain.name, chunks, vectors, keywords, manifest, titles=titles,
                                 embedder=self.embedder)
            self._loaded[domain.name] = loaded
            return loaded

    @staticmethod
    def _linked(domain: Domain, chunk: Passage) -> dict:
        """A file's chunk gets its link under the domain's `docs_url` (read now, so changing it needs no rebuild)."""
        if not domain.docs_url or "file" not in chunk.metadata or "url" in chunk.metadata:
            return chunk.metadata
        return {**chunk.metadata, "url": source_url(domain.docs_url, chunk.doc_id, chunk.metadata.get("page"))}

    def subject_terms(self, domain: Domain, question: str) -> tuple[str, ...]:
        """The question's words that are rare in this domain's chunks: what the grounding guard checks it is about."""
        loaded = self.load(domain)
        keywords = loaded.keywords

        def holders(word: str) -> list[tuple[str, str]]:
            return [(loaded.chunks[i].title, loaded.chunks[i].text) for i in keywords.holders(word)]

        return subject_terms(question, keywords.df, keywords.n, holders)

    def search(self, domain: Domain, query: str, k: int | None = None, min_score: float | None = None) -> list[Passage]:
        """Hybrid search: dense (MiniLM + FAISS) fused with BM25 by reciprocal rank, plus, when the question names
        a source (a contract, a company), that source's chunks ranked by meaning as a third list."""
        k = k or domain.top_k
        floor = domain.min_score if min_score is None else min_score
        loaded = self.load(domain)
        qvec = self.embedder.encode_one(query)
        pool = max(4 * k, 20)
        dense = loaded.dense(qvec, pool)
        lexical = loaded.keywords.search(query, pool)
        fused: dict[int, float] = {}
        cosine = dict(dense)
        for rank, (i, _) in enumerate(dense):
            fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank)
        for rank, (i, _) in enumerate(lexical):
            fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank)
        named = loaded.named(query)
        for i in named:
            cosine.setdefault(i, float(np.dot(qvec, loaded.vectors.reconstruct(i))))
        for rank, i in enumerate(sorted(named, key=lambda i: -cosine[i])):
            fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank)
        ranked = sorted(fused, key=lambda i: -fused[i])
        lexical_top = {i for i, _ in lexical[:k]}  # kept below the floor: a named match can score low by meaning
        out: list[Passage] = []
        for i in ranked:
            if i not in cosine:
                cosine[i] = float(np.dot(qvec, loaded.vectors.reconstruct(i)))
            if cosine[i] < floor and i not in lexical_top:
                continue
            c = loaded.chunks[i]
            out.append(Passage(c.chunk_id, c.title, c.text, round(cosine[i], 4), c.doc_id, self._linked(domain, c)))
            if len(out) == k:
                break
        return out
