"""Bring your own base model: per architecture (llama, mistral, qwen2, qwen3, gemma3, phi3) a tiny random-weight
HF model is converted to GGUF by llama.cpp's own converter, trained until the adapter measurably moves the
logits, exported by `training.architectures`' table, and checked three ways:
- the GGUF tensors equal what llama.cpp's convert_lora_to_gguf.py writes for the same PEFT adapter;
- llama.cpp+adapter agrees with transformers+peft (top-1 >= 0.98) on F32 and F16 bases;
- a deliberately wrong export (q/k permutation flipped; alpha x2) is refused by that verification.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bot import adapters as store
from training import architectures, export, finetune, gguf_lora
from training.architectures import UnsupportedArchitecture
from training.dataset import Example

ALL_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3")
# All six in CI: 213 s on 2 cores from an empty cache (conversions included), about 100 s once cached.
# DOMAINBOT_TINY_ARCHS=llama,phi3 narrows it for a quick local run.
ARCHS = tuple(a for a in os.environ.get("DOMAINBOT_TINY_ARCHS", ",".join(ALL_ARCHS)).split(",") if a)
GGUF_ARCH = {"mistral": "llama"}  # a Mistral HF model converts to GGUF architecture "llama"
AGREE = 0.98
ANSWERS = ("Bullish: revenue beat estimates by twelve percent.", "Bearish: the company cut its dividend again.",
           "Neutral: guidance was unchanged for the year.", "Bullish: record deliveries in the third quarter.",
           "Bearish: the regulator opened a fraud probe.", "Neutral: the board met as planned on Tuesday.")


def write_gguf_with_arch(path: Path, arch: str) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---- the table, and refusing what it does not cover (no model needed) -----------------------------------
def test_unsupported_architecture_is_refused_before_training(tmp_path, monkeypatch):
    base = write_gguf_with_arch(tmp_path / "mamba.gguf", "mamba")
    monkeypatch.setattr(finetune, "load_base", lambda *_: pytest.fail("loaded the base of an unsupported arch"))
    cfg = finetune.TrainConfig(base_model=base, max_steps=1)
    with pytest.raises(UnsupportedArchitecture, match=r"'mamba' is not supported.*supported: llama, qwen2, qwen3, "
                                                      r"gemma3, phi3"):
        finetune.train("finance", cfg, [Example([], "x", "t", "s")], runs_dir=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


def test_domainbot_train_refuses_an_unsupported_base_with_the_supported_list(tmp_path, capsys):
    from bot.cli import main

    # (no monkeypatched load_base here: `domainbot train` imports modules that bind it by name; loading this
    # stub GGUF would fail with another message, so the message shows the check ran first)
    base = write_gguf_with_arch(tmp_path / "mamba.gguf", "mamba")
    assert main(["train", "finance", "--base-model", str(base), "--max-steps", "1"]) != 0
    err = capsys.readouterr().err
    assert "'mamba' is not supported" in err and "llama, qwen2, qwen3, gemma3, phi3" in err
    assert "Traceback" not in err


def test_hf_dir_of_an_unsupported_type_and_a_non_model_are_refused(tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedArchitecture, match="'gpt2' is not supported"):
        architectures.for_base(tmp_path / "gpt2")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(UnsupportedArchitecture, match="not a readable GGUF"):
        architectures.for_base(tmp_path / "junk.gguf")
    with pytest.raises(UnsupportedArchitecture, match="neither a GGUF file nor an HF model dir"):
        architectures.for_base(tmp_path)


def test_hf_model_types_map_to_the_gguf_architecture(tmp_path):
    for model_type, want in (("mistral", "llama"), ("gemma3_text", "gemma3"), ("qwen3", "qwen3"), ("phi3", "phi3")):
        (tmp_path / model_type).mkdir()
        (tmp_path / model_type / "config.json").write_text(json.dumps({"model_type": model_type}))
        assert architectures.for_base(tmp_path / model_type).name == want


def test_lora_targets_the_architecture_cannot_export_are_refused(tmp_path):
    base = write_gguf_with_arch(tmp_path / "phi.gguf", "phi3")
    with pytest.raises(UnsupportedArchitecture, match="q_proj cannot be exported for architecture phi3.*qkv_proj"):
        finetune.check_architecture(base, finetune.TrainConfig(targets=("q_proj", "o_proj")))
    assert finetune.check_architecture(base, finetune.TrainConfig()).targets == (
        "qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def test_peft_tensor_outside_the_table_is_refused():
    arch = architectures.get("phi3")
    with pytest.raises(gguf_lora.ExportError, match="phi3 exports LoRA on qkv_proj"):
        gguf_lora.peft_to_gguf_tensors({"model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((2, 4))}, arch, 4, 2)


def test_adapter_of_another_architecture_is_refused(tmp_path):
    from bot.adapters import AdapterVersion

    base = write_gguf_with_arch(tmp_path / "qwen.gguf", "qwen2")
    (tmp_path / "v1").mkdir()
    meta = {"version": "v1", "base_model": {"name": "smollm.gguf", "sha256": "0" * 64, "architecture": "llama"}}
    (tmp_path / "v1" / store.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(gguf_lora.BaseMismatch, match="trained for architecture llama.*qwen.gguf is qwen2"):
        export.check_base(AdapterVersion("v1", tmp_path / "v1"), base)


# ---- tiny models of every architecture: train, export, verify ------------------------------------------
def _examples() -> list[Example]:
    return [Example([{"role": "user", "content": f"Sentiment of headline {i}?"}], a, "tfns", f"s{i}")
            for i, a in enumerate(ANSWERS)]


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, tmp_path_factory):
    """(name, TinyModel, TrainResult): one tiny base per architecture, trained hard enough to move the logits."""
    from bot.testing import tiny_archs

    try:
        model = tiny_archs.build(request.param)
        model.gguf("f32"), model.gguf("f16")
    except tiny_archs.ToolsUnavailable as exc:
        pytest.skip(str(exc))
    cfg = finetune.TrainConfig(base_model=model.hf_dir, batch_size=6, max_steps=24, epochs=24, lr=2e-2,
                               warmup_steps=1, threads=2, bf16=False, checkpoint_every=100, rank=4, alpha=8)
    runs = tmp_path_factory.mktemp(f"runs-{request.param}")
    result = finetune.train("finance", cfg, _examples(), runs_dir=runs, progress=False)
    return request.param, model, result


def _sequences(model) -> list[tuple[list[int], int]]:
    _, tokenizer = finetune.load_base(model.hf_dir)
    template = finetune.chat_template(model.gguf("f32"), tokenizer)  # as serving renders the GGUF
    return [finetune.encode(ex, tokenizer, 256, 64, template) for ex in _examples()]


def _verify(model, result, adapter: Path, base_gguf: Path) -> export.VerifyReport:
    from peft import PeftModel

    base, _ = finetune.load_base(model.hf_dir)
    peft = PeftModel.from_pretrained(base, str(result.peft_dir))
    try:
        return export.verify(base_gguf, adapter, peft, _sequences(model), min_agreement=AGREE, threads=2)
    finally:
        finetune.unwrap(peft)


def _moved(after: list[np.ndarray], before: list[np.ndarray], seqs) -> float:
    """Share of answer positions whose top-1 token differs between two runs."""
    flags = [a[n - 1 : len(s) - 1].argmax(-1) != b[n - 1 : len(s) - 1].argmax(-1)
             for a, b, (s, n) in zip(after, before, seqs, strict=True)]
    return float(np.mean(np.concatenate(flags)))


@pytest.mark.slow
def test_adapter_moves_the_logits(tiny, tmp_path):
    """Both engines: the trained adapter changes the top-1 token on most answer positions (else the other
    checks would compare base against base)."""
    import torch
    from peft import PeftModel

    name, model, result = tiny
    adapter = gguf_lora.export_gguf(result.peft_dir, model.gguf("f32"), tmp_path / "a.gguf")
    seqs = _sequences(model)
    with_lora = export.llama_logits(model.gguf("f32"), adapter, [s for s, _ in seqs], threads=2)
    without = export.llama_logits(model.gguf("f32"), None, [s for s, _ in seqs], threads=2)
    base, _ = finetune.load_base(model.hf_dir)
    with torch.no_grad():
        hf_base = [base(input_ids=torch.tensor([s])).logits[0].numpy() for s, _ in seqs]
    peft = PeftModel.from_pretrained(base, str(result.peft_dir))
    with torch.no_grad():
        hf_lora = [peft(input_ids=torch.tensor([s])).logits[0].numpy() for s, _ in seqs]
    finetune.unwrap(peft)
    moved_cpp, moved_hf = _moved(with_lora, without, seqs), _moved(hf_lora, hf_base, seqs)
    print(f"{name}: top-1 moved on {moved_cpp:.0%} (llama.cpp) / {moved_hf:.0%} (transformers) of answer positions")
    assert moved_cpp >= 0.5 and moved_hf >= 0.5


@pytest.mark.slow
def test_export_matches_llama_cpps_own_lora_converter(tiny, tmp_path):
    from bot.testing import tiny_archs

    name, model, result = tiny
    ours, alpha, arch = gguf_lora.read_adapter(gguf_lora.export_gguf(result.peft_dir, model.gguf("f32"), tmp_path / "a.gguf"))
    tiny_archs.run_script("convert_lora_to_gguf.py", str(result.peft_dir), "--base", str(model.hf_dir),
                          "--outfile", str(tmp_path / "ref.gguf"), "--outtype", "f32")
    ref, ref_alpha, ref_arch = gguf_lora.read_adapter(tmp_path / "ref.gguf")
    assert (arch, alpha) == (ref_arch, ref_alpha) == (GGUF_ARCH.get(name, name), 8.0)
    assert set(ours) == set(ref) and len(ours) == 2 * 2 * len(architectures.get(arch).modules)
    for key in ref:
        np.testing.assert_allclose(ours[key], ref[key], atol=2e-3, rtol=2e-3, err_msg=key)  # ours are f16


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_llama_cpp_agrees_with_peft(tiny, tmp_path, outtype):
    name, model, result = tiny
    base = model.gguf(outtype)
    report = _verify(model, result, gguf_lora.export_gguf(result.peft_dir, base, tmp_path / "a.gguf"), base)
    print(f"{name} {outtype}: agreement {report.agreement:.3f} on {report.positions}, max diff {report.max_logit_diff:.3f}")
    assert report.ok and report.agreement >= AGREE and report.positions >= 40


@pytest.mark.slow
@pytest.mark.parametrize("wrong", ["permutation", "alpha x2"])
def test_a_wrong_export_is_refused(tiny, tmp_path, wrong):
    name, model, result = tiny
    base = model.gguf("f32")
    kwargs = {"wrong_permutation": True} if wrong == "permutation" else {"alpha_scale": 2.0}
    adapter = gguf_lora.export_gguf(result.peft_dir, base, tmp_path / "bad.gguf", **kwargs)
    report = _verify(model, result, adapter, base)
    print(f"{name} wrong {wrong}: agreement {report.agreement:.3f}, max diff {report.max_logit_diff:.3f}")
    assert not report.ok and report.agreement < AGREE


@pytest.mark.slow
def test_warm_start_rebuilds_peft_from_the_gguf(tiny, tmp_path):
    """The GGUF -> PEFT direction (warm starts) undoes exactly what the export did, per architecture."""
    import torch
    from safetensors.torch import load_file

    name, model, result = tiny
    adapter = gguf_lora.export_gguf(result.peft_dir, model.gguf("f32"), tmp_path / "a.gguf")
    base, _ = finetune.load_base(model.hf_dir)
    rebuilt = gguf_lora.peft_from_gguf(base, adapter)
    live = {k.replace(".default", ""): v for k, v in rebuilt.state_dict().items() if "lora_" in k}
    saved = load_file(str(result.peft_dir / "adapter_model.safetensors"))
    assert set(saved) <= set(live)
    for key, value in saved.items():
        torch.testing.assert_close(live[key], value, atol=2e-3, rtol=2e-3)
    finetune.unwrap(rebuilt)

