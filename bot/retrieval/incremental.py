"""Incremental re-indexing: reuse the previous index's embeddings for chunks whose text did not change.

Embedding is the expensive step; the FAISS index is rebuilt from cached and new vectors. The cache is the
previous `index.faiss` itself (flat and HNSW-flat indexes both keep the vectors), keyed by a sha256 of each
chunk's embedded text, which can be recomputed from `chunks.jsonl`, so nothing extra is stored. It is used only
when the previous index's files match their manifest and it was built with the same embedding weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from bot.prompt import Passage
from bot.retrieval.loaders import file_sha256

log = logging.getLogger(__name__)


def embed_text(chunk: Passage) -> str:
    """What the encoder sees: the title (and the heading path of a section) above the chunk's text."""
    heading = chunk.metadata.get("heading")
    return f"{chunk.title}\n{heading}\n{chunk.text}" if heading else f"{chunk.title}\n{chunk.text}"


def chunk_key(chunk: Passage) -> str:
    return hashlib.sha256(embed_text(chunk).encode("utf-8")).hexdigest()


@dataclass
class Previous:
    """The index being replaced: its manifest (for the per-file diff) and its vectors by chunk key."""

    manifest: dict = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


def previous_index(folder: Path, fingerprint: str) -> Previous:
    """Read what can be trusted of the index in `folder`; an absent, tampered or foreign one gives no vectors."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return Previous()
    if manifest.get("embedding_fingerprint") != fingerprint:
        return Previous(manifest)  # other weights: their vectors are not ours to reuse
    try:
        files = manifest["files"]
        if any(file_sha256(folder / name) != digest for name, digest in files.items()):
            log.warning("previous index in %s does not match its manifest; re-embedding everything", folder)
            return Previous(manifest)
        index = faiss.read_index(str(folder / "index.faiss"))
        rows = [json.loads(line) for line in (folder / "chunks.jsonl").open(encoding="utf-8")]
        if len(rows) != index.ntotal:
            return Previous(manifest)
        matrix = index.reconstruct_n(0, index.ntotal)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError):
        log.warning("cannot reuse the previous index in %s; re-embedding everything", folder, exc_info=True)
        return Previous(manifest)
    keys = (chunk_key(Passage(r["chunk_id"], r["title"], r["text"], 0.0, r["doc_id"], r.get("meta", {}))) for r in rows)
    return Previous(manifest, dict(zip(keys, matrix, strict=True)))


@dataclass
class IndexReport:
    """What `ensure_index` did for one domain: which files changed, how many chunks were embedded or reused,
    and the files skipped with why."""

    domain: str
    action: str  # "up to date", "built (missing|stale|corrupt)" or "rebuilt"
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    embedded: int = 0
    reused: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, domain: str, action: str, manifest: dict, *, built: bool) -> IndexReport:
        changes = manifest.get("changes", {}) if built else {}
        return cls(domain, action, list(changes.get("added", [])), list(changes.get("changed", [])),
                   list(changes.get("removed", [])), int(changes.get("embedded", 0)), int(changes.get("reused", 0)),
                   dict(manifest.get("skipped", {})))

    def lines(self) -> list[str]:
        """For `domainbot index`: a summary line, one line per changed file, one per skipped file."""
        head = f"{self.domain}: {self.action}"
        if self.action != "up to date":
            head += (f" · files: {len(self.added)} added, {len(self.changed)} changed, {len(self.removed)} removed"
                     f" · chunks: {self.embedded} embedded, {self.reused} reused")
        out = [head]
        out += [f"  + {name}" for name in self.added]
        out += [f"  ~ {name}" for name in self.changed]
        out += [f"  - {name}" for name in self.removed]
        out += [f"  skipped {message}" for message in self.skipped.values()]
        return out


def diff_sources(old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    """Files added, changed (other bytes) and removed between two {relative path: sha256} maps."""
    return {
        "added": sorted(set(new) - set(old)),
        "changed": sorted(n for n in set(new) & set(old) if new[n] != old[n]),
        "removed": sorted(set(old) - set(new)),
    }
