"""Validly signed but malformed Slack requests get 400 (and never reach bolt); legal payloads that no
listener handles get 200 with an empty body. Real HTTP against our server, in front of a real bolt App
(no model); a global middleware records every body bolt sees, independently of the ingress code."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from slack_sdk import WebClient

from bot.slack.app import make_app
from bot.slack.ingress import SlackHTTPServer, start_http
from bot.testing.slack_kit import (
    BOT_TOKEN,
    CHANNEL,
    SIGNING_SECRET,
    FakeSlack,
    app_mention,
    block_action,
    event_callback,
    new_ts,
    post,
    post_event,
    post_form,
    post_interaction,
    signed_headers,
    slash_command,
    url_verification,
    view_submission,
)

MARKER = "SECRET-PATIENT-NAME-4711"


@dataclass
class Served:
    server: SlackHTTPServer
    bolt_saw: list[dict] = field(default_factory=list)  # every body bolt's middleware chain was given
    handled: list[tuple[str, dict]] = field(default_factory=list)  # (listener, what it got)

    def send(self, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
        return post(self.server.url, body, {"Content-Type": content_type, **signed_headers(SIGNING_SECRET, body)})


@pytest.fixture()
def served():
    with FakeSlack() as slack:
        app = make_app(WebClient(token=BOT_TOKEN, base_url=slack.api_url))
        s = Served(start_http(app, SIGNING_SECRET, host="127.0.0.1", port=0))

        @app.middleware
        def record(body: dict, next_) -> None:
            s.bolt_saw.append(body)
            next_()

        @app.event("app_mention")
        def mention(event: dict) -> None:
            s.handled.append(("mention", event))

        @app.command("/ask")
        def ask(ack, command: dict) -> None:  # indexes like bot.slack.events.on_ask_command, before ack
            s.handled.append(("ask", {"channel": command["channel_id"], "user": command["user_id"],
                                      "text": command["text"]}))
            ack()

        @app.action("vote")
        def vote(ack, body: dict) -> None:
            ack()
            s.handled.append(("vote", {"user": body["user"]["id"], "value": body["actions"][0]["value"]}))

        @app.view("correction")
        def correction(ack, view: dict) -> None:
            ack()
            s.handled.append(("correction", view))

        yield s
        s.server.shutdown()
        s.server.server_close()


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def _without(fields: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in fields.items() if k != name}


def _event(**override: object) -> bytes:
    return json.dumps({**app_mention(f"<@UBOT> {MARKER}"), **override}).encode()


# ---------------------------------------------------------------- 400: malformed, bolt never sees it

MALFORMED_BODIES = {
    "not-utf8": (b'{"type":"event_callback","x":"\xff"}', "body is not UTF-8"),
    "empty": (b"", "empty body"),
    "invalid-json": (_event()[:-5], "body is not valid JSON"),
    "json-array": (b"[" + _event() + b"]", "body is JSON but not an object"),
    "json-string": (json.dumps(MARKER).encode(), "body is JSON but not an object"),
    "nested-too-deeply": (b'{"type":"event_callback","event":' + b"[" * 200_000, "body is nested too deeply"),
    "no-type": (json.dumps({"token": "t", "event": app_mention(MARKER)["event"]}).encode(), "body has no string `type`"),
    "type-not-a-string": (_event(type=["event_callback"]), "body has no string `type`"),
    "url-verification-without-challenge": (json.dumps({"token": "t", "type": "url_verification"}).encode(),
                                           "url_verification without a string `challenge`"),
    "event-callback-without-event": (_event(event=None), "event_callback without an object `event`"),
    "event-is-a-string": (_event(event=MARKER), "event_callback without an object `event`"),
    "event-is-a-list": (_event(event=[app_mention(MARKER)["event"]]), "event_callback without an object `event`"),
    "event-without-type": (_event(event={"text": MARKER, "channel": CHANNEL}),
                           "event_callback whose `event` has no string `type`"),
    # passes triage; bolt's own context extraction indexes authorizations[0] as an object
    "authorizations-not-a-list": (_event(authorizations=MARKER), "bolt cannot read this payload (AttributeError)"),
}

ASK = slash_command("/ask", MARKER)
MALFORMED_FORMS = {
    "payload-invalid-json": ({"payload": '{"type": "block_actions",'}, "form field `payload` is not valid JSON"),
    "payload-array": ({"payload": "[]"}, "form field `payload` is JSON but not an object"),
    "payload-without-type": ({"payload": json.dumps({"user": {"id": "U1"}})}, "form field `payload` has no string `type`"),
    "block-actions-without-actions": (
        {"payload": json.dumps(_without(block_action("vote", MARKER, channel=CHANNEL, message_ts="1.2"), "actions"))},
        "block_actions without a non-empty `actions` list"),
    "block-actions-action-without-id": (
        {"payload": json.dumps({**block_action("vote", MARKER, channel=CHANNEL, message_ts="1.2"),
                                "actions": [{"value": MARKER}]})},
        "block_actions with an action that has no string `action_id`"),
    "block-actions-user-is-a-string": (
        {"payload": json.dumps({**block_action("vote", MARKER, channel=CHANNEL, message_ts="1.2"), "user": "U1"})},
        "block_actions without a `user` object holding a string `id`"),
    "view-submission-view-is-a-string": (
        {"payload": json.dumps({**view_submission("correction", "{}", {}), "view": "correction"})},
        "view_submission without a `view` object holding a string `callback_id`"),
    "ask-without-channel-id": (_without(ASK, "channel_id"), "slash command without `channel_id`"),
    "ask-without-user-id": (_without(ASK, "user_id"), "slash command without `user_id`"),
    "ask-with-empty-command": ({**ASK, "command": ""}, "slash command without `command`"),
    "neither-payload-nor-command": ({"text": MARKER, "user_id": "U1"},
                                    "form body is neither an interaction `payload` nor a slash `command`"),
}


def _assert_refused(s: Served, status: int, text: str, reason: str) -> None:
    assert (status, json.loads(text)) == (400, {"error": f"malformed request: {reason}"})
    assert s.bolt_saw == [] and s.handled == []
    assert s.server.stats["malformed"] == 1 and s.server.stats["dispatched"] == 0


@pytest.mark.parametrize("body, reason", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_a_malformed_json_body_gets_400_and_never_reaches_bolt(served, caplog, body, reason):
    caplog.set_level(logging.WARNING)
    _assert_refused(served, *served.send(body), reason)
    assert f"refused malformed Slack request from 127.0.0.1: {reason}" in caplog.text
    assert MARKER not in caplog.text


@pytest.mark.parametrize("fields, reason", MALFORMED_FORMS.values(), ids=MALFORMED_FORMS.keys())
def test_a_malformed_form_body_gets_400_and_never_reaches_bolt(served, caplog, fields, reason):
    caplog.set_level(logging.WARNING)
    _assert_refused(served, *post_form(served.server.url, fields), reason)
    assert MARKER not in caplog.text


def test_bolt_decides_json_by_content_type_or_a_leading_brace_and_so_do_we(served):
    """An event body sent as a form is still parsed as JSON by bolt (it starts with "{"): checked as JSON."""
    status, text = served.send(_event(event=MARKER), "application/x-www-form-urlencoded")
    _assert_refused(served, status, text, "event_callback without an object `event`")


def test_a_flood_of_malformed_requests_logs_one_line(served, caplog):
    caplog.set_level(logging.WARNING)
    for _ in range(20):
        assert served.send(b"[]")[0] == 400
    assert caplog.text.count("refused malformed Slack request") == 1
    assert served.server.stats["malformed"] == 20


# ---------------------------------------------------------------- 200: legal, but nobody listens


def _assert_ignored(s: Served, status: int, text: str) -> None:
    assert (status, text) == (200, "")
    assert s.handled == []
    assert s.server.stats["malformed"] == 0


def test_an_event_type_nobody_listens_to_gets_an_empty_200(served):
    payload = event_callback({"type": "pin_added", "user": "U1", "channel_id": CHANNEL, "item": {"text": MARKER}})
    _assert_ignored(served, *post_event(served.server.url, payload))
    assert [b["event_id"] for b in served.bolt_saw] == [payload["event_id"]]  # bolt looked and found no listener
    assert served.server.stats["unhandled"] == 1


def test_app_rate_limited_gets_an_empty_200_and_a_warning_without_bolt(served, caplog):
    caplog.set_level(logging.WARNING)
    payload = {"token": "t", "type": "app_rate_limited", "team_id": "T0FAKE", "minute_rate_limited": 1518467820,
               "api_app_id": "A0FAKE"}  # Slack's documented example
    _assert_ignored(served, *post_event(served.server.url, payload))
    assert served.bolt_saw == []
    assert "app_rate_limited" in caplog.text and served.server.stats["app_rate_limited"] == 1


def test_an_interaction_type_nobody_handles_gets_an_empty_200(served):
    shortcut = {"type": "message_action", "callback_id": "unknown", "trigger_id": "1.2", "user": {"id": "U1"},
                "team": {"id": "T0FAKE"}, "channel": {"id": CHANNEL}, "message": {"text": MARKER, "ts": "1.2"}}
    _assert_ignored(served, *post_interaction(served.server.url, shortcut))
    assert len(served.bolt_saw) == 1 and served.server.stats["unhandled"] == 1


def test_a_slash_command_nobody_handles_gets_an_empty_200(served):
    _assert_ignored(served, *post_form(served.server.url, slash_command("/other", MARKER)))
    assert len(served.bolt_saw) == 1 and served.server.stats["unhandled"] == 1


def test_a_new_top_level_type_gets_an_empty_200(served):
    _assert_ignored(served, *post_event(served.server.url, {"type": "something_new", "token": "t"}))
    assert len(served.bolt_saw) == 1 and served.server.stats["unhandled"] == 1


def test_an_ssl_check_is_answered_200(served):
    assert post_form(served.server.url, {"ssl_check": "1", "token": "t"}) == (200, "")
    assert served.server.stats["malformed"] == 0 and served.server.stats["unhandled"] == 0


# ---------------------------------------------------------------- well-formed payloads still get through


def test_well_formed_payloads_reach_their_listeners(served):
    url = served.server.url
    assert post_event(url, url_verification("c-1"))[0] == 200
    assert post_event(url, app_mention("<@UBOT> hi"))[0] == 200
    assert post_form(url, slash_command("/ask", "hi"))[0] == 200
    assert post_interaction(url, block_action("vote", "v-1", channel=CHANNEL, message_ts=new_ts()))[0] == 200
    assert post_interaction(url, view_submission("correction", "{}", {}))[0] == 200
    assert served.server.stats["malformed"] == 0 and served.server.stats["unhandled"] == 0
    assert _wait(lambda: len(served.handled) == 4)  # event listeners run after the ack
    assert sorted(name for name, _ in served.handled) == ["ask", "correction", "mention", "vote"]


def test_a_slash_command_that_says_payload_reaches_its_listener_unchanged(served):
    """bolt reads any form body containing "payload" as an interaction; /ask about payloads got lost."""
    text = "what does the payload field hold? payload=1&x"
    assert post_form(served.server.url, slash_command("/ask", text)) == (200, "")
    assert served.handled == [("ask", {"channel": CHANNEL, "user": "U0ALICE", "text": text})]


# ---------------------------------------------------------------- 500 stays for our own bugs


def test_an_exception_out_of_bolt_dispatch_is_a_500_with_an_error_id(served, caplog, monkeypatch):
    def broken(request):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(served.server.app, "dispatch", broken)
    status, text = post_event(served.server.url, app_mention("<@UBOT> hi"))
    assert status == 500
    error = json.loads(text)["error"]
    assert error.startswith("internal error ")
    assert f"dispatch failed [error {error.removeprefix('internal error ')}]" in caplog.text
    assert served.server.stats["malformed"] == 0
