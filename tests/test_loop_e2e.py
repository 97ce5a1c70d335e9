"""The whole feedback loop, end to end, on the real tiny model:

1. a question arrives through the real Slack app (signed HTTP, fake Slack Web API);
2. 👍 and a correction arrive the way Slack delivers them;
3. `domainbot retrain finance` runs in its own process (a few training steps, a small eval);
4. the gate promotes the candidate for good feedback and rejects it for poisoned feedback (both are checked),
   and records why;
5. the running bot's next answer reports the live version, without a restart; a rollback is just as live.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
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
from training import metrics
from training.dataset import read_jsonl, user_text

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


LABELS = ("Bearish", "Bullish", "Neutral")
WRONG = {"Bearish": "Bullish", "Bullish": "Neutral", "Neutral": "Bearish"}  # no label maps to itself


def train_tweets(n: int) -> list[tuple[str, str]]:
    """(question as a user asks it, gold label) for the first n TFNS rows of finance's train.jsonl."""
    rows = [r for r in read_jsonl(ROOT / "domains" / "finance" / "train.jsonl") if r["task"] == "tfns_sentiment"]
    return [(user_text(r["instruction"], r.get("input")), r["output"]) for r in rows[:n]]


def give_feedback(live: LiveBot, asked: list[tuple[str, dict, str]], *, poisoned: bool) -> Counter:
    """What a user does through Slack: 👍 a right answer; 👎 and a correction (the modal) stating the gold label on
    a wrong one. Poisoned: the opposite, and the "correction" states a wrong label."""
    done: Counter = Counter()
    for i, (ts, row, gold) in enumerate(asked):
        user = f"U0USER{i % 5}"
        if (metrics.parse_label(row["answer"], LABELS) == gold) != poisoned:
            assert post_event(live.server.url, reaction("+1", channel=CHANNEL, ts=row["message_ts"], user=user))[0] == 200
            done["up"] += 1
            done["up_guarded"] += row["guard_verdict"] in ("quoted", "no-sources")  # a quote is not learned from
            continue
        down = block_action("feedback_down", str(row["id"]), channel=CHANNEL, message_ts=row["message_ts"],
                            thread_ts=ts, user=user)  # fmt: skip
        assert post_interaction(live.server.url, down)[0] == 200
        label = WRONG[gold] if poisoned else gold
        values = {"correction": {"text": {"type": "plain_text_input", "value": label}}}
        assert post_interaction(live.server.url, view_submission("correction", str(row["id"]), values, user=user))[0] == 200
        done["corrected"] += 1
    events = done["up"] + 2 * done["corrected"]
    live.slack.wait_for(lambda: len(live.store.feedback("finance")) >= events, what="the feedback to be stored")
    return done


def ask_tweets(live: LiveBot, n: int, adapter: str) -> list[tuple[str, dict, str]]:
    asked = []
    for question, gold in train_tweets(n):
        ts, row = live.ask(f"<@{BOT_USER_ID}> finance: {question}")
        assert (row["domain"], row["adapter"], row["chosen_by"]) == ("finance", adapter, "explicit")
        asked.append((ts, row, gold))
    return asked


RETRAIN = ("--steps", "14", "--epochs", "3", "--lr", "1e-3", "--eval-limit", "24", "--eval-task", "tfns_sentiment",
           "--replay-task", "tfns_sentiment", "--margin", "0.01", "--kto-steps", "0", "--test-limit", "0")  # fmt: skip


