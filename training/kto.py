"""Preference learning from what users actually give: unpaired 👍/👎, with TRL's KTO (no hand-written loss).

Rows come from the stored reactions, by the same vote rules as the SFT data (`training.feedback`): each user's
standing vote per exchange, a removed vote is no vote, and an opted-out exchange gives nothing at all. Then:

- per-user cap: one user's votes count for at most `per_user` exchanges (their earliest), so one enthusiast or
  one troll cannot steer the domain;
- per-question cap: at most `per_question` exchanges of the same question give rows, so a popular question
  does not drown the rest;
- never from an answer the guard replaced ("quoted", "no-sources"): that text is not the model's answer;
- a net 👍 is a desirable row, a net 👎 an undesirable one, a tie nothing;
- a corrected answer gives a (rejected, chosen) pair: the bot's answer undesirable, the correction desirable.

`refine` runs a few KTO steps on a trained LoRA (retrain's candidate) and saves it back in place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot.llm import chat_format
from bot.llm.chat_format import ChatTemplate
from bot.prompt import TokenCounter, approx_tokens
from training import feedback as fd
from training.errors import TrainingError


@dataclass(frozen=True)
class Caps:
    per_user: int = 20
    per_question: int = 3


@dataclass(frozen=True)
class Signal:
    exchange: Mapping
    completion: str
    label: bool  # True: desirable
    source_id: str
    why: str  # "up" | "down" | "corrected" | "answer-corrected"


def question_key(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def signals(exchanges: Iterable[Mapping], feedback: Sequence[Mapping], caps: Caps = Caps()) -> list[Signal]:
    """The KTO signals of a domain's stored exchanges and feedback, in exchange order (pure; see module doc)."""
    if caps.per_user < 1 or caps.per_question < 1:
        raise ValueError(f"caps must be >= 1, got {caps}")
    rows = {ex["id"]: ex for ex in exchanges}
    opted = {f["exchange_id"] for f in feedback if f["kind"] == "opt_out"}
    corrections: dict[int, tuple[int, str]] = {}
    for f in sorted(feedback, key=lambda r: r["id"]):
        if f["kind"] == "correction" and f["value"].strip():
            corrections[f["exchange_id"]] = (f["id"], f["value"].strip())

    def usable(xid: int) -> bool:
        ex = rows.get(xid)
        return (ex is not None and xid not in opted and ex.get("kind", "answer") == "answer"
                and ex.get("guard_verdict") not in fd.GUARDED)  # fmt: skip

    net: dict[int, int] = {}
    per_user: dict[str | None, int] = {}
    for (xid, user), vote in sorted(fd.standing_votes(feedback).items(), key=lambda kv: kv[0][0]):
        if not usable(xid) or per_user.get(user, 0) >= caps.per_user:
            continue
        per_user[user] = per_user.get(user, 0) + 1
        net[xid] = net.get(xid, 0) + vote

    out: list[Signal] = []
    per_question: dict[str, int] = {}
    for xid in sorted(set(net) | {x for x in corrections if usable(x)}):
        ex = rows[xid]
        key = question_key(ex["question"])
        if per_question.get(key, 0) >= caps.per_question:
            continue
        made = _signals_of(ex, net.get(xid, 0), corrections.get(xid))
        if made:
            per_question[key] = per_question.get(key, 0) + 1
            out += made
    return out


def _signals_of(ex: Mapping, net: int, correction: tuple[int, str] | None) -> list[Signal]:
    answer = (ex.get("answer") or "").strip()
    base = f"kto-exchange-{ex['id']}"
    if correction is not None:
        fid, text = correction
        pair = [Signal(ex, text, True, f"{base}-correction-{fid}", "corrected")]
        if answer and answer != text:
            pair.insert(0, Signal(ex, answer, False, f"{base}-correction-{fid}-rejected", "answer-corrected"))
        return pair
    if not answer or net == 0:
        return []
    return [Signal(ex, answer, net > 0, base, "up" if net > 0 else "down")]


@dataclass
class KTOData:
    rows: list[dict] = field(default_factory=list)  # {"prompt": messages, "completion": messages, "label": bool}
    source_ids: list[str] = field(default_factory=list)
    stale: int = 0  # signals whose cited passages are gone from the index
    unservable: int = 0  # desirable completions with a number no shown passage holds (`feedback.unservable`)

    @property
    def counts(self) -> dict[str, int]:
        up = sum(r["label"] for r in self.rows)
        return {"desirable": up, "undesirable": len(self.rows) - up, "stale": self.stale,
                "unservable": self.unservable}


