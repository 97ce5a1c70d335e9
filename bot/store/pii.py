"""Scrub personal data from text before it is stored: emails, phone numbers, card numbers, SSNs, IBANs and
medical record numbers become placeholders such as "[EMAIL]".

Each kind is one `Detector` (a regex plus an optional validator) in `DETECTORS`, applied in order: the
stricter, checksum-validated kinds (IBAN, card) run before the looser phone patterns, so a card number is
never half-eaten as a phone number. Validators (Luhn, IBAN mod-97, card prefixes) keep the false positives
low on the numbers our domains are full of: amounts, years, percentages and dates.

Every pattern is bounded, because a message can be a 1 MB single token (issue 15): each quantifier has a finite
maximum (the real one: RFC 5321 local part <= 64, label <= 63; cards <= 19 digits; IBAN <= 34), a match can only
start where a run of its characters starts (a lookbehind or \\b), and repeats that could split the same digits
many ways are possessive. So a match attempt reads a bounded window and `scrub` is linear in the text's length
(bench/pii_scrub.py times it; tests/test_pii.py checks the bounds and counts the backtracking steps).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Validator = Callable[[str], "tuple[int, int] | None"]


@dataclass(frozen=True)
class Detector:
    label: str
    pattern: re.Pattern[str]
    # Given the matched text, return the (start, end) slice to redact, or None to keep it.
    # The default redacts the group "pii" when the pattern has one, else the whole match.
    validate: Validator | None = None


def _digits_with_positions(text: str, limit: int) -> list[tuple[int, str]]:
    """The first `limit` digits of `text` with their positions (bounded: callers pass a match, not a message)."""
    found: list[tuple[int, str]] = []
    for i, ch in enumerate(text):
        if ch.isdigit():
            found.append((i, ch))
            if len(found) == limit:
                break
    return found


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Issuer prefixes of the major card networks; a run of digits that fails these is an amount, not a card.
_CARD_PREFIX = re.compile(r"^(4|5[1-5]|2[2-7]|3[47]|3[0689]|6011|6[45])")
_CARD_MAX_DIGITS = 19  # ISO/IEC 7812
_NON_DIGITS = re.compile(r"\D")


def _card_span(text: str) -> tuple[int, int] | None:
    """The longest prefix of 13-19 digits that is a plausible card number (prefix + Luhn)."""
    number = _NON_DIGITS.sub("", text)[:_CARD_MAX_DIGITS]
    # The prefix is at most 4 digits, the same for every length tried: check it once, before any Python loop
    # (hostile text is full of digit runs, and this runs once per run).
    if len(number) < 13 or not _CARD_PREFIX.match(number):
        return None
    for n in range(len(number), 12, -1):
        if luhn_ok(number[:n]):
            return 0, _digits_with_positions(text, n)[-1][0] + 1
    return None


_IBAN_MAX = 34  # ISO 13616


def iban_ok(compact: str) -> bool:
    if not 15 <= len(compact) <= _IBAN_MAX:
        return False
    rotated = compact[4:] + compact[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rotated)
    return int(numeric) % 97 == 1


def _iban_span(text: str) -> tuple[int, int] | None:
    """The whole match, or the match without its last group (which may be the next word), if its checksum holds.
    The IBAN patterns cap a match at 44 characters, so this is constant work per match."""
    cut = max(text.rfind(" "), text.rfind("-"))
    for end in (len(text), cut):
        if end > 0 and iban_ok(re.sub(r"[ -]", "", text[:end]).upper()):
            return 0, end
    return None


def _phone_span(text: str) -> tuple[int, int] | None:
    count = sum(ch.isdigit() for ch in text)
    return (0, len(text)) if 7 <= count <= 15 else None


_I = re.IGNORECASE
# An email's local part: at most 64 characters (RFC 5321), starting where a run of these characters starts, so
# a long run without "@" costs one bounded attempt instead of one per position (that was quadratic).
_LOCAL = r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}"
# Domain: labels of at most 63 characters, at most 127 of them (a name is at most 255 characters).
_DOMAIN = r"[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,125}\.[A-Za-z]{2,63}"
DETECTORS: tuple[Detector, ...] = (
    Detector("EMAIL", re.compile(_LOCAL + "@" + _DOMAIN)),
    # Either compact (DE89370400440532013000) or printed in groups of four (GB82 WEST 1234 5698 7654 32).
    Detector(
        "IBAN",
        re.compile(
            r"\b[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?:[ -][A-Z0-9]{4}){2,7}(?:[ -][A-Z0-9]{1,4})?)\b", _I
        ),
        _iban_span,
    ),
    # An IBAN right after the word "IBAN" is redacted even with a bad checksum (a typo is still personal).
    Detector(
        "IBAN",
        re.compile(
            r"\bIBAN\b\W{0,3}(?P<pii>[A-Z]{2}\d{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,3})?)\b", _I
        ),
    ),
    # 13-19 digits (23 allowed through, the validator picks the card's prefix), each group separated at most once.
    Detector("CARD", re.compile(r"(?<![\d.,])\d(?:[ -]?\d){12,22}(?![\d.,]\d)"), _card_span),
    Detector(
        "SSN",
        re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])"),
    ),
    Detector(
        "SSN",
        re.compile(
            r"\b(?:SSN|social security(?: number| no\.?)?)\W{0,4}(?P<pii>\d{3}[- ]?\d{2}[- ]?\d{4})\b", _I
        ),
    ),
    Detector(
        "MRN",
        re.compile(
            r"\b(?:MRN|MR\s?#|medical record(?: number| no\.?| #)?|patient (?:id|number|no\.?)|chart (?:number|no\.?))"
            r"(?:\s{1,8}(?:is|was))?\W{0,4}(?P<pii>[A-Z]{0,4}[- ]?\d[\d-]{3,30}\d)",
            _I,
        ),
    ),
    # International numbers written with a leading + (e.g. +44 20 7946 0958, +1-202-555-0143). The groups are
    # possessive, so a run of digits is cut into groups one way only (backtracking tried every split: 4 ms per
    # "+" and 40 digits); the country code and the number of groups still backtrack (at most 3 x 5 ways).
    Detector(
        "PHONE",
        re.compile(r"(?<![\w+])\+\d{1,3}(?:[\s.-]?+\(?+\d{1,5}+\)?){2,6}(?![\w])"),
        _phone_span,
    ),
    # North American formats: (202) 555-0143, 202-555-0143, 202.555.0143, 1-800-555-0199.
    Detector(
        "PHONE",
        re.compile(r"(?<![\w-])(?:1[\s.-])?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?![\w-])"),
    ),
    # National trunk-prefix formats: 020 7946 0958, 07700 900123.
    Detector("PHONE", re.compile(r"(?<![\w.,-])0\d{2,4}[\s-]\d{3,4}[\s-]?\d{3,4}(?![\w.,-])"), _phone_span),
    # Any digit string announced as a phone number.
    Detector(
        "PHONE",
        re.compile(
            r"\b(?:phone|tel|telephone|mobile|cell|fax|whatsapp|call me(?: on| at)?|text me(?: on| at)?)"
            r"(?:\s{1,8}(?:number|no\.?|is|on|at)){0,4}\W{0,4}(?P<pii>\(?\d[\d\s().-]{5,20}\d)",
            _I,
        ),
        _phone_span,
    ),
)


def _redact(detector: Detector, text: str) -> tuple[str, int]:
    placeholder = f"[{detector.label}]"
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        has_group = "pii" in detector.pattern.groupindex
        start, end = match.span("pii") if has_group else match.span()
        candidate = text[start:end]
        span = detector.validate(candidate) if detector.validate else (0, len(candidate))
        if span is None:
            return match.group(0)
        count += 1
        offset = start - match.start()
        whole = match.group(0)
        return whole[: offset + span[0]] + placeholder + whole[offset + span[1] :]

    return detector.pattern.sub(replace, text), count


def scrub_counted(text: str) -> tuple[str, int]:
    """The text with every detected item replaced by its placeholder, and how many were replaced."""
    total = 0
    for detector in DETECTORS:
        text, count = _redact(detector, text)
        total += count
    return text, total


def scrub(text: str) -> str:
    return scrub_counted(text)[0]


def contains_pii(text: str) -> bool:
    return scrub_counted(text)[1] > 0
