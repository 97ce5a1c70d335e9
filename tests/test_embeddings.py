"""The question embedder runs MiniLM on llama.cpp (no torch in the serving processes); transformers + torch,
which runs the sentence-transformers folder as its modules.json says, is the oracle it must match."""

import logging

import numpy as np
import pytest

from bot.errors import ModelNotFound
from bot.retrieval import embeddings
from bot.retrieval.embeddings import Embedder
from bot.retrieval.index import Doc, chunk_doc

LONG = ("Table: | 2019 | 2018 |\nRevenue | $1,452.4 | $1,146.2 |\n" +
        " ".join(f"The company recognised deferred tax item {i} under IFRS 9 in fiscal year {2000 + i % 20}."
                 for i in range(60)))
TEXTS = [
    "What is the notice period for terminating the agreement?",
    "Is this tweet bullish or bearish: $TSLA shares slump 7% after recall",
    "Café crème brûlée: naïve façade — Zürich, São Paulo, 東京 (accents and CJK)",
    "a",
    LONG,
]


@pytest.fixture(scope="module")
def llama_embedder():
    e = Embedder(backend="llama")
    assert e.backend == "llama"
    return e


@pytest.fixture(scope="module")
def torch_embedder():
    e = Embedder(backend="torch")
    assert e.backend == "torch"
    return e


def test_llama_cpp_vectors_match_transformers(llama_embedder, torch_embedder):
    assert llama_embedder.count_tokens(LONG) > llama_embedder.max_seq_length  # the cut is exercised
    a, b = llama_embedder.encode(TEXTS), torch_embedder.encode(TEXTS)
    assert a.shape == b.shape == (len(TEXTS), 384) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    cos = (a * b).sum(1)
    assert cos.min() >= 0.9999, cos
    # and they are not all alike: the oracle would notice a constant vector
    assert float(a[0] @ a[1]) < 0.5


def test_same_weights_same_fingerprint_so_indexes_are_shared(llama_embedder, torch_embedder):
    assert llama_embedder.fingerprint() == torch_embedder.fingerprint()


def test_texts_are_cut_where_transformers_truncates(llama_embedder, torch_embedder):
    # the window is max_seq_length tokens with [CLS] and [SEP]: what lies past it must not change the vector
    head = torch_embedder.tokenizer.encode(LONG, add_special_tokens=False)
    cut = LONG[: head.offsets[llama_embedder.max_seq_length - 3][1]]
    longer = LONG + " Entirely different trailing words about volcanoes."
    v = llama_embedder.encode([cut, LONG, longer])
    assert (v[0] @ v[1]) > 0.99999 and (v[1] @ v[2]) > 0.99999


def test_chunking_offsets_match_the_transformers_tokenizer(embedder):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(embedder.path), local_files_only=True)
    doc = Doc("long", "T", LONG)
    chunks = chunk_doc(doc, embedder.tokenizer, size=100, overlap=20)
    offsets = hf(LONG, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    assert len(chunks) > 3
    assert chunks[0].text == LONG[offsets[0][0]: offsets[99][1]].strip()
    assert chunks[1].text == LONG[offsets[80][0]: offsets[179][1]].strip()
    assert embedder.count_tokens(LONG) == len(offsets)


def test_falls_back_to_torch_when_the_gguf_cannot_be_made(monkeypatch, caplog):
    def broken(path):
        raise RuntimeError("convert_hf_to_gguf.py failed: no sdist")

    monkeypatch.setattr(embeddings, "convert_to_gguf", broken)
    with caplog.at_level(logging.WARNING):
        e = Embedder()
    assert e.backend == "torch" and "could not be made (convert_hf_to_gguf.py failed" in caplog.text
    with pytest.raises(ModelNotFound, match="could not run the embedding model with llama.cpp"):
        Embedder(backend="llama")


def test_unknown_backend_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("DOMAINBOT_EMBED_BACKEND", "onnx")
    with pytest.raises(ValueError, match="DOMAINBOT_EMBED_BACKEND must be one of auto, llama, torch, not 'onnx'"):
        Embedder()


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFound, match="embedding model folder not found"):
        Embedder(tmp_path / "nowhere")


def test_conversion_is_cached_and_atomic(monkeypatch, tmp_path):
    src = embeddings.default_embed_path()
    monkeypatch.setenv("DOMAINBOT_CACHE_DIR", str(tmp_path))
    runs: list[tuple] = []
    import bot.llm.convert as convert

    def fake_run(script, *args, prelude=""):  # writes what the converter would, without torch
        runs.append(args)
        out = args[args.index("--outfile") + 1]
        open(out, "wb").write(b"GGUF")

    monkeypatch.setattr(convert, "run_script", fake_run)
    first = embeddings.convert_to_gguf(src)
    second = embeddings.convert_to_gguf(src)
    assert first == second and first.parent == tmp_path / "embeddings" and len(runs) == 1
    assert not list(first.parent.glob("*.tmp"))

    def failing(script, *args, prelude=""):
        open(args[args.index("--outfile") + 1], "wb").write(b"half")
        raise RuntimeError("converter died")

    first.unlink()
    monkeypatch.setattr(convert, "run_script", failing)
    with pytest.raises(RuntimeError, match="converter died"):
        embeddings.convert_to_gguf(src)
    assert not list((tmp_path / "embeddings").iterdir())  # no half file is left to be loaded next time
