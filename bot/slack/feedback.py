"""Feedback from Slack into the store: reactions, 👍/👎 (Slack's native feedback buttons, and the older
buttons on answers posted before them), the correction modal and `correction:` thread replies. Each signal names its exchange and carries a unique event key, so a
retried delivery counts once."""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError

from bot.slack import blocks
from bot.slack.context import SlackContext
from bot.slack.text import latest_answer_ts, reaction_signal
from bot.store.store import UnknownExchange

log = logging.getLogger(__name__)

THANKS = "Thanks for the feedback! :pray:"
THANKS_CORRECTION = "Thanks, I've logged your correction for the domain's owners and the next training run. :memo:"
NO_ANSWER_HERE = "I couldn't find an answer of mine in this thread to correct."
EMPTY_CORRECTION = "Write the right answer after `correction:`, e.g. `correction: the notice period is 30 days`."
GONE = "I couldn't find that answer any more, so the feedback wasn't recorded."


def record(ctx: SlackContext, exchange_id: int, kind: str, value: str, *, user: str | None, key: str) -> bool:
    """add_feedback that treats an unknown exchange (e.g. a wiped database) as a logged no-op."""
    try:
        return ctx.store.add_feedback(exchange_id, kind, value, user=user, event_key=key)
    except UnknownExchange:
        log.warning("feedback for unknown exchange %s ignored", exchange_id)
        return False


def on_reaction(ctx: SlackContext, event: dict, event_id: str) -> bool:
    """👍/👎 (added or removed) or the opt-out reaction on one of our answers."""
    item = event.get("item") or {}
    added = event.get("type") == "reaction_added"
    signal = reaction_signal(event.get("reaction", ""), added, ctx.settings.optout_reaction)
    if item.get("type") != "message" or signal is None:
        return False
    row = ctx.store.exchange_by_message(item.get("channel", ""), item.get("ts", ""))
    if row is None:  # not one of our answers
        return False
    kind, value = signal
    return record(ctx, row["id"], kind, value, user=event.get("user"), key=f"event:{event_id}")


def _exchange_id(body: dict) -> int | None:
    """The exchange a button names: its value is the id (older buttons) or "id:vote" (native feedback buttons)."""
    try:
        return int(str(body["actions"][0]["value"]).partition(":")[0])
    except (KeyError, IndexError, TypeError, ValueError):
        log.warning("feedback button without a usable exchange id")
        return None


def _ephemeral(ctx: SlackContext, body: dict, text: str) -> None:
    container = body.get("container") or {}
    channel = container.get("channel_id") or (body.get("channel") or {}).get("id", "")
    ctx.whisper(channel, body["user"]["id"], text, container.get("thread_ts"))


def on_vote(ctx: SlackContext, body: dict, vote: str) -> bool:
    exchange_id = _exchange_id(body)
    if exchange_id is None:
        return False
    user = body["user"]["id"]
    recorded = record(ctx, exchange_id, "button", vote, user=user, key=f"button:{exchange_id}:{user}:{vote}")
    if vote == "+1":
        _ephemeral(ctx, body, THANKS if recorded else "You already told me this one helped. Thanks!")
    return recorded


def on_feedback_buttons(ctx: SlackContext, body: dict) -> bool:
    """A click on the native feedback element: 👍 records +1 like the old button; 👎 also asks what was wrong."""
    try:
        parsed = blocks.vote_of(str(body["actions"][0]["value"]))
    except (KeyError, IndexError, TypeError):
        parsed = None
    if parsed is None:
        log.warning("feedback buttons without a usable value ignored")
        return False
    if parsed[1] == blocks.DOWN:
        open_correction(ctx, body)
    return on_vote(ctx, body, parsed[1])


def open_correction(ctx: SlackContext, body: dict) -> None:
    """👎 opens a modal asking for the right answer (trigger_id is valid for 3 s: do this first)."""
    exchange_id = _exchange_id(body)
    if exchange_id is not None:
        ctx.client.views_open(trigger_id=body["trigger_id"], view=blocks.correction_modal(exchange_id))


def on_correction_view(ctx: SlackContext, body: dict, view: dict) -> dict[str, str] | None:
    """Record the modal's correction; return field errors for Slack to show, or None to close it."""
    values = (view.get("state") or {}).get("values") or {}
    text = ((values.get(blocks.CORRECTION_BLOCK) or {}).get(blocks.CORRECTION_INPUT) or {}).get("value") or ""
    if not text.strip():
        return {blocks.CORRECTION_BLOCK: "Please write what the right answer would have been."}
    try:
        exchange_id = int(view.get("private_metadata", ""))
    except ValueError:
        log.warning("correction modal without an exchange id")
        return None
    record(ctx, exchange_id, "correction", text.strip(), user=body["user"]["id"], key=f"view:{view.get('id')}")
    return None


def on_correction_reply(ctx: SlackContext, event: dict, event_id: str, text: str) -> bool:
    """`correction: …` in a thread corrects our latest answer above it."""
    channel, user, ts = event["channel"], event.get("user"), event["ts"]
    thread = event.get("thread_ts")
    row = _answer_above(ctx, channel, thread, ts) if thread else None
    note = NO_ANSWER_HERE if row is None else (EMPTY_CORRECTION if not text else None)
    if note:
        ctx.whisper(channel, user or "", note, thread)
        return False
    recorded = record(ctx, row["id"], "correction", text, user=user, key=f"event:{event_id}")
    try:
        ctx.client.reactions_add(channel=channel, timestamp=ts, name="memo")
    except SlackApiError as err:
        log.info("could not acknowledge the correction: %s", err.response.get("error"))
    return recorded


def _answer_above(ctx: SlackContext, channel: str, thread: str, before_ts: str) -> dict | None:
    try:
        messages = ctx.client.conversations_replies(channel=channel, ts=thread, limit=200).get("messages", [])
    except SlackApiError as err:
        log.warning("conversations.replies failed: %s", err.response.get("error"))
        return None
    ts = latest_answer_ts(messages, bot_user_id=ctx.bot_user_id, before_ts=before_ts)
    return ctx.store.exchange_by_message(channel, ts) if ts else None

