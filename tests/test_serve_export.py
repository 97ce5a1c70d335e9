"""`domainbot adapters export`: the server command or config for the live adapters of each domain."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bot import adapters as adapter_store
from bot.config import Settings
from bot.llm.llama import embedded_model_path
from bot.testing.lora import write_lora
from training.serve_export import (
    ExportError,
    choose_target,
    export_main,
    for_llama_server,
    for_vllm,
    llama_cpp_python_config,
    make_plan,
    register_export,
    vllm_rank,
)


def _version(adapters_dir: Path, version: str, *, peft_rank: int | None = None) -> Path:
    folder = adapters_dir / version
    folder.mkdir(parents=True, exist_ok=True)
    write_lora(folder / "adapter.gguf", scale=0.01, seed=len(version))
    if peft_rank:
        (folder / "peft").mkdir()
        (folder / "peft" / "adapter_config.json").write_text(json.dumps({"r": peft_rank, "lora_alpha": 32}))
        (folder / "peft" / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return folder


@pytest.fixture
def live(domains_copy: Path) -> Settings:
    """finance runs v2 (with PEFT files), legal v1 (GGUF only), medical the base model."""
    fin, leg, med = (domains_copy / d / "adapters" for d in ("finance", "legal", "medical"))
    _version(fin, "v1", peft_rank=8)
    _version(fin, "v2", peft_rank=16)
    _version(leg, "v1")
    adapter_store.set_current(fin, "v2")
    adapter_store.set_current(leg, "v1")
    adapter_store.set_current(med, "base")
    return Settings(domains_dir=domains_copy, n_ctx=2048, seed=0)


def test_llama_cpp_python_config_has_one_alias_per_live_adapter(live: Settings):
    config = llama_cpp_python_config(make_plan(live, "all", port=8123))
    base = str(embedded_model_path().resolve())
    assert config["port"] == 8123 and config["host"] == "127.0.0.1"
    by_alias = {m["model_alias"]: m for m in config["models"]}
    assert list(by_alias) == ["base", "finance", "legal"]  # medical is on the base model: no alias of its own
    assert all(m["model"] == base and m["n_ctx"] == 2048 and m["seed"] == 0 for m in config["models"])
    assert "lora_path" not in by_alias["base"]
    assert by_alias["finance"]["lora_path"] == str(live.domains_dir.resolve() / "finance/adapters/v2/adapter.gguf")
    assert by_alias["legal"]["lora_path"].endswith("legal/adapters/v1/adapter.gguf")
    assert all(m["logits_all"] is False for m in config["models"])  # as the embedded runtime loads it


def test_the_alias_template_is_shared_with_the_backend(live: Settings):
    s = live.with_(extra={"DOMAINBOT_LLM_ALIAS": "{domain}-{version}", "DOMAINBOT_LLM_BASE_ALIAS": "smol"})
    aliases = [m["model_alias"] for m in llama_cpp_python_config(make_plan(s, "all"))["models"]]
    assert aliases == ["smol", "finance-v2", "legal-v1"]


def test_vllm_needs_peft_files_and_says_how_to_get_them(live: Settings):
    with pytest.raises(ExportError, match=r"no peft/ folder: legal v1\. Write them from adapter.gguf with `--write-peft`"):
        for_vllm(make_plan(live, "all"))
    out = for_vllm(make_plan(live, "finance", port=9000, base_hf="/models/smollm2-hf"))
    cmd = out.artifact.replace(" \\\n  ", " ")
    assert cmd.startswith("vllm serve /models/smollm2-hf --served-model-name base --port 9000")
    assert "--enable-lora --max-loras 1 --max-lora-rank 16 --lora-modules finance=" in cmd
    assert cmd.endswith("finance/adapters/v2/peft")
    assert "DOMAINBOT_LLM_BASE_URL=http://127.0.0.1:9000/v1" in "\n".join(out.notes)


def test_vllm_rank_is_one_vllm_accepts():
    assert [vllm_rank(r) for r in ([4], [8, 16], [17], [])] == [8, 16, 32, 8]


def test_llama_server_flags_list_adapters_in_id_order(live: Settings):
    out = for_llama_server(make_plan(live, "all", port=8080))
    lines = out.artifact.split(" \\\n  ")
    assert lines[0] == "llama-server"
    assert lines[1] == f"-m {embedded_model_path().resolve()}"
    loras = [line.split()[1] for line in lines if line.startswith("--lora ")]
    assert [Path(p).parts[-4:-1] for p in loras] == [("finance", "adapters", "v2"), ("legal", "adapters", "v1")]
    assert lines[-1] == "--lora-init-without-apply"
    notes = "\n".join(out.notes)
    assert "0=finance v2, 1=legal v1" in notes and "DOMAINBOT_LLM_ADAPTER_FIELD=lora" in notes
    assert "Domains on the base model (no live adapter): medical" in notes


@pytest.mark.parametrize(("fmt", "target", "chosen"), [
    ("peft", None, "vllm"), ("gguf", None, "llama-server"), (None, "llama-cpp-python", "llama-cpp-python"),
    ("gguf", "llama-cpp-python", "llama-cpp-python"),
])
def test_format_and_target(fmt, target, chosen):
    assert choose_target(fmt, target) == chosen


def test_format_and_target_that_do_not_fit_are_explained():
    with pytest.raises(ExportError, match="llama-server serves gguf adapters, not peft: use --format gguf"):
        choose_target("peft", "llama-server")
    with pytest.raises(ExportError, match="--format peft \\(vLLM\\) or --format gguf"):
        choose_target(None, None)


def test_unknown_domain(live: Settings):
    with pytest.raises(ExportError, match="unknown domain 'tax'; known: .*finance.*\\(or 'all'\\)"):
        make_plan(live, "tax")


def _run(settings: Settings, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="domainbot adapters")
    register_export(parser.add_subparsers())
    args = parser.parse_args(["export", *argv])
    return args.func(args, settings)


def test_command_prints_the_config_to_stdout_and_the_how_to_to_stderr(live: Settings, capsys):
    assert _run(live, "--format", "gguf", "--target", "llama-cpp-python", "--port", "8111") == 0
    out, err = capsys.readouterr()
    config = json.loads(out)  # stdout is exactly the config: `> server.json` works
    assert [m["model_alias"] for m in config["models"]] == ["base", "finance", "legal"]
    assert "python -m llama_cpp.server --config_file" in err and "DOMAINBOT_LLM_BACKEND=openai" in err


def test_command_for_one_domain(live: Settings, capsys):
    assert _run(live, "legal", "--format", "gguf") == 0
    out = capsys.readouterr().out
    assert out.count("--lora ") == 1 and "legal/adapters/v1/adapter.gguf" in out


def test_export_main_serves_an_adapters_command_that_keeps_its_domain_form(live: Settings, capsys):
    """The wiring in training/cli.py: `adapters <domain>` stays, `adapters export ...` is handed over."""
    parser = argparse.ArgumentParser(prog="domainbot")
    p = parser.add_subparsers().add_parser("adapters")
    p.add_argument("domain")
    p.add_argument("export_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(["adapters", "export", "finance", "--format", "peft", "--port", "9001"])
    assert args.domain == "export"
    assert export_main(args.export_args, live) == 0
    out = capsys.readouterr().out
    assert out.startswith("vllm serve BASE_HF_DIR") and "--port 9001" in out and "finance=" in out
    with pytest.raises(SystemExit):
        export_main(["--format", "onnx"], live)
    assert "invalid choice: 'onnx'" in capsys.readouterr().err


@pytest.mark.slow
def test_write_peft_rebuilds_peft_files_that_export_back_to_the_same_gguf(live: Settings, tmp_path):
    """`--write-peft` for a version without PEFT files: GGUF -> PEFT safetensors -> GGUF gives the same tensors."""
    import numpy as np

    from training.gguf_lora import export_gguf, read_adapter_gguf
    from training.serve_export import write_peft

    plan = make_plan(live, "legal")
    [legal] = plan.adapters
    assert not legal.has_peft
    assert write_peft(plan) == [legal.peft]
    assert legal.has_peft and legal.rank == 4 and not (legal.folder / ".peft-tmp").exists()
    config = json.loads((legal.peft / "adapter_config.json").read_text())
    assert config["target_modules"] == ["q_proj"] and config["lora_alpha"] == 4
    back = export_gguf(legal.peft, plan.base_gguf, tmp_path / "back.gguf")
    want, alpha = read_adapter_gguf(legal.gguf)
    got, alpha_back = read_adapter_gguf(back)
    assert alpha_back == alpha and sorted(got) == sorted(want)
    # the GGUF holds float16: equal to its precision (a wrong permutation would be off by 100%)
    assert all(np.allclose(got[k], want[k], rtol=1e-3, atol=1e-7) for k in want)
    assert for_vllm(make_plan(live, "legal")).artifact.endswith("legal/adapters/v1/peft")
