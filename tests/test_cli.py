import json
import os
import subprocess
import sys

import pytest

from bot.cli import main
from bot.config import ROOT


@pytest.fixture
def env(settings, monkeypatch):
    monkeypatch.setenv("DOMAINBOT_DB", str(settings.db_path))
    monkeypatch.setenv("DOMAINBOT_MAX_TOKENS", "16")
    monkeypatch.setenv("DOMAINBOT_INDEXES_DIR", str(settings.indexes_dir))
    return settings


@pytest.mark.slow  # the real model (or an index rebuild) through the CLI
def test_ask_json_routes_to_medical_and_cites(env, capsys):
    assert main(["ask", "What are the early symptoms of type 2 diabetes?", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["domain"] == "medical" and out["citations"]
    assert {"chunk_id", "title"} <= set(out["citations"][0])
    assert set(out["route"]["scores"]) == {"finance", "legal", "medical"}
    assert {"retrieval_s", "first_token_s", "total_s"} <= set(out["timings"]) and out["adapter"]


@pytest.mark.slow  # the real model (or an index rebuild) through the CLI
def test_ask_is_logged_to_the_store(env, capsys):
    from bot.store.store import Store

    main(["ask", "How is asthma treated?"])
    rows = Store(env.db_path).query("select domain, source from exchanges")
    assert rows == [{"domain": "medical", "source": "cli"}]


def test_route_json_and_plain(env, capsys):
    assert main(["route", "book the meeting room", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["domain"] is None
    main(["route", "Does the agreement have a non-compete clause?"])
    assert capsys.readouterr().out.splitlines()[0] == "legal"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ask", "   "], "empty"),
        (["ask", "x" * 20_001], "20,000"),
        (["ask", "what?\x00\x01"], "binary"),
        (["ask", "what?", "--domain", "astrology"], "unknown domain 'astrology'"),
    ],
)
def test_bad_input_gets_a_message_not_a_traceback(env, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_model_file(env, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DOMAINBOT_MODEL", str(tmp_path / "missing.gguf"))
    assert main(["ask", "How is asthma treated?"]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_domains_lists_state_and_broken_manifests(env, capsys, monkeypatch, domains_copy):
    (domains_copy / "broken").mkdir()
    (domains_copy / "broken" / "domain.toml").write_text("name = [oops")
    monkeypatch.setenv("DOMAINBOT_DOMAINS_DIR", str(domains_copy))
    assert main(["domains"]) == 1  # non-zero: something needs the owner's attention
    out = capsys.readouterr().out
    assert "broken: domain.toml is not valid TOML" in out
    for name in ("finance", "legal", "medical"):
        assert name in out
    monkeypatch.setenv("DOMAINBOT_DOMAINS", "legal")
    assert main(["domains", "--json"]) == 0
    assert [r["domain"] for r in json.loads(capsys.readouterr().out)] == ["legal"]


@pytest.mark.slow  # the real model (or an index rebuild) through the CLI
def test_corrupt_index_is_rebuilt_on_use(env, capsys, monkeypatch, tmp_path):
    # A one-document domain from the template: the rebuild path is the same as a shipped domain's, minus
    # the 80 s of re-embedding 1,500 chunks.
    monkeypatch.setenv("DOMAINBOT_DOMAINS_DIR", str(tmp_path / "domains"))
    monkeypatch.setenv("DOMAINBOT_INDEXES_DIR", str(tmp_path / "indexes"))
    (tmp_path / "domains").mkdir()
    assert main(["new-domain", "hr"]) == 0 and main(["index", "hr"]) == 0
    faiss_file = tmp_path / "indexes" / "hr" / "index.faiss"
    faiss_file.write_bytes(b"\x00garbage")
    capsys.readouterr()
    assert main(["ask", "How does this assistant work?", "--domain", "hr", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["citations"]
    assert faiss_file.read_bytes()[:8] != b"\x00garbage"[:8]  # rewritten, not just worked around
    assert main(["index", "hr"]) == 0
    assert "hr: up to date" in capsys.readouterr().out


def test_index_unknown_domain(env, capsys):
    assert main(["index", "nope"]) == 2
    assert "unknown domain" in capsys.readouterr().err


@pytest.mark.slow  # the real model (or an index rebuild) through the CLI
def test_chat_keeps_the_thread_domain_and_switches_when_another_is_clearly_meant(env):
    script = ("How is asthma treated?\nand how long is it?\n"
              "How much notice is needed to terminate the distribution agreement?\n/domain legal\n/quit\n")
    proc = subprocess.run([sys.executable, "-m", "bot", "chat"], input=script, capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "DOMAINBOT_MAX_TOKENS": "8"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "local chat" in proc.stdout and proc.stdout.count("— medical") == 2
    assert "thread" in proc.stdout.split("— medical")[2][:60]  # the vague follow-up stayed in medical
    assert "— legal" in proc.stdout and "switched" in proc.stdout.split("— legal")[1][:60]
    assert "rather than the thread's earlier topic" in proc.stdout  # and the user is told
    assert "(pinned to legal)" in proc.stdout


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "bot", "--help"], capture_output=True, text=True, cwd=ROOT)
    for cmd in ("ask", "route", "chat", "domains", "index", "bench"):
        assert cmd in proc.stdout
