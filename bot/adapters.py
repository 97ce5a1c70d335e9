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
HISTORY_FILE = "history.jsonl"  # one JSON line per pointer change: {time, action, from, to[, forced, reason]}
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


def _switch(adapters_dir: Path, target: str, action: str, note: dict | None = None) -> str:
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
                                       "from": before, "to": target, **(note or {})})
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


def _check_exists(adapters_dir: Path, version: str) -> None:
    if version != "base" and not VERSION_RE.match(version):
        raise AdapterError(f"{version!r} is not a version name (v1, v2, ...) or 'base'")
    if version != "base" and not (adapters_dir / version / ADAPTER_FILE).is_file():
        known = ", ".join(v.version for v in versions(adapters_dir)) or "none"
        raise AdapterError(f"no adapter {version} in {adapters_dir} (versions: {known})")


def promote(adapters_dir: Path, version: str) -> str:
    """Make `version` (or "base") live, atomically, and record it so `rollback` can undo it.

    No gate check: for callers that have just applied the gate themselves (retrain, `train --promote`).
    A person promoting by hand goes through `promote_by_hand`."""
    _check_exists(adapters_dir, version)
    return _switch(adapters_dir, version, "promote")


# ---- promotion by hand: the recorded gate verdict decides, unless overridden with a reason ---------------
def gate_verdict(version_dir: Path) -> tuple[bool | None, str]:
    """(passed, reason) from meta.json's `gate` (written by retrain, and by `domainbot eval` against the live
    version); (None, "") when no verdict is recorded."""
    gate = AdapterVersion(version_dir.name, version_dir).meta.get("gate")
    if not isinstance(gate, dict):
        return None, ""
    passed = gate.get("passed", gate.get("promoted"))  # retrain writes {"promoted": ok, "reason": ...}
    return (passed if isinstance(passed, bool) else None), str(gate.get("reason", ""))


def was_live(adapters_dir: Path, version: str) -> bool:
    """Whether `version` has served before (a promote or rollback pointed at it)."""
    return _pointer_name(adapters_dir) == version or any(e.get("to") == version for e in history(adapters_dir))


def promote_by_hand(adapters_dir: Path, version: str, *, force: bool = False, reason: str | None = None) -> str:
    """`domainbot promote`: make `version` live only if its recorded gate verdict passed.

    A version with no verdict may go live only if it has been live before (going back to it is a rollback
    by another name); one never judged, or judged and failed, needs `force` and a `reason`. The reason goes into
    the version's meta.json (`forced: {reason, at, overrode}`) and into the history line. "base" needs no
    verdict: turning the adapter off is always allowed.
    """
    import time

    _check_exists(adapters_dir, version)
    reason = (reason or "").strip()
    if force and not reason:
        raise AdapterError('--force needs --reason "...": say why this version should go live over its gate '
                           "(it is recorded in meta.json and history.jsonl)")
    why_not = ""
    if version != "base":
        passed, verdict = gate_verdict(adapters_dir / version)
        if passed is False:
            why_not = f"{version} failed its gate: {verdict or 'no reason recorded'}"
        elif passed is None and not was_live(adapters_dir, version):
            why_not = (f"{version} has no recorded gate verdict and has never been live; run `domainbot eval "
                       f"{adapters_dir.parent.name} --adapter {version}` (it compares it with the live version "
                       "and records the verdict)")
    if why_not and not force:
        raise AdapterError(f'{why_not}. Not promoted; to promote it anyway: --force --reason "why"')
    note = {"forced": True, "reason": reason} if force else {"reason": reason} if reason else {}
    target = _switch(adapters_dir, version, "promote", note)
    if force and version != "base":
        update_meta(adapters_dir / version, forced={"reason": reason, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                    "overrode": why_not or "nothing: the gate had passed"})
    return target


def rollback(adapters_dir: Path) -> str:
    """Point `current` back at the version that was live before the last promotion; returns it."""
    return _switch(adapters_dir, "", "rollback")
