"""Answer one question in Slack, in a worker: route, stream, render, log.

A listener turns an event into an `Ask` and calls `submit`, which stores the question durably (in the
transaction that claims its event), answers the rate limit at once and queues the rest in the waiting line.
The job never raises: a user-facing error is shown as it is, anything else becomes a short apology with an
error id that is also in the logs. Questions left open by a crash are resumed by `resume` (bot.slack.resume).
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
from bot.slack.stream import NativeStream, open_stream
from bot.slack.text import history_turns
from bot.slack.waiting import Ticket

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
    team_id: str | None = None  # the asker's workspace (Slack Connect: not ours); native streams are addressed to it


RESUME_FIELDS = ("channel", "user", "event_key", "source", "thread_ts", "history_ts", "message_ts", "domain",
                 "method", "is_dm", "assistant", "quote_question", "response_url", "team_id")


def submit(ctx: SlackContext, ask: Ask, notify: Callable[[str], None] | None = None) -> bool:
    """Store the question with its event claim, apply the per-user rate limit, then queue the answer.
    False when the user was told to wait; True when it was queued or was a duplicate (nothing to do)."""
    notify = notify or partial(ctx.whisper, ask.channel, ask.user, thread_ts=ask.thread_ts)
    claimed = ctx.questions.claim(ask.event_key, source=f"slack:{ask.source}", channel=ask.channel, user=ask.user,
                                  question=ask.text, resume={k: getattr(ask, k) for k in RESUME_FIELDS})
    if claimed is None:
        return True  # a redelivery of a question that is answered or being answered
    wait = ctx.limiter.check(ask.user)
    if wait:
        notify(wait_message(wait))
        ctx.questions.finish(claimed.id, "failed")
        return False
    reply = Reply(ctx, ask, question_id=claimed.id, ts=claimed.placeholder_ts)
    if not enqueue(ctx, Ticket(ask, reply, claimed.id)):
        notify(BUSY)
        ctx.questions.finish(claimed.id, "failed")
        return False
    return True


def enqueue(ctx: SlackContext, ticket: Ticket) -> bool:
    """Join the waiting line and queue the job; False (and nothing queued) when the pool is full."""
    return ctx.line.join(ticket, lambda: ctx.workers.submit(answer, ctx, ticket))


class Reply:
    """The bot's one message for an Ask: posted once, then edited in place."""

    def __init__(self, ctx: SlackContext, ask: Ask, *, question_id: int | None = None, ts: str | None = None):
        self.ctx = ctx
        self.ask = ask
        self.question_id = question_id
        self.ts: str | None = ts  # a resumed question edits the placeholder it had
        self.webhook: WebhookClient | None = None  # set when we may only answer through response_url
        self.queue_ms: float | None = None
        self.started = time.perf_counter()  # when answering began (after the queue)
        self.exchange_id: int | None = None

    def show(self, message: blocks.Message) -> None:
        client, ask = self.ctx.client, self.ask
        if self.webhook:
            self.webhook.send(response_type="ephemeral", replace_original=True, **message)
        elif self.ts and self._update(message):
            return
        else:
            try:
                self.ts = client.chat_postMessage(channel=ask.channel, thread_ts=ask.thread_ts, **message)["ts"]
            except SlackApiError as err:
                if not ask.response_url or err.response.get("error") not in ("not_in_channel", "channel_not_found"):
                    raise
                # /ask where the bot isn't a member: answer the asker privately, through the command's response_url.
                self.webhook = WebhookClient(ask.response_url)
                self.webhook.send(response_type="ephemeral", **message)
                return
            if self.question_id is not None:  # a resumed answer edits this message instead of posting again
                try:
                    self.ctx.questions.set_placeholder(self.question_id, self.ts)
                except Exception:  # a resume would post a new message: harmless
                    log.exception("could not record the placeholder of question %s", self.question_id)

    def _update(self, message: blocks.Message) -> bool:
        """Edit our message; False when it is gone (deleted while we restarted), so a new one is posted."""
        try:
            self.ctx.client.chat_update(channel=self.ask.channel, ts=self.ts, **message)
            return True
        except SlackApiError as err:
            if err.response.get("error") != "message_not_found":
                raise
            self.ts = None
            return False


