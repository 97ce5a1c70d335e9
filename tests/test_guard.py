"""The grounding guard, against hand-written expectations (no model, no I/O)."""

from __future__ import annotations

import pytest

from bot.guard import (
    NO_SOURCES_TEXT,
    QUOTE_PREFIX,
    VERDICTS,
    GuardResult,
    guard,
    is_abstention,
    normalize_number,
    numbers_in,
    subject_terms,
)
from bot.prompt import Passage

LAW = Passage("cuad-004-governing-law", "ENDORSEMENT AGREEMENT — Governing Law clause",
              "This Agreement shall be governed and construed according to the laws of the State of Kansas.")
FIN = Passage("tatqa-1", "Annual-report excerpt: revenue",
              "Total revenue was $3,778 thousand in 2019, compared with $3,262 thousand in 2018. "
              "Gross margin improved to 15.92% as the company cut shipping costs.")
NOSOLICIT = Passage("cuad-008-no-solicit", "CONSULTING AGREEMENT — No-Solicit of Employees clause",
                    "During the term and for twelve (12) months after termination, neither party shall "
                    "solicit the employees of the other party.")
CRAMPS = Passage("medquad-1", "Food poisoning — symptoms",
                 "Symptoms of food poisoning include abdominal cramps, nausea, vomiting and diarrhea. "
                 "Most people recover within a few days without treatment.")
PASSAGES = [LAW, FIN, NOSOLICIT, CRAMPS]


def test_supported_answer_passes_unchanged():
    answer = "The agreement is governed by the laws of the State of Kansas [1]. Total revenue was $3,778 " \
             "thousand in 2019 [2]."
    r = guard(answer, PASSAGES)
    assert (r.text, r.verdict, r.cited, r.dropped) == (answer, "supported", (1, 2), ())
    assert r.to_dict() == {"text": answer, "verdict": "supported", "cited": [1, 2], "dropped": []}


def test_invented_number_sentence_is_dropped():
    r = guard("Total revenue was $198.2 million in 2019 [2]. Gross margin improved to 15.9% [2].", PASSAGES)
    assert r.verdict == "trimmed"
    assert r.text == "Gross margin improved to 15.9% [2]."
    assert r.dropped == ("Total revenue was $198.2 million in 2019 [2].",)
    assert r.cited == (2,)


def test_rounded_number_is_supported():
    r = guard("Revenue was $3.8 million in 2019 [2].", PASSAGES)
    assert r.verdict == "supported" and r.cited == (2,)


def test_invented_sentence_is_dropped():
    answer = "Symptoms include abdominal cramps and nausea [4]. Patients should drink ginger tea and rest " \
             "in a dark quiet room [4]."
    r = guard(answer, PASSAGES)
    assert r.verdict == "trimmed"
    assert r.text == "Symptoms include abdominal cramps and nausea [4]."
    assert r.dropped == ("Patients should drink ginger tea and rest in a dark quiet room [4].",)


def test_support_threshold_is_three_of_five_content_words():
    kept = guard("Nausea, diarrhea and vomiting follow seafood.", PASSAGES)  # 3 of 5 in passage 4
    assert (kept.verdict, kept.text) == ("supported", "Nausea, diarrhea and vomiting follow seafood [4].")
    assert guard("Nausea and diarrhea follow spoiled seafood.", PASSAGES).verdict == "quoted"  # 2 of 5


def test_repetition_loop_is_cut_to_one_occurrence():
    loop = "Symptoms include abdominal cramps, " + "abdominal cramps, " * 12 + "abdominal cramps [4]."
    r = guard(loop, PASSAGES)
    assert r.text == "Symptoms include abdominal cramps [4]."
    assert r.verdict == "trimmed" and r.cited == (4,)
    assert r.text.count("cramps") == 1


def test_repeated_sentences_are_kept_once():
    r = guard("Symptoms include nausea [4]. " * 2 + "Symptoms include nausea [4].", PASSAGES)
    assert r.text == "Symptoms include nausea [4]."
    assert r.dropped == ("Symptoms include nausea [4].",) * 2


