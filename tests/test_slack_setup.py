"""Set-up files and the `serve` command's answers when Slack isn't configured (no model needed)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.cli import main
from bot.config import ROOT, Settings
from bot.slack.cli import missing_settings

MANIFEST = yaml.safe_load((ROOT / "slack-manifest.yml").read_text())
SLACK_SOURCES = sorted((ROOT / "bot" / "slack").glob("*.py"))

# The bot scope each Web API method we call needs.
METHOD_SCOPES = {
    "chat_postMessage": "chat:write",
    "chat_update": "chat:write",
    "chat_postEphemeral": "chat:write",
    "conversations_replies": "channels:history",
    "conversations_info": "channels:read",
    "reactions_add": "reactions:write",
    "assistant_threads_setStatus": "assistant:write",
    "assistant_threads_setTitle": "assistant:write",
    "assistant_threads_setSuggestedPrompts": "assistant:write",
    "chat_startStream": "chat:write",
    "chat_appendStream": "chat:write",
    "chat_stopStream": "chat:write",
    "chat_delete": "chat:write",
    "files_info": "files:read",  # and the url_private download of the file, with the same scope
}


def _source() -> str:
    return "\n".join(p.read_text() for p in SLACK_SOURCES)


def test_manifest_grants_a_scope_for_every_web_api_method_we_call():
    called = set(re.findall(r"client\.(\w+)\(", _source())) - {"auth_test", "views_open"}  # these need no scope
    assert called <= set(METHOD_SCOPES), f"add the scope for {called - set(METHOD_SCOPES)} to METHOD_SCOPES"
    scopes = set(MANIFEST["oauth_config"]["scopes"]["bot"])
    assert {METHOD_SCOPES[m] for m in called} <= scopes
    assert {"app_mentions:read", "commands", "im:history", "reactions:read"} <= scopes


def test_manifest_subscribes_to_every_event_we_listen_to():
    events = set(MANIFEST["settings"]["event_subscriptions"]["bot_events"])
    listened = set(re.findall(r'@app\.event\("(\w+)"\)', _source()))
    expected = (listened - {"message"}) | {"message.im", "message.channels", "assistant_thread_started"}
    assert expected <= events


def test_manifest_has_the_command_interactivity_and_assistant():
    features, settings = MANIFEST["features"], MANIFEST["settings"]
    assert [c["command"] for c in features["slash_commands"]] == ["/ask"]
    assert settings["interactivity"]["is_enabled"] is True
    assert "assistant_view" in features and features["app_home"]["messages_tab_enabled"]
    urls = [features["slash_commands"][0]["url"], settings["event_subscriptions"]["request_url"],
            settings["interactivity"]["request_url"]]
    assert all(u.endswith("/slack/events") for u in urls)


def test_env_example_lists_every_setting():
    names_in_config = set(re.findall(r'_(?:env|int|float|list)\("([A-Z][A-Z0-9_]+)"', (ROOT / "bot/config.py").read_text()))
    listed = set(re.findall(r"(?m)^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text()))
    assert len(names_in_config) >= 25
    assert names_in_config <= listed, f"missing from .env.example: {sorted(names_in_config - listed)}"


def test_missing_credentials_per_mode():
    assert [env for env, _ in missing_settings(Settings(), "http")] == ["SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"]
    assert [env for env, _ in missing_settings(Settings(), "socket")] == ["SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"]
    ready = Settings(slack_bot_token="xoxb-1", slack_signing_secret="s", slack_app_token="xapp-1")
    assert missing_settings(ready, "http") == [] == missing_settings(ready, "socket")


def test_serve_without_tokens_explains_and_points_to_chat(monkeypatch, capsys, tmp_path: Path):
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"):
        monkeypatch.setenv(name, "")  # beats any .env file
    monkeypatch.setenv("DOMAINBOT_DB", str(tmp_path / "db.sqlite"))
    assert main(["serve", "--socket"]) == 2
    err = capsys.readouterr().err
    assert "SLACK_BOT_TOKEN" in err and "SLACK_APP_TOKEN" in err and "SLACK_SIGNING_SECRET" not in err
    assert "domainbot chat" in err and "slack-manifest.yml" in err
    assert main(["serve", "--http"]) == 2
    assert "SLACK_SIGNING_SECRET" in capsys.readouterr().err
