"""The grounding guard in the answer path: what a person sees is the checked text, whatever the model drafted.

The model here is an OpenAI-compatible inference server scripted over HTTP (an outer boundary), so the draft is
known; retrieval, routing, the prompt, the guard and the store are the real ones.
"""

from __future__ import annotations

import re

import pytest

from bot.answer import Question, label_answer
from bot.exchange_log import log_answer
from bot.guard import NO_SOURCES_TEXT, QUOTE_PREFIX
from bot.store.store import Store
from bot.testing.scripted_llm import scripted


def sources(body: dict) -> str:
    return body["messages"][0]["content"]


def first_sentence_of_source(body: dict, n: int) -> str:
    block = sources(body).split(f"[{n}] ", 1)[1].split("\n", 1)[1]
    return re.split(r"(?<=[.!?])\s", block.strip(), maxsplit=1)[0]


QUESTION = "legal: How many major code releases of OPS may the supplier ship per year without Bank of America's consent?"


def test_an_invented_figure_is_dropped_and_the_supported_sentence_kept_with_its_citation(answerer):
    def reply(body):
        fact = first_sentence_of_source(body, 1)
        return f"{fact} [1] The supplier must also pay a fee of $198.2 million every year."

    bot, seen = scripted(answerer, reply)
    ans = bot.answer(QUESTION)
    assert "198.2" in ans.draft and "198.2" not in ans.text
    assert ans.guard["verdict"] == "trimmed"
    assert ans.text.startswith(first_sentence_of_source(seen[0], 1)) and "[1]" in ans.text
    assert [c.n for c in ans.citations if c.cited] == [1] and ans.citations[0].n == 1


def test_a_bare_yes_to_an_open_question_becomes_the_closest_quote(answerer):
    bot, seen = scripted(answerer, lambda body: "Yes")
    ans = bot.answer(QUESTION)
    assert ans.guard["verdict"] == "quoted" and ans.text.startswith(QUOTE_PREFIX)
    quoted = re.search(r"“(.+)”", ans.text).group(1)
    assert quoted.rstrip(" …") in sources(seen[0])  # a real sentence of a shown passage
    assert "two major code releases" in ans.text  # the clause that answers it was retrieved, and is quoted
    assert ans.citations[0].cited and not any(c.cited for c in ans.citations[1:])


def test_a_repetition_loop_is_cut_to_one(answerer):
    bot, _ = scripted(answerer, lambda body: "Abdominal cramps, " * 12)
    ans = bot.answer("medical: What are the symptoms of hepatitis A?")
    assert ans.draft.count("Abdominal cramps") == 12
    assert ans.text.count("Abdominal cramps") <= 1


def test_nothing_relevant_retrieved_says_the_sources_dont_cover_it(answerer):
    bot, seen = scripted(answerer, lambda body: "The answer is 42 [1].")
    ans = bot.answer("legal: zxqv wplk frum?")
    if ans.passages:  # the retriever's score floor let something through: then the number must still go
        assert "42" not in ans.text
    else:
        assert ans.text == NO_SOURCES_TEXT and ans.guard["verdict"] == "no-sources" and not ans.citations


CLAUSE = "This Agreement renews for successive one-year terms unless either party gives 90 days' notice."


def test_a_yes_no_label_to_a_polar_question_about_pasted_text_is_kept_and_to_an_open_one_is_not(answerer):
    legal = answerer.discovery.get("legal")
    assert label_answer("Yes, it renews.", f"Does this clause renew automatically? {CLAUSE}", legal) == "Yes"
    assert label_answer("No", f"Is there a non-compete here:\n{CLAUSE}", legal) == "No"
    assert label_answer("Yes", "How many code releases may the supplier ship?", legal) is None
    # no text of the asker's own to judge: "Yes" would be a claim about the sources, checked like any other
    assert label_answer("Yes, it renews.", "Does the agreement renew automatically?", legal) is None
    assert label_answer("Yes", "Does the Acme agreement: renew?", legal) is None  # one word after the colon
    finance = answerer.discovery.get("finance")
    labels = finance.tasks["tfns_sentiment"]["labels"]
    asked = f"Is this tweet {', '.join(labels[:-1])} or {labels[-1]}? $AAPL beats estimates"
    assert label_answer(f"{labels[0]}.", asked, finance) == labels[0]
    assert label_answer(f"{labels[0]}.", "What was revenue in 2019?", finance) is None


