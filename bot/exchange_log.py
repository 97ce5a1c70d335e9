"""Log an answered exchange to the store, from any front end (CLI or Slack), and count it in the metrics."""

from __future__ import annotations

import logging

from bot import metrics
from bot.answer import Answer
from bot.config import Settings

log = logging.getLogger(__name__)


def exchange_fields(answer: Answer, question: str) -> dict:
    """The store's exchange columns for an Answer (the store scrubs PII and hashes the user)."""
    return {
        "question": question,
        "answer": answer.text,
        "domain": answer.domain,
        "kind": answer.kind,
        "router_scores": answer.route.scores,
        "chosen_by": answer.route.method,
        "citations": [c.chunk_id for c in answer.citations],
        "adapter": answer.adapter,
        "latency_ms": round(answer.timings.get("total_s", 0.0) * 1000, 1),
        "tokens_prompt": answer.tokens.get("prompt", 0),
        "tokens_completion": answer.tokens.get("completion", 0),
        "guard_verdict": answer.guard.get("verdict"),
    }


def log_answer(settings: Settings, answer: Answer, question: str, *, source: str, store=None, **extra) -> int | None:
    """`extra`: more columns (channel, user, ...); they win over the Answer's, e.g. the latency a Slack user waited."""
    from bot.store.store import Store

    try:  # counted even if the store write below fails: the user did get this answer
        metrics.observe_answer(answer, source=source, queue_ms=extra.get("queue_ms"))
    except Exception:  # metrics must never cost an answer its log row
        log.exception("metrics: could not count the answer")
    own = store is None
    store = store or Store.from_settings(settings)
    try:
        return store.log_exchange(source=source, **{**exchange_fields(answer, question), **extra})
    finally:
        if own and hasattr(store, "close"):
            store.close()
