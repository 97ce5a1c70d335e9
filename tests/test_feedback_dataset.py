"""Feedback → training data: votes count once per user, corrections win, opt-outs vanish, 👎 goes to review."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.domains import discover
from bot.prompt import Passage
from bot.store.store import Store
from training import feedback as fd

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def finance():
    return discover(ROOT / "domains").get("finance")


@pytest.fixture
def store() -> Store:
    return Store(":memory:")


PASSAGES = {
    "doc-1#0": Passage(
        "doc-1#0", "Annual report 2019", "Revenue was $12.3m in 2019 and $10.0m in 2018.", 0.9, "doc-1"
    ),
    "doc-2#0": Passage("doc-2#0", "Notes", "Operating expenses rose 4%.", 0.5, "doc-2"),
}


def ask(store: Store, question: str = "What was revenue in 2019?", **changes: object) -> int:
    fields: dict = {
        "source": "slack", "question": question, "answer": "Revenue was $12.3m [1].", "domain": "finance",
        "kind": "answer", "router_scores": {"finance": 0.8}, "chosen_by": "router",
        "citations": ["doc-1#0", "doc-2#0"], "adapter": "base", "latency_ms": 5.0, "channel": "C1",
    }  # fmt: skip
    fields.update(changes)
    return store.log_exchange(**fields)


def vote(store: Store, exchange_id: int, value: str, user: str, key: str, kind: str = "reaction") -> None:
    store.add_feedback(exchange_id, kind, value, user=user, event_key=key)


def build(store: Store, domain, **kw):
    return fd.build(
        store, domain, lookup=PASSAGES.get, domain_names=["finance", "legal", "medical"], budget=700, **kw
    )


# -- votes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("+1", (1, False)), ("-1", (-1, False)), ("removed:+1", (1, True)), ("thumbsdown", (-1, False)),
     ("+1::skin-tone-3", (1, False)), ("eyes", None), ("removed:eyes", None)],
)  # fmt: skip
def test_parse_vote(value: str, expected: tuple | None) -> None:
    assert fd.parse_vote(value) == expected


def test_each_user_counts_once_and_removal_withdraws(store: Store) -> None:
    a = ask(store)
    vote(store, a, "+1", "U1", "1")
    vote(store, a, "+1", "U1", "2", kind="button")  # the same user on the button: still one vote
    vote(store, a, "+1", "U2", "3")
    vote(store, a, "removed:+1", "U2", "4")
    vote(store, a, "-1", "U3", "5")
    vote(store, a, "removed:-1", "U1", "6")  # removing a vote the user doesn't hold changes nothing
    tally = fd.tally_votes(store.feedback())[a]
    assert (tally.net, tally.up, tally.down) == (0, 1, 1)


def test_latest_vote_of_a_user_wins(store: Store) -> None:
    a = ask(store)
    vote(store, a, "-1", "U1", "1")
    vote(store, a, "+1", "U1", "2", kind="button")
    assert fd.tally_votes(store.feedback())[a].net == 1


# -- the rules ------------------------------------------------------------------------------------------


def test_dataset_rules(store: Store, finance) -> None:
    liked = ask(store, "finance: What was revenue in 2019?")
    corrected = ask(store, "What were operating expenses?", answer="They fell 4%.")
    disliked = ask(store, "What is the tax rate?", answer="42 percent.")
    private = ask(store, "What is my bonus?")
    silent = ask(store, "What is EBITDA?")
    refused = ask(store, "Give me an insider tip", kind="refused", citations=[])
    vote(store, liked, "+1", "U1", "a")
    vote(store, corrected, "-1", "U1", "b")
    store.add_feedback(corrected, "correction", "They rose 4% [2].", user="U1", event_key="c")
    vote(store, disliked, "-1", "U2", "d")
    vote(store, private, "+1", "U3", "e")
    store.add_feedback(private, "opt_out", "see_no_evil", user="U3", event_key="f")
    vote(store, refused, "+1", "U4", "g")

    data = build(store, finance)
    by_id = {ex.source_id: ex for ex in data.examples}
    assert set(by_id) == {
        f"exchange-{liked}",
        f"exchange-{corrected}-correction-{data_corr_id(store, corrected)}",
    }
    pos = by_id[f"exchange-{liked}"]
    assert pos.answer == "Revenue was $12.3m [1]."
    assert pos.task == "feedback_positive"
    assert pos.messages[-1] == {"role": "user", "content": "What was revenue in 2019?"}  # prefix stripped
    assert pos.messages[0]["content"].startswith(finance.system_prompt)
    assert "[1] Annual report 2019" in pos.messages[0]["content"]
    assert "[2] Notes" in pos.messages[0]["content"]
    corr = by_id[f"exchange-{corrected}-correction-{data_corr_id(store, corrected)}"]
    assert (corr.answer, corr.task) == ("They rose 4% [2].", "feedback_corrected")
    assert [j.exchange["id"] for j in data.review] == [disliked]
    assert data.counts == {
        "positive": 1, "corrected": 1, "needs_review": 1, "opted_out": 1, "no_signal": 1, "not_an_answer": 1,
    }  # fmt: skip
    assert silent not in [j.exchange["id"] for j in data.review]


def data_corr_id(store: Store, exchange_id: int) -> int:
    return next(r["id"] for r in store.feedback_for(exchange_id) if r["kind"] == "correction")


def test_opt_out_after_training_removes_it_from_the_next_set(store: Store, finance) -> None:
    a = ask(store)
    vote(store, a, "+1", "U1", "1")
    assert len(build(store, finance).examples) == 1
    store.add_feedback(a, "opt_out", "see_no_evil", user="U1", event_key="2")
    assert build(store, finance).examples == []
    assert fd.usable_source_ids(store, "finance") == []


def test_exclude_and_a_later_correction_is_new_data(store: Store, finance) -> None:
    a = ask(store)
    vote(store, a, "+1", "U1", "1")
    seen = build(store, finance).source_ids
    assert build(store, finance, exclude=seen).examples == []
    store.add_feedback(a, "correction", "Revenue was $10.0m.", user="U2", event_key="2")
    fresh = build(store, finance, exclude=seen)
    assert [ex.answer for ex in fresh.examples] == ["Revenue was $10.0m."]


def test_latest_correction_wins(store: Store, finance) -> None:
    a = ask(store)
    store.add_feedback(a, "correction", "first", user="U1", event_key="1")
    store.add_feedback(a, "correction", "second", user="U2", event_key="2")
    assert [ex.answer for ex in build(store, finance).examples] == ["second"]


def test_stale_citations_skip_the_example(store: Store, finance) -> None:
    a = ask(store, citations=["gone#3"])
    vote(store, a, "+1", "U1", "1")
    data = build(store, finance)
    assert data.examples == []
    assert data.counts["stale"] == 1


def test_no_citations_is_a_valid_inline_example(store: Store, finance) -> None:
    a = ask(store, "Sentiment of this tweet?\n\n$AAPL beats estimates", answer="Bullish", citations=[])
    vote(store, a, "+1", "U1", "1")
    (ex,) = build(store, finance).examples
    assert ex.messages[0]["content"] == finance.system_prompt
    assert ex.answer == "Bullish"


def test_other_domains_are_ignored(store: Store, finance) -> None:
    a = ask(store, domain="legal")
    vote(store, a, "+1", "U1", "1")
    assert build(store, finance).examples == []
    assert fd.usable_source_ids(store, "legal") == [f"exchange-{a}"]


def test_answers_to_review_are_the_downvoted_ones_newest_first(store: Store) -> None:
    ids = [ask(store, f"q{i}") for i in range(4)]
    for i, a in enumerate(ids[:3]):
        vote(store, a, "-1", "U1", f"k{i}")
    vote(store, ids[3], "+1", "U1", "k3")

    def review(domain: str, limit: int | None = None) -> list[int]:
        return [j.exchange["id"] for j in fd.needs_review(fd.judge(store.exchanges(domain), store.feedback(domain)), limit)]

    assert review("finance", limit=2) == [ids[2], ids[1]]
    assert review("finance") == [ids[2], ids[1], ids[0]]
    assert review("legal") == []


# -- grounding: what a correction and a 👍 answer teach ---------------------------------------------------
def _numbered(prompt: str) -> dict[int, str]:
    """'[n] Title' lines of a built prompt -> {n: title} (read from the text, not from the code under test)."""
    import re

    return {int(n): title for n, title in re.findall(r"^\[(\d+)\] (.+)$", prompt, flags=re.MULTILINE)}


def build_grounded(store: Store, domain):
    return fd.build(store, domain, lookup=fd.IndexLookup(PASSAGES.values()), domain_names=["finance"], budget=700)


@pytest.mark.parametrize("shown", [["doc-2#0"], ["doc-2#0", "doc-1#0"], ["doc-1#0", "doc-2#0"]])
def test_a_correction_naming_its_source_cites_it_in_a_prompt_that_shows_it(store: Store, finance, shown) -> None:
    a = ask(store, answer="Revenue was $10.0m [1].", citations=shown)
    store.add_feedback(a, "correction", "$12.3m (source: doc-1)", user="U1", event_key="c")
    (ex,) = build_grounded(store, finance).examples
    titles = _numbered(ex.messages[0]["content"])
    assert "Revenue was $12.3m in 2019" in ex.messages[0]["content"]  # retrieval missed it: now it is shown
    assert len(titles) == len(shown)  # in place of another passage, not in addition
    n = next(n for n, t in titles.items() if t == "Annual report 2019")
    assert ex.answer == f"$12.3m [{n}]"  # the fact, citing the passage it is in, as a served answer cites


def test_a_correction_whose_source_is_unknown_keeps_the_fact_without_the_note(store: Store, finance) -> None:
    a = ask(store, answer="Operating expenses fell 4% [1].", citations=["doc-2#0"])
    store.add_feedback(a, "correction", "They rose 4% (source: nowhere-7)", user="U1", event_key="c")
    (ex,) = build_grounded(store, finance).examples
    assert ex.answer == "They rose 4%"
    assert "Annual report 2019" not in ex.messages[0]["content"]
    assert fd.split_source("rose 4% [2]") == ("rose 4% [2]", None)  # a plain citation is not a source note


@pytest.mark.parametrize("fact", ["$2.3m (source: doc-1)", "Revenue grew $2.3m", "$12.3m (source: doc-2)"])
def test_a_correction_with_a_figure_no_shown_passage_holds_is_not_learned(store: Store, finance, fact) -> None:
    # 12.3 - 10.0 = 2.3 is right, but the guard drops any sentence whose number is in no passage: users would
    # never get that answer. "(source: doc-2)" names a passage without $12.3m: the same.
    a = ask(store, answer="Revenue was $10.0m [1].", citations=["doc-2#0"])
    store.add_feedback(a, "correction", fact, user="U1", event_key="c")
    data = build_grounded(store, finance)
    assert data.examples == [] and data.counts["unservable"] == 1


def test_a_liked_answer_cites_the_passage_it_used_after_the_store_reorders_them(store: Store, finance) -> None:
    # Served with [1] Annual report, [2] Notes; the answer used [2]; the store keeps the cited passage first.
    a = ask(store, "What happened to opex?", answer="Operating expenses rose 4% [2].", citations=["doc-2#0", "doc-1#0"])
    vote(store, a, "+1", "U1", "1")
    (ex,) = build_grounded(store, finance).examples
    titles = _numbered(ex.messages[0]["content"])
    cited = int(ex.answer.rsplit("[", 1)[1].rstrip("]."))
    assert titles[cited] == "Notes"  # the passage that says 4%, whatever number it now has