def test_long_list_drops_only_the_invented_items():
    answer = ("Symptoms of food poisoning include abdominal cramps, nausea, vomiting, diarrhea, high fever "
              "with shaking chills and night sweats, blurred double vision with eyelid drooping, and most "
              "people recover within a few days without treatment [4].")
    r = guard(answer, PASSAGES)
    assert r.verdict == "trimmed"
    assert "blurred double vision" not in r.text and "shaking chills" not in r.text
    assert r.text.startswith("Symptoms of food poisoning include abdominal cramps, nausea, vomiting, "
                             "diarrhea,")
    assert r.text.endswith("without treatment [4].")


def test_twice_repeated_phrase_in_real_text_is_kept():
    gene = Passage("medquad-2", "Hermansky-Pudlak syndrome — treatment",
                   "Resources: Gene Review: Gene Review: Hermansky-Pudlak Syndrome.")
    r = guard("Resources: Gene Review: Gene Review: Hermansky-Pudlak Syndrome [1].", [gene])
    assert (r.verdict, r.dropped) == ("supported", ())


def test_long_run_held_up_only_by_generic_pieces_is_dropped():
    answer = ("Patients should drink ginger tea with honey, rest in a dark quiet room for several hours, "
              "nausea, vomiting, avoid dairy products and spicy meals until the stomach settles, then call a "
              "pharmacist about probiotic supplements [4].")
    r = guard(answer, PASSAGES)
    assert r.verdict == "quoted" and r.cited == (4,)


def test_clause_repeated_three_times_in_a_long_run_is_kept_once():
    answer = ("Symptoms of food poisoning include abdominal cramps, nausea, vomiting, nausea, diarrhea, "
              "nausea, and most people recover within a few days without treatment, so most people with food "
              "poisoning recover within a few days [4].")
    r = guard(answer, PASSAGES)
    assert r.text.count("nausea") == 1 and r.dropped == ("nausea,", "nausea,")
    assert r.text.startswith("Symptoms of food poisoning include abdominal cramps, nausea, vomiting, "
                             "diarrhea, and")


def test_light_stemming_matches_word_forms():
    r = guard("People recovered within days, treated or not.", PASSAGES)
    assert (r.verdict, r.text) == ("supported", "People recovered within days, treated or not [4].")


def test_all_unsupported_becomes_a_quote_of_the_best_passage_sentence():
    r = guard("Kansas law requires arbitration in Topeka within 90 days [1].", PASSAGES,
              question="Which state's law governs the endorsement agreement?")
    assert r.verdict == "quoted"
    assert r.text == (f"{QUOTE_PREFIX} “This Agreement shall be governed and construed according to the "
                      "laws of the State of Kansas.” [1]")
    assert r.cited == (1,)
    assert r.dropped == ("Kansas law requires arbitration in Topeka within 90 days [1].",)


def test_quote_prefers_prose_over_table_rows():
    table = Passage("tatqa-2", "Annual-report excerpt",
                    "Table:\n | 2019 | 2018\nTotal revenue | 3,778 | 3,262\n\n"
                    "Text:\nTotal revenue grew because of new contracts in Asia.")
    r = guard("Revenue was $9 billion.", [table], question="What was total revenue?")
    assert r.verdict == "quoted"
    assert r.text == f"{QUOTE_PREFIX} “Total revenue grew because of new contracts in Asia.” [1]"


def test_bullets_and_markers_after_punctuation():
    r = guard("Symptoms include:\n- abdominal cramps [4]\n- ringing in the ears [4]\n- nausea", PASSAGES)
    assert r.text == "Symptoms include:\n- abdominal cramps [4]\n- nausea [4]"
    assert r.dropped == ("- ringing in the ears [4]",)
    r = guard("Kansas law governs the agreement. [1] Most people recover within a few days. [4]", PASSAGES)
    assert (r.verdict, r.cited) == ("supported", (1, 4))
    assert r.text == "Kansas law governs the agreement. [1] Most people recover within a few days. [4]"


