"""`domainbot adapters export [domain|all] --format peft|gguf [--target ...]`: how to serve the live adapters.

One inference server serves the base model and every domain's live adapter; Domainbot then runs with
`DOMAINBOT_LLM_BACKEND=openai` (bot/llm/openai.py). Each target reads a different adapter format:

| target            | format | how a request picks the adapter                                  |
|-------------------|--------|------------------------------------------------------------------|
| vllm              | peft   | `model` = the `--lora-modules` name                               |
| llama-server      | gguf   | `lora: [{id, scale}]` (`DOMAINBOT_LLM_ADAPTER_FIELD=lora`)        |
| llama-cpp-python  | gguf   | `model` = a config alias, one `Llama(lora_path=...)` per alias    |

The artifact (a shell command, or the llama_cpp.server config JSON) goes to stdout so it can be redirected to a
file; the instructions go to stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot import adapters as adapter_store
from bot.config import Settings
from bot.domains import Domain, discover
from bot.errors import UserFacingError
from bot.llm.openai import OPTION_ENV, alias_for, option_value

PEFT_DIR = "peft"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM accepts
DEFAULT_PORT = 8000


class ExportError(UserFacingError):
    """The live adapters cannot be served by that target as they are; the message says what to do."""


@dataclass(frozen=True)
class Live:
    """One domain's live adapter, as a server will address it."""

    domain: str
    version: str
    folder: Path
    alias: str

    @property
    def gguf(self) -> Path:
        return self.folder / adapter_store.ADAPTER_FILE

    @property
    def peft(self) -> Path:
        return self.folder / PEFT_DIR

    @property
    def has_peft(self) -> bool:
        return all((self.peft / name).is_file() for name in PEFT_FILES)

    @property
    def rank(self) -> int:
        try:
            return int(json.loads((self.peft / "adapter_config.json").read_text())["r"])
        except (OSError, ValueError, KeyError):
            return 0


@dataclass(frozen=True)
class Plan:
    """Everything a target needs: the live adapters, the base model and how Domainbot names things."""

    adapters: list[Live]
    on_base: list[str]  # domains with no live adapter: they use the base alias
    base_gguf: Path
    base_alias: str
    port: int
    n_ctx: int
    n_gpu_layers: int
    n_threads: int
    seed: int
    base_hf: str = "BASE_HF_DIR"


@dataclass
class Export:
    artifact: str  # stdout
    notes: list[str] = field(default_factory=list)  # stderr


# ---------------------------------------------------------------------------------------------------------
# Collecting the live adapters


def live_adapters(domains: list[Domain], alias_template: str, base_alias: str) -> tuple[list[Live], list[str]]:
    found, on_base = [], []
    for d in domains:
        version = adapter_store.current(d.adapters_dir)
        if version is None:
            on_base.append(d.name)
            continue
        key = f"{d.name}:{version.version}"
        found.append(Live(d.name, version.version, version.path.resolve(), alias_for(key, alias_template, base_alias)))
    return found, on_base


def make_plan(settings: Settings, which: str, *, port: int = DEFAULT_PORT, base_hf: str | None = None) -> Plan:
    from bot.llm.llama import resolve_model_path

    discovery = discover(settings.domains_dir, settings.domain_allowlist)
    if which == "all":
        domains = list(discovery.domains.values())
    elif which in discovery.domains:
        domains = [discovery.domains[which]]
    else:
        known = ", ".join(discovery.domains) or "none"
        raise ExportError(f"unknown domain {which!r}; known: {known} (or 'all')")
    template = option_value(settings, OPTION_ENV["alias_template"]) or "{domain}"
    base_alias = option_value(settings, OPTION_ENV["base_alias"]) or "base"
    adapters, on_base = live_adapters(domains, template, base_alias)
    return Plan(adapters, on_base, resolve_model_path(settings).resolve(), base_alias, port, settings.n_ctx,
                settings.n_gpu_layers, settings.n_threads, settings.seed, base_hf or "BASE_HF_DIR")


# ---------------------------------------------------------------------------------------------------------
# Targets (pure: Plan -> Export)


