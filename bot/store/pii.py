"""Scrub personal data from text before it is stored: emails, phone numbers, card numbers, SSNs, IBANs and
medical record numbers become placeholders such as "[EMAIL]".

Each kind is one `Detector` (a regex plus an optional validator) in `DETECTORS`, applied in order: the
stricter, checksum-validated kinds (IBAN, card) run before the looser phone patterns, so a card number is
never half-eaten as a phone number. Validators (Luhn, IBAN mod-97, card prefixes) keep the false positives
low on the numbers our domains are full of: amounts, years, percentages and dates.
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


def _digits_with_positions(text: str) -> list[tuple[int, str]]:
    return [(i, ch) for i, ch in enumerate(text) if ch.isdigit()]


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


def _card_span(text: str) -> tuple[int, int] | None:
    """The longest prefix of 13-19 digits that is a plausible card number (prefix + Luhn)."""
    digits = _digits_with_positions(text)
    for n in range(min(19, len(digits)), 12, -1):
        number = "".join(ch for _, ch in digits[:n])
        if _CARD_PREFIX.match(number) and luhn_ok(number):
            return 0, digits[n - 1][0] + 1
    return None


def iban_ok(compact: str) -> bool:
    if not 15 <= len(compact) <= 34:
        return False
    rotated = compact[4:] + compact[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rotated)
    return int(numeric) % 97 == 1


def _iban_span(text: str) -> tuple[int, int] | None:
    """The whole match, or the match without its last group (which may be the next word), if its checksum holds."""
    cut = max(text.rfind(" "), text.rfind("-"))
    for end in (len(text), cut):
        if end > 0 and iban_ok(re.sub(r"[ -]", "", text[:end]).upper()):
            return 0, end
    return None


def _phone_span(text: str) -> tuple[int, int] | None:
    count = sum(ch.isdigit() for ch in text)
    return (0, len(text)) if 7 <= count <= 15 else None


_I = re.IGNORECASE
DETECTORS: tuple[Detector, ...] = (
    Detector("EMAIL", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
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
            r"(?:\s+(?:is|was))?\W{0,4}(?P<pii>[A-Z]{0,4}[- ]?\d[\d-]{3,}\d)",
            _I,
        ),
    ),
    # International numbers written with a leading + (e.g. +44 20 7946 0958, +1-202-555-0143).
    Detector("PHONE", re.compile(r"(?<![\w+])\+\d{1,3}(?:[\s.-]?\(?\d{1,5}\)?){2,6}(?![\w])"), _phone_span),
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
            r"(?:\s+(?:number|no\.?|is|on|at))*\W{0,4}(?P<pii>\(?\d[\d\s().-]{5,20}\d)",
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
