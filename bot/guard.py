"""Grounding guard: keep only what the numbered passages support. Pure logic, no I/O, run on every answer.

Each sentence of the answer (pieces of a very long comma/semicolon run separately) must have every number in
some passage (after normalisation, see `numbers_in`) and most of its content words in the passage it cites, or
in the best-matching one when it cites none. Supported sentences are kept and end up citing the passage that
supports them; unsupported ones, repeated sentences and repetition loops are dropped. If nothing supported is
left, the answer becomes a quote of the passage sentence that best matches the question and answer.

Subject: word overlap can't tell "Huntington disease is inherited ... recessive" from a Wilson disease passage
that says so of Wilson disease. So the caller may pass the question's subject: the names in it that are rare in
the domain's corpus (`subject_terms`). Then a sentence that uses one is supported only by a passage that has it
too; an answer that lost such a sentence and kept only sentences from passages without the subject is about
something else, so it becomes a quote, which prefers sentences that name the subject; and when no passage
names it at all, the answer says the sources don't mention it.

Sentences with no content word and no number ("Yes.") are neutral: kept beside a supported sentence, never
enough on their own. An abstention sentence ("the sources do not mention...") claims nothing: it is kept
without a citation and counts as an answer, so an all-abstention answer keeps the model's own words with
verdict "supported" and cited=(), and "I can't tell. <invented claim>" becomes the abstention, "trimmed".
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from bot.prompt import Passage

VERDICTS = ("supported", "trimmed", "quoted", "no-sources")
NO_SOURCES_TEXT = "My sources don't cover this, so I can't answer it from them."
QUOTE_PREFIX = "The closest my sources come:"

# Share of a sentence's content words (stemmed, stopwords out) that must be in its passage. The model mostly
# copies from its passages: a faithful paraphrase changes one or two of five content words, while an invented
# claim shares only its topic words (a third to a half). So 1-2 words must all match, 3 need 2, 5 need 3.
SUPPORT = 0.6
LONG_RUN = 30  # words: a longer sentence with 3+ comma/semicolon pieces is checked piece by piece
MAX_PERIOD = 25  # longest phrase (in words) looked for in a repetition loop
QUOTE_CHARS = 400
# A question word in at most this share of the domain's chunks names its subject (measured on qa.jsonl dev+test:
# at 1%, the gold passage holds a subject word for 103/103 medical questions; 3/4 of other-topic passages don't)
SUBJECT_SHARE = 0.01

_MARKS = r"\[(\d{1,2}(?:\s*,\s*\d{1,2})*)\]"
_MARK = re.compile(r"\s*" + _MARKS)
_BOUND = re.compile(r"[.!?…]+[\"”’')]*(?:\s*" + _MARKS + r")*(?P<ws>[ \t]+|$)|(?P<nl>\s*\n\s*)")
_ABBREV = {"e.g", "i.e", "dr", "mr", "mrs", "ms", "vs", "etc", "inc", "no", "u.s", "st", "fig", "approx",
           "co", "ltd", "corp", "jr", "sr", "sec", "art"}
_END = re.compile(r"[.!?…]+[\"”’')]*$")
_BULLET = re.compile(r"^(?:[-*•]|\d{1,2}[.)])\s+")
_PIECE = re.compile(r"(?<=[,;])\s+")
_WORD = re.compile(r"[^\W\d_]{2,}")
_KEY = re.compile(r"[^\W_]+")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z0-9]+")  # the keyword index's tokens (bot.retrieval.bm25): subject words are these
_NUM = re.compile(r"(?=[$€£\d.])(?<![\w.,])(?:[$€£]\s?)?(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
                  r"(?:st|nd|rd|th)?"
                  r"(?:\s?(?:%|percent\b|per cent\b)|\s?(thousand|million|billion|trillion|bn|mn)\b"
                  r"|([mbk])\b)?")
_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                     "thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_WORDNUM = re.compile(
    rf"\b(?=[tfsen])(?P<w>(?:{'|'.join(_TENS)})(?:[\s-](?:{'|'.join(list(_UNITS)[1:10])}))?|{'|'.join(list(_UNITS)[2:])})\b"
    r"(?:\s*\((?P<d>\d+)\))?(?:\s+(?P<s>thousand|million|billion)\b)?")
_SCALE = {"thousand": 1e3, "k": 1e3, "million": 1e6, "mn": 1e6, "m": 1e6, "billion": 1e9, "bn": 1e9, "b": 1e9,
          "trillion": 1e12}
_STOP = frozenset("""a about above after again all also am an and any are as at be because been before being
    between both but by can could did do does doing during each either few for from further had has have
    having he her here hers him his how however i if in into is it its itself just may me might more most
    must my no nor not of off on once only or other our ours out over own per same she should so some such
    than that the their theirs them then there these they this those through to too under until up upon very
    via was we were what when where whether which while who whom whose why will with within without would
    yes you your according answer answers based question source sources passage passages provided states
    stated say says percent thousand million billion trillion hundred""".split())
_STOP |= frozenset(_UNITS) | frozenset(_TENS)
_SUFFIXES = ("ations", "ation", "ments", "ment", "ings", "ing", "edly", "ed", "ies", "es", "s", "ly")

_SRC = (r"\b(?:(?:my|the|these|those|your|provided|given|available|retrieved|above)\s+)*(?:sources?|passages?"
        r"|documents?|context|texts?|excerpts?|information (?:provided|given|available)|references?)\b")
_ABSTAIN = re.compile("|".join([
    _SRC + r"[^.]{0,40}?\b(?:do(?:es)?n'?t|do(?:es)? not|did(?:n'?t| not)|cannot|can'?t|can not|fail to"
    r"|never)\s+(?:\w+\s+)?(?:say|state|cover|mention|contain|include|provide|specify|address|discuss|answer|give|list"
    r"|describe|explain|tell|indicate|have|offer)",
    r"\bnot (?:\w+ )?(?:stated|mentioned|specified|covered|provided|given|found|included|addressed|discussed"
    r"|answered|described|listed|available)\b[^.]{0,30}?\b(?:in|by|within|from) " + _SRC,
    r"\bcannot be (?:determined|answered|found|known|confirmed) (?:from|in|with|based on) " + _SRC,
    r"\b(?:not|isn'?t|aren'?t) (?:\w+ )?in " + _SRC,
    _SRC + r"[^.]{0,30}\b(?:contains?|provides?|gives?|includes?|ha(?:s|ve)|offers?) no\b",
    _SRC + r"[^.]{0,30}\b(?:is|are) (?:silent|unclear)\b",
    r"\bno (?:\w+ )?(?:information|mention|details?|data|answer)\b[^.]{0,60}" + _SRC,
    r"\bthere is no mention of\b",
    r"\bi(?:'m| am| was)? (?:do not|don'?t|cannot|can'?t|can not|couldn'?t|could not|unable to|not able to)"
    r" (?:\w+ )?(?:know|answer|find|say|tell|determine|locate|provide|confirm)\b",
]))


class Number(NamedTuple):
    value: float  # absolute value with its scale word applied: "$3.8 million" -> 3800000.0
    tol: float  # half a unit of the last digit written: "$3.8 million" -> 50000.0

    def matches(self, other: float) -> bool:
        """Equal within the rounding this number states, up to a factor of 1000^k (tables "in thousands")."""
        m, t = _mant_tol(self)
        return any(abs(m - v) <= t for v in _variants(other))


@dataclass(frozen=True)
class GuardResult:
    text: str  # final text for the user (with [n] markers)
    verdict: str  # one of VERDICTS
    cited: tuple[int, ...]  # 1-based passage numbers the final text uses, in first-use order
    dropped: tuple[str, ...]  # sentences (or fragments) removed

    def to_dict(self) -> dict:
        return {"text": self.text, "verdict": self.verdict, "cited": list(self.cited),
                "dropped": list(self.dropped)}


def _mant(v: float) -> tuple[float, int]:
    v = abs(v)
    k = math.floor(math.log10(v) / 3) if v else 0
    return v / 1000.0**k, k


def _mant_tol(n: Number) -> tuple[float, float]:
    m, k = _mant(n.value)
    return m, n.tol / 1000.0**k + 1e-9 * (m + 1)


def _variants(v: float) -> tuple[float, float, float]:
    m, _ = _mant(v)
    return m, m * 1000, m / 1000  # neighbours, so 1.0 million still meets 999,800


def numbers_in(text: str) -> list[Number]:
    """Numbers in text order, normalised, each value once: "twelve (12) months" -> [12]; [n] ignored."""
    text = _MARK.sub(" ", text).lower()
    found: list[tuple[int, Number]] = []
    spans = []
    for m in _WORDNUM.finditer(text):
        w, d, s = m.group("w", "d", "s")
        value = float(d) if d else sum(_TENS.get(x, _UNITS.get(x, 0)) for x in re.split(r"[\s-]", w))
        scale = _SCALE[s] if s else 1.0
        found.append((m.start(), Number(value * scale, 0.5 * scale)))
        spans.append(m.span())
    for m in _NUM.finditer(text):
        if spans and any(a <= m.start(1) < b for a, b in spans):
            continue
        digits, word, letter = m.group(1, 2, 3)
        digits = digits.replace(",", "")
        scale = _SCALE[word or letter] if word or letter else 1.0
        decimals = len(digits.partition(".")[2])
        value = float(digits) * scale
        found.append((m.start(), Number(value, 0.5 * 10.0**-decimals * scale)))
    out: dict[float, Number] = {}
    for _, n in sorted(found) if spans else found:
        out.setdefault(n.value, n)
    return list(out.values())


def _tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower()))


def subject_terms(question: str, df: Callable[[str], int], n_chunks: int,
                  holders: Callable[[str], Sequence[tuple[str, str]]], share: float = SUBJECT_SHARE) -> tuple[str, ...]:
    """The names in a question that say what it is about: in few of the domain's chunks (a word in none is the
    asker's own, which no passage can confirm), and used as a name there (`_name_like`).
    `df(word)`: how many chunks hold the word (keyword-index tokens); `holders(word)`: their (title, text)."""
    limit = max(2.0, share * n_chunks)
    question = _URL.sub(" ", question)  # a link's pieces (the "co" of t.co) name nothing the question is about
    words = dict.fromkeys(w for w in _TOKEN.findall(question.lower()) if len(w) > 1 and w not in _STOP)
    return tuple(w for w in words if not w.isdigit() and 1 <= df(w) <= limit and _name_like(w, holders(w)))


def _name_like(word: str, chunks: Sequence[tuple[str, str]]) -> bool:
    """A name, not a rare common word ("holds"): it mixes letters and digits (FOXG1), is in a chunk's title
    (MedQuAD's topics), or is written with a capital in most of its uses inside a sentence (a company, a party;
    a sentence's or a table cell's first word is capitalised whatever it is)."""
    if not word.isalpha() or any(word in _tokens(title) for title, _ in chunks):
        return True
    uses = [m.group(1)[0] for _, text in chunks
            for m in re.finditer(rf"[^\W_][,;]? ({re.escape(word)})(?![^\W_])", text, re.IGNORECASE)]
    return 2 * sum(c.isupper() for c in uses) > len(uses)


def normalize_number(text: str) -> float | None:
    """The value of the first number written in text: "$3.8 million" -> 3800000.0, "twelve" -> 12.0."""
    found = numbers_in(text)
    return found[0].value if found else None


def is_abstention(text: str) -> bool:
    """Whether the answer starts by saying its sources don't answer (or "I don't know")."""
    units = [_MARK.sub("", s) for s, _ in _sentences(text or "")]
    head = " ".join(units[:2] if units and len(units[0].split()) < 4 else units[:1])
    return bool(_ABSTAIN.search(_fold(head)))


