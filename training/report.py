"""The domain owner's report: one HTML page with PNG plots, and a short table printed to the terminal.

Plots: feedback over time; 👍 rate per adapter version; eval metrics per version; router abstention and
reroute rates; and the latest 👎 answers to review. The numbers are computed by pure functions over store
rows (tested on their own); matplotlib and HTML are the edge.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from training import feedback as fd

FEEDBACK_SERIES = ("👍", "👎", "correction", "reroute", "opt_out")


def _day(stamp: str) -> str:
    return stamp[:10]


def feedback_label(row: Mapping) -> str | None:
    """The series a feedback row belongs to in the 'feedback over time' plot (withdrawn votes are not plotted)."""
    if row["kind"] in fd.VOTE_KINDS:
        vote = fd.parse_vote(row["value"])
        if vote is None or vote[1]:
            return None
        return "👍" if vote[0] > 0 else "👎"
    return row["kind"]


def feedback_by_day(feedback: Iterable[Mapping]) -> dict[str, Counter]:
    out: dict[str, Counter] = defaultdict(Counter)
    for row in feedback:
        label = feedback_label(row)
        if label:
            out[_day(row["created_at"])][label] += 1
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class VersionRate:
    version: str  # "finance/v2"
    exchanges: int
    up: int
    down: int

    @property
    def rate(self) -> float | None:
        votes = self.up + self.down
        return self.up / votes if votes else None


def version_key(domain: str | None, adapter: str) -> str:
    return f"{domain or '-'}/{adapter}"


def _version_order(key: str) -> tuple[str, int]:
    domain, _, adapter = key.partition("/")
    return domain, int(adapter[1:]) if adapter[1:].isdigit() else -1  # base first, then v1, v2, ...


def thumbs_up_rate(exchanges: Sequence[Mapping], feedback: Sequence[Mapping]) -> list[VersionRate]:
    """Per adapter version: exchanges answered, and users' standing 👍 / 👎 on them."""
    tallies = fd.tally_votes(feedback)
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for ex in exchanges:
        if ex["kind"] != "answer":
            continue
        t = tallies.get(ex["id"], fd.Tally())
        row = acc[version_key(ex["domain"], ex["adapter"])]
        row[0] += 1
        row[1] += t.up
        row[2] += t.down
    return [VersionRate(k, *acc[k]) for k in sorted(acc, key=_version_order)]


@dataclass(frozen=True)
class RoutingDay:
    day: str
    exchanges: int
    abstained: int
    rerouted: int

    @property
    def abstention_rate(self) -> float:
        return self.abstained / self.exchanges if self.exchanges else 0.0

    @property
    def reroute_rate(self) -> float:
        return self.rerouted / self.exchanges if self.exchanges else 0.0


def routing_by_day(exchanges: Sequence[Mapping], feedback: Sequence[Mapping]) -> list[RoutingDay]:
    rerouted = {f["exchange_id"] for f in feedback if f["kind"] == "reroute"}
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for ex in exchanges:
        row = acc[_day(ex["created_at"])]
        row[0] += 1
        row[1] += ex["kind"] == "abstain"
        row[2] += ex["id"] in rerouted
    return [RoutingDay(day, *acc[day]) for day in sorted(acc)]


def eval_by_version(runs: Sequence[Mapping]) -> dict[str, dict[str, float]]:
    """{"finance/v2": {"overall": .., "<task>": ..}} from the metrics each training run recorded."""
    out: dict[str, dict[str, float]] = {}
    for run in runs:
        for version, metrics in ((run.get("current_version"), run.get("metrics_current")),
                                 (run.get("candidate_version"), run.get("metrics_candidate"))):  # fmt: skip
            if version and isinstance(metrics, Mapping) and "overall" in metrics:
                flat = {"overall": float(metrics["overall"])}
                flat.update({t: float(v) for t, v in (metrics.get("tasks") or {}).items()})
                out[version_key(run["domain"], version)] = flat
    return {k: out[k] for k in sorted(out, key=_version_order)}


