"""Training throughput on this CPU: measured tokens/s vs the peak estimate (peak FLOP/s / (6 * params)).

Run under the shared lock:  flock /tmp/domainbot-heavy.lock .venv/bin/python bench/train_throughput.py
It measures (1) the machine's matmul peak in fp32 and bf16 with `--threads` threads, (2) LoRA training steps
on real TFNS batches in fp32 and with bf16 autocast, and prints tokens/s with the share of the peak reached.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def matmul_peak(dtype, n: int = 2048, repeats: int = 6) -> float:
    """Best FLOP/s of an n x n matmul: the practical peak of these cores for this dtype."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def train_speed(bf16: bool, steps: int, batch: int) -> tuple[float, float]:
    """(tokens/s, seconds) of `steps` LoRA steps on TFNS rows with answer-only loss, as `domainbot train` runs them."""
    import torch

    from training.batches import answer_loss, collate
    from training.dataset import load_examples
    from training.finetune import (
        TrainConfig,
        chat_template,
        encode,
        load_base,
        lora_model,
        served_gguf,
        token_counter,
        unwrap,
    )

    base, tok = load_base(served_gguf())
    template = chat_template(served_gguf(), tok)
    cfg = TrainConfig(bf16=bf16)
    examples = load_examples("finance", max_examples=batch * (steps + 1), task_caps={"tatqa_hybrid_qa": 0},
                             count=token_counter(tok))
    encoded = [encode(e, tok, cfg.max_len, cfg.max_answer_tokens, template) for e in examples]
    model = lora_model(base, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    tokens, seconds = 0, 0.0
    for step in range(steps + 1):
        items = encoded[step * batch : (step + 1) * batch]
        ids, att, lab = collate(items, tok.pad_token_id or 0)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, n = answer_loss(model, ids, att, lab)
        (loss / n).backward()
        opt.step()
        opt.zero_grad()
        if step:  # step 0 warms up kernels and allocations
            seconds += time.perf_counter() - t0
            tokens += sum(len(i) for i, _ in items)
    unwrap(model)
    return tokens / seconds, seconds


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from training.finetune import load_base, served_gguf

    base, _ = load_base(served_gguf())
    params = sum(p.numel() for p in base.parameters())
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    rows = []
    for name, bf16 in (("fp32", False), ("bf16 autocast", True)):
        tok_s, secs = train_speed(bf16, args.steps, args.batch)
        peak = peaks["bf16" if bf16 else "fp32"]
        rows.append((name, tok_s, peak / (6 * params), secs))
    print(f"\nthreads {args.threads}, params {params / 1e6:.1f}M, batch {args.batch}, {args.steps} timed steps (TFNS rows)")
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    print(f"| {'mode':14} | {'tokens/s':>9} | {'peak tok/s (FLOPs/6N)':>21} | {'share of peak':>13} |")
    print(f"|{'-' * 16}|{'-' * 11}|{'-' * 23}|{'-' * 15}|")
    for name, tok_s, peak_tok, _ in rows:
        print(f"| {name:14} | {tok_s:9.0f} | {peak_tok:21.0f} | {tok_s / peak_tok:13.1%} |")
    print(f"bf16 autocast vs fp32: {rows[1][1] / rows[0][1]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
