"""The only module that touches llama-cpp-python's private pointers, for LoRA hot-swapping.

`Llama()` can load one adapter at construction (and then turns mmap off); switching adapters per request
on one shared model needs the low-level API: `llama_adapter_lora_init(model, path)` once per adapter,
then `llama_set_adapters_lora(ctx, ...)` per request followed by `Llama.reset()`, because the cached
prompt prefix was computed under the previous adapter. tests/test_llama_lora.py fails loudly if an
upgrade moves these.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp


class LoraApiMissing(RuntimeError):
    pass


def _model_ptr(llm: llama_cpp.Llama):
    try:
        return llm._model.model
    except AttributeError as exc:  # pragma: no cover - only on an incompatible upgrade
        raise LoraApiMissing("llama_cpp.Llama._model.model moved; update bot/llm/llama_lora.py") from exc


def _ctx_ptr(llm: llama_cpp.Llama):
    try:
        return llm._ctx.ctx
    except AttributeError as exc:  # pragma: no cover
        raise LoraApiMissing("llama_cpp.Llama._ctx.ctx moved; update bot/llm/llama_lora.py") from exc


def check_api() -> None:
    """Raise if the functions we rely on are gone."""
    for name in ("llama_adapter_lora_init", "llama_set_adapters_lora", "llama_adapter_lora_free"):
        if not hasattr(llama_cpp, name):
            raise LoraApiMissing(f"llama_cpp.{name} is missing in llama-cpp-python {llama_cpp.__version__}")


def load(llm: llama_cpp.Llama, path: Path):
    """Load an adapter GGUF against the model; returns an opaque handle or None if llama.cpp refused it."""
    check_api()
    handle = llama_cpp.llama_adapter_lora_init(_model_ptr(llm), str(path).encode())
    return handle or None


def free(handle) -> None:
    if handle:
        llama_cpp.llama_adapter_lora_free(handle)


def apply(llm: llama_cpp.Llama, handle, scale: float = 1.0) -> None:
    """Make `handle` (or no adapter, for None) the active adapter, and drop the stale prompt cache."""
    ctx = _ctx_ptr(llm)
    if handle:
        arr = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
        scales = (ctypes.c_float * 1)(scale)
        rc = llama_cpp.llama_set_adapters_lora(ctx, arr, 1, scales)
    else:
        rc = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
    if rc not in (0, None):
        raise RuntimeError(f"llama_set_adapters_lora returned {rc}")
    llm.reset()