def _fold(text: str) -> str:
    return " ".join(text.lower().replace("’", "'").split())


@lru_cache(maxsize=65536)
def _stem(w: str) -> str:
    for suf in _SUFFIXES:
        if w.endswith(suf) and len(w) - len(suf) >= 3 and not (suf == "s" and w.endswith("ss")):
            w = w[: -len(suf)] + ("y" if suf == "ies" else "")
            break
    return w[:-1] if len(w) > 3 and w.endswith("e") else w


def _stems(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP}


def _key(text: str) -> str:
    return " ".join(_KEY.findall(text.lower()))


class _Source:
    __slots__ = ("stems", "nums", "tokens")

    def __init__(self, p: Passage) -> None:
        self.stems = _stems(f"{p.title}\n{p.text}")
        self.tokens = _tokens(f"{p.title}\n{p.text}")
        self.nums = sorted(v for n in numbers_in(f"{p.title}\n{p.text}") for v in _variants(n.value))

    def has(self, n: Number) -> bool:
        m, t = _mant_tol(n)
        i = bisect_left(self.nums, m - t)
        return i < len(self.nums) and self.nums[i] <= m + t


_ARITH = re.compile(r"[\d$€£,.%()\s+\-−*/×÷]{5,}")
_OPS = re.compile(r"\d\s*\)?\s*[-+*/]\s*\(?\s*\d")


