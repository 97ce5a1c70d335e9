"""`domainbot retrain <domain>`: incremental fine-tuning from feedback, behind an evaluation gate.

1. Gather the feedback examples not yet in a promoted adapter (`training.feedback`), mixed with a replay
   sample of train.jsonl so the domain doesn't forget what it knew.
2. Warm-start from the live adapter and train a few steps; export and verify the candidate as a new version
   folder (`training.export.publish` stages it and renames it into place, so a crash leaves no half version).
3. Evaluate the candidate and the live adapter on the same dev items; `training.evaluate.job_gate` decides:
   nothing lost on any task (a drop beyond the margin counts unless chance explains it for the number of items:
   `training.significance.drop_p`), and a gain on the `<domain>_qa` job that is significant for the number of
   items (exact McNemar on the paired items, with a bootstrap CI of the difference). The test split is evaluated
   after the verdict, for the record only. Every number goes into `training_runs`.
   A domain trained from its documents alone (no eval.jsonl) replays windows of its training documents instead
   of train.jsonl rows and is judged by held-out perplexity (`training.perplexity`).
4. Promote atomically (`bot.adapters.promote`): the running bot sees the new `current` pointer on its next
   request and hot-reloads. A rejected candidate stays on disk, never live, and the reason is recorded.

The live adapter is never written: until the pointer moves, a crash anywhere leaves it as it was. One retrain
per domain at a time (a file lock); a run left "running" by a dead process is marked failed by the next one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot import adapters
from bot.config import Settings
from bot.domains import Domain, discover
from bot.errors import UserFacingError
from bot.store.store import Store
from training import feedback as fd
from training.significance import ALPHA, LOSS_ALPHA

LOCK_FILE = ".retrain.lock"


class RetrainBusy(UserFacingError):
    """Another retrain of the same domain is running."""


@dataclass
class RetrainConfig:
    max_steps: int = 30  # training runs min(max_steps, epochs over the mixed examples) steps
    epochs: float = 1.0
    lr: float = 2e-4  # lower than a fresh run's: the warm-started adapter is already close
    batch_size: int = 8
    micro_batch: int = 4
    replay_per_example: float = 3.0  # train.jsonl rows mixed in per feedback example
    min_replay: int = 16
    feedback_repeats: int = 2  # each feedback example is seen this many times per run
    replay_tasks: tuple[str, ...] = ()  # empty: every task of the domain
    eval_limit: int | None = 40  # eval items per task, the same items for candidate and current
    eval_tasks: tuple[str, ...] = ()  # empty: every task
    margin: float | None = None  # None: settings.gate_margin (0.01 = 1 point)
    alpha: float = ALPHA  # the paired test's significance level on the yardstick task(s)
    loss_alpha: float = LOSS_ALPHA  # a drop beyond the margin is a loss unless chance explains it at this level
    test_limit: int | None = 40  # open_qa test items reported after the verdict (0: skip; None: all)
    kto_steps: int = 8  # KTO steps over the 👍/👎 after the SFT steps (`training.kto`); 0: SFT only
    kto_lr: float = 5e-5
    kto_beta: float = 0.1
    kto_per_user: int = 20  # caps against one loud user and one popular question
    kto_per_question: int = 3
    min_examples: int = 1
    seed: int = 0
    threads: int = 0
    verify_with: int = 3  # examples whose llama.cpp vs transformers logits are compared on export
    refit_router: bool = True
    # A folder for the live adapter's eval results, keyed by everything they depend on (adapter file hash,
    # items, prompt and model settings, the scoring code): a live adapter that outlives several rejected
    # candidates is evaluated once. None: evaluate it every run.
    eval_cache: str | None = None


@dataclass
class RetrainOutcome:
    domain: str
    status: str  # promoted | rejected | failed | skipped
    reason: str
    run_id: int | None = None
    current_version: str = "base"
    candidate_version: str | None = None
    live_version: str = "base"  # what `current` points at when the run ends
    n_feedback: int = 0
    n_replay: int = 0
    example_ids: list[str] = field(default_factory=list)
    metrics_current: dict = field(default_factory=dict)
    metrics_candidate: dict = field(default_factory=dict)
    router: dict = field(default_factory=dict)
    verdict: dict = field(default_factory=dict)  # the gate's paired numbers (dev) and the test split's report
    items: dict = field(default_factory=dict)  # "current"/"candidate" -> dev eval items (answers): not stored

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"


# ---- eval results -> plain JSON ------------------------------------------------------------------------


def summarize(result: Any) -> dict:
    """{"overall": float, "tasks": {task: float}} from an EvalResult, for the store and the report."""
    if isinstance(result, Mapping):
        return {"overall": float(result["overall"]), "tasks": dict(result.get("tasks", {}))}
    tasks = getattr(result, "tasks", {}) or {}
    return {
        "overall": float(result.overall),
        "tasks": {name: _task_score(t) for name, t in tasks.items()},
    }


def _task_score(task: Any) -> float:
    if isinstance(task, int | float):
        return float(task)
    for attr in ("score", "primary", "macro_f1", "accuracy", "f1"):
        value = task.get(attr) if isinstance(task, Mapping) else getattr(task, attr, None)
        if isinstance(value, int | float):
            return float(value)
    raise TypeError(f"cannot read a score from {task!r}")


# ---- pieces --------------------------------------------------------------------------------------------


@contextmanager
def domain_lock(domain: Domain) -> Iterator[None]:
    domain.adapters_dir.mkdir(parents=True, exist_ok=True)
    with open(domain.adapters_dir / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainBusy(f"a retrain of {domain.name} is already running") from None
        yield


def live_version(domain: Domain) -> str:
    version = adapters.current(domain.adapters_dir)
    return version.version if version else "base"


def consumed_ids(store: Store, domain: str) -> set[str]:
    """Feedback examples already inside a promoted adapter."""
    return {
        i for run in store.runs(domain) if run["status"] == "promoted" for i in run.get("example_ids") or []
    }


def attempted_ids(store: Store, domain: str) -> set[str]:
    """Feedback examples any finished run has already tried (promoted, rejected or failed)."""
    return {
        i for run in store.runs(domain) if run["status"] != "running" for i in run.get("example_ids") or []
    }


def usable_ids(store: Store, domain: str) -> list[str]:
    """Every training signal the stored feedback gives now: SFT examples, plus the plain 👎 that only KTO uses."""
    from training import kto

    return fd.usable_source_ids(store, domain) + kto.usable_source_ids(store, domain, only_new_kinds=True)


def new_example_count(store: Store, domain: str) -> int:
    """Usable feedback signals no run has tried yet: what the worker counts toward its threshold."""
    seen = attempted_ids(store, domain)
    return sum(1 for sid in usable_ids(store, domain) if sid not in seen)


def mark_abandoned(store: Store, domain: str) -> None:
    """Runs still 'running' while we hold the domain lock belong to a process that died."""
    for run in store.runs(domain):
        if run["status"] == "running":
            store.finish_run(run["id"], status="failed", reason="interrupted: the retrain process died")


def mix(feedback: list, replay: list, repeats: int, seed: int) -> list:
    examples = feedback * max(1, repeats) + replay
    random.Random(seed).shuffle(examples)
    return examples


def replay_caps(domain: Domain, keep: tuple[str, ...]) -> dict[str, int]:
    """task_caps for load_examples that drop every train.jsonl task not in `keep` (empty: keep all)."""
    from training.dataset import load_rows

    if not keep:
        return {}
    tasks = {row["task"] for _, row in load_rows(domain)}
    unknown = set(keep) - tasks
    if unknown:
        raise UserFacingError(
            f"{domain.name}'s train.jsonl has no task(s) {', '.join(sorted(unknown))}; it has {', '.join(sorted(tasks))}"
        )
    return {task: 0 for task in tasks - set(keep)}


def warm_start_dir(domain: Domain, version: str) -> Path | None:
    """The live adapter's PEFT weights when kept beside it, else its GGUF (export can read both)."""
    if version == "base":
        return None
    folder = domain.adapters_dir / version
    return folder / "peft" if (folder / "peft" / "adapter_config.json").is_file() else folder


