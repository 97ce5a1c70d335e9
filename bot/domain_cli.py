"""`domainbot new-domain NAME [--title TITLE]`: a new plugin folder from `domains/_template/`, checked.

The copy is staged under a hidden name and renamed into place, so a running bot's live reload never sees a
half-copied folder; then the same checks as `domainbot domains` run, and the next steps are printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bot.config import ROOT, Settings
from bot.domains import NAME_RE, ManifestError, parse_manifest
from bot.errors import UserFacingError

TEMPLATE = "_template"
PLACEHOLDERS = ("{{name}}", "{{title}}")
TEXT_SUFFIXES = (".toml", ".md", ".txt", ".jsonl")
MAX_TITLE = 60


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UserFacingError(
            f"{name!r} is not a valid domain name: use 1-32 lowercase letters, digits, '-' or '_', starting with a "
            "letter (for example: hr, it-help, travel_desk)"
        )
    return name


def check_title(title: str) -> str:
    title = title.strip()
    if not title or len(title) > MAX_TITLE or not title.isprintable():
        raise UserFacingError(f"--title must be 1-{MAX_TITLE} printable characters on one line, got {title!r}")
    return title


def template_dir(settings: Settings) -> Path:
    """The domains folder's own `_template/` if it has one, else the one shipped with Domainbot."""
    for candidate in (settings.domains_dir / TEMPLATE, ROOT / "domains" / TEMPLATE):
        if (candidate / "domain.toml").is_file():
            return candidate
    raise UserFacingError(f"no domain template: expected {settings.domains_dir / TEMPLATE}/domain.toml")


def _toml_text(value: str) -> str:
    """`value` escaped for a TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


def fill(folder: Path, name: str, title: str) -> None:
    """Replace the template's placeholders in every text file of `folder`."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES):
        text = path.read_text(encoding="utf-8")
        if not any(p in text for p in PLACEHOLDERS):
            continue
        shown = _toml_text(title) if path.suffix == ".toml" else title
        path.write_text(text.replace("{{name}}", name).replace("{{title}}", shown), encoding="utf-8")


def create(settings: Settings, name: str, title: str | None = None) -> Path:
    """Copy the template to `domains_dir/name` with its name and title filled in; refuse a bad or taken name."""
    check_name(name)
    title = check_title(title if title is not None else name.replace("-", " ").replace("_", " ").capitalize())
    target = settings.domains_dir / name
    if target.exists():
        raise UserFacingError(f"{target} already exists: pick another name, or edit that folder")
    template = template_dir(settings)
    settings.domains_dir.mkdir(parents=True, exist_ok=True)
    stage = settings.domains_dir / f".{name}.new"  # hidden: discovery and live reload skip it until the rename
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(template, stage, ignore=shutil.ignore_patterns("adapters", "__pycache__", ".*"))
    try:
        fill(stage, name, title)
        stage.rename(target)
    except (OSError, UnicodeDecodeError) as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise UserFacingError(f"could not create {target}: {exc}") from exc
    try:
        parse_manifest(target)  # a custom template (domains_dir/_template) may not give a manifest that loads
    except ManifestError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise UserFacingError(f"the template {template} does not give a domain that loads: {exc}") from exc
    return target


NEXT_STEPS = """
Next steps (the guide is domains/README.md):
  1. Edit {folder}/domain.toml: description and 10-20 real `examples` (the router learns from them), the
     system prompt, the disclaimer, channels and policy rules.
  2. Put your documents in {folder}/docs/ and delete getting-started.md.
  3. Fill in {folder}/README.md: owner, scope, where the data comes from and its licence.
  4. domainbot domains                      check it loads
     domainbot index {name}               build its index (a running bot does this by itself)
     domainbot route "a typical question"   check the router picks {name}
     domainbot ask "a typical question" --domain {name}"""


def cmd_new_domain(args: argparse.Namespace, settings: Settings) -> int:
    from bot.commands import cmd_domains

    target = create(settings, args.name, args.title)  # refuses a bad name, a taken one, or a broken result
    print(f"Created {target} from the template.\n")
    print("Checks (`domainbot domains`):")
    cmd_domains(argparse.Namespace(json=False), settings)  # the same checks, every domain listed
    if settings.domain_allowlist and args.name not in settings.domain_allowlist:
        print(f"\nNote: DOMAINBOT_DOMAINS is set and does not list {args.name}; add it there to serve the domain.")
    print(NEXT_STEPS.format(folder=target, name=args.name))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("new-domain", help="create domains/NAME from the template, check it, print next steps")
    p.add_argument("name", help="the domain's id and folder name: lowercase letters, digits, '-' or '_'")
    p.add_argument("--title", help="display name, e.g. 'HR' (default: the name, capitalised)")
    p.set_defaults(func=cmd_new_domain)