def answer(ctx: SlackContext, ticket: Ticket) -> None:
    """The worker job. Never raises; a question that could not be answered is still kept (kind "error")."""
    ask, reply = ticket.ask, ticket.reply
    ctx.line.wait_turn(ticket)
    reply.queue_ms, reply.started = ticket.queue_ms(), time.perf_counter()
    status = "failed"
    try:
        if ticket.question_id is not None:
            ctx.questions.start(ticket.question_id)
        _answer(ctx, ask, reply)
        status = "answered"
    except BackendUnavailable as exc:  # the operator's message goes to the log; the user gets an apology
        log.warning("inference backend unavailable: %s", exc)
        _show_safely(reply, blocks.notice(f":warning: {BACKEND_DOWN}"))
        _keep_question(ctx, ask, reply, BACKEND_DOWN)
    except UserFacingError as exc:
        _show_safely(reply, blocks.notice(f":warning: {str(exc)}"))
        _keep_question(ctx, ask, reply, str(exc))
    except Exception:
        error_id = new_error_id()
        log.exception("answering failed [error %s] source=%s channel=%s", error_id, ask.source, ask.channel)
        _show_safely(reply, blocks.error_message(error_id))
        _keep_question(ctx, ask, reply, f"error {error_id}")
    finally:
        ctx.line.leave(ticket)
        _finish_question(ctx, ticket, status)


def _finish_question(ctx: SlackContext, ticket: Ticket, status: str) -> None:
    if ticket.question_id is None:
        return
    reply = ticket.reply
    try:
        ctx.questions.finish(ticket.question_id, status, exchange_id=reply.exchange_id, queue_ms=reply.queue_ms,
                             answer_ms=_ms_since(reply.started))
    except Exception:  # it stays open and is resumed later: answered twice beats lost
        log.exception("could not mark question %s %s", ticket.question_id, status)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _timing(reply: Reply) -> dict:
    """Queue and answer time apart; latency_ms is what the user waited, queue included."""
    answer_ms = _ms_since(reply.started)
    queue_ms = reply.queue_ms or 0.0
    return {"queue_ms": queue_ms, "answer_ms": answer_ms, "latency_ms": round(queue_ms + answer_ms, 1)}


def _keep_question(ctx: SlackContext, ask: Ask, reply: Reply, why: str) -> None:
    """Log the unanswered question (kind "error": never training data) so nothing the user asked is lost."""
    try:
        reply.exchange_id = ctx.store.log_exchange(
            source=f"slack:{ask.source}", question=ask.text, answer=why, domain=ask.domain, kind="error",
            router_scores={}, chosen_by=ask.method or "none", citations=[], adapter="", channel=ask.channel,
            user=ask.user, thread_ts=ask.thread_ts, message_ts=reply.ts, event_key=ask.event_key, **_timing(reply),
        )
    except Exception:  # the store itself failing: the log line is all that is left
        log.exception("could not keep the unanswered question (source=%s channel=%s)", ask.source, ask.channel)


def _show_safely(reply: Reply, message: blocks.Message) -> None:
    try:
        reply.show(message)
    except Exception:  # Slack itself is failing: the log has the error id already
        log.exception("could not post the failure notice")


def _answer(ctx: SlackContext, ask: Ask, reply: Reply) -> None:
    history = thread_history(ctx, ask)
    route = choose_route(ctx, ask)
    stream = None
    if route.domain:
        title = ctx.domain_title(route.domain)
        if ask.assistant:
            assistant_status(ctx, ask, f"Searching {title.lower()} documents…", title=None if history else ask.text)
        stream = open_stream(ctx, ask, reply, title)  # native where Slack allows it, else chat.update edits
    try:
        place = Place(ask.channel, ctx.channel_name(ask.channel), ask.is_dm)
        result = ctx.answerer.answer(Question(ask.text, route=route, history=history, place=place),
                                     on_token=stream.feed if stream else None)
    except Exception:
        if isinstance(stream, NativeStream):
            stream.stop()  # out of the streaming state, so the apology can replace the draft
        raise
    finally:
        if stream:
            stream.close()
    placeholder_ts = reply.ts
    exchange_id = log_exchange(ctx, ask, result, placeholder_ts, reply)
    if isinstance(stream, NativeStream):  # stop, then the guarded answer replaces the streamed draft
        reply.ts = stream.finish(render(ctx, ask, result, exchange_id), result.text)
    else:
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


def log_exchange(ctx: SlackContext, ask: Ask, result: Answer, message_ts: str | None, reply: Reply) -> int:
    reply.exchange_id = log_answer(
        ctx.settings, result, ask.text, source=f"slack:{ask.source}", store=ctx.store, channel=ask.channel,
        user=ask.user, thread_ts=ask.thread_ts, message_ts=message_ts, event_key=ask.event_key, **_timing(reply),
    )
    return reply.exchange_id


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
