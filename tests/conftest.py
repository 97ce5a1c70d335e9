"""Shared fixtures: real domains, real FAISS indexes (built once), the real tiny model.

Integration tests use the real parts; only Slack and the hub are faked (see bot/testing).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
for var in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "DOMAINBOT_MODEL", "DOMAINBOT_DOMAINS"):
    os.environ.pop(var, None)

from repo_guard import RepoGuard  # noqa: E402  (tests/, on sys.path beside this file)

from bot.config import ROOT, Settings  # noqa: E402

TEST_MAX_TOKENS = 24

# `make test-fast` runs `-m "not slow"`. A test is slow when it loads the real model in this process (these
# fixtures) or trains; tests that load the model another way carry @pytest.mark.slow themselves.
SLOW_FIXTURES = {"runtime", "answerer", "tiny_base"}

_guard = RepoGuard(ROOT)
_WROTE = pytest.StashKey[list[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# ---------------------------------------------------------------- tests must not write into the repository


def pytest_sessionstart(session: pytest.Session) -> None:
    _guard.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.option.collectonly:
        return
    session.config.stash[_WROTE] = found = _guard.violations()
    if found and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    found = config.stash.get(_WROTE, [])
    if found:
        terminalreporter.section("tests wrote into the repository", sep="!", red=True, bold=True)
        for line in found:
            terminalreporter.line(line)
        terminalreporter.line("Tests must write under tmp_path (tests/repo_guard.py); the session fails.")


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory) -> Settings:
    """Real domains and the repo's indexes/ (built on first use, reused by later runs)."""
    var = tmp_path_factory.mktemp("var")
    return Settings(
        domains_dir=ROOT / "domains",
        indexes_dir=ROOT / "indexes",
        db_path=var / "session.db",
        max_tokens=TEST_MAX_TOKENS,
        stream_interval_s=0.05,
        rate_limit_per_minute=1000,
    )


@pytest.fixture(scope="session")
def built_indexes(base_settings) -> Path:
    from bot.domains import discover
    from bot.retrieval.index import Retriever

    retriever = Retriever(base_settings)
    for domain in discover(base_settings.domains_dir).domains.values():
        retriever.ensure_index(domain, progress=False)
    _guard.bless("indexes")  # the one intended write into the repo: (re)building its git-ignored indexes
    return base_settings.indexes_dir


@pytest.fixture
def settings(base_settings, built_indexes, tmp_path) -> Settings:
    """Per-test settings: a fresh SQLite file, the shared built indexes."""
    return base_settings.with_(db_path=tmp_path / "domainbot.db")


@pytest.fixture(scope="session")
def embedder(base_settings):
    from bot.retrieval.embeddings import get_embedder

    return get_embedder(None)


@pytest.fixture(scope="session")
def runtime(base_settings):
    from bot.llm.llama import Runtime

    rt = Runtime(base_settings)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def answerer(base_settings, built_indexes, runtime, embedder):
    """The real answering path: real model, real FAISS, the shipped adapters."""
    from bot.answer import Answerer
    from bot.domains import discover
    from bot.retrieval.index import Retriever

    return Answerer(base_settings, discover(base_settings.domains_dir), Retriever(base_settings, embedder), runtime)


@pytest.fixture(scope="session")
def quick(answerer):
    """The session's real model, index and router, with short outputs and prompts to keep Slack tests fast."""
    from bot.answer import Answerer

    s = answerer.settings.with_(max_tokens=8, prompt_budget=320)
    return Answerer(s, answerer.discovery, answerer.retriever, answerer.runtime, router=answerer.router)


@pytest.fixture
def domains_copy(tmp_path) -> Path:
    """A writable copy of domains/ for tests that change adapters or manifests."""
    dst = tmp_path / "domains"
    # without the git-ignored PEFT copies that `make setup` writes: the repo as cloned
    shutil.copytree(ROOT / "domains", dst, ignore=shutil.ignore_patterns("checkpoints", "runs", "peft"))
    return dst