def train_candidate(
    domain: Domain, examples: list, cfg: RetrainConfig, settings: Settings, *, warm_start: Path | None,
    on_step: Callable[[int, float], None] | None = None, kto_data=None, kto_log: dict | None = None,
    seconds: dict | None = None,
) -> adapters.AdapterVersion:  # fmt: skip
    """Train (SFT, then KTO over `kto_data` when given) and publish a new, unpromoted version folder."""
    from training.export import publish
    from training.finetune import TrainConfig, served_gguf, train

    tcfg = TrainConfig(
        lr=cfg.lr, batch_size=cfg.batch_size, micro_batch=cfg.micro_batch, max_steps=cfg.max_steps, epochs=cfg.epochs,
        warmup_steps=min(3, cfg.max_steps), seed=cfg.seed, threads=cfg.threads, warm_start=warm_start,
    )  # fmt: skip
    clock = time.perf_counter()
    result = train(domain, tcfg, examples, settings=settings, on_step=on_step, resume=False)
    _lap(seconds, "sft", clock)
    if kto_data is not None and cfg.kto_steps and len(kto_data.rows) >= 2:
        from training import kto

        clock = time.perf_counter()
        ks = kto.KTOSettings(steps=cfg.kto_steps, lr=cfg.kto_lr, beta=cfg.kto_beta, seed=cfg.seed, threads=cfg.threads)
        numbers = kto.refine(result.peft_dir, kto_data, served_gguf(settings), ks)
        if kto_log is not None:
            kto_log.update(numbers, rows=len(kto_data.rows), **kto_data.counts)
        _lap(seconds, "kto", clock)
    clock = time.perf_counter()
    version = publish(
        result, examples, adapters_dir=domain.adapters_dir, base_gguf=served_gguf(settings),
        verify_with=cfg.verify_with, threads=cfg.threads, command=f"domainbot retrain {domain.name}",
    )  # fmt: skip
    _lap(seconds, "export", clock)
    # A retrain never resumes and publish keeps the PEFT weights in vN/peft, so the run's 30 MB checkpoint
    # folder is clutter once published (a failed export keeps it: its message points at the rejected file).
    shutil.rmtree(result.run_dir, ignore_errors=True)
    return version


