"""Pure helpers that read Slack's text and payloads: mentions, /ask arguments, corrections,
reactions and thread history."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from bot.prompt import Turn
from bot.slack.blocks import ANSWER_BLOCK, HOLDING_MARKS

HISTORY_TURNS = 10  # the prompt budget trims further; this bounds the work before it

_CORRECTION = re.compile(r"^\s*correction\s*:\s*", re.IGNORECASE)
_LINK = re.compile(r"<(https?://[^|>]+|mailto:[^|>]+)(?:\|([^>]*))?>")
_CHANNEL = re.compile(r"<#C[A-Z0-9]+\|([^>]*)>")
_USER = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")

UP, DOWN = "+1", "-1"
REACTIONS = {"+1": UP, "thumbsup": UP, "-1": DOWN, "thumbsdown": DOWN}


def clean_text(text: str, bot_user_id: str | None) -> str:
    """Slack's wire format to plain text: drop mentions of the bot, unwrap links and channel names."""
    text = _LINK.sub(lambda m: m.group(2) or m.group(1).removeprefix("mailto:"), text or "")
    text = _CHANNEL.sub(r"#\1", text)
    text = _USER.sub(lambda m: "" if m.group(1) == bot_user_id else "@someone", text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return re.sub(r"[ \t]+", " ", text).strip()


def mentions(text: str, user_id: str) -> bool:
    return any(m == user_id for m in _USER.findall(text or ""))


def correction(text: str) -> str | None:
    """The corrected answer in a 'correction: …' reply; '' when the prefix has nothing after it."""
    m = _CORRECTION.match(text)
    return text[m.end():].strip() if m else None


def parse_ask(text: str, domain_names: Iterable[str]) -> tuple[str | None, str]:
    """`/ask [domain] question`: a first word that names a domain (optionally with ':') picks it."""
    first, _, rest = (text or "").strip().partition(" ")
    name = first.rstrip(":").lower()
    if name in set(domain_names) and rest.strip():
        return name, rest.strip()
    return None, (text or "").strip()


def reaction_signal(name: str, added: bool, optout: str) -> tuple[str, str] | None:
    """(feedback kind, value) for a reaction we learn from, or None. Skin tones don't matter."""
    base = name.split("::", 1)[0]
    if base == optout:
        return ("opt_out", "on" if added else "removed")
    vote = REACTIONS.get(base)
    if vote is None:
        return None
    return ("reaction", vote if added else f"removed:{vote}")


def is_answer(message: dict) -> bool:
    """A final answer of ours carries the ANSWER_BLOCK section (placeholders and pickers don't)."""
    return any(b.get("block_id") == ANSWER_BLOCK for b in message.get("blocks") or ())


def is_holding(message: dict, *, bot_user_id: str) -> bool:
    """Ours and still holding a place for an answer: a waiting note, "Looking into it", a native stream's draft."""
    return (message.get("user") == bot_user_id and not is_answer(message)
            and str(message.get("text") or "").startswith(HOLDING_MARKS))


def unrecorded_placeholder(messages: Sequence[dict], *, bot_user_id: str, after_ts: str,
                           recorded: Callable[[str], bool]) -> str | None:
    """The earliest of our holding messages after `after_ts` that no question has recorded as its placeholder:
    what a crash between posting it and recording its ts left behind."""
    found = sorted((m for m in messages if is_holding(m, bot_user_id=bot_user_id) and m.get("ts")
                    and float(m["ts"]) > float(after_ts)), key=lambda m: float(m["ts"]))
    return next((m["ts"] for m in found if not recorded(m["ts"])), None)


def _before(message: dict, ts: str | None) -> bool:
    return ts is None or float(message.get("ts") or 0) < float(ts)


def history_turns(
    messages: Sequence[dict], *, bot_user_id: str, before_ts: str | None = None, limit: int = HISTORY_TURNS
) -> list[Turn]:
    """A thread's messages before `before_ts` as prompt turns: our answers and people's messages.

    Our placeholders, pickers and notices are left out, and so are other bots.
    """
    turns = []
    for m in messages:
        if not _before(m, before_ts) or m.get("subtype") not in (None, "file_share"):  # a file with its question
            continue
        if m.get("user") == bot_user_id:
            if is_answer(m):
                turns.append(Turn("assistant", m.get("text", "")))
        elif not m.get("bot_id"):
            text = clean_text(m.get("text", ""), bot_user_id)
            if text:
                turns.append(Turn("user", text))
    return turns[-limit:]


def latest_answer_ts(messages: Sequence[dict], *, bot_user_id: str, before_ts: str | None = None) -> str | None:
    """The ts of our latest answer in a thread (before `before_ts`): what a correction refers to."""
    found = None
    for m in messages:
        if _before(m, before_ts) and m.get("user") == bot_user_id and is_answer(m):
            found = m["ts"]
    return found
