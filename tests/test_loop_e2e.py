"""The whole feedback loop, end to end, on the real tiny model, with no human in it:

1. simulated users (bench/feedback_loop.py) ask through the real Slack app (signed HTTP, fake Slack Web API) and
   react judged against the gold label: 👍 right, 👎 + a `correction:` reply on wrong, some 🙈 opt-outs;
2. the worker's pass sees enough new feedback and retrains (SFT, plus TRL KTO where votes are usable), then the
   job gate decides;
3. good feedback: the candidate beats the live adapter significantly on the same dev items -> promoted, and the
   running bot's next answer is on the new version (hot reload); poisoned feedback (every vote inverted) ->
   rejected, the live version stays; a rollback shows on the answer after that.

The yardstick here is tfns_sentiment (a short-answer task, so the test stays minutes, not an hour); the bench
runs the same loop on the `<domain>_qa` job. The oracle is the gold labels the simulated users judge with, and
the verdict itself is checked against an exact binomial computed here from the recorded paired counts.
"""

from __future__ import annotations

import sys
from functools import partial
from math import comb
from pathlib import Path

import pytest

from bot import adapters
from bot.answer import Answerer
from bot.domains import discover
from bot.retrieval.index import Retriever
from bot.testing.slack_bot import RunningBot, start_bot
from bot.testing.slack_kit import BOT_USER_ID, CHANNEL, app_mention, post_event
from bot.testing.workspace import linked_workspace
from training import retrain as rt
from training import worker

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.feedback_loop import SimConfig, Simulator  # noqa: E402

TASK = "tfns_sentiment"
TWEET = "What is the sentiment of this tweet: $AAPL beats earnings estimates, shares jump 5%"


def binom_tail(wins: int, losses: int) -> float:
    n = wins + losses
    return sum(comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0


@pytest.fixture
def loop(base_settings, built_indexes, runtime, embedder, tmp_path):
    domains, indexes = linked_workspace(tmp_path, built_indexes)
    settings = base_settings.with_(domains_dir=domains, indexes_dir=indexes, db_path=tmp_path / "loop.db",
                                   max_tokens=8, prompt_budget=320)  # fmt: skip
    answerer = Answerer(settings, discover(domains), Retriever(settings, embedder), runtime)
    bot = start_bot(settings, answerer)
    yield settings, answerer, bot
    bot.stop()


def next_answer_adapter(bot: RunningBot) -> str:
    text = f"<@{BOT_USER_ID}> finance: {TWEET}"
    ts = bot.slack.add_message(CHANNEL, text, user="U0CHECK")
    assert post_event(bot.url, app_mention(text, channel=CHANNEL, ts=ts, user="U0CHECK"))[0] == 200
    row = bot.slack.wait_for(
        lambda: next((r for r in bot.store.exchanges("finance") if r["thread_ts"] == ts and r["message_ts"]), None),
        what="the check answer",
    )
    return row["adapter"]


CFG = rt.RetrainConfig(
    max_steps=30, lr=1e-3, batch_size=8, micro_batch=4, feedback_repeats=3, replay_per_example=0.5, min_replay=8,
    replay_tasks=(TASK,), eval_limit=24, eval_tasks=(TASK,), test_limit=0, kto_steps=4, kto_lr=1e-4,
    refit_router=False, threads=2, verify_with=1,
)  # fmt: skip


def test_good_feedback_is_promoted_and_poisoned_feedback_rejected_by_the_worker(loop) -> None:
    settings, answerer, bot = loop
    adapters_dir = settings.domains_dir / "finance" / "adapters"
    run_worker = partial(worker.run_once, settings, bot.store, min_examples=20, cfg=CFG,
                         retrain_fn=partial(rt.retrain, answerer=answerer))  # fmt: skip
    assert run_worker() == []  # nothing new yet: the worker waits

    # 1. good feedback on the base model's answers
    good = Simulator(bot, discover(settings.domains_dir).get("finance"),
                     SimConfig("finance", task=TASK, questions=40, correct_share=1.0, optout_share=0.1, seed=1))
    stats = good.run()
    assert stats.asked == 40 and stats.events >= 80 and stats.optouts >= 1
    assert {r["kind"] for r in bot.store.feedback("finance")} >= {"reaction", "correction", "opt_out"}

    [out] = run_worker()
    print(f"\ngood feedback: {out.status} ({out.reason}) kto={out.verdict.get('kto')}")
    dev = out.verdict["dev"][TASK]
    assert out.status == "promoted", out.reason
    assert dev["p_value"] == pytest.approx(binom_tail(dev["wins"], dev["losses"])) and dev["p_value"] < 0.05
    assert dev["ci_low"] > 0
    # Slack retrieves passages for a tweet and the guard quotes them: no 👍 or 👎 answer is the model's own words,
    # so neither SFT nor KTO learns from them; only the users' corrections train (the rule, exercised for real).
    assert {r["guard_verdict"] for r in bot.store.exchanges("finance")} == {"quoted"}
    assert "kto" not in out.verdict and out.example_ids and all("-correction-" in i for i in out.example_ids)
    [run] = bot.store.runs("finance")
    assert (run["status"], run["candidate_version"], run["config"]["verdict"]["dev"]) == ("promoted", "v1", out.verdict["dev"])
    assert next_answer_adapter(bot) == "v1"  # the running bot hot-reloaded

    # 2. poisoned feedback: every vote inverted, corrections with wrong labels
    bad = Simulator(bot, discover(settings.domains_dir).get("finance"),
                    SimConfig("finance", task=TASK, questions=24, poisoned=True, correct_share=1.0, seed=2))
    bad.run()
    [out2] = run_worker()
    print(f"poisoned feedback: {out2.status} ({out2.reason})")
    assert out2.status == "rejected" and out2.candidate_version == "v2"
    assert not out2.verdict["dev"][TASK]["significant"]
    assert adapters.current(adapters_dir).version == "v1"
    assert next_answer_adapter(bot) == "v1"

    # 3. and a rollback is just as live
    assert adapters.rollback(adapters_dir) == "base"
    assert next_answer_adapter(bot) == "base"
