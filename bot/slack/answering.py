"""Answer one question in Slack, in a worker: route, stream, render, log.

A listener turns an event into an `Ask` and calls `submit`, which answers the rate limit at once
and queues the rest. The job never raises: a user-facing error is shown as it is, anything else
becomes a short apology with an error id that is also in the logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from bot.answer import Answer, Place, Question
from bot.errors import BackendUnavailable, UserFacingError, new_error_id
from bot.exchange_log import log_answer
from bot.policy import clean_question
from bot.prompt import Turn
from bot.router import RouteResult, explicit_prefix
from bot.slack import blocks
from bot.slack.context import SlackContext
from bot.slack.ratelimit import wait_message
from bot.slack.stream import MessageStream
from bot.slack.text import history_turns

log = logging.getLogger(__name__)

BACKEND_DOWN = ("Sorry, I can't answer right now: the model server is not reachable. Your question is saved; "
                "please ask again in a few minutes.")
BUSY = "I'm answering a lot of questions right now. Please ask again in a minute. :hourglass_flowing_sand:"


@dataclass(frozen=True)
class Ask:
    text: str
    channel: str
    user: str
    event_key: str  # unique per delivery source: a retried event logs once
    source: str  # mention | dm | thread | assistant | command | pick
    thread_ts: str | None = None  # answer in this thread; None answers at the top level
    history_ts: str | None = None  # the thread whose messages are the context
    message_ts: str | None = None  # the user's own message: history stops before it
    domain: str | None = None  # explicit: `/ask legal …` or a picked button
    method: str | None = None  # how an explicit domain was chosen ("explicit", "button")
    is_dm: bool = False
    assistant: bool = False  # a Slack assistant thread: status lines and a title
    quote_question: bool = False  # /ask: the channel can't see the question, so show it
    response_url: str | None = None  # /ask: where to answer when the bot can't post in the channel


def submit(ctx: SlackContext, ask: Ask, notify: Callable[[str], None] | None = None) -> bool:
    """Apply the per-user rate limit, then queue the answer. False when the user was told to wait."""
    notify = notify or partial(ctx.whisper, ask.channel, ask.user, thread_ts=ask.thread_ts)
    wait = ctx.limiter.check(ask.user)
    if wait:
        notify(wait_message(wait))
        return False
    if not ctx.workers.submit(answer, ctx, ask):
        notify(BUSY)
        return False
    return True


class Reply:
    """The bot's one message for an Ask: posted once, then edited in place."""

    def __init__(self, ctx: SlackContext, ask: Ask):
        self.ctx = ctx
        self.ask = ask
        self.ts: str | None = None
        self.webhook: WebhookClient | None = None  # set when we may only answer through response_url

    def show(self, message: blocks.Message) -> None:
        client, ask = self.ctx.client, self.ask
        if self.webhook:
            self.webhook.send(response_type="ephemeral", replace_original=True, **message)
        elif self.ts:
            client.chat_update(channel=ask.channel, ts=self.ts, **message)
        else:
            try:
                self.ts = client.chat_postMessage(channel=ask.channel, thread_ts=ask.thread_ts, **message)["ts"]
            except SlackApiError as err:
                if not ask.response_url or err.response.get("error") not in ("not_in_channel", "channel_not_found"):
                    raise
                # /ask where the bot isn't a member: answer the asker privately, through the command's response_url.
                self.webhook = WebhookClient(ask.response_url)
                self.webhook.send(response_type="ephemeral", **message)


def answer(ctx: SlackContext, ask: Ask) -> None:
    """The worker job. Never raises; a question that could not be answered is still kept (kind "error")."""
    reply = Reply(ctx, ask)
    started = time.perf_counter()
    try:
        _answer(ctx, ask, reply)
    except BackendUnavailable as exc:  # the operator's message goes to the log; the user gets an apology
        log.warning("inference backend unavailable: %s", exc)
        _show_safely(reply, blocks.notice(f":warning: {BACKEND_DOWN}"))
        _keep_question(ctx, ask, reply, BACKEND_DOWN, started)
    except UserFacingError as exc:
        _show_safely(reply, blocks.notice(f":warning: {str(exc)}"))
        _keep_question(ctx, ask, reply, str(exc), started)
    except Exception:
        error_id = new_error_id()
        log.exception("answering failed [error %s] source=%s channel=%s", error_id, ask.source, ask.channel)
        _show_safely(reply, blocks.error_message(error_id))
        _keep_question(ctx, ask, reply, f"error {error_id}", started)


def _keep_question(ctx: SlackContext, ask: Ask, reply: Reply, why: str, started: float) -> None:
    """Log the unanswered question (kind "error": never training data) so nothing the user asked is lost."""
    try:
        ctx.store.log_exchange(
            source=f"slack:{ask.source}", question=ask.text, answer=why, domain=ask.domain, kind="error",
            router_scores={}, chosen_by=ask.method or "none", citations=[], adapter="",
            latency_ms=round((time.perf_counter() - started) * 1000, 1), channel=ask.channel, user=ask.user,
            thread_ts=ask.thread_ts, message_ts=reply.ts, event_key=ask.event_key,
        )
    except Exception:  # the store itself failing: the log line is all that is left
        log.exception("could not keep the unanswered question (source=%s channel=%s)", ask.source, ask.channel)


