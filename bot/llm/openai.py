"""An OpenAI-compatible inference server as the LLM backend (`DOMAINBOT_LLM_BACKEND=openai`).

Same surface as `bot.llm.llama.Runtime` (generate, ensure_adapter, has_adapter, count_tokens, model_path, close), so
the answer path, citations, policy and logging do not know which backend runs. The server serves one base model
and one LoRA adapter per domain; a request names the adapter in one of two ways:

- `model` (vLLM `--lora-modules finance=…`, llama-cpp-python's `llama_cpp.server` with one alias per domain):
  the request's `model` field is the domain's alias ("finance" by default, "base" for the base model);
- `lora` (llama.cpp's own `llama-server --lora a.gguf --lora b.gguf`): the request carries
  `"lora": [{"id": n, "scale": 1.0}]`, where n is the adapter's position in the server's `/lora-adapters` list
  (found by matching the file path, so a server still running an older version is noticed).

Answers stream over SSE. Failures before the first token are retried with exponential backoff (the user has
seen nothing yet); a stream that breaks after it is not, because the user has already seen part of the answer.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bot.config import ConfigError, Settings
from bot.errors import BackendUnavailable, ModelNotFound, UserFacingError
from bot.llm.llama import AdapterMismatch, Generation, TokenCallback, resolve_model_path
from bot.prompt import approx_tokens

log = logging.getLogger(__name__)

# The embedded runtime samples with llama-cpp-python's create_chat_completion defaults; servers default
# differently (llama_cpp.server: repeat_penalty 1.1), and penalties change even greedy output. Pin them.
SAMPLING = {"top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0, "repetition_penalty": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0}
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 10.0
ADAPTER_FIELDS = ("model", "lora")


class BackendError(UserFacingError):
    """The inference server answered, but refused the request; the message says what it said."""


class _Transient(Exception):
    """A failure worth retrying (connection refused, 503, ...), with a reason for the final message."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


# ---------------------------------------------------------------------------------------------------------
# Options (environment or Settings.extra; the common ones, backend and URL, are Settings fields)

OPTION_ENV = {
    "alias_template": "DOMAINBOT_LLM_ALIAS",
    "base_alias": "DOMAINBOT_LLM_BASE_ALIAS",
    "adapter_field": "DOMAINBOT_LLM_ADAPTER_FIELD",
    "api_key": "DOMAINBOT_LLM_API_KEY",
    "connect_timeout_s": "DOMAINBOT_LLM_CONNECT_TIMEOUT_S",
    "read_timeout_s": "DOMAINBOT_LLM_TIMEOUT_S",
    "retries": "DOMAINBOT_LLM_RETRIES",
    "backoff_s": "DOMAINBOT_LLM_BACKOFF_S",
    "tokenizer": "DOMAINBOT_LLM_TOKENIZER",
}


@dataclass(frozen=True)
class ServerOptions:
    base_url: str  # ends with /v1
    alias_template: str = "{domain}"  # also {version}: "{domain}-{version}" makes a stale server fail loudly
    base_alias: str = "base"
    adapter_field: str = "model"  # "model" (vLLM, llama_cpp.server) or "lora" (llama.cpp's llama-server)
    api_key: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0  # between two chunks; the first one waits for the whole prompt
    retries: int = 3  # extra attempts before the first token
    backoff_s: float = 0.5  # first wait; doubles each retry
    tokenizer: str | None = None  # a GGUF for count_tokens, "estimate", or None: DOMAINBOT_MODEL / embedded

    @property
    def server_root(self) -> str:
        return self.base_url.removesuffix("/v1")

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerOptions:
        if not settings.llm_base_url:
            raise ConfigError(
                "DOMAINBOT_LLM_BACKEND=openai needs DOMAINBOT_LLM_BASE_URL, the server's address, "
                "e.g. http://127.0.0.1:8000/v1"
            )
        raw = {name: option_value(settings, env) for name, env in OPTION_ENV.items()}
        given = {k: v for k, v in raw.items() if v is not None}
        opts = cls(base_url=normalise_base_url(settings.llm_base_url), **_typed(given))
        if opts.adapter_field not in ADAPTER_FIELDS:
            raise ConfigError(f"DOMAINBOT_LLM_ADAPTER_FIELD must be one of {', '.join(ADAPTER_FIELDS)}, "
                              f"got {opts.adapter_field!r}")
        return opts


