"""Chat formatting in our hands: the GGUF's own chat template, rendered with jinja2 as llama.cpp/HF do.

Serving renders the prompt text here and generates from it, and training formats its examples with the
same `template_for` + `render`, so both see identical turns. A GGUF without `tokenizer.chat_template`
gets a NAMED fallback chosen by its architecture (gemma3 -> "gemma", anything else -> "chatml").
Pure: reads GGUF metadata (no tensors), never loads a model.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Gemma has no system turn: like the HF gemma3 template, the system text opens the first user turn.
GEMMA = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\n\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set rest = messages %}{% endif %}"
    "{% for message in rest %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (system if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
FALLBACKS: dict[str, str] = {"chatml": CHATML, "gemma": GEMMA}
# The text that closes an assistant turn, per fallback (a GGUF template closes with its eos token).
TURN_END: dict[str, str] = {"chatml": "<|im_end|>", "gemma": "<end_of_turn>"}


class ChatFormatError(ValueError):
    """The model file's chat template cannot be read or rendered."""


@dataclass(frozen=True)
class ChatTemplate:
    name: str  # "gguf" for the file's own template, else the fallback's name
    source: Literal["gguf", "fallback", "tokenizer"]  # tokenizer: an HF dir's (training-only bases)
    text: str  # the jinja2 source
    bos: str
    eos: str

    def stops(self) -> list[str]:
        """Strings that end the assistant's turn."""
        out = [s for s in (self.eos, TURN_END.get(self.name, "")) if s]
        return list(dict.fromkeys(out))


def fallback_name(architecture: str | None) -> str:
    return "gemma" if (architecture or "").startswith("gemma") else "chatml"


def template_for(model_path: Path | str) -> ChatTemplate:
    """The chat template of a GGUF model file (cached per file identity)."""
    path = Path(model_path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ChatFormatError(f"model file not found: {path}") from exc
    return _template_for(str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _template_for(path: str, _mtime_ns: int, _size: int) -> ChatTemplate:
    from bot.llm import gguf_meta

    keys = ("general.architecture", "tokenizer.chat_template", "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id")
    try:
        meta = gguf_meta.read(path, keys)
        ids = tuple(v for v in (meta.get(keys[2]), meta.get(keys[3])) if isinstance(v, int))
        tokens = gguf_meta.read(path, token_ids=ids)
    except (gguf_meta.GGUFMetaError, OSError) as exc:
        raise ChatFormatError(f"{path} is not a readable GGUF file: {exc}") from exc
    bos, eos = (str(tokens.get(("token", meta.get(k)), "")) for k in keys[2:])
    text = meta.get("tokenizer.chat_template")
    if isinstance(text, str) and text.strip():
        return ChatTemplate("gguf", "gguf", text, bos, eos)
    arch = meta.get("general.architecture")
    return fallback(arch if isinstance(arch, str) else None, bos, eos)


def fallback(architecture: str | None, bos: str, eos: str) -> ChatTemplate:
    """The named template for a model without one of its own; it closes turns with its TURN_END when no eos."""
    name = fallback_name(architecture)
    return ChatTemplate(name, "fallback", FALLBACKS[name], bos, eos or TURN_END[name])


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """HF's `{% generation %}` tag marks trainable spans; rendering passes its body through."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


@functools.lru_cache(maxsize=16)
def _compile(text: str) -> jinja2.Template:
    # The same environment llama-cpp-python and transformers use for chat templates.
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: (
        json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    )
    try:
        return env.from_string(text)
    except jinja2.TemplateError as exc:
        raise ChatFormatError(f"the chat template does not parse: {exc}") from exc


def _raise(message: str) -> None:
    raise ChatFormatError(f"the chat template refused these messages: {message}")


def render(template: ChatTemplate, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The prompt text for `messages` ({"role", "content"} dicts)."""
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ChatFormatError(f"a chat message needs string 'role' and 'content': {m!r}")
    try:
        return _compile(template.text).render(
            messages=list(messages),
            bos_token=template.bos,
            eos_token=template.eos,
            add_generation_prompt=add_generation_prompt,
            raise_exception=_raise,
        )
    except jinja2.TemplateError as exc:
        raise ChatFormatError(f"the chat template failed to render: {exc}") from exc
