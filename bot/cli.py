"""`domainbot` entry point. Subcommands live in small modules that each expose `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from bot.config import ConfigError, load_settings
from bot.errors import UserFacingError, new_error_id

COMMAND_MODULES = ("bot.commands", "bot.domain_cli", "bot.slack.cli", "training.cli", "training.feedback_cli")
log = logging.getLogger("domainbot")


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """All subcommands, or (with `command`) only the modules up to the one that owns it: `ask` then never
    imports training code (cold start)."""
    parser = argparse.ArgumentParser(
        prog="domainbot",
        description="Answers questions through domain plugins (finance, legal, medical, ...).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module: surface it
                raise
            continue
        module.register(sub)
        if command is not None and command in sub.choices:
            break
    return parser


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get("DOMAINBOT_LOG_LEVEL", "WARNING").upper(), logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(_command_of(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings()
        return int(args.func(args, settings) or 0)
    except (UserFacingError, ConfigError) as exc:
        print(f"domainbot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - last line of defence: an id, never a bare traceback
        error_id = new_error_id()
        log_path = Path(os.environ.get("DOMAINBOT_ERROR_LOG", "var/errors.log"))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        import traceback

        with log_path.open("a") as f:
            f.write(f"--- error {error_id}\n{traceback.format_exc()}\n")
        print(f"domainbot: internal error {error_id}; details in {log_path}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