def option_value(settings: Settings, env: str) -> str | None:
    value = settings.extra.get(env) if settings.extra else None
    value = value if value not in (None, "") else os.environ.get(env)
    return value if value not in (None, "") else None


_CASTS: dict[str, Callable[[str], object]] = {
    "connect_timeout_s": float, "read_timeout_s": float, "backoff_s": float, "retries": int,
}


def _typed(raw: dict[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in raw.items():
        try:
            out[name] = _CASTS.get(name, str)(value)
        except ValueError:
            raise ConfigError(f"{OPTION_ENV[name]} must be a number, got {value!r}") from None
    return out


def normalise_base_url(url: str) -> str:
    """'http://h:8000', 'http://h:8000/' and 'http://h:8000/v1/' all mean 'http://h:8000/v1'."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"DOMAINBOT_LLM_BASE_URL must start with http:// or https://, got {url!r}")
    return url if url.endswith("/v1") else url + "/v1"


# ---------------------------------------------------------------------------------------------------------
# Pure helpers: adapter keys, request bodies, SSE parsing, backoff


def split_key(key: str | None) -> tuple[str | None, str | None]:
    """'finance:v2' -> ('finance', 'v2'); None -> (None, None) for the base model."""
    if key is None:
        return None, None
    domain, _, version = key.partition(":")
    return domain, version or None


def alias_for(key: str | None, template: str = "{domain}", base_alias: str = "base") -> str:
    domain, version = split_key(key)
    if domain is None:
        return base_alias
    return template.format(domain=domain, version=version or "")


def chat_body(messages: list[dict], *, model: str, max_tokens: int, temperature: float, seed: int,
              lora_id: int | None = None, lora_field: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
        "seed": seed, "stream": True, "stream_options": {"include_usage": True}, **SAMPLING,
    }
    if lora_field:  # llama-server: adapters not listed get scale 0 for this request
        body["lora"] = [] if lora_id is None else [{"id": lora_id, "scale": 1.0}]
    return body


def sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for comments (': ping'), blank lines and other fields."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


def backoff_delay(attempt: int, base_s: float, retry_after: float | None = None,
                  rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter (attempt 1 waits ~base, 2 ~2*base, ...); a server's Retry-After wins."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_RETRY_AFTER_S)
    return base_s * (2 ** (attempt - 1)) * (0.5 + rand() / 2)


def error_text(response: httpx.Response) -> str:
    """The server's own words from an error body (OpenAI's {"error": {"message"}}, or plain text)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:300]
    return str(err)[:300]


def lora_id_for(path: Path, served: list[dict]) -> int | None:
    """The id of the llama-server adapter whose file is `path` (same file, or same domain/adapters/vN/file)."""
    want = Path(path).resolve()
    tail = want.parts[-4:]
    for entry in served:
        theirs = Path(str(entry.get("path", "")))
        if theirs == want or (len(tail) == 4 and theirs.parts[-4:] == tail):
            return int(entry["id"])
    return None


class VocabTokenizer:
    """llama.cpp's tokenizer of a GGUF, loaded vocab-only (no weights, no context): what
    `Llama(vocab_only=True).tokenize(text, add_bos=False, special=False)` counts, without creating a context."""

    def __init__(self, path: Path):
        import llama_cpp

        self._lib = llama_cpp
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ValueError(f"llama.cpp could not read the vocabulary of {path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)

    def count(self, text: str) -> int:
        data = text.encode("utf-8", "replace")
        size = len(data) + 8  # never more tokens than bytes, plus room for specials
        buf = (self._lib.llama_token * size)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, size, False, False)
        return n if n >= 0 else -n  # negative: the count that did not fit (cannot happen with this size)

    def close(self) -> None:
        if self._model:
            self._lib.llama_model_free(self._model)
            self._model = None


# ---------------------------------------------------------------------------------------------------------
# The runtime


@dataclass
class _Stream:
    """What one streamed answer has produced so far."""

    t0: float
    parts: list[str] = field(default_factory=list)
    first_token_s: float = 0.0
    finish: str = "stop"
    usage: dict = field(default_factory=dict)

    @property
    def started(self) -> bool:
        return bool(self.parts)


