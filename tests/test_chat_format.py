"""bot/llm/chat_format.py: the GGUF's own template, named fallbacks, and llama.cpp-identical rendering."""

from pathlib import Path

import pytest

from bot.llm.chat_format import ChatFormatError, ChatTemplate, render, template_for
from bot.llm.llama import embedded_model_path

MSGS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi?"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Why?"},
]


def _gguf(path: Path, arch: str, template: str | None = None) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    if template is not None:
        w.add_chat_template(template)
    w.add_token_list(["<pad>", "<bos>", "<eos>"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_smollm2_template_comes_from_the_gguf_and_renders_like_llama_cpp():
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    t = template_for(embedded_model_path())
    assert (t.source, t.bos, t.eos) == ("gguf", "<|im_start|>", "<|im_end|>")
    oracle = Jinja2ChatFormatter(template=t.text, eos_token=t.eos, bos_token=t.bos)(messages=MSGS).prompt
    assert render(t, MSGS) == oracle
    assert render(t, MSGS).endswith("<|im_start|>assistant\n")
    assert not render(t, MSGS, add_generation_prompt=False).endswith("assistant\n")


def test_gemma3_without_template_gets_the_gemma_fallback(tmp_path):
    t = template_for(_gguf(tmp_path / "g.gguf", "gemma3"))
    assert (t.name, t.source, t.bos, t.eos) == ("gemma", "fallback", "<bos>", "<eos>")
    assert "<end_of_turn>" in t.stops()
    text = render(t, MSGS)
    # Written out by hand from Gemma's turn format (system folded into the first user turn).
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi?<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_other_architectures_without_template_get_chatml(tmp_path):
    t = template_for(_gguf(tmp_path / "q.gguf", "qwen2"))
    assert (t.name, t.source) == ("chatml", "fallback")
    assert render(t, MSGS[:2]) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n" \
        "<|im_start|>assistant\n"


def test_a_template_in_the_gguf_wins_over_the_fallback(tmp_path):
    t = template_for(_gguf(tmp_path / "x.gguf", "gemma3", "{% for m in messages %}<{{ m['role'] }}>{% endfor %}"))
    assert t.source == "gguf" and render(t, MSGS[:2]) == "<system><user>"


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ChatFormatError, match="not found"):
        template_for(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"nope" * 10)
    with pytest.raises(ChatFormatError, match="not a readable GGUF"):
        template_for(junk)
    t = template_for(embedded_model_path())
    with pytest.raises(ChatFormatError, match="'role' and 'content'"):
        render(t, [{"role": "user"}])
    with pytest.raises(ChatFormatError, match="does not parse"):
        render(ChatTemplate("gguf", "gguf", "{% for %}", "", ""), MSGS)
    refusing = ChatTemplate("gguf", "gguf", "{{ raise_exception('no system role') }}", "", "")
    with pytest.raises(ChatFormatError, match="no system role"):
        render(refusing, MSGS)
