import json
import re
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bot.domains import discover
from bot.router import (
    CHITCHAT,
    Router,
    _anchor_texts,
    _eval_questions,
    decide,
    domain_scores,
    explicit_prefix,
    fit_threshold,
)

NAMES = ["finance", "legal", "medical"]


@pytest.mark.parametrize(
    ("text", "domain", "rest"),
    [
        ("legal: does it renew?", "legal", "does it renew?"),
        ("/finance what is EBITDA", "finance", "what is EBITDA"),
        ("MEDICAL : what is asthma", "medical", "what is asthma"),
        ("@legal: who signs", "legal", "who signs"),
        ("legal matters are hard", None, "legal matters are hard"),
        ("what is legal: here", None, "what is legal: here"),
    ],
)
def test_explicit_prefix(text, domain, rest):
    assert explicit_prefix(text, NAMES) == (domain, rest)


def test_decide_abstains_below_threshold_or_without_margin():
    assert decide({"a": 0.9, "b": 0.2}, 0.5, 0.05) == ("a", pytest.approx(0.7))
    assert decide({"a": 0.4, "b": 0.2}, 0.5, 0.05)[0] is None
    assert decide({"a": 0.61, "b": 0.60}, 0.5, 0.05)[0] is None
    assert decide({}, 0.5, 0.05) == (None, 0.0)


def test_fit_threshold_separates_classes():
    t = fit_threshold([0.6, 0.7, 0.8], [0.1, 0.2, 0.3])
    assert 0.3 < t <= 0.6


def test_domain_scores_uses_best_anchors():
    anchors = {"x": np.array([[1.0, 0.0], [0.0, 1.0]]), "y": np.array([[-1.0, 0.0]])}
    scores = domain_scores(np.array([1.0, 0.0]), anchors)
    assert scores["x"] == pytest.approx(0.5) and scores["y"] == pytest.approx(-1.0)


@pytest.fixture(scope="module")
def domains(base_settings):
    return discover(base_settings.domains_dir).domains


@pytest.fixture(scope="module")
def router(domains, embedder, base_settings):
    """As the app builds it (real manifests, real embedder, the default fit cached in indexes/): no model."""
    return Router(domains, embedder.encode, cache_dir=base_settings.indexes_dir, encoder_key=embedder.fingerprint())


IN_DOMAIN = {
    "finance": ["What was the company's revenue growth in 2019?", "How much deferred tax was recognised?",
                "Is this tweet bullish or bearish: $TSLA shares slump after recall"],
    "legal": ["Does the agreement have a non-compete clause?", "What law governs this contract?",
              "Is this statement hearsay?"],
    "medical": ["What are the early symptoms of type 2 diabetes?", "How is asthma treated?",
                "Is Huntington disease inherited?"],
}


@pytest.mark.parametrize(("domain", "question"), [(d, q) for d, qs in IN_DOMAIN.items() for q in qs])
def test_routes_domain_questions(router, domain, question):
    result = router.route(question)
    assert result.domain == domain, result.scores
    assert set(result.scores) == set(NAMES) and result.method == "router"


@pytest.mark.parametrize("chatter", ["book the meeting room", "what's for lunch?", "can you fix the printer",
                                     "see you at standup tomorrow", "who wants coffee"])
def test_abstains_on_office_chitchat(router, chatter):
    result = router.route(chatter)
    assert result.domain is None and result.method == "none"
    assert result.scores  # the scores are still reported


def test_fit_is_reported_and_reasonable(router):
    assert 0.0 < router.fit.threshold < 1.0
    assert router.fit.balanced_accuracy >= 0.85
    assert router.fit.n_negative == len(CHITCHAT)


def test_extra_examples_are_used(domains, embedder, tmp_path):
    base = Router(domains, embedder.encode, cache_dir=tmp_path)
    text = "quarterly quokka census numbers please"
    more = Router(domains, embedder.encode, cache_dir=tmp_path, extra_examples={"finance": [text]})
    assert more.route(text).scores["finance"] > base.route(text).scores["finance"]
    assert more.fit.extra_examples == {"finance": 1}


