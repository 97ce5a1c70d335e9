"""Per-user rate limiting: a sliding one-minute window per key. Pure apart from the injectable clock."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable


class RateLimiter:
    """Allow at most `per_minute` hits per key in any `window_s` seconds; `per_minute <= 0` disables it."""

    def __init__(self, per_minute: int, *, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.window_s = window_s
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> float:
        """Record a hit and return 0.0, or return the seconds to wait (and record nothing)."""
        if self.per_minute <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= self.per_minute:
                return hits[0] + self.window_s - now
            hits.append(now)
            self._forget_idle(now)
            return 0.0

    def _forget_idle(self, now: float) -> None:
        # Keep memory bounded by active users: drop keys whose newest hit left the window.
        if len(self._hits) > 1024:
            for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window_s]:
                del self._hits[key]


def wait_message(seconds: float) -> str:
    wait = max(1, math.ceil(seconds))
    unit = "second" if wait == 1 else "seconds"
    return f"You're asking faster than I can keep up with. Please try again in {wait} {unit}. :hourglass_flowing_sand:"