def _computed(text: str) -> list[float]:
    """Values of the arithmetic a sentence shows ("486 thousand [1] ($1,616 - $1,130)"): a computed answer is
    supported when its operands are in the sources (they are checked like any number) and the sum is right."""
    out = []
    for m in _ARITH.finditer(_MARK.sub(" ", text)):
        run = re.sub(r"[$€£,%]", "", m.group(0)).translate(str.maketrans("−×÷", "-*/")).strip(" .")
        # "43.01 ((1616 - 1130) / 1130)": the answer and its derivation share one run; try each "(" onward too
        for expr in [run, *(run[i:] for i, c in enumerate(run) if c == "(" and i)]:
            while expr.count("(") > expr.count(")") and expr.startswith("("):
                expr = expr[1:].strip()
            while expr.count(")") > expr.count("(") and expr.endswith(")"):
                expr = expr[:-1].strip()
            value = _arith(expr) if _OPS.search(expr) else None
            if value is not None:
                out += [value, value * 100]  # a ratio shown as a percentage
    return out


def _arith(expr: str) -> float | None:
    import ast

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
            a, b = ev(node.left), ev(node.right)
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op)) if not isinstance(
                node.op, ast.Div) else a / b
        raise ValueError("not arithmetic")

    try:
        return ev(ast.parse(expr, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def _sentences(text: str) -> list[tuple[str, str]]:
    """(sentence, whitespace after it); splits after . ! ? (and any [n] there) and at line breaks."""
    out, start = [], 0
    for m in _BOUND.finditer(text):
        end = m.start("ws") if m.group("nl") is None else m.start("nl")
        piece = text[start:end]
        words = piece.rstrip(".!?…\"”’')").rsplit(None, 1)  # empty for a bare ". ."
        last = words[-1].lower() if words else ""
        if m.group("nl") is None and (last in _ABBREV or re.fullmatch(r"[a-z]", last)):
            continue
        nl = m.group("nl")
        out.append((piece.strip(), m.group("ws") if nl is None else "\n" * min(2, nl.count("\n"))))
        start = m.end()
    if text[start:].strip():
        out.append((text[start:].strip(), ""))
    return [(s, sep) for s, sep in out if _KEY.search(_MARK.sub("", s))]


def _collapse(words: list[str]) -> tuple[list[str], list[str]]:
    """Keep one copy of a phrase repeated 3+ times back to back (twice is common in real text)."""
    keys = [_key(w) for w in words]
    kept: list[str] = []
    removed: list[str] = []
    i, n = 0, len(words)
    while i < n:
        for p in range(1, min(MAX_PERIOD, (n - i) // 2) + 1):
            if not keys[i] or keys[i + p] != keys[i]:  # loops of bare punctuation (table pipes) are kept
                continue
            reps = 1
            while i + (reps + 1) * p <= n and keys[i + reps * p: i + (reps + 1) * p] == keys[i: i + p]:
                reps += 1
            if reps >= 3:
                kept += words[i: i + p]
                removed.append(" ".join(words[i + p: i + reps * p]))
                i += reps * p
                break
        else:
            kept.append(words[i])
            i += 1
    return kept, removed


def _support(text: str, cites: list[int], srcs: list[_Source],
             subject: frozenset[str] = frozenset()) -> tuple[bool | None, list[int]]:
    """(True, passages) when supported, (False, []) when not, (None, []) when there is nothing to check."""
    nums, words = numbers_in(text), _stems(text)
    named = _tokens(text) & subject if subject else set()
    if not nums and not words:
        return None, []
    computed = _computed(text) if nums else []
    if not all(any(s.has(n) for s in srcs) or any(n.matches(v) for v in computed) for n in nums):
        return False, []
    order = cites + [i for i in range(1, len(srcs) + 1) if i not in cites]
    if not words:  # only numbers: cite the first passage (cited ones first) that has them all
        return True, [next((i for i in order if all(srcs[i - 1].has(n) for n in nums)), order[0])]
    if cites and named <= set().union(*(srcs[i - 1].tokens for i in cites)) and len(
            words & set().union(*(srcs[i - 1].stems for i in cites))) >= SUPPORT * len(words):
        return True, cites
    order = [i for i in order if named <= srcs[i - 1].tokens]  # naming the subject needs a passage that does
    if not order:
        return False, []
    best = max(order, key=lambda i: (len(words & srcs[i - 1].stems), -order.index(i)))
    return (True, [best]) if len(words & srcs[best - 1].stems) >= SUPPORT * len(words) else (False, [])


def _check(raw: str, srcs: list[_Source], subject: frozenset[str] = frozenset()) -> tuple[str, str, list[int], list[str]]:
    """One sentence -> (status ok|neutral|abstain|drop, text to show, its citations, fragments removed)."""
    marks = [int(x) for m in _MARK.finditer(raw) for x in m.group(1).split(",")]
    valid = list(dict.fromkeys(n for n in marks if 1 <= n <= len(srcs)))
    body = _MARK.sub("", raw).strip()
    if _ABSTAIN.search(_fold(body)):
        return "abstain", body, [], []
    if body.endswith(":"):  # a lead-in to a list ("Symptoms include:") claims nothing, unless it counts
        if not all(any(s.has(n) for s in srcs) for n in numbers_in(body)):  # "The top 5 products are:"
            return "drop", body, [], []
        return "neutral", body, [], []
    end = _END.search(body)
    core = body[: end.start()] if end else body
    bullet = _BULLET.match(core)
    prefix, core = (bullet.group(0), core[bullet.end():]) if bullet else ("", core)
    words, lost = _collapse(core.split())
    pieces = _PIECE.split(" ".join(words)) if len(words) > LONG_RUN else []
    pieces = pieces if len(pieces) >= 3 else [" ".join(words)]
    keys = [_key(piece) for piece in pieces]
    kept, cites, supported = [], [], False
    for j, piece in enumerate(pieces):
        if keys.count(keys[j]) >= 3 and keys.index(keys[j]) < j:  # a clause repeated 3+ times: keep the first
            lost.append(piece)
            continue
        ok, by = _support(piece, valid, srcs, subject)
        if ok is False:
            lost.append(piece)
            continue
        # in a long run, a piece of one or two content words ("provided, however") is too generic to carry it
        supported |= bool(ok) and (len(pieces) == 1 or len(_stems(piece)) >= 3)
        kept.append(piece)
        cites += [i for i in by if i not in cites]
    if not supported:
        return ("neutral" if not lost else "drop"), body, [], []
    if not lost and cites == valid and len(valid) == len(marks):
        return "ok", raw, cites, []
    text = prefix + " ".join(kept).rstrip(",;: ")
    return "ok", f"{text} {''.join(f'[{i}]' for i in cites)}{end.group(0) if end else ''}", cites, lost


def _quote(passages: Sequence[Passage], target: set[str], subject: frozenset[str] = frozenset()) -> tuple[str, int]:
    best = (-math.inf, "", 1)  # a table-only passage still yields its best line
    for n, p in enumerate(passages, 1):
        lines = [s for s, _ in _sentences(p.text)]
        for j, sent in enumerate(lines):
            stems = _stems(sent)
            score = (len(stems & target) / math.sqrt(len(stems) + 1) - ("|" in sent) - 1e-3 * n
                     + 10 * len(_tokens(sent) & subject))  # naming the subject comes first
            if score > best[0]:
                more = lines[j + 1] if len(sent.split()) < 15 and j + 1 < len(lines) else ""
                best = (score, f"{sent} {more}".strip(), n)
    text = best[1] if len(best[1]) <= QUOTE_CHARS else best[1][:QUOTE_CHARS].rsplit(" ", 1)[0] + " …"
    return text, best[2]


def not_mentioned_text(words: Sequence[str], question: str = "") -> str:
    """The answer when no passage names the question's subject; the words as the asker wrote them."""
    shown = []
    for w in words[:3]:
        m = re.search(rf"(?<![^\W_]){re.escape(w)}(?![^\W_])", question, re.IGNORECASE)
        shown.append(f"“{m.group(0) if m else w}”")
    return f"My sources don't mention {' or '.join(shown)}, so I can't answer this from them."


def guard(answer: str, passages: Sequence[Passage], *, question: str = "", relevant: bool = True,
          subject: Sequence[str] = ()) -> GuardResult:
    """Check an answer against the passages it was generated from (numbered [1].. in this order).
    `subject`: the question's subject words (`subject_terms`); empty turns the subject checks off."""
    units = _sentences(answer or "")
    if not passages or not relevant:
        return GuardResult(NO_SOURCES_TEXT, "no-sources", (), tuple(s for s, _ in units))
    srcs = [_Source(p) for p in passages]
    about = frozenset(subject)
    if about and not any(about & s.tokens for s in srcs):
        return GuardResult(not_mentioned_text(list(subject), question), "no-sources", (),
                           tuple(s for s, _ in units))
    seen: set[str] = set()
    last = ""
    out: list[tuple[str, str, str]] = []
    dropped: list[str] = []
    on_subject = False  # a kept claim rests on a passage that names the subject
    for raw, sep in units:
        key = _key(_MARK.sub("", raw))
        if key in seen and (" " in key or key == last):  # a repeated one-word line only when back to back
            dropped.append(raw)
            continue
        seen.add(key)
        last = key
        status, text, by, lost = _check(raw, srcs, about)
        on_subject |= status == "ok" and any(about & srcs[i - 1].tokens for i in by)
        dropped += lost
        if status == "drop":
            dropped.append(raw)
        else:
            out.append((status, text, sep))
    off_subject = about and not on_subject and any(about & _tokens(d) for d in dropped)
    if off_subject or not any(status != "neutral" for status, _, _ in out):
        text, n = _quote(passages, _stems(f"{question} {answer}"), about)
        return GuardResult(f"{QUOTE_PREFIX} “{text}” [{n}]", "quoted", (n,), tuple(s for s, _ in units))
    text = "".join(t + sep for _, t, sep in out).strip()
    cited = dict.fromkeys(int(x) for m in _MARK.finditer(text) for x in m.group(1).split(","))
    return GuardResult(text, "trimmed" if dropped else "supported", tuple(cited), tuple(dropped))
