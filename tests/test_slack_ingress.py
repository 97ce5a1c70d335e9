"""Signature checks and the HTTP front of the Slack app, with a minimal bolt App (no model)."""

from __future__ import annotations

import http.client
import json
import logging
import time

import pytest
from slack_sdk import WebClient

from bot.slack.app import make_app
from bot.slack.ingress import SignatureError, quiet_slack_logging, start_http, verify
from bot.testing.slack_kit import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    app_mention,
    event_callback,
    post,
    post_event,
    signature,
    signed_headers,
)

BODY = b'{"type":"event_callback"}'
NOW = 1_700_000_000


def headers(ts: str, sig: str) -> dict[str, str]:
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig}


def test_a_valid_signature_passes():
    verify(SIGNING_SECRET, signed_headers(SIGNING_SECRET, BODY, timestamp=NOW), BODY, now=NOW)


def test_the_window_is_five_minutes_either_way():
    for skew in (-300, 300):
        verify(SIGNING_SECRET, signed_headers(SIGNING_SECRET, BODY, timestamp=NOW + skew), BODY, now=NOW)
    for skew in (-301, 301, -86_400):
        with pytest.raises(SignatureError, match="5-minute window"):
            verify(SIGNING_SECRET, signed_headers(SIGNING_SECRET, BODY, timestamp=NOW + skew), BODY, now=NOW)


@pytest.mark.parametrize(
    "ts, reason",
    [(ts, "timestamp is not a number")
     for ts in ("abc", "12a", "-5", "1.5", " 1700000000", "1e9", "١٧٠٠٠٠٠٠٠٠", "9" * 40)]
    + [("", "missing X-Slack-Request-Timestamp or X-Slack-Signature")],
)
def test_a_malformed_timestamp_is_rejected(ts, reason):
    with pytest.raises(SignatureError, match=f"^{reason}$"):
        verify(SIGNING_SECRET, headers(ts, signature(SIGNING_SECRET, ts, BODY)), BODY, now=NOW)


@pytest.mark.parametrize(
    "make_sig, reason",
    [
        (lambda ts: signature("wrong-secret", ts, BODY), "mismatch"),
        (lambda ts: signature(SIGNING_SECRET, ts, BODY + b" "), "mismatch"),
        (lambda ts: signature(SIGNING_SECRET, ts, BODY).replace("v0=", "v1="), "malformed"),
        (lambda ts: signature(SIGNING_SECRET, ts, BODY)[:-1], "malformed"),
        (lambda ts: signature(SIGNING_SECRET, ts, BODY).upper(), "malformed"),
        (lambda ts: "", "missing"),
    ],
)
def test_a_forged_signature_is_rejected(make_sig, reason):
    ts = str(NOW)
    with pytest.raises(SignatureError, match=reason):
        verify(SIGNING_SECRET, headers(ts, make_sig(ts)), BODY, now=NOW)


# ---------------------------------------------------------------- the server


@pytest.fixture()
def served():
    """A bolt App behind our server, with one listener that counts mentions."""
    with FakeSlack() as slack:
        app = make_app(WebClient(token=BOT_TOKEN, base_url=slack.api_url))
        seen: list[dict] = []

        @app.event("app_mention")
        def echo(event, client):  # an outgoing Web API call carrying the text, as answers do
            client.chat_postMessage(channel=event["channel"], text=event["text"])
            seen.append(event)

        server = start_http(app, SIGNING_SECRET, host="127.0.0.1", port=0)
        yield server, seen
        server.shutdown()
        server.server_close()


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_a_signed_event_is_dispatched_to_bolt(served):
    server, seen = served
    status, _ = post_event(server.url, app_mention("<@UBOT> hello"))
    assert status == 200
    assert _wait(lambda: len(seen) == 1)
    assert seen[0]["text"] == "<@UBOT> hello"
    assert server.stats["dispatched"] == 1


def test_a_non_numeric_timestamp_gets_401_not_500(served):
    server, seen = served
    body = json.dumps(app_mention("<@UBOT> hi")).encode()
    status, text = post(server.url, body, {"Content-Type": "application/json",
                                           **headers("not-a-number", signature(SIGNING_SECRET, "not-a-number", body))})
    assert (status, json.loads(text)) == (401, {"error": "invalid signature"})
    assert server.stats["dispatched"] == 0 and seen == []


def test_url_verification_is_answered(served):
    server, _ = served
    status, text = post_event(server.url, {"token": "t", "challenge": "c-123", "type": "url_verification"})
    assert status == 200 and "c-123" in text


def test_bad_framing_gets_clear_errors(served):
    server, seen = served
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest("POST", "/slack/events")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()

    raw = b"\xff\xfe not utf-8"
    assert post(server.url, raw, signed_headers(SIGNING_SECRET, raw))[0] == 400
    assert post(server.url.replace("/slack/events", "/other"), BODY, signed_headers(SIGNING_SECRET, BODY))[0] == 404
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read() == b"ok"
    assert seen == []


def test_no_request_body_reaches_the_logs(served, caplog):
    """bolt writes whole request bodies into some warnings; the filter from quiet_slack_logging must cut
    them, and our own lines (forged, malformed, handled requests) never hold one."""
    server, seen = served

    @server.app.middleware
    def forgets_next(body: dict, next_) -> None:  # this bug makes the real bolt log the whole body
        if (body.get("event") or {}).get("type") == "pin_added":
            return
        next_()

    caplog.set_level(logging.DEBUG)
    marker = "SECRET-PATIENT-NAME-4711"
    forged = json.dumps(app_mention(f"<@UBOT> {marker}")).encode()
    assert post(server.url, forged, {"Content-Type": "application/json", **headers(str(int(time.time())), "v0=" + "0" * 64)})[0] == 401
    assert post_event(server.url, {**app_mention(f"<@UBOT> {marker}"), "event": marker})[0] == 400
    assert post_event(server.url, app_mention(f"<@UBOT> {marker}"))[0] == 200
    dropped = event_callback({"type": "pin_added", "user": "U1", "channel_id": "C1", "item": {"text": marker}})
    assert post_event(server.url, dropped)[0] == 404  # bolt's answer when a middleware neither answers nor calls next
    assert _wait(lambda: len(seen) == 1)
    assert "rejected Slack request" in caplog.text and "refused malformed Slack request" in caplog.text
    assert "skipped calling either `next()`" in caplog.text  # bolt did log its body-bearing warning...
    assert marker not in caplog.text  # ...and none of the bodies got through


def test_bolt_style_payload_messages_are_redacted(caplog):
    """Bolt's RequestVerification wrote the body into its message; the filter cuts it."""
    bolt_logger = quiet_slack_logging()
    caplog.set_level(logging.DEBUG)
    bolt_logger.warning("Invalid request signature detected (signature: v0=1, timestamp: 1, body: %s)",
                        '{"event": {"text": "SECRET-4711"}}')
    assert "SECRET-4711" not in caplog.text
    assert "Invalid request signature detected" in caplog.text and "[payload not logged]" in caplog.text


def test_a_flood_of_forged_requests_logs_one_line(served, caplog):
    server, _ = served
    caplog.set_level(logging.WARNING)
    for _ in range(50):
        assert post(server.url, BODY, headers("1", "v0=" + "0" * 64))[0] == 401
    assert caplog.text.count("rejected Slack request") == 1
    assert server.stats["rejected"] == 50
