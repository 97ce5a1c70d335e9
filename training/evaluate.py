"""`domainbot eval`: run a domain's eval.jsonl through the real serving path and score it.

Each item goes through `Answerer.answer` (llama.cpp, the adapter, the prompt builder, retrieval where the
task uses it). How an item is asked follows the task's manifest entry:
- inline text (a tweet, a clause, an abstract): `question + "\\n\\n" + context`, no retrieved passages;
- reading comprehension (`retrieval = true` and an inline context, e.g. TAT-QA): the gold context as source [1];
- open questions (no context, e.g. MedQuAD): retrieved passages, as in Slack;
- `kind = "open_qa"` tasks (rows from the task's `source`, e.g. qa.jsonl, one `split`): retrieved passages, and
  scored by `training.qa_eval` (correct, cites the gold passage, supported, retrieved, abstained right).
Retrieval recall@k against `context_id` is scored separately (the ranker, no score floor), as asked and with
the source named.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bot import adapters as adapter_store
from bot.config import ROOT, Settings, load_settings
from bot.domains import Domain
from bot.errors import UserFacingError
from bot.prompt import Passage
from training import metrics, qa_eval
from training.dataset import load_corpus, read_jsonl, resolve_domain
from training.qa_eval import named_question

REPORTS_DIR = ROOT / "reports"
MAX_TOKENS = {"classification": 8, "extraction": 32, "qa": 64, qa_eval.KIND: 64}
TASK_MAX_TOKENS = {"medquad_open_qa": 64, "legalbench_rule_qa": 64, "tatqa_hybrid_qa": 48}
RECALL_K = (1, 5)


@dataclass
class EvalResult:
    domain: str
    adapter: str  # "base" or "vN"
    tasks: dict[str, dict]  # task -> {kind, n, score (primary), accuracy/macro_f1/... , majority_*}
    retrieval: dict[str, dict] = field(default_factory=dict)  # "as asked" / "named" -> {n, recall@1, recall@5}
    items: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    limit: int | None = None
    fingerprint: dict = field(default_factory=dict)  # what the scores depend on (cached base results must match)
    split: str = "test"  # of the open_qa tasks' rows

    @property
    def overall(self) -> float:
        scores = [t["score"] for t in self.tasks.values()]
        return sum(scores) / len(scores) if scores else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "overall": self.overall}

    @classmethod
    def from_dict(cls, d: Mapping) -> EvalResult:
        return cls(d["domain"], d["adapter"], dict(d["tasks"]), dict(d.get("retrieval", {})), list(d.get("items", [])),
                   float(d.get("seconds", 0.0)), d.get("limit"), dict(d.get("fingerprint", {})), d.get("split", "test"))


# ---- asking one item ------------------------------------------------------------------------------------
def task_kind(domain: Domain, task: str, row: dict) -> str:
    spec = domain.tasks.get(task, {})
    return spec.get("kind") or ("classification" if row.get("choices") else "qa")


def task_labels(domain: Domain, task: str, rows: Sequence[dict]) -> list[str]:
    labels = list(domain.tasks.get(task, {}).get("labels", []))
    for row in rows:  # gold labels the manifest forgot still count (e.g. unfair_tos "Contract by using")
        for label in [*row.get("choices", []), row["answer"]]:
            if label not in labels:
                labels.append(label)
    return labels


def ask_plan(domain: Domain, row: dict, titles: Mapping[str, str]) -> tuple[str, list[Passage] | None]:
    """(question, passages) for Answerer.answer: passages None = retrieve, [] = none."""
    if domain.tasks.get(row["task"], {}).get("kind") == qa_eval.KIND:  # the real job: retrieval, no gold passage
        return qa_eval.question_of(row), None
    context = (row.get("context") or "").strip()
    if not context:
        return row["question"], None
    if domain.tasks.get(row["task"], {}).get("retrieval"):
        cid = row.get("context_id") or row["id"]
        return row["question"], [Passage(f"{cid}#0", titles.get(cid, "Source"), context, 1.0, cid)]
    return f"{row['question'].strip()}\n\n{context}", []


def load_eval_rows(domain: Domain, tasks: Sequence[str] | None, limit: int | None, split: str = "test") -> list[dict]:
    """eval.jsonl rows, plus the `split` rows of each open_qa task (from its own source file)."""
    specs = qa_eval.specs(domain)
    wanted = [t for t in tasks or [] if t in specs]
    only_qa = bool(tasks) and len(wanted) == len(tasks)  # then eval.jsonl is not needed (nor required to exist)
    rows = [] if only_qa else read_jsonl(domain.eval_file, required=("id", "task", "question", "answer"))
    rows += qa_eval.load_rows(domain, wanted if tasks else None, split, read_jsonl)
    if tasks:
        unknown = set(tasks) - {r["task"] for r in rows}
        if unknown:
            raise UserFacingError(f"{domain.name} eval has no task(s) {', '.join(sorted(unknown))}")
        rows = [r for r in rows if r["task"] in tasks]
    if limit:  # the first `limit` of each task: every task stays represented
        per_task: dict[str, list[dict]] = {}
        for r in rows:
            per_task.setdefault(r["task"], []).append(r)
        rows = [r for task_rows in per_task.values() for r in task_rows[:limit]]
    if not rows:
        raise UserFacingError(f"{domain.eval_file} has no rows to evaluate")
    return rows


# ---- scoring --------------------------------------------------------------------------------------------
def score_task(kind: str, items: Sequence[dict], labels: Sequence[str]) -> dict:
    if kind == qa_eval.KIND:
        return qa_eval.score_task(items)
    golds = [it["gold"] for it in items]
    if kind == "classification":
        preds = [metrics.parse_label(it["output"], labels) for it in items]
        for it, p in zip(items, preds, strict=True):
            it["pred"] = p
        label, maj_acc, maj_f1 = metrics.majority(golds)
        f1 = metrics.macro_f1(preds, golds)
        return {"kind": kind, "n": len(items), "score": f1, "accuracy": metrics.accuracy(preds, golds), "macro_f1": f1,
                "unparsed": sum(p is None for p in preds), "majority_label": label, "majority_accuracy": maj_acc,
                "majority_macro_f1": maj_f1}
    outs = [metrics.strip_derivation(it["output"]) for it in items]
    em = [metrics.exact_match(o, g) for o, g in zip(outs, golds, strict=True)]
    f1 = [metrics.token_f1(o, g) for o, g in zip(outs, golds, strict=True)]
    return {"kind": kind, "n": len(items), "score": sum(f1) / len(f1), "exact_match": sum(em) / len(em),
            "token_f1": sum(f1) / len(f1)}


def retrieval_recall(retriever, domain: Domain, rows: Sequence[dict], corpus: Mapping[str, Passage],
                     progress: bool = True) -> dict[str, dict]:
    from tqdm import tqdm

    # open_qa rows report their own `retrieved` (at serving k, with the score floor); this is eval.jsonl's recall
    gold_rows = [r for r in rows if r.get("context_id") and domain.tasks.get(r["task"], {}).get("kind") != qa_eval.KIND]
    if not gold_rows:
        return {}
    variants = {
        "as asked": lambda r: r["question"],
        "named": lambda r: named_question(r["question"], corpus.get(r["context_id"])),
    }
    out = {}
    k = max(RECALL_K)
    for name, make in variants.items():
        ranked = [[p.doc_id or p.chunk_id.split("#")[0] for p in retriever.search(domain, make(r), k=k, min_score=0.0)]
                  for r in tqdm(gold_rows, desc=f"recall {name}", disable=not progress)]
        gold = [r["context_id"] for r in gold_rows]
        out[name] = {"n": len(gold_rows), **{f"recall@{i}": metrics.recall_at_k(ranked, gold, i) for i in RECALL_K}}
        keep = [j for j, r in enumerate(gold_rows) if holds_evidence(domain, r)] if name == "named" else []
        if 0 < len(keep) < len(gold_rows):
            sub_ranked, sub_gold = [ranked[j] for j in keep], [gold[j] for j in keep]
            out["named, evidence rows"] = {
                "n": len(keep), **{f"recall@{i}": metrics.recall_at_k(sub_ranked, sub_gold, i) for i in RECALL_K}}
    return out


def holds_evidence(domain: Domain, row: dict) -> bool:
    """False where the task says the gold passage only answers for one label (a CUAD "No" row pairs the question
    with a clause of another kind: no retriever should rank that clause first)."""
    label = domain.tasks.get(row["task"], {}).get("evidence_when")
    return label is None or row.get("answer") == label


# ---- the runner -----------------------------------------------------------------------------------------
def evaluate(
    domain: Domain | str,
    adapter: str | None = "base",
    limit: int | None = None,
    tasks: Sequence[str] | None = None,
    *,
    settings: Settings | None = None,
    answerer=None,
    with_retrieval: bool = True,
    progress: bool = True,
    split: str = "test",
) -> EvalResult:
    """Score `adapter` ("base", "vN", or None = the live one) on the domain's eval set (open_qa rows of `split`)."""
    from tqdm import tqdm

    from bot.answer import Answerer

    settings = settings or load_settings()
    domain = resolve_domain(domain, settings)
    rows = load_eval_rows(domain, tasks, limit, split)
    own = answerer is None
    answerer = answerer or Answerer.from_settings(settings)
    try:
        adapter = _resolve_adapter(domain, adapter, settings)
        corpus = load_corpus(domain)
        titles = {k: p.title for k, p in corpus.items()}
        t0 = time.perf_counter()
        items = []
        for row in tqdm(rows, desc=f"eval {domain.name} [{adapter}]", disable=not progress):
            items.append(_ask(answerer, domain, row, adapter, titles))
        by_task: dict[str, list[dict]] = {}
        for it in items:
            by_task.setdefault(it["task"], []).append(it)
        scores = {
            task: score_task(task_kind(domain, task, its[0]), its, task_labels(domain, task, [r for r in rows if r["task"] == task]))
            for task, its in by_task.items()
        }
        recall = retrieval_recall(answerer.retriever, domain, rows, corpus, progress) if with_retrieval else {}
        return EvalResult(domain.name, adapter, scores, recall, items, time.perf_counter() - t0, limit,
                          fingerprint(domain, adapter, settings, limit, tasks, split), split)
    finally:
        if own:
            answerer.close()


