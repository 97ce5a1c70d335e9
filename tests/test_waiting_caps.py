"""Caps on the Slack waiting line (bot.slack.waiting): per user and overall, each refusal with its own message
that says to try again, and the refused question finished as failed (never dropped silently)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from bot import metrics
from bot.answer import Answerer
from bot.config import Settings
from bot.slack.waiting import (
    MAX_LEN_ENV,
    PER_USER_ENV,
    Ticket,
    WaitingLine,
    cap_from_env,
    line_full_message,
    user_cap_message,
)
from bot.testing.slack_bot import start_bot
from bot.testing.slack_kit import BOT_USER_ID, CHANNEL, app_mention, post_event


def ticket(user: str) -> Ticket:
    return Ticket(SimpleNamespace(user=user), reply=None)


def refused(reason: str) -> float:
    return metrics.QUEUE_REFUSED.labels(reason)._value.get()


def test_a_user_past_their_cap_is_refused_with_their_own_message_and_others_still_join():
    line = WaitingLine(1, per_user=2, max_len=10)
    a1, a2, a3, b1 = ticket("A"), ticket("A"), ticket("A"), ticket("B")
    before = refused("per_user")
    assert line.join(a1) and line.join(a2)
    assert line.refusal(a3) == user_cap_message(2)  # asked first: nothing joins
    assert len(line) == 2
    assert not line.join(a3)
    assert a3.refused == user_cap_message(2) and "again" in a3.refused
    assert line.join(b1) and b1.refused is None
    assert len(line) == 3 and refused("per_user") - before == 1
    line.leave(a1)  # one of A's is answered: A may ask again
    assert line.join(a3) and a3.refused is None


def test_a_full_line_refuses_everyone_with_the_line_message_until_one_leaves():
    line = WaitingLine(1, per_user=0, max_len=2)  # 0: no per-user cap
    first, second, third = ticket("A"), ticket("A"), ticket("B")
    before = refused("line_full")
    assert line.join(first) and line.join(second)
    assert not line.join(third)
    assert third.refused == line_full_message(2) and "try again" in third.refused
    assert third.refused != user_cap_message(0)
    assert refused("line_full") - before == 1
    line.leave(first)
    assert line.join(third)


def test_the_user_cap_message_wins_when_both_caps_apply():
    line = WaitingLine(1, per_user=1, max_len=1)
    assert line.join(ticket("A"))
    again = ticket("A")
    assert not line.join(again) and again.refused == user_cap_message(1)


def test_a_refusing_pool_leaves_no_cap_message_and_the_ticket_out_of_line():
    line = WaitingLine(1, per_user=3, max_len=10)
    t = ticket("A")
    before = refused("workers_full")
    assert not line.join(t, lambda: False)
    assert t.refused is None and len(line) == 0  # the caller falls back to its BUSY message
    assert refused("workers_full") - before == 1


def test_queue_depth_counts_joined_tickets_until_they_leave():
    depth = metrics.QUEUE_DEPTH._value.get
    start = depth()
    line = WaitingLine(1, per_user=0, max_len=0)
    tickets = [ticket(f"U{i}") for i in range(3)]
    for t in tickets:
        assert line.join(t)
    assert not line.join(ticket("X"), lambda: False)  # refused: never counted
    assert depth() - start == 3
    for t in tickets:
        line.leave(t)
    line.leave(tickets[0])  # leaving twice must not count twice
    assert depth() == start


def test_caps_come_from_the_environment_and_bad_values_are_explained(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(PER_USER_ENV, "5")
    monkeypatch.setenv(MAX_LEN_ENV, "0")
    line = WaitingLine(1)
    assert (line.per_user, line.max_len) == (5, 0)
    assert cap_from_env(PER_USER_ENV, 3, {}) == 3
    for bad in ("three", "-1", "2.5"):
        with pytest.raises(ValueError, match=f"{PER_USER_ENV} must be a whole number"):
            cap_from_env(PER_USER_ENV, 3, {PER_USER_ENV: bad})
    with pytest.raises(ValueError, match="queue caps must be 0"):
        WaitingLine(1, per_user=-1)


# ---------------------------------------------------------------- through the real Slack app


@pytest.mark.slow
def test_slack_user_over_the_cap_is_told_and_others_are_still_answered(
    settings: Settings, quick: Answerer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv(PER_USER_ENV, "2")
    monkeypatch.setenv(MAX_LEN_ENV, "0")
    # chat.update streaming: every answer starts with chat.postMessage, which is held, so the line stays full
    bot = start_bot(settings, quick, db_path=tmp_path / "slack.db", slack_streaming="update")
    gate = bot.slack.hold("chat.postMessage")
    try:
        asked: list[tuple[str, str]] = []

        def ask(user: str, text: str, in_line: int | None) -> None:
            ts = bot.slack.add_message(CHANNEL, text, user=user)
            assert post_event(bot.url, app_mention(text, ts=ts, user=user))[0] == 200
            asked.append((user, ts))
            if in_line is not None:
                bot.slack.wait_for(lambda: len(bot.ctx.line) == in_line, what=f"{in_line} questions in line")

        ask("UALICE", "<@UBOT> medical: Is Huntington disease inherited?", 1)
        ask("UALICE", "<@UBOT> medical: what causes asthma?", 2)
        ask("UALICE", "<@UBOT> medical: is cystic fibrosis inherited?", None)  # her third: over the cap
        [note] = bot.slack.wait_for(lambda: bot.slack.calls("chat.postEphemeral", user="UALICE"),
                                    what="the refusal note")
        assert len(bot.ctx.line) == 2  # she was refused: not in line
        ask("UBOB", "<@UBOT> medical: what causes asthma?", 3)  # Bob is not capped by Alice's questions
        gate.set()
        for user, ts in [asked[0], asked[1], asked[3]]:
            bot.slack.wait_for(lambda ts=ts: [m for m in bot.slack.messages(CHANNEL) if m.get("thread_ts") == ts
                                              and m.get("user") == BOT_USER_ID and "domainbot_answer" in str(m)],
                               what=f"{user}'s answer in {ts}")
        bot.slack.wait_for(lambda: not bot.ctx.questions.open(), what="every question finished")
        statuses = sorted(r["status"] for r in bot.store.query("SELECT status FROM questions"))
        refused_ts = asked[2][1]
        unanswered = [m for m in bot.slack.messages(CHANNEL) if m.get("thread_ts") == refused_ts
                      and m.get("user") == BOT_USER_ID]
    finally:
        gate.set()
        bot.stop()
    assert statuses == ["answered", "answered", "answered", "failed"]  # the refused one is kept, as failed
    assert unanswered == []  # told privately, not answered
    assert "again" in note.args["text"]
    assert note.args["text"] == user_cap_message(2), "answering.submit should show ticket.refused (see report)"
