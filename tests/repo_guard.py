"""A check that the test session wrote nothing into the repository (conftest.py runs it around every session).

Watched: every file under domains/ and indexes/ (by mtime and size, so git-ignored files count too), and every
path `git status` lists at the start or the end (new files anywhere, edits to tracked files). Two writes are
expected and allowed: the index build that conftest's `built_indexes` fixture does at session start (it calls
`bless("indexes")` afterwards), and the router's default fit in indexes/router_fit.json and its anchor vectors
in indexes/router_anchors.npz (any router built on the real domains rewrites them when the manifests or the
domain set changed); a fit or anchors that learned examples are a test's leftover.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

WATCHED = ("domains", "indexes")
ROUTER_FIT = "indexes/router_fit.json"
ROUTER_ANCHORS = "indexes/router_anchors.npz"
# People edit code while a long run goes on; tests never write source files, so those edits are not a test's.
NOT_WRITTEN_BY_TESTS = (".py",)

Stamp = tuple[int, int]  # (mtime_ns, size)


def _stamp(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def git_status(root: Path) -> dict[str, str] | None:
    """{path: XY code} for what `git status` reports (new, changed, deleted); None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=all", "-z"],
            cwd=root, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    paths: dict[str, str] = {}
    entries = iter(out.stdout.split("\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        paths[entry[3:]] = entry[:2]
        if entry[0] in "RC":  # a rename or copy is followed by its source path
            paths[next(entries, "")] = "D "
    return {p: code for p, code in paths.items() if p}


@dataclass
class RepoGuard:
    root: Path
    stamps: dict[str, Stamp | None] = field(default_factory=dict)  # watched files, and what git listed

    def _files(self, under: str) -> dict[str, Stamp | None]:
        base = self.root / under
        if not base.exists():
            return {}
        return {p.relative_to(self.root).as_posix(): _stamp(p) for p in base.rglob("*") if p.is_file()}

    def _snapshot(self) -> tuple[dict[str, Stamp | None], dict[str, str]]:
        stamps: dict[str, Stamp | None] = {}
        for under in WATCHED:
            stamps |= self._files(under)
        status = git_status(self.root) or {}
        for path in status:
            stamps.setdefault(path, _stamp(self.root / path))
        return stamps, status

    def start(self) -> RepoGuard:
        self.stamps, _ = self._snapshot()
        return self

    def bless(self, under: str) -> None:
        """Take what is under `under` now as the expected state (after a fixture's intended write)."""
        prefix = under.rstrip("/") + "/"
        self.stamps = {p: s for p, s in self.stamps.items() if not p.startswith(prefix)} | self._files(under)

    def violations(self) -> list[str]:
        """What changed since start() (or the last bless), less the allowed writes; empty when clean."""
        now, status = self._snapshot()
        for path in self.stamps.keys() - now.keys():
            now[path] = _stamp(self.root / path)  # a path git stopped listing (e.g. the change was reverted)
        found = []
        for path in sorted(now):
            after = now[path]
            if path in self.stamps:
                before = self.stamps[path]
                if before == after:
                    continue
                what = "created" if before is None else "deleted" if after is None else "modified"
            else:  # absent at the start (every watched file was stamped), or clean then and listed by git now
                new = status.get(path, "??") == "??" or path.startswith(tuple(f"{w}/" for w in WATCHED))
                what = "deleted" if after is None else "created" if new else "modified"
            if path.endswith(NOT_WRITTEN_BY_TESTS) or (path == ROUTER_FIT and _default_fit(self.root / path)) or (
                    path == ROUTER_ANCHORS and _default_anchors(self.root / path)):
                continue
            found.append(f"{what}: {path}")
        return found


def _default_fit(path: Path) -> bool:
    """A router fit with no learned (reroute) examples: what every router on the real domains writes."""
    try:
        return json.loads(path.read_text())["fit"]["extra_examples"] == {}
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _default_anchors(path: Path) -> bool:
    """Router anchor vectors of the manifests alone (no learned reroute examples)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as saved:
            return int(saved["learned"]) == 0
    except (OSError, ValueError, KeyError):
        return False