def retrieval_only(domain: Domain, settings: Settings, retriever=None) -> EvalResult:
    """Recall@k of the retriever alone (no model): seconds, for tuning a domain's documents."""
    from bot.retrieval.index import Retriever

    t0 = time.perf_counter()
    rows = load_eval_rows(domain, None, None)
    recall = retrieval_recall(retriever or Retriever(settings), domain, rows, load_corpus(domain))
    return EvalResult(domain.name, "retriever", {}, recall, [], time.perf_counter() - t0, None, {})


def _code_hash(*modules: str) -> str:
    """Source of the modules a cached score depends on (a retrieval change must not reuse old recalls)."""
    import hashlib
    import importlib.util

    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        h.update(Path(spec.origin).read_bytes() if spec and spec.origin else name.encode())
    return h.hexdigest()[:16]


def fingerprint(domain: Domain, adapter: str, settings: Settings, limit: int | None, tasks: Sequence[str] | None,
                split: str = "test") -> dict:
    """Everything a score depends on: model + adapter files, eval data (qa.jsonl and its split too), prompt
    settings, limits, and the code that retrieves, guards and scores open questions."""
    import hashlib

    from training.finetune import file_hash, served_gguf

    gguf = domain.adapters_dir / adapter / "adapter.gguf"
    return {
        "base": file_hash(served_gguf(settings)), "adapter": file_hash(gguf) if adapter != "base" else "base",
        "eval": file_hash(domain.eval_file), "docs": sorted(str(p.stat().st_mtime) for p in domain.docs_dir.glob("*")),
        "prompt": hashlib.sha256(f"{domain.system_prompt}|{domain.tasks}|{settings.prompt_budget}".encode()).hexdigest()[:16],
        "max_tokens": {**MAX_TOKENS, **TASK_MAX_TOKENS}, "limit": limit, "tasks": sorted(tasks or []),
        "retrieval": _code_hash("bot.retrieval.index", "bot.retrieval.bm25"),
        "split": split,
        "qa": {t: file_hash(path) for t, path in sorted(qa_eval.sources(domain).items()) if path.is_file()},
        "qa_code": _code_hash("training.qa_eval", "training.metrics", "bot.guard", "bot.answer"),
    }


