"""A scratch copy of the shipped domains for tests that write adapters or router caches."""

from __future__ import annotations

from pathlib import Path

from bot.config import ROOT


def linked_workspace(tmp: Path, indexes: Path) -> tuple[Path, Path]:
    """Domains linked file by file (own adapters/ folders) and the shared built indexes (own router cache)."""
    domains, idx = tmp / "domains", tmp / "indexes"
    for src in (ROOT / "domains").iterdir():
        if (src / "domain.toml").is_file():
            (domains / src.name).mkdir(parents=True)
            for item in src.iterdir():
                if item.name != "adapters":
                    (domains / src.name / item.name).symlink_to(item)
            idx.mkdir(exist_ok=True)
            (idx / src.name).symlink_to(indexes / src.name)
    return domains, idx