def test_no_passages_or_irrelevant_gives_no_sources():
    for r in (guard("Kansas [1].", []), guard("Kansas [1].", PASSAGES, relevant=False)):
        assert (r.text, r.verdict, r.cited) == (NO_SOURCES_TEXT, "no-sources", ())
        assert r.verdict in VERDICTS


def test_missing_citation_is_appended():
    r = guard("The no-solicit period lasts twelve (12) months after termination.", PASSAGES)
    assert r.text == "The no-solicit period lasts twelve (12) months after termination [3]."
    assert (r.verdict, r.cited) == ("supported", (3,))


def test_short_answers_are_supported():
    assert guard("Kansas.", PASSAGES).text == "Kansas [1]."
    assert guard("twelve (12) months", PASSAGES).text == "twelve (12) months [3]"
    assert guard("12 months", PASSAGES).cited == (3,)
    assert guard("Kansas.", PASSAGES).verdict == "supported"


def test_wrong_citation_is_fixed_and_out_of_range_removed():
    r = guard("The agreement is governed by the laws of Kansas [2].", PASSAGES)
    assert (r.cited, r.verdict) == ((1,), "supported")
    assert r.text == "The agreement is governed by the laws of Kansas [1]."
    r = guard("Most people recover within a few days [9].", PASSAGES)
    assert (r.text, r.cited) == ("Most people recover within a few days [4].", (4,))


def test_neutral_sentence_kept_only_beside_a_supported_one():
    r = guard("Yes. The agreement is governed by the laws of Kansas [1].", PASSAGES)
    assert (r.text, r.verdict) == ("Yes. The agreement is governed by the laws of Kansas [1].", "supported")
    assert guard("Yes.", PASSAGES).verdict == "quoted"


def test_abstention_is_kept_and_claims_nothing():
    r = guard("The sources do not mention the dose [1].", PASSAGES)
    assert (r.text, r.verdict, r.cited) == ("The sources do not mention the dose.", "supported", ())
    r = guard("I don't know. The dose is 500 mg twice a day [4].", PASSAGES)
    assert (r.text, r.verdict, r.cited) == ("I don't know.", "trimmed", ())


@pytest.mark.parametrize(("a", "b"), [
    ("3,778", "3778"), ("$3.8 million", "3,778 thousand"), ("$3.8 million", "3,778,000"),
    ("twelve (12) months", "12 months"), ("twelve months", "12 months"), ("10%", "10 percent"),
    ("15.9%", "15.92"), ("twenty-five", "25"), ("$1.5bn", "1,496.5"), ("$1.0 million", "999,800")])
def test_numbers_match_after_normalisation(a, b):
    (na,), (nb,) = numbers_in(a), numbers_in(b)
    assert na.matches(nb.value)


@pytest.mark.parametrize(("a", "b"), [
    ("$198.2 million", "3,778 thousand"), ("$3.9 million", "3,778 thousand"), ("15.8%", "15.92"),
    ("eleven months", "12 months"), ("2018", "2019")])
def test_different_numbers_do_not_match(a, b):
    (na,), (nb,) = numbers_in(a), numbers_in(b)
    assert not na.matches(nb.value)


def test_numbers_in_and_normalize_number():
    assert [n.value for n in numbers_in("twelve (12) months from 1 September 2019, see [2]")] == [12, 1, 2019]
    assert [n.value for n in numbers_in("On 1 May, after twelve months, 3.5% and 1 more")] == [1, 12, 3.5]
    assert normalize_number("$3.8 million") == 3_800_000
    assert normalize_number("3,778") == 3778
    assert normalize_number("10 percent") == 10
    assert normalize_number("no digits here") is None
    assert numbers_in("gene G6PC3 and type 2 diabetes") == numbers_in("2")


