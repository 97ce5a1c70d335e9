"""Native Slack streaming (chat.startStream / appendStream / stopStream) with its fallbacks, the fake's
streaming state, and Slack's native feedback buttons; the end-to-end tests run the real app over HTTP with the
real tiny model."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.answer import Answerer
from bot.config import ConfigError, Settings, load_settings
from bot.slack import blocks
from bot.slack.answering import Ask, Reply
from bot.slack.context import SlackContext
from bot.slack.ratelimit import RateLimiter
from bot.slack.stream import MessageStream, NativeStream, open_stream
from bot.store.store import Store
from bot.testing.slack_bot import BotStarter, RunningBot
from bot.testing.slack_kit import (
    BOT_TOKEN,
    CHANNEL,
    DM,
    TEAM_ID,
    USER,
    FakeSlack,
    app_mention,
    block_action,
    post_event,
    post_interaction,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture()
def client(slack: FakeSlack) -> WebClient:
    return WebClient(token=BOT_TOKEN, base_url=slack.api_url)  # no retry handler: errors reach the stream


def thread_root(slack: FakeSlack, channel: str = CHANNEL) -> str:
    return slack.add_message(channel, "<@UBOT> a question")


def start(client: WebClient, slack: FakeSlack, clock: Clock, channel: str = CHANNEL) -> NativeStream:
    stream = NativeStream.start(client, channel, thread_root(slack, channel), user=USER, team=TEAM_ID,
                                intro="Searching… ", interval_s=1.0, clock=clock)
    assert stream is not None
    return stream


def streamed_text(slack: FakeSlack, ts: str) -> str:
    """What Slack received for the stream, in order: the intro, every append, the stop's remainder."""
    calls = [c for c in slack.calls() if c.args.get("ts") == ts or c.method == "chat.startStream"]
    return "".join(c.args.get("markdown_text", "") for c in calls
                   if c.method in ("chat.startStream", "chat.appendStream", "chat.stopStream"))


