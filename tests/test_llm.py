import threading

import pytest

from bot.errors import ModelNotFound
from bot.llm import llama_lora
from bot.llm.llama import AdapterMismatch, Runtime, embedded_model_path, resolve_model_path
from bot.testing.lora import write_lora

MSG = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]


def test_embedded_model_ships_in_the_package():
    path = embedded_model_path()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000


def test_private_lora_api_is_where_we_expect(runtime):
    llama_lora.check_api()  # raises if an upgrade renamed the functions
    assert runtime.llm._model.model and runtime.llm._ctx.ctx


def test_generation_streams_and_respects_max_tokens(runtime):
    pieces = []
    gen = runtime.generate(MSG, max_tokens=8, on_token=pieces.append)
    assert gen.completion_tokens <= 8 and pieces and "".join(pieces) == gen.text
    assert gen.prompt_tokens > 5 and gen.total_s > 0


def test_missing_and_bad_model_files_give_clear_errors(settings, tmp_path):
    with pytest.raises(ModelNotFound, match="not found"):
        resolve_model_path(settings.with_(model_path=tmp_path / "nope.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelNotFound, match="not a GGUF"):
        resolve_model_path(settings.with_(model_path=bad))
    with pytest.raises(ModelNotFound):
        Runtime(settings.with_(model_path=tmp_path / "nope.gguf"))


def test_adapter_swap_matches_base_and_reset_clears_cache(runtime, tmp_path):
    base = runtime.generate(MSG, max_tokens=12).text
    runtime.ensure_adapter("t:zero", write_lora(tmp_path / "zero.gguf", scale=0.0))
    runtime.ensure_adapter("t:noisy", write_lora(tmp_path / "noisy.gguf", scale=0.5, seed=1))
    assert runtime.generate(MSG, adapter="t:zero", max_tokens=12).text == base  # B = 0: no change
    noisy = runtime.generate(MSG, adapter="t:noisy", max_tokens=12).text
    assert noisy != base
    # Switching back must not reuse the prompt cache computed under the noisy adapter.
    assert runtime.generate(MSG, adapter=None, max_tokens=12).text == base
    assert runtime.generate(MSG, adapter="t:noisy", max_tokens=12).text == noisy


def test_adapter_for_other_shapes_is_refused(runtime, tmp_path):
    with pytest.raises(AdapterMismatch, match="do not match"):
        runtime.ensure_adapter("t:wrong", write_lora(tmp_path / "wrong.gguf", in_dim=100))
    with pytest.raises(AdapterMismatch, match="gpt2"):
        runtime.ensure_adapter("t:arch", write_lora(tmp_path / "arch.gguf", arch="gpt2"))
    with pytest.raises(AdapterMismatch, match="not a LoRA"):
        runtime.ensure_adapter("t:base", runtime.model_path)
    assert not runtime.has_adapter("t:wrong")


def test_concurrent_callers_are_serialised_without_crashing(runtime):
    results, errors = [], []

    def ask():
        try:
            results.append(runtime.generate(MSG, max_tokens=4).text)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 6 and len(set(results)) == 1  # greedy: identical answers
