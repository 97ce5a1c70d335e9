"""Domain plugin discovery: each `domains/<name>/domain.toml` parses into a `Domain`.

A broken folder is reported by name with its reason; the others still load.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bot.errors import UserFacingError  # noqa: E402

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class ManifestError(ValueError):
    """A domain.toml that cannot be used; the message starts with the folder name."""


@dataclass(frozen=True)
class Rule:
    """A policy rule: when `pattern` matches the question, reply with `reply` instead of answering."""

    pattern: re.Pattern[str]
    reply: str
    kind: str = "refuse"  # refuse | redirect (e.g. an emergency)


@dataclass(frozen=True)
class Domain:
    name: str
    description: str
    examples: tuple[str, ...]
    system_prompt: str
    disclaimer: str
    path: Path
    top_k: int = 4
    min_score: float = 0.2
    channels: tuple[str, ...] = ("*",)
    rules: tuple[Rule, ...] = ()
    owner: str = ""
    suggested_prompts: tuple[str, ...] = ()
    tasks: dict[str, dict] = field(default_factory=dict)
    label: str = ""  # display name, e.g. "Legal"
    docs_url: str = ""  # where the files of docs/ are published; citations link to <docs_url>/<file>#page=N

    @property
    def docs_dir(self) -> Path:
        return self.path / "docs"

    @property
    def adapters_dir(self) -> Path:
        return self.path / "adapters"

    @property
    def train_file(self) -> Path:
        return self.path / "train.jsonl"

    @property
    def eval_file(self) -> Path:
        return self.path / "eval.jsonl"

    @property
    def title(self) -> str:
        return self.label or self.name.capitalize()


@dataclass
class Discovery:
    domains: dict[str, Domain]
    errors: dict[str, str]  # folder name -> reason

    def get(self, name: str) -> Domain:
        try:
            return self.domains[name]
        except KeyError:
            known = ", ".join(sorted(self.domains)) or "none"
            raise UnknownDomain(f"unknown domain {name!r}; known domains: {known}") from None


class UnknownDomain(UserFacingError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def _req_str(data: dict, key: str, folder: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{folder}: `{key}` must be a non-empty string")
    return value.strip()


def _str_list(data: dict, key: str, folder: str, default: Iterable[str] = ()) -> tuple[str, ...]:
    value = data.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ManifestError(f"{folder}: `{key}` must be a list of strings")
    return tuple(x.strip() for x in value if x.strip())


def _rules(data: dict, folder: str) -> tuple[Rule, ...]:
    raw = data.get("rules", [])
    if not isinstance(raw, list):
        raise ManifestError(f"{folder}: `rules` must be an array of tables ([[rules]])")
    rules = []
    for i, item in enumerate(raw, 1):
        if not isinstance(item, dict) or "pattern" not in item or "reply" not in item:
            raise ManifestError(f"{folder}: rules #{i} needs `pattern` and `reply`")
        kind = item.get("kind", "refuse")
        if kind not in ("refuse", "redirect"):
            raise ManifestError(f"{folder}: rules #{i} kind must be 'refuse' or 'redirect', got {kind!r}")
        try:
            pattern = re.compile(item["pattern"], re.IGNORECASE)
        except re.error as exc:
            raise ManifestError(f"{folder}: rules #{i} pattern is not a valid regex: {exc}") from exc
        rules.append(Rule(pattern=pattern, reply=str(item["reply"]).strip(), kind=kind))
    return tuple(rules)


def _tasks(data: dict, folder: str) -> dict[str, dict]:
    tasks = data.get("tasks", {})
    if not isinstance(tasks, dict) or not all(isinstance(spec, dict) for spec in tasks.values()):
        raise ManifestError(f"{folder}: `tasks` must be a table of tables ([tasks.<name>])")
    for task, spec in tasks.items():
        for key in ("labels", "asked_by"):  # asked_by: phrases that ask for a label ("sentiment")
            value = spec.get(key, [])
            if not isinstance(value, list) or not all(isinstance(x, str) and x.strip() for x in value):
                raise ManifestError(f"{folder}: tasks.{task}.{key} must be a list of non-empty strings")
    return tasks


def parse_manifest(folder: Path) -> Domain:
    """Parse `folder/domain.toml`. Raises ManifestError naming the folder on any problem."""
    name = folder.name
    manifest = folder / "domain.toml"
    if not manifest.is_file():
        raise ManifestError(f"{name}: no domain.toml in {folder}")
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{name}: domain.toml is not valid TOML: {exc}") from exc
    declared = data.get("name", name)
    if declared != name:
        raise ManifestError(f"{name}: `name` is {declared!r} but the folder is {name!r}; they must match")
    if not NAME_RE.match(name):
        raise ManifestError(f"{name}: the folder name must be lowercase letters, digits, '-' or '_'")
    top_k = data.get("top_k", 4)
    if not isinstance(top_k, int) or not 1 <= top_k <= 20:
        raise ManifestError(f"{name}: `top_k` must be an integer from 1 to 20, got {top_k!r}")
    min_score = data.get("min_score", 0.2)
    if not isinstance(min_score, int | float):
        raise ManifestError(f"{name}: `min_score` must be a number")
    examples = _str_list(data, "examples", name)
    if len(examples) < 3:
        raise ManifestError(f"{name}: give at least 3 `examples` questions so the router can learn the domain")
    tasks = _tasks(data, name)
    return Domain(
        name=name,
        label=str(data.get("label", "")),
        description=_req_str(data, "description", name),
        examples=examples,
        system_prompt=_req_str(data, "system_prompt", name),
        disclaimer=str(data.get("disclaimer", "")).strip(),
        path=folder.resolve(),
        top_k=top_k,
        min_score=float(min_score),
        channels=_str_list(data, "channels", name, default=["*"]) or ("*",),
        rules=_rules(data, name),
        owner=str(data.get("owner", "")),
        suggested_prompts=_str_list(data, "suggested_prompts", name, default=list(examples[:3])),
        tasks=tasks,
        docs_url=_docs_url(data, name),
    )


def _docs_url(data: dict, folder: str) -> str:
    value = data.get("docs_url", "")
    if not isinstance(value, str) or (value.strip() and not re.match(r"^https?://[^\s/]+", value.strip())):
        raise ManifestError(f"{folder}: `docs_url` must be an http(s) URL such as \"https://wiki.example.com/legal\"")
    return value.strip()


def plugin_folders(domains_dir: Path) -> list[Path]:
    """The folders that may hold a plugin: hidden ones and `_template`-style ones (`_` first) are skipped."""
    if not domains_dir.is_dir():
        return []
    return sorted(p for p in domains_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def discover(domains_dir: Path, allowlist: Iterable[str] = ()) -> Discovery:
    """Load every `domains_dir/*/domain.toml`; collect errors per folder instead of raising."""
    allow = set(allowlist)
    found: dict[str, Domain] = {}
    errors: dict[str, str] = {}
    if not domains_dir.is_dir():
        return Discovery(found, {"<domains>": f"domains folder not found: {domains_dir}"})
    for folder in plugin_folders(domains_dir):
        if allow and folder.name not in allow:
            continue
        if not (folder / "domain.toml").exists():
            continue  # not a plugin folder
        try:
            found[folder.name] = parse_manifest(folder)
        except ManifestError as exc:
            errors[folder.name] = str(exc)
    for missing in sorted(allow - set(found) - set(errors)):
        errors[missing] = f"{missing}: listed in DOMAINBOT_DOMAINS but no such domain folder"
    return Discovery(found, errors)