FINAL = {"text": "The guarded answer [1].",
         "blocks": [{"type": "section", "block_id": blocks.ANSWER_BLOCK, "text": {"type": "mrkdwn", "text": "The guarded answer [1]."}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": "*Sources*\n[1] Doc"}]},
                    blocks.feedback_block(7)]}


# ---------------------------------------------------------------- the fake keeps Slack's streaming state


def test_the_fake_answers_with_the_documented_errors(slack: FakeSlack, client: WebClient):
    def error(call: Callable[[], object]) -> str:
        with pytest.raises(SlackApiError) as err:
            call()
        return err.value.response["error"]

    root = thread_root(slack)
    assert error(lambda: client.chat_startStream(channel=CHANNEL, thread_ts="", recipient_team_id=TEAM_ID,
                                                 recipient_user_id=USER)) == "invalid_arguments"
    assert error(lambda: client.chat_startStream(channel=CHANNEL, thread_ts=root,
                                                 recipient_user_id=USER)) == "missing_recipient_team_id"
    assert error(lambda: client.chat_startStream(channel=CHANNEL, thread_ts=root,
                                                 recipient_team_id=TEAM_ID)) == "missing_recipient_user_id"
    dm = client.chat_startStream(channel=DM, thread_ts=thread_root(slack, DM), markdown_text="hi")  # DMs need none
    ts = client.chat_startStream(channel=CHANNEL, thread_ts=root, markdown_text="a", recipient_team_id=TEAM_ID,
                                 recipient_user_id=USER)["ts"]
    client.chat_appendStream(channel=CHANNEL, ts=ts, markdown_text="b")
    stopped = client.chat_stopStream(channel=CHANNEL, ts=ts, markdown_text="c", blocks=[blocks.feedback_block(1)])
    assert stopped["message"]["text"] == "abc" and stopped["message"]["streaming_state"] == "completed"
    assert slack.message(CHANNEL, ts)["blocks"][-1]["type"] == "context_actions"  # blocks go under the text
    assert error(lambda: client.chat_appendStream(channel=CHANNEL, ts=ts, markdown_text="d")) \
        == "message_not_in_streaming_state"
    assert error(lambda: client.chat_stopStream(channel=CHANNEL, ts=ts)) == "message_not_in_streaming_state"
    assert error(lambda: client.chat_appendStream(channel=CHANNEL, ts="1.000000", markdown_text="d")) \
        == "message_not_found"
    assert error(lambda: client.chat_appendStream(channel=DM, ts=dm["ts"], markdown_text="")) == "no_text"
    assert slack.message(CHANNEL, ts)["thread_ts"] == root


# ---------------------------------------------------------------- NativeStream


def test_appends_are_throttled_batched_and_lose_no_text(slack: FakeSlack, client: WebClient):
    clock = Clock()
    stream = start(client, slack, clock)
    fed = ""
    for i in range(30):  # 30 tokens over 7.5 s of (fake) time
        clock.now += 0.25
        fed += f"t{i} "
        stream.feed(f"t{i} ")
        stream.close()  # let each append land, so the count depends only on the throttle
    assert len(slack.calls("chat.appendStream")) == stream.appends == 7  # at t = 1, 2, ..., 7 s
    assert stream.finish(FINAL, fed) == stream.ts
    assert streamed_text(slack, stream.ts) == "Searching… " + fed  # every token reached Slack exactly once
    assert [c.method for c in slack.calls() if c.method.startswith("chat.")][-2:] == ["chat.stopStream", "chat.update"]


def test_no_append_while_one_is_in_flight(slack: FakeSlack, client: WebClient):
    clock = Clock()
    stream = start(client, slack, clock)
    release = slack.hold("chat.appendStream")
    clock.now += 1
    stream.feed("first ")
    slack.wait_for(lambda: slack.calls("chat.appendStream"), what="the first append, in flight")
    clock.now += 5
    stream.feed("late ")
    release.set()
    stream.close()
    assert [c.args["markdown_text"] for c in slack.calls("chat.appendStream")] == ["first "]


def test_a_429_keeps_the_text_for_the_next_append(slack: FakeSlack, client: WebClient):
    clock = Clock()
    stream = start(client, slack, clock)
    slack.queue("chat.appendStream", status=429, body={"ok": False, "error": "ratelimited"},
                headers={"Retry-After": "3"})
    for piece in ["a ", "b ", "c ", "d "]:  # t = 1 (429), 2, 3: held back; 4: allowed again
        clock.now += 1
        stream.feed(piece)
        stream.close()
    assert [c.args["markdown_text"] for c in slack.calls("chat.appendStream")] == ["a ", "a b c d "]
    assert stream.broken is None


def test_a_failed_append_ends_streaming_and_the_update_still_lands(slack: FakeSlack, client: WebClient):
    clock = Clock()
    stream = start(client, slack, clock)
    slack.queue("chat.appendStream", body={"ok": False, "error": "fatal_error"}, after=1)  # the second append
    for piece in ["one ", "two ", "three ", "four "]:
        clock.now += 1
        stream.feed(piece)
        stream.close()
    assert [c.args["markdown_text"] for c in slack.calls("chat.appendStream")] == ["one ", "two "]
    assert stream.broken == "fatal_error"
    assert stream.finish(FINAL, "one two three four") == stream.ts
    [stop] = slack.calls("chat.stopStream")
    assert "markdown_text" not in stop.args  # the broken stream is only taken out of streaming state
    final = slack.message(CHANNEL, stream.ts)
    assert final["text"] == FINAL["text"] and final["blocks"] == FINAL["blocks"]


def test_when_the_update_is_refused_a_changed_answer_is_posted_anew_and_the_draft_deleted(slack, client):
    stream = start(client, slack, Clock())
    stream.feed("a draft with an invented figure")
    slack.queue("chat.update", body={"ok": False, "error": "cant_update_message"})
    new_ts = stream.finish(FINAL, FINAL["text"])
    assert new_ts != stream.ts
    assert slack.message(CHANNEL, new_ts)["text"] == FINAL["text"]
    assert slack.message(CHANNEL, stream.ts) is None  # the unguarded draft is gone
    assert slack.message(CHANNEL, new_ts)["thread_ts"] == stream.thread_ts


def test_when_the_update_is_refused_an_unchanged_answer_stays_as_streamed(slack, client):
    stream = start(client, slack, Clock())
    stream.feed(FINAL["text"])  # never due (no time passes): the stop carries it
    slack.queue("chat.update", body={"ok": False, "error": "cant_update_message"})
    assert stream.finish(FINAL, FINAL["text"]) == stream.ts
    assert slack.calls("chat.postMessage") == []
    kept = slack.message(CHANNEL, stream.ts)
    assert kept["text"] == "Searching… " + FINAL["text"]
    assert kept["blocks"][1:] == blocks.trailer(FINAL)  # sources and 👍/👎 under the streamed text


def test_a_refused_start_gives_none(slack: FakeSlack, client: WebClient):
    slack.queue("chat.startStream", body={"ok": False, "error": "channel_type_not_supported"})
    assert NativeStream.start(client, CHANNEL, thread_root(slack), user=USER, team=TEAM_ID, intro="…",
                              interval_s=1.0) is None


# ---------------------------------------------------------------- choosing native or edits


@dataclass
class Place:
    ctx: SlackContext
    slack: FakeSlack


@pytest.fixture()
def place(slack: FakeSlack, tmp_path) -> Iterator[Callable[..., Place]]:
    stores: list[Store] = []

    def make(**overrides: object) -> Place:
        settings = Settings(slack_api_url=slack.api_url, slack_bot_token=BOT_TOKEN, db_path=tmp_path / "s.db",
                            stream_interval_s=1.0).with_(**overrides)
        store = Store.from_settings(settings)
        stores.append(store)
        client = WebClient(token=BOT_TOKEN, base_url=slack.api_url)
        # open_stream never asks the answerer anything: None stands for "not used here".
        ctx = SlackContext(settings, None, store, client, "UBOT", RateLimiter(0))  # type: ignore[arg-type]
        return Place(ctx, slack)

    yield make
    for store in stores:
        store.close()


def ask(channel: str = CHANNEL, thread_ts: str | None = "1.000001") -> Ask:
    return Ask("q?", channel, USER, "event:x", "mention", thread_ts=thread_ts)


def test_native_in_a_thread_with_the_recipient(place):
    p = place()
    reply = Reply(p.ctx, ask())
    stream = open_stream(p.ctx, ask(), reply, "Legal")
    assert isinstance(stream, NativeStream) and reply.ts == stream.ts
    [started] = p.slack.calls("chat.startStream")
    assert (started.args["thread_ts"], started.args["recipient_user_id"], started.args["recipient_team_id"]) \
        == ("1.000001", USER, TEAM_ID)  # the team from auth.test
    assert started.args["markdown_text"] == blocks.stream_intro("Legal")
    assert p.slack.calls("chat.postMessage") == []


def test_a_slack_connect_asker_is_streamed_to_in_their_own_workspace(place):
    p = place()
    theirs = replace(ask(), team_id="T0OTHERCO")
    stream = open_stream(p.ctx, theirs, Reply(p.ctx, theirs), "Legal")
    assert isinstance(stream, NativeStream)
    [started] = p.slack.calls("chat.startStream")
    assert started.args["recipient_team_id"] == "T0OTHERCO" != TEAM_ID


@pytest.mark.parametrize("why", ["top-level DM", "update mode", "refused", "waiting note", "no team"])
def test_falls_back_to_edits(place, why: str):
    p = place(slack_streaming="update") if why == "update mode" else place()
    a = ask(DM, None) if why == "top-level DM" else ask()
    if why == "refused":
        p.slack.queue("chat.startStream", body={"ok": False, "error": "not_in_channel"})
    if why == "no team":
        p.slack.queue("auth.test", body={"ok": False, "error": "fatal_error"})
    reply = Reply(p.ctx, a)
    if why == "waiting note":
        reply.ts = p.slack.add_message(CHANNEL, "in line", user="UBOT")
    stream = open_stream(p.ctx, a, reply, "Legal")
    assert isinstance(stream, MessageStream) and stream.ts == reply.ts
    assert "Searching legal documents" in json.dumps(p.slack.message(a.channel, reply.ts)["blocks"])
    started = p.slack.calls("chat.startStream")
    assert len(started) == (1 if why in ("refused", "no team") else 0)
    if why == "no team":  # Slack itself refuses a channel stream without the recipient's team
        assert "recipient_team_id" not in started[0].args


def test_the_streaming_setting_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("DOMAINBOT_SLACK_STREAMING", "update")
    assert load_settings().slack_streaming == "update"
    monkeypatch.setenv("DOMAINBOT_SLACK_STREAMING", "sometimes")
    with pytest.raises(ConfigError, match="DOMAINBOT_SLACK_STREAMING must be one of native, update"):
        load_settings()
    monkeypatch.delenv("DOMAINBOT_SLACK_STREAMING")
    assert load_settings().slack_streaming == "native"


# ---------------------------------------------------------------- end to end: the real app over HTTP


class Bot(RunningBot):
    def ask(self, text: str) -> str:
        ts = self.slack.add_message(CHANNEL, text)
        assert post_event(self.server.url, app_mention(text, ts=ts))[0] == 200
        return ts

    def final(self, thread_ts: str) -> dict:
        def done() -> dict | None:
            rows = self.store.exchanges()
            msg = self.slack.message(CHANNEL, rows[-1]["message_ts"]) if rows else None
            return msg if msg and msg.get("thread_ts") == thread_ts and is_answer(msg) else None

        return self.slack.wait_for(done, what="the final answer")

    def chat_calls(self) -> list[str]:
        return [c.method for c in self.slack.calls() if c.method.startswith("chat.")]


def is_answer(msg: dict) -> bool:
    return any(b.get("block_id") == blocks.ANSWER_BLOCK for b in msg.get("blocks") or ())


@pytest.fixture()
def start_bot(settings: Settings, quick: Answerer, tmp_path) -> Iterator[BotStarter[Bot]]:
    starter = BotStarter(settings, quick, tmp_path, Bot, stream_interval_s=0.0)
    yield starter
    starter.close()


@pytest.mark.slow
def test_a_mention_streams_natively_and_ends_with_the_stored_answer(start_bot):
    bot = start_bot()
    ts = bot.ask("<@UBOT> medical: What are the early symptoms of type 2 diabetes?")
    final = bot.final(ts)
    [row] = bot.store.exchanges()
    assert final["text"] == row["answer"] and row["message_ts"] == final["ts"]
    assert re.fullmatch(r"chat\.startStream( chat\.appendStream)+ chat\.stopStream chat\.update",
                        " ".join(bot.chat_calls())), bot.chat_calls()
    [started] = bot.slack.calls("chat.startStream")
    assert (started.args["channel"], started.args["thread_ts"], started.args["recipient_user_id"],
            started.args["recipient_team_id"]) == (CHANNEL, ts, USER, TEAM_ID)
    [stop] = bot.slack.calls("chat.stopStream")
    assert stop.args["ts"] == final["ts"] and stop.args["blocks"][-1] == blocks.feedback_block(row["id"])
    assert final["blocks"][-1] == blocks.feedback_block(row["id"])  # the native 👍/👎 carry the exchange


@pytest.mark.slow
def test_the_native_final_is_the_guarded_text_not_the_streamed_draft(start_bot, quick: Answerer):
    from bot.testing.scripted_llm import scripted

    def reply(body: dict) -> str:
        block = body["messages"][0]["content"].split("[1] ", 1)[1].split("\n", 1)[1].split("\n\n")[0]
        fact = block.strip().split(". ")[0].rstrip(".")
        return f"{fact} [1]. Also, the supplier owes a penalty of $198.2 million each quarter."

    answerer, _ = scripted(quick, reply)
    bot = start_bot(answerer=answerer)
    ts = bot.ask("<@UBOT> legal: How many major code releases of OPS may the supplier ship per year without "
                 "Bank of America's consent?")
    final = bot.final(ts)
    assert "198.2" in streamed_text(bot.slack, final["ts"])  # the draft was streamed as generated ...
    assert "198.2" not in final["text"] and "198.2" not in json.dumps(final["blocks"])  # ... and replaced
    [row] = bot.store.exchanges()
    assert row["guard_verdict"] == "trimmed" and final["text"] == row["answer"]


@pytest.mark.slow
def test_a_refused_start_falls_back_to_edits(start_bot):
    bot = start_bot()
    bot.slack.queue("chat.startStream", body={"ok": False, "error": "channel_type_not_supported"})
    ts = bot.ask("<@UBOT> medical: What causes high blood pressure?")
    final = bot.final(ts)
    [row] = bot.store.exchanges()
    assert final["text"] == row["answer"]
    calls = bot.chat_calls()
    assert calls[:2] == ["chat.startStream", "chat.postMessage"] and calls[-1] == "chat.update"
    assert "chat.appendStream" not in calls and "chat.stopStream" not in calls
    assert bot.slack.calls("chat.postMessage")[0].args["thread_ts"] == ts  # the placeholder, then edits


@pytest.mark.slow
def test_a_failed_append_still_ends_with_the_full_answer(start_bot):
    bot = start_bot()
    bot.slack.queue("chat.appendStream", body={"ok": False, "error": "message_not_in_streaming_state"})
    ts = bot.ask("<@UBOT> medical: What causes high blood pressure?")
    final = bot.final(ts)
    [row] = bot.store.exchanges()
    assert final["text"] == row["answer"] and is_answer(final)
    assert len(bot.slack.calls("chat.appendStream")) == 1  # no more appends once one failed
    assert bot.chat_calls()[-1] == "chat.update"


@pytest.mark.slow
def test_native_feedback_buttons_record_votes_and_old_buttons_still_work(start_bot):
    bot = start_bot()
    ts = bot.ask("<@UBOT> legal: Does the agreement renew automatically?")
    final = bot.final(ts)
    [row] = bot.store.exchanges()
    xid = row["id"]
    element = next(b for b in final["blocks"] if b["type"] == "context_actions")["elements"][0]
    assert element["type"] == "feedback_buttons" and element["action_id"] == blocks.FEEDBACK
    up, down = element["positive_button"]["value"], element["negative_button"]["value"]

    def click(action_id: str, value: str, *, user: str = USER, element: str = "feedback_buttons",
              trigger_id: str | None = None) -> None:
        payload = block_action(action_id, value, channel=CHANNEL, message_ts=final["ts"], thread_ts=ts, user=user,
                               element=element, trigger_id=trigger_id)
        assert post_interaction(bot.server.url, payload)[0] == 200

    click(blocks.FEEDBACK, up)
    click(blocks.FEEDBACK, down, trigger_id="trig-native")
    click(blocks.FEEDBACK, "not-a-vote")  # malformed: ignored
    click(blocks.FEEDBACK_UP, str(xid), user="U0BOB", element="button")  # an answer posted before the change
    bot.ctx.close()  # every accepted click handled
    votes = sorted((f["kind"], f["value"]) for f in bot.store.feedback_for(xid))
    assert votes == [("button", "+1"), ("button", "+1"), ("button", "-1")]
    [opened] = bot.slack.calls("views.open")
    assert opened.args["trigger_id"] == "trig-native" and opened.args["view"]["private_metadata"] == str(xid)
    assert bot.slack.calls("chat.postEphemeral", text="Thanks for the feedback! :pray:")
