"""The session guard in conftest (tests/repo_guard.py), on a real git checkout in tmp_path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from repo_guard import RepoGuard


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=root, check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / ".gitignore").write_text("/indexes/*\n/var/\n")
    (tmp_path / "domains" / "legal" / "adapters").mkdir(parents=True)
    (tmp_path / "domains" / "legal" / "adapters" / "current").write_text("v1\n")
    (tmp_path / "indexes" / "legal").mkdir(parents=True)
    (tmp_path / "indexes" / "legal" / "index.faiss").write_bytes(b"index")
    (tmp_path / "bot").mkdir()
    (tmp_path / "bot" / "app.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("readme\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def fit(extra: dict) -> str:
    return json.dumps({"key": "k", "fit": {"threshold": 0.2, "extra_examples": extra}})


def test_a_clean_session_has_nothing_to_report(repo):
    guard = RepoGuard(repo).start()
    (repo / "var").mkdir()
    (repo / "var" / "x.db").write_text("ignored and unwatched")
    assert guard.violations() == []


def test_writes_under_domains_are_caught_even_when_git_ignores_them(repo):
    guard = RepoGuard(repo).start()
    (repo / "domains" / "legal" / "adapters" / "current").write_text("v99\n")
    (repo / ".gitignore").write_text("/indexes/*\n/var/\ndomains/*/adapters/.pointer.lock\n")
    (repo / "domains" / "legal" / "adapters" / ".pointer.lock").write_text("")
    assert guard.violations() == ["modified: .gitignore", "created: domains/legal/adapters/.pointer.lock",
                                  "modified: domains/legal/adapters/current"]


def test_new_files_and_deletions_anywhere_are_caught_but_code_edits_are_not(repo):
    guard = RepoGuard(repo).start()
    (repo / "reports").mkdir()
    (repo / "reports" / "eval.json").write_text("{}")
    (repo / "README.md").unlink()
    (repo / "bot" / "app.py").write_text("x = 2  # someone editing while the tests run\n")
    assert guard.violations() == ["deleted: README.md", "created: reports/eval.json"]


def test_a_file_already_dirty_at_the_start_is_caught_when_written_again(repo):
    (repo / "README.md").write_text("edited before the run\n")
    guard = RepoGuard(repo).start()
    assert guard.violations() == []
    (repo / "README.md").write_text("written by a test, again\n")
    assert guard.violations() == ["modified: README.md"]


def test_the_blessed_index_build_is_allowed_and_later_writes_are_not(repo):
    guard = RepoGuard(repo).start()
    (repo / "indexes" / "legal" / "index.faiss").write_bytes(b"rebuilt index")
    (repo / "indexes" / ".legal.lock").write_text("")
    guard.bless("indexes")
    assert guard.violations() == []
    (repo / "indexes" / "legal" / "index.faiss").write_bytes(b"\x00garbage from a test")
    assert guard.violations() == ["modified: indexes/legal/index.faiss"]


def test_only_the_default_router_fit_may_be_rewritten(repo):
    path = repo / "indexes" / "router_fit.json"
    path.write_text(fit({}))
    guard = RepoGuard(repo).start()
    path.write_text(fit({}) + " ")  # refitted after a manifest change: allowed
    assert guard.violations() == []
    path.write_text(fit({"legal": 1}))  # a fit that learned a test's reroutes
    assert guard.violations() == ["modified: indexes/router_fit.json"]
    path.write_text("not json")
    assert guard.violations() == ["modified: indexes/router_fit.json"]


def test_only_router_anchors_of_the_manifests_may_be_rewritten(repo):
    import numpy as np

    path = repo / "indexes" / "router_anchors.npz"
    np.savez(path, key=np.array("k1"), learned=np.array(0), a0=np.zeros((2, 3)))
    guard = RepoGuard(repo).start()
    np.savez(path, key=np.array("k2"), learned=np.array(0), a0=np.ones((3, 3)))  # the domain set changed: allowed
    assert guard.violations() == []
    np.savez(path, key=np.array("k3"), learned=np.array(2), a0=np.ones((5, 3)))  # a test's reroutes learned
    assert guard.violations() == ["modified: indexes/router_anchors.npz"]
    path.write_bytes(b"not an npz")
    assert guard.violations() == ["modified: indexes/router_anchors.npz"]


def test_outside_a_git_checkout_the_watched_folders_still_count(tmp_path):
    (tmp_path / "domains").mkdir()
    guard = RepoGuard(tmp_path).start()
    (tmp_path / "domains" / "new.toml").write_text("name = 'x'")
    (tmp_path / "elsewhere.txt").write_text("not watched without git")
    assert guard.violations() == ["created: domains/new.toml"]
