"""The Slack app: a bolt `App` and a thin `register(app, ctx)`; each listener is a short function
that acks at once and hands the work to slack_events / slack_feedback.

HTTP mode and Socket Mode dispatch into the same App, so the same listeners serve both.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from slack_bolt import Ack, App, Assistant, BoltResponse
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.answer import Answerer
from bot.config import Settings
from bot.errors import UserFacingError, new_error_id
from bot.slack import blocks, events, feedback
from bot.slack.attachments import file_ids
from bot.slack.context import SlackContext, Workers, make_client
from bot.slack.ingress import quiet_slack_logging
from bot.slack.resume import Keeper, ask_again, resume_open
from bot.slack.waiting import RETRY_QUESTION
from bot.store.store import Store

log = logging.getLogger(__name__)

# What replaying an event needs (its text is stored scrubbed, in the question column).
EVENT_FIELDS = ("type", "subtype", "channel", "user", "ts", "thread_ts", "channel_type", "team", "user_team")
LISTENER_THREADS = 16  # listeners only ack and queue; answers run in SlackContext.workers


def connect(settings: Settings, client: WebClient | None = None) -> tuple[WebClient, str]:
    """The Web API client and the bot's user id (auth.test), with a clear error for a bad token."""
    client = client or make_client(settings)
    try:
        return client, client.auth_test()["user_id"]
    except SlackApiError as err:
        raise UserFacingError(
            f"Slack rejected SLACK_BOT_TOKEN ({err.response.get('error')}). Copy the Bot User OAuth Token "
            "(xoxb-…) from your app's OAuth & Permissions page into .env."
        ) from None


def make_app(client: WebClient, listeners: ThreadPoolExecutor | None = None) -> App:
    """A bolt App with no listeners yet, configured for our ingress and logging."""
    return App(
        name="domainbot",
        client=client,
        request_verification_enabled=False,  # slack_ingress verifies first: 401 for every bad request
        token_verification_enabled=False,  # connect() already called auth.test
        logger=quiet_slack_logging(),
        listener_executor=listeners or ThreadPoolExecutor(LISTENER_THREADS, thread_name_prefix="slack-listener"),
    )


def build(settings: Settings, answerer: Answerer, store: Store, *, workers: Workers | None = None) -> tuple[App, SlackContext]:
    """The whole Slack app: connect, create the App, register the listeners."""
    client, bot_user_id = connect(settings)
    listeners = ThreadPoolExecutor(LISTENER_THREADS, thread_name_prefix="slack-listener")
    app = make_app(client, listeners)
    ctx = SlackContext.create(settings, answerer, store, client, bot_user_id, workers, listeners)
    register(app, ctx)
    start_background(ctx)
    return app, ctx


def start_background(ctx: SlackContext) -> None:
    """The waiting-line notes, the lease keeper, and the questions a stopped process left open."""
    ctx.line.run_in_thread()
    ctx.background.append(Keeper(ctx).start())
    resume_open(ctx)


