"""Two `domainbot serve --http` replicas sharing one store: one event delivered to both at once is answered once.
Twice over: replicas on one host sharing a SQLite file, and replicas sharing a PostgreSQL server (the store for
several hosts; tests/pg.py). Real processes, real model, real databases; only Slack is faked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

import pytest

from bot.config import ROOT
from bot.store.store import Store
from bot.testing.net import free_port
from bot.testing.slack_kit import (
    BOT_TOKEN,
    CHANNEL,
    SIGNING_SECRET,
    FakeSlack,
    app_mention,
    new_event_id,
    post_event,
)

pytestmark = pytest.mark.slow
pytest_plugins = ("pg",)

QUESTION = "<@UBOT> What are the early symptoms of type 2 diabetes?"
OTHER = "<@UBOT> How is high blood pressure treated?"


@dataclass
class Replica:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (URLError, OSError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"{self.name} did not start in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start_replica(name: str, env: dict[str, str], tmp: Path) -> Replica:
    port = free_port()
    log = tmp / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "serve", "--http", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Replica(name, port, proc, log)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def cluster(request, built_indexes, tmp_path_factory) -> Iterator[tuple[FakeSlack, list[Replica], str]]:
    tmp = tmp_path_factory.mktemp("replicas")
    # DOMAINBOT_DB as an operator sets it: a file, or a URL (one database on the server, for these replicas).
    db = str(tmp / "shared.db") if request.param == "sqlite" else request.getfixturevalue("pg_server").create_database()
    slack = FakeSlack().start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DOMAINBOT_"))}
    env.update({
        "DOMAINBOT_DB": db, "SLACK_API_URL": slack.api_url, "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET, "DOMAINBOT_MAX_TOKENS": "8", "DOMAINBOT_PROMPT_BUDGET": "320",
        "DOMAINBOT_STREAM_INTERVAL_S": "0.2", "DOMAINBOT_RATE_LIMIT_PER_MINUTE": "1000", "DOMAINBOT_THREADS": "1",
        "DOMAINBOT_INDEXES_DIR": str(built_indexes), "DOMAINBOT_ERROR_LOG": str(tmp / "errors.log"),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    })
    replicas = [start_replica(name, env, tmp) for name in ("web.1", "web.2")]
    try:
        for r in replicas:
            r.wait_ready()
        yield slack, replicas, db
    finally:
        for r in replicas:
            r.stop()
        slack.stop()


def final_answers(slack: FakeSlack, thread_ts: str) -> list[dict]:
    """Our finished replies in that thread (not the placeholder, not a stream in progress)."""
    mine = [m for m in slack.messages(CHANNEL) if m.get("bot_id") and m.get("thread_ts") == thread_ts]
    return [m for m in mine if "▍" not in json.dumps(m) and "Searching" not in json.dumps(m)]


def opened(slack: FakeSlack, thread_ts: str) -> list:
    """Our replies opened in that thread: posted, or streamed natively."""
    return [c for c in slack.calls() if c.method in ("chat.postMessage", "chat.startStream")
            and c.args.get("thread_ts") == thread_ts]


def test_one_event_delivered_to_both_replicas_at_once_is_answered_once(cluster):
    slack, (one, two), db = cluster
    ts = slack.add_message(CHANNEL, QUESTION)
    event = app_mention(QUESTION, ts=ts, event_id=new_event_id())
    # The same event reaches web.1 and web.2 at once, neither delivery marked as a retry: only the shared
    # store's claim on the event_id can keep it to one answer (dropping retries would answer it twice).
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post_event, one.url, event)
        again = pool.submit(post_event, two.url, event)
        assert first.result()[0] == 200 and again.result()[0] == 200  # both ack: Slack must stop retrying
    answered = slack.wait_for(lambda: final_answers(slack, ts), what="the answer")
    # Slack's retry of the same event, redelivered after the answer to each replica: still nothing new (checked
    # below, once web.2 has answered something else, so a wrongful second reply had time to open).
    for r in (one, two):
        assert post_event(r.url, event, retry_num=1)[0] == 200

    # A retry header on an event web.2 has never seen is answered: it is new, whatever the header says. It also
    # shows web.2 alive, so its silence above was the shared UNIQUE key, not a crash.
    ts2 = slack.add_message(CHANNEL, OTHER)
    assert post_event(two.url, app_mention(OTHER, ts=ts2, event_id=new_event_id()), retry_num=1)[0] == 200
    slack.wait_for(lambda: final_answers(slack, ts2), what="web.2's answer to a retried new event")

    assert len(opened(slack, ts)) == 1, f"expected one reply to the event, got {len(opened(slack, ts))}"
    assert len(answered) == 1 and len(final_answers(slack, ts)) == 1
    with Store(db) as store:
        rows = [e for e in store.exchanges() if e["thread_ts"] == ts]
        assert len(rows) == 1 and rows[0]["domain"] == "medical"
        assert [e["thread_ts"] for e in store.exchanges() if e["thread_ts"] == ts2] == [ts2]
        if store.dialect == "sqlite":
            assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        else:  # both replicas answered from the server, with the events claimed there
            assert store.dialect == "postgresql" and store.count("events") >= 2
    for r in (one, two):
        assert "Traceback" not in r.log.read_text(), r.log.read_text()[-2000:]
