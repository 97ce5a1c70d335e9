"""The retraining loop behind the Procfile's `worker:` line.

Every `interval_s` it counts, per domain, the usable feedback signals no run has tried yet (SFT examples from
👍 and corrections, plus the plain 👎 that KTO learns from) and retrains each domain that reached `min_examples`
(N, `DOMAINBOT_RETRAIN_MIN_EXAMPLES`). No human decides: `training.retrain`'s job gate promotes a candidate only
on a significant gain on the domain's `<d>_qa` dev items, and the running bot hot-reloads the new `current`; a bad
batch (e.g. mostly wrong votes) is rejected with its numbers in `training_runs`. A failed or rejected run marks its
signals as tried, so the loop waits for N *more* before it tries again instead of spinning. A crash of one
retrain is logged and the loop goes on; the live adapter is never touched by a failure.

One retrain per domain across hosts: with a PostgreSQL store each retrain runs under a lease, a session-level
advisory lock on a connection of its own (`retrain_lease`). A worker that finds the lease held skips the domain
for this pass and logs it; the server drops the lock when the holder's session ends, so a crashed or killed
holder (its socket closes, or TCP keepalive notices a dead host) frees the domain for the next pass. With SQLite
(one host) `training.retrain`'s file lock serialises the processes, as before.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bot import metrics
from bot.config import Settings
from bot.domains import discover
from bot.errors import UserFacingError
from bot.store.store import Store

log = logging.getLogger(__name__)

LEASE_CLASS = 0x646F6D62  # "domb": first key of the two-int advisory locks; migrations use the one-bigint space
# Close a lease whose holder vanished without a FIN (power loss, partition) after about a minute, not 2 hours.
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


@dataclass(frozen=True)
class Due:
    domain: str
    new_examples: int


def due_domains(store: Store, domains: Iterable[str], min_examples: int) -> list[Due]:
    from training.retrain import new_example_count

    counts = [Due(name, new_example_count(store, name)) for name in sorted(domains)]
    return [d for d in counts if d.new_examples >= max(1, min_examples)]


def lease_key(domain: str) -> int:
    """The domain's int4 advisory-lock key (a collision only makes two domains take turns)."""
    return zlib.crc32(domain.encode()) - 2**31


@contextmanager
def retrain_lease(settings: Settings, domain: str) -> Iterator[bool]:
    """Yields True while this process holds `domain`'s retrain lease, False when another session holds it.

    Only a PostgreSQL store (hosts share it) needs one; with SQLite this yields True. The lease is its own
    connection, not the store's: the store reconnects silently after a drop, which would lose a lock unseen.
    """
    url = getattr(settings, "db_url", None)
    if not url:
        yield True
        return
    import psycopg

    from bot.store.postgres import redact

    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10, application_name="domainbot-worker",
                               **KEEPALIVE)
    except psycopg.Error as exc:
        raise UserFacingError(f"cannot take the retrain lease at {redact(url)}: {redact(str(exc)).strip()}") from exc
    try:
        yield bool(conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LEASE_CLASS, lease_key(domain))).fetchone()[0])
    finally:
        conn.close()  # ending the session releases the lock (and a crash ends it too)


def run_once(settings: Settings, store: Store, *, min_examples: int | None = None, cfg=None,
             retrain_fn: Callable | None = None) -> list:  # fmt: skip
    """One pass: retrain every due domain; returns the outcomes (an exception becomes a 'failed' outcome)."""
    from training.retrain import RetrainBusy, RetrainOutcome, new_example_count, retrain

    retrain_fn = retrain_fn or retrain
    threshold = settings.retrain_min_examples if min_examples is None else min_examples
    names = discover(settings.domains_dir, settings.domain_allowlist).domains
    outcomes = []
    for due in due_domains(store, names, threshold):
        try:
            with retrain_lease(settings, due.domain) as held:
                if not held:
                    log.warning("skipping %s: another worker holds its retrain lease", due.domain)
                    outcomes.append(RetrainOutcome(due.domain, "skipped", "another worker is retraining it"))
                    continue
                # Counted again under the lease: a run that ended while we waited has tried these signals.
                fresh = new_example_count(store, due.domain)
                if fresh < max(1, threshold):
                    log.info("skipping %s: another worker's run already tried its feedback", due.domain)
                    continue
                log.info("retraining %s: %d new feedback examples", due.domain, fresh)
                outcomes.append(retrain_fn(due.domain, settings=settings, store=store, cfg=cfg))
        except RetrainBusy as exc:  # another process on this host (the file lock)
            log.warning("skipping %s: %s", due.domain, exc)
            outcomes.append(RetrainOutcome(due.domain, "skipped", str(exc)))
        except Exception as exc:  # one domain's failure must not stop the loop
            log.exception("retrain of %s failed", due.domain)
            outcomes.append(RetrainOutcome(due.domain, "failed", f"{type(exc).__name__}: {exc}"))
    return outcomes


def apologise_abandoned_questions(settings: Settings, store: Store) -> int:
    """Slack questions a crashed web process left open and no Slack process resumed: apologise for them
    (with an "Ask again" button). Needs SLACK_BOT_TOKEN; without it there is nobody to tell."""
    if not settings.slack_bot_token:
        return 0
    from bot.slack.context import make_client
    from bot.slack.resume import apologise_abandoned
    from bot.store.questions import Questions

    try:
        return apologise_abandoned(make_client(settings), Questions(store))
    except Exception:  # Slack down or the store busy: the next pass tries again
        log.exception("could not apologise for abandoned Slack questions")
        return 0


def loop(settings: Settings, *, interval_s: float = 300.0, min_examples: int | None = None, cfg=None,
         stop: threading.Event | None = None, on_pass: Callable[[list], None] | None = None) -> None:  # fmt: skip
    stop = stop or threading.Event()
    try:  # checked before anything opens: a bad DOMAINBOT_METRICS_PORT is the operator's to fix
        port = metrics.port_from_env()
    except ValueError as exc:
        raise UserFacingError(str(exc)) from None
    store = Store.from_settings(settings)
    server = metrics.start_metrics_server(port, store=store)[0] if port is not None else None
    try:
        while not stop.is_set():
            apologise_abandoned_questions(settings, store)
            outcomes = run_once(settings, store, min_examples=min_examples, cfg=cfg)
            for out in outcomes:
                log.warning("retrain %s: %s (%s)", out.domain, out.status, out.reason)
            if on_pass:
                on_pass(outcomes)
            stop.wait(interval_s)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        store.close()
