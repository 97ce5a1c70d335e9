"""A finished training run as a file, so a GPU box can train and the serving host can export, verify and
publish (`domainbot train --no-publish`, then `domainbot publish`)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

from bot.config import Settings
from bot.domains import Domain
from training.dataset import data_hash
from training.errors import TrainingError
from training.finetune import (
    TrainConfig,
    TrainResult,
    config_examples,
    file_hash,
    load_base,
    served_gguf,
)

RESULT_FILE = "result.json"


def save_run(result: TrainResult, command: str) -> Path:
    data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
    path = result.run_dir / RESULT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**data, "command": command}, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def load_run(run_dir: Path, domain: Domain, settings: Settings) -> tuple[TrainResult, list, str]:
    """(result, the same training examples, the command) of a saved run; refuses one this host can't reproduce."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        raise TrainingError(f"no {RESULT_FILE} in {run_dir}: train with `domainbot train {domain.name} --no-publish`")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise TrainingError(f"{path} is not valid JSON: {exc}") from None
    if data.get("domain") != domain.name:
        raise TrainingError(f"{run_dir} is a run of {data.get('domain')!r}, not {domain.name!r}")
    peft_dir = Path(run_dir) / "peft"
    if not (peft_dir / "adapter_config.json").is_file():
        raise TrainingError(f"{run_dir} has no peft/ adapter (copy the whole run folder)")
    known = {f.name for f in fields(TrainResult)}
    result = TrainResult(**{k: v for k, v in data.items() if k in known})
    result.run_dir, result.peft_dir = Path(run_dir), peft_dir

    config_fields = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in data["config"].items() if k in config_fields})
    base = Path(cfg.base_model) if cfg.base_model else served_gguf(settings)
    if file_hash(base) != result.base_hash:
        raise TrainingError(
            f"{run_dir} was trained on a base model with sha256 {result.base_hash[:12]}, but this host's base "
            f"{base.name} has {file_hash(base)[:12]}: the adapter would not fit it. Publish where that base is served."
        )
    result.base_model = str(base)
    examples = config_examples(domain, cfg, settings, load_base(base)[1])
    if data_hash(examples) != result.data_hash:
        raise TrainingError(f"{domain.name}'s training data changed since {run_dir} was trained (data hash differs)")
    return result, examples, data.get("command", "")
