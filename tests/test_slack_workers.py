"""The bounded answer pool: a full pool says so at once instead of queueing without end."""

from __future__ import annotations

import threading

from bot.slack.context import Workers


def test_a_full_pool_refuses_and_frees_slots_as_jobs_finish():
    release = threading.Event()
    done: list[int] = []
    workers = Workers(size=1, max_pending=2)
    assert workers.submit(release.wait)
    assert workers.submit(done.append, 1)  # queued behind the first
    assert not workers.submit(done.append, 2)  # full: refused, nothing queued
    release.set()
    workers.shutdown(wait=True)
    assert done == [1]


def test_a_crashing_job_is_logged_and_frees_its_slot(caplog):
    workers = Workers(size=1, max_pending=1)
    assert workers.submit(lambda: 1 / 0)
    workers.shutdown(wait=True)
    assert "answer job crashed" in caplog.text
    assert workers._slots.acquire(blocking=False)  # the slot came back
