"""Tiny random-weight models of each supported architecture, as HF dirs and as GGUFs made by llama.cpp's own
converter (`convert_hf_to_gguf.py` from the llama-cpp-python sdist), for the export tests.

Everything is cached under ~/.cache/domainbot (DOMAINBOT_CACHE_DIR overrides), keyed by a hash of the recipe,
so a test run builds each model once. The sdist is fetched with pip from PyPI the first time; its scripts run
in a subprocess and no code of it is copied here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from bot.llm import convert
from bot.llm.convert import LLAMA_CPP_VERSION, ToolsUnavailable, cache_dir, llama_cpp_dir  # noqa: F401

SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 2048, "initializer_range": 0.2,
         "tie_word_embeddings": True, "rms_norm_eps": 1e-6}
# HF class per architecture name (the name our tests use; mistral converts to GGUF architecture "llama")
HF_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"query_pre_attn_scalar": 16, "sliding_window": 512}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0}),
}
RECIPE_VERSION = 1  # bump when the recipe changes in a way SHAPE does not show


# transformers maps model type qwen2 to Qwen2Tokenizer, which swaps in Qwen's pre-tokenizer over the SmolLM
# vocab our tiny models carry; read tokenizer.json as written instead, then run the script unchanged
QWEN2_PRELUDE = ("from transformers.models.auto import tokenization_auto as ta\n"
                 "ta.TOKENIZER_MAPPING_NAMES['qwen2'] = 'TokenizersBackend'\n")


def run_script(script: str, *args: str) -> None:
    convert.run_script(script, *args, prelude=QWEN2_PRELUDE)


@dataclass(frozen=True)
class TinyModel:
    name: str  # llama | mistral | qwen2 | qwen3 | gemma3 | phi3
    hf_dir: Path
    folder: Path

    def gguf(self, outtype: str = "f32") -> Path:
        """The base converted by llama.cpp's convert_hf_to_gguf.py (f32 or f16), cached next to the HF dir."""
        out = self.folder / f"model-{outtype}.gguf"
        if not out.is_file():
            tmp = out.with_suffix(".tmp")
            run_script("convert_hf_to_gguf.py", str(self.hf_dir), "--outfile", str(tmp), "--outtype", outtype)
            tmp.rename(out)
        return out

    def gguf_without_template(self, outtype: str = "f32") -> Path:
        """The same GGUF with tokenizer.chat_template removed (by gguf-py's own gguf_new_metadata.py), like a
        pretrained base as published (Gemma 3 270M): serving and training fall back to a named template."""
        out = self.folder / f"model-{outtype}-no-template.gguf"
        if not out.is_file():
            tmp = out.with_suffix(".tmp")
            run_script("gguf-py/gguf/scripts/gguf_new_metadata.py", str(self.gguf(outtype)), str(tmp),
                       "--remove-metadata", "tokenizer.chat_template", "--force")
            tmp.rename(out)
        return out


def recipe_key(name: str) -> str:
    import transformers

    recipe = {"v": RECIPE_VERSION, "name": name, "shape": SHAPE, "cls": HF_CLASSES[name],
              "transformers": transformers.__version__, "llama_cpp": LLAMA_CPP_VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]


def tokenizer_source() -> tuple[Path, str]:
    """SmolLM2's tokenizer (from the embedded GGUF): a GPT-2 style BPE llama.cpp's converter recognizes."""
    from bot.llm.llama import embedded_model_path

    path = embedded_model_path()
    return path.parent, path.name


def build(name: str) -> TinyModel:
    """The tiny seeded HF model `name` (built once per recipe)."""
    import torch
    import transformers

    folder = cache_dir() / "tiny-archs" / f"{name}-{recipe_key(name)}"
    hf_dir = folder / "hf"
    if (hf_dir / "config.json").is_file():
        return TinyModel(name, hf_dir, folder)
    cfg_cls, model_cls, extra = HF_CLASSES[name]
    where, gguf_file = tokenizer_source()
    tokenizer = transformers.AutoTokenizer.from_pretrained(where, gguf_file=gguf_file)
    config = getattr(transformers, cfg_cls)(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                            eos_token_id=tokenizer.eos_token_id, **SHAPE, **extra)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).to(torch.float32)
    tmp = folder / "hf.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    # Phi-3's converter reads a GPT-2 vocab only when the config says so (else it wants sentencepiece)
    tok_cfg = tmp / "tokenizer_config.json"
    tok_cfg.write_text(json.dumps({**json.loads(tok_cfg.read_text()), "tokenizer_class": "GPT2Tokenizer"}))
    # the GGUF-derived tokenizer lost SmolLM's digit splitting; restore it so the converter recognizes the vocab
    tok_json = tmp / "tokenizer.json"
    data = json.loads(tok_json.read_text())
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, data["pre_tokenizer"]]}
    tok_json.write_text(json.dumps(data))
    tmp.rename(hf_dir)
    return TinyModel(name, hf_dir, folder)
