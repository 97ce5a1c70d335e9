"""The real Slack app over real HTTP against the fake Slack Web API, started and stopped in one call each:
the shared set-up of the Slack tests (test_slack_app, _durable, _native_stream, _hostile)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from slack_bolt import App

from bot.answer import Answerer
from bot.config import Settings
from bot.slack.app import build
from bot.slack.context import SlackContext
from bot.slack.ingress import SlackHTTPServer, start_http
from bot.store.store import Store
from bot.testing.slack_kit import BOT_TOKEN, SIGNING_SECRET, FakeSlack


@dataclass
class RunningBot:
    slack: FakeSlack
    store: Store
    app: App
    ctx: SlackContext
    server: SlackHTTPServer

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        """HTTP first (no new events), then the accepted work, then the store and the fake Slack."""
        self.server.shutdown()
        self.server.server_close()
        self.ctx.close()
        self.store.close()
        self.slack.stop()


B = TypeVar("B", bound=RunningBot)


def start_bot(settings: Settings, answerer: Answerer, *, cls: type[B] = RunningBot, slack: FakeSlack | None = None,
              **overrides: object) -> B:
    """Build the app with the fake Slack's URL and credentials (`overrides` win), serve it on a free port."""
    slack = (slack or FakeSlack()).start()
    s = settings.with_(**{"slack_api_url": slack.api_url, "slack_bot_token": BOT_TOKEN,
                          "slack_signing_secret": SIGNING_SECRET, **overrides})
    store = Store.from_settings(s)
    app, ctx = build(s, answerer, store)
    return cls(slack, store, app, ctx, start_http(app, SIGNING_SECRET, host="127.0.0.1", port=0))


class BotStarter(Generic[B]):
    """What the Slack tests' `start_bot` fixtures return: each call starts one more bot on its own SQLite file
    under `folder` (so two bots in one test never share a store by accident); close() stops them all."""

    def __init__(self, settings: Settings, answerer: Answerer, folder: Path, cls: type[B], **defaults: object):
        self.settings, self.answerer, self.folder, self.cls, self.defaults = settings, answerer, folder, cls, defaults
        self.started: list[B] = []

    def __call__(self, answerer: Answerer | None = None, slack: FakeSlack | None = None, **overrides: object) -> B:
        bot = start_bot(self.settings, answerer or self.answerer, cls=self.cls, slack=slack, **{
            "db_path": self.folder / f"slack{len(self.started)}.db", **self.defaults, **overrides})
        self.started.append(bot)
        return bot

    def close(self) -> None:
        for bot in self.started:
            bot.stop()
