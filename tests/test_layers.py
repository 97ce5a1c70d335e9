"""The house rules of the tree: serving never imports learning, no file-level import cycles, and the Slack
processes (Procfile `web:` and `socket:`) never load training code, peft or TRL."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from bot.config import ROOT
from bot.testing.slack_kit import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, FakeSlack

PACKAGES = ("bot", "training")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules `path` imports anywhere (top level or inside functions), resolved to files."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `from bot.slack import blocks` -> bot.slack.blocks; `a.b.Name` -> a.b
                t = t.rpartition(".")[0]
            if t and t != name and not (path.name == "__init__.py" and t.startswith(name + ".")):
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: {t for t in imports_of(path, name, known) if t in known} for name, path in mods.items()}


def test_the_import_reader_sees_real_edges():
    # An oracle for the reader itself: edges we know exist, written by hand.
    g = graph()
    assert "bot.retrieval.index" in g["bot.answer"]
    assert "bot.slack.blocks" in g["bot.slack.app"]  # `from bot.slack import blocks`
    assert "training.dataset" in g["training.finetune"]


def test_serving_never_imports_training():
    g = graph()
    bad = sorted(f"{m} -> {t}" for m, targets in g.items() if m.startswith("bot") for t in targets
                 if t.startswith("training"))
    assert bad == []


def test_there_is_no_import_cycle_between_files():
    g = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert cycles == []


PROBE = r"""
import json, sys
import bot.slack.cli as slack_cli

def started(app, settings, host):  # where the process would start serving: the app is built, indexes warm
    print("MODULES=" + json.dumps(sorted(sys.modules)))

slack_cli.RUNNERS[sys.argv[1]] = started
from bot.cli import main
sys.exit(main(["serve", "--" + sys.argv[1]]))
"""


def loaded_by(mode: str, tmp_path: Path) -> set[str]:
    slack = FakeSlack().start()  # the app asks Slack who it is (auth.test) while it is built
    env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET, "SLACK_APP_TOKEN": APP_TOKEN,
           "SLACK_API_URL": slack.api_url, "DOMAINBOT_DB": str(tmp_path / f"{mode}.db"), "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
    finally:
        slack.stop()
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MODULES="))
    return set(json.loads(line.removeprefix("MODULES=")))


def test_the_slack_processes_never_load_training_code(tmp_path):
    for mode in ("http", "socket"):
        loaded = loaded_by(mode, tmp_path)
        assert "bot.slack.app" in loaded and "bot.answer" in loaded  # the probe really built the app
        heavy = sorted(m for m in loaded if m.split(".")[0] in ("peft", "trl")
                       or m in ("training.finetune", "training.export", "training.retrain", "training.evaluate",
                                "training.feedback", "training.worker", "training.gguf_lora", "training.distributed"))
        assert heavy == [], f"{mode}: {heavy}"