def _show_safely(reply: Reply, message: blocks.Message) -> None:
    try:
        reply.show(message)
    except Exception:  # Slack itself is failing: the log has the error id already
        log.exception("could not post the failure notice")


def _answer(ctx: SlackContext, ask: Ask, reply: Reply) -> None:
    started = time.perf_counter()
    history = thread_history(ctx, ask)
    route = choose_route(ctx, ask)
    stream = None
    if route.domain:
        title = ctx.domain_title(route.domain)
        if ask.assistant:
            assistant_status(ctx, ask, f"Searching {title.lower()} documents…", title=None if history else ask.text)
        reply.show(blocks.thinking_message(title))
        if reply.ts:
            stream = MessageStream(ctx.client, ask.channel, reply.ts, interval_s=ctx.settings.stream_interval_s,
                                   render=partial(blocks.streaming_message, title))
    try:
        place = Place(ask.channel, ctx.channel_name(ask.channel), ask.is_dm)
        result = ctx.answerer.answer(Question(ask.text, route=route, history=history, place=place),
                                     on_token=stream.feed if stream else None)
    finally:
        if stream:
            stream.close()
    placeholder_ts = reply.ts
    exchange_id = log_exchange(ctx, ask, result, placeholder_ts, started)
    reply.show(render(ctx, ask, result, exchange_id))
    if reply.ts and reply.ts != placeholder_ts:  # a picker or notice posted just now: link it for feedback
        ctx.store.set_exchange_message(exchange_id, ask.channel, reply.ts)


def choose_route(ctx: SlackContext, ask: Ask) -> RouteResult:
    """Explicit choice (/ask, a button, a `legal:` prefix) > the thread's domain, unless the router clearly
    prefers another > the router."""
    question = clean_question(ask.text)
    if ask.domain:
        return replace(ctx.answerer.route(question, ask.domain), method=ask.method or "explicit")
    prefixed, _ = explicit_prefix(question, list(ctx.answerer.discovery.domains))
    kept = ctx.store.thread_domain(ask.channel, ask.history_ts) if ask.history_ts and not prefixed else None
    if kept in ctx.answerer.discovery.domains:
        return ctx.answerer.route_follow_up(question, kept)  # keeps the thread's domain unless clearly another's
    return ctx.answerer.route(question)


def thread_history(ctx: SlackContext, ask: Ask) -> list[Turn]:
    if not ask.history_ts:
        return []
    try:
        resp = ctx.client.conversations_replies(channel=ask.channel, ts=ask.history_ts, limit=50)
    except SlackApiError as err:  # answer without context rather than not at all
        log.warning("conversations.replies failed: %s", err.response.get("error"))
        return []
    turns = history_turns(resp.get("messages", []), bot_user_id=ctx.bot_user_id, before_ts=ask.message_ts)
    if turns and turns[-1] == Turn("user", ask.text):  # a picked question sits just above its picker
        turns.pop()
    return turns


def assistant_status(ctx: SlackContext, ask: Ask, status: str, *, title: str | None = None) -> None:
    """Status line (and, for a new thread, its title) in a Slack assistant thread; best effort."""
    thread = ask.thread_ts or ""
    try:
        if title:
            ctx.client.assistant_threads_setTitle(channel_id=ask.channel, thread_ts=thread, title=title[:100])
        ctx.client.assistant_threads_setStatus(channel_id=ask.channel, thread_ts=thread, status=status)
    except SlackApiError as err:
        log.info("assistant status not set: %s", err.response.get("error"))


def log_exchange(ctx: SlackContext, ask: Ask, result: Answer, message_ts: str | None, started: float) -> int:
    return log_answer(
        ctx.settings, result, ask.text, source=f"slack:{ask.source}", store=ctx.store, channel=ask.channel,
        user=ask.user, thread_ts=ask.thread_ts, message_ts=message_ts, event_key=ask.event_key,
        latency_ms=round((time.perf_counter() - started) * 1000, 1),  # what the user waited, queue included
    )


def _final(ctx: SlackContext, ask: Ask, result: Answer, exchange_id: int) -> blocks.Message:
    quote = blocks.asked(ask.user, ask.text) if ask.quote_question else None
    return blocks.answer_message(result, exchange_id, ctx.domain_title(result.domain or ""), quote=quote)


def _policy(ctx: SlackContext, ask: Ask, result: Answer, exchange_id: int) -> blocks.Message:
    return blocks.policy_message(result, ctx.domain_title(result.domain or ""))


def _picker(ctx: SlackContext, ask: Ask, result: Answer, exchange_id: int) -> blocks.Message:
    return blocks.picker_message(result.route.question or ask.text, ctx.domains, exchange_id)


RENDERERS: dict[str, Callable[[SlackContext, Ask, Answer, int], blocks.Message]] = {
    "answer": _final,
    "abstain": _picker,
    "refused": _policy,
    "redirect": _policy,
    "not_allowed": _policy,
}


def render(ctx: SlackContext, ask: Ask, result: Answer, exchange_id: int) -> blocks.Message:
    return RENDERERS.get(result.kind, _policy)(ctx, ask, result, exchange_id)
