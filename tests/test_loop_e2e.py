"""The whole feedback loop, end to end, on the real tiny model:

1. a question arrives through the real Slack app (signed HTTP, fake Slack Web API);
2. 👍 and a correction arrive the way Slack delivers them;
3. `domainbot retrain finance` runs in its own process (a few training steps, a small eval);
4. the gate promotes the new version, or rejects it and says why;
5. the running bot's next answer reports the live version, without a restart.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot import adapters
from bot.answer import Answerer
from bot.domains import discover
from bot.retrieval.index import Retriever
from bot.slack.app import build
from bot.slack.ingress import start_http
from bot.store.store import Store
from bot.testing.slack_kit import (
    BOT_TOKEN,
    BOT_USER_ID,
    CHANNEL,
    SIGNING_SECRET,
    FakeSlack,
    app_mention,
    block_action,
    post_event,
    post_interaction,
    reaction,
    view_submission,
)  # fmt: skip
from bot.testing.workspace import linked_workspace

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TWEET = "What is the sentiment of this tweet: $AAPL beats earnings estimates, shares jump 5%"


class LiveBot:
    """The real Slack app over HTTP, answering with the real model; the fake Slack records its posts."""

    def __init__(self, settings, runtime, embedder) -> None:
        self.slack = FakeSlack().start()
        self.settings = settings.with_(
            slack_api_url=self.slack.api_url, slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET
        )
        discovery = discover(self.settings.domains_dir)
        self.answerer = Answerer(self.settings, discovery, Retriever(self.settings, embedder), runtime)
        self.store = Store.from_settings(self.settings)
        self.app, self.ctx = build(self.settings, self.answerer, self.store)
        self.server = start_http(self.app, SIGNING_SECRET, host="127.0.0.1", port=0)

    def ask(self, text: str) -> tuple[str, dict]:
        """Post a mention; return (question ts, the exchange row once the final answer is linked to it)."""
        ts = self.slack.add_message(CHANNEL, text, user="U0ALICE")
        assert post_event(self.server.url, app_mention(text, channel=CHANNEL, ts=ts))[0] == 200

        def answered() -> dict | None:
            rows = [r for r in self.store.exchanges() if r["thread_ts"] == ts and r["message_ts"]]
            return rows[-1] if rows else None

        return ts, self.slack.wait_for(answered, what="the answer to be logged")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.ctx.close()
        self.store.close()
        self.slack.stop()


@pytest.fixture
def live(base_settings, built_indexes, runtime, embedder, tmp_path) -> Iterator[LiveBot]:
    domains, indexes = linked_workspace(tmp_path, built_indexes)
    settings = base_settings.with_(
        domains_dir=domains,
        indexes_dir=indexes,
        db_path=tmp_path / "loop.db",
        max_tokens=8,
        prompt_budget=320,
    )
    bot = LiveBot(settings, runtime, embedder)
    yield bot
    bot.close()


def retrain_cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "DOMAINBOT_DOMAINS_DIR": str(settings.domains_dir),
        "DOMAINBOT_INDEXES_DIR": str(settings.indexes_dir), "DOMAINBOT_DB": str(settings.db_path),
        "DOMAINBOT_THREADS": "2",
    }  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "bot", "retrain", "finance", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def test_question_feedback_retrain_gate_and_hot_reload(live: LiveBot) -> None:
    adapters_dir = live.settings.domains_dir / "finance" / "adapters"
    # 1. Questions arrive through the Slack app and are answered on the live adapter (none yet: base).
    liked_ts, liked = live.ask(f"<@{BOT_USER_ID}> finance: {TWEET}")
    fixed_ts, fixed = live.ask(
        f"<@{BOT_USER_ID}> finance: What is the sentiment of this tweet: Stocks slide as Fed signals more rate hikes"
    )
    assert (liked["domain"], liked["adapter"], liked["chosen_by"]) == ("finance", "base", "explicit")

    # 2. 👍 as a reaction on the first answer; 👎 + a correction (the modal) on the second.
    post_event(live.server.url, reaction("+1", channel=CHANNEL, ts=liked["message_ts"], user="U0ALICE"))
    down = block_action("feedback_down", str(fixed["id"]), channel=CHANNEL, message_ts=fixed["message_ts"],
                        thread_ts=fixed_ts, user="U0BOB")  # fmt: skip
    assert post_interaction(live.server.url, down)[0] == 200
    values = {"correction": {"text": {"type": "plain_text_input", "value": "Bearish"}}}
    assert (
        post_interaction(
            live.server.url, view_submission("correction", str(fixed["id"]), values, user="U0BOB")
        )[0]
        == 200
    )
    live.slack.wait_for(lambda: len(live.store.feedback("finance")) >= 3, what="the feedback to be stored")
    kinds = sorted((f["kind"], f["value"]) for f in live.store.feedback("finance"))
    assert kinds == [("button", "-1"), ("correction", "Bearish"), ("reaction", "+1")]

    # 3. retrain, in its own process, as an operator (or the worker) would run it.
    done = retrain_cli(
        live.settings, "--steps", "2", "--eval-limit", "6", "--eval-task", "tfns_sentiment",
        "--replay-task", "tfns_sentiment", "--margin", "0.01", "--kto-steps", "0", "--test-limit", "0",
    )  # fmt: skip
    print(done.stdout, done.stderr[-2000:])
    assert done.returncode == 0, done.stderr[-3000:]

    # 4. The gate's verdict, with its reason, is recorded.
    [run] = live.store.runs("finance")
    assert run["status"] in ("promoted", "rejected"), run
    assert run["reason"] and run["candidate_version"] == "v1"
    # a 👍 teaches only an answer the model wrote: not one the guard replaced by a quote or "no sources"
    verdict = live.store.query("SELECT guard_verdict FROM exchanges WHERE id = ?", (liked["id"],))[0]["guard_verdict"]
    correction = next(f["id"] for f in live.store.feedback_for(fixed["id"]) if f["kind"] == "correction")
    expected = [f"exchange-{fixed['id']}-correction-{correction}"]
    expected += [] if verdict in ("quoted", "no-sources") else [f"exchange-{liked['id']}"]
    assert run["n_feedback_examples"] == len(expected) and run["n_replay_examples"] >= 16
    assert sorted(run["example_ids"]) == sorted(expected)
    assert set(run["metrics_candidate"]["tasks"]) == {"tfns_sentiment"}
    assert f"finance: {run['status']}" in done.stdout
    live_version = adapters.current(adapters_dir)
    expected = "v1" if run["status"] == "promoted" else "base"
    assert (live_version.version if live_version else "base") == expected

    # 5. The running bot (never restarted) answers the next question on the live version.
    _, after = live.ask(f"<@{BOT_USER_ID}> finance: {TWEET}")
    assert after["adapter"] == expected
    print(f"\nloop: gate {run['status']} ({run['reason']}); next answer on {after['adapter']}")
    if run["status"] == "promoted":  # and rollback is just as live
        assert adapters.rollback(adapters_dir) == "base"
        _, rolled = live.ask(f"<@{BOT_USER_ID}> finance: {TWEET}")
        assert rolled["adapter"] == "base"
