"""Text shapes that made PII patterns backtrack (one long token of one class, and the separators the patterns
allow inside): the step-count tests in tests/test_pii.py and bench/pii_scrub.py use the same ones."""

from __future__ import annotations

from collections.abc import Callable


def repeat(unit: str) -> Callable[[int], str]:
    """n characters of `unit` repeated."""
    return lambda n: (unit * (n // len(unit) + 1))[:n]


HOSTILE: dict[str, Callable[[int], str]] = {
    "letters": repeat("a"),
    "hex": repeat("0123456789abcdef"),
    "digits": repeat("7"),
    "a.": repeat("a."),
    "x@": repeat("x@"),
    "x@ then a.": lambda n: "x@" + repeat("a.")(n - 2),
    "digits+spaces": repeat("4 "),
    "digits+dashes": repeat("12-"),
    "+ and 40 digits": repeat("+" + "1" * 40 + " "),
    "(1) ": repeat("(1) "),
    "MRN 1-1-1": lambda n: "MRN " + repeat("1-")(n - 4),
    "phone is is": lambda n: "phone" + repeat(" is")(n - 5),
    "GB82 ": repeat("GB82 "),
    "emails": repeat("ab.cd@ef.gh "),
}
