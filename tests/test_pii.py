"""PII scrubbing: every kind is caught in the forms people type, and domain text full of numbers survives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.store.pii import DETECTORS, contains_pii, iban_ok, luhn_ok, scrub, scrub_counted

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