def _lap(seconds: dict | None, name: str, since: float) -> None:
    if seconds is not None:
        seconds[name] = round(time.perf_counter() - since, 1)


def document_replay(domain: Domain, n: int, seed: int, settings: Settings) -> list:
    """n windows of the training documents (never the held-out ones of the live adapter's split), for a domain
    that has no train.jsonl to replay."""
    from training import perplexity
    from training.finetune import load_base, served_gguf

    live = adapters.current(domain.adapters_dir)
    windows = perplexity.split_for(domain, live, load_base(served_gguf(settings))[1]).train
    return random.Random(seed).sample(windows, min(n, len(windows)))


def judge_by_perplexity(domain: Domain, candidate: str, margin: float,
                        settings: Settings) -> tuple[bool, str, dict, dict]:  # fmt: skip
    """The gate of a docs-only domain: held-out perplexity of the candidate vs the live adapter (or base), on the
    live adapter's split; the numbers and verdict go into the candidate's meta.json."""
    from training import perplexity
    from training.finetune import load_base, served_gguf

    base = served_gguf(settings)
    live = adapters.current(domain.adapters_dir)
    split = perplexity.split_for(domain, live, load_base(base)[1])
    version = adapters.AdapterVersion(candidate, domain.adapters_dir / candidate)
    record = perplexity.judge(domain, version, base_gguf=base, margin=margin, by="domainbot retrain", split=split)
    as_metrics = lambda ppl: {"overall": ppl, "tasks": {perplexity.METRIC: ppl}}  # noqa: E731
    gate = record["gate"]
    return gate["passed"], gate["reason"], as_metrics(record["live_perplexity"]), as_metrics(record["adapter"])


@dataclass
class Verdict:
    ok: bool
    reason: str
    current: Any  # EvalResult (or perplexity metrics) of the live adapter
    candidate: Any
    paired: dict = field(default_factory=dict)  # task -> the paired comparison (training.significance)
    seconds: dict = field(default_factory=dict)  # where the judging time went