def cached(domain: Domain, adapter: str, settings: Settings, limit: int | None, tasks: Sequence[str] | None,
           folder: Path | None = None, split: str = "test") -> EvalResult | None:
    """A saved result for exactly this setup (e.g. the base model, which every comparison needs), else None."""
    path = (folder or REPORTS_DIR / domain.name) / f"eval_{adapter}.json"
    try:
        saved = EvalResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError):
        return None
    return saved if saved.fingerprint == fingerprint(domain, adapter, settings, limit, tasks, split) else None


def _resolve_adapter(domain: Domain, adapter: str | None, settings: Settings) -> str:
    from bot import adapters as store
    from training.export import check_base
    from training.finetune import served_gguf

    if adapter in (None, "current"):
        live = store.current(domain.adapters_dir)
        adapter = live.version if live else "base"
    if adapter == "base":
        return adapter
    version = store.AdapterVersion(adapter, domain.adapters_dir / adapter)
    if not version.gguf.is_file():
        known = ", ".join(v.version for v in store.versions(domain.adapters_dir)) or "none"
        raise UserFacingError(f"{domain.name} has no adapter {adapter!r} (versions: {known})")
    check_base(version, served_gguf(settings))
    return adapter


def _ask(answerer, domain: Domain, row: dict, adapter: str, titles: Mapping[str, str]) -> dict:
    from bot.answer import Question

    question, passages = ask_plan(domain, row, titles)
    kind = task_kind(domain, row["task"], row)
    max_tokens = TASK_MAX_TOKENS.get(row["task"], MAX_TOKENS.get(kind, 64))
    answer = answerer.answer(Question(question, domain=domain.name, adapter=adapter, passages=passages,
                                      max_tokens=max_tokens))
    # Policy replies (an emergency redirect, a refusal) run no model; they are scored like any other output.
    if adapter != "base" and answer.kind == "answer" and answer.adapter != adapter:
        raise UserFacingError(f"the runtime refused adapter {adapter} for {domain.name}: {' '.join(answer.notes)}")
    item = {"id": row["id"], "task": row["task"], "gold": row["answer"], "output": answer.text, "kind": answer.kind,
            "total_s": round(answer.timings.get("total_s", 0.0), 3)}
    if kind == qa_eval.KIND:  # what the scorer needs: the gold's forms, and what was shown, cited and guarded
        item.update({k: row[k] for k in qa_eval.ITEM_FIELDS if k in row}, question=question)
        item.update(qa_eval.answer_record(answer))
    return item


