"""The prompt path of bot/llm/llama.py: our own chat rendering and the per-(domain, adapter) prefix cache."""

import pytest

from bot.llm.llama import Runtime
from bot.prompt import SOURCES_HEADER
from bot.testing.lora import write_lora

pytestmark = pytest.mark.slow

SYSTEM = ("You answer questions about tenancy law for a small team. Use only the numbered sources, cite them "
          "like [1], and say so when the sources do not answer the question.")


def _msgs(question: str, passage: str) -> list[dict]:
    content = f"{SYSTEM}\n\n{SOURCES_HEADER}\n[1] Notes\n{passage}"
    return [{"role": "system", "content": content}, {"role": "user", "content": question}]


Q1 = _msgs("How much notice must a landlord give?", "A landlord must give two months' notice in writing.")
Q2 = _msgs("Can the deposit be kept?", "A deposit may be kept only for damage beyond normal wear.")


def test_rendered_prompt_gives_the_same_greedy_tokens_as_create_chat_completion(runtime):
    def oracle() -> str:
        runtime._activate(None)
        runtime.llm.reset()
        out = runtime.llm.create_chat_completion(Q1, max_tokens=16, temperature=0.0, seed=runtime.settings.seed)
        return out["choices"][0]["message"]["content"]

    expected = runtime._call(oracle)
    runtime._call(runtime.llm.reset)  # same start: llama-cpp-python's live-prefix reuse can shift greedy output
    assert runtime.generate(Q1, max_tokens=16, temperature=0.0).text == expected


def test_constant_prefix_is_the_system_prompt_before_the_sources():
    assert Runtime.constant_prefix(Q1) == SYSTEM
    assert Runtime.constant_prefix([{"role": "user", "content": "x"}]) == ""


def test_prefix_cache_never_serves_one_adapter_to_another(base_settings, runtime, tmp_path):
    a = write_lora(tmp_path / "a.gguf", scale=0.5, seed=1)
    b = write_lora(tmp_path / "b.gguf", scale=0.5, seed=2)
    plain = Runtime(base_settings, prefix_cache=0)  # the oracle: no saved prefixes at all
    try:
        expected = {}
        for rt in (plain, runtime):
            rt.ensure_adapter("t:a", a)
            rt.ensure_adapter("t:b", b)
        for key in ("t:a", "t:b"):
            for q in (Q1, Q2):
                expected[key, id(q)] = plain.generate(q, adapter=key, max_tokens=12, temperature=0.0).text
        assert expected["t:a", id(Q1)] != expected["t:b", id(Q1)]  # the adapters really differ
        runtime.prefix_stats.update(hits=0, misses=0, live=0)
        for key, q in [("t:a", Q1), ("t:b", Q1), ("t:a", Q2), ("t:b", Q2), ("t:a", Q1)]:
            assert runtime.generate(q, adapter=key, max_tokens=12, temperature=0.0).text == expected[key, id(q)]
        # Built once per adapter, then restored after every switch.
        assert runtime.prefix_stats["misses"] == 2 and runtime.prefix_stats["hits"] == 3
        assert plain.prefix_stats == {"hits": 0, "misses": 0, "live": 0}
    finally:
        plain.close()


def test_a_reloaded_adapter_file_does_not_reuse_the_old_prefix(runtime, tmp_path):
    path = tmp_path / "r.gguf"
    runtime.ensure_adapter("t:r", write_lora(path, scale=0.5, seed=3))
    first = runtime.generate(Q1, adapter="t:r", max_tokens=12, temperature=0.0).text
    runtime.generate(Q1, adapter=None, max_tokens=4, temperature=0.0)
    path.unlink()
    new = tmp_path / "r2.gguf"
    runtime.ensure_adapter("t:r", write_lora(new, scale=0.5, seed=4))
    misses = runtime.prefix_stats["misses"]
    second = runtime.generate(Q1, adapter="t:r", max_tokens=12, temperature=0.0).text
    assert runtime.prefix_stats["misses"] == misses + 1 and second != first


def test_prefix_cache_is_bounded(base_settings):
    rt = Runtime(base_settings, prefix_cache=2)
    try:
        for i in range(4):
            system = f"Domain number {i}. " + SYSTEM
            rt.generate([{"role": "system", "content": system}, {"role": "user", "content": "Hi"}], max_tokens=1)
            rt._call(rt.llm.reset)  # force the cache path instead of the live context
        assert len(rt._prefixes) == 2
    finally:
        rt.close()


def test_prompt_longer_than_the_context_is_refused_clearly(runtime):
    from bot.errors import UserFacingError

    with pytest.raises(UserFacingError, match="too long"):
        runtime.generate([{"role": "user", "content": "word " * 20000}], max_tokens=4)