def judge_job(domain: Domain, candidate: str, current: str, cfg: RetrainConfig, settings: Settings,
              answerer=None) -> Verdict:  # fmt: skip
    """Evaluate both adapters on the same dev items and apply the job gate (see the module doc)."""
    from training import perplexity
    from training.evaluate import evaluate, job_gate

    margin = settings.gate_margin if cfg.margin is None else cfg.margin
    if perplexity.docs_only(domain):
        return Verdict(*judge_by_perplexity(domain, candidate, margin, settings))
    kwargs = {"limit": cfg.eval_limit, "tasks": list(cfg.eval_tasks) or None, "settings": settings,
              "answerer": answerer, "with_retrieval": False, "split": "dev", "progress": False}  # fmt: skip
    # Gate on the dev split: the test split is only reported, never used to choose.
    t0 = time.perf_counter()
    cand = evaluate(domain, candidate, **kwargs)
    t1 = time.perf_counter()
    cur = live_eval(domain, current, cfg, kwargs)
    ok, reason, paired = job_gate(cand, cur, margin, alpha=cfg.alpha, loss_alpha=cfg.loss_alpha, seed=cfg.seed)
    v = Verdict(ok, reason, cur, cand, paired)
    v.seconds = {"eval_candidate": round(t1 - t0, 1), "eval_current": round(time.perf_counter() - t1, 1)}
    return v


def eval_cache_key(domain: Domain, adapter: str, kwargs: Mapping[str, Any]) -> str:
    """Everything an eval result depends on: `evaluate.fingerprint` (base and adapter file hashes, the eval and
    qa files, prompt, limits, split, the scoring and retrieval code) plus the generation settings and the
    answering path's class."""
    from training.evaluate import fingerprint

    s: Settings = kwargs["settings"]
    key = {"fp": fingerprint(domain, adapter, s, kwargs["limit"], kwargs["tasks"], kwargs["split"]),
           "gen": [s.n_ctx, s.max_tokens, s.temperature, s.seed, s.prompt_budget, s.chunk_tokens, s.chunk_overlap,
                   str(s.model_path), s.llm_backend],
           "answerer": type(kwargs["answerer"]).__name__, "retrieval": kwargs["with_retrieval"]}  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def live_eval(domain: Domain, adapter: str, cfg: RetrainConfig, kwargs: dict) -> Any:
    """`evaluate` of the live adapter, read from cfg.eval_cache when that exact setup was evaluated before."""
    from training.evaluate import EvalResult, evaluate

    if not cfg.eval_cache or adapter == "base":
        return evaluate(domain, adapter, **kwargs)
    path = Path(cfg.eval_cache) / f"{domain.name}-{adapter}-{eval_cache_key(domain, adapter, kwargs)}.json"
    try:
        return EvalResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError):
        pass
    result = evaluate(domain, adapter, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_dict()))
    tmp.replace(path)  # a reader never sees half a file
    return result


def judge(domain: Domain, candidate: str, current: str, cfg: RetrainConfig, settings: Settings,
          answerer=None) -> tuple[bool, str, Any, Any]:  # fmt: skip
    """(ok, reason, current, candidate results) of `judge_job`."""
    v = judge_job(domain, candidate, current, cfg, settings, answerer)
    return v.ok, v.reason, v.current, v.candidate


def report_test(domain: Domain, candidate: str, current: str, cfg: RetrainConfig, settings: Settings,
                answerer=None) -> dict:  # fmt: skip
    """Both adapters on the open_qa tasks' test split, after the verdict: what the owner reads, never a choice."""
    from training import qa_eval
    from training import significance as sig
    from training.evaluate import evaluate

    tasks = sorted(qa_eval.specs(domain))
    if cfg.test_limit == 0 or not tasks:
        return {}
    kwargs = {"limit": cfg.test_limit, "tasks": tasks, "settings": settings, "answerer": answerer,
              "with_retrieval": False, "split": "test", "progress": False}  # fmt: skip
    cand, cur = evaluate(domain, candidate, **kwargs), live_eval(domain, current, cfg, kwargs)
    paired = {t: sig.compare_items(cur.items, cand.items, t, alpha=cfg.alpha, seed=cfg.seed).to_dict() for t in tasks}
    return {"current": summarize(cur), "candidate": summarize(cand), "paired": paired}


def note_verdict(version_dir: Path, ok: bool, reason: str, **numbers: Any) -> None:
    """Write the gate's verdict (and its numbers) into the candidate's meta.json, for `domainbot adapters`."""
    adapters.update_meta(version_dir, gate={"promoted": ok, "reason": reason, **numbers})


