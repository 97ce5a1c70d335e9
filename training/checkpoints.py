"""Training checkpoints: written atomically, read back only for the run they belong to."""

from __future__ import annotations

import os
from pathlib import Path

from training.errors import TrainingError


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a full disk or a kill mid-write leaves the previous checkpoint intact."""
    import torch

    tmp = path.with_suffix(".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        previous = f"the checkpoint at step {_saved_step(path)} is intact" if path.exists() else "no checkpoint yet"
        raise TrainingError(
            f"could not write checkpoint {path}: {exc.strerror or exc} (disk full?). Training stopped; "
            f"{previous}. Free some space and run the same command again to resume."
        ) from exc


def _saved_step(path: Path) -> int:
    import torch

    try:
        return int(torch.load(path, weights_only=False)["step"])
    except Exception:  # an unreadable checkpoint is simply not resumable
        return 0


def load_checkpoint(path: Path, key: str) -> dict | None:
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:  # corrupt file: say so, start over
        print(f"warning: ignoring unreadable checkpoint {path}: {exc}")
        return None
    return state if state.get("key") == key else None
