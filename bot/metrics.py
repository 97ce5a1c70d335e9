"""Prometheus metrics: one registry for the process, and the store's facts read at scrape time.

What happens in this process (answers, their timings, queue depth, abstentions, guard verdicts, errors) is
counted here as it happens. What is shared by every replica and the worker (feedback, retrain runs and gate
verdicts) lives in the store, so `StoreCollector` reads it with a few grouped, read-only queries per scrape:
every process then reports the same truth, and a restart loses no count.

Served at `/metrics` on the Slack HTTP server (bot.slack.ingress), and by `start_metrics_server` on its own port
for Socket Mode and the worker (`DOMAINBOT_METRICS_PORT`, off when unset).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PORT_ENV = "DOMAINBOT_METRICS_PORT"
CONTENT_TYPE = CONTENT_TYPE_LATEST
MAX_SERIES = 1000  # a bound on each store query: an operator's scrape must stay cheap whatever the history
NONE = "none"  # the label of "no domain" (an abstention) and of unknown values

REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds: the target is 0.8 s to first token; answers on 2 CPU cores take a few seconds.
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 60.0)

FIRST_TOKEN = Histogram("domainbot_first_token_seconds", "Time from question to the model's first token.",
                        ["domain", "adapter"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
ANSWER_TIME = Histogram("domainbot_answer_seconds", "Total time to answer a question (retrieval, generation, guard).",
                        ["domain", "adapter"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
QUEUE_WAIT = Histogram("domainbot_queue_wait_seconds", "Time a Slack question waited in line before answering.",
                       buckets=_LATENCY_BUCKETS, registry=REGISTRY)
ANSWERS = Counter("domainbot_answers", "Exchanges answered, by domain and kind (answer, abstain, refused, ...).",
                  ["domain", "kind", "source"], registry=REGISTRY)
ABSTENTIONS = Counter("domainbot_router_abstentions", "Questions the router could not place in a domain.",
                      ["source"], registry=REGISTRY)
GUARD = Counter("domainbot_guard_verdicts", "Grounding-guard verdicts on answers.", ["domain", "verdict"],
                registry=REGISTRY)
ERRORS = Counter("domainbot_errors", "Errors while serving, by kind.", ["kind"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("domainbot_queue_depth", "Slack questions in line: waiting plus being answered.",
                    registry=REGISTRY)
SLACK_REQUESTS = Counter("domainbot_slack_requests", "Requests to the Slack HTTP endpoint, by outcome "
                         "(accepted, rejected, malformed, dispatched, unhandled, app_rate_limited).", ["outcome"],
                         registry=REGISTRY)
QUEUE_REFUSED = Counter("domainbot_queue_refused", "Slack questions refused because the line was full.",
                        ["reason"], registry=REGISTRY)


def _label(value: object) -> str:
    return str(value) if value not in (None, "") else NONE


def _source(source: str) -> str:
    """"slack:mention" -> "slack": one series per front end, not per Slack surface."""
    return source.split(":", 1)[0] or NONE


def observe_answer(answer: Any, *, source: str, queue_ms: float | None = None) -> None:
    """Count one answered exchange (a bot.answer.Answer); called where every front end logs it."""
    domain, adapter = _label(answer.domain), _label(answer.adapter)
    timings = answer.timings or {}
    if timings.get("first_token_s"):  # 0 when nothing was generated (abstain, policy): not a latency
        FIRST_TOKEN.labels(domain, adapter).observe(timings["first_token_s"])
    if "total_s" in timings:
        ANSWER_TIME.labels(domain, adapter).observe(timings["total_s"])
    if queue_ms is not None:
        QUEUE_WAIT.observe(queue_ms / 1000)
    ANSWERS.labels(domain, _label(answer.kind), _source(source)).inc()
    if answer.kind == "abstain":
        ABSTENTIONS.labels(_source(source)).inc()
    verdict = (answer.guard or {}).get("verdict")
    if verdict:
        GUARD.labels(domain, str(verdict)).inc()


def count_error(kind: str) -> None:
    """One error while serving: `kind` is a short fixed word (backend_unavailable, internal, dispatch, ...)."""
    ERRORS.labels(kind).inc()


# ----------------------------------------------------------------------------------------------
# The store's facts, read at scrape time

_FEEDBACK_SQL = (
    "SELECT e.domain AS domain, e.adapter AS adapter, f.kind AS kind,"
    " CASE WHEN f.kind IN ('reaction', 'button') THEN f.value ELSE '' END AS vote, COUNT(*) AS n"
    " FROM feedback f JOIN exchanges e ON e.id = f.exchange_id"
    " GROUP BY e.domain, e.adapter, f.kind, CASE WHEN f.kind IN ('reaction', 'button') THEN f.value ELSE '' END"
    f" LIMIT {MAX_SERIES}"
)
_RUNS_SQL = f"SELECT domain, status, COUNT(*) AS n FROM training_runs GROUP BY domain, status LIMIT {MAX_SERIES}"
_QUESTIONS_SQL = f"SELECT status, COUNT(*) AS n FROM questions GROUP BY status LIMIT {MAX_SERIES}"
_VOTES = {"+1": "up", "-1": "down"}


class StoreCollector(Collector):
    """Feedback per domain and adapter, retrain runs and gate verdicts per domain, from the shared store.

    One collector per registry; `watch` points it at the process's store (the latest wins). A store that
    fails to answer yields `domainbot_store_up 0` instead of failing the whole scrape."""

    def __init__(self) -> None:
        self._store: Any = None
        self._lock = threading.Lock()

    def watch(self, store: Any) -> None:
        with self._lock:
            self._store = store

    def forget(self, store: Any) -> None:
        with self._lock:
            if self._store is store:
                self._store = None

    def collect(self) -> Iterator[Any]:
        with self._lock:
            store = self._store
        if store is None:
            return
        up = GaugeMetricFamily("domainbot_store_up", "1 when the store answered this scrape's queries.")
        try:
            feedback, runs, questions = (store.query(_FEEDBACK_SQL), store.query(_RUNS_SQL),
                                         store.query(_QUESTIONS_SQL))
        except Exception as err:  # a locked or closed store must not take the other metrics down
            log.warning("metrics: store not readable: %s", type(err).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        fb = CounterMetricFamily("domainbot_feedback", "Feedback recorded, per domain and adapter version "
                                 "(vote: up/down for reactions and buttons).", labels=["domain", "adapter", "kind",
                                                                                       "vote"])
        for r in feedback:
            fb.add_metric([_label(r["domain"]), _label(r["adapter"]), r["kind"], _VOTES.get(r["vote"] or "", "")],
                          r["n"])
        yield fb
        tr = CounterMetricFamily("domainbot_retrain_runs", "Retrain runs per domain, by status (promoted and "
                                 "rejected are the gate's verdicts).", labels=["domain", "status"])
        gate = CounterMetricFamily("domainbot_gate_verdicts", "Evaluation-gate verdicts per domain.",
                                   labels=["domain", "verdict"])
        for r in runs:
            tr.add_metric([_label(r["domain"]), _label(r["status"])], r["n"])
            if r["status"] in ("promoted", "rejected"):
                gate.add_metric([_label(r["domain"]), r["status"]], r["n"])
        yield tr
        yield gate
        qs = GaugeMetricFamily("domainbot_questions", "Durable Slack questions in the store, by status.",
                               labels=["status"])
        for r in questions:
            qs.add_metric([_label(r["status"])], r["n"])
        yield qs


STORE = StoreCollector()
REGISTRY.register(STORE)


def watch_store(store: Any) -> None:
    """Report this store's feedback and retrain facts on every scrape of this process."""
    STORE.watch(store)


def exposition() -> bytes:
    """The text format of every metric of this process, for an HTTP handler."""
    return generate_latest(REGISTRY)


def port_from_env(env: dict[str, str] | None = None) -> int | None:
    """`DOMAINBOT_METRICS_PORT`: None when unset or empty (off); ValueError with a clear message when not a port."""
    raw = (os.environ if env is None else env).get(PORT_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise ValueError(f"{PORT_ENV} must be a TCP port number (0-65535), got {raw!r}")
    return int(raw)


def start_metrics_server(port: int, *, host: str = "0.0.0.0", store: Any = None) -> Any:
    """Serve /metrics on its own port (Socket Mode, the retrain worker); returns (server, thread).
    Port 0 picks a free one: `server.server_address[1]`."""
    if store is not None:
        watch_store(store)
    return start_http_server(port, addr=host, registry=REGISTRY)
