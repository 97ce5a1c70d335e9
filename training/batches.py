"""Batches and the loss of the training loop: length-bucketed seeded batches, padding, and cross-entropy on the
answer tokens only (the 49k-vocabulary projection runs only there, the biggest CPU speed lever)."""

from __future__ import annotations

import random
from collections.abc import Sequence


def batch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Seeded batches of similar length (less padding), in shuffled order; the same for the same seed."""
    rng = random.Random(seed * 1000 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    pool = batch_size * 16
    batches = []
    for start in range(0, len(idx), pool):
        chunk = sorted(idx[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(items: Sequence[tuple[list[int], int]], pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return input_ids, attention, labels


def answer_loss(model, input_ids, attention, labels):
    """Summed cross-entropy over answer tokens, computing the vocabulary projection only there."""
    import torch.nn.functional as F

    causal_lm = model.get_base_model()
    hidden = causal_lm.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = causal_lm.lm_head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), int(keep.sum())
