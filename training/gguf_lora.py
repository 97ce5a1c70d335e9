"""The PEFT <-> GGUF LoRA tensor format: names, the Q/K row permutation, reading and writing adapter files.

GGUF layout (llama.cpp `llama-adapter.cpp`): `general.type=adapter`, `adapter.type=lora`, `adapter.lora.alpha`,
tensors `blk.N.<name>.weight.lora_a` (r, in) and `.lora_b` (out, r). Which PEFT module becomes which tensor, and
whether its `lora_b` rows are permuted (llama family Q/K: rotary halves interleaved per head), is the base's
architecture's row in `training.architectures`; a wrong permutation moves the logits by up to 5.9
(docs/design.md).

No training and no verification here, so the trainer (warm starts) and the exporter both stand on it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from bot.errors import UserFacingError
from training import architectures
from training.architectures import Architecture

PEFT_KEY = re.compile(r"layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])(?:\.default)?\.weight$")
GGUF_KEY = re.compile(r"^blk\.(\d+)\.(\w+)\.weight\.lora_([ab])$")


class ExportError(UserFacingError):
    """The adapter could not be exported or failed verification; it was not published."""


class BaseMismatch(UserFacingError):
    """An adapter trained on another base model than the one configured."""


# ---- tensor layout --------------------------------------------------------------------------------------
def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder rows from HF's rotary layout (two halves per head) to llama.cpp's (interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def heads_for(arch: Architecture, module: str, n_head: int, n_kv: int) -> int | None:
    """Heads to permute `module`'s lora_b rows by, or None where the architecture writes them as they are."""
    if module not in arch.permuted:
        return None
    return {"q_proj": n_head, "k_proj": n_kv}[module]


def peft_to_gguf_tensors(state: dict[str, np.ndarray], arch: Architecture, n_head: int, n_kv: int, *,
                         wrong_permutation: bool = False) -> dict[str, np.ndarray]:
    """PEFT tensors -> GGUF tensors. `wrong_permutation` (tests only) flips the table's permutation of q/k."""
    out = {}
    for key, value in state.items():
        m = PEFT_KEY.search(key)
        if not m or m.group(3) not in arch.modules:
            raise ExportError(f"unexpected tensor in the PEFT adapter: {key} "
                              f"(architecture {arch.name} exports LoRA on {', '.join(arch.modules)})")
        layer, _, module, ab = m.groups()
        w = np.asarray(value, dtype=np.float32)
        heads = heads_for(arch, module, n_head, n_kv)
        if wrong_permutation and module in ("q_proj", "k_proj", "qkv_proj"):
            heads = None if heads else {"k_proj": n_kv}.get(module, n_head)
        if ab == "B" and heads:
            w = permute_rows(w, heads)
        out[f"blk.{layer}.{arch.gguf_name(module)}.weight.lora_{ab.lower()}"] = w
    return out


def write_adapter_gguf(tensors: dict[str, np.ndarray], alpha: float, out: Path, *, arch: str = "llama") -> Path:
    import gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for name in sorted(tensors):
        writer.add_tensor(name, np.ascontiguousarray(tensors[name].astype(np.float16)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def read_peft(peft_dir: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors.numpy import load_file

    config = json.loads((peft_dir / "adapter_config.json").read_text())
    return load_file(str(peft_dir / "adapter_model.safetensors")), config


def model_heads(base_gguf: Path) -> tuple[int, int, str]:
    """(n_head, n_head_kv, arch) from the base GGUF's metadata."""
    from bot.llm import gguf_meta

    arch = str(gguf_meta.read(base_gguf, ("general.architecture",))["general.architecture"])
    heads, kv = f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv"
    meta = gguf_meta.read(base_gguf, (heads, kv))
    return int(meta[heads]), int(meta.get(kv, meta[heads])), arch


def export_gguf(peft_dir: Path, base_gguf: Path, out: Path, *, alpha_scale: float = 1.0,
                wrong_permutation: bool = False) -> Path:
    """Write `out` from a PEFT adapter dir, laid out for the base's architecture. `alpha_scale` and
    `wrong_permutation` exist only to test that verification catches a wrong export."""
    state, config = read_peft(peft_dir)
    n_head, n_kv, name = model_heads(base_gguf)
    arch = architectures.get(name)
    tensors = peft_to_gguf_tensors(state, arch, n_head, n_kv, wrong_permutation=wrong_permutation)
    return write_adapter_gguf(tensors, config["lora_alpha"] * alpha_scale, out, arch=arch.name)


def read_adapter_gguf(path: Path) -> tuple[dict[str, np.ndarray], float]:
    tensors, alpha, _ = read_adapter(path)
    return tensors, alpha


def read_adapter(path: Path) -> tuple[dict[str, np.ndarray], float, str]:
    """(tensors, alpha, general.architecture) of an adapter GGUF."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    alpha = float(reader.fields[gguf.Keys.Adapter.LORA_ALPHA].contents())
    field = reader.fields.get("general.architecture")
    arch = str(field.contents()) if field is not None else "llama"
    tensors = {t.name: np.array(t.data, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)]) for t in reader.tensors}
    return tensors, alpha, arch


def peft_from_gguf(base, gguf_path: Path, *, trainable: bool = False):
    """Rebuild a PEFT LoRA model from a GGUF adapter (warm starts from shipped versions that keep no PEFT files)."""
    import torch
    from peft import LoraConfig, get_peft_model

    tensors, alpha, arch_name = read_adapter(gguf_path)
    arch = architectures.get(arch_name)
    n_head, n_kv = base.config.num_attention_heads, base.config.num_key_value_heads
    state, targets, rank = {}, set(), 0
    for name, w in tensors.items():
        m = GGUF_KEY.match(name)
        module = arch.module_for(m.group(2)) if m else None
        if module is None:
            raise ExportError(f"{gguf_path}: unexpected tensor {name} for architecture {arch.name}")
        layer, _, ab = m.groups()
        heads = heads_for(arch, module, n_head, n_kv)
        if ab == "b" and heads:
            w = unpermute_rows(w, heads)
        rank = w.shape[0] if ab == "a" else rank
        targets.add(module)
        part = arch.modules[module][0]
        state[f"base_model.model.model.layers.{layer}.{part}.{module}.lora_{ab.upper()}.default.weight"] = torch.tensor(w)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(targets), lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    missing = [k for k in state if k not in model.state_dict()]
    try:
        if missing:
            raise RuntimeError(f"no such layer in the base: {missing[0]}")
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes or layers differ: trained on another base
        model.unload()  # leave the (cached) base model as it was
        raise BaseMismatch(f"{gguf_path} does not fit this base model: {str(exc).splitlines()[-1].strip()}") from None
    for name, p in model.named_parameters():
        p.requires_grad = trainable and "lora_" in name
    return model