class OpenAIRuntime:
    """Talks to one OpenAI-compatible server; thread-safe (the server batches concurrent requests)."""

    def __init__(self, settings: Settings, *, options: ServerOptions | None = None,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.options = options or ServerOptions.from_settings(settings)
        self._sleep = sleep
        o = self.options
        headers = {"Authorization": f"Bearer {o.api_key}"} if o.api_key else {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(o.read_timeout_s, connect=o.connect_timeout_s), headers=headers, transport=transport,
        )
        self._adapters: dict[str, tuple[str, int | None]] = {}  # key -> (model alias, llama-server lora id)
        self._tok_lock = threading.Lock()
        self._vocab, self.model_path = self._load_tokenizer()
        self._closed = False

    # -------- tokens

    def _load_tokenizer(self) -> tuple[Any, Path]:
        """A vocab-only llama.cpp model of the same GGUF (measured: 0.35 s and 38 MB for the embedded model)."""
        choice = self.options.tokenizer
        label = Path(f"{self.options.base_alias} @ {httpx.URL(self.options.server_root).netloc.decode()}")
        if choice == "estimate":
            return None, label
        try:
            path = Path(choice) if choice else resolve_model_path(self.settings)
            if not path.is_file():
                raise ModelNotFound(f"tokenizer GGUF not found: {path} (check DOMAINBOT_LLM_TOKENIZER)")
            return VocabTokenizer(path), path
        except (ModelNotFound, ValueError, OSError) as exc:
            log.warning("counting tokens by estimate (no local tokenizer: %s)", exc)
            return None, label

    def count_tokens(self, text: str) -> int:
        if self._vocab is None:
            return approx_tokens(text)  # no local tokenizer known
        with self._tok_lock:
            return self._vocab.count(text)

    # -------- adapters

    def ensure_adapter(self, key: str, path: Path) -> None:
        """Check the server serves this domain's adapter; AdapterMismatch (answer on the base) if it doesn't."""
        if key in self._adapters:
            return
        alias = alias_for(key, self.options.alias_template, self.options.base_alias)
        if self.options.adapter_field == "lora":
            lora_id = lora_id_for(path, self._get_json(self.options.server_root + "/lora-adapters"))
            if lora_id is None:
                raise AdapterMismatch(self._not_served(key, f"no --lora adapter with file {Path(path).name} "
                                                            f"of {'/'.join(Path(path).parts[-4:-1])}"))
            self._adapters[key] = (alias, lora_id)
            return
        served = [m.get("id") for m in self._get_json(self.options.base_url + "/models").get("data", [])]
        if alias not in served:
            raise AdapterMismatch(self._not_served(key, f"no model {alias!r} (it serves: {', '.join(map(str, served))})"))
        self._adapters[key] = (alias, None)

    def _not_served(self, key: str, what: str) -> str:
        domain, _ = split_key(key)
        return (f"the inference server at {self.options.server_root} has {what}. Restart it with the flags from "
                f"`domainbot adapters export {domain}`")

    def has_adapter(self, key: str) -> bool:
        return key in self._adapters

    # -------- generation

    def generate(self, messages: list[dict], *, adapter: str | None = None, max_tokens: int | None = None,
                 temperature: float | None = None, on_token: TokenCallback | None = None) -> Generation:
        if adapter is not None and adapter not in self._adapters:
            raise AdapterMismatch(f"adapter {adapter!r} is not loaded")
        alias, lora_id = self._adapters[adapter] if adapter else (self.options.base_alias, None)
        body = chat_body(messages, model=alias, max_tokens=max_tokens or self.settings.max_tokens,
                         temperature=self.settings.temperature if temperature is None else temperature,
                         seed=self.settings.seed, lora_id=lora_id, lora_field=self.options.adapter_field == "lora")
        stream = _Stream(time.perf_counter())
        self._with_retries(lambda: self._stream_once(body, stream, on_token), stream)
        text = "".join(stream.parts)
        completion = int(stream.usage.get("completion_tokens") or (self.count_tokens(text) if text else 0))
        prompt = int(stream.usage.get("prompt_tokens") or self._estimate_prompt(messages))
        return Generation(text, prompt, completion, stream.first_token_s, time.perf_counter() - stream.t0,
                          stream.finish)

    def _estimate_prompt(self, messages: list[dict]) -> int:
        return sum(self.count_tokens(str(m.get("content", ""))) + 4 for m in messages)  # ~4 template tokens each

    def _with_retries(self, attempt_fn: Callable[[], None], stream: _Stream) -> None:
        attempts = 1 + max(0, self.options.retries)
        for attempt in range(1, attempts + 1):
            try:
                attempt_fn()
                return
            except _Transient as exc:
                if stream.started:  # the user saw part of the answer: a retry would repeat it
                    raise BackendUnavailable(
                        f"the inference server at {self.options.server_root} stopped in the middle of the answer "
                        f"({exc.reason}). Please ask again."
                    ) from None
                if attempt == attempts:
                    raise BackendUnavailable(self._down_message(exc.reason, attempts, stream.t0)) from None
                delay = backoff_delay(attempt, self.options.backoff_s, exc.retry_after)
                log.warning("inference server: %s; retry %d/%d in %.1fs", exc.reason, attempt, attempts - 1, delay)
                self._sleep(delay)

    def _down_message(self, reason: str, attempts: int, t0: float) -> str:
        return (
            f"the inference server at {self.options.server_root} is not reachable ({reason}; tried {attempts} "
            f"times over {time.perf_counter() - t0:.1f}s). Start it (README: \"Inference backends\"), or set "
            "DOMAINBOT_LLM_BACKEND=embedded to answer in-process."
        )

    @contextmanager
    def _transient_transport(self) -> Iterator[None]:
        """A timeout or a dropped connection is worth a retry; say which, in words."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise _Transient(f"no reply within {self._timeout_of(exc):.0f}s") from None
        except httpx.TransportError as exc:  # refused, reset, DNS, a stream cut short
            raise _Transient(_transport_reason(exc)) from None

    def _stream_once(self, body: dict, stream: _Stream, on_token: TokenCallback | None) -> None:
        with self._transient_transport():
            try:
                with self._client.stream("POST", self.options.base_url + "/chat/completions", json=body) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        raise self._http_error(resp, body["model"])
                    for line in resp.iter_lines():
                        data = sse_data(line)
                        if data is None:
                            continue
                        if data == "[DONE]":
                            return
                        self._take_chunk(json.loads(data), stream, on_token)
            except json.JSONDecodeError:
                raise _Transient("it sent a malformed event") from None

    def _timeout_of(self, exc: httpx.TimeoutException) -> float:
        connect = isinstance(exc, httpx.ConnectTimeout)
        return self.options.connect_timeout_s if connect else self.options.read_timeout_s

    @staticmethod
    def _take_chunk(chunk: dict, stream: _Stream, on_token: TokenCallback | None) -> None:
        if "error" in chunk:  # some servers report a failure inside the stream
            raise _Transient(f"it reported: {chunk['error']}")
        if chunk.get("usage"):
            stream.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                stream.finish = choice["finish_reason"]
            piece = (choice.get("delta") or {}).get("content") or ""
            if not piece:
                continue
            if not stream.parts:
                stream.first_token_s = time.perf_counter() - stream.t0
            stream.parts.append(piece)
            if on_token:
                on_token(piece)

    def _http_error(self, resp: httpx.Response, model: str) -> Exception:
        said = error_text(resp)
        code = resp.status_code
        where = self.options.server_root
        if code in RETRY_STATUS:
            return _Transient(f"HTTP {code}: {said}", _retry_after(resp))
        if code in (401, 403):
            return BackendError(f"the inference server at {where} refused the API key (HTTP {code}); "
                                "set DOMAINBOT_LLM_API_KEY")
        if code == 404 and "model" in said.lower():
            return AdapterMismatch(f"the inference server at {where} does not serve model {model!r}: {said}")
        if "context" in said.lower() and ("length" in said.lower() or "window" in said.lower()):
            return UserFacingError(f"the question and its context are too long for the model ({said})")
        return BackendError(f"the inference server at {where} rejected the request (HTTP {code}: {said})")

    def _get_json(self, url: str) -> Any:
        """GET with the same retries as generation; BackendUnavailable when the server is down."""
        out: list[Any] = []
        stream = _Stream(time.perf_counter())

        def once() -> None:
            with self._transient_transport():
                resp = self._client.get(url)
            if resp.status_code >= 400:
                raise self._http_error(resp, "")
            try:
                out.append(resp.json())
            except ValueError:
                raise BackendError(f"the inference server answered GET {url} with something that is not JSON; "
                                   "is DOMAINBOT_LLM_BASE_URL the server's address?") from None

        self._with_retries(once, stream)
        return out[0]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.close()
        if self._vocab is not None:
            self._vocab.close()


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("Retry-After")
    try:
        return float(raw) if raw else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _transport_reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        return "connection refused" if "refused" in text.lower() else f"cannot connect: {text}"
    return f"{type(exc).__name__}: {text}"

