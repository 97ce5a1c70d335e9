"""Resume Slack questions that a crash left open, and keep this process's leases alive.

At start-up, and every few seconds after (the `Keeper` thread), open questions whose owner's lease lapsed or
whose owner is a dead process on this host are taken over: answered if they are fresh, otherwise (too old, or
already tried `MAX_ATTEMPTS` times) their placeholder becomes an apology with an "Ask again" button.
The Procfile's `worker:` has no model to answer with; when no Slack process took a question over within
`ABANDONED_S`, it apologises (`apologise_abandoned`), so nobody is left on "Looking into it…".
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.slack import events
from bot.slack.answering import RESUME_FIELDS, Ask, Reply, enqueue, submit
from bot.slack.context import SlackContext
from bot.slack.text import unrecorded_placeholder
from bot.slack.waiting import Ticket, apology_message
from bot.store.questions import MAX_ATTEMPTS, Claimed, Questions

log = logging.getLogger(__name__)

ABANDONED_S = 120.0  # a lease lapsed this long ago: no Slack process is running to resume it
MAX_AGE_S = 15 * 60  # older than this, an answer would surprise more than help (and /ask's response_url expires)
RESTARTED = "I was restarted while working on it. Press the button to ask again."


def resume_open(ctx: SlackContext) -> int:
    """Take over every open question nobody holds; returns how many were resumed or apologised for."""
    taken = ctx.questions.take_stale()
    for claimed in taken:
        resume(ctx, claimed)
    if taken:
        log.warning("resumed %d question(s) left open by a stopped process", len(taken))
    return len(taken)


def resume(ctx: SlackContext, claimed: Claimed) -> None:
    row = ctx.questions.get(claimed.id) or {}
    if claimed.status == "received":
        replay(ctx, claimed, row)
        return
    fields = {k: v for k, v in claimed.resume.items() if k in RESUME_FIELDS}
    if not fields.get("channel"):
        ctx.questions.finish(claimed.id, "failed")  # nothing to answer into
        return
    ask = Ask(text=row.get("question") or "", **fields)
    if claimed.placeholder_ts is None:
        claimed = replace(claimed, placeholder_ts=adopt_placeholder(ctx.client, ctx.questions, ctx.bot_user_id,
                                                                    claimed.id, fields))
    too_long = (row.get("question_chars") or 0) > len(ask.text)  # stored cut: the policy refused it anyway
    if claimed.attempts >= MAX_ATTEMPTS or _age_s(row) > MAX_AGE_S or too_long:
        apologise(ctx, ask, claimed)
        return
    reply = Reply(ctx, ask, question_id=claimed.id, ts=claimed.placeholder_ts)
    if not enqueue(ctx, Ticket(ask, reply, claimed.id)):
        apologise(ctx, ask, claimed)


def replay(ctx: SlackContext, claimed: Claimed, row: dict) -> None:
    """An event acknowledged but never handled (the crash came before its listener ran): handle it now."""
    key = str(claimed.resume.get("key") or "")
    event = {**(claimed.resume.get("event") or {}), "text": row.get("question") or ""}
    try:
        if event.get("type") == "app_mention":
            events.on_mention(ctx, event, key.removeprefix("event:"))
        else:
            events.on_message(ctx, event, key.removeprefix("event:"))
    except Exception:  # a poison event must not come back every round
        log.exception("replaying question %s failed", claimed.id)
        ctx.questions.finish(claimed.id, "failed")
        return
    ctx.questions.settle(key)


def adopt_placeholder(client: WebClient, questions: Questions, bot_user_id: str | None, question_id: int,
                      fields: dict[str, Any]) -> str | None:
    """A resumed question with no recorded placeholder takes the holding message a crash left unrecorded in its
    thread (a waiting note, "Looking into it", a stream's draft): it becomes the answer or the apology instead
    of staying beside them for good. None when there is none (or no thread to look in: a top-level DM reply)."""
    channel, thread = fields.get("channel"), fields.get("thread_ts")
    if not channel or not thread or not bot_user_id:
        return None
    try:
        messages = client.conversations_replies(channel=channel, ts=thread, limit=200).get("messages", [])
    except SlackApiError as err:
        log.warning("could not look for question %s's placeholder: %s", question_id, err.response.get("error"))
        return None
    ts = unrecorded_placeholder(messages, bot_user_id=bot_user_id, after_ts=fields.get("message_ts") or thread,
                                recorded=partial(questions.is_placeholder, channel))
    if ts:
        questions.set_placeholder(question_id, ts)
    return ts


def apologise(ctx: SlackContext, ask: Ask, claimed: Claimed) -> None:
    """The placeholder (or a new message in the thread) says it failed and offers to ask again."""
    reply = Reply(ctx, ask, ts=claimed.placeholder_ts)
    try:
        reply.show(apology_message(claimed.id, RESTARTED))
    except SlackApiError as err:
        log.warning("apology for question %s not posted: %s", claimed.id, err.response.get("error"))
    ctx.questions.finish(claimed.id, "failed")


def apologise_abandoned(client: WebClient, questions: Questions, grace_s: float = ABANDONED_S) -> int:
    """Without a model: every question no Slack process resumed within `grace_s` gets its apology."""
    taken = questions.take_stale(grace_s)
    bot_user_id: str | None = None
    for claimed in taken:
        fields = claimed.resume.get("event") or claimed.resume
        channel = fields.get("channel")
        thread = fields.get("thread_ts") or (fields.get("ts") if fields.get("type") == "app_mention" else None)
        message = apology_message(claimed.id, RESTARTED)
        placeholder = claimed.placeholder_ts
        try:
            if placeholder is None and claimed.status != "received":  # received: nothing was posted yet
                bot_user_id = bot_user_id or client.auth_test().get("user_id")
                placeholder = adopt_placeholder(client, questions, bot_user_id, claimed.id, fields)
            if placeholder:
                client.chat_update(channel=channel, ts=placeholder, **message)
            elif channel:
                client.chat_postMessage(channel=channel, thread_ts=thread, **message)
        except SlackApiError as err:
            log.warning("apology for question %s not posted: %s", claimed.id, err.response.get("error"))
        questions.finish(claimed.id, "failed")
    return len(taken)


def ask_again(ctx: SlackContext, body: dict) -> None:
    """The "Ask again" button: the stored question, asked anew by whoever pressed it, in the same place."""
    action, user = body["actions"][0], body["user"]["id"]
    container = body.get("container") or {}
    try:
        row = ctx.questions.get(int(action["value"]))
    except (KeyError, TypeError, ValueError):
        row = None
    channel = container.get("channel_id") or (body.get("channel") or {}).get("id")
    if not row or not channel:
        log.warning("ask-again pressed for an unknown question")
        return
    thread = container.get("thread_ts") or container.get("message_ts")
    submit(ctx, Ask(row["question"], channel, user, f"retry:{row['id']}:{action.get('action_ts')}", "retry",
                    thread_ts=thread, history_ts=container.get("thread_ts"), is_dm=channel.startswith("D")))


def _age_s(row: dict) -> float:
    try:
        created = datetime.fromisoformat(row["created_at"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    return (datetime.now(UTC) - created).total_seconds()


class Keeper:
    """Renews this process's leases and resumes questions other processes dropped."""

    def __init__(self, ctx: SlackContext, every_s: float | None = None):
        self.ctx = ctx
        self.every_s = every_s or ctx.questions.lease_s / 4
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slack-question-keeper", daemon=True)

    def start(self) -> Keeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.ctx.questions.renew()
                resume_open(self.ctx)
            except Exception:  # the next round tries again
                log.exception("question keeper round failed")