def register(app: App, ctx: SlackContext) -> None:
    @app.middleware
    def ignore_bots(body: dict, next_) -> BoltResponse | None:
        """Our own events are dropped by bolt; other bots (and bot_message posts) are dropped here."""
        event = body.get("event") or {}
        if event.get("bot_id") or event.get("subtype") == "bot_message":
            return BoltResponse(status=200, body="")
        next_()
        return None

    @app.middleware
    def drop_duplicates(body: dict, next_) -> BoltResponse | None:
        """Slack retries an event it thinks we missed; the store's UNIQUE key lets one through, across processes.
        Messages and mentions may be questions: `submit` claims those with the question in one transaction,
        so a redelivery of a question a crash left unanswered is resumed rather than dropped."""
        event_id, event = body.get("event_id"), body.get("event") or {}
        if event_id and not _claim(ctx, f"event:{event_id}", event):
            return BoltResponse(status=200, body="")
        next_()
        return None

    app.use(_assistant(ctx))

    @app.event("app_mention")
    def mention(event: dict, body: dict) -> None:
        with _settled(ctx, body):
            events.on_mention(ctx, event, body.get("event_id", ""))

    @app.event("message")
    def message(event: dict, body: dict) -> None:
        with _settled(ctx, body):
            events.on_message(ctx, event, body.get("event_id", ""))

    @app.event("reaction_added")
    @app.event("reaction_removed")
    def reaction(event: dict, body: dict) -> None:
        feedback.on_reaction(ctx, event, body.get("event_id", ""))

    @app.command("/ask")
    def ask(ack: Ack, command: dict) -> None:
        events.on_ask_command(ctx, command, ack)

    @app.action(blocks.FEEDBACK_UP)
    def vote_up(ack: Ack, body: dict) -> None:
        ack()
        feedback.on_vote(ctx, body, "+1")

    @app.action(blocks.FEEDBACK_DOWN)
    def vote_down(ack: Ack, body: dict) -> None:
        ack()
        feedback.open_correction(ctx, body)
        feedback.on_vote(ctx, body, "-1")

    @app.action(blocks.FEEDBACK)
    def vote_native(ack: Ack, body: dict) -> None:
        ack()
        feedback.on_feedback_buttons(ctx, body)

    @app.action(re.compile(rf"^{blocks.PICK_DOMAIN}:"))
    def pick(ack: Ack, body: dict) -> None:
        ack()
        events.on_pick(ctx, body)

    @app.action(RETRY_QUESTION)
    def retry(ack: Ack, body: dict) -> None:
        ack()
        ask_again(ctx, body)

    @app.view(blocks.CORRECTION_VIEW)
    def correction_submitted(ack: Ack, body: dict, view: dict) -> None:
        errors = feedback.on_correction_view(ctx, body, view)
        ack(response_action="errors", errors=errors) if errors else ack()

    @app.error
    def failed(error: Exception) -> None:
        log.error("Slack listener failed [error %s]", new_error_id(), exc_info=error)


def _claim(ctx: SlackContext, key: str, event: dict) -> bool:
    """Claim an event before Slack gets its ack; one that may be a question is stored with it. False for a
    duplicate (or a redelivery of a question another live process is answering)."""
    if not events.may_be_question(ctx, event):
        return ctx.store.claim_event(key)
    kept = {k: event[k] for k in EVENT_FIELDS if k in event}
    if event.get("files"):  # the ids only: a file object may carry a preview of the file's text
        kept["files"] = file_ids(event["files"])
    return ctx.questions.receive(key, source=f"slack:{event.get('type')}", channel=event.get("channel", ""),
                                 user=event.get("user"), text=event.get("text", ""), event=kept) is not None


@contextmanager
def _settled(ctx: SlackContext, body: dict) -> Iterator[None]:
    try:
        yield
    finally:
        if body.get("event_id"):
            ctx.questions.settle(f"event:{body['event_id']}")


def start_socket_mode(app: App, settings: Settings) -> SocketModeHandler:
    """Connect to Slack over Socket Mode (no public URL needed); events go through the same App."""
    handler = SocketModeHandler(app, settings.slack_app_token, web_client=app.client)
    handler.connect()
    return handler


def _assistant(ctx: SlackContext) -> Assistant:
    """Slack's assistant threads: greeting and suggested prompts, then the usual answering path."""
    assistant = Assistant()

    @assistant.thread_started
    def started(payload: dict) -> None:
        events.on_assistant_thread_started(ctx, payload)

    @assistant.thread_context_changed
    def context_changed() -> None:
        """We don't use the channel context; bolt's default would rewrite our first message to store it."""

    @assistant.user_message
    def user_message(payload: dict, body: dict) -> None:
        with _settled(ctx, body):
            events.on_message(ctx, payload, body.get("event_id", ""), assistant=True)

    return assistant
