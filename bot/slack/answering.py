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

from bot import metrics
from bot.answer import Answer, Place, Question
from bot.errors import BackendUnavailable, UserFacingError, new_error_id
from bot.exchange_log import exchange_fields, log_answer
from bot.policy import clean_question
from bot.prompt import Turn
from bot.router import RouteResult, explicit_prefix
from bot.slack import attachments, blocks
from bot.slack.attachments import Attachments
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
    files: tuple[str, ...] = ()  # ids of the files attached to the user's message


RESUME_FIELDS = ("channel", "user", "event_key", "source", "thread_ts", "history_ts", "message_ts", "domain",
                 "method", "is_dm", "assistant", "quote_question", "response_url", "team_id", "files")


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
    ticket = Ticket(ask, reply, claimed.id)
    if not enqueue(ctx, ticket):
        notify(ticket.refused or BUSY)  # the cap that refused it, when one did
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
        metrics.count_error("backend_unavailable")
        _show_safely(reply, blocks.notice(f":warning: {BACKEND_DOWN}"))
        _keep_question(ctx, ask, reply, BACKEND_DOWN)
    except UserFacingError as exc:
        metrics.count_error("user_facing")
        _show_safely(reply, blocks.notice(f":warning: {str(exc)}"))
        _keep_question(ctx, ask, reply, str(exc))
    except Exception:
        error_id = new_error_id()
        log.exception("answering failed [error %s] source=%s channel=%s", error_id, ask.source, ask.channel)
        metrics.count_error("internal")
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
    ask = replace(ask, files=tuple(ask.files))  # a resumed Ask has them as a JSON list
    messages = thread_messages(ctx, ask)
    history = thread_history(ctx, ask, messages)
    found = read_attachments(ctx, ask, messages)
    if not ask.text.strip() and ask.files:  # a file shared with no question: say what was read (or why not)
        _files_alone(ctx, ask, reply, found)
        return
    if found.problems:
        _post_notice(ctx, ask, found.problems)
    route = choose_route(ctx, ask, found)
    extra = attachments.best_passages(found, route.question, ctx.answerer.retriever.embedder) if found.read else []
    stream = None
    if route.domain:
        title = ctx.domain_title(route.domain)
        if ask.assistant:
            assistant_status(ctx, ask, f"Searching {title.lower()} documents…", title=None if history else ask.text)
        stream = open_stream(ctx, ask, reply, title)  # native where Slack allows it, else chat.update edits
    try:
        place = Place(ask.channel, ctx.channel_name(ask.channel), ask.is_dm)
        result = ctx.answerer.answer(Question(ask.text, route=route, history=history, place=place,
                                              extra_passages=extra),
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


def read_attachments(ctx: SlackContext, ask: Ask, messages: list[dict]) -> Attachments:
    """This message's files and the thread's earlier ones, read again from Slack for every answer (nothing is
    kept between answers: a restart, another replica or a resumed question sees the same files)."""
    earlier = attachments.thread_file_ids(messages, before_ts=ask.message_ts, bot_user_id=ctx.bot_user_id)
    ids = [i for i in earlier if i not in ask.files] + list(ask.files)
    if not ids:
        return Attachments()
    s = ctx.settings
    return attachments.read_files(ctx.client, ids, report=ask.files, token=ctx.client.token or s.slack_bot_token or "",
                                  max_bytes=s.slack_file_max_bytes, embedder=ctx.answerer.retriever.embedder,
                                  chunk_tokens=s.chunk_tokens, chunk_overlap=s.chunk_overlap)


def _notice_text(problems: list[str]) -> str:
    return ":warning: " + "\n".join(problems)


def _post_notice(ctx: SlackContext, ask: Ask, problems: list[str]) -> None:
    """The files that could not be used, in a short message of their own; the question is still answered."""
    try:
        ctx.client.chat_postMessage(channel=ask.channel, thread_ts=ask.thread_ts, **blocks.notice(_notice_text(problems)))
    except SlackApiError as err:
        log.warning("file notice not posted: %s", err.response.get("error"))


def _files_alone(ctx: SlackContext, ask: Ask, reply: Reply, found: Attachments) -> None:
    """Files with no question: "I read contract.pdf (12 pages); ask me about it in this thread." In a DM's top
    level the note starts a thread under the file, so the questions that follow there see it."""
    reply.ask = replace(ask, thread_ts=ask.thread_ts or ask.message_ts)
    lines = [attachments.ack_text(found.read)] if found.read else []
    if found.problems:
        lines.append(_notice_text(found.problems))
    reply.show(blocks.notice("\n".join(lines)))
    if not found.read:
        return
    domain = ctx.store.thread_domain(ask.channel, ask.history_ts) if ask.history_ts else None
    route = None if domain else ctx.answerer.route(found.read[0].chunks[0].text[:1000] if found.read[0].chunks else "")
    # An exchange marks the thread as ours (and its domain, routed on the file's text), so replies without a
    # mention are answered; it keeps the files' names and sizes, never their text.
    reply.exchange_id = ctx.store.log_exchange(
        source=f"slack:{ask.source}", question=ask.text, answer=lines[0], domain=domain or (route and route.domain),
        kind=attachments.KIND_ACK, router_scores=route.scores if route else {}, chosen_by="file", citations=[],
        adapter="", channel=ask.channel, user=ask.user, thread_ts=reply.ask.thread_ts, message_ts=reply.ts,
        event_key=ask.event_key, **_timing(reply),
    )


def choose_route(ctx: SlackContext, ask: Ask, found: Attachments | None = None) -> RouteResult:
    """Explicit choice (/ask, a button, a `legal:` prefix) > the thread's domain, unless the router clearly
    prefers another > the router (on the question, then on the question with the attached files' text)."""
    question = clean_question(ask.text)
    if ask.domain:
        return replace(ctx.answerer.route(question, ask.domain), method=ask.method or "explicit")
    prefixed, _ = explicit_prefix(question, list(ctx.answerer.discovery.domains))
    kept = ctx.store.thread_domain(ask.channel, ask.history_ts) if ask.history_ts and not prefixed else None
    if kept in ctx.answerer.discovery.domains:
        return ctx.answerer.route_follow_up(question, kept)  # keeps the thread's domain unless clearly another's
    route = ctx.answerer.route(question)
    if route.domain is None and found and found.read:  # "what is the fee in this contract?": the file says legal
        best = attachments.best_passages(found, question, ctx.answerer.retriever.embedder, k=1)
        by_file = ctx.answerer.route(f"{question}\n{best[0].text[:1000]}") if best else route
        if by_file.domain:
            return replace(by_file, question=route.question)
    return route


def thread_messages(ctx: SlackContext, ask: Ask) -> list[dict]:
    """The messages of the thread the Ask continues (its history and its earlier files); [] for none."""
    if not ask.history_ts:
        return []
    try:
        resp = ctx.client.conversations_replies(channel=ask.channel, ts=ask.history_ts, limit=50)
    except SlackApiError as err:  # answer without context rather than not at all
        log.warning("conversations.replies failed: %s", err.response.get("error"))
        return []
    return list(resp.get("messages", []))


def thread_history(ctx: SlackContext, ask: Ask, messages: list[dict] | None = None) -> list[Turn]:
    messages = thread_messages(ctx, ask) if messages is None else messages
    turns = history_turns(messages, bot_user_id=ctx.bot_user_id, before_ts=ask.message_ts)
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
    fields = _file_fields(result)
    if fields:  # the answer saw a file: the store keeps the files' names instead of the answer
        reply.exchange_id = ctx.store.log_exchange(source=f"slack:{ask.source}", **{
            **exchange_fields(result, ask.text), **fields, "channel": ask.channel, "user": ask.user,
            "thread_ts": ask.thread_ts, "message_ts": message_ts, "event_key": ask.event_key, **_timing(reply)})
        return reply.exchange_id
    reply.exchange_id = log_answer(
        ctx.settings, result, ask.text, source=f"slack:{ask.source}", store=ctx.store, channel=ask.channel,
        user=ask.user, thread_ts=ask.thread_ts, message_ts=message_ts, event_key=ask.event_key, **_timing(reply),
    )
    return reply.exchange_id


def _file_fields(result: Answer) -> dict:
    """An answer that saw an attached file's passages may quote the file: the store keeps the files' names, not the
    answer, under its own kind, which no training set takes."""
    files = sorted({str(p.metadata.get("file")) for p in result.passages if attachments.is_file_passage(p)})
    if not files:
        return {}
    return {"kind": attachments.KIND_ANSWER, "answer": f"(answered from the attached file(s) {', '.join(files)}; "
                                                      "the answer is not kept, as it may quote them)"}


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