# ---- promotion gate -------------------------------------------------------------------------------------
def _task_scores(result) -> dict[str, float]:
    if isinstance(result, EvalResult):
        return {t: float(s["score"]) for t, s in result.tasks.items()}
    tasks = result.get("tasks", result) if isinstance(result, Mapping) else {}
    return {t: float(s["score"] if isinstance(s, Mapping) else s) for t, s in tasks.items()}


def _task_dicts(result) -> dict:
    if isinstance(result, EvalResult):
        return result.tasks
    return dict(result.get("tasks", result)) if isinstance(result, Mapping) else {}


def _unit(kind: str, key: str, item: Mapping) -> object:
    """What one item contributes to a task measure: a right/supported flag, a (pred, gold) pair, a token-F1."""
    if kind == qa_eval.KIND:
        return bool(item.get(key))
    if kind == "classification":
        return (item.get("pred"), item["gold"])
    return metrics.token_f1(metrics.strip_derivation(item["output"]), item["gold"])


def _measure(kind: str):
    if kind == "classification":
        return lambda units: metrics.macro_f1([p for p, _ in units], [g for _, g in units])
    return lambda units: sum(units) / len(units)


class _Chance:
    """The paired randomization p-value of a task measure's drop, when both results hold the same items of the task
    and those items reproduce the reported scores (else None: the flat margin rule applies)."""

    def __init__(self, candidate, current) -> None:
        self.cand = candidate.items if isinstance(candidate, EvalResult) else []
        self.cur = current.items if isinstance(current, EvalResult) else []
        self.cand_tasks, self.cur_tasks = _task_dicts(candidate), _task_dicts(current)

    def __call__(self, task: str, key: str) -> tuple[float, int] | None:
        from training import significance as sig

        kind = self.cur_tasks.get(task, {}).get("kind")
        try:
            pairs = sig.pair_items(self.cur, self.cand, task) if kind else []
            a, b = [_unit(kind, key, x) for x, _ in pairs], [_unit(kind, key, y) for _, y in pairs]
        except (sig.PairingError, KeyError):
            return None
        if not pairs:
            return None
        measure = _measure(kind)
        for units, tasks in ((a, self.cur_tasks), (b, self.cand_tasks)):
            if abs(measure(units) - float(tasks[task].get(key, tasks[task]["score"]))) > 1e-6:
                return None  # the items are not what was scored: no test on them
        return sig.drop_p(a, b, measure), len(pairs)


