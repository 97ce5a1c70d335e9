"""Prometheus metrics (bot.metrics): scraped over real HTTP and parsed with prometheus_client's own parser.

The registry is one per process and other tests answer questions too, so each test compares a scrape taken
before with one taken after and checks the difference against what it sent (and the store's rows)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot import metrics
from bot.answer import Answerer
from bot.config import Settings
from bot.slack.ingress import SlackHTTPServer
from bot.store.store import Store
from bot.testing.slack_bot import start_bot
from bot.testing.slack_kit import BOT_USER_ID, CHANNEL, SIGNING_SECRET, app_mention, post_event

Samples = dict[tuple[str, frozenset], float]


def scrape(url: str) -> tuple[Samples, str]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        content_type = resp.headers["Content-Type"]
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out, content_type


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture()
def metrics_url():
    server, thread = metrics.start_metrics_server(0, host="127.0.0.1")
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(5)


# ---------------------------------------------------------------- the store's facts (no model)


def test_feedback_runs_and_gate_verdicts_come_from_the_store_at_scrape_time(tmp_path: Path, metrics_url: str):
    store = Store(tmp_path / "m.db")
    fields = {"router_scores": {}, "chosen_by": "router", "citations": [], "kind": "answer", "latency_ms": 1.0}
    legal = store.log_exchange(source="chat", question="q1", answer="a1", domain="legal", adapter="v0003", **fields)
    medical = store.log_exchange(source="chat", question="q2", answer="a2", domain="medical", adapter="base", **fields)
    store.add_feedback(legal, "button", "+1", user="U1", event_key="e1")
    store.add_feedback(legal, "reaction", "+1", user="U2", event_key="e2")
    store.add_feedback(legal, "reaction", "-1", user="U3", event_key="e3")
    store.add_feedback(medical, "correction", "it is autosomal dominant", user="U1", event_key="e4")
    store.add_feedback(legal, "button", "+1", user="U1", event_key="e1")  # a retry: counted once
    for status in ("promoted", "rejected", "rejected"):
        store.finish_run(store.start_run("legal", current_version="v0002"), status=status, reason="test")
    store.start_run("medical", current_version="base")  # still running: a run, not a verdict

    metrics.watch_store(store)
    try:
        samples, _ = scrape(metrics_url)
    finally:
        metrics.STORE.forget(store)
        store.close()

    assert value(samples, "domainbot_store_up") == 1
    fb = "domainbot_feedback_total"
    assert value(samples, fb, domain="legal", adapter="v0003", kind="button", vote="up") == 1
    assert value(samples, fb, domain="legal", adapter="v0003", kind="reaction", vote="up") == 1
    assert value(samples, fb, domain="legal", adapter="v0003", kind="reaction", vote="down") == 1
    assert value(samples, fb, domain="medical", adapter="base", kind="correction", vote="") == 1
    assert total(samples, fb) == 4  # the four distinct event keys inserted above
    assert value(samples, "domainbot_retrain_runs_total", domain="legal", status="promoted") == 1
    assert value(samples, "domainbot_retrain_runs_total", domain="legal", status="rejected") == 2
    assert value(samples, "domainbot_retrain_runs_total", domain="medical", status="running") == 1
    assert value(samples, "domainbot_gate_verdicts_total", domain="legal", verdict="promoted") == 1
    assert value(samples, "domainbot_gate_verdicts_total", domain="legal", verdict="rejected") == 2
    assert total(samples, "domainbot_gate_verdicts_total", domain="medical") == 0


def test_an_unreadable_store_reports_store_up_0_and_the_other_metrics_still_come(tmp_path: Path, metrics_url: str):
    store = Store(tmp_path / "m.db")
    store.close()  # every query now fails
    metrics.watch_store(store)
    try:
        samples, _ = scrape(metrics_url)
    finally:
        metrics.STORE.forget(store)
    assert value(samples, "domainbot_store_up") == 0
    assert ("domainbot_queue_depth", frozenset()) in samples
    assert total(samples, "domainbot_feedback_total") == 0


def test_the_metrics_port_setting_is_checked():
    assert metrics.port_from_env({}) is None
    assert metrics.port_from_env({metrics.PORT_ENV: " "}) is None
    assert metrics.port_from_env({metrics.PORT_ENV: "9464"}) == 9464
    for bad in ("http", "-1", "70000"):
        with pytest.raises(ValueError, match="DOMAINBOT_METRICS_PORT must be a TCP port number"):
            metrics.port_from_env({metrics.PORT_ENV: bad})


# ---------------------------------------------------------------- the Slack HTTP server


class _BrokenApp:
    """A listener bug: bolt's dispatch raising."""

    def dispatch(self, request: object) -> object:
        raise RuntimeError("bug")


