"""bot/llm/gguf_meta.py reads a GGUF header without gguf-py's full parse (2 s per model file, twice per `ask`).
Oracle: gguf-py's GGUFReader on the same real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ROOT
from bot.llm import gguf_meta
from bot.llm.llama import embedded_model_path

STRING, ARRAY = 8, 9


def _reference(path: Path) -> tuple[dict[str, object], list[str]]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    scalars = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or field.types[0].value == ARRAY:  # GGUF.*: gguf-py's own, not in the file's KVs
            continue
        value = field.parts[field.data[0]]
        scalars[key] = bytes(value).decode("utf-8", "replace") if field.types[0].value == STRING else value.tolist()[0]
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    texts = [bytes(tokens.parts[i]).decode("utf-8", "replace") for i in tokens.data] if tokens else []
    return scalars, texts


@pytest.mark.parametrize("path", [embedded_model_path(), *sorted((ROOT / "domains").glob("*/adapters/v1/adapter.gguf"))[:1]],
                         ids=lambda p: p.name)
def test_every_scalar_and_string_field_matches_gguf_py(path: Path) -> None:
    scalars, texts = _reference(path)
    ours = gguf_meta.read(path, tuple(scalars))
    assert set(ours) == set(scalars)
    for key, value in scalars.items():
        assert ours[key] == pytest.approx(value) if isinstance(value, float) else ours[key] == value, key
    if texts:
        ids = (0, 1, 2, 17, len(texts) // 2, len(texts) - 1)
        got = gguf_meta.read(path, (), ids)
        assert [got[("token", i)] for i in ids] == [texts[i] for i in ids]


def test_the_chat_template_and_its_bos_eos_come_from_the_header() -> None:
    from bot.llm import chat_format

    scalars, texts = _reference(embedded_model_path())
    template = chat_format.template_for(embedded_model_path())
    assert template.text == scalars["tokenizer.chat_template"]
    assert (template.bos, template.eos) == (texts[scalars["tokenizer.ggml.bos_token_id"]],
                                            texts[scalars["tokenizer.ggml.eos_token_id"]])


@pytest.mark.parametrize("content", [b"", b"NOPE" + bytes(20), b"GGUF\x03\x00\x00\x00" + bytes(4)])
def test_a_file_that_is_not_a_whole_gguf_header_is_refused_clearly(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(content)
    with pytest.raises(gguf_meta.GGUFMetaError, match="not a GGUF file|truncated"):
        gguf_meta.read(bad, ("general.architecture",))


def test_a_truncated_vocabulary_is_refused_not_misread(tmp_path: Path) -> None:
    whole = embedded_model_path().read_bytes()[: 2_000_000]  # the header with the vocabulary cut in the middle
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(gguf_meta.GGUFMetaError, match="truncated"):
        gguf_meta.read(cut, ("general.architecture",), (5,))