def eval_from_meta(domains: Iterable) -> dict[str, dict[str, float]]:
    """The same, from each adapter version's meta.json (written by `domainbot eval` and by retrain)."""
    from bot import adapters

    out: dict[str, dict[str, float]] = {}
    for domain in domains:
        for version in adapters.versions(domain.adapters_dir):
            metrics = version.meta.get("metrics") or {}
            if "overall" not in metrics:
                continue
            flat = {"overall": float(metrics["overall"])}
            for task, value in (metrics.get("tasks") or {}).items():
                score = value.get("score") if isinstance(value, Mapping) else value
                if isinstance(score, int | float):
                    flat[task] = float(score)
            out[version_key(domain.name, version.version)] = flat
    return out


@dataclass(frozen=True)
class DomainSummary:
    domain: str
    exchanges: int
    up: int
    down: int
    corrections: int
    reroutes: int
    opt_outs: int
    abstained: int
    last_run: str

    @property
    def rate(self) -> str:
        votes = self.up + self.down
        return f"{self.up / votes:.0%}" if votes else "-"


def summaries(
    exchanges: Sequence[Mapping], feedback: Sequence[Mapping], runs: Sequence[Mapping]
) -> list[DomainSummary]:
    tallies = fd.tally_votes(feedback)
    domain_of = {ex["id"]: ex["domain"] or "(none)" for ex in exchanges}
    kinds: dict[str, Counter] = defaultdict(Counter)
    for f in feedback:
        kinds[domain_of.get(f["exchange_id"], "(none)")][f["kind"]] += 1
    last = {run["domain"]: f"{run['status']} {run.get('candidate_version') or ''}".strip() for run in runs}
    out = []
    for domain in sorted({domain_of[e["id"]] for e in exchanges}):
        mine = [e for e in exchanges if domain_of[e["id"]] == domain]
        t = [tallies.get(e["id"], fd.Tally()) for e in mine]
        k = kinds[domain]
        out.append(DomainSummary(
            domain, len(mine), sum(x.up for x in t), sum(x.down for x in t), k["correction"], k["reroute"],
            k["opt_out"], sum(e["kind"] == "abstain" for e in mine), last.get(domain, "-"),
        ))  # fmt: skip
    return out


def format_table(rows: Sequence[DomainSummary]) -> str:
    head = (
        "domain",
        "exchanges",
        "up",
        "down",
        "up rate",
        "corrections",
        "reroutes",
        "opt-outs",
        "abstained",
        "last run",
    )
    body = [
        (
            r.domain,
            r.exchanges,
            r.up,
            r.down,
            r.rate,
            r.corrections,
            r.reroutes,
            r.opt_outs,
            r.abstained,
            r.last_run,
        )
        for r in rows
    ]
    cells = [list(map(str, head))] + [list(map(str, b)) for b in body]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---- plots (matplotlib, headless) ---------------------------------------------------------------------


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    return plt, fig, ax


def _save(plt, fig, ax, path: Path, title: str, empty: bool) -> Path:
    if empty:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_feedback(by_day: Mapping[str, Counter], path: Path) -> Path:
    plt, fig, ax = _figure()
    days = list(by_day)
    # Emoji glyphs are missing from matplotlib's default font; the legend spells them out.
    names = {"👍": "thumbs up", "👎": "thumbs down", "opt_out": "opt-out"}
    for series in FEEDBACK_SERIES:
        ax.plot(days, [by_day[d][series] for d in days], marker="o", label=names.get(series, series))
    ax.set_ylabel("events per day")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return _save(plt, fig, ax, path, "Feedback over time", not days)


