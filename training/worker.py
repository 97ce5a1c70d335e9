"""The retraining loop behind the Procfile's `worker:` line.

Every `interval_s` it counts, per domain, the usable feedback signals no run has tried yet (SFT examples from
👍 and corrections, plus the plain 👎 that KTO learns from) and retrains each domain that reached `min_examples`
(N, `DOMAINBOT_RETRAIN_MIN_EXAMPLES`). No human decides: `training.retrain`'s job gate promotes a candidate only
on a significant gain on the domain's `<d>_qa` dev items, and the running bot hot-reloads the new `current`; a bad
batch (e.g. mostly wrong votes) is rejected with its numbers in `training_runs`. A failed or rejected run marks its
signals as tried, so the loop waits for N *more* before it tries again instead of spinning. A crash of one
retrain is logged and the loop goes on; the live adapter is never touched by a failure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bot import metrics
from bot.config import Settings
from bot.domains import discover
from bot.errors import UserFacingError
from bot.store.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Due:
    domain: str
    new_examples: int


def due_domains(store: Store, domains: Iterable[str], min_examples: int) -> list[Due]:
    from training.retrain import new_example_count

    counts = [Due(name, new_example_count(store, name)) for name in sorted(domains)]
    return [d for d in counts if d.new_examples >= max(1, min_examples)]


def run_once(settings: Settings, store: Store, *, min_examples: int | None = None, cfg=None,
             retrain_fn: Callable | None = None) -> list:  # fmt: skip
    """One pass: retrain every due domain; returns the outcomes (an exception becomes a 'failed' outcome)."""
    from training.retrain import RetrainOutcome, retrain

    retrain_fn = retrain_fn or retrain
    threshold = settings.retrain_min_examples if min_examples is None else min_examples
    names = discover(settings.domains_dir, settings.domain_allowlist).domains
    outcomes = []
    for due in due_domains(store, names, threshold):
        log.info("retraining %s: %d new feedback examples", due.domain, due.new_examples)
        try:
            outcomes.append(retrain_fn(due.domain, settings=settings, store=store, cfg=cfg))
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
