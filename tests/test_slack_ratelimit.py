"""The per-user rate limiter (pure, with a fake clock)."""

from __future__ import annotations

from bot.slack.ratelimit import RateLimiter, wait_message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_allows_the_budget_then_says_how_long_to_wait():
    clock = Clock()
    limiter = RateLimiter(3, clock=clock)
    assert [limiter.check("alice") for _ in range(3)] == [0.0, 0.0, 0.0]
    clock.now += 10
    assert limiter.check("alice") == 50.0  # the first hit leaves the window at t+60
    assert limiter.check("bob") == 0.0  # per user


def test_the_window_slides():
    clock = Clock()
    limiter = RateLimiter(2, clock=clock)
    limiter.check("alice")
    clock.now += 30
    limiter.check("alice")
    clock.now += 30  # the first hit has just left the window
    assert limiter.check("alice") == 0.0
    assert limiter.check("alice") == 30.0


def test_a_refused_hit_does_not_count():
    clock = Clock()
    limiter = RateLimiter(1, clock=clock)
    limiter.check("alice")
    for _ in range(5):
        clock.now += 10
        limiter.check("alice")  # refused: must not push the window forward
    clock.now += 10.5
    assert limiter.check("alice") == 0.0


def test_zero_disables_limiting():
    limiter = RateLimiter(0)
    assert all(limiter.check("alice") == 0.0 for _ in range(100))


def test_idle_users_are_forgotten():
    clock = Clock()
    limiter = RateLimiter(1, clock=clock)
    for i in range(1100):
        limiter.check(f"user{i}")
    clock.now += 61
    limiter.check("late")
    assert len(limiter._hits) == 1


def test_the_message_is_friendly_and_rounds_up():
    assert "try again in 1 second." in wait_message(0.2)
    assert "try again in 43 seconds" in wait_message(42.1)
