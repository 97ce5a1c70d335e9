"""Training from documents alone (cpt mode): a domain with docs/ and no train.jsonl trains a LoRA on its text,
judged by held-out perplexity. The real SmolLM2 model, real files in tmp_path; nothing is written in the repo."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import pytest

from bot import adapters
from bot.cli import main
from bot.domains import parse_manifest
from training import cpt, perplexity

MANIFEST = '''name = "{name}"
description = "Notes about the harbour office: opening hours, ferries and the pier."
examples = ["When does the office open?", "Which pier do ferries leave from?", "Who runs the harbour?"]
system_prompt = "Answer from the numbered sources and cite them as [1]."
'''
# One short paragraph, repeated in every document: held-out perplexity must fall a lot once it is learned.
PARAGRAPH = ("The harbour office of Velmora opens at seven. Ferries to Orsk leave from pier nine every "
             "Tuesday, and the harbour master, Ilsa Brandt, signs every permit in green ink.")


def make_domain(root: Path, name: str, docs: dict[str, str] | None = None, train_jsonl: bool = False) -> Path:
    folder = root / "domains" / name
    (folder / "docs").mkdir(parents=True)
    (folder / "domain.toml").write_text(MANIFEST.format(name=name))
    for file, text in (docs or {}).items():
        (folder / "docs" / file).write_text(text, encoding="utf-8")
    if train_jsonl:
        row = {"id": "r1", "task": "qa", "instruction": "When does the office open?", "output": "At seven."}
        (folder / "train.jsonl").write_text(json.dumps(row) + "\n")
    return folder


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """Settings pointed at tmp_path: domains, indexes, store, training runs and the error log."""
    for var, sub in (("DOMAINBOT_DOMAINS_DIR", "domains"), ("DOMAINBOT_INDEXES_DIR", "indexes"),
                     ("DOMAINBOT_DB", "var/db.sqlite"), ("DOMAINBOT_RUNS_DIR", "runs"),
                     ("DOMAINBOT_ERROR_LOG", "var/errors.log")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    (tmp_path / "domains").mkdir()
    return tmp_path


# ---- no model needed --------------------------------------------------------------------------------------
def test_a_domain_with_neither_docs_nor_train_jsonl_gets_a_clear_message(env, capsys):
    make_domain(env, "empty")
    assert main(["train", "empty"]) == 2
    err = capsys.readouterr().err
    assert "empty has neither documents nor a train.jsonl to train on" in err
    assert "put its documents in" in err and "Traceback" not in err


def test_cpt_asked_for_a_domain_without_documents_says_so(env, capsys):
    make_domain(env, "rows", train_jsonl=True)
    assert main(["train", "rows", "--mode", "cpt"]) == 2
    assert "rows has no documents to train on" in capsys.readouterr().err


def test_the_mode_follows_what_the_domain_has(env):
    docs_only = parse_manifest(make_domain(env, "d1", {"a.md": "# A\n\nSome text."}))
    both = parse_manifest(make_domain(env, "d2", {"a.md": "# A\n\nSome text."}, train_jsonl=True))
    assert cpt.pick_mode(docs_only) == "cpt"
    assert cpt.pick_mode(both) == "sft" and cpt.pick_mode(both, "cpt") == "cpt"


def test_the_gate_needs_a_lower_perplexity_by_the_margin():
    # by hand: 1 % below 10.0 is 9.9
    assert perplexity.gate(9.8, 10.0, 0.01)[0]
    assert not perplexity.gate(9.95, 10.0, 0.01)[0]
    ok, reason = perplexity.gate(10.0, 10.0, 0.0)
    assert not ok and "10.000 -> 10.000" in reason


# ---- the real model ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base():
    from training.finetune import load_base, served_gguf

    return load_base(served_gguf())


def distinct_docs(n: int) -> dict[str, str]:
    """n .txt documents, each with its own marker word (the first line is its heading, so it is not re-titled)."""
    return {f"doc-{i:02d}.txt": f"# Record {i}\n\nMarker kestrel{i}x. Entry {i} lists the cargo of ship number {i}."
            for i in range(n)}


@pytest.mark.slow
def test_the_held_out_split_is_by_document_and_disjoint_from_training(env, base):
    _, tok = base
    files = distinct_docs(20)
    domain = parse_manifest(make_domain(env, "records", files))
    split = cpt.prepare(domain, tok, seq_len=24, seed=0)
    assert split.by == "document" and len(split.heldout_docs) == 2  # 10 % of 20
    assert set(split.heldout_docs) | set(split.train_docs) == set(files)
    assert not set(split.heldout_docs) & set(split.train_docs)
    assert not {d for w in split.train for d in w.docs} & set(split.heldout_docs)
    sep = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.convert_ids_to_tokens(cpt.separator_id(tok)) == "<|endoftext|>"
    # independent oracle: the held-out files' text, tokenized here, is exactly the held-out windows' tokens
    want = [t for f in split.heldout_docs for t in tok(files[f].strip(), add_special_tokens=False).input_ids + [sep]]
    assert [t for w in split.heldout for t in w.ids] == want
    train_text = tok.decode([t for w in split.train for t in w.ids])
    held_markers = [f"kestrel{int(f[4:6])}x" for f in split.heldout_docs]
    assert not any(m in train_text for m in held_markers)
    assert all(f"kestrel{int(f[4:6])}x" in train_text for f in split.train_docs)
    # the same seed holds out the same documents; another seed others
    assert cpt.prepare(domain, tok, seq_len=24, seed=0).heldout_docs == split.heldout_docs
    assert cpt.prepare(domain, tok, seq_len=24, seed=1).heldout_docs != split.heldout_docs


@pytest.mark.slow
def test_few_documents_hold_out_windows_and_say_so(env, base):
    _, tok = base
    domain = parse_manifest(make_domain(env, "few", distinct_docs(3)))
    split = cpt.prepare(domain, tok, seq_len=16, seed=0)
    assert split.by == "window" and split.heldout and split.train
    assert "only 3 documents" in cpt.why(domain, split) and "instead of whole documents" in cpt.why(domain, split)
    held = {w.ids for w in split.heldout}
    assert not held & {w.ids for w in split.train}  # disjoint windows of the same documents


@pytest.mark.slow
def test_a_bad_window_length_or_too_little_text_is_a_clear_message(env, base):
    from bot.errors import UserFacingError

    _, tok = base
    domain = parse_manifest(make_domain(env, "tiny", {"a.md": "# A\n\nOne line."}))
    with pytest.raises(UserFacingError, match="--seq-len must be at least 16 and at most the model's context, 64"):
        cpt.prepare(domain, tok, seq_len=128, max_len=64)
    with pytest.raises(UserFacingError, match="too little text to hold any out: 1 document.*smaller --seq-len"):
        cpt.prepare(domain, tok, seq_len=64)


@pytest.mark.slow
def test_the_loss_covers_every_token_but_padding(env, base):
    import torch

    from training.batches import answer_loss, collate
    from training.finetune import TrainConfig, encode, lora_model, unwrap

    model, tok = base
    domain = parse_manifest(make_domain(env, "records", distinct_docs(12)))
    windows = cpt.prepare(domain, tok, seq_len=16, seed=0).train
    batch = [windows[0], cpt.TextWindow(windows[1].ids[:9], windows[1].docs)]  # a short one: padding in the batch
    ids, att, labels = collate([encode(w, tok, 1024, 192) for w in batch], pad_id=tok.pad_token_id)
    for row, w in enumerate(batch):
        n = len(w.ids)
        assert labels[row, :n].tolist() == list(w.ids)  # every real token is a label
        assert (labels[row, n:] == -100).all() and (att[row, n:] == 0).all()  # only padding is masked
    peft = lora_model(model, TrainConfig(rank=4, alpha=8))
    try:
        with torch.no_grad():
            loss_sum, count = answer_loss(peft, ids, att, labels)
            # oracle: transformers' own causal-LM loss with labels = the input ids (it shifts and ignores -100)
            hf_mean = peft(input_ids=ids, attention_mask=att, labels=labels).loss
        assert count == sum(len(w.ids) - 1 for w in batch)
        assert loss_sum.item() / count == pytest.approx(hf_mean.item(), rel=1e-4)
    finally:
        unwrap(peft)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base):
    """`domainbot train notes --promote` on 10 copies of one paragraph (a few steps), in a scratch workspace."""
    root = tmp_path_factory.mktemp("notes")
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in (("DOMAINBOT_DOMAINS_DIR", "domains"), ("DOMAINBOT_INDEXES_DIR", "indexes"),
                         ("DOMAINBOT_DB", "var/db.sqlite"), ("DOMAINBOT_RUNS_DIR", "runs"),
                         ("DOMAINBOT_ERROR_LOG", "var/errors.log")):
            mp.setenv(var, str(root / sub))
        docs = {f"note-{i:02d}.txt": f"# Note {i}\n\n{PARAGRAPH}\n" for i in range(10)}  # read verbatim
        folder = make_domain(root, "notes", docs)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(["train", "notes", "--seq-len", "64", "--batch-size", "4", "--epochs", "6", "--lr", "3e-3",
                       "--threads", "2", "--promote"])
        yield {"rc": rc, "out": out.getvalue(), "folder": folder, "docs": docs}


@pytest.mark.slow
def test_a_docs_only_domain_trains_in_cpt_mode_and_lowers_held_out_perplexity(trained, base):
    import torch

    assert trained["rc"] == 0, trained["out"][-3000:]
    assert "training from documents alone" in trained["out"] and "no train.jsonl" in trained["out"]
    assert not (trained["folder"] / "train.jsonl").exists()
    v1 = adapters.AdapterVersion("v1", trained["folder"] / "adapters" / "v1")
    meta = v1.meta
    assert meta["hyperparameters"]["mode"] == "cpt" and meta["data"]["tasks"] == {"cpt": meta["data"]["examples"]}
    ppl = meta["heldout_perplexity"]
    assert ppl["split"]["by"] == "document" and len(ppl["split"]["heldout_docs"]) == 1
    # oracle for the base number: transformers' own loss on the held-out file's text (one window of 64 tokens)
    model, tok = base
    held = trained["docs"][ppl["split"]["heldout_docs"][0]].strip()
    ids = tok(held, add_special_tokens=False).input_ids + [cpt.separator_id(tok)]
    assert len(ids) <= 64
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert ppl["base"] == pytest.approx(math.exp(loss), rel=1e-3)
    assert ppl["adapter"] < 0.5 * ppl["base"]  # the paragraph was learned: a large, certain drop
    assert meta["metrics"]["tasks"]["heldout_perplexity"]["score"] == ppl["adapter"]
    assert meta["gate"]["passed"] and meta["gate"]["against"] == "base"
    assert "held-out perplexity" in trained["out"] and "gate passed" in trained["out"]
    assert adapters.current(trained["folder"] / "adapters").version == "v1"  # --promote: the gate passed


def copy_of_live(folder: Path, name: str) -> None:
    shutil.copytree(folder / "v1", folder / name)
    meta = json.loads((folder / name / "meta.json").read_text())
    del meta["gate"]
    (folder / name / "meta.json").write_text(json.dumps(meta))


@pytest.mark.slow
def test_the_gate_refuses_a_candidate_no_better_than_the_live_adapter(trained, capsys):
    assert trained["rc"] == 0
    folder = trained["folder"] / "adapters"
    copy_of_live(folder, "v2")  # the same weights as the live v1: not lower by the margin
    assert main(["eval", "notes", "--adapter", "v2"]) == 0
    out = capsys.readouterr().out
    assert "gate FAILED vs v1" in out
    gate = adapters.AdapterVersion("v2", folder / "v2").meta["gate"]
    assert gate["passed"] is False and gate["against"] == "v1" and gate["candidate"] == gate["current"]
    assert main(["promote", "notes", "v2"]) == 2
    assert "v2 failed its gate" in capsys.readouterr().err
    assert adapters.current(folder).version == "v1"


@pytest.mark.slow
def test_retrain_of_a_docs_only_domain_replays_documents_and_gates_on_perplexity(trained):
    from bot.config import load_settings
    from bot.domains import discover
    from training import retrain as rt

    assert trained["rc"] == 0
    settings = load_settings()
    domain = discover(settings.domains_dir).get("notes")
    held = adapters.AdapterVersion("v1", domain.adapters_dir / "v1").meta["heldout_perplexity"]["split"]["heldout_docs"]
    replay = rt.document_replay(domain, 3, seed=5, settings=settings)
    assert len(replay) == 3 and all(isinstance(w, cpt.TextWindow) for w in replay)
    assert not {d for w in replay for d in w.docs} & set(held)  # never the live adapter's held-out documents
    copy_of_live(domain.adapters_dir, "v3")
    ok, reason, current, candidate = rt.judge(domain, "v3", "v1", rt.RetrainConfig(margin=0.01), settings)
    assert not ok and reason.startswith("vs v1: held-out perplexity")
    assert current["overall"] == candidate["overall"] == current["tasks"]["heldout_perplexity"]
    assert adapters.AdapterVersion("v3", domain.adapters_dir / "v3").meta["gate"]["by"] == "domainbot retrain"