@pytest.mark.parametrize("text", [NO_SOURCES_TEXT, "The sources do not mention the dose.",
                                  "My sources don't say how long the term is.",
                                  "This is not stated in the sources.", "I don't know.",
                                  "I'm sorry, but I cannot find that in the provided passages.",
                                  "The provided passages don't directly address this question.",
                                  "There is no information about renewal in the sources.",
                                  "Sorry. The context does not specify the governing law."])
def test_is_abstention_positive(text):
    assert is_abstention(text)


@pytest.mark.parametrize("text", ["The agreement is governed by the laws of Kansas [1].",
                                  "The sources say the term is 12 months.", "Diabetes does not cause cancer.",
                                  "There is no specific treatment for SD [1].",
                                  "Researchers were unable to determine the cause.",
                                  "The agreement does not specify a renewal term.", ""])
def test_is_abstention_negative(text):
    assert not is_abstention(text)


def test_result_is_frozen():
    r = guard("Kansas.", PASSAGES)
    assert isinstance(r, GuardResult)
    with pytest.raises(AttributeError):
        r.verdict = "x"  # type: ignore[misc]


def test_a_computed_answer_is_supported_when_its_derivation_adds_up_from_the_sources():
    table = [Passage("t#0", "Impairment and other", "Accelerated depreciation | $1,616 | $1,130 | 2019 | 2018")]
    right = guard("486 thousand [1] ($1,616 - $1,130).", table)
    assert right.verdict == "supported" and right.text == "486 thousand [1] ($1,616 - $1,130)."
    wrong = guard("500 thousand [1] ($1,616 - $1,130).", table)  # the sum is wrong
    assert wrong.verdict == "quoted" and "500" not in wrong.text
    ratio = guard("43.01% [1] (($1,616 - $1,130) / $1,130).", table)  # a ratio shown as a percentage
    assert ratio.verdict == "supported"
    invented = guard("486 thousand [1] ($1,616 - $1,130 + $0).", [Passage("u#0", "Other", "Revenue | $1,616 | 2019")])
    assert invented.verdict != "supported"  # an operand that is not in the sources


def test_stray_full_stops_do_not_break_sentence_splitting():
    result = guard("Total. . Next", [Passage("p#0", "Totals", "Total. Next steps follow.")])
    assert result.verdict in VERDICTS


def test_a_lead_in_with_an_invented_count_is_dropped():
    passages = [Passage("p#0", "Products", "Our products win customers with leading innovation.")]
    result = guard("The top 5 products are:\nOur products win customers with leading innovation [1].", passages)
    assert "5" not in result.text and result.verdict == "trimmed"
    assert result.text == "Our products win customers with leading innovation [1]."
    kept = guard("The 2 products are:\nOur products win customers [1].", [Passage("q#0", "Two", "Our 2 products win customers.")])
    assert kept.text.startswith("The 2 products are:")  # a count the source gives stays


# ---- the question's subject ----------------------------------------------------------------------------
WILSON = Passage("medquad-w", "Wilson disease — inheritance",
                 "Wilson disease is inherited in an autosomal recessive pattern, which means both copies of the "
                 "gene in each cell have mutations.")
FAMILY = Passage("medquad-f", "Creating a Family Health History — information",
                 "Some diseases, such as Huntington disease, are caused by a single altered gene passed down "
                 "from one parent.")
HD = Passage("medquad-h", "Huntington disease — inheritance",
             "Huntington disease is inherited in an autosomal dominant pattern: one altered copy causes it.")


def test_no_passage_naming_the_subject_means_the_sources_do_not_mention_it():
    answer = "Huntington disease is inherited in an autosomal recessive pattern [1]."
    # word overlap alone passes it: 5 of its 6 content words are in the Wilson passage
    assert guard(answer, [WILSON], question="Is Huntington disease inherited?").verdict == "supported"
    for draft in (answer, "It is inherited in an autosomal recessive pattern [1]."):
        r = guard(draft, [WILSON], question="Is huntington disease inherited?", subject=("huntington",))
        assert (r.verdict, r.cited) == ("no-sources", ())
        assert "“huntington”" in r.text  # as the asker wrote it


