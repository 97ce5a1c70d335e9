from pathlib import Path

import pytest

from bot.config import ROOT
from bot.domains import ManifestError, discover, parse_manifest

GOOD = """
name = "{name}"
description = "Things about {name}."
examples = ["one?", "two?", "three?"]
system_prompt = "You answer about {name}."
disclaimer = "Not advice."
"""


def make(root: Path, name: str, text: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "domain.toml").write_text(text if text is not None else GOOD.format(name=name))
    return folder


def test_shipped_domains_load_without_errors():
    found = discover(ROOT / "domains")
    assert set(found.domains) == {"finance", "legal", "medical"}
    assert found.errors == {}
    for d in found.domains.values():
        assert 10 <= len(d.examples) <= 20
        assert d.system_prompt and d.disclaimer and d.rules
        assert (d.docs_dir / "corpus.jsonl").is_file() and d.train_file.is_file() and d.eval_file.is_file()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("name = [unclosed", "not valid TOML"),
        ('name = "bad"\n' + GOOD.split("\n", 2)[2].format(name="bad"), "must match"),
        ('description = "x"\nexamples = ["a","b","c"]\n', "`system_prompt` must be a non-empty string"),
        (GOOD.format(name="bad") + "top_k = 99\n", "top_k"),
        (GOOD.format(name="bad") + '[[rules]]\npattern = "("\nreply = "no"\n', "not a valid regex"),
        (GOOD.format(name="bad").replace('["one?", "two?", "three?"]', '["one?"]'), "at least 3"),
        (GOOD.format(name="bad") + '[tasks.tone]\nlabels = ["Up", "Down"]\nasked_by = "tone"\n',
         "tasks.tone.asked_by must be a list"),
        (GOOD.format(name="bad") + '[tasks.tone]\nlabels = "Up, Down"\n', "tasks.tone.labels must be a list"),
        (GOOD.format(name="bad") + 'tasks = {tone = "classification"}\n', "table of tables"),
    ],
)
def test_malformed_manifest_is_reported_with_folder_name_and_others_still_load(tmp_path, text, reason):
    make(tmp_path, "good")
    make(tmp_path, "broken", text.replace('name = "bad"', 'name = "broken"') if "must match" not in reason else text)
    found = discover(tmp_path)
    assert "good" in found.domains
    assert "broken" in found.errors
    assert found.errors["broken"].startswith("broken:")
    assert reason in found.errors["broken"]


def test_parse_raises_manifest_error(tmp_path):
    folder = make(tmp_path, "x", "name = 3")
    with pytest.raises(ManifestError, match="^x:"):
        parse_manifest(folder)


def test_allowlist_selects_domains_and_reports_unknown(tmp_path):
    make(tmp_path, "alpha")
    make(tmp_path, "beta")
    found = discover(tmp_path, ["beta", "gamma"])
    assert list(found.domains) == ["beta"]
    assert "gamma" in found.errors


def test_folder_without_manifest_is_ignored(tmp_path):
    (tmp_path / "notes").mkdir()
    make(tmp_path, "alpha")
    assert list(discover(tmp_path).domains) == ["alpha"]


def test_unknown_domain_message_lists_known(tmp_path):
    make(tmp_path, "alpha")
    with pytest.raises(KeyError) as info:
        discover(tmp_path).get("nope")
    assert "known domains: alpha" in str(info.value)