def refit_router(settings: Settings, store: Store, domains: Mapping[str, Domain], retriever=None) -> dict:
    """Refit the router's examples and threshold from reroute picks; cached where the bot loads it."""
    from bot.retrieval.index import Retriever
    from bot.router import Router

    extra = store.router_examples()
    embedder = (retriever or Retriever(settings)).embedder
    router = Router(domains, embedder.encode, cache_dir=settings.indexes_dir, extra_examples=extra,
                    encoder_key=embedder.fingerprint())  # the bot's key, so it reuses this fit
    return {
        "threshold": round(router.fit.threshold, 4),
        "extra_examples": {k: len(v) for k, v in extra.items()},
    }


# ---- the command ---------------------------------------------------------------------------------------


def retrain(
    domain_name: str, *, settings: Settings, store: Store, cfg: RetrainConfig | None = None,
    answerer=None, on_step: Callable[[int, float], None] | None = None,
) -> RetrainOutcome:  # fmt: skip
    """Train, judge and maybe promote a new adapter for `domain_name` from its feedback. See the module doc.

    `answerer` (optional) is the answering path the eval runs through; one is made from `settings` otherwise.
    """
    cfg = cfg or RetrainConfig()
    discovery = discover(settings.domains_dir, settings.domain_allowlist)
    domain = discovery.get(domain_name)
    with domain_lock(domain):
        mark_abandoned(store, domain.name)
        current = live_version(domain)
        out = RetrainOutcome(domain.name, "running", "", current_version=current, live_version=current)
        out.run_id = store.start_run(domain.name, current_version=current, config=asdict(cfg))
        with _answering(settings, answerer) as ans:
            try:
                _run(out, domain, list(discovery.domains), cfg, settings, store, ans, on_step)
            except BaseException as exc:
                out.status, out.reason = "failed", f"{type(exc).__name__}: {exc}"
                _record(store, out)
                raise
            if cfg.refit_router and out.status != "skipped":
                try:
                    out.router = refit_router(settings, store, discovery.domains, ans.retriever)
                except Exception as exc:  # the adapter verdict stands; routing keeps its previous fit
                    out.router = {"error": f"{type(exc).__name__}: {exc}"}
                config = {**asdict(cfg), "router": out.router, **({"verdict": out.verdict} if out.verdict else {})}
                store.finish_run(out.run_id, status=out.status, reason=out.reason, config=config)
        out.live_version = live_version(domain)
        return out


@contextmanager
def _answering(settings: Settings, answerer) -> Iterator[Any]:
    if answerer is not None:
        yield answerer
        return
    from bot.answer import Answerer

    own = Answerer.from_settings(settings)  # its model loads only if the run gets past the cheap checks
    try:
        yield own
    finally:
        own.close()