def test_metrics_is_served_unsigned_on_get_only_and_a_dispatch_failure_counts_as_an_error():
    server = SlackHTTPServer(("127.0.0.1", 0), _BrokenApp(), SIGNING_SECRET)  # type: ignore[arg-type]
    server.serve_in_thread()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        before, content_type = scrape(base + "/metrics")  # no signature headers at all
        assert content_type == metrics.CONTENT_TYPE and content_type.startswith("text/plain; version=")
        status, _ = post_event(server.url, app_mention("<@UBOT> hi"))
        assert status == 500
        request = urllib.request.Request(base + "/metrics", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        assert err.value.code == 404
        after, _ = scrape(base + "/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert value(after, "domainbot_errors_total", kind="dispatch") - value(before, "domainbot_errors_total",
                                                                            kind="dispatch") == 1
    for outcome in ("accepted", "dispatched"):
        delta = value(after, "domainbot_slack_requests_total", outcome=outcome) - value(
            before, "domainbot_slack_requests_total", outcome=outcome)
        assert delta == (1 if outcome == "accepted" else 0)  # accepted, then bolt failed: never dispatched


# ---------------------------------------------------------------- answers through the real Slack app


def _is_final(msg: dict) -> bool:
    blocks = json.dumps(msg.get("blocks") or [])
    return "domainbot_answer" in blocks or "pick_domain:" in blocks


@pytest.mark.slow
def test_answers_and_an_abstention_are_counted_per_domain(settings: Settings, quick: Answerer, tmp_path: Path):
    bot = start_bot(settings, quick, db_path=tmp_path / "slack.db")
    metrics.watch_store(bot.store)
    url = bot.url.replace("/slack/events", "/metrics")
    questions = ["<@UBOT> medical: Is Huntington disease inherited?", "<@UBOT> medical: what causes asthma?",
                 "<@UBOT> medical: is cystic fibrosis inherited?", "<@UBOT> book the meeting room for 3pm"]
    try:
        before, _ = scrape(url)
        threads = []
        for i, text in enumerate(questions):  # one user each: no per-user queue cap applies
            ts = bot.slack.add_message(CHANNEL, text, user=f"U0ASKER{i}")
            assert post_event(bot.url, app_mention(text, ts=ts, user=f"U0ASKER{i}"))[0] == 200
            threads.append(ts)
        for ts in threads:
            bot.slack.wait_for(lambda ts=ts: [m for m in bot.slack.messages(CHANNEL) if m.get("thread_ts") == ts
                                              and m.get("user") == BOT_USER_ID and _is_final(m)],
                               what=f"the answer in {ts}")
        bot.slack.wait_for(lambda: not bot.ctx.questions.open(), what="every question finished")
        after, _ = scrape(url)
        rows = bot.store.exchanges()
    finally:
        metrics.STORE.forget(bot.store)
        bot.stop()

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert len(rows) == len(questions)
    assert delta("domainbot_answers_total", source="slack") == len(questions)
    assert delta("domainbot_router_abstentions_total", source="slack") == 1
    assert delta("domainbot_answers_total", domain="none", kind="abstain") == 1
    medical = [r for r in rows if r["domain"] == "medical"]
    assert len(medical) == 3
    answered = [r for r in medical if r["kind"] == "answer"]
    for adapter in {r["adapter"] for r in medical}:
        mine = [r for r in answered if r["adapter"] == adapter]
        assert delta("domainbot_answer_seconds_count", domain="medical", adapter=adapter) == len(
            [r for r in medical if r["adapter"] == adapter])
        assert delta("domainbot_first_token_seconds_count", domain="medical", adapter=adapter) == len(mine)
    assert delta("domainbot_answer_seconds_sum", domain="medical") > 0
    for verdict in {r["guard_verdict"] for r in medical if r["guard_verdict"]}:
        assert delta("domainbot_guard_verdicts_total", domain="medical", verdict=verdict) == len(
            [r for r in medical if r["guard_verdict"] == verdict])
    assert delta("domainbot_guard_verdicts_total", domain="medical") == len([r for r in medical if r["guard_verdict"]])
    assert delta("domainbot_queue_wait_seconds_count") == len(questions)
    assert delta("domainbot_queue_depth") == 0  # all answered: the line is empty again
    assert delta("domainbot_slack_requests_total", outcome="accepted") == len(questions)
    assert value(after, "domainbot_questions", status="answered") == len(questions)  # read from this bot's store


def test_serve_refuses_a_bad_metrics_port_before_loading_anything(monkeypatch: pytest.MonkeyPatch, capsys):
    from argparse import Namespace

    from bot.slack.cli import cmd_serve

    monkeypatch.setenv(metrics.PORT_ENV, "nine")
    settings = Settings(slack_bot_token="xoxb-test", slack_signing_secret="secret")
    assert cmd_serve(Namespace(mode="http", port=None, host="127.0.0.1"), settings) == 2
    assert "DOMAINBOT_METRICS_PORT must be a TCP port number (0-65535), got 'nine'" in capsys.readouterr().err


def test_the_retrain_worker_serves_the_stores_facts_on_its_metrics_port(tmp_path: Path, monkeypatch):
    import threading
    import time

    from bot.testing.net import free_port
    from training import worker

    db = tmp_path / "w.db"
    with Store(db) as store:
        store.finish_run(store.start_run("legal", current_version="v0002"), status="rejected", reason="test")
    port = free_port()
    monkeypatch.setenv(metrics.PORT_ENV, str(port))
    stop = threading.Event()
    passes: list = []
    thread = threading.Thread(target=worker.loop, args=(Settings(db_path=db),),
                              kwargs={"interval_s": 60, "min_examples": 10**6, "stop": stop,
                                      "on_pass": passes.append}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not passes and time.monotonic() < deadline:
            time.sleep(0.05)
        samples, _ = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop.set()
        thread.join(30)
    assert passes and not thread.is_alive()
    assert value(samples, "domainbot_store_up") == 1
    assert value(samples, "domainbot_gate_verdicts_total", domain="legal", verdict="rejected") == 1
    with pytest.raises(urllib.error.URLError):  # the port closes with the worker
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_the_retrain_worker_refuses_a_bad_metrics_port_clearly(tmp_path: Path, monkeypatch):
    from bot.errors import UserFacingError
    from training import worker

    monkeypatch.setenv(metrics.PORT_ENV, "not-a-port")
    with pytest.raises(UserFacingError, match="DOMAINBOT_METRICS_PORT"):
        worker.loop(Settings(db_path=tmp_path / "w.db"), interval_s=60)
    assert not (tmp_path / "w.db").exists()  # refused before the store was opened
