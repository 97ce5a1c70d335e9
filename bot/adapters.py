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

from bot.errors import UserFacingError

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


def update_meta(version_dir: Path, **fields: object) -> None:
    """Set top-level keys of a version's meta.json (atomically: a reader never sees half a file)."""
    meta = AdapterVersion(version_dir.name, version_dir).meta
    meta.update(fields)
    path = version_dir / META_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(path)


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


# ---- promotion history (promote / rollback) -------------------------------------------------------------
HISTORY_FILE = "history.jsonl"  # one JSON line per pointer change: {time, action, from, to}
LOCK_FILE = ".pointer.lock"


class AdapterError(UserFacingError, ValueError):
    """A promote/rollback that cannot be done; the message says why (and is shown to the operator as is)."""


def history(adapters_dir: Path) -> list[dict]:
    path = adapters_dir / HISTORY_FILE
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # a torn last line after a crash is skipped, never fatal
    return entries


def _pointer_name(adapters_dir: Path) -> str:
    try:
        return (adapters_dir / POINTER).read_text().strip() or "base"
    except OSError:
        return "base"


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def _append_history(adapters_dir: Path, entry: dict) -> None:
    path = adapters_dir / HISTORY_FILE
    torn = path.is_file() and path.stat().st_size and _last_byte(path) != b"\n"
    with path.open("a") as f:
        f.write(("\n" if torn else "") + json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _switch(adapters_dir: Path, target: str, action: str) -> str:
    import fcntl
    import time

    adapters_dir.mkdir(parents=True, exist_ok=True)
    with (adapters_dir / LOCK_FILE).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one pointer change at a time (CLI, retrain worker)
        before = _pointer_name(adapters_dir)
        if action == "rollback":
            target = _previous(adapters_dir, before)
        set_current(adapters_dir, target)
        _append_history(adapters_dir, {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "action": action,
                                       "from": before, "to": target})
    return target


def _previous(adapters_dir: Path, live: str) -> str:
    """The version that was live before `live` (following earlier rollbacks), else 'base'."""
    stack: list[str] = []
    for entry in history(adapters_dir):
        if entry.get("action") == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(entry.get("from", "base"))
    while stack:
        candidate = stack.pop()
        if candidate != live and (candidate == "base" or (adapters_dir / candidate / ADAPTER_FILE).is_file()):
            return candidate
    if live == "base":
        raise AdapterError(f"nothing to roll back in {adapters_dir}: the domain already runs on the base model")
    return "base"


def promote(adapters_dir: Path, version: str) -> str:
    """Make `version` (or "base") live, atomically, and record it so `rollback` can undo it."""
    if version != "base" and not VERSION_RE.match(version):
        raise AdapterError(f"{version!r} is not a version name (v1, v2, ...) or 'base'")
    if version != "base" and not (adapters_dir / version / ADAPTER_FILE).is_file():
        known = ", ".join(v.version for v in versions(adapters_dir)) or "none"
        raise AdapterError(f"no adapter {version} in {adapters_dir} (versions: {known})")
    return _switch(adapters_dir, version, "promote")


def rollback(adapters_dir: Path) -> str:
    """Point `current` back at the version that was live before the last promotion; returns it."""
    return _switch(adapters_dir, "", "rollback")