def _env_lines(plan: Plan, *extra: str) -> list[str]:
    lines = ["Point Domainbot at it (.env or the environment):",
             "  DOMAINBOT_LLM_BACKEND=openai",
             f"  DOMAINBOT_LLM_BASE_URL=http://127.0.0.1:{plan.port}/v1"
             "   (a server on another host: bind it to 0.0.0.0 and put that host's address here)"]
    lines += [f"  {e}" for e in extra]
    if plan.on_base:
        lines.append(f"Domains on the base model (no live adapter): {', '.join(plan.on_base)}; "
                     f"they use the {plan.base_alias!r} model.")
    return lines


def _shell(words: list[str]) -> str:
    """One command, one flag per line, ready to paste."""
    out, line = [], []
    for w in words:
        if w.startswith("-") and line:
            out.append(" ".join(line))
            line = []
        line.append(shlex.quote(w))
    out.append(" ".join(line))
    return " \\\n  ".join(out)


def vllm_rank(ranks: list[int]) -> int:
    need = max(ranks, default=8)
    return next((r for r in VLLM_LORA_RANKS if r >= need), need)


def for_vllm(plan: Plan) -> Export:
    missing = [a for a in plan.adapters if not a.has_peft]
    if missing:
        names = ", ".join(f"{a.domain} {a.version}" for a in missing)
        raise ExportError(
            f"vLLM loads PEFT adapters, and these live versions have no {PEFT_DIR}/ folder: {names}. "
            "Write them from adapter.gguf with `--write-peft` on this command, or retrain without --no-peft."
        )
    words = ["vllm", "serve", plan.base_hf, "--served-model-name", plan.base_alias, "--port", str(plan.port),
             "--max-model-len", str(plan.n_ctx), "--seed", str(plan.seed)]
    if plan.adapters:
        words += ["--enable-lora", "--max-loras", str(len(plan.adapters)),
                  "--max-lora-rank", str(vllm_rank([a.rank for a in plan.adapters])), "--lora-modules"]
        words += [f"{a.alias}={a.peft}" for a in plan.adapters]
    notes = [
        f"{plan.base_hf}: the Hugging Face weights the adapters were trained on, i.e. {plan.base_gguf.name} "
        "dequantized; write them with `--write-base DIR` on this command. vLLM runs on a GPU and batches "
        "requests from every replica.",
        *_env_lines(plan),
    ]
    return Export(_shell(words), notes)


def for_llama_server(plan: Plan) -> Export:
    words = ["llama-server", "-m", str(plan.base_gguf), "--alias", plan.base_alias, "--host", "127.0.0.1",
             "--port", str(plan.port), "-c", str(plan.n_ctx), "-ngl", str(plan.n_gpu_layers if plan.n_gpu_layers >= 0
                                                                               else 999)]
    for a in plan.adapters:
        words += ["--lora", str(a.gguf)]
    if plan.adapters:
        words.append("--lora-init-without-apply")  # scale 0 until a request names the adapter
    order = ", ".join(f"{i}={a.domain} {a.version}" for i, a in enumerate(plan.adapters))
    notes = [
        f"Adapter ids (the order of --lora): {order or 'none'}. Domainbot finds each id in GET /lora-adapters "
        "by its file path, so a server still running an older version is noticed (that domain then answers on "
        "the base model, with a note).",
        *_env_lines(plan, "DOMAINBOT_LLM_ADAPTER_FIELD=lora"),
    ]
    return Export(_shell(words), notes)


def llama_cpp_python_config(plan: Plan) -> dict:
    common: dict = {"model": str(plan.base_gguf), "n_ctx": plan.n_ctx, "n_gpu_layers": plan.n_gpu_layers,
                    "seed": plan.seed, "logits_all": False, "use_mlock": False, "verbose": False}
    if plan.n_threads:
        common["n_threads"] = plan.n_threads
    models = [{**common, "model_alias": plan.base_alias}]
    models += [{**common, "model_alias": a.alias, "lora_path": str(a.gguf)} for a in plan.adapters]
    return {"host": "127.0.0.1", "port": plan.port, "models": models}


def for_llama_cpp_python(plan: Plan) -> Export:
    config = json.dumps(llama_cpp_python_config(plan), indent=2)
    notes = [
        "Save this JSON (e.g. `> llama_server.json`), then run, with the server extra installed "
        "(`pip install 'domainbot[server]'`):",
        "  python -m llama_cpp.server --config_file llama_server.json",
        "llama_cpp.server keeps one model loaded and reloads it when a request names another alias, so "
        "answers from alternating domains pay a model load each (about 0.5 s for the embedded model); "
        "an unknown alias silently falls back to the first model, which is why Domainbot checks "
        "GET /v1/models before it uses an alias.",
        *_env_lines(plan),
    ]
    return Export(config, notes)


