"""Write small LoRA adapter GGUFs for runtime tests (the real export lives in training/export.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_lora(path: Path, *, arch: str = "llama", hidden: int = 576, rank: int = 4, layers: int = 30,
               scale: float = 0.0, seed: int = 0, in_dim: int | None = None) -> Path:
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    for i in range(layers):
        a = (rng.standard_normal((rank, in_dim or hidden)) * scale).astype(np.float32)
        b = (rng.standard_normal((hidden, rank)) * scale).astype(np.float32)
        w.add_tensor(f"blk.{i}.attn_q.weight.lora_a", a)
        w.add_tensor(f"blk.{i}.attn_q.weight.lora_b", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
