"""Held-out perplexity of document-trained (cpt) adapters, and the gate that judges them by it.

A domain trained from its documents alone has no eval.jsonl to score, so its adapters are judged on the
documents `training.cpt` held out: perplexity with transformers + peft (the adapter rebuilt from the GGUF that
llama.cpp serves), base vs live vs candidate on the same windows. The candidate passes only if its perplexity is
lower than the live adapter's (the base model's when none is live) by `margin`, a relative share (0.01 = 1 %).
The numbers and the verdict go into the version's meta.json (`heldout_perplexity`, `metrics`, `gate`), which
`domainbot promote` reads like any other verdict.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bot import adapters as store
from bot.config import Settings
from bot.domains import Domain
from bot.errors import UserFacingError
from training.batches import collate
from training.cpt import MICRO_TOKENS, SEQ_LEN, DocSplit, TextWindow, prepare

METRIC = "heldout_perplexity"


def docs_only(domain: Domain) -> bool:
    """A domain judged by held-out perplexity: no eval.jsonl and no open-question task to score."""
    from training import qa_eval

    return not domain.eval_file.is_file() and not qa_eval.specs(domain)


def perplexity(model, windows: Sequence[TextWindow], micro_tokens: int = MICRO_TOKENS) -> tuple[float, int]:
    """(exp of the mean cross-entropy over every predicted token, how many tokens) of `windows` under `model`."""
    import torch
    import torch.nn.functional as F

    if not windows:
        raise UserFacingError("no held-out windows to measure perplexity on")
    device = next(model.parameters()).device
    model.eval()
    ordered = sorted(windows, key=lambda w: len(w.ids))
    per = max(1, micro_tokens // max(len(w.ids) for w in ordered))
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ordered), per):
            ids, att, labels = collate([(list(w.ids), 0) for w in ordered[i : i + per]], pad_id=0)
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits[:, :-1]
            targets = labels[:, 1:].to(device)
            keep = targets != -100  # padding only: every real token after the first is a target
            nll += F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum").item()
            count += int(keep.sum())
    return math.exp(nll / count), count


def with_adapter(base, where: Path):
    """base + an adapter: a PEFT dir, or a version folder's GGUF (what llama.cpp serves) rebuilt as PEFT."""
    from peft import PeftModel

    from training.gguf_lora import peft_from_gguf

    where = Path(where)
    if (where / "adapter_config.json").is_file():
        return PeftModel.from_pretrained(base, str(where))
    gguf = where if where.suffix == ".gguf" else where / store.ADAPTER_FILE
    if not gguf.is_file():
        raise UserFacingError(f"{where}: neither a PEFT adapter dir nor a folder with {store.ADAPTER_FILE}")
    return peft_from_gguf(base, gguf)


def measure(base_path: Path, windows: Sequence[TextWindow], adapters: Mapping[str, Path | None]) -> dict[str, float]:
    """Perplexity on `windows` for each named model: None is the base, else an adapter (see `with_adapter`)."""
    from training.finetune import load_base, unwrap

    base, _ = load_base(base_path)
    out = {}
    for name, where in adapters.items():
        if where is None:
            out[name] = perplexity(base, windows)[0]
            continue
        model = with_adapter(base, where)
        try:
            out[name] = perplexity(model, windows)[0]
        finally:
            unwrap(model)  # the cached base stays clean for the next model
    return out


def gate(candidate: float, live: float, margin: float) -> tuple[bool, str]:
    """Pass only if the candidate's held-out perplexity is below the live one's by more than `margin` (relative)."""
    need = live * (1 - margin)
    said = f"held-out perplexity {live:.3f} -> {candidate:.3f} ({candidate / live - 1:+.1%})"
    if candidate < need:
        return True, f"{said}, lower by more than the margin {margin:.1%}"
    return False, f"{said}, not lower by the margin {margin:.1%} (needs < {need:.3f})"


def split_for(domain: Domain, version: store.AdapterVersion | None, tokenizer, max_len: int | None = None) -> DocSplit:
    """The held-out split a version was trained with (its seed and window length), on today's documents."""
    hp = (version.meta.get("hyperparameters") or {}) if version else {}
    return prepare(domain, tokenizer, seq_len=int(hp.get("seq_len") or SEQ_LEN), seed=int(hp.get("seed") or 0),
                   max_len=max_len)


