"""End to end on the real model (what CI runs): `domainbot train` a few steps on a handful of rows, export the
GGUF, verify it against transformers+peft, load it into the runtime, answer, evaluate, promote, roll back."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bot import adapters as store
from bot.answer import Question
from bot.config import ROOT
from training import export, gguf_lora

pytestmark = pytest.mark.slow

TRAIN_ARGS = ["train", "finance", "--max-steps", "2", "--max-examples", "8", "--cap", "tatqa_hybrid_qa=0",
              "--batch-size", "4", "--lr", "1e-3", "--threads", "2", "--promote"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_settings, built_indexes):
    """A domains/ copy without adapters, trained once through the CLI."""
    import os

    from bot.cli import main

    root = tmp_path_factory.mktemp("e2e")
    shutil.copytree(ROOT / "domains", root / "domains", ignore=shutil.ignore_patterns("adapters", "train_tfns_full.jsonl"))
    env = {"DOMAINBOT_DOMAINS_DIR": str(root / "domains"), "DOMAINBOT_RUNS_DIR": str(root / "runs"),
           "DOMAINBOT_INDEXES_DIR": str(base_settings.indexes_dir), "DOMAINBOT_MAX_TOKENS": "8"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(TRAIN_ARGS) == 0
        yield root
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_train_publishes_a_verified_promoted_version(trained):
    adapters_dir = trained / "domains" / "finance" / "adapters"
    live = store.current(adapters_dir)
    assert live is not None and live.version == "v1"
    meta = live.meta
    assert meta["verify"]["ok"] and meta["verify"]["agreement"] >= export.MIN_AGREEMENT
    assert meta["base_model"]["sha256"] and meta["data"]["hash"] and meta["data"]["examples"] == 8
    assert meta["hyperparameters"]["rank"] == 8 and meta["hyperparameters"]["seed"] == 0
    assert meta["train"]["steps"] == 2 and meta["command"].startswith("domainbot train finance")
    assert (live.path / "peft" / "adapter_model.safetensors").is_file()
    assert 4.0e6 < live.gguf.stat().st_size < 6.0e6  # rank 8 over 7 projections, f16


def test_gguf_metadata_and_q_k_permutation(trained):
    import gguf

    path = trained / "domains" / "finance" / "adapters" / "v1" / "adapter.gguf"
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 16.0
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.29.ffn_down.weight.lora_b" in names
    assert len(names) == 30 * 7 * 2
    # what was written is peft's lora_B with q rows permuted per head (and k per KV head)
    from safetensors.numpy import load_file

    peft = load_file(str(path.parent / "peft" / "adapter_model.safetensors"))
    tensors, _ = gguf_lora.read_adapter_gguf(path)
    qb = next(v for k, v in peft.items() if "layers.3.self_attn.q_proj.lora_B" in k)
    kb = next(v for k, v in peft.items() if "layers.3.self_attn.k_proj.lora_B" in k)
    np.testing.assert_allclose(tensors["blk.3.attn_q.weight.lora_b"], gguf_lora.permute_rows(qb, 9), atol=1e-3)
    np.testing.assert_allclose(tensors["blk.3.attn_k.weight.lora_b"], gguf_lora.permute_rows(kb, 3), atol=1e-3)


def test_permutation_round_trips():
    w = np.arange(576 * 4, dtype=np.float32).reshape(576, 4)
    assert not np.array_equal(gguf_lora.permute_rows(w, 9), w)
    np.testing.assert_array_equal(gguf_lora.unpermute_rows(gguf_lora.permute_rows(w, 9), 9), w)


def test_warm_start_can_rebuild_peft_weights_from_the_gguf(trained):
    import torch
    from safetensors.torch import load_file

    from training.finetune import load_base, served_gguf, unwrap

    folder = trained / "domains" / "finance" / "adapters" / "v1"
    base, _ = load_base(served_gguf())
    model = gguf_lora.peft_from_gguf(base, folder / "adapter.gguf")
    saved = load_file(str(folder / "peft" / "adapter_model.safetensors"))
    live = {k.replace(".default", ""): v for k, v in model.state_dict().items()}
    for key in [k for k in saved if "layers.5." in k]:
        torch.testing.assert_close(live[key], saved[key], atol=1e-3, rtol=1e-2)  # f16 in the GGUF
    unwrap(model)


def test_loads_into_the_runtime_and_answers_through_the_serving_path(trained, runtime, embedder, base_settings):
    from bot.answer import Answerer
    from bot.domains import discover
    from bot.retrieval.index import Retriever

    settings = base_settings.with_(domains_dir=trained / "domains")
    answerer = Answerer(settings, discover(settings.domains_dir), Retriever(settings, embedder), runtime)
    ans = answerer.answer(Question("What is the sentiment of this financial news tweet for investors? Answer Bearish, "
                                   "Bullish or Neutral.\n\nShares jump 8% after record quarterly profit",
                                   domain="finance", passages=[], max_tokens=6))
    assert ans.adapter == "v1" and ans.kind == "answer" and ans.text.strip()


def test_eval_cli_writes_results_chart_and_table(trained, capsys):
    from bot.cli import main

    out = trained / "report"
    assert main(["eval", "finance", "--limit", "2", "--tasks", "tfns_sentiment", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tfns_sentiment" in printed and "base" in printed and "v1" in printed and "majority" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"base", "v1"} and results["v1"]["tasks"]["tfns_sentiment"]["n"] == 2
    assert "as asked" not in results["v1"]["retrieval"]  # TFNS has no gold passages
    assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((trained / "domains" / "finance" / "adapters" / "v1" / "meta.json").read_text())
    assert meta["metrics"]["tasks"]["tfns_sentiment"]["n"] == 2 and "base" in meta["metrics"]


def test_adapters_promote_rollback_cli(trained, capsys):
    from bot.cli import main

    assert main(["adapters", "finance"]) == 0
    assert "* v1" in capsys.readouterr().out
    assert main(["rollback", "finance"]) == 0
    assert "base is now live" in capsys.readouterr().out
    assert main(["promote", "finance", "v3"]) == 2
    assert "no adapter v3" in capsys.readouterr().err
    assert main(["promote", "finance", "v1"]) == 0
    assert store.current(trained / "domains" / "finance" / "adapters").version == "v1"


def test_verification_failure_is_not_published(trained, tmp_path):
    """A GGUF that disagrees with transformers+peft (here: a wrong alpha) fails the export; no version appears."""
    from training.dataset import load_examples
    from training.finetune import TrainResult, served_gguf

    run = next((trained / "runs" / "finance").iterdir())
    result = TrainResult("finance", run / "peft", run, {}, str(served_gguf()), "x", "y", 8, 2, 2, 1, 1, 1.0, [1.0], "cpu")
    examples = load_examples("finance", max_examples=8, task_caps={"tatqa_hybrid_qa": 0})
    adapters_dir = trained / "domains" / "finance" / "adapters"
    before = [v.version for v in store.versions(adapters_dir)]
    with pytest.raises(export.ExportError, match="verification failed.*not published or promoted"):
        export.publish(result, examples, adapters_dir=adapters_dir, base_gguf=served_gguf(), alpha_scale=3000.0,
                       threads=2, verify_with=2)
    assert [v.version for v in store.versions(adapters_dir)] == before
    assert store.current(adapters_dir).version == "v1"


def test_adapter_for_another_base_is_refused(trained, capsys, runtime):
    from bot.cli import main
    from bot.llm.llama import AdapterMismatch

    adapters_dir = trained / "domains" / "finance" / "adapters"
    shutil.copytree(adapters_dir / "v1", adapters_dir / "v9", ignore=shutil.ignore_patterns("peft"))
    meta = json.loads((adapters_dir / "v9" / "meta.json").read_text())
    meta["base_model"] = {"name": "other-model.gguf", "sha256": "0" * 64}
    (adapters_dir / "v9" / "meta.json").write_text(json.dumps(meta))
    assert main(["eval", "finance", "--adapter", "v9", "--limit", "1", "--tasks", "tfns_sentiment"]) == 2
    assert "was trained on base 000000000000" in capsys.readouterr().err
    # an adapter whose tensors don't fit this base: llama.cpp refuses it, and so does the PEFT rebuild
    wrong = gguf_lora.write_adapter_gguf({"blk.0.attn_q.weight.lora_a": np.zeros((8, 100), np.float32),
                                       "blk.0.attn_q.weight.lora_b": np.zeros((100, 8), np.float32)}, 16, trained / "wrong.gguf")
    with pytest.raises(AdapterMismatch):
        runtime.ensure_adapter("finance:wrong", wrong)
    shutil.rmtree(adapters_dir / "v9")


def test_merged_q8_0_is_standalone_and_answers(trained):
    from llama_cpp import Llama

    from training.finetune import served_gguf

    folder = trained / "domains" / "finance" / "adapters" / "v1"
    out = export.merge_to_gguf(served_gguf(), folder / "adapter.gguf", trained / "merged-q8_0.gguf", "q8_0")
    llm = Llama(model_path=str(out), n_ctx=256, n_threads=2, verbose=False)
    text = llm.create_chat_completion([{"role": "user", "content": "Say hi"}], max_tokens=4)["choices"][0]["message"]
    llm.close()
    assert text["content"] is not None
    with pytest.raises(export.ExportError, match="Q4_1 merge loses the fine-tune"):
        export.merge_to_gguf(served_gguf(), folder / "adapter.gguf", trained / "x.gguf", "q4_1")


def test_training_prompt_is_the_served_chat_template():
    """transformers' chat template (training) renders exactly what llama.cpp's formatter serves."""
    import gguf
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from training.finetune import load_base, served_gguf

    _, tokenizer = load_base(served_gguf())
    reader = gguf.GGUFReader(str(served_gguf()))
    template = reader.fields["tokenizer.chat_template"].contents()
    msgs = [{"role": "system", "content": "You answer.\n\nSources:\n[1] T\ntext"}, {"role": "user", "content": "Q?"}]
    served = Jinja2ChatFormatter(template, "<|im_end|>", "<|im_start|>")(messages=msgs).prompt
    assert tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == served


def test_verification_prompts_cover_every_task():
    from training.dataset import Example

    examples = [Example([], "x" * i, task, f"{task}{i}") for i in range(1, 6) for task in ("tfns", "tatqa", "other")]
    picked = export.pick_for_verify(examples, 4)
    assert {e.task for e in picked} == {"tfns", "tatqa", "other"} and len(picked) == 4
    assert all(len(e.answer) <= 2 for e in picked)  # the shortest of each task first


def test_train_elsewhere_then_publish_here(trained, capsys):
    """`train --no-publish` (a GPU box without llama.cpp) leaves result.json + peft/; `publish` exports, verifies
    and versions it here, and refuses runs this host can't reproduce."""
    from bot.cli import main

    args = [a for a in TRAIN_ARGS if a != "--promote"] + ["--seed", "5", "--no-publish"]
    assert main(args) == 0
    out = capsys.readouterr().out
    run = next(p.parent for p in (trained / "runs" / "finance").glob("*/result.json"))
    assert f"domainbot publish finance {run}" in out
    adapters_dir = trained / "domains" / "finance" / "adapters"
    before = [v.version for v in store.versions(adapters_dir)]

    saved = json.loads((run / "result.json").read_text())
    for field, value, message in (("base_hash", "f" * 64, "trained on a base model with sha256 ffffffffffff"),
                                  ("data_hash", "0" * 16, "training data changed"),
                                  ("domain", "legal", "is a run of 'legal', not 'finance'")):
        (run / "result.json").write_text(json.dumps({**saved, field: value}))
        assert main(["publish", "finance", str(run)]) == 2
        assert message in capsys.readouterr().err
    (run / "result.json").write_text(json.dumps(saved))
    assert main(["publish", "finance", str(trained / "runs")]) == 2
    assert "no result.json" in capsys.readouterr().err
    assert [v.version for v in store.versions(adapters_dir)] == before

    assert main(["publish", "finance", str(run), "--threads", "2"]) == 0
    new = store.versions(adapters_dir)[-1]
    assert new.version not in before and new.meta["verify"]["ok"]
    assert new.meta["command"].endswith("--seed 5 --threads 2")
    assert new.meta["train"]["steps"] == 2 and store.current(adapters_dir).version == "v1"
    shutil.rmtree(new.path)
