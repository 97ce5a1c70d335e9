import json
import re

import pytest

from bot import adapters
from bot.answer import Answerer, Place, Question, citations_for
from bot.commands import render_text, render_trailer
from bot.domains import discover
from bot.errors import InputError, UserFacingError
from bot.prompt import Passage, Turn
from bot.retrieval.index import Retriever
from bot.testing.lora import write_lora
from bot.testing.recording import RecordingRuntime


def test_domain_question_gets_cited_answer(answerer):
    streamed = []
    ans = answerer.answer("What are the early symptoms of type 2 diabetes?", on_token=streamed.append)
    assert ans.kind == "answer" and ans.domain == "medical" and ans.route.method == "router"
    assert ans.citations and sorted(c.n for c in ans.citations) == list(range(1, len(ans.citations) + 1))
    flags = [c.cited for c in ans.citations]
    assert flags == sorted(flags, reverse=True) and all(c.title for c in ans.citations)  # used sources first
    assert all(c.chunk_id.startswith(c.doc_id) for c in ans.citations)
    assert ans.disclaimer and ans.text and "".join(streamed).strip() == ans.draft  # the model's draft streams
    assert ans.guard["verdict"] in ("supported", "trimmed", "quoted")  # passages were retrieved
    shown = " ".join(p.text for p in ans.passages).replace(",", "")
    numbers = re.findall(r"\d+(?:\.\d+)?", re.sub(r"\[\d+\]", "", ans.text).replace(",", ""))
    assert all(n in shown for n in numbers)  # no figure the sources don't have
    assert ans.tokens["completion"] <= answerer.settings.max_tokens
    assert {"retrieval_s", "first_token_s", "total_s"} <= set(ans.timings)
    assert ans.adapter == (adapters.current(answerer.domain("medical").adapters_dir) or
                           adapters.AdapterVersion("base", answerer.domain("medical").path)).version


def test_explicit_domain_and_prefix(answerer):
    assert answerer.answer("legal: does it renew automatically?").route.method == "explicit"
    ans = answerer.answer(Question("does it renew automatically?", domain="legal"))
    assert ans.domain == "legal" and ans.route.method == "explicit"


def test_unknown_domain_is_a_clear_error(answerer):
    with pytest.raises(UserFacingError, match="unknown domain 'astrology'.*finance"):
        answerer.answer(Question("what is my sign?", domain="astrology"))


def test_abstention_lists_domains(answerer):
    # Not one of the router's own negatives (router.CHITCHAT): a line from tests/data/heldout_routing.jsonl.
    ans = answerer.answer("can we move the retro to Thursday")
    assert ans.kind == "abstain" and ans.domain is None
    assert "finance" in ans.text and "legal:" not in ans.text.split("\n")[0]


@pytest.mark.parametrize("bad", ["", "x" * 20_001, "a\x00b"])
def test_bad_input(answerer, bad):
    with pytest.raises(InputError):
        answerer.answer(bad)


def test_policy_short_circuits_before_the_model(answerer):
    ans = answerer.answer("medical: I have chest pain and can't breathe")
    assert ans.kind == "redirect" and "emergency" in ans.text.lower()
    assert not ans.tokens


def test_channel_not_allowed(base_settings, built_indexes, runtime, embedder, domains_copy):
    toml = domains_copy / "legal" / "domain.toml"
    toml.write_text(toml.read_text().replace('channels = ["*"]', 'channels = ["#legal-help"]'))
    a = Answerer(base_settings, discover(domains_copy), Retriever(base_settings, embedder), runtime)
    ans = a.answer(Question("legal: is there a non-compete?", place=Place("C42", "random")))
    assert ans.kind == "not_allowed" and "#legal-help" in ans.text


