"""The base-model architectures training can export for: per GGUF `general.architecture`, how PEFT module names
map to GGUF tensor names and which `lora_b` rows are permuted.

llama.cpp's converter permutes the Q/K rows (rotary halves -> interleaved pairs) only for the llama family
(Llama 2/3, Mistral, SmolLM; a Mistral HF model converts to architecture "llama"); Qwen2/3, Gemma 3 and Phi-3
use NEOX rotary and are written as they are. Phi-3 fuses q/k/v (`qkv_proj` -> attn_qkv) and gate/up
(`gate_up_proj` -> ffn_up), so LoRA targets the fused modules as HF's Phi3 has them.
tests/test_architectures.py checks this table against what llama.cpp's own convert_lora_to_gguf.py writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bot.errors import UserFacingError

ATTN, MLP = "self_attn", "mlp"
_LLAMA_MODULES = {
    "q_proj": (ATTN, "attn_q"), "k_proj": (ATTN, "attn_k"), "v_proj": (ATTN, "attn_v"),
    "o_proj": (ATTN, "attn_output"), "gate_proj": (MLP, "ffn_gate"), "up_proj": (MLP, "ffn_up"),
    "down_proj": (MLP, "ffn_down"),
}
_PHI3_MODULES = {
    "qkv_proj": (ATTN, "attn_qkv"), "o_proj": (ATTN, "attn_output"),
    "gate_up_proj": (MLP, "ffn_up"), "down_proj": (MLP, "ffn_down"),
}


class UnsupportedArchitecture(UserFacingError):
    """The base model's architecture is not one training can export an adapter for."""


@dataclass(frozen=True)
class Architecture:
    name: str  # GGUF general.architecture
    modules: dict[str, tuple[str, str]]  # PEFT module -> (HF parent: self_attn | mlp, GGUF tensor name)
    permuted: frozenset[str]  # modules whose lora_b rows follow llama.cpp's Q/K permutation
    chat_fallback: str  # template name when the GGUF carries none (bot/llm/chat_format.py)
    hf_types: tuple[str, ...]  # HF config.model_type values that convert to this architecture

    @property
    def targets(self) -> tuple[str, ...]:
        """Default LoRA targets: every projection of the table."""
        return tuple(self.modules)

    def gguf_name(self, module: str) -> str:
        return self.modules[module][1]

    def module_for(self, gguf_name: str) -> str | None:
        return next((m for m, (_, g) in self.modules.items() if g == gguf_name), None)

    def check_targets(self, targets: tuple[str, ...] | list[str]) -> None:
        unknown = [t for t in targets if t not in self.modules]
        if unknown:
            raise UnsupportedArchitecture(
                f"LoRA target {', '.join(unknown)} cannot be exported for architecture {self.name}; "
                f"choose from {', '.join(self.modules)}"
            )


_QK = frozenset({"q_proj", "k_proj"})
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("llama", _LLAMA_MODULES, _QK, "chatml", ("llama", "mistral")),
    Architecture("qwen2", _LLAMA_MODULES, frozenset(), "chatml", ("qwen2",)),
    Architecture("qwen3", _LLAMA_MODULES, frozenset(), "chatml", ("qwen3",)),
    Architecture("gemma3", _LLAMA_MODULES, frozenset(), "gemma", ("gemma3", "gemma3_text")),
    Architecture("phi3", _PHI3_MODULES, frozenset(), "chatml", ("phi3",)),
)}


def get(name: str) -> Architecture:
    """The table row for a GGUF architecture name; refuses the others with the supported list."""
    if name not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"base model architecture {name!r} is not supported for training and export; "
            f"supported: {', '.join(ARCHITECTURES)} (Mistral GGUFs are 'llama')"
        )
    return ARCHITECTURES[name]


def architecture_name(base: Path) -> str:
    """`general.architecture` of a GGUF file, or the GGUF name an HF model dir converts to."""
    base = Path(base)
    if base.is_file():
        from bot.llm import gguf_meta

        try:
            arch = gguf_meta.read(base, ("general.architecture",)).get("general.architecture")
        except (ValueError, OSError) as exc:
            raise UnsupportedArchitecture(f"{base} is not a readable GGUF file: {exc}") from None
        if arch is None:
            raise UnsupportedArchitecture(f"{base} has no general.architecture; is it a model GGUF?")
        return str(arch)
    try:
        model_type = json.loads((base / "config.json").read_text())["model_type"]
    except (OSError, ValueError, KeyError):
        raise UnsupportedArchitecture(f"{base}: neither a GGUF file nor an HF model dir with config.json") from None
    return next((a.name for a in ARCHITECTURES.values() if model_type in a.hf_types), model_type)


def by_model_type(model_type: str) -> Architecture | None:
    """The table row for an HF config.model_type (a loaded model), or None."""
    return next((a for a in ARCHITECTURES.values() if model_type in a.hf_types), None)


def for_base(base: Path) -> Architecture:
    """The table row for a base model (GGUF or HF dir); raises UnsupportedArchitecture before any training."""
    return get(architecture_name(base))
