"""Prompt building: policy + numbered passages + thread history + question, within a token budget.

Pure functions. Training formats its examples with `build_messages` too, so the adapters learn
exactly the prompt shape they are served with.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TokenCounter = Callable[[str], int]

SOURCES_HEADER = "Sources:"
MIN_PASSAGE_TOKENS = 24  # a passage cut shorter than this is dropped rather than shown as a stub
# How many top passages share the passage room. Sharing by 2 keeps a long first chunk (a finance table) from
# crowding out the second, which often holds the gold passage (finance dev, budget 320: gold shown 12/30 with the
# first passage whole, 18/30 shared by two). 1 (the first passage may fill the room) until the qa eval of
# issue 16 confirms correctness holds with 2.
SHARE_AMONG = 1


def approx_tokens(text: str) -> int:
    """A cheap upper-ish estimate (about 3.5 characters per token for English BPE)."""
    return max(1, int(len(text) / 3.5) + 1) if text else 0


@dataclass(frozen=True)
class Passage:
    chunk_id: str
    title: str
    text: str
    score: float = 0.0
    doc_id: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    text: str


@dataclass(frozen=True)
class BuiltPrompt:
    messages: list[dict[str, str]]
    passages: list[Passage]  # the passages actually shown, in citation order [1], [2], ...
    tokens: int
    dropped_turns: int = 0


def _cut(text: str, max_tokens: int, count: TokenCounter) -> str:
    """Cut text to at most max_tokens (by count), on a word boundary."""
    if count(text) <= max_tokens:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # binary search on characters: the counter may be a real tokenizer
        mid = (lo + hi + 1) // 2
        if count(text[:mid]) <= max_tokens - 1:
            lo = mid
        else:
            hi = mid - 1
    cut = text[:lo]
    space = cut.rfind(" ")
    if space > lo * 0.8:
        cut = cut[:space]
    return cut.rstrip() + " …"


# Sentence ends: . ! ? (optionally closed by a quote/bracket/citation) before a space and a capital,
# digit or bracket, or a line break.
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9(\[\"'])|\n+")
_WORD = re.compile(r"[^\W\d_]{3,}|\d+")
_STOP = frozenset("""the and for are was were with that this from have has had not but can may any all its
what which who whom whose when where why how does did done into onto than then them they their there these
those about also been being should would could will shall your you our out more most such only other some""".split())


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _terms(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP}


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT_END.split(text) if s and s.strip()]


def best_sentences(text: str, question: str, max_tokens: int, count: TokenCounter) -> str:
    """Cut `text` to max_tokens by keeping the sentences that best match the question and their neighbours.

    Falls back to the plain head cut when nothing in the passage shares a word with the question.
    """
    if count(text) <= max_tokens:
        return text
    sentences = split_sentences(text)
    q = _terms(question)
    scores = [len(q & _terms(s)) for s in sentences]
    if len(sentences) < 2 or not q or max(scores) == 0:
        return _cut(text, max_tokens, count)
    costs = [count(s) + 1 for s in sentences]
    kept: set[int] = set()
    left = max_tokens - 2  # room for the gap marks
    # Best sentences first (earlier wins a tie), each bringing its neighbours while they fit.
    for i in sorted(range(len(sentences)), key=lambda i: (-scores[i], i)):
        if scores[i] == 0:
            break
        for j in (i, i + 1, i - 1):
            if 0 <= j < len(sentences) and j not in kept and costs[j] <= left:
                kept.add(j)
                left -= costs[j]
    if not kept:
        return _cut(text, max_tokens, count)
    out: list[str] = []
    prev = -1
    for j in sorted(kept):
        if prev >= 0 and j != prev + 1:
            out.append("…")
        out.append(sentences[j])
        prev = j
    if prev != len(sentences) - 1:
        out.append("…")
    if min(kept) > 0:
        out.insert(0, "…")
    result = " ".join(out)
    return result if count(result) <= max_tokens else _cut(result, max_tokens, count)


def format_passage(n: int, passage: Passage) -> str:
    return f"[{n}] {passage.title}\n{passage.text}"


def system_text(system_prompt: str, passage_blocks: Sequence[str]) -> str:
    if not passage_blocks:
        return system_prompt
    return system_prompt + "\n\n" + SOURCES_HEADER + "\n" + "\n\n".join(passage_blocks)


def build_messages(
    system_prompt: str,
    question: str,
    passages: Sequence[Passage] = (),
    history: Sequence[Turn] = (),
    *,
    budget: int = 700,
    count: TokenCounter = approx_tokens,
    question_share: float = 0.5,
    share_among: int = SHARE_AMONG,
) -> BuiltPrompt:
    """Fit everything into `budget` tokens.

    Priority: system prompt, then the question (cut to `question_share` of the budget), then
    passages in rank order, then history (newest first). Each of the first `share_among` passages may use at
    most an equal share of the passage room left for it (what one leaves flows to the next); a passage over its
    share keeps its sentences that best match the question and their neighbours; past that, passages take what
    is left, cut the same way, or are dropped.
    """
    overhead = 8  # chat-template tokens per message
    used = count(system_prompt) + overhead
    question = _cut(question, max(16, int(budget * question_share)), count)
    used += count(question) + overhead

    # Passages get what is left after reserving a little for the most recent history turn.
    history = list(history)
    reserve = min(120, sum(count(t.text) + overhead for t in history[-2:])) if history else 0
    room = budget - used - reserve
    shown: list[Passage] = []
    blocks: list[str] = []
    sharing = min(max(1, share_among), len(passages))
    for i, p in enumerate(passages):
        header = count(f"[{len(shown) + 1}] {p.title}\n") + 2
        if room - header < MIN_PASSAGE_TOKENS:
            break
        allowance = room // (sharing - i) if i < sharing else room
        if allowance - header < MIN_PASSAGE_TOKENS:
            allowance = room
        text = best_sentences(p.text, question, allowance - header, count)
        block = format_passage(len(shown) + 1, Passage(p.chunk_id, p.title, text, p.score, p.doc_id, p.metadata))
        cost = count(block) + 2
        if cost > room:
            break
        shown.append(p)
        blocks.append(block)
        room -= cost
    used = budget - room - reserve

    kept: list[Turn] = []
    left = budget - used
    for turn in reversed(history):
        cost = count(turn.text) + overhead
        if cost > left:
            break
        kept.append(turn)
        left -= cost
    kept.reverse()

    messages = [{"role": "system", "content": system_text(system_prompt, blocks)}]
    messages += [{"role": t.role, "content": t.text} for t in kept]
    messages.append({"role": "user", "content": question})
    total = budget - left
    return BuiltPrompt(messages, shown, total, dropped_turns=len(history) - len(kept))