def _run(out: RetrainOutcome, domain: Domain, names: list[str], cfg: RetrainConfig, settings: Settings,
         store: Store, answerer, on_step) -> None:  # fmt: skip
    from training import kto
    from training.dataset import load_examples
    from training.evaluate import EvalResult, record_metrics
    from training.finetune import load_base, served_gguf, token_counter

    consumed = consumed_ids(store, domain.name)
    every = usable_ids(store, domain.name) if cfg.kto_steps else fd.usable_source_ids(store, domain.name)
    usable = [sid for sid in every if sid not in consumed]
    if len(usable) < cfg.min_examples:  # decided before loading anything heavy
        out.status = "skipped"
        out.reason = f"{len(usable)} new feedback example(s); need {cfg.min_examples}"
        _record(store, out)
        return
    out.example_ids = usable  # what this run tries, even if it fails before training: the worker won't spin
    count = token_counter(load_base(served_gguf(settings))[1])
    lookup = fd.index_lookup(answerer.retriever, domain)
    data = fd.build(store, domain, lookup=lookup, domain_names=names, budget=settings.prompt_budget, count=count,
                    exclude=consumed)  # fmt: skip
    kto_data = None
    if cfg.kto_steps:
        caps = kto.Caps(per_user=cfg.kto_per_user, per_question=cfg.kto_per_question)
        kto_data = kto.build(store, domain, lookup=lookup, domain_names=names, budget=settings.prompt_budget,
                             count=count, caps=caps, exclude=consumed)  # fmt: skip
    out.n_feedback = len(data.examples)
    out.example_ids = data.source_ids + (kto_data.source_ids if kto_data else [])
    if out.n_feedback < cfg.min_examples and not (kto_data and len(kto_data.rows) >= 2):
        out.status = "skipped"
        out.reason = (
            f"{out.n_feedback} usable feedback example(s) after dropping stale ones; need {cfg.min_examples}"
        )
        _record(store, out)
        return
    n_replay = max(cfg.min_replay, round(cfg.replay_per_example * out.n_feedback))
    replay = []
    if n_replay and not domain.train_file.is_file():  # trained from its documents: replay their text
        replay = document_replay(domain, n_replay, cfg.seed + out.run_id, settings)
    elif n_replay:  # replay 0 only for experiments: a real run keeps the domain from forgetting
        caps = replay_caps(domain, cfg.replay_tasks)
        replay = load_examples(domain, max_examples=n_replay, seed=cfg.seed + out.run_id, task_caps=caps,
                               settings=settings, count=count)  # fmt: skip
    out.n_replay = len(replay)
    examples = mix(data.examples, replay, cfg.feedback_repeats, cfg.seed + out.run_id)
    kto_log: dict = {}
    seconds: dict = {}
    candidate = train_candidate(domain, examples, cfg, settings, warm_start=warm_start_dir(domain, out.current_version),
                                on_step=on_step, kto_data=kto_data, kto_log=kto_log, seconds=seconds)  # fmt: skip
    out.candidate_version = candidate.version
    verdict = judge_job(domain, candidate.version, out.current_version, cfg, settings, answerer)
    ok, reason = verdict.ok, verdict.reason
    out.metrics_current, out.metrics_candidate = summarize(verdict.current), summarize(verdict.candidate)
    if isinstance(verdict.candidate, EvalResult):  # the answers themselves, for whoever reads the outcome
        out.items = {"current": verdict.current.items, "candidate": verdict.candidate.items}
    seconds.update(verdict.seconds)
    out.verdict = {"promoted": ok, "reason": reason, "dev": verdict.paired, "alpha": cfg.alpha,
                   "loss_alpha": cfg.loss_alpha, "seconds": seconds,
                   **({"kto": kto_log} if kto_log else {})}  # fmt: skip
    if isinstance(verdict.candidate, EvalResult):  # a perplexity verdict is already in meta.json
        record_metrics(domain, verdict.candidate)
        note_verdict(candidate.path, ok, reason, dev=verdict.paired)
    if ok:
        adapters.promote(domain.adapters_dir, candidate.version)
    out.status, out.reason = ("promoted" if ok else "rejected"), reason
    _record(store, out)
    if isinstance(verdict.candidate, EvalResult):
        clock = time.perf_counter()
        try:  # the verdict stands whatever happens here: this is a report
            test = report_test(domain, candidate.version, out.current_version, cfg, settings, answerer)
        except Exception as exc:
            test = {"error": f"{type(exc).__name__}: {exc}"}
        _lap(seconds, "test_report", clock)
        if test:
            out.verdict["test"] = test.get("paired", test)
            out.metrics_current["test"] = test.get("current", {})
            out.metrics_candidate["test"] = test.get("candidate", {})
            _record(store, out)


def _record(store: Store, out: RetrainOutcome) -> None:
    store.finish_run(
        out.run_id, status=out.status, reason=out.reason, promoted=out.promoted,
        candidate_version=out.candidate_version, n_feedback_examples=out.n_feedback, n_replay_examples=out.n_replay,
        example_ids=out.example_ids, metrics_current=out.metrics_current or None,
        metrics_candidate=out.metrics_candidate or None, **({"config": _config(store, out)} if out.verdict else {}),
    )  # fmt: skip


def _config(store: Store, out: RetrainOutcome) -> dict:
    """The run's config as started, plus the verdict's numbers (training_runs has no column of its own for them)."""
    run = next((r for r in store.runs(out.domain) if r["id"] == out.run_id), {})
    return {**(run.get("config") or {}), "verdict": out.verdict}
