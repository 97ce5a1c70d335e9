"""Reading Slack's text and payloads (pure)."""

from __future__ import annotations

from bot.prompt import Turn
from bot.slack import blocks
from bot.slack.blocks import ANSWER_BLOCK
from bot.slack.text import (
    clean_text,
    correction,
    history_turns,
    is_holding,
    latest_answer_ts,
    mentions,
    parse_ask,
    reaction_signal,
    unrecorded_placeholder,
)
from bot.slack.waiting import apology_message, waiting_message

NAMES = ["finance", "legal", "medical"]


def test_clean_text_drops_the_bot_mention_and_unwraps_slack_markup():
    raw = "<@UBOT> is <https://x.test/a|this link> &amp; <#C1|legal-help> ok for <@U2>? 5 &lt; 6"
    assert clean_text(raw, "UBOT") == "is this link & #legal-help ok for @someone? 5 < 6"
    assert clean_text("<mailto:a@b.test|a@b.test> <https://x.test>", "UBOT") == "a@b.test https://x.test"
    assert mentions("hi <@UBOT>", "UBOT") and not mentions("hi <@U2>", "UBOT")


def test_correction_prefix():
    assert correction("Correction: it is 30 days") == "it is 30 days"
    assert correction("  correction :  ") == ""
    assert correction("no correction: here") is None


def test_parse_ask():
    assert parse_ask("legal does it renew?", NAMES) == ("legal", "does it renew?")
    assert parse_ask("Legal: does it renew?", NAMES) == ("legal", "does it renew?")
    assert parse_ask("does it renew?", NAMES) == (None, "does it renew?")
    assert parse_ask("legal", NAMES) == (None, "legal")  # a bare domain name is not a question
    assert parse_ask("   ", NAMES) == (None, "")


def test_reaction_signals():
    assert reaction_signal("+1", True, "see_no_evil") == ("reaction", "+1")
    assert reaction_signal("thumbsdown", True, "see_no_evil") == ("reaction", "-1")
    assert reaction_signal("+1::skin-tone-4", False, "see_no_evil") == ("reaction", "removed:+1")
    assert reaction_signal("see_no_evil", True, "see_no_evil") == ("opt_out", "on")
    assert reaction_signal("no_entry", True, "no_entry") == ("opt_out", "on")  # configurable
    assert reaction_signal("tada", True, "see_no_evil") is None


def _answer(ts, text):
    return {"ts": ts, "user": "UBOT", "bot_id": "B1", "text": text, "blocks": [{"block_id": ANSWER_BLOCK}]}


THREAD = [
    {"ts": "1.0", "user": "U1", "text": "<@UBOT> does the contract renew?"},
    {"ts": "1.1", "user": "UBOT", "bot_id": "B1", "text": "Looking into it…", "blocks": []},
    _answer("1.2", "Yes, yearly [1]."),
    {"ts": "1.3", "user": "U9", "bot_id": "B9", "text": "another bot"},
    {"ts": "1.4", "user": "U2", "subtype": "channel_join", "text": "joined"},
    {"ts": "1.5", "user": "U1", "text": "and the notice period?"},
]


def test_history_keeps_people_and_our_answers_before_the_question():
    assert history_turns(THREAD, bot_user_id="UBOT", before_ts="1.5") == [
        Turn("user", "does the contract renew?"),
        Turn("assistant", "Yes, yearly [1]."),
    ]
    assert len(history_turns(THREAD, bot_user_id="UBOT")) == 3
    assert history_turns(THREAD * 10, bot_user_id="UBOT", limit=4)[-1] == Turn("user", "and the notice period?")


def test_latest_answer_before_a_correction():
    assert latest_answer_ts(THREAD + [_answer("1.6", "Later")], bot_user_id="UBOT", before_ts="1.5") == "1.2"
    assert latest_answer_ts(THREAD[:2], bot_user_id="UBOT") is None


def _ours(ts: str, message: dict) -> dict:
    return {"ts": ts, "user": "UBOT", "bot_id": "BBOT", **message}


def test_our_holding_messages_are_the_waiting_note_the_thinking_message_and_a_stream_draft():
    assert is_holding(_ours("1", waiting_message(2)), bot_user_id="UBOT")
    assert is_holding(_ours("1", blocks.thinking_message("Legal")), bot_user_id="UBOT")
    assert is_holding(_ours("1", {"text": blocks.stream_intro("Legal") + "The notice"}), bot_user_id="UBOT")
    assert not is_holding(_ours("1", apology_message(3, "restarted")), bot_user_id="UBOT")
    assert not is_holding(_answer("1", blocks.stream_intro("Legal") + "Thirty days [1]."), bot_user_id="UBOT")
    assert not is_holding({"ts": "1", "user": "U1", **waiting_message(2)}, bot_user_id="UBOT")  # a person's paste


def test_the_unrecorded_placeholder_is_our_earliest_holding_message_after_the_question_nobody_holds():
    thread = [
        {"ts": "10.0", "user": "U1", "text": "<@UBOT> legal: notice period?"},
        _ours("9.0", waiting_message(1)),  # before the question: another question's
        _ours("12.0", blocks.thinking_message("Legal")),  # after, but recorded by another open question
        _ours("11.0", apology_message(1, "restarted")),  # ours, not holding a place
        _ours("14.0", waiting_message(2)),
        _ours("13.0", {"text": blocks.stream_intro("Legal")}),  # the earliest free one
    ]
    recorded = {"12.0"}.__contains__
    assert unrecorded_placeholder(thread, bot_user_id="UBOT", after_ts="10.0", recorded=recorded) == "13.0"
    assert unrecorded_placeholder(thread, bot_user_id="UBOT", after_ts="13.5", recorded=recorded) == "14.0"
    assert unrecorded_placeholder(thread, bot_user_id="UBOT", after_ts="14.0", recorded=recorded) is None
    assert unrecorded_placeholder(thread, bot_user_id="UOTHER", after_ts="10.0", recorded=recorded) is None
