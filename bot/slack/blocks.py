"""Block Kit rendering for Slack messages. Pure: data in, JSON-ready dicts out.

Every message dict has `text` (the notification and thread-history fallback) and `blocks`.
Slack's limits shape the code: a section holds at most 3,000 characters, a button label 75, a
button value 2,000, and a message 50 blocks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from slack_sdk.models.blocks import ContextActionsBlock, FeedbackButtonObject, FeedbackButtonsElement

from bot.answer import Answer
from bot.domains import Domain

ANSWER_BLOCK = "domainbot_answer"  # block_id of an answer's first section: marks bot answers in a thread
# How our messages that hold a place for an answer begin: a crash between posting one and recording its ts leaves
# it unrecorded, and a resumed question finds it by these (a native stream's draft can carry no block_id).
THINKING_MARK = "Looking into it ("
STREAM_MARK = ":mag: Searching "
WAITING_MARK = ":hourglass_flowing_sand: Your question is in line"
HOLDING_MARKS = (THINKING_MARK, STREAM_MARK, WAITING_MARK)
FEEDBACK = "feedback"  # the native feedback_buttons element; its values are f"{exchange_id}:{UP or DOWN}"
FEEDBACK_UP = "feedback_up"  # the older 👍/👎 buttons: new answers no longer have them, posted ones still work
FEEDBACK_DOWN = "feedback_down"
UP, DOWN = "+1", "-1"
PICK_DOMAIN = "pick_domain"  # action ids are f"{PICK_DOMAIN}:{name}"
CORRECTION_VIEW = "correction"
CORRECTION_BLOCK = "correction"
CORRECTION_INPUT = "text"

SECTION_LIMIT = 2900
VALUE_LIMIT = 2000
MAX_SOURCES = 10

Message = dict[str, Any]


def escape(text: str) -> str:
    """Slack mrkdwn treats &, < and > as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(text: str) -> str:
    """The model writes Markdown; Slack wants *bold* and no '#' headings."""
    text = escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"*\1*", text)
    return re.sub(r"(?m)^#{1,6}\s+(.+)$", r"*\1*", text)


def _chunks(text: str, size: int = SECTION_LIMIT) -> list[str]:
    """Split on paragraph or line boundaries where possible; never return an empty list."""
    parts: list[str] = []
    while len(text) > size:
        cut = max(text.rfind("\n", 0, size), text.rfind(" ", 0, size))
        cut = cut if cut > size // 2 else size
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return parts + [text or " "]


def _section(text: str, block_id: str | None = None) -> dict:
    block: dict[str, Any] = {"type": "section", "text": {"type": "mrkdwn", "text": text}}
    if block_id:
        block["block_id"] = block_id
    return block


def _context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:SECTION_LIMIT]}]}


def _button(label: str, action_id: str, value: str, style: str | None = None) -> dict:
    button: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": label[:75], "emoji": True},
        "action_id": action_id,
        "value": value[:VALUE_LIMIT],
    }
    if style:
        button["style"] = style
    return button


_METHOD_NOTE = {
    "explicit": "you chose it",
    "button": "you picked it",
    "thread": "this thread's topic",
    "router": "routed automatically",
}


def _header(domain_title: str, method: str | None = None) -> dict:
    note = _METHOD_NOTE.get(method or "")
    return _context(f":books: *{escape(domain_title)}*" + (f" · {note}" if note else ""))


def sources_text(answer: Answer) -> str:
    lines = []
    for c in answer.citations[:MAX_SOURCES]:
        title = escape(c.label)[:150]  # file and page or heading for documents, the title for corpus rows
        lines.append(f"[{c.n}] <{c.url}|{title}>" if c.url else f"[{c.n}] {title}")
    return "*Sources*\n" + "\n".join(lines)


def asked(user: str, question: str) -> str:
    """Who asked what, for answers whose question the channel can't see (/ask, a late pick)."""
    return f"<@{user}> asked: {escape(question)[:SECTION_LIMIT - 40]}"


def feedback_block(exchange_id: int) -> dict:
    """Slack's native 👍/👎 (a feedback_buttons element in a context_actions block); the SDK checks the limits."""
    def button(emoji: str, label: str, vote: str) -> FeedbackButtonObject:
        return FeedbackButtonObject(text=emoji, accessibility_label=label, value=f"{exchange_id}:{vote}")

    element = FeedbackButtonsElement(action_id=FEEDBACK, positive_button=button("👍", "This answer helped", UP),
                                     negative_button=button("👎", "This answer is not right", DOWN))
    return ContextActionsBlock(elements=[element]).to_dict()


def vote_of(value: str) -> tuple[int, str] | None:
    """(exchange id, vote) from a native feedback button's value, or None when it is not one of ours."""
    head, _, vote = (value or "").partition(":")
    if vote not in (UP, DOWN) or not head.isdigit():
        return None
    return int(head), vote


