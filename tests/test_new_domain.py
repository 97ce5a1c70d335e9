"""`domainbot new-domain`: the template gives a folder that passes `domainbot domains`; bad input is refused."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bot.cli import main
from bot.config import ROOT
from bot.domains import discover, parse_manifest
from bot.retrieval.index import load_docs


@pytest.fixture
def dirs(tmp_path, monkeypatch) -> Path:
    domains = tmp_path / "domains"
    domains.mkdir()
    monkeypatch.setenv("DOMAINBOT_DOMAINS_DIR", str(domains))
    monkeypatch.setenv("DOMAINBOT_INDEXES_DIR", str(tmp_path / "indexes"))
    monkeypatch.setenv("DOMAINBOT_DB", str(tmp_path / "domainbot.db"))
    return domains


def test_the_shipped_template_is_valid_toml_and_never_served_as_a_domain():
    data = tomllib.loads((ROOT / "domains" / "_template" / "domain.toml").read_text())
    assert data["name"] == "{{name}}" and len(data["examples"]) >= 3
    found = discover(ROOT / "domains")
    assert "_template" not in found.domains and "_template" not in found.errors


def test_new_domain_creates_a_folder_that_passes_the_checks(dirs, capsys):
    assert main(["new-domain", "hr", "--title", 'HR "People" & Co']) == 0
    out = capsys.readouterr().out
    assert "Created" in out and "Next steps" in out and "domainbot index hr" in out
    row = next(line for line in out.splitlines() if line.startswith("hr "))
    assert "base" in row and "missing" in row  # the `domainbot domains` table: loads, no index built yet

    folder = dirs / "hr"
    domain = parse_manifest(folder)  # the oracle: the manifest parser, not new-domain's own report
    assert domain.name == "hr" and domain.label == 'HR "People" & Co'
    assert 'HR "People" & Co' in domain.system_prompt and len(domain.examples) >= 3
    assert discover(dirs).errors == {} and set(discover(dirs).domains) == {"hr"}
    assert [d.title for d in load_docs(domain)] == ['HR "People" & Co: how this assistant works']
    leftovers = [p for p in folder.rglob("*") if p.is_file() and "{{" in p.read_text()]
    assert leftovers == []
    assert sorted(p.name for p in dirs.iterdir()) == ["hr"]  # no staging folder left behind

    assert main(["domains"]) == 0
    assert main(["index", "hr"]) == 0
    assert "hr: built" in capsys.readouterr().out


def test_default_title_comes_from_the_name(dirs, capsys):
    assert main(["new-domain", "travel_desk"]) == 0
    assert parse_manifest(dirs / "travel_desk").title == "Travel desk"


@pytest.mark.parametrize("name", ["HR", "1hr", "../evil", "_template", "h r", "a" * 33, "", "hr/x"])
def test_a_bad_name_is_refused_with_a_clear_message(dirs, capsys, name):
    assert main(["new-domain", name]) == 2
    assert "is not a valid domain name" in capsys.readouterr().err
    assert list(dirs.iterdir()) == []


@pytest.mark.parametrize("title", ["", "   ", "a\tb", "line\nbreak", "x" * 61])
def test_a_bad_title_is_refused(dirs, capsys, title):
    assert main(["new-domain", "hr", "--title", title]) == 2
    assert "--title must be" in capsys.readouterr().err
    assert list(dirs.iterdir()) == []


def test_an_existing_folder_is_refused_and_left_alone(dirs, capsys):
    (dirs / "hr").mkdir()
    (dirs / "hr" / "notes.txt").write_text("mine")
    assert main(["new-domain", "hr"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in (dirs / "hr").iterdir()] == ["notes.txt"]


def test_a_custom_template_that_does_not_load_leaves_nothing_behind(dirs, capsys):
    (dirs / "_template").mkdir()
    (dirs / "_template" / "domain.toml").write_text('name = "{{name}}"\ndescription = "x"\n')  # no examples
    assert main(["new-domain", "hr"]) == 2
    err = capsys.readouterr().err
    assert "does not give a domain that loads" in err and "examples" in err
    assert sorted(p.name for p in dirs.iterdir()) == ["_template"]