def test_good_feedback_is_promoted_and_the_bot_hot_reloads(live: LiveBot) -> None:
    """Base live (it never answers a tweet with a label): 👍/👎 + corrections through Slack, one retrain, and the
    gate must promote (a significant gain on the paired items); the next answer is on v1, after rollback on base."""
    adapters_dir = live.settings.domains_dir / "finance" / "adapters"
    # 1. Questions arrive through the Slack app and are answered on the live adapter (none yet: base).
    asked = ask_tweets(live, 10, "base")
    # 2. Feedback the way Slack delivers it: a reaction, a button, the correction modal.
    done = give_feedback(live, asked, poisoned=False)
    kinds = Counter(f["kind"] for f in live.store.feedback("finance"))
    assert kinds == Counter(reaction=done["up"], button=done["corrected"], correction=done["corrected"])

    # 3. retrain, in its own process, as an operator (or the worker) would run it.
    done_cli = retrain_cli(live.settings, *RETRAIN)
    print(done_cli.stdout, done_cli.stderr[-2000:])
    assert done_cli.returncode == 0, done_cli.stderr[-3000:]

    # 4. The verdict this feedback must get, with its numbers, is recorded.
    [run] = live.store.runs("finance")
    assert run["status"] == "promoted", run["reason"]
    assert run["reason"].startswith("significant gain on tfns_sentiment") and run["candidate_version"] == "v1"
    dev = run["config"]["verdict"]["dev"]["tfns_sentiment"]
    assert dev["n"] == 24 and dev["wins"] > dev["losses"] and dev["p_value"] < 0.05 and dev["ci_low"] > 0
    # every correction taught, and every 👍 whose text the model wrote (not a quote the guard put in its place)
    assert run["n_feedback_examples"] == done["corrected"] + done["up"] - done["up_guarded"]
    assert f"finance: {run['status']}" in done_cli.stdout
    assert adapters.current(adapters_dir).version == "v1"

    # 5. The running bot (never restarted) answers the next question on the promoted version, then rolls back.
    _, after = live.ask(f"<@{BOT_USER_ID}> finance: {TWEET}")
    assert after["adapter"] == "v1"
    print(f"\nloop: gate {run['status']} ({run['reason']}); next answer on {after['adapter']}: {after['answer']!r}")
    assert adapters.rollback(adapters_dir) == "base"
    _, rolled = live.ask(f"<@{BOT_USER_ID}> finance: {TWEET}")
    assert rolled["adapter"] == "base"


def test_poisoned_feedback_is_rejected_and_the_live_adapter_keeps_serving(live: LiveBot) -> None:
    """The shipped adapter live (right on most tweets); every vote inverted and every "correction" a wrong label, through Slack: the gate
    must reject the candidate, and the bot keeps answering on the live version with its bytes untouched."""
    shipped = adapters.current(ROOT / "domains" / "finance" / "adapters")
    if shipped is None:
        pytest.skip("needs the shipped finance adapter as the good live version")
    adapters_dir = live.settings.domains_dir / "finance" / "adapters"
    shutil.copytree(shipped.path, adapters_dir / "v1")
    adapters.promote(adapters_dir, "v1")
    before = (adapters_dir / "v1" / adapters.ADAPTER_FILE).read_bytes()

    asked = ask_tweets(live, 10, "v1")
    done = give_feedback(live, asked, poisoned=True)
    assert done["corrected"] >= 6  # the live adapter is mostly right, so most answers got a wrong "correction"
    done_cli = retrain_cli(live.settings, *RETRAIN)
    print(done_cli.stdout, done_cli.stderr[-2000:])
    assert done_cli.returncode == 0, done_cli.stderr[-3000:]

    [run] = live.store.runs("finance")
    assert run["status"] == "rejected" and run["candidate_version"] == "v2", run["reason"]
    dev = run["config"]["verdict"]["dev"]["tfns_sentiment"]
    assert not (dev["p_value"] < 0.05 and dev["ci_low"] > 0)  # no significant gain, whatever the other reasons
    assert adapters.current(adapters_dir).version == "v1"
    assert (adapters_dir / "v1" / adapters.ADAPTER_FILE).read_bytes() == before
    gate = adapters.AdapterVersion("v2", adapters_dir / "v2").meta["gate"]  # the candidate keeps its verdict
    assert (gate["promoted"], gate["reason"]) == (False, run["reason"]) and gate["dev"] == run["config"]["verdict"]["dev"]
    _, after = live.ask(f"<@{BOT_USER_ID}> finance: {TWEET}")
    assert after["adapter"] == "v1"
    print(f"\nloop (poisoned): gate {run['status']} ({run['reason']})")