@pytest.mark.parametrize("question", [
    "finance: What is the sentiment of this tweet: $AAPL beats earnings estimates, shares jump 5%",
    "finance: sentiment? Stocks slide as Fed signals more rate hikes",
])
def test_a_label_to_a_question_that_asks_for_it_in_the_tasks_words_is_kept(answerer, question):
    """The question names no label, but asks for the sentiment (the task's `asked_by`): the label is the answer,
    not a quote of a passage about earnings per share."""
    finance = answerer.discovery.get("finance")
    assert finance.tasks["tfns_sentiment"]["asked_by"] and not any(
        label.lower() in question.lower() for label in finance.tasks["tfns_sentiment"]["labels"])
    bot, _ = scripted(answerer, lambda body: "Bullish")
    ans = bot.answer(question)
    assert (ans.text, ans.guard["verdict"]) == ("Bullish", "supported")
    bot, _ = scripted(answerer, lambda body: "Bullish")  # the same word to a question that asks for no label
    ans = bot.answer("finance: What was the company's total revenue in 2019?")
    assert ans.text != "Bullish" and ans.guard["verdict"] != "supported"


def test_a_bare_yes_to_a_polar_question_about_the_documents_is_not_shown_as_the_answer(answerer):
    """ "Does the agreement renew automatically?" carries no text to judge: a bare "Yes" rests on nothing, so the
    person gets the closest clause instead; a "Yes" with a sentence the passage supports is kept, cited."""
    question = "legal: Does the agreement renew automatically?"
    bot, seen = scripted(answerer, lambda body: "Yes")
    ans = bot.answer(question)
    assert ans.guard["verdict"] == "quoted" and ans.text.startswith(QUOTE_PREFIX)
    bot, seen = scripted(answerer, lambda body: f"Yes, {first_sentence_of_source(body, 1)} [1]")
    ans = bot.answer(question)
    assert ans.text.startswith("Yes, ") and ans.guard["verdict"] == "supported" and ans.guard["cited"] == [1]


def test_the_verdict_is_logged_with_the_exchange(answerer, settings):
    bot, _ = scripted(answerer, lambda body: "Yes")
    ans = bot.answer(QUESTION)
    with Store.from_settings(settings) as store:
        xid = log_answer(settings, ans, QUESTION, source="cli", store=store)
        row = store.query("SELECT answer, guard_verdict FROM exchanges WHERE id = ?", (xid,))[0]
    assert row["guard_verdict"] == "quoted" and row["answer"].startswith(QUOTE_PREFIX)


@pytest.mark.parametrize(("follow_up", "expected"), [
    ("What are the symptoms of hepatitis A?", ("medical", "switched")),  # plainly another domain's
    ("how long is it?", ("legal", "thread")),  # vague: the thread's domain holds
    ("And the governing law?", ("legal", "thread")),
])
def test_a_follow_up_switches_only_when_the_router_clearly_prefers_another_domain(answerer, follow_up, expected):
    route = answerer.route_follow_up(follow_up, "legal")
    assert (route.domain, route.method) == expected


def test_a_switched_answer_says_so(answerer):
    bot, _ = scripted(answerer, lambda body: "Yes")
    route = bot.route_follow_up("What are the symptoms of hepatitis A?", "legal")
    ans = bot.answer(Question("What are the symptoms of hepatitis A?", route=route))
    assert ans.domain == "medical" and any("rather than the thread's earlier topic" in n for n in ans.notes)


def test_a_claim_about_a_disease_the_passages_are_not_about_does_not_pass(answerer):
    # The medical corpus has no Huntington disease inheritance page: "Wilson disease — inheritance" ranks first,
    # and this draft shares 5 of its 6 content words with it. Only a family-history page names Huntington.
    bot, seen = scripted(answerer, lambda body: "Huntington disease is inherited in an autosomal recessive "
                                                "pattern [1]. Both copies of the gene have mutations [1].")
    ans = bot.answer("medical: Is Huntington disease inherited?")
    assert any("Wilson" in p.title for p in ans.passages)
    assert "recessive" not in ans.text and "copies" not in ans.text
    assert ans.guard["verdict"] in ("quoted", "no-sources")
    if ans.guard["verdict"] == "quoted":  # then the quote names the disease asked about
        cited = [c for c in ans.citations if c.cited]
        assert "Huntington" in ans.text and len(cited) == 1
        assert "huntington" in ans.passages[cited[0].n - 1].text.lower()


def test_a_faithful_claim_about_the_named_disease_still_passes(answerer):
    bot, seen = scripted(answerer, lambda body: f"{first_sentence_of_source(body, 1)} [1]")
    ans = bot.answer("medical: How is Wilson disease inherited?")
    assert "Wilson" in ans.passages[0].title and "Wilson" in ans.text
    assert ans.guard["verdict"] == "supported"