def test_anchor_vectors_are_cached_per_encoder_and_anchor_texts(domains, embedder, tmp_path):
    calls: list[list[str]] = []

    def counting(texts):
        calls.append(list(texts))
        return embedder.encode(texts)

    first = Router(domains, counting, cache_dir=tmp_path, encoder_key="weights-a")
    assert calls and (tmp_path / "router_anchors.npz").is_file()
    calls.clear()
    again = Router(domains, counting, cache_dir=tmp_path, encoder_key="weights-a")
    assert calls == []  # anchors and fit both read back: nothing embedded in a new process
    for name in domains:
        assert np.array_equal(again.anchors[name], first.anchors[name])
    q = "What was the company's revenue growth in 2019?"
    assert again.route(q).scores == first.route(q).scores
    # other weights, or other anchor texts, are embedded afresh
    calls.clear()
    Router(domains, counting, cache_dir=tmp_path, encoder_key="weights-b")
    assert sum(len(c) for c in calls) >= sum(len(a) for a in first.anchors.values())
    calls.clear()
    extra = Router(domains, counting, cache_dir=tmp_path, encoder_key="weights-b",
                   extra_examples={"legal": ["who signs the lease renewal"]})
    assert ["who signs the lease renewal"] in [c[-1:] for c in calls] and len(extra.anchors["legal"]) == len(
        first.anchors["legal"]) + 1
    with np.load(tmp_path / "router_anchors.npz") as saved:
        assert int(saved["learned"]) == 1  # what the repo guard reads: learned examples are a test's leftover
    # a damaged cache file is re-embedded, not trusted and not fatal
    (tmp_path / "router_anchors.npz").write_bytes(b"not an npz")
    calls.clear()
    Router(domains, counting, cache_dir=tmp_path, encoder_key="weights-b")
    assert calls


def test_without_an_encoder_key_nothing_is_cached(domains, embedder, tmp_path):
    Router(domains, embedder.encode, cache_dir=tmp_path)
    assert not (tmp_path / "router_anchors.npz").exists()


# ---------------------------------------------------------------- held-out questions (tests/data/)
# Written for this test as a new employee would ask them, not taken from the manifests, the router's anchors,
# its negatives (CHITCHAT) or the eval.jsonl questions it fits its threshold on; the first test checks that.

HELDOUT = Path(__file__).parent / "data" / "heldout_routing.jsonl"


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


@pytest.fixture(scope="module")
def heldout() -> list[dict]:
    return [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_heldout_questions_are_new_to_the_router(heldout, domains, base_settings):
    counts = Counter(row["domain"] for row in heldout)
    assert set(counts) == {*NAMES, None} and min(counts[d] for d in NAMES) >= 15 and counts[None] >= 20
    seen = set()
    for toml in base_settings.domains_dir.glob("*/domain.toml"):  # the manifests as written, read directly
        manifest = tomllib.loads(toml.read_text(encoding="utf-8"))
        seen |= {manifest.get("description", ""), *manifest.get("examples", ()),
                 *manifest.get("suggested_prompts", ())}
    for d in domains.values():  # the router's anchors, and the eval questions it fits its threshold on
        seen |= {*_anchor_texts(d, ()), *_eval_questions(d, limit=10_000)}
        lines = d.eval_file.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        seen |= {str(row.get("question", "")) for row in rows}
    seen = {_norm(t) for t in seen | set(CHITCHAT) | {q for qs in IN_DOMAIN.values() for q in qs}} - {""}
    reused = [row["question"] for row in heldout if _norm(row["question"]) in seen]
    contained = [row["question"] for row in heldout if any(_norm(row["question"]) in t for t in seen)]
    assert reused == [] and contained == []
    assert len({_norm(row["question"]) for row in heldout}) == len(heldout)  # no duplicates within the set


def test_heldout_domain_questions_route_to_their_domain(router, heldout):
    asked = [row for row in heldout if row["domain"]]
    got = {row["question"]: router.route(row["question"]).domain for row in asked}
    misses = [(r["domain"], got[r["question"]], r["question"]) for r in asked
              if got[r["question"]] != r["domain"]]
    accuracy = 1 - len(misses) / len(asked)
    per_domain = {d: sum(got[r["question"]] == d for r in asked if r["domain"] == d)
                  / sum(r["domain"] == d for r in asked) for d in NAMES}
    # Measured with all-MiniLM-L6-v2 and the shipped manifests: 45/45 (1.00), 15/15 in each domain. 0.90
    # lets four of 45 slip before failing; a domain under 0.80 (4 of 15 lost) fails even if the others hold.
    assert accuracy >= 0.90, misses
    assert min(per_domain.values()) >= 0.80, (per_domain, misses)


def test_heldout_chitchat_is_abstained_on(router, heldout):
    lines = [row["question"] for row in heldout if row["domain"] is None]
    claimed = [(q, r.domain, r.scores) for q in lines if (r := router.route(q)).domain is not None]
    rate = 1 - len(claimed) / len(lines)
    # Measured: 19/20 (0.95) abstained; the one claimed is "who's organizing the bake sale" (legal 0.243,
    # finance 0.200; fitted threshold 0.217). 0.85 fails at the fourth claimed line of 20.
    assert rate >= 0.85, claimed
