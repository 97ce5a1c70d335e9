"""Shape checks for signed Slack request bodies, run before bolt sees them.

bolt trusts Slack's shapes: a JSON array, a string `event` or a slash command without `channel_id` used
to raise inside bolt or a listener and came back as 500, which Slack counts as a failed delivery and
retries. `triage` decides each case; its messages are fixed text, never body content. Decisions:

- Empty body, invalid or too deeply nested JSON, JSON that is not an object, or an object without a
  string `type`: 400. Slack never sends these, a retry cannot succeed, and 400 tells the sender why.
- `url_verification` without a string `challenge`: 400, there is nothing to echo back.
- `event_callback` without an object `event` holding a string `type`: 400 (bolt indexes event["type"]).
- `app_rate_limited`: 200 with an empty body, and a warning, without bolt. Slack sends it (it has no
  inner event) when it starts dropping our events; bolt has no listener kind for it.
- Form body with `payload`: a JSON object with a string `type`, else 400. `block_actions` also needs a
  non-empty `actions` list of objects with a string `action_id`, and a `user` object with a string `id`;
  `view_submission` and `view_closed` need a `view` object with a string `callback_id` and that `user`.
- Form body with `command` (a slash command): non-empty `command`, `channel_id` and `user_id`, else 400;
  /ask answers `user_id` in `channel_id`.
- A slash command whose text says "payload": bolt took it for an interaction and found nothing;
  `for_bolt` percent-encodes one letter so it reaches its listener unchanged.
- Form body with `ssl_check`: handed to bolt, whose SslCheck middleware answers 200.
- Any other form body: 400.
- A body that passes here but that bolt still cannot read (its context extraction indexes `user`, `team`
  or `authorizations` as Slack shapes them): 400 too, caught around BoltRequest in ingress.
- Everything else goes to bolt. Types no listener handles (other events, interactions and commands, new
  top-level types) are legal: ingress turns bolt's "unhandled request" 404 into 200 with an empty body,
  as non-2xx makes Slack retry and, past 5% failures an hour, disable the app's event subscriptions.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl


class Malformed(ValueError):
    """The body cannot be a Slack payload (answer 400); the message says why and holds no body content."""


class Route(Enum):
    DISPATCH = "dispatch"  # hand to bolt
    RATE_LIMITED = "app_rate_limited"  # answer 200 ourselves and warn


def is_json(text: str, content_type: str | None) -> bool:
    """bolt's own rule (slack_bolt.request.internals.parse_body), so we check what bolt will parse."""
    return (content_type or "").split(";")[0] == "application/json" or text.startswith("{")


def triage(text: str, content_type: str | None) -> Route:
    """Where a signed body goes; raise Malformed for a shape Slack never sends."""
    if not text:
        raise Malformed("empty body")
    if is_json(text, content_type):
        return _events_api(_json_object(text, "body"))
    fields = dict(parse_qsl(text, keep_blank_values=True))
    if "payload" in fields:
        _interaction(_json_object(fields["payload"], "form field `payload`"))
    elif "command" in fields:
        missing = [f for f in ("command", "channel_id", "user_id") if not fields.get(f)]
        if missing:
            raise Malformed("slash command without " + ", ".join(f"`{f}`" for f in missing))
    elif "ssl_check" not in fields:
        raise Malformed("form body is neither an interaction `payload` nor a slash `command`")
    return Route.DISPATCH


def for_bolt(text: str, content_type: str | None) -> str:
    """The body to hand bolt. bolt reads every form body that contains the substring "payload" as an
    interaction, so a slash command whose text says "payload" reached no listener: percent-encode one
    letter, which decodes to the same fields but no longer matches."""
    if is_json(text, content_type) or "payload" not in text:
        return text
    if "payload" in dict(parse_qsl(text, keep_blank_values=True)):  # a real interaction: bolt reads it right
        return text
    return text.replace("payload", "p%61yload")


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise Malformed(f"{what} is not valid JSON") from None
    except RecursionError:  # json's C decoder recurses per nesting level; 1 MiB of "[" exhausts the stack
        raise Malformed(f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise Malformed(f"{what} is JSON but not an object")
    if not isinstance(value.get("type"), str):
        raise Malformed(f"{what} has no string `type`")
    return value


def _events_api(body: dict[str, Any]) -> Route:
    kind = body["type"]
    if kind == "url_verification" and not isinstance(body.get("challenge"), str):
        raise Malformed("url_verification without a string `challenge`")
    if kind == "event_callback":
        event = body.get("event")
        if not isinstance(event, dict):
            raise Malformed("event_callback without an object `event`")
        if not isinstance(event.get("type"), str):
            raise Malformed("event_callback whose `event` has no string `type`")
    return Route.RATE_LIMITED if kind == "app_rate_limited" else Route.DISPATCH


def _interaction(payload: dict[str, Any]) -> None:
    kind = payload["type"]
    if kind not in ("block_actions", "view_submission", "view_closed"):
        return
    user = payload.get("user")
    if not isinstance(user, dict) or not isinstance(user.get("id"), str):
        raise Malformed(f"{kind} without a `user` object holding a string `id`")
    if kind == "block_actions":
        actions = payload.get("actions")
        if not isinstance(actions, list) or not actions:
            raise Malformed("block_actions without a non-empty `actions` list")
        if not all(isinstance(a, dict) and isinstance(a.get("action_id"), str) for a in actions):
            raise Malformed("block_actions with an action that has no string `action_id`")
    else:
        view = payload.get("view")
        if not isinstance(view, dict) or not isinstance(view.get("callback_id"), str):
            raise Malformed(f"{kind} without a `view` object holding a string `callback_id`")
