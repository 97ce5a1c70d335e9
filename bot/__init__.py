"""Domainbot: a Slack assistant that answers through domain plugins.

The public names load on first use, so `import bot.config` (every CLI start) does not pull in the model stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Answer", "Answerer", "Place", "Question", "Settings", "discover"]

_WHERE = {"Answer": "bot.answer", "Answerer": "bot.answer", "Place": "bot.answer", "Question": "bot.answer",
          "Settings": "bot.config", "discover": "bot.domains"}

if TYPE_CHECKING:
    from bot.answer import Answer, Answerer, Place, Question
    from bot.config import Settings
    from bot.domains import discover


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'bot' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
