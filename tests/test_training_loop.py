"""The training loop on a tiny random llama (same tokenizer and chat template as the served model):
loss falls, an interrupted or disk-full run resumes from its checkpoint, warm starts load weights."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

from bot.config import ROOT, Settings
from bot.testing.net import free_port
from training import finetune
from training.batches import batch_order
from training.dataset import load_examples
from training.errors import TrainingError
from training.finetune import TrainConfig, lr_at, train


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A 2-layer llama with SmolLM2's tokenizer, saved as an HF dir (seconds to train on)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = finetune.served_gguf(Settings())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_examples():
    return load_examples("finance", max_examples=12, task_caps={"tatqa_hybrid_qa": 0}, seed=1)


def _cfg(tiny_base, **kw) -> TrainConfig:
    base = dict(base_model=tiny_base, batch_size=4, max_steps=6, lr=5e-3, warmup_steps=1, checkpoint_every=2,
                threads=1, bf16=False, epochs=3)
    return TrainConfig(**{**base, **kw})


def test_loss_falls_and_peft_weights_are_saved(tiny_base, tiny_examples, tmp_path):
    r = train("finance", _cfg(tiny_base, max_steps=12, epochs=5), tiny_examples, runs_dir=tmp_path, progress=False)
    assert r.steps == 12 and r.total_steps == 12
    assert sum(r.losses[-3:]) < sum(r.losses[:3])
    assert (r.peft_dir / "adapter_model.safetensors").is_file()
    assert json.loads((r.peft_dir / "adapter_config.json").read_text())["r"] == finetune.RANK
    assert r.tokens > r.answer_tokens > 0 and r.task_counts == {"tfns_sentiment": 12}


def test_interrupted_run_resumes_where_it_stopped(tiny_base, tiny_examples, tmp_path):
    straight = train("finance", _cfg(tiny_base), tiny_examples, runs_dir=tmp_path / "a", progress=False)

    def stop_at_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingError, match=r"interrupted at step 3/6; checkpoint saved .*Run the same command again"):
        train("finance", _cfg(tiny_base), tiny_examples, runs_dir=tmp_path / "b", on_step=stop_at_3, progress=False)
    resumed = train("finance", _cfg(tiny_base), tiny_examples, runs_dir=tmp_path / "b", progress=False)
    assert resumed.resumed_from == 3 and resumed.steps == 6
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-4)  # same batches, same optimizer state


def test_disk_full_stops_cleanly_and_the_run_resumes(tiny_base, tiny_examples, tmp_path, monkeypatch):
    import torch

    real_save = torch.save
    calls = []

    def full_disk(obj, path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:  # the step-4 checkpoint hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrainingError, match=r"No space left on device \(disk full\?\).*step 2 is intact.*resume"):
        train("finance", _cfg(tiny_base), tiny_examples, runs_dir=tmp_path, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert not list(tmp_path.rglob("*.tmp"))  # the half-written file was removed
    resumed = train("finance", _cfg(tiny_base), tiny_examples, runs_dir=tmp_path, progress=False)
    assert resumed.resumed_from == 2 and resumed.steps == 6


def test_warm_start_loads_the_previous_adapter(tiny_base, tiny_examples, tmp_path):
    import torch

    first = train("finance", _cfg(tiny_base, max_steps=3), tiny_examples, runs_dir=tmp_path, progress=False)
    base, _ = finetune.load_base(tiny_base)
    model = finetune.lora_model(base, _cfg(tiny_base, warm_start=first.peft_dir))
    from safetensors.torch import load_file

    saved = load_file(str(first.peft_dir / "adapter_model.safetensors"))
    key = next(k for k in saved if "lora_B" in k)
    live = {k.replace(".default", ""): v for k, v in model.state_dict().items()}
    assert torch.equal(live[key], saved[key]) and saved[key].abs().sum() > 0
    assert any(p.requires_grad for p in model.parameters())
    finetune.unwrap(model)


def test_bad_warm_start_and_missing_base_are_clear(tiny_base, tiny_examples, tmp_path):
    with pytest.raises(TrainingError, match="neither a PEFT adapter dir nor a folder with adapter.gguf"):
        train("finance", _cfg(tiny_base, warm_start=tmp_path), tiny_examples, runs_dir=tmp_path, progress=False)
    with pytest.raises(TrainingError, match="base model not found"):
        train("finance", _cfg(tiny_base, base_model=tmp_path / "missing.gguf"), [], runs_dir=tmp_path, progress=False)


def test_empty_example_list_is_refused(tiny_base, tmp_path):
    with pytest.raises(TrainingError, match="no training examples for finance"):
        train("finance", _cfg(tiny_base), [], runs_dir=tmp_path, progress=False)


def test_batches_are_seeded_cover_everything_and_group_lengths():
    lengths = [5, 100, 7, 98, 6, 99, 8, 97]
    a = batch_order(lengths, 2, seed=1, epoch=0)
    assert a == batch_order(lengths, 2, seed=1, epoch=0) != batch_order(lengths, 2, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(8))
    assert all(abs(lengths[b[0]] - lengths[b[-1]]) < 10 for b in a)  # short with short, long with long


def test_lr_warms_up_then_decays():
    cfg = TrainConfig(lr=1.0, warmup_steps=4)
    lrs = [lr_at(s, 20, cfg) for s in range(20)]
    assert lrs[0] == 0.25 and lrs[3] == 1.0 and lrs[-1] < 0.2 and lrs[-1] >= 0.1


def test_runs_dir_default_is_git_ignored():
    assert "/runs/" in (ROOT / ".gitignore").read_text() and finetune.RUNS_DIR == ROOT / "runs"
    shutil.rmtree(ROOT / "runs" / "nothing", ignore_errors=True)


def test_warm_start_from_an_adapter_of_another_base_is_refused(tiny_base, tiny_examples, tmp_path):
    """A GGUF adapter shaped for SmolLM2 (hidden 576) does not fit the tiny base: a clear BaseMismatch."""
    import numpy as np

    from training.gguf_lora import BaseMismatch, write_adapter_gguf

    folder = tmp_path / "v1"
    write_adapter_gguf({"blk.0.attn_q.weight.lora_a": np.zeros((8, 576), np.float32),
                        "blk.0.attn_q.weight.lora_b": np.zeros((576, 8), np.float32)}, 16, folder / "adapter.gguf")
    with pytest.raises(BaseMismatch, match="does not fit this base model"):
        train("finance", _cfg(tiny_base, warm_start=folder), tiny_examples, runs_dir=tmp_path, progress=False)
    base, _ = finetune.load_base(tiny_base)
    assert not any("lora_" in n for n, _ in base.named_parameters())  # the cached base was left clean


_LAUNCHED = """
import json, sys
from pathlib import Path
from training.dataset import load_examples
from training.finetune import TrainConfig, train

