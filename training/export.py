"""Export a trained PEFT LoRA to GGUF (`training.gguf_lora`), verify it against llama.cpp, and publish it as
a new adapter version only when llama.cpp+adapter agrees with transformers+peft."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bot import adapters as store
from training import architectures
from training.cpt import TextWindow
from training.gguf_lora import BaseMismatch, ExportError, export_gguf, read_adapter_gguf

MIN_AGREEMENT = 0.9  # top-1 agreement on answer positions; Q4_1 itself gives ~0.98 (docs/design.md)
MERGED_TYPES = ("q8_0", "q4_k_m")  # never q4_1: a merge requantized to Q4_1 lost the fine-tune (docs/design.md)


@dataclass
class VerifyReport:
    ok: bool
    agreement: float  # top-1 agreement, llama.cpp+adapter vs transformers+peft, on answer positions
    positions: int
    prompts: int
    max_logit_diff: float
    seconds: float


# ---- verification ---------------------------------------------------------------------------------------
def llama_logits(base_gguf: Path, adapter: Path | None, sequences: Sequence[list[int]], threads: int = 0) -> list[np.ndarray]:
    """Logits at every position from llama.cpp (the serving engine), with the adapter applied."""
    import os

    from llama_cpp import Llama

    n_ctx = max(len(s) for s in sequences) + 8
    kwargs = {"lora_path": str(adapter)} if adapter else {}
    llm = Llama(model_path=str(base_gguf), n_ctx=n_ctx, logits_all=True, n_threads=threads or os.cpu_count(),
                verbose=False, seed=0, **kwargs)
    out = []
    try:
        for seq in sequences:
            llm.reset()
            llm.eval(seq)
            out.append(np.array(llm.scores[: len(seq)], dtype=np.float32))
    finally:
        llm.close()
    return out


def verify(
    base_gguf: Path, adapter_gguf: Path, peft_model, sequences: Sequence[tuple[list[int], int]],
    *, min_agreement: float = MIN_AGREEMENT, threads: int = 0,
) -> VerifyReport:
    """Compare top-1 tokens of llama.cpp+adapter and transformers+peft on the answer positions of `sequences`."""
    import torch

    t0 = time.perf_counter()
    ours = llama_logits(base_gguf, adapter_gguf, [ids for ids, _ in sequences], threads)
    agree = total = 0
    max_diff = 0.0
    peft_model.eval()
    for (ids, n_prompt), theirs in zip(sequences, ours, strict=True):
        with torch.no_grad():
            ref = peft_model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
        span = slice(max(0, n_prompt - 1), len(ids) - 1)  # positions that predict answer tokens
        agree += int((ref[span].argmax(-1) == theirs[span].argmax(-1)).sum())
        total += span.stop - span.start
        max_diff = max(max_diff, float(np.abs(ref[span] - theirs[span]).max()))
    agreement = agree / total if total else 0.0
    return VerifyReport(agreement >= min_agreement, agreement, total, len(sequences), max_diff, time.perf_counter() - t0)


def pick_for_verify(examples, n: int) -> list:
    """Up to n examples spread over the tasks (round-robin), the shorter answers of each first: cheap and varied.
    cpt windows (`training.cpt.TextWindow`) are all answer: the shorter first too."""
    by_task: dict[str, list] = {}
    for ex in sorted(examples, key=lambda e: (len(e.ids) if isinstance(e, TextWindow) else len(e.answer), e.source_id)):
        by_task.setdefault(ex.task, []).append(ex)
    picked, i = [], 0
    while len(picked) < n and any(i < len(v) for v in by_task.values()):
        picked += [v[i] for v in by_task.values() if i < len(v)][: n - len(picked)]
        i += 1
    return picked


def verify_peft_dir(base_gguf: Path, adapter_gguf: Path, peft_dir: Path, examples, *, n: int = 6, threads: int = 0,
                    min_agreement: float = MIN_AGREEMENT) -> VerifyReport:
    from peft import PeftModel

    from training.finetune import MAX_ANSWER_TOKENS, MAX_LEN, chat_template, encode, load_base, unwrap

    base, tokenizer = load_base(base_gguf)
    template = chat_template(base_gguf, tokenizer)
    picked = pick_for_verify(examples, n)
    sequences = [encode(ex, tokenizer, MAX_LEN, MAX_ANSWER_TOKENS, template) for ex in picked]
    model = PeftModel.from_pretrained(base, str(peft_dir))
    try:
        return verify(base_gguf, adapter_gguf, model, sequences, min_agreement=min_agreement, threads=threads)
    finally:
        unwrap(model)


# ---- base model check -----------------------------------------------------------------------------------
def check_base(version: store.AdapterVersion, base_path: Path) -> None:
    """Raise BaseMismatch when a version was trained on another base than `base_path`."""
    from training.finetune import file_hash

    recorded = version.meta.get("base_model") or {}
    arch, have = recorded.get("architecture"), architectures.architecture_name(base_path)
    if arch and arch != have:
        raise BaseMismatch(
            f"adapter {version.version} was trained for architecture {arch} ({recorded.get('name', '?')}), but the "
            f"configured base {Path(base_path).name} is {have}. Retrain it with `domainbot train` on this base."
        )
    want = recorded.get("sha256")
    if want and want != file_hash(base_path):
        raise BaseMismatch(
            f"adapter {version.version} was trained on base {want[:12]}… "
            f"({(version.meta.get('base_model') or {}).get('name', '?')}), but the configured base is "
            f"{Path(base_path).name} ({file_hash(base_path)[:12]}…). Retrain it with `domainbot train` on this base."
        )


# ---- publishing a version -------------------------------------------------------------------------------
def publish(
    result, examples, *, adapters_dir: Path, base_gguf: Path, keep_peft: bool = True, verify_with: int = 6,
    threads: int = 0, command: str | None = None, alpha_scale: float = 1.0, merged: str | None = None,
) -> store.AdapterVersion:
    """Export `result` (a TrainResult) to GGUF, verify it, and write `adapters_dir/vN/`. Raises on a mismatch."""
    staging = result.run_dir / "export"
    shutil.rmtree(staging, ignore_errors=True)
    gguf_path = export_gguf(result.peft_dir, base_gguf, staging / store.ADAPTER_FILE, alpha_scale=alpha_scale)
    report = verify_peft_dir(base_gguf, gguf_path, result.peft_dir, examples, n=verify_with, threads=threads)
    if not report.ok:
        raise ExportError(
            f"GGUF export verification failed: llama.cpp and transformers agree on {report.agreement:.1%} of "
            f"top-1 tokens (need {MIN_AGREEMENT:.0%}; max logit diff {report.max_logit_diff:.2f}). "
            f"The adapter was not published or promoted; the rejected file is {gguf_path}."
        )
    if keep_peft:
        shutil.copytree(result.peft_dir, staging / "peft")
    version = store.next_version(adapters_dir)
    meta = version_meta(result, version, report, gguf_path, command)
    meta["base_model"]["architecture"] = architectures.architecture_name(base_gguf)
    (staging / store.META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    adapters_dir.mkdir(parents=True, exist_ok=True)
    final = adapters_dir / version
    staging.rename(final) if staging.stat().st_dev == adapters_dir.stat().st_dev else shutil.move(staging, final)
    if merged:
        merge_to_gguf(base_gguf, final / store.ADAPTER_FILE, final / f"merged-{merged}.gguf", merged)
    return store.AdapterVersion(version, final)


def version_meta(result, version: str, report: VerifyReport, gguf_path: Path, command: str | None) -> dict:
    return {
        "version": version,
        "domain": result.domain,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "base_model": {"name": Path(result.base_model).name, "sha256": result.base_hash},
        "data": {"hash": result.data_hash, "examples": result.examples, "tasks": result.task_counts},
        "hyperparameters": result.config,
        "train": {
            "steps": result.steps, "total_steps": result.total_steps, "seconds": round(result.seconds, 1),
            "tokens": result.tokens, "answer_tokens": result.answer_tokens,
            "tokens_per_s": round(result.tokens_per_s, 1), "final_loss": round(result.final_loss, 4),
            "device": result.device, "resumed_from": result.resumed_from,
        },
        "verify": asdict(report),
        "adapter_bytes": gguf_path.stat().st_size,
        "metrics": {},
        "command": command or " ".join(sys.argv),
    }


# ---- merged standalone GGUF -----------------------------------------------------------------------------
def merge_to_gguf(base_gguf: Path, adapter_gguf: Path, out: Path, qtype: str) -> Path:
    """Base + adapter merged into one GGUF, quantized to q8_0 or q4_k_m by llama.cpp (never Q4_1)."""
    import ctypes

    import gguf
    import llama_cpp

    if qtype not in MERGED_TYPES:
        raise ExportError(f"--merged must be one of {', '.join(MERGED_TYPES)} (a Q4_1 merge loses the fine-tune)")
    lora, alpha = read_adapter_gguf(adapter_gguf)
    reader = gguf.GGUFReader(str(base_gguf))
    arch = reader.fields["general.architecture"].contents()
    f16 = out.with_suffix(".f16.tmp")
    writer = gguf.GGUFWriter(str(f16), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        sub = field.types[1] if len(field.types) > 1 else None
        writer.add_key_value(name, field.contents(), field.types[0], sub)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        a, b = lora.get(f"{t.name}.lora_a"), lora.get(f"{t.name}.lora_b")
        if a is not None and b is not None:
            w = w + (alpha / a.shape[0]) * (b @ a)
        writer.add_tensor(t.name, w.astype(np.float16) if w.ndim == 2 else w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[qtype]
    rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params))
    f16.unlink(missing_ok=True)
    if rc != 0:
        raise ExportError(f"llama.cpp could not quantize the merged model to {qtype} (code {rc})")
    return out