def judge(domain: Domain, version: store.AdapterVersion, *, base_gguf: Path, margin: float, by: str,
          split: DocSplit | None = None) -> dict:
    """Measure base, live and `version` on the held-out windows, record them in its meta.json, and (unless it is
    the live one) the gate's verdict. Returns the record (with `gate` when judged)."""
    from training.finetune import load_base

    live = store.current(domain.adapters_dir)
    live_name = live.version if live else "base"
    if split is None:
        split = split_for(domain, version, load_base(base_gguf)[1])
    wanted: dict[str, Path | None] = {"base": None}
    if live is not None:
        wanted[live.version] = live.path
    wanted[version.version] = version.path
    ppl = measure(base_gguf, split.heldout, wanted)
    at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record = {"base": round(ppl["base"], 4), "adapter": round(ppl[version.version], 4), "live": live_name,
              "live_perplexity": round(ppl[live_name], 4), "windows": len(split.heldout),
              "tokens": split.tokens("heldout"), "split": split.summary(), "by": "transformers+peft", "at": at}
    metrics = {"tasks": {METRIC: {"kind": "perplexity", "n": len(split.heldout), "tokens": split.tokens("heldout"),
                                  "score": record["adapter"], "lower_is_better": True}},
               "base": {METRIC: record["base"]}, "evaluated": at}
    fields: dict = {METRIC: record, "metrics": metrics}
    if version.version != live_name:
        ok, reason = gate(ppl[version.version], ppl[live_name], margin)
        fields["gate"] = record["gate"] = {
            "passed": ok, "reason": f"vs {live_name}: {reason}", "against": live_name, "by": by, "metric": METRIC,
            "candidate": record["adapter"], "current": record["live_perplexity"], "margin": margin, "at": at}
    store.update_meta(version.path, **fields)
    return record


def table(record: Mapping, version: str) -> str:
    """base / live / candidate perplexity, as `domainbot train` and `eval` print it."""
    split = record["split"]
    where = (f"{len(split['heldout_docs'])} held-out documents" if split["by"] == "document"
             else "held-out windows of the training documents")
    lines = [f"held-out perplexity ({where}: {record['windows']} windows, {record['tokens']:,} tokens; "
             "transformers+peft, lower is better):"]
    rows = [("base", record["base"])]
    if record["live"] not in ("base", version):
        rows.append((f"{record['live']} (live)", record["live_perplexity"]))
    rows.append((version, record["adapter"]))
    lines += [f"  {name:14} {value:10.3f}" + (f"  ({value / record['base'] - 1:+.1%} vs base)" if name != "base" else "")
              for name, value in rows]
    if "gate" in record:
        lines.append(f"gate {'passed' if record['gate']['passed'] else 'FAILED'} {record['gate']['reason']} "
                     "(recorded in meta.json)")
    return "\n".join(lines)


def eval_command(domain: Domain, wanted: str, settings: Settings) -> int:
    """`domainbot eval` on a docs-only domain: held-out perplexity, and a non-live version's gate verdict."""
    from training.finetune import load_base, served_gguf

    base_gguf = served_gguf(settings)
    live = store.current(domain.adapters_dir)
    name = (live.version if live else "base") if wanted == "current" else wanted
    print(f"{domain.name} has no eval.jsonl: scoring held-out perplexity on its documents")
    if name == "base":
        split = split_for(domain, None, load_base(base_gguf)[1])
        ppl = measure(base_gguf, split.heldout, {"base": None})["base"]
        print(f"held-out perplexity, base: {ppl:.3f} ({len(split.heldout)} windows, {split.tokens('heldout'):,} tokens)")
        return 0
    version = store.AdapterVersion(name, domain.adapters_dir / name)
    if not version.gguf.is_file():
        known = ", ".join(v.version for v in store.versions(domain.adapters_dir)) or "none"
        raise UserFacingError(f"{domain.name} has no adapter {name!r} (versions: {known})")
    record = judge(domain, version, base_gguf=base_gguf, margin=settings.gate_margin, by="domainbot eval")
    print(table(record, name))
    return 0
