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
        assert plain.prefix_stats == {"hits": 0, "misses": 0, "live": 0, "disk": 0}
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


def test_a_new_process_restores_the_saved_prefix_from_disk_and_only_for_its_adapter(base_settings, tmp_path):
    adapter = write_lora(tmp_path / "a.gguf", scale=0.5, seed=1)
    plain = Runtime(base_settings, prefix_cache=0)  # the oracle: every token evaluated
    try:
        plain.ensure_adapter("t:a", adapter)
        expected = {(key, id(q)): plain.generate(q, adapter=key, max_tokens=12, temperature=0.0).text
                    for key in (None, "t:a") for q in (Q1, Q2)}
    finally:
        plain.close()
    settings = base_settings.with_(prefix_dir=tmp_path / "kv")
    first = Runtime(settings)
    try:
        assert first.generate(Q1, max_tokens=12, temperature=0.0).text == expected[None, id(Q1)]
        assert first.prefix_stats["misses"] == 1 and len(list((tmp_path / "kv").glob("*.kv"))) == 1
    finally:
        first.close()
    second = Runtime(settings)  # a new context, as in a new `domainbot ask`
    try:
        second.ensure_adapter("t:a", adapter)
        assert second.generate(Q2, max_tokens=12, temperature=0.0).text == expected[None, id(Q2)]
        assert (second.prefix_stats["disk"], second.prefix_stats["misses"]) == (1, 0)
        # the file made without the adapter never serves it
        assert second.generate(Q1, adapter="t:a", max_tokens=12, temperature=0.0).text == expected["t:a", id(Q1)]
        assert second.prefix_stats["misses"] == 1 and len(list((tmp_path / "kv").glob("*.kv"))) == 2
    finally:
        second.close()


def test_a_damaged_prefix_file_is_evaluated_afresh_and_rewritten(base_settings, tmp_path):
    settings = base_settings.with_(prefix_dir=tmp_path / "kv")
    rt = Runtime(settings)
    try:
        expected = rt.generate(Q1, max_tokens=12, temperature=0.0).text
    finally:
        rt.close()
    (saved,) = (tmp_path / "kv").glob("*.kv")
    good = saved.read_bytes()
    saved.write_bytes(good[:-100] + bytes(100))  # a torn or flipped write: same length, wrong bytes
    rt = Runtime(settings)
    try:
        assert rt.generate(Q1, max_tokens=12, temperature=0.0).text == expected
        assert (rt.prefix_stats["disk"], rt.prefix_stats["misses"]) == (0, 1)
    finally:
        rt.close()
    assert saved.read_bytes() == good  # evaluated again and saved whole


def test_an_unwritable_prefix_folder_costs_speed_not_the_answer(base_settings, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    rt = Runtime(base_settings.with_(prefix_dir=blocker / "kv"))
    try:
        with caplog.at_level("WARNING"):
            text = rt.generate(Q1, max_tokens=8, temperature=0.0).text
        assert text and "could not save a prompt prefix" in caplog.text
    finally:
        rt.close()


def test_prefix_dir_setting(monkeypatch, tmp_path):
    from bot.config import load_settings

    monkeypatch.setenv("DOMAINBOT_DB", str(tmp_path / "db.sqlite"))
    monkeypatch.delenv("DOMAINBOT_PREFIX_DIR", raising=False)
    assert load_settings().prefix_dir == tmp_path / "prefix-kv"
    monkeypatch.setenv("DOMAINBOT_PREFIX_DIR", "off")
    assert load_settings().prefix_dir is None
    monkeypatch.setenv("DOMAINBOT_PREFIX_DIR", str(tmp_path / "elsewhere"))
    assert load_settings().prefix_dir == tmp_path / "elsewhere"


def test_prompt_longer_than_the_context_is_refused_clearly(runtime):
    from bot.errors import UserFacingError

    with pytest.raises(UserFacingError, match="too long"):
        runtime.generate([{"role": "user", "content": "word " * 20000}], max_tokens=4)
