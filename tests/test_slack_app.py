"""The real Slack app over real HTTP: our server, a fake Slack Web API, signed requests, the real
tiny model, real FAISS and real SQLite."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from urllib.parse import urlsplit

import pytest

from bot.answer import Answerer
from bot.config import ROOT, Settings
from bot.domains import Discovery
from bot.slack.app import start_socket_mode
from bot.slack.blocks import ANSWER_BLOCK
from bot.testing.recording import RecordingRuntime
from bot.testing.slack_bot import BotStarter, RunningBot
from bot.testing.slack_kit import (
    APP_TOKEN,
    BOT_TOKEN,
    BOT_USER_ID,
    CHANNEL,
    DM,
    SIGNING_SECRET,
    USER,
    FakeSlack,
    FakeSocketMode,
    app_mention,
    assistant_thread_started,
    block_action,
    im_message,
    message,
    post_event,
    post_form,
    post_interaction,
    reaction,
    signature,
    slash_command,
    view_submission,
)

pytestmark = pytest.mark.slow


class Bot(RunningBot):
    def say(self, text: str, *, channel: str = CHANNEL, user: str = USER, thread_ts: str | None = None,
            mention: bool = True, event_id: str | None = None) -> str:
        """A person posts a message (kept in the fake workspace) and Slack delivers its event, signed."""
        ts = self.slack.add_message(channel, text, user=user, thread_ts=thread_ts)
        build_event = app_mention if mention else (im_message if channel.startswith("D") else message)
        payload = build_event(text, channel=channel, user=user, ts=ts, thread_ts=thread_ts, event_id=event_id)
        status, _ = post_event(self.url, payload)
        assert status == 200
        return ts

    def replies(self, channel: str, thread_ts: str | None) -> list[dict]:
        """Our messages in a thread (or at the top level for None), oldest first."""
        return [m for m in self.slack.messages(channel)
                if m.get("user") == BOT_USER_ID and m.get("thread_ts") == thread_ts]

    def wait_final(self, channel: str, thread_ts: str | None, n: int = 1) -> list[dict]:
        """Wait until n of our messages there are final (not a placeholder or a stream in progress)."""
        def done() -> list[dict] | None:
            final = [m for m in self.replies(channel, thread_ts) if is_final(m)]
            return final if len(final) >= n else None

        return self.slack.wait_for(done, what=f"{n} final replies in {channel}/{thread_ts}")

    def drain(self) -> None:
        """Let every accepted event finish (listeners, then answers): the barrier before 'nothing else happened'."""
        self.ctx.close()

    def exchanges(self) -> list[dict]:
        return self.store.exchanges()


def is_final(msg: dict) -> bool:
    dumped = json.dumps(msg.get("blocks") or [], ensure_ascii=False)
    return "▍" not in dumped and ":mag: Searching" not in dumped


def is_answer(msg: dict) -> bool:
    return any(b.get("block_id") == ANSWER_BLOCK for b in msg.get("blocks") or ())


def blocks_text(msg: dict) -> str:
    return json.dumps(msg.get("blocks") or [], ensure_ascii=False)


@pytest.fixture()
def start_bot(settings: Settings, quick: Answerer, tmp_path) -> Iterator[BotStarter[Bot]]:
    starter = BotStarter(settings, quick, tmp_path, Bot, slack_app_token=APP_TOKEN)
    yield starter
    starter.close()


@pytest.fixture()
def bot(start_bot) -> Bot:
    return start_bot()


# ---------------------------------------------------------------- conversations


def test_a_mention_is_answered_in_its_thread_with_citations(bot: Bot):
    ts = bot.say("<@UBOT> What are the early symptoms of type 2 diabetes?")
    [final] = bot.wait_final(CHANNEL, ts)
    text = blocks_text(final)
    assert is_answer(final)
    assert "*Medical*" in text and "routed automatically" in text
    assert "*Sources*\\n[1] " in text  # numbered source titles
    assert "not medical advice" in text  # the domain's disclaimer
    [started] = bot.slack.calls("chat.startStream")  # native streaming, in the mention's thread
    assert started.args["thread_ts"] == ts and started.args["channel"] == CHANNEL
    [row] = bot.exchanges()
    assert (row["domain"], row["kind"], row["chosen_by"], row["source"]) == ("medical", "answer", "router", "slack:mention")
    assert row["citations"] and row["message_ts"] == final["ts"] and row["thread_ts"] == ts
    assert row["user_hash"] and row["user_hash"] != USER  # never the raw Slack id
    [native] = [e for b in final["blocks"] if b["type"] == "context_actions" for e in b["elements"]]
    assert (native["positive_button"]["value"], native["negative_button"]["value"]) == (
        f"{row['id']}:+1", f"{row['id']}:-1")


def test_a_question_is_routed_once_and_its_scores_are_logged(bot: Bot, quick: Answerer, monkeypatch):
    router = type(quick.router)
    calls = []
    original = router.route
    monkeypatch.setattr(router, "route", lambda self, *a, **kw: calls.append(a) or original(self, *a, **kw))
    ts = bot.say("<@UBOT> What are the early symptoms of type 2 diabetes?")
    bot.wait_final(CHANNEL, ts)
    [row] = bot.exchanges()
    assert len(calls) == 1
    scores = json.loads(row["router_scores"]) if isinstance(row["router_scores"], str) else row["router_scores"]
    assert scores["medical"] == max(scores.values()) > 0


def test_a_dm_is_answered_in_the_dm(bot: Bot):
    bot.say("Is Huntington disease inherited?", channel=DM, mention=False)
    [final] = bot.wait_final(DM, None)  # top level of the DM, not a thread
    assert is_answer(final) and "*Medical*" in blocks_text(final)
    assert bot.exchanges()[0]["source"] == "slack:dm"


def test_a_thread_follow_up_keeps_its_domain_unless_another_is_clearly_meant(start_bot, quick: Answerer):
    recorder = RecordingRuntime(quick.runtime)
    bot = start_bot(answerer=Answerer(quick.settings, quick.discovery, quick.retriever, recorder,
                                      router=quick.router))
    root = bot.say("<@UBOT> What are the early symptoms of type 2 diabetes?")
    [first] = bot.wait_final(CHANNEL, root)
    bot.say("and how long is it?", thread_ts=root, mention=False)  # vague: the router prefers no domain
    bot.wait_final(CHANNEL, root, n=2)
    # The thread so far reaches the model: the first question and our answer, as the thread shows them.
    sent = recorder.prompt_for("and how long is it?")
    assert sent[1:] == [{"role": "user", "content": "What are the early symptoms of type 2 diabetes?"},
                        {"role": "assistant", "content": first["text"]},
                        {"role": "user", "content": "and how long is it?"}]
    bot.say("How much notice is needed to terminate the distribution agreement?", thread_ts=root, mention=False)
    [*_, switched] = bot.wait_final(CHANNEL, root, n=3)
    bot.say("finance: What was the total revenue in 2019?", thread_ts=root, mention=False)
    bot.wait_final(CHANNEL, root, n=4)
    rows = bot.exchanges()
    assert [(r["domain"], r["chosen_by"]) for r in rows] == [("medical", "router"), ("medical", "thread"),
                                                             ("legal", "switched"), ("finance", "explicit")]
    assert "rather than the thread's earlier topic" in blocks_text(switched)  # the user is told it switched
    assert [r["source"] for r in rows] == ["slack:mention", "slack:thread", "slack:thread", "slack:thread"]


def test_the_final_slack_text_is_the_guarded_answer_not_the_streamed_draft(start_bot, quick: Answerer):
    from bot.testing.scripted_llm import scripted

    def reply(body: dict) -> str:
        block = body["messages"][0]["content"].split("[1] ", 1)[1].split("\n", 1)[1].split("\n\n")[0]
        fact = block.strip().split(". ")[0].rstrip(".")
        return f"{fact} [1]. Also, the supplier owes a penalty of $198.2 million each quarter."

    answerer, _ = scripted(quick, reply)
    bot = start_bot(answerer=answerer, stream_interval_s=0.0)
    ts = bot.say("<@UBOT> legal: How many major code releases of OPS may the supplier ship per year without "
                 "Bank of America's consent?")
    [final] = bot.wait_final(CHANNEL, ts)
    # The scripted model's draft carried the invented figure; what stays in the thread must not.
    assert "198.2" not in blocks_text(final) and "198.2" not in final.get("text", "")
    assert "no more than two major code releases" in final.get("text", "")
    [row] = bot.exchanges()
    assert row["guard_verdict"] == "trimmed" and "198.2" not in row["answer"]
    assert row["answer"] == final["text"].split("\n\n")[0] or row["answer"] in final["text"]


def test_slash_ask_with_a_domain(bot: Bot):
    command = slash_command("/ask", "legal does the agreement renew automatically?", response_url=bot.slack.response_url)
    status, body = post_form(bot.url, command)
    assert (status, body) == (200, "")
    [final] = bot.wait_final(CHANNEL, None)
    text = blocks_text(final)
    assert "*Legal*" in text and "you chose it" in text
    assert "<@U0ALICE> asked: does the agreement renew automatically?" in text  # the channel can't see /ask itself
    assert bot.exchanges()[0]["chosen_by"] == "explicit"


def test_slash_ask_without_a_question_shows_usage(bot: Bot):
    status, body = post_form(bot.url, slash_command("/ask", "  "))
    assert status == 200 and "Usage: `/ask [domain] question`" in body


def test_slash_ask_where_the_bot_is_not_a_member_answers_through_response_url(bot: Bot):
    bot.slack.queue("chat.postMessage", body={"ok": False, "error": "not_in_channel"})
    command = slash_command("/ask", "medical: Is Huntington disease inherited?", response_url=bot.slack.response_url)
    assert post_form(bot.url, command)[0] == 200
    thinking, final = bot.slack.wait_for(lambda: len(bot.slack.calls("response_url")) == 2 and bot.slack.calls("response_url"),
                                         what="the note and the answer through response_url")
    assert thinking.args["response_type"] == final.args["response_type"] == "ephemeral"
    assert final.args["replace_original"] is True and is_answer(final.args)


def test_abstention_asks_which_domain_and_a_pick_answers(bot: Bot):
    ts = bot.say("<@UBOT> book the meeting room for 3pm")
    [picker] = bot.wait_final(CHANNEL, ts)
    assert picker["text"] == "Which domain should answer this?"
    buttons = [e for b in picker["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["action_id"] for b in buttons] == ["pick_domain:finance", "pick_domain:legal", "pick_domain:medical"]
    # The picker's ts is known only once it is posted; then it is linked to the exchange.
    [abstained] = bot.slack.wait_for(lambda: [r for r in bot.exchanges() if r["message_ts"] == picker["ts"]],
                                     what="the abstention linked to its picker")
    assert abstained["kind"] == "abstain" and abstained["domain"] is None

    legal = next(b for b in buttons if b["action_id"] == "pick_domain:legal")
    pick = block_action(legal["action_id"], legal["value"], channel=CHANNEL, message_ts=picker["ts"], thread_ts=ts)
    assert post_interaction(bot.url, pick)[0] == 200
    answered = bot.slack.wait_for(lambda: [m for m in bot.replies(CHANNEL, ts) if is_answer(m)], what="the answer")
    assert "*Legal*" in blocks_text(answered[0]) and "you picked it" in blocks_text(answered[0])
    assert "You picked *Legal*" in blocks_text(bot.slack.message(CHANNEL, picker["ts"]))  # buttons gone
    assert [(f["kind"], f["value"]) for f in bot.store.feedback_for(abstained["id"])] == [("reroute", "legal")]
    assert bot.store.router_examples() == {"legal": ["book the meeting room for 3pm"]}  # routing feedback
    assert bot.exchanges()[-1]["chosen_by"] == "button"


def test_assistant_threads_get_prompts_status_and_a_title(bot: Bot):
    started = assistant_thread_started(channel=DM)
    thread = started["event"]["assistant_thread"]["thread_ts"]
    bot.slack.add_message(DM, "", ts=thread)  # the thread's root, as Slack creates it
    assert post_event(bot.url, started)[0] == 200
    [prompts] = bot.slack.wait_for(lambda: bot.slack.calls("assistant.threads.setSuggestedPrompts"), what="prompts")
    assert [p["message"].split(":")[0] for p in prompts.args["prompts"]] == ["finance", "legal", "medical"]
    assert "Finance, Legal, Medical" in bot.replies(DM, thread)[0]["text"]  # greeting

    bot.say("What are the early symptoms of type 2 diabetes?", channel=DM, thread_ts=thread, mention=False)
    bot.slack.wait_for(lambda: [m for m in bot.replies(DM, thread) if is_answer(m)], what="the answer")
    assert bot.slack.calls("assistant.threads.setStatus")[0].args["status"] == "Searching medical documents…"
    assert bot.slack.calls("assistant.threads.setTitle")[0].args["title"].startswith("What are the early symptoms")
    assert bot.exchanges()[0]["source"] == "slack:assistant"


def test_the_reply_streams_through_message_edits(start_bot):
    bot = start_bot(stream_interval_s=0.0, slack_streaming="update")
    ts = bot.say("<@UBOT> medical: What causes high blood pressure?")
    [final] = bot.wait_final(CHANNEL, ts)
    edits = bot.slack.calls("chat.update", ts=final["ts"])
    assert len(edits) >= 2  # at least one partial edit, then the final one
    assert "▍" in json.dumps(edits[0].args["blocks"], ensure_ascii=False)
    assert is_answer(edits[-1].args)


# ---------------------------------------------------------------- policy


def test_a_domain_not_allowed_here_refuses_politely_and_names_where_to_ask(start_bot, quick: Answerer):
    legal = replace(quick.discovery.domains["legal"], channels=("#legal-help",))
    restricted = Answerer(quick.settings, Discovery({**quick.discovery.domains, "legal": legal}, {}),
                          quick.retriever, quick.runtime, router=quick.router)
    bot = start_bot(answerer=restricted, slack=FakeSlack(channel_names={"C0LEGAL": "legal-help", CHANNEL: "general"}))

    ts = bot.say("<@UBOT> legal: does the agreement renew automatically?")
    [refusal] = bot.wait_final(CHANNEL, ts)
    assert "isn't available in this channel" in refusal["text"] and "#legal-help" in refusal["text"]
    assert not is_answer(refusal) and all(b["type"] != "actions" for b in refusal["blocks"])

    ts = bot.say("<@UBOT> legal: does the agreement renew automatically?", channel="C0LEGAL")
    [answer] = bot.wait_final("C0LEGAL", ts)
    assert is_answer(answer)
    assert [r["kind"] for r in bot.exchanges()] == ["not_allowed", "answer"]


def test_rate_limit_answers_with_a_friendly_wait(start_bot):
    bot = start_bot(rate_limit_per_minute=1)
    first = bot.say("<@UBOT> medical: Is Huntington disease inherited?")
    bot.say("<@UBOT> medical: What is sickle cell anemia?")
    [note] = bot.slack.wait_for(lambda: bot.slack.calls("chat.postEphemeral"), what="the rate-limit note")
    assert "try again in" in note.args["text"] and note.args["user"] == USER
    status, body = post_form(bot.url, slash_command("/ask", "medical what is asthma?"))
    assert status == 200 and "try again in" in body
    bot.wait_final(CHANNEL, first)
    bot.drain()
    assert len(bot.exchanges()) == 1


def test_failures_get_an_apology_with_an_error_id_in_the_logs(start_bot, caplog):
    bot = start_bot(slack_streaming="update")  # the failure hit is the placeholder's chat.postMessage
    caplog.set_level(logging.ERROR)
    bot.slack.queue("chat.postMessage", body={"ok": False, "error": "fatal_error"})
    ts = bot.say("<@UBOT> medical: What is asthma?")
    [apology] = bot.wait_final(CHANNEL, ts)
    assert "Sorry, something went wrong" in apology["text"] and "Traceback" not in apology["text"]
    error_id = apology["text"].split("`")[1]
    assert f"[error {error_id}]" in caplog.text


def test_bad_questions_get_a_clear_message(bot: Bot):
    ts = bot.say("<@UBOT>")
    [empty] = bot.wait_final(CHANNEL, ts)
    assert "Your question is empty" in empty["text"]
    ts = bot.say("<@UBOT> " + "why " * 6000)
    [long] = bot.wait_final(CHANNEL, ts)
    assert "the limit is 20,000" in long["text"]


# ---------------------------------------------------------------- feedback


def test_reactions_buttons_and_corrections_reach_the_log(bot: Bot):
    ts = bot.say("<@UBOT> legal: Does the agreement renew automatically?")
    [answer] = bot.wait_final(CHANNEL, ts)
    [row] = bot.exchanges()
    xid, answer_ts = row["id"], answer["ts"]

    for payload in [
        reaction("+1", channel=CHANNEL, ts=answer_ts),
        reaction("+1", channel=CHANNEL, ts=answer_ts, added=False),
        reaction("-1::skin-tone-3", channel=CHANNEL, ts=answer_ts, user="U0BOB"),
        reaction("+1", channel=CHANNEL, ts=ts),  # on the question, not on an answer: ignored
        reaction("tada", channel=CHANNEL, ts=answer_ts),  # not a signal: ignored
    ]:
        assert post_event(bot.url, payload)[0] == 200
    up = block_action("feedback_up", str(xid), channel=CHANNEL, message_ts=answer_ts, thread_ts=ts)
    down = block_action("feedback_down", str(xid), channel=CHANNEL, message_ts=answer_ts, thread_ts=ts,
                        trigger_id="trig-1")
    assert post_interaction(bot.url, up)[0] == 200
    assert post_interaction(bot.url, down)[0] == 200
    [opened] = bot.slack.wait_for(lambda: bot.slack.calls("views.open"), what="the correction modal")
    assert opened.args["trigger_id"] == "trig-1" and opened.args["view"]["private_metadata"] == str(xid)

    values = {"correction": {"text": {"type": "plain_text_input", "value": "It renews yearly unless cancelled."}}}
    status, body = post_interaction(bot.url, view_submission("correction", str(xid), values))
    assert (status, body) == (200, "")
    empty = {"correction": {"text": {"type": "plain_text_input", "value": "  "}}}
    status, body = post_interaction(bot.url, view_submission("correction", str(xid), empty))
    assert status == 200 and json.loads(body)["response_action"] == "errors"  # the modal stays open

    bot.say("correction: the renewal term is one year", thread_ts=ts, mention=False)
    bot.drain()
    signals = [(f["kind"], f["value"]) for f in bot.store.feedback_for(xid)]
    assert sorted(signals) == sorted([
        ("reaction", "+1"), ("reaction", "removed:+1"), ("reaction", "-1"), ("button", "+1"), ("button", "-1"),
        ("correction", "It renews yearly unless cancelled."), ("correction", "the renewal term is one year"),
    ])
    assert bot.slack.calls("reactions.add", name="memo")  # the correction was acknowledged
    assert bot.slack.calls("chat.postEphemeral", text="Thanks for the feedback! :pray:")


def test_the_opt_out_reaction_marks_an_exchange_never_to_train_on(start_bot):
    bot = start_bot(optout_reaction="no_entry")  # configurable; 🙈 (see_no_evil) by default
    ts = bot.say("<@UBOT> medical: Is Huntington disease inherited?")
    [answer] = bot.wait_final(CHANNEL, ts)
    xid = bot.exchanges()[0]["id"]
    post_event(bot.url, reaction("see_no_evil", channel=CHANNEL, ts=answer["ts"]))
    post_event(bot.url, reaction("no_entry", channel=CHANNEL, ts=answer["ts"]))
    bot.drain()
    assert [(f["kind"], f["value"]) for f in bot.store.feedback_for(xid)] == [("opt_out", "on")]
    assert bot.store.opted_out() == {xid}


def test_the_default_opt_out_is_see_no_evil(bot: Bot):
    ts = bot.say("<@UBOT> medical: What is sickle cell anemia?")
    [answer] = bot.wait_final(CHANNEL, ts)
    post_event(bot.url, reaction("see_no_evil", channel=CHANNEL, ts=answer["ts"]))
    bot.drain()
    assert bot.store.opted_out() == {bot.exchanges()[0]["id"]}


def test_a_correction_outside_our_threads(bot: Bot):
    bot.say("correction: nobody asked the bot here", thread_ts=bot.slack.add_message(CHANNEL, "chat"), mention=False)
    bot.say("correction: the answer was wrong", channel=DM, mention=False)  # a DM with no answer above it
    bot.drain()
    [note] = bot.slack.calls("chat.postEphemeral")
    assert note.args["channel"] == DM and "couldn't find an answer" in note.args["text"]
    assert bot.slack.calls("chat.postMessage") == [] and bot.exchanges() == []


# ---------------------------------------------------------------- ingress security


def test_1000_forged_or_expired_requests_are_all_rejected_and_none_handled(bot: Bot):
    now = int(time.time())
    host, port = urlsplit(bot.url).netloc.split(":")
    forgeries: list[Callable[[bytes], dict[str, str]]] = [
        lambda b: {"X-Slack-Request-Timestamp": str(now), "X-Slack-Signature": signature("guess", str(now), b)},
        lambda b: {"X-Slack-Request-Timestamp": str(now - 301), "X-Slack-Signature": signature(SIGNING_SECRET, str(now - 301), b)},
        lambda b: {"X-Slack-Request-Timestamp": str(now + 900), "X-Slack-Signature": signature(SIGNING_SECRET, str(now + 900), b)},
        lambda b: {"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": signature(SIGNING_SECRET, "soon", b)},
        lambda b: {"X-Slack-Request-Timestamp": str(now), "X-Slack-Signature": signature(SIGNING_SECRET, str(now), b + b" ")},
        lambda b: {"X-Slack-Request-Timestamp": str(now), "X-Slack-Signature": "v0=" + "0" * 64},
        lambda b: {"X-Slack-Request-Timestamp": str(now), "X-Slack-Signature": signature(SIGNING_SECRET, str(now), b)[:-1]},
        lambda b: {"X-Slack-Request-Timestamp": f"{now}.5", "X-Slack-Signature": signature(SIGNING_SECRET, f"{now}.5", b)},
        lambda b: {},
    ]
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    statuses = []
    for i in range(1000):
        body = json.dumps(app_mention(f"<@UBOT> forged question {i}")).encode()
        conn.request("POST", "/slack/events", body, {"Content-Type": "application/json", **forgeries[i % len(forgeries)](body)})
        resp = conn.getresponse()
        resp.read()
        statuses.append(resp.status)
    conn.close()
    bot.drain()
    assert statuses == [401] * 1000
    assert bot.server.stats["rejected"] == 1000 and bot.server.stats["dispatched"] == 0
    assert [c.method for c in bot.slack.calls()] == ["auth.test"]  # start-up only: nothing was answered
    assert bot.store.query("SELECT COUNT(*) AS n FROM events")[0]["n"] == 0 and bot.exchanges() == []


def test_a_redelivered_event_is_answered_once_by_its_event_id(bot: Bot):
    """Dedupe is by event_id, not by Slack's retry header: these redeliveries carry none (a replayed or
    duplicated delivery need not), so only the event_id tells them apart."""
    ts = bot.slack.add_message(CHANNEL, "<@UBOT> medical: What is asthma?")
    payload = app_mention("<@UBOT> medical: What is asthma?", ts=ts)
    with ThreadPoolExecutor(4) as pool:  # overlapping, as deliveries to a slow app do
        statuses = list(pool.map(lambda _: post_event(bot.url, payload)[0], range(4)))
    assert statuses == [200] * 4
    bot.wait_final(CHANNEL, ts)
    bot.drain()
    assert len(bot.replies(CHANNEL, ts)) == 1 and len(bot.exchanges()) == 1
    opened = [c for c in bot.slack.calls() if c.method in ("chat.postMessage", "chat.startStream")]
    assert [c.args.get("thread_ts") for c in opened] == [ts]  # one reply opened (posted, or streamed natively)


def test_a_retry_header_on_a_new_event_is_still_answered(bot: Bot):
    """A delivery whose first attempt never reached us arrives with X-Slack-Retry-Num: it is new to us, so it
    is answered (an app that dropped every retry would lose it)."""
    ts = bot.slack.add_message(CHANNEL, "<@UBOT> medical: Is Huntington disease inherited?")
    status, _ = post_event(bot.url, app_mention("<@UBOT> medical: Is Huntington disease inherited?", ts=ts),
                           retry_num=2)
    assert status == 200
    [final] = bot.wait_final(CHANNEL, ts)
    assert is_answer(final)
    assert [r["thread_ts"] for r in bot.exchanges()] == [ts]


def test_our_own_and_other_bots_messages_are_ignored(bot: Bot):
    root = bot.say("<@UBOT> medical: What is asthma?")
    bot.wait_final(CHANNEL, root)
    before = len(bot.slack.calls("chat.postMessage"))
    bot_mention = app_mention("<@UBOT> a bot asks", user="U0OTHERBOT")
    bot_mention["event"]["bot_id"] = "B0OTHER"
    for payload in [
        message("I am the bot", user=BOT_USER_ID, thread_ts=root, bot_id="BBOT"),
        message("beep from another bot", user="U0OTHERBOT", thread_ts=root, bot_id="B0OTHER"),
        message("bot post", user="U0OTHERBOT", thread_ts=root, subtype="bot_message"),
        bot_mention,
        im_message("echo of my own DM", user=BOT_USER_ID),
    ]:
        assert post_event(bot.url, payload)[0] == 200
    bot.drain()
    assert len(bot.slack.calls("chat.postMessage")) == before and len(bot.exchanges()) == 1


def test_20_concurrent_mentions_get_20_answers_and_no_crash(bot: Bot, caplog):
    caplog.set_level(logging.ERROR)
    questions = [
        "medical: What are the early symptoms of type 2 diabetes?", "medical: Is Huntington disease inherited?",
        "medical: What causes high blood pressure?", "medical: How is asthma treated?",
        "legal: Does the agreement renew automatically?", "legal: Is there a cap on liability in this contract?",
        "legal: What is the governing law of the distribution agreement?", "legal: Does the contract have a non-compete clause?",
        "finance: What was the total revenue in 2019?", "finance: How much cash was generated from operating activities?",
    ] * 2
    with ThreadPoolExecutor(20) as pool:
        roots = list(pool.map(lambda iq: bot.say(f"<@UBOT> {iq[1]}", user=f"U0USER{iq[0]:02d}"), enumerate(questions)))
    for root in roots:
        bot.wait_final(CHANNEL, root)
    bot.drain()
    finals = [m for root in roots for m in bot.replies(CHANNEL, root)]
    assert len(finals) == 20 and all(is_answer(m) for m in finals)
    assert len(bot.exchanges()) == 20
    assert "Sorry, something went wrong" not in json.dumps(bot.slack.messages(CHANNEL))
    assert caplog.records == []  # no errors logged anywhere


# ---------------------------------------------------------------- Socket Mode


def test_socket_mode_payloads_go_through_the_same_handlers(start_bot):
    socket = FakeSocketMode()
    bot = start_bot(slack=FakeSlack(socket_mode=socket))
    handler = start_socket_mode(bot.app, bot.ctx.settings)
    try:
        ts = bot.slack.add_message(CHANNEL, "<@UBOT> medical: What is asthma?")
        payload = app_mention("<@UBOT> medical: What is asthma?", ts=ts)
        socket.wait_ack(socket.send(payload))
        socket.wait_ack(socket.send(payload, retry_attempt=1))  # Slack's retry: acked, not answered twice
        [final] = bot.wait_final(CHANNEL, ts)
        assert is_answer(final) and "*Medical*" in blocks_text(final)

        usage = socket.wait_ack(socket.send(slash_command("/ask", ""), type="slash_commands"))
        assert "Usage" in usage["payload"]["text"]
        xid = bot.exchanges()[0]["id"]
        vote = block_action("feedback_up", str(xid), channel=CHANNEL, message_ts=final["ts"], thread_ts=ts)
        socket.wait_ack(socket.send(vote, type="interactive"))
        bot.drain()
        assert len(bot.exchanges()) == 1
        assert [(f["kind"], f["value"]) for f in bot.store.feedback_for(xid)] == [("button", "+1")]
        assert bot.server.stats["dispatched"] == 0  # none of it came over HTTP
    finally:
        handler.close()
        socket.close()


# ---------------------------------------------------------------- the `serve` command itself


def test_domainbot_serve_http_answers_and_stops_on_sigterm(settings: Settings, tmp_path):
    """What the Procfile's `web:` line runs: a real process, real model, signed HTTP in, fake Slack out."""
    with FakeSlack() as slack:
        env = {
            **os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": slack.api_url, "PORT": "0", "DOMAINBOT_DB": str(tmp_path / "serve.db"),
            "DOMAINBOT_INDEXES_DIR": str(settings.indexes_dir), "DOMAINBOT_MAX_TOKENS": "8",
            "DOMAINBOT_PROMPT_BUDGET": "320", "DOMAINBOT_THREADS": "2",
        }
        errors = (tmp_path / "serve.err").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--http", "--host", "127.0.0.1"], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            line = proc.stdout.readline()
            assert "listening on http://127.0.0.1:" in line, line + (tmp_path / "serve.err").read_text()
            url = line.split("listening on ")[1].strip()
            ts = slack.add_message(CHANNEL, "<@UBOT> medical: Is Huntington disease inherited?")
            assert post_event(url, app_mention("<@UBOT> medical: Is Huntington disease inherited?", ts=ts))[0] == 200
            slack.wait_for(lambda: [m for m in slack.messages(CHANNEL) if m.get("thread_ts") == ts and is_answer(m)],
                           what="the answer from the serve process")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            proc.kill()
            proc.wait()
            errors.close()
