"""Versioned LoRA adapters on disk: `domains/<d>/adapters/vN/{adapter.gguf,meta.json}` plus a `current` pointer.

The pointer is a one-line text file naming the live version; it is replaced atomically (write + rename),
so a running bot never reads a half-written pointer.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

VERSION_RE = re.compile(r"^v(\d+)$")
POINTER = "current"
ADAPTER_FILE = "adapter.gguf"
META_FILE = "meta.json"


@dataclass(frozen=True)
class AdapterVersion:
    version: str
    path: Path  # the version folder

    @property
    def gguf(self) -> Path:
        return self.path / ADAPTER_FILE

    @property
    def meta(self) -> dict:
        try:
            return json.loads((self.path / META_FILE).read_text())
        except (OSError, ValueError):
            return {}

    @property
    def number(self) -> int:
        m = VERSION_RE.match(self.version)
        return int(m.group(1)) if m else -1


def versions(adapters_dir: Path) -> list[AdapterVersion]:
    if not adapters_dir.is_dir():
        return []
    found = [
        AdapterVersion(p.name, p)
        for p in adapters_dir.iterdir()
        if p.is_dir() and VERSION_RE.match(p.name) and (p / ADAPTER_FILE).is_file()
    ]
    return sorted(found, key=lambda v: v.number)


def current(adapters_dir: Path) -> AdapterVersion | None:
    """The live version, or None when the domain runs on the base model."""
    pointer = adapters_dir / POINTER
    try:
        name = pointer.read_text().strip()
    except OSError:
        return None
    if not name or name == "base":
        return None
    version = AdapterVersion(name, adapters_dir / name)
    return version if version.gguf.is_file() else None


def set_current(adapters_dir: Path, version: str) -> None:
    """Point `current` at `version` (or "base") atomically."""
    if version != "base" and not (adapters_dir / version / ADAPTER_FILE).is_file():
        raise FileNotFoundError(f"no adapter {version} in {adapters_dir}")
    adapters_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=adapters_dir, prefix=".current-")
    with os.fdopen(fd, "w") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, adapters_dir / POINTER)


def next_version(adapters_dir: Path) -> str:
    existing = versions(adapters_dir)
    return f"v{existing[-1].number + 1 if existing else 1}"


def pointer_stamp(adapters_dir: Path) -> tuple[str, float]:
    """A cheap change detector for hot reload: (pointer text, mtime)."""
    pointer = adapters_dir / POINTER
    try:
        return pointer.read_text().strip(), pointer.stat().st_mtime
    except OSError:
        return "", 0.0
