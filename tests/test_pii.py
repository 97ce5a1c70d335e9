"""PII scrubbing: every kind is caught in the forms people type, and domain text full of numbers survives."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from pathlib import Path
from re import _constants as _c  # type: ignore[attr-defined]
from re import _parser  # type: ignore[attr-defined]

import pytest
from regex_steps import StepCounter, count_steps  # tests/, on sys.path beside this file

from bot.store.pii import (
    DETECTORS,
    _digits_with_positions,
    contains_pii,
    iban_ok,
    luhn_ok,
    scrub,
    scrub_counted,
)
from bot.testing.hostile_text import HOSTILE

ROOT = Path(__file__).resolve().parent.parent

CANARIES = [
    ("write to jane.doe+hr@example.co.uk please", "jane.doe+hr@example.co.uk", "[EMAIL]"),
    ("my card 4111 1111 1111 1111 exp 12/25", "4111 1111 1111 1111", "[CARD]"),
    ("card 5555-5555-5555-4444.", "5555-5555-5555-4444", "[CARD]"),
    ("amex 378282246310005 was charged", "378282246310005", "[CARD]"),
    ("SSN 123-45-6789 on file", "123-45-6789", "[SSN]"),
    ("social security number: 123456789", "123456789", "[SSN]"),
    ("IBAN GB82 WEST 1234 5698 7654 32 and more", "GB82 WEST 1234 5698 7654 32", "[IBAN]"),
    ("wire it to DE89370400440532013000 today", "DE89370400440532013000", "[IBAN]"),
    ("iban: GB00 WEST 1234 5698 7654 32 (typo)", "GB00 WEST 1234 5698 7654 32", "[IBAN]"),
    ("patient MRN: 00123456 has a fever", "00123456", "[MRN]"),
    ("medical record number 4455667 was updated", "4455667", "[MRN]"),
    ("the patient id is AB-12345", "AB-12345", "[MRN]"),
    ("call +44 20 7946 0958 now", "+44 20 7946 0958", "[PHONE]"),
    ("ring (202) 555-0143 after 5", "(202) 555-0143", "[PHONE]"),
    ("ring 202-555-0143 after 5", "202-555-0143", "[PHONE]"),
    ("toll free 1-800-555-0199", "1-800-555-0199", "[PHONE]"),
    ("London office 020 7946 0958", "020 7946 0958", "[PHONE]"),
    ("my phone number is 5551234567", "5551234567", "[PHONE]"),
]


@pytest.mark.parametrize(("text", "secret", "placeholder"), CANARIES)
def test_each_kind_is_replaced_by_its_placeholder(text: str, secret: str, placeholder: str) -> None:
    out, count = scrub_counted(text)
    assert secret not in out
    assert placeholder in out
    assert count == 1
    # the words around the item survive
    assert out.split()[0] == text.split()[0]


def test_many_items_in_one_text() -> None:
    text = " ".join(c[0] for c in CANARIES)
    out, count = scrub_counted(text)
    assert count == len(CANARIES)
    for _, secret, _ in CANARIES:
        assert secret not in out


KEEP = [
    "Revenue rose from $1,234,567 in 2018 to $2,345,678 in 2019, up 12.5%",
    "years 2017 2018 2019 2020 2021",
    "as of 2019-12-31 at 10:30",
    "total 4111111111111111.25 units",  # an amount with decimals, not a card
    "EPS was 1.23 versus 0.98; ratio 0.123 4567",
    "order 1234 5678 9012 3456",  # card-shaped but fails Luhn
    "Section 12.3(b) of the Agreement dated March 4, 2019",
    "Fixing NO0010096985 was announced",  # an ISIN, not an IBAN
    "",
]


@pytest.mark.parametrize("text", KEEP)
def test_ordinary_numbers_are_kept(text: str) -> None:
    assert scrub(text) == text
    assert not contains_pii(text)


def test_shipped_questions_are_left_alone() -> None:
    """Scrubbing must not damage the questions our domains are about (numbers, years, amounts)."""
    changed, total = [], 0
    for path in sorted(ROOT.glob("domains/*/eval.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            question = row.get("question") or row.get("instruction") or ""
            total += 1
            if scrub(question) != question:
                changed.append(question)
    assert total > 300
    assert changed == []


def test_validators() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432")
    assert not iban_ok("GB00WEST12345698765432")
    assert not iban_ok("GB82")


def test_every_detector_has_a_canary() -> None:
    labels = {d.label for d in DETECTORS}
    assert labels == {p.strip("[]") for _, _, p in CANARIES}


# ---------------------------------------------------------------- hostile input: bounded work (issue 15)
# A message can be a 1 MB single token. Timing asserts are not allowed, so the work is checked two ways without a
# clock: structurally (every quantifier has a finite maximum) and by counting backtracking steps with
# tests/regex_steps.py, an interpreter of the same parse trees that `re` runs (checked against `re` below).


def _unbounded_repeats(items: Iterable) -> list[str]:
    found = []
    for op, av in items:
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
            low, high, body = av
            if high == _c.MAXREPEAT:
                found.append(f"{{{low},}} over {list(body)}")
            found += _unbounded_repeats(body)
        elif op is _c.SUBPATTERN:
            found += _unbounded_repeats(av[-1])
        elif op in (_c.ASSERT, _c.ASSERT_NOT):
            found += _unbounded_repeats(av[1])
        elif op is _c.ATOMIC_GROUP:
            found += _unbounded_repeats(av)
        elif op is _c.BRANCH:
            for alternative in av[1]:
                found += _unbounded_repeats(alternative)
    return found


# The patterns before issue 15, kept as the oracle's own check: it must see what was wrong with them.
OLD_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
OLD_PLUS_PHONE = re.compile(r"(?<![\w+])\+\d{1,3}(?:[\s.-]?\(?\d{1,5}\)?){2,6}(?![\w])")


@pytest.mark.parametrize("detector", DETECTORS, ids=lambda d: d.label)
def test_every_quantifier_has_a_finite_maximum(detector) -> None:
    assert _unbounded_repeats(_parser.parse(detector.pattern.pattern, detector.pattern.flags)) == []
    # so a match, and the text a validator is handed, is bounded whatever the message's size
    assert _parser.parse(detector.pattern.pattern, detector.pattern.flags).getwidth()[1] < 10_000


def test_the_bound_check_sees_an_unbounded_quantifier() -> None:
    assert len(_unbounded_repeats(_parser.parse(OLD_EMAIL.pattern))) == 5  # +@+(\.+)*\.{2,}
    assert len(_unbounded_repeats(_parser.parse(r"a{2,}b*?c++"))) == 3


def _fuzz_texts(count: int) -> list[str]:
    rng = random.Random(15)
    atoms = [*"0123456789 -.()+@,#:aZ", "GB82", "IBAN ", "SSN ", "MRN ", "phone ", "is ", "example.com", "+44 ",
             "1-800-", "020 ", "4111 ", "patient id ", "123-45-6789 ", "jane.doe", "\n"]
    return ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 30))) for _ in range(count)]


def test_the_step_counter_finds_what_re_finds() -> None:
    """The oracle below is only as good as its model of `re`: same spans for every pattern on every text."""
    texts = [c[0] for c in CANARIES] + KEEP + [make(200) for make in HOSTILE.values()] + _fuzz_texts(150)
    for pattern in [d.pattern for d in DETECTORS] + [OLD_EMAIL, OLD_PLUS_PHONE]:
        for text in texts:
            assert StepCounter(pattern).spans(text) == [m.span() for m in pattern.finditer(text)], (pattern, text)


STEPS_PER_CHAR = 100  # today's worst is about 12 per pattern; the old "+" phone pattern took over 10,000


@pytest.mark.parametrize("shape", HOSTILE)
def test_scrubbing_work_is_linear_in_the_length_of_hostile_text(shape: str) -> None:
    make = HOSTILE[shape]
    for detector in DETECTORS:
        small, large = (count_steps(detector.pattern, make(n)) for n in (1000, 2000))
        # twice the text, about twice the work (the ends of the text add a little); quadratic would be 4x
        assert large <= 2.25 * small, (detector.pattern.pattern, small, large)
        assert large <= STEPS_PER_CHAR * 2000, (detector.pattern.pattern, large)


def test_the_step_oracle_sees_the_old_patterns_blow_up() -> None:
    letters = HOSTILE["letters"]
    assert count_steps(OLD_EMAIL, letters(600)) > 3.5 * count_steps(OLD_EMAIL, letters(300))
    plus = HOSTILE["+ and 40 digits"]
    assert count_steps(OLD_PLUS_PHONE, plus(100)) > STEPS_PER_CHAR * 100


def test_an_email_after_100k_characters_of_junk_is_still_redacted() -> None:
    junk = HOSTILE["hex"](100_000)
    out, count = scrub_counted(junk + " write to jane.doe@example.com")
    assert out == junk + " write to [EMAIL]"
    assert count == 1


def test_a_megabyte_of_hex_is_left_alone() -> None:
    text = HOSTILE["hex"](1_000_000)
    assert scrub_counted(text) == (text, 0)


def test_a_megabyte_of_letters_with_pii_at_both_ends_is_redacted_at_both_ends() -> None:
    text = "SSN 123-45-6789 " + "a" * 1_000_000 + " call +44 20 7946 0958"
    assert scrub(text) == "SSN [SSN] " + "a" * 1_000_000 + " call [PHONE]"


def test_rfc_5321_limits_bound_an_email() -> None:
    """A local part is at most 64 characters (RFC 5321 4.5.3.1.1), a domain label at most 63."""
    assert scrub("x" * 64 + "@example.com") == "[EMAIL]"
    assert scrub("x" * 65 + "@example.com") == "x" * 65 + "@example.com"  # not an address
    assert scrub("jane@" + "d" * 63 + ".com") == "[EMAIL]"


def test_card_validator_reads_at_most_19_digits() -> None:
    # 4111 1111 1111 1111 is a valid Visa test number; the digits after the 19th never reach Luhn
    assert _digits_with_positions("4111 1111 1111 1111 9999", 19)[-1] == (22, "9")
    assert len(_digits_with_positions("7" * 1_000_000, 19)) == 19
