"""Live reload: a running Answerer with the watcher serves added, edited and removed plugin folders without a
restart. Real folders in tmp_path, the real embedder, router and FAISS indexes; waits poll a condition."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.answer import Answerer, Question
from bot.cli import main
from bot.config import Settings
from bot.domain_cli import create
from bot.domains import UnknownDomain, discover
from bot.reload import DomainWatcher, watching
from bot.retrieval.index import Retriever

MANIFEST = '''name = "{name}"
label = "{label}"
description = "{description}"
examples = [{examples}]
system_prompt = "You answer {name} questions from the sources and cite them as [1]."
disclaimer = "{disclaimer}"
'''

DOMAINS = {
    "cooking": (
        "Cooking and baking: recipes, ingredients, oven temperatures, bread dough, knife skills, kitchen food safety.",
        ["How long should bread dough proof?", "What oven temperature do I bake bread at?",
         "How do I sharpen a kitchen knife?", "How long can cooked rice stay in the fridge?",
         "What can I use instead of eggs in a cake?", "How do I make a pancake batter?",
         "How much salt goes into pasta water?", "How do I caramelise onions?"],
        {"bread.md": "# Bread proofing\n\nLet the bread dough proof for 45 minutes in a warm place until it doubles.\n",
         "knives.md": "# Knife care\n\nSharpen a kitchen knife on a whetstone at a 20 degree angle.\n"},
    ),
    "astronomy": (
        "Astronomy and space: planets, stars, galaxies, telescopes, eclipses, orbits and light years.",
        ["How far is a light year?", "Why does Mars look red?", "When is the next solar eclipse?",
         "How many moons does Jupiter have?", "What is a black hole?", "How do telescopes magnify stars?",
         "Why do planets orbit the sun?", "What is the Milky Way galaxy?"],
        {"light-year.md": "# Light year\n\nA light year is the distance light travels in one year, about 9.46 "
                          "trillion kilometres.\n"},
    ),
}
GARDENING = (
    "Gardening: watering plants, soil, compost, pruning roses, growing tomatoes and vegetables, lawn care, pests.",
    ["How often should I water tomato plants?", "When do I prune roses?", "How do I start a compost heap?",
     "What is the best soil for vegetables?", "How do I get rid of aphids on my plants?",
     "How short should I mow the lawn?", "When do I plant potatoes?", "Why are my tomato leaves yellow?"],
    {"tomatoes.md": "# Watering tomatoes\n\nWater tomato plants deeply twice a week, at the base, in the morning.\n"},
)


def write_domain(root: Path, name: str, spec: tuple, *, label: str = "", disclaimer: str = "Not advice.") -> Path:
    description, examples, docs = spec
    folder = root / name
    (folder / "docs").mkdir(parents=True, exist_ok=True)
    for file, text in docs.items():
        (folder / "docs" / file).write_text(text)
    (folder / "domain.toml").write_text(MANIFEST.format(
        name=name, label=label or name.capitalize(), description=description,
        examples=", ".join(f'"{e}"' for e in examples), disclaimer=disclaimer))
    return folder


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after a generous timeout (never a timing assert)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def polls_after(watcher: DomainWatcher, n: int) -> Callable[[], bool]:
    start = watcher.polls
    return lambda: watcher.polls >= start + n


@pytest.fixture
def live(tmp_path, embedder, request):
    """A running Answerer over two small domains in tmp_path, with its watcher polling every 0.1 s."""
    root = tmp_path / "domains"
    for name, spec in DOMAINS.items():
        write_domain(root, name, spec)
    settings = Settings(domains_dir=root, indexes_dir=tmp_path / "indexes", db_path=tmp_path / "db.sqlite",
                        max_tokens=8, reload_s=0.1)
    runtime = request.getfixturevalue("runtime") if request.node.get_closest_marker("slow") else None
    answerer = Answerer(settings, discover(root), Retriever(settings, embedder), runtime)
    for domain in answerer.discovery.domains.values():
        answerer.retriever.load(domain)
    answerer.router  # noqa: B018 - fitted before the watcher starts, as `serve` does
    watcher = DomainWatcher(answerer).start()
    yield root, answerer, watcher
    watcher.stop()


def test_a_new_domain_folder_is_routed_to_after_reload(live):
    root, answerer, watcher = live
    question = "How often should I water my tomato plants?"
    assert answerer.route(question).domain != "gardening"
    write_domain(root, "gardening", GARDENING)
    wait_until(lambda: "gardening" in answerer.discovery.domains, "the gardening folder is served")
    assert answerer.route(question).domain == "gardening"
    assert answerer.retriever.status(answerer.domain("gardening")) == "ready"  # indexed before it was routed to
    found = answerer.retriever.search(answerer.domain("gardening"), question)
    assert "twice a week" in found[0].text


@pytest.mark.slow
def test_a_changed_doc_is_what_the_next_answer_retrieves(live):
    root, answerer, watcher = live
    question = "How long should bread dough proof?"
    before = answerer.answer(Question(question, max_tokens=4))
    assert before.domain == "cooking" and any("45 minutes" in p.text for p in before.passages)
    (root / "cooking" / "docs" / "bread.md").write_text(
        "# Bread proofing\n\nLet the bread dough proof for 90 minutes with the zanzibar fold, then shape it.\n")
    wait_until(lambda: watcher.reloads >= 1, "the docs change is reloaded")
    after = answerer.answer(Question(question, max_tokens=4))
    assert any("zanzibar" in p.text for p in after.passages)
    assert not any("45 minutes" in p.text for p in after.passages)


def test_a_removed_folder_is_no_longer_routed_to(live):
    root, answerer, watcher = live
    question = "How far away is a light year?"
    assert answerer.route(question).domain == "astronomy"
    shutil.rmtree(root / "astronomy")
    wait_until(lambda: "astronomy" not in answerer.discovery.domains, "astronomy is dropped")
    assert answerer.route(question).domain != "astronomy"
    with pytest.raises(UnknownDomain, match="unknown domain 'astronomy'"):
        answerer.route(question, "astronomy")


def test_a_broken_manifest_edit_keeps_the_last_good_version_and_logs_the_folder_once(live, caplog):
    root, answerer, watcher = live
    caplog.set_level(logging.WARNING, logger="bot.reload")
    question = "What oven temperature do I bake bread at?"
    manifest = root / "cooking" / "domain.toml"
    good = manifest.read_text()
    manifest.write_text("name = [oops")

    def warnings_about_cooking() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "cooking" in r.getMessage()]

    wait_until(lambda: warnings_about_cooking(), "a warning names the cooking folder")
    assert "not valid TOML" in warnings_about_cooking()[0] and "last good version" in warnings_about_cooking()[0]
    assert "cooking" in answerer.discovery.domains and "cooking" in answerer.discovery.errors
    assert answerer.route(question).domain == "cooking"  # still served
    wait_until(polls_after(watcher, 5), "five more polls")
    assert len(warnings_about_cooking()) == 1  # once per change, not once per poll

    manifest.write_text(good.replace('label = "Cooking"', 'label = "Baking"'))
    wait_until(lambda: answerer.domain("cooking").label == "Baking", "the fixed manifest is served")
    assert answerer.discovery.errors == {}


def test_a_domain_whose_docs_cannot_be_indexed_keeps_its_last_index(live, caplog):
    root, answerer, watcher = live
    caplog.set_level(logging.WARNING, logger="bot.reload")
    question = "How do I sharpen a kitchen knife?"
    for doc in (root / "cooking" / "docs").iterdir():
        doc.unlink()  # an owner emptying docs/ before copying the new ones in
    wait_until(lambda: any("cooking" in r.getMessage() and "index" in r.getMessage() for r in caplog.records),
               "a warning says the cooking index was not rebuilt")
    found = answerer.retriever.search(answerer.domain("cooking"), question)
    assert "whetstone" in found[0].text


def test_a_folder_made_by_new_domain_is_served_by_a_running_bot(live):
    root, answerer, watcher = live
    create(answerer.settings, "hr", "HR")
    wait_until(lambda: "hr" in answerer.discovery.domains, "the new hr folder is served")
    assert answerer.route("hr: who do I contact?").domain == "hr"
    assert answerer.domain("hr").title == "HR"


@pytest.mark.slow
def test_an_answer_in_flight_finishes_on_the_domains_it_started_with(live):
    root, answerer, watcher = live
    manifest = root / "cooking" / "domain.toml"
    started, release, result = threading.Event(), threading.Event(), {}

    def on_token(_: str) -> None:
        started.set()
        release.wait(120)

    def ask() -> None:
        result["answer"] = answerer.answer(Question("How long should bread dough proof?", max_tokens=4),
                                           on_token=on_token)

    thread = threading.Thread(target=ask)
    thread.start()
    try:
        assert started.wait(120), "the answer never started generating"
        manifest.write_text(manifest.read_text().replace('disclaimer = "Not advice."', 'disclaimer = "Changed."'))
        wait_until(lambda: answerer.domain("cooking").disclaimer == "Changed.", "the edit is served")
    finally:
        release.set()
        thread.join(120)
    assert result["answer"].domain == "cooking" and result["answer"].disclaimer == "Not advice."
    assert answerer.answer(Question("How long should bread dough proof?", max_tokens=4)).disclaimer == "Changed."


def test_a_change_is_applied_once_it_has_stopped_changing(tmp_path, embedder):
    root = tmp_path / "domains"
    write_domain(root, "cooking", DOMAINS["cooking"])
    settings = Settings(domains_dir=root, indexes_dir=tmp_path / "indexes", reload_s=0)
    answerer = Answerer(settings, discover(root), Retriever(settings, embedder))
    watcher = DomainWatcher(answerer, interval_s=1.0)  # not started: each check() is one poll
    assert watcher.check() is False  # nothing changed
    write_domain(root, "gardening", GARDENING)
    assert watcher.check() is False and "gardening" not in answerer.discovery.domains  # seen, maybe mid-copy
    assert watcher.check() is True and "gardening" in answerer.discovery.domains  # unchanged since: applied
    assert watcher.check() is False


def test_reload_can_be_turned_off(tmp_path, embedder, monkeypatch, capsys):
    settings = Settings(domains_dir=tmp_path, indexes_dir=tmp_path / "indexes", reload_s=0)
    answerer = Answerer(settings, discover(tmp_path), Retriever(settings, embedder))
    with watching(answerer) as watcher:
        assert watcher is None
        assert not any(t.name == "domain-reload" for t in threading.enumerate())
    with watching(Answerer(settings.with_(reload_s=5.0), discover(tmp_path), answerer.retriever)) as watcher:
        assert watcher is not None and any(t.name == "domain-reload" for t in threading.enumerate())
    assert not any(t.name == "domain-reload" for t in threading.enumerate())  # stopped with the block


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_a_bad_reload_interval_is_refused(monkeypatch, capsys, value):
    monkeypatch.setenv("DOMAINBOT_RELOAD_S", value)
    assert main(["route", "hello"]) == 2
    assert "DOMAINBOT_RELOAD_S must be" in capsys.readouterr().err