def plot_version_rates(rates: Sequence[VersionRate], path: Path) -> Path:
    plt, fig, ax = _figure()
    shown = [r for r in rates if r.rate is not None]
    ax.bar([r.version for r in shown], [r.rate for r in shown], color="tab:green")
    for i, r in enumerate(shown):
        ax.annotate(f"{r.up}/{r.up + r.down}", (i, r.rate), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("thumbs-up rate")
    return _save(plt, fig, ax, path, "Thumbs-up rate per adapter version", not shown)


def plot_eval(metrics: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    plt, fig, ax = _figure()
    versions = list(metrics)
    series = sorted({k for m in metrics.values() for k in m}, key=lambda k: (k != "overall", k))
    for name in series:
        ax.plot(versions, [metrics[v].get(name) for v in versions], marker="o", label=name,
                linewidth=2.5 if name == "overall" else 1)  # fmt: skip
    ax.set_ylabel("eval score")
    if series:
        ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return _save(plt, fig, ax, path, "Eval metrics per adapter version", not versions)


def plot_routing(days: Sequence[RoutingDay], path: Path) -> Path:
    plt, fig, ax = _figure()
    x = [d.day for d in days]
    ax.plot(x, [d.abstention_rate for d in days], marker="o", label="abstained")
    ax.plot(x, [d.reroute_rate for d in days], marker="s", label="re-routed by a user")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of questions")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return _save(plt, fig, ax, path, "Router abstention and reroute rates", not days)


# ---- the page -----------------------------------------------------------------------------------------


def _review_html(items: Sequence[fd.Judged]) -> str:
    if not items:
        return "<p>No thumbs-down answers waiting for review.</p>"
    rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            html.escape(j.exchange["created_at"][:16]),
            html.escape(version_key(j.exchange["domain"], j.exchange["adapter"])),
            html.escape(j.exchange["question"]),
            html.escape(j.exchange["answer"]),
            j.tally.down,
        )
        for j in items
    )
    head = "<tr><th>time</th><th>version</th><th>question</th><th>answer</th><th>👎</th></tr>"
    return f"<table>{head}{rows}</table>"


GUARD_VERDICTS = ("supported", "trimmed", "quoted", "no-sources")


def guard_rates(exchanges: Sequence[Mapping]) -> dict[str, Counter]:
    """Per adapter version: how many answers the grounding guard passed, trimmed, replaced by a quote, or
    answered with "my sources don't cover this" (answers logged before the guard existed have no verdict)."""
    out: dict[str, Counter] = defaultdict(Counter)
    for ex in exchanges:
        if ex["kind"] == "answer" and ex.get("guard_verdict"):
            out[version_key(ex["domain"], ex["adapter"])][ex["guard_verdict"]] += 1
    return {k: out[k] for k in sorted(out, key=_version_order)}


def _guard_html(rates: Mapping[str, Counter]) -> str:
    if not rates:
        return "<p>No guarded answers logged yet.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("version", "answers", *GUARD_VERDICTS))
    body = ""
    for version, counts in rates.items():
        n = sum(counts.values())
        cells = [version, str(n), *(f"{counts[v]} ({counts[v] / n:.0%})" for v in GUARD_VERDICTS)]
        body += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def forced_promotions(domains: Iterable) -> list[dict]:
    """Versions promoted by hand over a failed gate, with the reason given (meta.json "forced")."""
    from bot import adapters

    out = []
    for domain in domains:
        for version in adapters.versions(domain.adapters_dir):
            forced = version.meta.get("forced")
            if forced:
                out.append({"version": version_key(domain.name, version.version), **forced})
    return out


def _forced_html(items: Sequence[Mapping]) -> str:
    if not items:
        return "<p>None: every live version passed its gate.</p>"
    rows = "".join(f"<tr><td>{html.escape(str(i['version']))}</td><td>{html.escape(str(i.get('at', '')))}</td>"
                   f"<td>{html.escape(str(i.get('reason', '')))}</td></tr>" for i in items)
    return f"<table><tr><th>version</th><th>when</th><th>reason</th></tr>{rows}</table>"


def retrain_verdicts(runs: Sequence[Mapping]) -> list[dict]:
    """Each finished retrain's verdict with its paired numbers (dev: what decided; test: reported after)."""
    out = []
    for run in runs:
        if run.get("status") not in ("promoted", "rejected"):
            continue
        verdict = (run.get("config") or {}).get("verdict") or {}
        out.append({
            "run": run["id"], "domain": run["domain"], "status": run["status"], "reason": run.get("reason") or "",
            "from": run.get("current_version"), "to": run.get("candidate_version"),
            "dev": verdict.get("dev") or {}, "test": verdict.get("test") or {},
        })  # fmt: skip
    return out


