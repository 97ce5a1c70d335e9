"""The owner report: numbers from the store, PNGs that are real images, HTML that escapes user text."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.store.store import Store
from training import report


class Clock:
    def __init__(self) -> None:
        self.now = "2026-03-01T09:00:00.000+00:00"

    def __call__(self) -> str:
        return self.now


@pytest.fixture
def seeded() -> Store:
    clock = Clock()
    store = Store(":memory:", clock=clock)

    def ask(question: str, adapter: str, kind: str = "answer", domain: str | None = "finance") -> int:
        return store.log_exchange(
            source="slack", question=question, answer="<b>an answer</b>", domain=domain, kind=kind,
            router_scores={}, chosen_by="router", citations=[], adapter=adapter, latency_ms=3.0,
        )  # fmt: skip

    a = ask("q1", "base")
    b = ask("q2", "base")
    store.add_feedback(a, "reaction", "+1", user="U1", event_key="1")
    store.add_feedback(b, "reaction", "-1", user="U1", event_key="2")
    clock.now = "2026-03-02T09:00:00.000+00:00"
    c = ask("<script>alert(1)</script> q3", "v1")
    d = ask("hello there", "base", kind="abstain", domain=None)
    store.add_feedback(c, "button", "+1", user="U2", event_key="3")
    store.add_feedback(c, "reaction", "+1", user="U3", event_key="4")
    store.add_feedback(c, "reaction", "removed:+1", user="U3", event_key="5")
    store.add_feedback(d, "reroute", "finance", user="U2", event_key="6")
    run = store.start_run("finance", current_version="base")
    store.finish_run(
        run, status="promoted", reason="ok", candidate_version="v1",
        metrics_current={"overall": 0.4, "tasks": {"tfns": 0.3}},
        metrics_candidate={"overall": 0.6, "tasks": {"tfns": 0.7}},
    )  # fmt: skip
    return store


def test_feedback_by_day(seeded: Store) -> None:
    days = report.feedback_by_day(seeded.feedback())
    assert list(days) == ["2026-03-01", "2026-03-02"]
    assert days["2026-03-01"] == {"👍": 1, "👎": 1}
    assert days["2026-03-02"] == {"👍": 2, "reroute": 1}  # the withdrawal is not an event to plot


def test_thumbs_up_rate_per_version(seeded: Store) -> None:
    rates = {r.version: r for r in report.thumbs_up_rate(seeded.exchanges(), seeded.feedback())}
    assert list(rates) == ["finance/base", "finance/v1"]  # the abstention is not an answer
    assert (rates["finance/base"].up, rates["finance/base"].down, rates["finance/base"].rate) == (1, 1, 0.5)
    assert (rates["finance/v1"].up, rates["finance/v1"].rate) == (1, 1.0)  # U3 withdrew their vote


def test_routing_rates(seeded: Store) -> None:
    days = report.routing_by_day(seeded.exchanges(), seeded.feedback())
    assert [(d.day, d.exchanges, d.abstained, d.rerouted) for d in days] == [
        ("2026-03-01", 2, 0, 0), ("2026-03-02", 2, 1, 1),
    ]  # fmt: skip
    assert days[1].abstention_rate == 0.5


def test_eval_by_version(seeded: Store) -> None:
    assert report.eval_by_version(seeded.runs()) == {
        "finance/base": {"overall": 0.4, "tfns": 0.3}, "finance/v1": {"overall": 0.6, "tfns": 0.7},
    }  # fmt: skip


def test_summary_table(seeded: Store) -> None:
    rows = {r.domain: r for r in report.summaries(seeded.exchanges(), seeded.feedback(), seeded.runs())}
    fin = rows["finance"]
    assert (fin.exchanges, fin.up, fin.down, fin.rate, fin.last_run) == (3, 2, 1, "67%", "promoted v1")
    assert (rows["(none)"].abstained, rows["(none)"].reroutes) == (1, 1)
    table = report.format_table(list(rows.values()))
    assert table.splitlines()[0].split()[:2] == ["domain", "exchanges"]
    assert "promoted v1" in table


def test_write_report(seeded: Store, tmp_path: Path) -> None:
    out = report.write_report(seeded, tmp_path / "r")
    assert out.html_path.name == "index.html"
    assert len(out.pngs) == 4
    for png in out.pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{png.name}"' in out.html_path.read_text()
    page = out.html_path.read_text()
    assert "<script>alert(1)</script>" not in page  # user text is escaped
    assert "&lt;b&gt;an answer&lt;/b&gt;" in page
    assert "Latest 👎 to review" in page and "q2" in page


def test_report_on_an_empty_store(tmp_path: Path) -> None:
    out = report.write_report(Store(":memory:"), tmp_path, "legal")
    assert all(p.stat().st_size > 1000 for p in out.pngs)
    assert "No thumbs-down answers" in out.html_path.read_text()
    assert len(out.table.splitlines()) == 2  # the header and its rule


def test_eval_metrics_from_adapter_meta(tmp_path: Path) -> None:
    import json

    from bot.domains import discover

    root = Path(__file__).resolve().parent.parent
    domains = tmp_path / "domains"
    (domains / "finance").mkdir(parents=True)
    for item in (root / "domains" / "finance").iterdir():
        if item.name != "adapters":
            (domains / "finance" / item.name).symlink_to(item)
    finance = discover(domains).get("finance")
    for version, overall in (("v1", 0.5), ("v2", 0.7)):
        folder = finance.adapters_dir / version
        folder.mkdir(parents=True)
        (folder / "adapter.gguf").write_bytes(b"x")
        meta = {"metrics": {"overall": overall, "tasks": {"tfns_sentiment": {"score": overall, "n": 9}}}}
        (folder / "meta.json").write_text(json.dumps(meta))
    assert report.eval_from_meta([finance]) == {
        "finance/v1": {"overall": 0.5, "tfns_sentiment": 0.5},
        "finance/v2": {"overall": 0.7, "tfns_sentiment": 0.7},
    }
    out = report.write_report(Store(":memory:"), tmp_path / "r", "finance", domains=[finance])
    assert out.pngs[2].stat().st_size > 1000


def test_guard_verdicts_per_version_and_forced_promotions_reach_the_report(tmp_path: Path) -> None:
    import json

    from bot.domains import discover

    store = Store(":memory:", clock=Clock())
    for adapter, verdict in [("v1", "supported"), ("v1", "quoted"), ("v1", "quoted"), ("v2", "trimmed"), ("v2", None)]:
        store.log_exchange(source="cli", question="q", answer="a", domain="legal", kind="answer", router_scores={},
                           chosen_by="router", citations=[], adapter=adapter, latency_ms=1.0, guard_verdict=verdict)
    rates = report.guard_rates(store.exchanges())
    assert rates == {"legal/v1": {"supported": 1, "quoted": 2}, "legal/v2": {"trimmed": 1}}  # no verdict: not counted

    domains = tmp_path / "domains"
    (domains / "legal" / "adapters" / "v2").mkdir(parents=True)
    (domains / "legal" / "domain.toml").write_text(
        'name = "legal"\ndescription = "Contracts"\nexamples = ["Who signs?", "What law governs?", "Can it renew?"]\n'
        'system_prompt = "Answer from the sources."\n')
    (domains / "legal" / "adapters" / "v2" / "adapter.gguf").write_bytes(b"GGUF")
    (domains / "legal" / "adapters" / "v2" / "meta.json").write_text(
        json.dumps({"forced": {"reason": "qa +12 points; <b>3 quotes</b>", "at": "2026-11-26"}}))
    found = discover(domains).domains.values()
    out = report.write_report(store, tmp_path / "report", "legal", domains=found)
    page = out.html_path.read_text()
    assert "Grounding guard per version" in page and "2 (67%)" in page  # v1's quoted share
    assert "legal/v2" in page and "qa +12 points; &lt;b&gt;3 quotes&lt;/b&gt;" in page  # the reason, escaped


def test_retrain_verdicts_with_their_intervals_reach_the_report(tmp_path: Path) -> None:
    store = Store(":memory:")
    dev = {"finance_qa": {"n": 40, "current": 0.25, "candidate": 0.6, "diff": 0.35, "ci_low": 0.2, "ci_high": 0.5,
                          "p_value": 0.0001, "significant": True}}  # fmt: skip
    test = {"finance_qa": {**dev["finance_qa"], "candidate": 0.5, "diff": 0.25}}
    run = store.start_run("finance", current_version="v1", config={"seed": 0})
    store.finish_run(run, status="promoted", reason="significant gain", candidate_version="v2",
                     config={"seed": 0, "verdict": {"dev": dev, "test": test}})  # fmt: skip
    bad = store.start_run("finance", current_version="v2")
    store.finish_run(bad, status="rejected", reason="finance_qa: no significant gain <poison>", candidate_version="v3")
    store.finish_run(store.start_run("finance", current_version="v2"), status="skipped", reason="nothing new")

    verdicts = report.retrain_verdicts(store.runs("finance"))
    assert [(v["status"], v["to"]) for v in verdicts] == [("promoted", "v2"), ("rejected", "v3")]  # skipped: no verdict
    assert report.paired_cell(verdicts[0]["dev"]) == (
        "finance_qa: 0.250 -> 0.600 (+0.350, n=40, CI [+0.200, +0.500], p=0.0001)"
    )
    assert report.paired_cell(verdicts[1]["dev"]) == "-"
    page = report.write_report(store, tmp_path / "r").html_path.read_text()
    assert "Retrain verdicts" in page and "CI [+0.200, +0.500]" in page and "0.250 -&gt; 0.500" in page
    assert "&lt;poison&gt;" in page and "<poison>" not in page