def answer_message(answer: Answer, exchange_id: int | None, domain_title: str, *, quote: str | None = None) -> Message:
    """The final answer: domain, (who asked what), the text, numbered sources, disclaimer, 👍/👎."""
    blocks: list[dict] = [_header(domain_title, answer.route.method)]
    if quote:
        blocks.append(_context(quote))
    for i, part in enumerate(_chunks(to_mrkdwn(answer.text))):
        blocks.append(_section(part, ANSWER_BLOCK if i == 0 else None))
    if answer.citations:
        blocks.append(_context(sources_text(answer)))
    if answer.disclaimer:
        blocks.append(_context(f"_{escape(answer.disclaimer)}_"))
    blocks.extend(_context(f":information_source: {escape(note)}") for note in answer.notes)
    if exchange_id is not None:
        blocks.append(feedback_block(exchange_id))
    return {"text": answer.text[:3000], "blocks": blocks[:50]}


def trailer(message: Message) -> list[dict]:
    """What follows a message's last text section (sources, disclaimer, notes, 👍/👎): with native streaming,
    chat.stopStream puts these under the streamed text."""
    blocks = message.get("blocks") or []
    last = max((i for i, b in enumerate(blocks) if b.get("type") == "section"), default=-1)
    return blocks[last + 1:]


def policy_message(answer: Answer, domain_title: str) -> Message:
    """A refusal, an emergency redirect, or 'not in this channel': the policy text, no feedback buttons."""
    return {"text": answer.text, "blocks": [_header(domain_title), _section(to_mrkdwn(answer.text))]}


def thinking_message(domain_title: str) -> Message:
    return {
        "text": f"{THINKING_MARK}{domain_title})…",
        "blocks": [_header(domain_title), _context(f"{STREAM_MARK}{escape(domain_title.lower())} documents…")],
    }


def stream_intro(domain_title: str) -> str:
    """The first words of a natively streamed answer (markdown_text); the final answer replaces them."""
    return f"{STREAM_MARK}{domain_title.lower()} documents…\n\n"


def streaming_message(domain_title: str, partial: str) -> Message:
    text = partial.strip()
    return {
        "text": text or "…",
        "blocks": [_header(domain_title), *(_section(p) for p in _chunks(to_mrkdwn(text) + " ▍"))][:50],
    }


def pick_value(exchange_id: int, domain: str, question: str) -> str:
    """The button value carries what a pick needs to answer, within Slack's 2,000 characters."""
    room = VALUE_LIMIT - len(json.dumps({"x": exchange_id, "d": domain, "q": ""}))
    q = question[:room]
    while len(json.dumps(q)) - 2 > room:  # JSON escapes can make the text longer; shrink until it fits
        q = q[: len(q) * 9 // 10]
    return json.dumps({"x": exchange_id, "d": domain, "q": q})


def picker_message(question: str, domains: Iterable[Domain], exchange_id: int) -> Message:
    """The router abstained: ask which domain, one button per domain."""
    buttons = [_button(d.title, f"{PICK_DOMAIN}:{d.name}", pick_value(exchange_id, d.name, question)) for d in domains]
    return {
        "text": "Which domain should answer this?",
        "blocks": [
            _section(":thinking_face: *Which domain?* I'm not sure which assistant should answer this, so I didn't guess."),
            {"type": "actions", "block_id": "pick_domain", "elements": buttons[:25]},
        ],
    }


def picked_message(domain_title: str) -> Message:
    return {"text": f"Asking {domain_title}…", "blocks": [_context(f":point_right: You picked *{escape(domain_title)}*.")]}


def notice(text: str) -> Message:
    return {"text": text, "blocks": [_section(text)]}


def error_message(error_id: str) -> Message:
    return notice(
        ":warning: Sorry, something went wrong on my side and I couldn't answer. "
        f"Please try again; if it keeps happening, tell the Domainbot team this error id: `{error_id}`."
    )


def correction_modal(exchange_id: int) -> dict:
    return {
        "type": "modal",
        "callback_id": CORRECTION_VIEW,
        "private_metadata": str(exchange_id),
        "title": {"type": "plain_text", "text": "What was wrong?"},
        "submit": {"type": "plain_text", "text": "Send"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": CORRECTION_BLOCK,
                "label": {"type": "plain_text", "text": "What would the right answer have been?"},
                "element": {"type": "plain_text_input", "action_id": CORRECTION_INPUT, "multiline": True,
                            "max_length": 3000},
                "hint": {"type": "plain_text", "text": "Your correction helps train this domain's assistant."},
            }
        ],
    }


def greeting(domains: Sequence[Domain]) -> str:
    names = ", ".join(d.title for d in domains) or "nothing yet"
    return (
        f"Hi! I answer questions about {names}, from our documents, with sources. "
        "Start with a domain name to choose one (e.g. `legal: …`), or just ask and I'll route it."
    )


def suggested_prompts(domains: Sequence[Domain], limit: int = 4) -> list[dict[str, str]]:
    """One prompt per domain (Slack shows at most 4), prefixed so the pick also chooses the domain."""
    prompts = []
    for d in domains:
        if d.suggested_prompts:
            prompt = d.suggested_prompts[0]
            prompts.append({"title": f"{d.title}: {prompt}"[:75], "message": f"{d.name}: {prompt}"})
    return prompts[:limit]