@dataclass(frozen=True)
class Target:
    format: str
    render: Callable[[Plan], Export]


TARGETS: dict[str, Target] = {
    "vllm": Target("peft", for_vllm),
    "llama-server": Target("gguf", for_llama_server),
    "llama-cpp-python": Target("gguf", for_llama_cpp_python),
}
DEFAULT_TARGET = {"peft": "vllm", "gguf": "llama-server"}


def choose_target(fmt: str | None, target: str | None) -> str:
    if target is None and fmt is None:
        raise ExportError("say which adapter format to serve: --format peft (vLLM) or --format gguf (llama.cpp)")
    target = target or DEFAULT_TARGET[fmt]
    if fmt is not None and TARGETS[target].format != fmt:
        raise ExportError(f"{target} serves {TARGETS[target].format} adapters, not {fmt}: "
                          f"use --format {TARGETS[target].format}")
    return target


# ---------------------------------------------------------------------------------------------------------
# Writing what vLLM needs (heavy: loads the base with transformers, ~20 s and ~1 GB)


def write_peft(plan: Plan) -> list[Path]:
    """Rebuild `vN/peft/` from `vN/adapter.gguf` for every live version that lacks it."""
    from training.finetune import load_base
    from training.gguf_lora import peft_from_gguf

    written = []
    for a in plan.adapters:
        if a.has_peft:
            continue
        base, _ = load_base(plan.base_gguf)
        model = peft_from_gguf(base, a.gguf)
        staging = a.folder / ".peft-tmp"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            model.save_pretrained(str(staging))
        finally:
            model.unload()  # take the LoRA layers out of the cached base again, even when saving failed
        shutil.rmtree(a.peft, ignore_errors=True)  # an incomplete folder from an earlier attempt
        staging.rename(a.peft)
        written.append(a.peft)
    return written


def write_base(plan: Plan, out: Path) -> Path:
    """The served GGUF dequantized to a Hugging Face folder (weights + tokenizer with its chat template)."""
    from training.finetune import load_base

    model, tokenizer = load_base(plan.base_gguf)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


# ---------------------------------------------------------------------------------------------------------
# CLI


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    target = choose_target(args.format, args.target)
    plan = make_plan(settings, args.domain, port=args.port, base_hf=str(args.write_base) if args.write_base else None)
    if args.write_peft:
        for path in write_peft(plan):
            print(f"wrote {path}", file=sys.stderr)
    if args.write_base:
        print(f"wrote {write_base(plan, args.write_base)}", file=sys.stderr)
    result = TARGETS[target].render(plan)
    print(result.artifact)
    print("\n".join(["", *result.notes]), file=sys.stderr)
    return 0


def register_export(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `export` to a subparsers action (the `adapters` command's, or the top level's)."""
    p = sub.add_parser("export", help="print the inference-server command (or config) that serves the live adapters")
    _export_arguments(p)
    return p


def export_main(argv: list[str], settings: Settings) -> int:
    """`domainbot adapters export ARGS...` for an `adapters` command that keeps `adapters <domain>` as well."""
    parser = argparse.ArgumentParser(prog="domainbot adapters export",
                                     description="print the inference-server command (or config) for the live adapters")
    _export_arguments(parser)
    args = parser.parse_args(argv)
    return args.func(args, settings)


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", nargs="?", default="all", help="one domain, or all (default)")
    p.add_argument("--format", choices=tuple(DEFAULT_TARGET), help="peft (vLLM) or gguf (llama.cpp servers)")
    p.add_argument("--target", choices=tuple(TARGETS),
                   help="server: vllm (peft), llama-server or llama-cpp-python (gguf); default by format")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the server's port (default {DEFAULT_PORT})")
    p.add_argument("--write-peft", action="store_true",
                   help="write missing vN/peft/ folders from adapter.gguf first (loads the base: ~20 s)")
    p.add_argument("--write-base", type=Path, metavar="DIR",
                   help="write the base model as a Hugging Face folder for vLLM (loads the base: ~20 s)")
    p.set_defaults(func=cmd_export)
