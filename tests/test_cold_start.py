"""`domainbot ask` cold start: no training code is imported, and --json reports start-up apart from answering."""

import json
import os
import subprocess
import sys

import pytest

from bot.config import ROOT

pytestmark = pytest.mark.slow

PROBE = """
import contextlib, io, json, sys
from bot.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(sys.argv[1:])
HEAVY = ("training", "peft", "trl", "sentence_transformers", "accelerate", "torch", "transformers",
         "langchain", "langchain_core", "langchain_community", "langsmith")
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
print(json.dumps({"rc": rc, "answer": json.loads(out.getvalue()), "heavy": heavy}))
"""


def test_ask_imports_no_training_code_and_reports_split_timings(tmp_path, built_indexes):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DOMAINBOT_DB": str(tmp_path / "db.sqlite"),
           "DOMAINBOT_ERROR_LOG": str(tmp_path / "errors.log"), "DOMAINBOT_MAX_TOKENS": "4"}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, "ask", "--json", "--domain", "legal", "How much notice must a landlord give?"],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    probe = json.loads(run.stdout.strip().splitlines()[-1])
    assert probe["rc"] == 0
    # the question is embedded by llama.cpp (bot/retrieval/embeddings.py) and searched without langchain's view:
    # no torch, no transformers, no langchain, nothing of training
    assert probe["heavy"] == []
    timings = probe["answer"]["timings"]
    assert timings["startup_s"] > 0 and timings["first_token_s"] > 0
    assert timings["first_token_s"] <= timings["total_s"]


def test_command_lookup_stops_at_the_owning_module():
    from bot.cli import build_parser

    assert "ask" in build_parser("ask")._subparsers._group_actions[0].choices
    code = "import sys; from bot.cli import build_parser; build_parser('ask'); " \
           "print(any(m.startswith('training') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