def test_history_and_given_passages_reach_the_model(answerer):
    recorder = RecordingRuntime(answerer.runtime)
    a = Answerer(answerer.settings, answerer.discovery, answerer.retriever, recorder, router=answerer.router)
    p = [Passage("x#0", "Zorblax policy", "The Zorblax fee is 42 dollars.", 1.0, "x")]
    history = [Turn("user", "Which account pays the Quuxly invoices?"),
               Turn("assistant", "The Quuxly invoices are paid from account 7781.")]
    ans = a.answer(Question("How much is the Zorblax fee?", domain="finance", passages=p, history=history,
                            adapter="base"))
    assert [c.chunk_id for c in ans.citations] == ["x#0"] and ans.adapter == "base"
    [sent] = recorder.prompts
    # The earlier turns are in the prompt, in order, as their own roles, between the sources and the question.
    assert sent[1:] == [{"role": "user", "content": "Which account pays the Quuxly invoices?"},
                        {"role": "assistant", "content": "The Quuxly invoices are paid from account 7781."},
                        {"role": "user", "content": "How much is the Zorblax fee?"}]
    assert sent[0]["role"] == "system"
    assert "[1] Zorblax policy\nThe Zorblax fee is 42 dollars." in sent[0]["content"]


def test_citations_mark_referenced_passages():
    ps = [Passage("a#0", "A", "t"), Passage("b#0", "B", "t")]
    cites = citations_for("See [2].", ps)
    assert [(c.n, c.cited) for c in cites] == [(2, True), (1, False)]  # the sources the answer uses come first


def test_render_text_has_sources_and_disclaimer(answerer):
    ans = answerer.answer(Question("How is asthma treated?", max_tokens=8))
    out = render_text(ans)
    assert "Sources:" in out and "[1]" in out and ans.disclaimer in out and "medical" in out


def test_streamed_answer_trailer_never_repeats_the_answer(answerer):
    """The CLI streams the text, then prints the trailer: a two-paragraph answer must not print twice."""
    from dataclasses import replace

    ans = answerer.answer(Question("How is asthma treated?", max_tokens=8))
    two = replace(ans, text="First paragraph.\n\nSecond paragraph.")
    trailer = render_trailer(two)
    assert trailer and not any("paragraph" in part for part in trailer)
    assert render_text(two) == "\n\n".join([two.text, *trailer])


def test_adapter_hot_reload_and_mismatch_falls_back_to_base(base_settings, built_indexes, runtime, embedder,
                                                             domains_copy):
    a = Answerer(base_settings, discover(domains_copy), Retriever(base_settings, embedder), runtime)
    adir = domains_copy / "finance" / "adapters"
    (adir / "v90").mkdir(parents=True)
    write_lora(adir / "v90" / "adapter.gguf", scale=0.0)
    adapters.set_current(adir, "v90")
    q = "finance: what was total revenue?"
    assert a.answer(Question(q, max_tokens=4)).adapter == "v90"
    (adir / "v91").mkdir()
    write_lora(adir / "v91" / "adapter.gguf", in_dim=100)  # does not fit the base
    adapters.set_current(adir, "v91")
    ans = a.answer(Question(q, max_tokens=4))
    assert ans.adapter == "base" and any("v91 was refused" in n for n in ans.notes)
    adapters.set_current(adir, "base")
    assert a.answer(Question(q, max_tokens=4)).adapter == "base"
    with pytest.raises(UserFacingError, match="no adapter 'v7'"):
        a.answer(Question(q, adapter="v7"))


def test_router_learns_stored_reroutes(settings, runtime, tmp_path):
    from bot.store.store import Store

    settings = settings.with_(indexes_dir=tmp_path / "indexes")  # the learned fit goes here, not into the repo
    with Store.from_settings(settings) as store:
        xid = store.log_exchange(source="slack", question="quokka census numbers please", answer="", domain=None,
                                 kind="abstain", router_scores={}, chosen_by="none", citations=[], adapter="",
                                 latency_ms=1.0)
        store.add_feedback(xid, "reroute", "finance", user="U1", event_key="pick:1")
    a = Answerer.from_settings(settings)
    try:
        assert "quokka census numbers please" in a.router.extra.get("finance", [])
        a.refit_router({"legal": ["quokka census numbers please"]})
        assert a.router.extra == {"legal": ["quokka census numbers please"]}
        fit = json.loads((tmp_path / "indexes" / "router_fit.json").read_text())["fit"]
        assert fit["extra_examples"] == {"legal": 1}
    finally:
        a.close()