base, out = Path(sys.argv[1]), Path(sys.argv[2])
examples = load_examples("finance", max_examples=12, task_caps={"tatqa_hybrid_qa": 0}, seed=1)
cfg = TrainConfig(base_model=base, batch_size=4, max_steps=3, lr=5e-3, warmup_steps=1, threads=1, bf16=False,
                  epochs=3, device="cpu")
r = train("finance", cfg, examples, runs_dir=out / "runs", out_dir=out / "peft", progress=False)
if r.rank == 0:
    (out / "result.json").write_text(json.dumps({"world": r.world, "losses": r.losses}))
"""


def test_two_launched_processes_take_the_single_process_steps(tiny_base, tiny_examples, tmp_path):
    """Two processes as `accelerate launch --multi_gpu` starts them (torchrun; gloo on CPU here, NCCL on GPUs): each process takes half of every batch and the
    summed gradients make the same update, so the LoRA weights match one process's run."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = tmp_path / "launched.py"
    script.write_text(_LAUNCHED)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script), str(tiny_base), str(tmp_path / "dp")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    launched = json.loads((tmp_path / "dp" / "result.json").read_text())
    assert launched["world"] == 2

    single = train("finance", _cfg(tiny_base, max_steps=3, device="cpu"), tiny_examples, runs_dir=tmp_path / "one",
                   out_dir=tmp_path / "one" / "peft", progress=False)
    assert launched["losses"] == pytest.approx(single.losses, rel=1e-4)
    a = load_file(tmp_path / "dp" / "peft" / "adapter_model.safetensors")
    b = load_file(tmp_path / "one" / "peft" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-5, k


def test_encoded_answers_end_with_the_served_end_of_turn(tiny_base, tiny_examples):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    template = finetune.chat_template(tiny_base, tokenizer)  # an HF dir: its tokenizer's (SmolLM2's) template
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for ex in tiny_examples:
        ids, n_prompt = finetune.encode(ex, tokenizer, max_len=1024, max_answer=192, template=template)
        assert ids[-1] == im_end and 0 < n_prompt < len(ids)
        assert tokenizer.decode(ids[n_prompt:-1]).strip() == ex.answer.strip()


def test_a_fallback_template_ends_answers_with_its_turn_end_else_eos(tiny_base):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from bot.llm import chat_format

    gemma = chat_format.ChatTemplate("gemma", "fallback", chat_format.GEMMA, "<bos>", "<eos>")
    raw = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hello": 2, "<end_of_turn>": 3}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="</s>")
    assert finetune.turn_end_id(plain, gemma) == 3
    chatml = AutoTokenizer.from_pretrained(tiny_base)  # no <end_of_turn> token: eos, which serving stops on too
    assert finetune.turn_end_id(chatml, gemma) == chatml.eos_token_id
