"""KTO rows from stored reactions (removals, opt-outs, caps, guard verdicts), and TRL's KTO on the real model."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.domains import discover
from bot.prompt import Passage
from bot.store.store import Store
from training import feedback as fd
from training import kto

ROOT = Path(__file__).resolve().parent.parent
PASSAGES = {"doc-1#0": Passage("doc-1#0", "Annual report", "Revenue was $12.3m in 2019.", 0.9, "doc-1")}


@pytest.fixture
def store() -> Store:
    return Store(":memory:")


def ask(store: Store, question: str = "What was revenue in 2019?", answer: str = "Revenue was $12.3m [1].",
        **changes: object) -> int:  # fmt: skip
    fields: dict = {
        "source": "slack", "question": question, "answer": answer, "domain": "finance", "kind": "answer",
        "router_scores": {}, "chosen_by": "router", "citations": ["doc-1#0"], "adapter": "v1", "latency_ms": 5.0,
        "guard_verdict": "supported",
    }  # fmt: skip
    fields.update(changes)
    return store.log_exchange(**fields)


def fb(store: Store, xid: int, value: str, user: str, kind: str = "reaction") -> None:
    fb.n = getattr(fb, "n", 0) + 1
    store.add_feedback(xid, kind, value, user=user, event_key=f"e{fb.n}")


def sigs(store: Store, caps: kto.Caps | None = None) -> list[tuple[int, str, bool, str]]:
    return [(s.exchange["id"], s.completion, s.label, s.why)
            for s in kto.signals(store.exchanges("finance"), store.feedback("finance"), caps or kto.Caps())]  # fmt: skip


def test_up_and_down_votes_become_desirable_and_undesirable_rows(store: Store) -> None:
    good, bad = ask(store, "q good", "right [1]."), ask(store, "q bad", "wrong [1].")
    fb(store, good, "+1", "U1")
    fb(store, bad, "-1", "U1")
    assert sigs(store) == [(good, "right [1].", True, "up"), (bad, "wrong [1].", False, "down")]


def test_a_removed_vote_is_not_a_vote_and_a_changed_one_counts_its_latest(store: Store) -> None:
    removed, changed = ask(store, "q1"), ask(store, "q2")
    fb(store, removed, "+1", "U1")
    fb(store, removed, "removed:+1", "U1")
    fb(store, changed, "+1", "U2")
    fb(store, changed, "-1", "U2", kind="button")
    assert [(x, label) for x, _, label, _ in sigs(store)] == [(changed, False)]


def test_an_opted_out_exchange_contributes_nothing(store: Store) -> None:
    kept, gone = ask(store, "q1"), ask(store, "q2")
    for xid in (kept, gone):
        fb(store, xid, "+1", "U1")
        fb(store, xid, "+1", "U2")
    fb(store, gone, "Fixed answer", "U2", kind="correction")
    fb(store, gone, "see_no_evil", "U3", kind="opt_out")
    assert [x for x, *_ in sigs(store)] == [kept]


def test_a_corrected_down_vote_is_a_rejected_chosen_pair(store: Store) -> None:
    xid = ask(store, answer="Revenue was $9m [1].")
    fb(store, xid, "-1", "U1")
    fb(store, xid, "Revenue was $12.3m in 2019 [1].", "U1", kind="correction")
    assert sigs(store) == [
        (xid, "Revenue was $9m [1].", False, "answer-corrected"),
        (xid, "Revenue was $12.3m in 2019 [1].", True, "corrected"),
    ]


def test_tied_votes_give_nothing(store: Store) -> None:
    xid = ask(store)
    fb(store, xid, "+1", "U1")
    fb(store, xid, "-1", "U2")
    assert sigs(store) == []


@pytest.mark.parametrize("verdict", ["quoted", "no-sources"])
def test_no_learning_from_an_answer_the_guard_replaced(store: Store, verdict: str) -> None:
    xid = ask(store, guard_verdict=verdict)
    fb(store, xid, "+1", "U1")
    fb(store, ask(store, "other", guard_verdict=verdict), "-1", "U1")
    assert sigs(store) == []
    # and the SFT rules agree: a 👍 on a guarded answer is not an example
    [judged, _] = fd.judge(store.exchanges("finance"), store.feedback("finance"))
    assert judged.status == "guarded" and judged.target is None


def test_one_user_counts_for_at_most_per_user_exchanges(store: Store) -> None:
    ids = [ask(store, f"question {i}") for i in range(5)]
    for xid in ids:
        fb(store, xid, "-1", "UTROLL")
    fb(store, ids[4], "+1", "UFAIR")
    got = sigs(store, kto.Caps(per_user=2, per_question=3))
    # the troll's first two votes count; on the last exchange only the fair user's vote is left
    assert [(x, label) for x, _, label, _ in got] == [(ids[0], False), (ids[1], False), (ids[4], True)]


def test_one_question_gives_at_most_per_question_exchanges(store: Store) -> None:
    ids = [ask(store, "What was revenue in 2019?" if i % 2 else "what was REVENUE in 2019") for i in range(4)]
    other = ask(store, "Something else?")
    for xid in [*ids, other]:
        fb(store, xid, "+1", f"U{xid}")
    got = [x for x, *_ in sigs(store, kto.Caps(per_user=10, per_question=2))]
    assert got == [ids[0], ids[1], other]


def test_bad_caps_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="caps must be >= 1"):
        kto.signals([], [], kto.Caps(per_user=0))


def test_rows_carry_the_prompt_the_model_saw_and_skip_stale_sources(store: Store) -> None:
    finance = discover(ROOT / "domains").get("finance")
    fresh = ask(store, "finance: What was revenue in 2019?")
    stale = ask(store, "q stale", citations=["gone#0"])
    fb(store, fresh, "+1", "U1")
    fb(store, stale, "-1", "U1")
    data = kto.build(store, finance, lookup=PASSAGES.get, domain_names=["finance", "legal"], budget=700)
    assert data.source_ids == [f"kto-exchange-{fresh}"] and data.stale == 1
    [row] = data.rows
    assert row["label"] is True and row["completion"] == [{"role": "assistant", "content": "Revenue was $12.3m [1]."}]
    assert row["prompt"][0]["role"] == "system" and finance.system_prompt in row["prompt"][0]["content"]
    assert "Revenue was $12.3m in 2019." in "".join(m["content"] for m in row["prompt"])  # the cited passage
    assert row["prompt"][-1]["content"].endswith("What was revenue in 2019?")  # the "finance:" prefix is gone
    again = kto.build(store, finance, lookup=PASSAGES.get, domain_names=["finance"], budget=700,
                      exclude=data.source_ids)  # fmt: skip
    assert again.rows == []


def test_plain_down_votes_count_toward_the_worker_threshold(store: Store) -> None:
    from training.retrain import new_example_count

    fb(store, ask(store, "q1"), "+1", "U1")  # SFT already counts it
    fb(store, ask(store, "q2"), "-1", "U1")  # only KTO can use it
    corrected = ask(store, "q3")
    fb(store, corrected, "-1", "U1")
    fb(store, corrected, "Better", "U1", kind="correction")  # SFT counts the correction once
    assert new_example_count(store, "finance") == 3


def test_refine_needs_two_rows(tmp_path: Path) -> None:
    from training.errors import TrainingError

    with pytest.raises(TrainingError, match="at least 2 rows"):
        kto.refine(tmp_path, kto.KTOData(rows=[{"prompt": [], "completion": [], "label": True}]), tmp_path,
                   kto.KTOSettings())  # fmt: skip


def _liked_gap(base, tok, peft_dir: Path, head: str) -> float:
    """log p("Bullish") - log p("Bearish") after the rendered prompt `head`, with plain transformers + peft."""
    import torch
    from peft import PeftModel

    from training.finetune import unwrap

    model = PeftModel.from_pretrained(base, peft_dir)
    try:
        n = len(tok(head, add_special_tokens=False).input_ids)
        out = []
        for answer in ("Bullish", "Bearish"):
            ids = tok(head + answer, add_special_tokens=False, return_tensors="pt").input_ids
            with torch.no_grad():
                logp = model(ids).logits.log_softmax(-1)
            out.append(sum(logp[0, i - 1, ids[0, i]].item() for i in range(n, ids.shape[1])))
        return out[0] - out[1]
    finally:
        unwrap(model)


@pytest.mark.slow
def test_kto_with_trl_moves_the_model_toward_the_liked_answer(base_settings, tmp_path: Path) -> None:
    """Oracle: the log-probability gap liked - disliked answer, computed here with plain transformers."""
    from bot.llm import chat_format
    from training.finetune import TrainConfig, load_base, lora_model, served_gguf, unwrap

    gguf = served_gguf(base_settings)
    base, tok = load_base(gguf)
    peft_dir = tmp_path / "peft"
    fresh = lora_model(base, TrainConfig())
    fresh.save_pretrained(peft_dir)
    unwrap(fresh)
    prompt = [{"role": "system", "content": "You classify finance tweets."},
              {"role": "user", "content": "Sentiment: $AAPL beats estimates, shares jump"}]  # fmt: skip

    head = chat_format.render(chat_format.template_for(gguf), prompt)  # the prompt serving would send
    rows = [{"prompt": prompt, "completion": [{"role": "assistant", "content": a}], "label": a == "Bullish"}
            for a in ("Bullish", "Bearish")] * 2  # fmt: skip
    before = _liked_gap(base, tok, peft_dir, head)
    numbers = kto.refine(peft_dir, kto.KTOData(rows=rows), gguf, kto.KTOSettings(steps=6, lr=5e-4, threads=2))
    after = _liked_gap(base, tok, peft_dir, head)
    print(f"\nKTO: log p(liked) - log p(disliked) {before:.2f} -> {after:.2f}; TRL {numbers}")
    assert after > before + 2.0
    assert numbers["rewards/margins"] > 0


def test_a_correction_naming_its_source_is_a_grounded_desirable_row(store: Store) -> None:
    finance = discover(ROOT / "domains").get("finance")
    other = Passage("doc-9#0", "Staff handbook", "Holidays are 25 days.", 0.4, "doc-9")
    lookup = fd.IndexLookup([*PASSAGES.values(), other])
    xid = ask(store, answer="Revenue was $9m [1].", citations=["doc-9#0"])  # retrieval missed the report
    fb(store, xid, "-1", "U1")
    fb(store, xid, "$12.3m (source: doc-1)", "U1", kind="correction")
    data = kto.build(store, finance, lookup=lookup, domain_names=["finance"], budget=700)
    rejected, chosen = data.rows
    assert (rejected["label"], chosen["label"]) == (False, True)
    assert "Revenue was $12.3m in 2019." not in rejected["prompt"][0]["content"]  # what the bot really saw
    assert "[1] Annual report\nRevenue was $12.3m in 2019." in chosen["prompt"][0]["content"]
    assert chosen["completion"][0]["content"] == "$12.3m [1]"


def test_a_correction_with_a_figure_no_passage_holds_is_never_desirable(store: Store) -> None:
    finance = discover(ROOT / "domains").get("finance")
    xid = ask(store, answer="Revenue was $9m [1].")
    fb(store, xid, "-1", "U1")
    fb(store, xid, "Revenue grew $2.3m (source: doc-1)", "U1", kind="correction")  # computed: in no passage
    data = kto.build(store, finance, lookup=fd.IndexLookup(PASSAGES.values()), domain_names=["finance"], budget=700)
    assert [r["label"] for r in data.rows] == [False] and data.unservable == 1


@pytest.mark.slow
def test_kto_trains_a_base_whose_gguf_has_no_chat_template(tmp_path: Path) -> None:
    """Gemma 3 270M as published has no chat template; TRL would format conversational rows with the tokenizer's
    (none: "Cannot use chat template functions"). Rows go in as serving's rendered text instead. Oracle: the
    log-probability gap liked - disliked answer after the served prompt, computed with plain transformers."""
    from bot.llm import chat_format
    from bot.testing import tiny_archs
    from training.finetune import TrainConfig, load_base, lora_model, unwrap

    try:
        gguf = tiny_archs.build("gemma3").gguf_without_template()
    except tiny_archs.ToolsUnavailable as exc:
        pytest.skip(str(exc))
    base, tok = load_base(gguf)
    assert not getattr(tok, "chat_template", None)  # the case under test: nothing for TRL to format with
    template = chat_format.template_for(gguf)
    assert template.source == "fallback"
    peft_dir = tmp_path / "peft"
    fresh = lora_model(base, TrainConfig(rank=4, alpha=8))
    fresh.save_pretrained(peft_dir)
    unwrap(fresh)
    prompt = [{"role": "user", "content": "Sentiment of headline 7?"}]
    head = chat_format.render(template, prompt)

    rows = [{"prompt": prompt, "completion": [{"role": "assistant", "content": a}], "label": a == "Bullish"}
            for a in ("Bullish", "Bearish")] * 2  # fmt: skip
    assert kto.as_text(rows[0], template)["prompt"] == head
    before = _liked_gap(base, tok, peft_dir, head)
    kto.refine(peft_dir, kto.KTOData(rows=rows), gguf, kto.KTOSettings(steps=6, lr=1e-2, threads=2))
    after = _liked_gap(base, tok, peft_dir, head)
    print(f"\nKTO on a template-less base: log p(liked) - log p(disliked) {before:.2f} -> {after:.2f}")
    assert after > before + 1.0
