import numpy as np
import pytest

from bot.router import CHITCHAT, Router, decide, domain_scores, explicit_prefix, fit_threshold

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
def router(answerer):
    return answerer.router


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


def test_extra_examples_are_used(answerer, embedder, tmp_path):
    base = Router(answerer.discovery.domains, embedder.encode, cache_dir=tmp_path)
    text = "quarterly quokka census numbers please"
    more = Router(answerer.discovery.domains, embedder.encode, cache_dir=tmp_path,
                  extra_examples={"finance": [text]})
    assert more.route(text).scores["finance"] > base.route(text).scores["finance"]
    assert more.fit.extra_examples == {"finance": 1}
