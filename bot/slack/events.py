"""Turn Slack events into Asks (questions to answer) or feedback. Called by the listeners in
slack_app; each function is what one kind of event means to Domainbot."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from slack_sdk.errors import SlackApiError

from bot.slack import blocks, feedback
from bot.slack.answering import Ask, submit
from bot.slack.attachments import FILE_SHARE, file_ids
from bot.slack.context import SlackContext
from bot.slack.text import clean_text, correction, mentions, parse_ask

log = logging.getLogger(__name__)

ASK_USAGE = "Usage: `/ask [domain] question`, e.g. `/ask legal does the agreement renew automatically?`"


def on_mention(ctx: SlackContext, event: dict, event_id: str) -> None:
    """@Domainbot in a channel: answer in the thread (a new one under the mention, or the one it is in)."""
    text = clean_text(event.get("text", ""), ctx.bot_user_id)
    fix = correction(text)
    if fix is not None:
        feedback.on_correction_reply(ctx, event, event_id, fix)
        return
    thread = event.get("thread_ts")
    submit(ctx, Ask(text, event["channel"], event["user"], f"event:{event_id}", "mention",
                    thread_ts=thread or event["ts"], history_ts=thread, message_ts=event["ts"],
                    team_id=event.get("user_team") or event.get("team"), files=tuple(file_ids(event.get("files")))))


def may_be_question(ctx: SlackContext, event: dict) -> bool:
    """Whether an event is addressed to us: a mention, a DM, or a reply in a thread we answered in (cheap:
    one indexed lookup). Only these are stored before the ack; people talking elsewhere are never stored."""
    if event.get("type") == "app_mention":
        return bool(event.get("user") and event.get("channel") and event.get("ts"))
    if event.get("type") != "message" or event.get("bot_id") or not event.get("user"):
        return False
    if event.get("subtype") not in (None, FILE_SHARE):
        return False  # edits, joins, other bots; a message with a file attached is still a message
    if not event.get("channel") or not event.get("ts"):
        return False
    if event.get("channel_type") == "im":
        return True
    thread = event.get("thread_ts") if event.get("thread_ts") != event["ts"] else None
    # mentions arrive as app_mention too; other threads are people talking
    return not mentions(event.get("text", ""), ctx.bot_user_id) and _our_thread(ctx, event["channel"], thread)


def on_message(ctx: SlackContext, event: dict, event_id: str, *, assistant: bool = False) -> None:
    """A DM, a reply in a thread we answered in, or a message in an assistant thread."""
    if not may_be_question(ctx, event):
        return
    channel, ts = event["channel"], event["ts"]
    is_dm = event.get("channel_type") == "im"
    thread = event.get("thread_ts") if event.get("thread_ts") != ts else None
    text = clean_text(event.get("text", ""), ctx.bot_user_id)
    fix = correction(text)
    if fix is not None:
        feedback.on_correction_reply(ctx, event, event_id, fix)
        return
    source = "assistant" if assistant else ("thread" if thread else "dm")
    submit(ctx, Ask(text, channel, event["user"], f"event:{event_id}", source, thread_ts=thread, history_ts=thread,
                    message_ts=ts, is_dm=is_dm, assistant=assistant,
                    team_id=event.get("user_team") or event.get("team"), files=tuple(file_ids(event.get("files")))))


def _our_thread(ctx: SlackContext, channel: str, thread: str | None) -> bool:
    return bool(thread and ctx.store.thread_domain(channel, thread))


def on_ask_command(ctx: SlackContext, command: dict, ack: Callable[..., object]) -> None:
    """`/ask [domain] question`: ack at once (with the usage or a wait note if needed), answer later."""
    domain, question = parse_ask(command.get("text", ""), ctx.answerer.discovery.domains)
    if not question:
        ack(text=ASK_USAGE)
        return
    channel = command["channel_id"]
    ask = Ask(question, channel, command["user_id"], f"command:{command.get('trigger_id')}", "command",
              domain=domain, method="explicit" if domain else None, is_dm=channel.startswith("D"),
              quote_question=True, response_url=command.get("response_url"))
    if submit(ctx, ask, notify=lambda text: ack(text=text)):
        ack()


def on_pick(ctx: SlackContext, body: dict) -> None:
    """A domain button under "Which domain?": log the pick (routing feedback), then answer with it."""
    action, user = body["actions"][0], body["user"]["id"]
    container = body.get("container") or {}
    try:
        value = json.loads(action["value"])
        exchange_id, domain, question = int(value["x"]), str(value["d"]), str(value["q"])
    except (KeyError, TypeError, ValueError):
        log.warning("domain pick with a malformed value ignored")
        return
    channel, thread = container.get("channel_id") or body["channel"]["id"], container.get("thread_ts")
    if domain not in ctx.answerer.discovery.domains:
        ctx.whisper(channel, user, f"The {domain} assistant isn't available any more.", thread)
        return
    feedback.record(ctx, exchange_id, "reroute", domain, user=user, key=f"pick:{exchange_id}:{user}:{domain}")
    ctx.answerer.refit_router(ctx.store.router_examples(), background=True)
    _close_picker(ctx, channel, container.get("message_ts"), ctx.domain_title(domain))
    submit(ctx, Ask(question, channel, user, f"pick:{exchange_id}:{domain}:{action.get('action_ts')}", "pick",
                    thread_ts=thread, history_ts=thread, domain=domain, method="button",
                    is_dm=channel.startswith("D"), quote_question=thread is None))


def _close_picker(ctx: SlackContext, channel: str, ts: str | None, title: str) -> None:
    """Replace the buttons with the choice, so one question is not answered twice."""
    if not ts:
        return
    try:
        ctx.client.chat_update(channel=channel, ts=ts, **blocks.picked_message(title))
    except SlackApiError as err:
        log.info("picker not updated: %s", err.response.get("error"))


def on_assistant_thread_started(ctx: SlackContext, payload: dict) -> None:
    """A new assistant thread: greet, and offer one suggested prompt per domain."""
    thread = payload["assistant_thread"]
    channel, ts = thread["channel_id"], thread["thread_ts"]
    try:
        ctx.client.chat_postMessage(channel=channel, thread_ts=ts, text=blocks.greeting(ctx.domains))
        ctx.client.assistant_threads_setSuggestedPrompts(
            channel_id=channel, thread_ts=ts, title="Try one of these:", prompts=blocks.suggested_prompts(ctx.domains)
        )
    except SlackApiError as err:
        log.warning("assistant thread set-up failed: %s", err.response.get("error"))