def to_rows(sigs: Iterable[Signal], *, system_prompt: str, domain_names: Sequence[str], lookup: fd.ChunkLookup,
            budget: int, count: TokenCounter = approx_tokens, exclude: Iterable[str] = ()) -> KTOData:  # fmt: skip
    """TRL's conversational unpaired-preference rows, with the prompt exactly as the model saw it."""
    skip = set(exclude)
    out = KTOData()
    for s in sigs:
        if s.source_id in skip:
            continue
        # the same prompt and target as the SFT example: a correction grounded in the passage it names
        pair = fd.training_pair(s.exchange, s.completion, corrected=s.why == "corrected", system_prompt=system_prompt,
                                domain_names=domain_names, lookup=lookup, budget=budget, count=count)  # fmt: skip
        if pair is None:
            out.stale += 1
            continue
        prompt, completion = pair
        if s.label and fd.unservable(prompt, completion):  # a figure no shown passage holds: never desirable
            out.unservable += 1
            continue
        out.rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": completion}],
                         "label": s.label})  # fmt: skip
        out.source_ids.append(s.source_id)
    return out


def build(store, domain, *, lookup: fd.ChunkLookup, domain_names: Sequence[str], budget: int,
          count: TokenCounter = approx_tokens, caps: Caps = Caps(), exclude: Iterable[str] = ()) -> KTOData:  # fmt: skip
    sigs = signals(store.exchanges(domain.name), store.feedback(domain.name), caps)
    return to_rows(sigs, system_prompt=domain.system_prompt, domain_names=domain_names, lookup=lookup,
                   budget=budget, count=count, exclude=exclude)  # fmt: skip


def usable_source_ids(store, domain_name: str, caps: Caps = Caps(), *, only_new_kinds: bool = False) -> list[str]:
    """For counting (no index needed): every KTO signal the stored feedback gives now. `only_new_kinds`: just
    the plain 👎 ones, the only signal the SFT data (`training.feedback`) does not already count."""
    sigs = signals(store.exchanges(domain_name), store.feedback(domain_name), caps)
    return [s.source_id for s in sigs if not only_new_kinds or s.why == "down"]


@dataclass
class KTOSettings:
    steps: int = 8
    lr: float = 5e-5
    beta: float = 0.1
    batch_size: int = 4  # KTO's KL term pairs each completion with another row's prompt: needs >= 2
    max_length: int = 512
    seed: int = 0
    threads: int = 0


def as_text(row: Mapping, template: ChatTemplate) -> dict:
    """A row as the text serving renders (bot.llm.chat_format), not messages: TRL would format those with the
    tokenizer's template, which a pretrained GGUF lacks (Gemma 3 270M) and which need not match serving's.
    The completion closes with the turn end serving stops at, as SFT's targets do."""
    from training.finetune import turn_end_text

    return {"prompt": chat_format.render(template, row["prompt"]),
            "completion": row["completion"][0]["content"] + turn_end_text(template), "label": row["label"]}


def refine(peft_dir: Path, data: KTOData, base_gguf: Path, ks: KTOSettings) -> dict:
    """A few KTO steps on the LoRA in `peft_dir` (the reference is that LoRA as it was), saved back in place.
    Returns TRL's last logged numbers."""
    if len(data.rows) < 2:  # before the heavy imports: a clear message in milliseconds
        raise TrainingError(f"KTO needs at least 2 rows, got {len(data.rows)}")
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import PrinterCallback
    from trl import KTOConfig, KTOTrainer

    from training.finetune import chat_template, load_base, unwrap

    if ks.threads:
        torch.set_num_threads(ks.threads)
    base, tokenizer = load_base(base_gguf)
    template = chat_template(base_gguf, tokenizer)
    saved = (tokenizer.pad_token, tokenizer.padding_side)  # the tokenizer is cached: put it back after
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = PeftModel.from_pretrained(base, peft_dir, is_trainable=True)
    try:
        args = KTOConfig(
            output_dir=str(peft_dir.parent / "kto_run"), max_steps=ks.steps, learning_rate=ks.lr, beta=ks.beta,
            per_device_train_batch_size=min(ks.batch_size, len(data.rows)), max_length=ks.max_length,
            seed=ks.seed, report_to=[], save_strategy="no", logging_steps=1, use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True, dataloader_num_workers=0,
        )  # fmt: skip
        rows = [as_text(row, template) for row in data.rows]
        trainer = KTOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer)  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # the numbers are returned and recorded, not printed per step
        trainer.train()
        model.save_pretrained(peft_dir)
        logs = [h for h in trainer.state.log_history if "loss" in h]
        return {k: v for k, v in (logs[-1] if logs else {}).items() if isinstance(v, int | float)}
    finally:
        unwrap(model)
        tokenizer.pad_token, tokenizer.padding_side = saved
