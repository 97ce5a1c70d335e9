"""A runtime wrapper that keeps every prompt sent to the model: tests check what reached the model (thread
history, passages) on the real runtime, instead of trusting that what was fetched was used."""

from __future__ import annotations

import threading
from typing import Any


class RecordingRuntime:
    """Delegates everything to `inner` (the real runtime); `prompts` holds each generate() call's messages."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.prompts: list[list[dict]] = []
        self._lock = threading.Lock()

    def generate(self, messages: list[dict], **kwargs: Any) -> Any:
        with self._lock:
            self.prompts.append([dict(m) for m in messages])
        return self.inner.generate(messages, **kwargs)

    def prompt_for(self, question: str) -> list[dict]:
        """The prompt whose last user message is `question` (the latest such)."""
        with self._lock:
            found = [p for p in self.prompts if p and p[-1] == {"role": "user", "content": question}]
        if not found:
            raise AssertionError(f"no prompt ended with {question!r}; prompts ended with "
                                 f"{[p[-1].get('content') for p in self.prompts if p]}")
        return found[-1]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
