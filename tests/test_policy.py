import re

import pytest

from bot.config import ROOT
from bot.domains import Domain, Rule, discover
from bot.errors import InputError
from bot.policy import MAX_QUESTION_CHARS, channel_allowed, check, clean_question, no_domain_message


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_question_is_rejected_clearly(bad):
    with pytest.raises(InputError, match="empty"):
        clean_question(bad)


def test_too_long_question_is_rejected_with_the_limit():
    with pytest.raises(InputError, match="20,000"):
        clean_question("a" * (MAX_QUESTION_CHARS + 1))


@pytest.mark.parametrize("bad", ["abc\x00def", "\x01\x02\x03\x04\x05 hi", b"\xff\xfe\x00binary"])
def test_binary_input_is_rejected(bad):
    with pytest.raises(InputError, match="binary"):
        clean_question(bad)


def test_stray_control_characters_are_removed():
    assert clean_question("what is\x07 a lease?\x1b") == "what is a lease?"


def test_non_text_is_rejected():
    with pytest.raises(InputError):
        clean_question(42)


def _domain(**kw) -> Domain:
    base = dict(name="legal", description="d", examples=("a", "b", "c"), system_prompt="s", disclaimer="x",
                path=ROOT)
    base.update(kw)
    return Domain(**base)


def test_channel_rules():
    d = _domain(channels=("#legal-help", "C123", "dm"))
    assert channel_allowed(d, "C123")
    assert channel_allowed(d, "C999", "legal-help")
    assert not channel_allowed(d, "C999", "random")
    assert channel_allowed(d, "D1", is_dm=True)
    assert channel_allowed(d, None)  # the CLI
    verdict = check(d, "q", "C999", "random")
    assert verdict.kind == "not_allowed" and "#legal-help" in verdict.message


def test_emergency_redirect_wins_over_refusal():
    d = _domain(rules=(Rule(re.compile("dose", re.I), "no dosing", "refuse"),
                       Rule(re.compile("chest pain", re.I), "call 911", "redirect")))
    assert check(d, "chest pain, what dose?").message == "call 911"
    assert check(d, "what dose?").kind == "refuse"
    assert check(d, "what is it?").kind == "ok"


def test_shipped_medical_rules():
    med = discover(ROOT / "domains").domains["medical"]
    assert check(med, "I have chest pain and can't breathe").kind == "redirect"
    assert check(med, "What dose should I take of ibuprofen?").kind == "refuse"
    assert check(med, "What are the symptoms of asthma?").kind == "ok"


def test_no_domain_message_explains_how_to_pick():
    msg = no_domain_message(list(discover(ROOT / "domains").domains.values()))
    assert "finance" in msg and "legal" in msg and "medical" in msg and "/ask" in msg
    assert "No domains" in no_domain_message([])