def test_an_answer_that_lost_its_subject_claim_becomes_a_quote_about_the_subject():
    answer = ("Huntington disease is inherited in an autosomal recessive pattern [1]. This means both copies of "
              "the gene in each cell have mutations [1].")
    q = "Is Huntington disease inherited?"
    # without the subject, the wrong claim stays; with it, neither the claim nor its Wilson-based follow-up stays
    assert guard(answer, [WILSON, FAMILY], question=q).verdict == "supported"
    r = guard(answer, [WILSON, FAMILY], question=q, subject=("huntington",))
    assert r.verdict == "quoted" and r.cited == (2,)
    assert "Huntington" in r.text and "Wilson" not in r.text and "recessive" not in r.text


def test_a_faithful_claim_naming_the_subject_still_passes_and_cites_the_right_passage():
    answer = "Huntington disease is inherited in an autosomal dominant pattern [1]."
    r = guard(answer, [WILSON, HD], question="Is Huntington disease inherited?", subject=("huntington",))
    assert r.verdict == "supported" and r.cited == (2,) and r.text.endswith("pattern [2].")  # re-cited from [1]


def test_a_follow_up_without_the_subject_word_is_judged_as_before():
    # "It" stands for the subject: a sentence that doesn't name it is checked by overlap, as before (legal
    # clauses often don't repeat the party names their question uses)
    answer = "Huntington disease is caused by a single altered gene [2]. It is passed down from one parent [2]."
    r = guard(answer, [WILSON, FAMILY], question="What causes Huntington disease?", subject=("huntington",))
    assert r.verdict == "supported" and r.cited == (2,)


def test_subject_terms_are_rare_names_of_the_question():
    df = {"huntington": 2, "disease": 400, "inherited": 90, "poaching": 0, "holds": 3, "foxg1": 5, "nonvested": 1}.get
    holders = {"huntington": [("Creating a Family Health History", "such as Huntington disease, are")],
               "holds": [("Lease", "the tenant holds the keys"), ("Note", "Holds are placed on accounts")],
               "foxg1": [("FOXG1 syndrome — genetic changes", "mutations in the FOXG1 gene")],
               "nonvested": [("Annual-report excerpt: RSUs", "| Nonvested at January 1 | 10 |\nNonvested units fell. "
                                                                "The nonvested units vest in 2021.")]}
    terms = lambda q: subject_terms(q, lambda w: df(w, 0), 1500, lambda w: holders.get(w, []))  # noqa: E731
    assert terms("Is Huntington disease inherited?") == ("huntington",)
    # a word in no chunk is the asker's paraphrase; a word in >1% of chunks is too common; a rare word written
    # in lower case in most uses is not a name
    assert terms("Is poaching of disease barred?") == ()
    assert terms("Which protein does the gene behind FOXG1 syndrome hold? It holds what?") == ("foxg1",)
    # capitalised only where every word is (a sentence's or a table cell's start): not a name
    assert terms("How many Nonvested units?") == ()
    # a pasted link's pieces are not its subject ("co" of t.co is rare and capitalised as "Co." in a corpus)
    rare = {**holders, "co": [("Leases", "Acme Co. leases it")], "ksi3mosvpq": []}
    linked = "News Highlights: FOXG1 https://t.co/KsI3MoSvPq www.co.uk/x"
    assert subject_terms(linked, lambda w: {"co": 3, "ksi3mosvpq": 0}.get(w, df(w, 0)), 1500,
                         lambda w: rare.get(w, [])) == ("foxg1",)
    # tiny corpora: up to 2 chunks still count as rare
    assert subject_terms("what about huntington?", lambda w: df(w, 0), 10, lambda w: holders.get(w, [])) == (
        "huntington",)
