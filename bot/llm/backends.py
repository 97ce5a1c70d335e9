"""Choose the LLM backend from settings: `embedded` (llama.cpp in this process) or `openai` (a server).

Both give the same surface, `LLMRuntime`, so `bot/answer.py` runs the same path on either.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from bot.config import ConfigError, Settings
from bot.llm.llama import Generation, TokenCallback


class LLMRuntime(Protocol):
    model_path: Path

    def generate(self, messages: list[dict], *, adapter: str | None = None, max_tokens: int | None = None,
                 temperature: float | None = None, on_token: TokenCallback | None = None) -> Generation: ...

    def ensure_adapter(self, key: str, path: Path) -> None: ...

    def has_adapter(self, key: str) -> bool: ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...


def _embedded(settings: Settings) -> LLMRuntime:
    from bot.llm.llama import Runtime

    return Runtime(settings)


def _openai(settings: Settings) -> LLMRuntime:
    from bot.llm.openai import OpenAIRuntime

    return OpenAIRuntime(settings)


BACKENDS: dict[str, Callable[[Settings], LLMRuntime]] = {
    "embedded": _embedded,
    "openai": _openai,
}


def make_runtime(settings: Settings) -> LLMRuntime:
    """The runtime `settings.llm_backend` names; a clear ConfigError for an unknown one."""
    factory = BACKENDS.get((settings.llm_backend or "embedded").strip().lower())
    if factory is None:
        raise ConfigError(
            f"DOMAINBOT_LLM_BACKEND={settings.llm_backend!r} is not a backend; use one of: {', '.join(BACKENDS)}"
        )
    return factory(settings)
