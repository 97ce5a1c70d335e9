"""Streaming into one Slack message via chat.update: throttled, and Retry-After honoured."""

from __future__ import annotations

import pytest
from slack_sdk import WebClient

from bot.config import Settings
from bot.slack.context import make_client
from bot.slack.stream import MessageStream
from bot.testing.slack_kit import BOT_TOKEN, CHANNEL, FakeSlack


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def render(text: str) -> dict:
    return {"text": text}


@pytest.fixture()
def slack():
    with FakeSlack() as fake:
        yield fake


def post_placeholder(client: WebClient) -> str:
    return client.chat_postMessage(channel=CHANNEL, text="…")["ts"]


def test_edits_at_most_once_per_interval(slack):
    client = WebClient(token=BOT_TOKEN, base_url=slack.api_url)
    clock = Clock()
    stream = MessageStream(client, CHANNEL, post_placeholder(client), interval_s=1.0, render=render, clock=clock)
    for i in range(30):  # 30 tokens over 7.5 s of (fake) time
        clock.now += 0.25
        stream.feed(f"t{i} ")
        stream.close()  # let each edit land, so the count depends only on the throttle
    updates = slack.calls("chat.update")
    assert len(updates) == stream.updates == 7  # at t = 1, 2, ..., 7 s
    texts = [u.args["text"] for u in updates]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))  # each edit extends the last
    assert stream.text.startswith(texts[-1])


def test_no_edit_while_one_is_in_flight(slack):
    client = WebClient(token=BOT_TOKEN, base_url=slack.api_url)
    clock = Clock()
    stream = MessageStream(client, CHANNEL, post_placeholder(client), interval_s=1.0, render=render, clock=clock)
    release = slack.hold("chat.update")  # the fake records the edit but answers only when released
    clock.now += 1
    stream.feed("first ")
    slack.wait_for(lambda: slack.calls("chat.update"), what="the first edit, in flight")
    clock.now += 5
    stream.feed("late ")  # due by the clock, but the first edit has not come back
    release.set()
    stream.close()  # every edit started so far has landed: a second one would be recorded now
    assert [c.args["text"] for c in slack.calls("chat.update")] == ["first "]
    assert stream.updates == 1


def test_a_429_is_retried_after_its_retry_after(slack):
    client = make_client(Settings(slack_bot_token=BOT_TOKEN, slack_api_url=slack.api_url))
    ts = post_placeholder(client)
    slack.queue("chat.update", status=429, body={"ok": False, "error": "ratelimited"}, headers={"Retry-After": "1"})
    clock = Clock()
    stream = MessageStream(client, CHANNEL, ts, interval_s=1.0, render=render, clock=clock)
    clock.now += 1
    stream.feed("hello")
    stream.close()
    first, second = slack.calls("chat.update")
    assert second.at - first.at >= 1.0  # waited the Retry-After before trying again
    assert slack.message(CHANNEL, ts)["text"] == "hello"


def test_when_retries_run_out_the_stream_waits_retry_after(slack):
    client = WebClient(token=BOT_TOKEN, base_url=slack.api_url)  # no retry handler: the 429 reaches the stream
    ts = post_placeholder(client)
    slack.queue("chat.update", status=429, body={"ok": False, "error": "ratelimited"}, headers={"Retry-After": "5"})
    clock = Clock()
    stream = MessageStream(client, CHANNEL, ts, interval_s=1.0, render=render, clock=clock)
    for _ in range(6):  # t = 1 (429), 2, 3, 4, 5: held back; 6: allowed again
        clock.now += 1
        stream.feed("x")
        stream.close()
    assert len(slack.calls("chat.update")) == 2
    assert slack.message(CHANNEL, ts)["text"] == "xxxxxx"
