"""Pure policy checks: input hygiene, channel permissions, refusal and emergency rules."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from bot.domains import Domain
from bot.errors import InputError

MAX_QUESTION_CHARS = 20_000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_question(text: object) -> str:
    """Normalise a question or raise InputError with a message a user can act on."""
    if not isinstance(text, str):
        if isinstance(text, bytes | bytearray):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                raise InputError("That looks like binary data, not a question. Please send text.") from None
        else:
            raise InputError("Please send your question as text.")
    if len(text) > MAX_QUESTION_CHARS:
        raise InputError(
            f"That question is {len(text):,} characters long; the limit is {MAX_QUESTION_CHARS:,}. "
            "Please shorten it or ask about one part at a time."
        )
    controls = len(_CONTROL.findall(text))
    if "\x00" in text or (controls > 3 and controls / len(text) > 0.1):
        raise InputError("That looks like binary data, not a question. Please send text.")
    text = _CONTROL.sub(" ", unicodedata.normalize("NFC", text))
    text = re.sub(r"[ \t]+", " ", text).strip()
    if not text:
        raise InputError("Your question is empty. Ask me something, e.g. `legal: does the contract renew automatically?`")
    return text


@dataclass(frozen=True)
class PolicyVerdict:
    kind: str  # ok | refuse | redirect | not_allowed
    message: str = ""


def channel_allowed(domain: Domain, channel_id: str | None, channel_name: str | None = None, is_dm: bool = False) -> bool:
    """`channels` entries: "*" (anywhere), "dm", a channel id ("C0123"), or a name ("#legal-help")."""
    allowed = set(domain.channels)
    if "*" in allowed or channel_id is None:  # None: not Slack (the CLI)
        return True
    if is_dm:
        return "dm" in allowed
    names = {c.lstrip("#").lower() for c in allowed if c.startswith("#")}
    return channel_id in allowed or (channel_name or "").lstrip("#").lower() in names


def where_to_ask(domain: Domain) -> str:
    places = [c if c.startswith("#") else ("a direct message with me" if c == "dm" else f"<#{c}>") for c in domain.channels]
    return ", ".join(places) if places else "the channels its owner allows"


def not_allowed_message(domain: Domain) -> str:
    return (
        f"Sorry, the {domain.title} assistant isn't available in this channel. "
        f"Please ask in {where_to_ask(domain)}."
    )


def check_rules(domain: Domain, question: str) -> PolicyVerdict:
    """Emergency redirects win over refusals; the first matching rule of that kind answers."""
    for kind in ("redirect", "refuse"):
        for rule in domain.rules:
            if rule.kind == kind and rule.pattern.search(question):
                return PolicyVerdict(kind, rule.reply)
    return PolicyVerdict("ok")


def check(domain: Domain, question: str, channel_id: str | None = None, channel_name: str | None = None,
          is_dm: bool = False) -> PolicyVerdict:
    if not channel_allowed(domain, channel_id, channel_name, is_dm):
        return PolicyVerdict("not_allowed", not_allowed_message(domain))
    return check_rules(domain, question)


def no_domain_message(domains: Sequence[Domain]) -> str:
    if not domains:
        return "No domains are installed yet, so I can't answer questions. Ask the operator to add a plugin under domains/."
    lines = [f"• *{d.name}*: {d.description.split(':')[0].split('.')[0]}" for d in domains]
    first = domains[0].name
    return (
        "I'm not sure which domain your question belongs to, so I didn't guess. I can answer about:\n"
        + "\n".join(lines)
        + f"\nPick one by starting your question with its name, e.g. `{first}: <your question>`"
        + f" (or `/ask {first} <your question>`)."
    )
