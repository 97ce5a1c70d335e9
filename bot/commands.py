"""Core subcommands: ask, route, chat, domains, index, bench."""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from typing import TYPE_CHECKING

from bot.config import ROOT, Settings

if TYPE_CHECKING:  # the answer path (and llama.cpp) loads only for commands that answer
    from bot.answer import Answer


def _answerer(settings: Settings):
    from bot.answer import Answerer

    return Answerer.from_settings(settings)


def _log(settings: Settings, answer, question: str, source: str) -> None:
    from bot.exchange_log import log_answer

    log_answer(settings, answer, question, source=source)


# ---------------------------------------------------------------- terminal rendering


def render_text(answer: Answer, *, with_sources: bool = True) -> str:
    """Plain-text rendering for the terminal."""
    return "\n\n".join([answer.text, *render_trailer(answer, with_sources=with_sources)])


def render_trailer(answer: Answer, *, with_sources: bool = True) -> list[str]:
    """What follows the answer text (sources, notes, the route line): all a streamed answer still has to print."""
    parts = []
    if with_sources and answer.citations:
        used = [c for c in answer.citations if c.cited]
        shown = used or answer.citations
        # a document file is named by file and page or section; a corpus row by title and chunk id
        lines = [f"  [{c.n}] {c.label}" if c.file else f"  [{c.n}] {c.title}  ({c.chunk_id})" for c in shown]
        if used and len(used) < len(answer.citations):
            lines.append(f"  (also searched: {', '.join(f'[{c.n}]' for c in answer.citations if not c.cited)})")
        parts.append("Sources:\n" + "\n".join(lines))
    if answer.disclaimer and answer.kind == "answer":
        parts.append(f"Note: {answer.disclaimer}")
    parts.extend(f"Note: {n}" for n in answer.notes)
    if answer.domain:
        t = answer.timings
        parts.append(
            f"— {answer.domain} · adapter {answer.adapter} · {answer.route.method}"
            + (f" · first token {t['first_token_s']:.2f}s · total {t['total_s']:.2f}s" if t.get("first_token_s") else "")
        )
    return parts


def render_streamed_end(answer: Answer) -> str:
    """What a terminal prints after the streamed draft: the checked answer when the guard changed it, then the
    trailer (a user must not be left with the unchecked draft as the last word)."""
    parts = []
    if answer.draft and answer.text != answer.draft:
        parts.append(f"Checked against the sources ({answer.verdict}):\n{answer.text}")
    return "\n\n".join([*parts, *render_trailer(answer)])


# ---------------------------------------------------------------- ask


