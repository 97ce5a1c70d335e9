"""`domainbot serve --http | --socket`: run the Slack app.

HTTP mode listens on $PORT at /slack/events (Procfile `web:`); Socket Mode connects out with
SLACK_APP_TOKEN and needs no public URL (Procfile `socket:`).

Prometheus metrics: GET /metrics on the HTTP server; with DOMAINBOT_METRICS_PORT set, also on that port (the
only way to scrape a Socket Mode process).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable

from bot.config import Settings

# mode -> (setting, env var, where to find it)
REQUIRED: dict[str, tuple[tuple[str, str, str], ...]] = {
    "http": (
        ("slack_bot_token", "SLACK_BOT_TOKEN", "Bot User OAuth Token (xoxb-…): your app's OAuth & Permissions page"),
        ("slack_signing_secret", "SLACK_SIGNING_SECRET", "Signing Secret: Basic Information → App Credentials"),
    ),
    "socket": (
        ("slack_bot_token", "SLACK_BOT_TOKEN", "Bot User OAuth Token (xoxb-…): your app's OAuth & Permissions page"),
        ("slack_app_token", "SLACK_APP_TOKEN",
         "App-Level Token (xapp-…) with connections:write: Basic Information → App-Level Tokens"),
    ),
}


def missing_settings(settings: Settings, mode: str) -> list[tuple[str, str]]:
    """(env var, where to find it) for each credential this mode needs and doesn't have."""
    return [(env, where) for attr, env, where in REQUIRED[mode] if not getattr(settings, attr)]


def explain_missing(mode: str, missing: list[tuple[str, str]]) -> str:
    rows = "\n".join(f"  {env:<22} {where}" for env, where in missing)
    return (
        f"domainbot serve --{mode} needs Slack credentials that are not set:\n{rows}\n\n"
        "Create the Slack app from slack-manifest.yml (api.slack.com/apps → Create New App → From a manifest),\n"
        "then put these values in .env (see .env.example) or the environment, and run this again.\n\n"
        "To try Domainbot without Slack, run:  domainbot chat"
    )


def _wait_for_stop(stop: Callable[[], None]) -> None:
    """Block until SIGTERM (a platform stopping the dyno) or Ctrl-C, then call stop()."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop()


def _serve_http(app, settings: Settings, host: str) -> None:
    from bot.slack.ingress import EVENTS_PATH, start_http

    server = start_http(app, settings.slack_signing_secret or "", host=host, port=settings.port)
    print(f"Domainbot is listening on http://{host}:{server.server_address[1]}{EVENTS_PATH}", flush=True)
    _wait_for_stop(server.shutdown)


def _serve_socket(app, settings: Settings, host: str) -> None:
    from bot.slack.app import start_socket_mode

    handler = start_socket_mode(app, settings)
    print("Domainbot is connected to Slack over Socket Mode.", flush=True)
    _wait_for_stop(handler.close)


RUNNERS = {"http": _serve_http, "socket": _serve_socket}


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    missing = missing_settings(settings, args.mode)
    if missing:
        print(explain_missing(args.mode, missing), file=sys.stderr)
        return 2
    from bot import metrics

    try:
        metrics_port = metrics.port_from_env()
    except ValueError as err:
        print(f"domainbot serve: {err}", file=sys.stderr)
        return 2
    if args.port is not None:
        settings = settings.with_(port=args.port)
    from bot.answer import Answerer, warm_indexes
    from bot.reload import watching
    from bot.slack.app import build
    from bot.store.store import Store

    answerer = Answerer.from_settings(settings)
    store = Store.from_settings(settings)
    metrics.watch_store(store)  # feedback and retrain facts, read from the shared store at each scrape
    metrics_server = None
    try:
        if metrics_port is not None:
            metrics_server, _ = metrics.start_metrics_server(metrics_port, host=args.host)
            print(f"Prometheus metrics on http://{args.host}:{metrics_server.server_address[1]}/metrics", flush=True)
        warm_indexes(answerer)  # not the model: a remote backend may still be starting
        app, ctx = build(settings, answerer, store)
        try:
            with watching(answerer):  # new or edited plugin folders are served without a restart
                RUNNERS[args.mode](app, settings, args.host)
        finally:
            ctx.close()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        metrics.STORE.forget(store)
        store.close()
        answerer.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the Slack app (HTTP events endpoint or Socket Mode)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--http", dest="mode", action="store_const", const="http",
                      help="serve Slack's HTTP events at /slack/events on $PORT (default)")
    mode.add_argument("--socket", dest="mode", action="store_const", const="socket",
                      help="connect over Socket Mode with SLACK_APP_TOKEN (no public URL needed)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: $PORT, else 3000)")
    p.add_argument("--host", default="0.0.0.0", help="HTTP interface to bind (default: all)")
    p.set_defaults(func=cmd_serve, mode="http")