def _gate(candidate, current, margin: float, loss_alpha: float | None) -> tuple[bool, str, str]:
    """`gate`'s verdict and reason, and on a pass what it kept (the clause `job_gate` repeats)."""
    from training import significance as sig

    alpha = sig.LOSS_ALPHA if loss_alpha is None else loss_alpha
    chance = _Chance(candidate, current)
    tolerated: list[str] = []

    def lost(task: str, key: str, label: str, was: float, now: float) -> str | None:
        drop = f"{task} {label} fell" if label else f"{task} dropped"
        drop += f" {was - now:.3f} ({was:.3f} -> {now:.3f})"
        found = chance(task, key)
        if found is None:
            return f"{drop}, more than the margin {margin}"
        p, n = found
        if p >= alpha:
            tolerated.append(f"{drop} on {n} items, within chance (p={p:.2g})")
            return None
        return f"{drop}, more than the margin {margin} and beyond chance on {n} items (p={p:.2g} < {alpha})"

    refused = qa_eval.gate_check(_task_dicts(candidate), _task_dicts(current), margin, lost)
    if refused:
        return False, refused, ""
    cand, cur = _task_scores(candidate), _task_scores(current)
    shared = sorted(set(cand) & set(cur))
    if not shared:
        return False, "no task was scored for both the candidate and the current adapter", ""
    job = {t for t, s in _task_dicts(current).items() if isinstance(s, Mapping) and s.get("kind") == qa_eval.KIND}
    for t in sorted((t for t in shared if t not in job and cur[t] - cand[t] > margin), key=lambda t: cand[t] - cur[t]):
        why = lost(t, "score", "", cur[t], cand[t])  # the worst drop first: the clearest reason
        if why:
            return False, why, ""
    mean_cand = sum(cand[t] for t in shared) / len(shared)
    mean_cur = sum(cur[t] for t in shared) / len(shared)
    if mean_cand < mean_cur:
        return False, f"worse overall: {mean_cand:.3f} < {mean_cur:.3f}", ""
    kept = f"no task dropped more than {margin}" + (f" beyond chance ({'; '.join(tolerated)})" if tolerated else "")
    return True, f"overall {mean_cur:.3f} -> {mean_cand:.3f}; {kept}", kept


def gate(candidate, current, margin: float = 0.01, *, loss_alpha: float | None = None) -> tuple[bool, str]:
    """Promote only if the candidate keeps the real job (each open_qa task's correctness and supported rate, checked
    first), is not worse overall, and loses no task. A measure is lost when it fell by more than `margin` and, where
    both results hold the scored items, chance does not explain the drop for its size (paired randomization p below
    `loss_alpha`, `training.significance.drop_p`). Drops inside chance are named in the reason."""
    ok, reason, _ = _gate(candidate, current, margin, loss_alpha)
    return ok, reason


def yardstick(candidate: EvalResult, current: EvalResult) -> list[str]:
    """The tasks a retrain must significantly improve: the open_qa job where it was evaluated, else every task."""
    shared = sorted(set(candidate.tasks) & set(current.tasks))
    job = [t for t in shared if current.tasks[t].get("kind") == qa_eval.KIND]
    return job or shared


def job_gate(candidate: EvalResult, current: EvalResult, margin: float = 0.01, *, alpha: float = 0.05,
             loss_alpha: float | None = None, seed: int = 0) -> tuple[bool, str, dict[str, dict]]:  # fmt: skip
    """Retrain's gate: `gate` (nothing lost beyond `margin` and chance at `loss_alpha`), then a paired significance
    test on the same items of each yardstick task (`training.significance`): the candidate must be better beyond chance, not merely
    tied. Returns (ok, reason, {task: the paired comparison as a dict}), the numbers kept whatever the verdict."""
    from training import significance as sig

    paired: dict[str, sig.Paired] = {}
    unpaired = ""
    try:
        for task in yardstick(candidate, current):
            paired[task] = sig.compare_items(current.items, candidate.items, task, alpha=alpha, seed=seed)
    except sig.PairingError as exc:
        unpaired = f"cannot compare the adapters item by item: {exc}"
    numbers = {t: p.to_dict() for t, p in paired.items()}
    ok, reason, kept = _gate(candidate, current, margin, loss_alpha)
    if not ok or unpaired:  # a loss beyond the margin is the clearer reason, so it comes first
        return False, reason if not ok else unpaired, numbers
    if not paired:
        return False, "no task was scored for both the candidate and the current adapter", numbers
    weak = [t for t, p in paired.items() if not p.significant]
    if weak:
        return False, f"{weak[0]}: no significant gain at alpha {alpha}: {paired[weak[0]].describe()}", numbers
    summary = "; ".join(f"{t}: {p.describe()}" for t, p in paired.items())
    return True, f"significant gain on {summary}; {kept}", numbers