def cmd_ask(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from bot.answer import Question

    t0 = time.perf_counter()
    answerer = _answerer(settings)
    startup_s = time.perf_counter() - t0  # imports, model load, router fit, index: apart from answering
    stream = not args.json and sys.stdout.isatty()
    answer = answerer.answer(
        Question(args.question, domain=args.domain, adapter=args.adapter, max_tokens=args.max_tokens),
        on_token=(lambda t: print(t, end="", flush=True)) if stream else None,
    )
    _log(settings, answer, args.question, "cli")
    if args.json:
        out = answer.to_dict()
        out.setdefault("timings", {})["startup_s"] = round(startup_s, 3)
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        if stream and answer.kind == "answer":
            print("\n\n" + render_streamed_end(answer))
        else:
            print(render_text(answer))
    return 0


# ---------------------------------------------------------------- route


def cmd_route(args: argparse.Namespace, settings: Settings) -> int:
    from bot.policy import clean_question

    answerer = _answerer(settings)
    result = answerer.route(clean_question(args.question), args.domain)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(result.domain or "none")
    for name, score in result.scores.items():
        print(f"  {name:<12} {score:.3f}")
    if result.scores:
        print(f"  (threshold {result.threshold:.3f}, margin {result.margin:.3f})")
    return 0


# ---------------------------------------------------------------- chat


CHAT_HELP = """Commands: /domain NAME (pin a domain) · /domain auto · /new (new thread) · /quit
Start a question with `legal:` (or any domain name) to pick its domain."""


def cmd_chat(args: argparse.Namespace, settings: Settings) -> int:
    from bot.reload import watching

    answerer = _answerer(settings)
    with watching(answerer):  # a new or edited plugin folder is picked up without leaving the chat
        return _chat(args, settings, answerer)


def _chat(args: argparse.Namespace, settings: Settings, answerer) -> int:
    from bot.answer import Question
    from bot.errors import UserFacingError
    from bot.prompt import Turn

    names = ", ".join(answerer.discovery.domains) or "none"
    print(f"Domainbot local chat (domains: {names}; model: {answerer.runtime.model_path.name}).")
    if not settings.slack_configured:
        print("No Slack tokens set, so this is the local chat. See README to connect Slack.")
    print(CHAT_HELP)
    pinned: str | None = args.domain
    thread_domain: str | None = None
    history: list[Turn] = []
    while True:
        try:
            line = input("\nyou> ")
        except EOFError:
            print()
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/new":
            history, thread_domain = [], None
            print("(new thread)")
            continue
        if line.startswith("/domain"):
            choice = line.split(maxsplit=1)[1].strip() if " " in line else ""
            if choice in ("", "auto"):
                pinned = None
                print("(routing automatically)")
            elif choice in answerer.discovery.domains:
                pinned = choice
                print(f"(pinned to {choice})")
            else:
                print(f"unknown domain {choice!r}; known: {', '.join(answerer.discovery.domains) or 'none'}")
            continue
        try:
            print("bot> ", end="", flush=True)
            prefixed = _explicit(answerer, line)
            if pinned and not prefixed:
                route = answerer.route(line, pinned)
            elif thread_domain and not prefixed:
                route = answerer.route_follow_up(line, thread_domain)  # switches when clearly another domain's
            else:
                route = answerer.route(line)
            same_thread = route.domain == thread_domain
            answer = answerer.answer(Question(line, route=route, history=history if same_thread else ()),
                                     on_token=lambda t: print(t, end="", flush=True))
        except UserFacingError as exc:
            print(f"\n{exc}")
            continue
        _log(settings, answer, line, "cli")
        if answer.kind == "answer":
            print("\n\n" + render_streamed_end(answer))
            thread_domain = answer.domain
            history += [Turn("user", line), Turn("assistant", answer.text)]
        else:
            print(answer.text)


def _explicit(answerer, line: str) -> str | None:
    from bot.router import explicit_prefix

    return explicit_prefix(line, list(answerer.discovery.domains))[0]


# ---------------------------------------------------------------- domains and index


def cmd_domains(args: argparse.Namespace, settings: Settings) -> int:
    from bot import adapters
    from bot.domains import discover
    from bot.retrieval.index import Retriever, load_docs

    found = discover(settings.domains_dir, settings.domain_allowlist)
    retriever = Retriever(settings)
    rows = []
    for name, d in found.domains.items():
        try:
            n_docs = len(load_docs(d))
            state = retriever.status(d)
        except Exception as exc:  # noqa: BLE001 - report, don't crash the listing
            n_docs, state = 0, f"error: {exc}"
        cur = adapters.current(d.adapters_dir)
        rows.append({"domain": name, "docs": n_docs, "index": state, "adapter": cur.version if cur else "base",
                     "channels": ",".join(d.channels), "error": ""})
    for name, reason in found.errors.items():
        rows.append({"domain": name, "docs": "-", "index": "-", "adapter": "-", "channels": "-", "error": reason})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from bot.llm.llama import gpu_offload_supported

    gpu = "yes" if gpu_offload_supported() else "no (CPU build)"
    print(f"llama.cpp GPU offload: {gpu}; n_gpu_layers={settings.n_gpu_layers}")
    print(f"{'domain':<12} {'docs':>6}  {'index':<10} {'adapter':<8} {'channels':<10} error")
    for r in rows:
        print(f"{r['domain']:<12} {r['docs']!s:>6}  {r['index']:<10} {r['adapter']:<8} {r['channels']:<10} {r['error']}")
    return 1 if found.errors else 0


def cmd_index(args: argparse.Namespace, settings: Settings) -> int:
    from bot.domains import discover
    from bot.errors import UserFacingError
    from bot.retrieval.index import Retriever

    found = discover(settings.domains_dir, settings.domain_allowlist)
    names = [args.domain] if args.domain else list(found.domains)
    if args.domain and args.domain not in found.domains:
        raise UserFacingError(found.errors.get(args.domain) or f"unknown domain {args.domain!r}")
    retriever = Retriever(settings)
    for name in names:
        report = retriever.refresh(found.domains[name], progress=True, force=args.force, log_skipped=False)
        print("\n".join(report.lines()))  # what changed per file, and each file skipped with why
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    script = ROOT / "bench" / f"{args.which}.py"
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def cmd_start(args: argparse.Namespace, settings: Settings) -> int:
    """The main job: Slack when its tokens are set (Socket Mode preferred), otherwise the local chat."""
    if settings.slack_bot_token and settings.slack_app_token:
        return _run(["serve", "--socket"])
    if settings.slack_bot_token and settings.slack_signing_secret:
        return _run(["serve", "--http"])
    return cmd_chat(argparse.Namespace(domain=None), settings)


def _run(argv: list[str]) -> int:
    from bot.cli import main

    return main(argv)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("start", help="the main job: Slack if tokens are set, else the local chat")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("ask", help="answer one question with sources")
    p.add_argument("question")
    p.add_argument("--domain", help="skip routing and use this domain")
    p.add_argument("--adapter", help="'base' or a version like v2 (default: the domain's current adapter)")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("route", help="show which domain a question goes to, with the scores")
    p.add_argument("question")
    p.add_argument("--domain", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("chat", help="terminal chat that streams answers (the main job without Slack tokens)")
    p.add_argument("--domain", help="pin a domain")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("domains", help="list domains: docs, index state, adapter, load errors")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_domains)

    p = sub.add_parser("index", help="build or refresh FAISS indexes (only when the docs changed)")
    p.add_argument("domain", nargs="?")
    p.add_argument("--force", action="store_true", help="rebuild and re-embed every chunk, even if up to date")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("bench", help="run a benchmark from bench/ (default: serve)")
    p.add_argument("which", nargs="?", default="serve", choices=sorted(x.stem for x in (ROOT / "bench").glob("*.py")) or ["serve"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

