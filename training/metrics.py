"""Pure scoring functions: strict label parsing, accuracy / macro-F1, exact match / token-F1, recall@k."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation.replace("%", "").replace(".", "").replace("-", ""))
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_SCALES = {"thousand", "thousands", "million", "millions", "billion", "billions", "percent"}
_LEAD = re.compile(r"^[\s\"'*_`>#:-]+")  # markdown bullets / bold / quotes before an answer


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label the answer starts with (case-insensitive, whole words), else None: no guessing.

    "Bullish." and "**No**, because ..." parse; "I think it is Bullish" does not (counted as wrong).
    """
    head = _LEAD.sub("", text or "").lower()
    for label in sorted(labels, key=len, reverse=True):  # "Unilateral change" before a shorter prefix
        low = label.lower()
        if head.startswith(low) and (len(head) == len(low) or not head[len(low)].isalnum()):
            return label
    return None


def accuracy(preds: Sequence[str | None], golds: Sequence[str]) -> float:
    return sum(p == g for p, g in zip(preds, golds, strict=True)) / len(golds) if golds else 0.0


def macro_f1(preds: Sequence[str | None], golds: Sequence[str]) -> float:
    """Mean F1 over the labels present in gold or predictions (sklearn's default); None is never right."""
    labels = sorted(set(golds) | {p for p in preds if p is not None})
    if not labels:
        return 0.0
    scores = []
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(preds, golds, strict=True))
        fp = sum(p == label and g != label for p, g in zip(preds, golds, strict=True))
        fn = sum(p != label and g == label for p, g in zip(preds, golds, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def majority(golds: Sequence[str]) -> tuple[str, float, float]:
    """(majority label, its accuracy, its macro-F1): the baseline printed beside every classifier."""
    label, _ = Counter(golds).most_common(1)[0]
    preds = [label] * len(golds)
    return label, accuracy(preds, golds), macro_f1(preds, golds)


# ---- free text ------------------------------------------------------------------------------------------
def strip_derivation(text: str) -> str:
    """Our TAT-QA answers read "-12.6 million (derivation: 44.1-56.7)": score the answer part."""
    return re.split(r"\s*\(derivation:", text or "", maxsplit=1)[0].strip()


def _number(token: str) -> str:
    t = token.replace(",", "").replace("$", "").rstrip("%").strip()
    if t.startswith("(") and t.endswith(")"):  # accounting negatives: (1,234) = -1234
        t = "-" + t[1:-1]
    if _NUMBER.match(t):
        value = float(t)
        return f"{round(value, 2):g}"
    return token


def normalize(text: str) -> str:
    """Lower-case, drop punctuation, articles and scale words, and write numbers canonically (1,496.50 -> 1496.5)."""
    text = (text or "").lower().replace("$", " ").replace("%", " % ")
    tokens = []
    for raw in text.split():
        tok = _number(raw.strip(".,;:")) if any(c.isdigit() for c in raw) else raw
        tok = tok.translate(_PUNCT).strip(".-")
        if tok and tok not in _SCALES and tok != "%" and not _ARTICLES.fullmatch(tok):
            tokens.append(tok)
    return " ".join(tokens)


def exact_match(pred: str, gold: str) -> float:
    return float(normalize(pred) == normalize(gold))


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def recall_at_k(ranked: Sequence[Sequence[str]], gold: Sequence[str], k: int) -> float:
    """Share of queries whose gold doc id is among the first k retrieved doc ids."""
    hits = sum(g in list(dict.fromkeys(r))[:k] for r, g in zip(ranked, gold, strict=True))
    return hits / len(gold) if gold else 0.0


# ---- numbers in free text (open questions: correctness and "is every number in the sources?") -----------
_UNITS = {"%": "%", "percent": "%", "per cent": "%", "thousand": "thousand", "thousands": "thousand",
          "k": "thousand", "million": "million", "millions": "million", "m": "million", "mn": "million",
          "billion": "billion", "billions": "billion", "bn": "billion"}
MULTIPLIER = {"": 1.0, "%": 1.0, "thousand": 1e3, "million": 1e6, "billion": 1e9}
_NUM_IN_TEXT = re.compile(
    r"(?<![\w.,])(?P<neg>[-\u2212\u2013](?=[$£€(]?\s?\d))?(?P<open>\()?[$£€]?\s?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?![\w,]*\d)(?P<close>\))?"
    r"(?:\s?(?P<unit>%|per cent\b|percent\b|thousands?\b|millions?\b|billions?\b|bn\b|mn\b|k\b|m\b))?",
    re.IGNORECASE)
_CITATION = re.compile(r"\[\d{1,2}\]")  # [1], [2]: source markers, not numbers of the answer


@dataclass(frozen=True)
class Number:
    """A number as written: its value, how many decimals it shows, and the unit word after it."""

    value: float
    decimals: int
    unit: str = ""  # "", "%", "thousand", "million", "billion"
    digits: str = ""  # the digits as shown (for significant figures)

    @property
    def multiplier(self) -> float:
        return MULTIPLIER[self.unit]

    @property
    def significant(self) -> int:
        return len(self.digits.replace(".", "").lstrip("0")) or 1


def numbers_in(text: str) -> list[Number]:
    """Every number in `text`: 3,778 / $3.8 million / (1,234) / -17.95% / 12.5 percent; citation markers skipped."""
    out = []
    for m in _NUM_IN_TEXT.finditer(_CITATION.sub(" ", text or "")):
        raw = m.group("num").replace(",", "")
        value = float(raw)
        if m.group("neg") or (m.group("open") and m.group("close")):  # -12 or accounting (12)
            value = -value
        unit = _UNITS.get((m.group("unit") or "").lower(), "")
        out.append(Number(value, len(raw.split(".")[1]) if "." in raw else 0, unit, raw))
    return out