# ---- reports: results.json, a table, a PNG --------------------------------------------------------------
def table(results: Sequence[EvalResult]) -> str:
    """Per task: each adapter's primary score (+ accuracy or EM), with the majority baseline beside classifiers."""
    tasks = sorted({t for r in results for t in r.tasks})
    head = ["task", "n", "metric"] + [r.adapter for r in results] + ["majority"]
    lines = [head]
    for task in tasks:
        first = next(r.tasks[task] for r in results if task in r.tasks)
        if first["kind"] == qa_eval.KIND:
            lines += qa_eval.table_rows(task, results)
            continue
        cls = first["kind"] == "classification"
        second = "accuracy" if cls else "exact_match"
        cells = [f"{r.tasks[task]['score']:.3f} / {r.tasks[task][second]:.3f}" if task in r.tasks else "-" for r in results]
        maj = f"{first['majority_macro_f1']:.3f} / {first['majority_accuracy']:.3f}" if cls else "-"
        lines.append([task, str(first["n"]), "macro-F1 / acc" if cls else "token-F1 / EM", *cells, maj])
    for variant in sorted({v for r in results for v in r.retrieval}):
        for k in RECALL_K:
            r0 = next(r for r in results if variant in r.retrieval)
            lines.append([f"retrieval ({variant})", str(r0.retrieval[variant]["n"]), f"recall@{k}",
                          *[f"{r.retrieval[variant][f'recall@{k}']:.3f}" if variant in r.retrieval else "-" for r in results], "-"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    fmt = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines[1:])])


def chart(results: Sequence[EvalResult], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for r in results for t in r.tasks})
    width = 0.8 / max(1, len(results))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 4))
    for i, r in enumerate(results):
        xs = [j + i * width for j in range(len(tasks))]
        ax.bar(xs, [r.tasks.get(t, {}).get("score", 0.0) for t in tasks], width, label=r.adapter)
    for j, t in enumerate(tasks):
        first = next(r.tasks[t] for r in results if t in r.tasks)
        if first["kind"] == "classification":
            ax.hlines(first["majority_macro_f1"], j - width / 2, j + width * (len(results) - 0.5), colors="k",
                      linestyles="dashed", label="majority" if j == 0 else None)
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(tasks))])
    ax.set_xticklabels(tasks, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("macro-F1 (classification) / token-F1")
    ax.set_ylim(0, 1)
    ax.set_title(f"{results[0].domain}: base vs adapter")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def save_results(results: Sequence[EvalResult], out_dir: Path | None = None) -> tuple[Path, Path]:
    out_dir = out_dir or REPORTS_DIR / results[0].domain
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in results:
        (out_dir / f"eval_{r.adapter}.json").write_text(json.dumps(r.to_dict(), indent=1) + "\n")
    summary = {r.adapter: {k: v for k, v in r.to_dict().items() if k != "items"} for r in results}
    path = out_dir / "results.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    return path, chart(results, out_dir / "eval.png")


def record_metrics(domain: Domain, result: EvalResult, base: EvalResult | None = None) -> None:
    """Merge an adapter's eval summary into its meta.json (atomically), for `domainbot adapters`. Tasks this eval
    did not run keep their recorded numbers (`eval --tasks legal_qa` must not erase the others); each task says
    how it was measured (items limit, and the qa split)."""
    if result.adapter == "base":
        return
    folder = domain.adapters_dir / result.adapter
    before = adapter_store.AdapterVersion(result.adapter, folder).meta.get("metrics") or {}
    summary = {t: {**{k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()}, "limit": result.limit,
                   **({"split": result.split} if s.get("kind") == qa_eval.KIND else {})}
               for t, s in result.tasks.items()}  # fmt: skip
    tasks = {**(before.get("tasks") or {}), **summary}
    scores = [float(t["score"]) for t in tasks.values() if isinstance(t, Mapping) and "score" in t]
    metrics = {"overall": round(sum(scores) / len(scores), 4) if scores else 0.0, "tasks": tasks,
               "retrieval": {**(before.get("retrieval") or {}), **result.retrieval}, "limit": result.limit,
               "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    if base is not None:
        metrics["base"] = {**(before.get("base") or {}), **{t: round(s["score"], 4) for t, s in base.tasks.items()}}
    elif "base" in before:
        metrics["base"] = before["base"]
    adapter_store.update_meta(folder, metrics=metrics)