def paired_cell(paired: Mapping) -> str:
    """'finance_qa: 0.250 -> 0.600 (+0.350, CI [+0.2, +0.5], p=0.0001)' per task."""
    parts = []
    for task, p in sorted(paired.items()):
        if not isinstance(p, Mapping) or "ci_low" not in p:
            continue
        parts.append(f"{task}: {p['current']:.3f} -> {p['candidate']:.3f} ({p['diff']:+.3f}, n={p['n']}, "
                     f"CI [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}], p={p['p_value']:.3g})")  # fmt: skip
    return "; ".join(parts) or "-"


def _verdicts_html(items: Sequence[Mapping]) -> str:
    if not items:
        return "<p>No retrain has reached a verdict yet.</p>"
    cells = ("run", "domain", "status", "from", "to", "dev (decided)", "test (reported)", "reason")
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            i["run"], i["domain"], i["status"], i["from"], i["to"], paired_cell(i["dev"]), paired_cell(i["test"]),
            i["reason"])) + "</tr>"
        for i in items
    )  # fmt: skip
    return "<table><tr>" + "".join(f"<th>{c}</th>" for c in cells) + f"</tr>{rows}</table>"


def _summary_html(rows: Sequence[DomainSummary]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("domain", "exchanges", "👍", "👎", "👍 rate", "corrections",
                                             "reroutes", "opt-outs", "abstained", "last run"))  # fmt: skip
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r.domain, r.exchanges, r.up, r.down, r.rate, r.corrections, r.reroutes, r.opt_outs, r.abstained,
            r.last_run)) + "</tr>"
        for r in rows
    )  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
    "img{max-width:100%;border:1px solid #eee;margin:.5em 0}"
)


@dataclass(frozen=True)
class Report:
    html_path: Path
    pngs: list[Path]
    table: str


def write_report(
    store, out_dir: Path, domain: str | None = None, *, domains: Iterable = (), review_limit: int = 20
) -> Report:
    """Write `out_dir/index.html` and its PNGs for one domain (or all); return the paths and the table.

    `domains` (Domain objects) adds the eval metrics recorded in their adapters' meta.json.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    exchanges = store.exchanges(domain)
    feedback = store.feedback(domain)
    runs = store.runs(domain)
    evals = {**eval_from_meta(d for d in domains if domain in (None, d.name)), **eval_by_version(runs)}
    pngs = [
        plot_feedback(feedback_by_day(feedback), out_dir / "feedback_over_time.png"),
        plot_version_rates(thumbs_up_rate(exchanges, feedback), out_dir / "thumbs_up_rate.png"),
        plot_eval({k: evals[k] for k in sorted(evals, key=_version_order)}, out_dir / "eval_per_version.png"),
        plot_routing(routing_by_day(exchanges, feedback), out_dir / "routing.png"),
    ]
    rows = summaries(exchanges, feedback, runs)
    title = f"Domainbot report: {domain or 'all domains'}"
    images = "".join(f'<img src="{p.name}" alt="{p.stem}">' for p in pngs)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<h2>Summary</h2>{_summary_html(rows)}"
        f"<h2>Grounding guard per version</h2>{_guard_html(guard_rates(exchanges))}"
        f"<h2>Retrain verdicts</h2>{_verdicts_html(retrain_verdicts(runs))}"
        f"<h2>Promoted over a failed gate</h2>"
        f"{_forced_html(forced_promotions(d for d in domains if domain in (None, d.name)))}"
        f"<h2>Plots</h2>{images}"
        f"<h2>Latest 👎 to review</h2>{_review_html(fd.needs_review(fd.judge(exchanges, feedback), review_limit))}"
        "</body></html>"
    )
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return Report(path, pngs, format_table(rows))
