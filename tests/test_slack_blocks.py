"""Block Kit rendering (pure)."""

from __future__ import annotations

import json
from pathlib import Path

from bot.answer import Answer, Citation
from bot.domains import Domain
from bot.router import RouteResult
from bot.slack import blocks


def make_answer(text="The term renews **automatically** [1].", kind="answer", citations=None, notes=()):
    route = RouteResult("legal", {"legal": 0.61, "finance": 0.2}, "router", "does it renew?")
    cites = citations if citations is not None else [
        Citation(1, "c1#0", "Distribution Agreement <ACME & Co>", "c1"),
        Citation(2, "c2#3", "Licence", "c2", url="https://docs.example/licence"),
    ]
    return Answer(text, "legal", route, kind=kind, citations=cites, disclaimer="Not legal advice.", notes=list(notes))


def domain(name: str, prompts=("Q one?",)) -> Domain:
    return Domain(name, f"{name} things", ("a", "b", "c"), "sys", "", Path("/tmp") / name, suggested_prompts=prompts)


def texts(message: dict) -> str:
    return json.dumps(message["blocks"], ensure_ascii=False)


def test_answer_shows_domain_text_numbered_sources_disclaimer_and_buttons():
    msg = blocks.answer_message(make_answer(), 42, "Legal")
    dumped = texts(msg)
    assert msg["text"].startswith("The term renews")
    assert "*Legal*" in dumped and "routed automatically" in dumped
    assert "renews *automatically* [1]" in dumped  # Markdown bold became Slack bold
    assert "[1] Distribution Agreement &lt;ACME &amp; Co&gt;" in dumped  # escaped, numbered
    assert "[2] <https://docs.example/licence|Licence>" in dumped  # linked when the source has a URL
    assert "_Not legal advice._" in dumped
    [feedback] = [b for b in msg["blocks"] if b["type"] == "context_actions"]  # Slack's native 👍/👎
    [element] = feedback["elements"]
    assert (element["type"], element["action_id"]) == ("feedback_buttons", "feedback")
    assert (element["positive_button"]["value"], element["negative_button"]["value"]) == ("42:+1", "42:-1")
    assert all(b["type"] != "actions" for b in msg["blocks"])  # the older buttons are not rendered any more
    answer_sections = [b for b in msg["blocks"] if b.get("block_id") == blocks.ANSWER_BLOCK]
    assert len(answer_sections) == 1


def test_a_long_answer_is_split_into_sections_within_slack_limits():
    msg = blocks.answer_message(make_answer("word " * 2000), 1, "Legal")
    sections = [b for b in msg["blocks"] if b["type"] == "section"]
    assert len(sections) >= 4
    assert all(len(s["text"]["text"]) <= 3000 for s in sections)
    assert "".join(s["text"]["text"] for s in sections).count("word") == 2000
    assert len(msg["text"]) <= 3000


def test_quote_notes_and_no_sources():
    msg = blocks.answer_message(make_answer(citations=[], notes=["Adapter v3 was refused."]), 7, "Legal",
                                quote=blocks.asked("U1", "is <this> ok?"))
    dumped = texts(msg)
    assert "<@U1> asked: is &lt;this&gt; ok?" in dumped
    assert "Sources" not in dumped
    assert "Adapter v3 was refused." in dumped


def test_policy_messages_have_no_feedback_buttons():
    msg = blocks.policy_message(make_answer("Please ask in #legal-help.", kind="not_allowed"), "Legal")
    assert "#legal-help" in texts(msg)
    assert all(b["type"] != "actions" for b in msg["blocks"])


def test_picker_has_one_button_per_domain_carrying_the_question():
    msg = blocks.picker_message("what is \"it\"?", [domain("finance"), domain("legal")], 9)
    assert msg["text"] == "Which domain should answer this?"
    buttons = [b for b in msg["blocks"] if b["type"] == "actions"][0]["elements"]
    assert [b["action_id"] for b in buttons] == ["pick_domain:finance", "pick_domain:legal"]
    assert json.loads(buttons[1]["value"]) == {"x": 9, "d": "legal", "q": 'what is "it"?'}


def test_pick_value_fits_slack_limit_even_for_escaped_text():
    for question in ["x" * 5000, '"' * 5000, "é" * 5000]:
        value = blocks.pick_value(123456, "medical", question)
        assert len(value) <= 2000
        assert json.loads(value)["q"] == question[: len(json.loads(value)["q"])]


def test_streaming_and_thinking_messages():
    assert "Searching legal documents" in texts(blocks.thinking_message("Legal"))
    partial = blocks.streaming_message("Legal", "Under the contract")
    assert partial["text"] == "Under the contract" and "▍" in texts(partial)


def test_error_message_carries_the_id_and_no_traceback():
    msg = blocks.error_message("ab12cd34")
    assert "`ab12cd34`" in msg["text"] and "Sorry" in msg["text"]


def test_correction_modal_round_trips_the_exchange_id():
    view = blocks.correction_modal(77)
    assert view["callback_id"] == blocks.CORRECTION_VIEW and view["private_metadata"] == "77"
    assert view["blocks"][0]["block_id"] == blocks.CORRECTION_BLOCK
    assert view["blocks"][0]["element"]["action_id"] == blocks.CORRECTION_INPUT


def test_assistant_greeting_and_prompts_per_domain():
    domains = [domain("finance", ("Revenue in 2019?",)), domain("legal", ()), domain("medical", ("Flu?",))]
    assert "Finance, Legal, Medical" in blocks.greeting(domains)
    assert blocks.suggested_prompts(domains) == [
        {"title": "Finance: Revenue in 2019?", "message": "finance: Revenue in 2019?"},
        {"title": "Medical: Flu?", "message": "medical: Flu?"},
    ]


def test_native_feedback_values_name_the_exchange_and_the_vote():
    element = blocks.feedback_block(123)["elements"][0]
    assert blocks.vote_of(element["positive_button"]["value"]) == (123, "+1")
    assert blocks.vote_of(element["negative_button"]["value"]) == (123, "-1")
    for bad in ["", "123", "abc:+1", "123:+2", "-5:+1", None]:
        assert blocks.vote_of(bad) is None


def test_the_trailer_is_what_follows_the_text():
    msg = blocks.answer_message(make_answer(notes=["A note."]), 5, "Legal")
    trailer = blocks.trailer(msg)
    assert [b["type"] for b in trailer] == ["context", "context", "context", "context_actions"]
    assert "*Sources*" in json.dumps(trailer) and "A note." in json.dumps(trailer)
    assert blocks.trailer(blocks.policy_message(make_answer(kind="refused"), "Legal")) == []


def test_stream_intro_is_markdown_for_start_stream():
    assert blocks.stream_intro("Legal") == ":mag: Searching legal documents…\n\n"
