"""The feedback loop, proven on simulated users: Slack feedback -> worker retrain -> gate -> promote or reject.

The simulator drives the real Slack app over signed HTTP against the fake Slack Web API, so every event goes
through the real listeners and the store (PII scrubbing, dedupe, opt-out). It asks questions from a task's train
rows (a domain's `<d>_qa` train split by default) and reacts as a user would, judged against the gold answer:
👍 on a correct answer; 👎 on a wrong one, sometimes followed by a `correction:` thread reply stating the right
fact and its source; a `noise` share of votes flipped; some 🙈 opt-outs. `poisoned` inverts every vote (and
"corrects" with another question's answer). Then the worker's own pass (`training.worker.run_once`) retrains,
gates and promotes or rejects, with no human.

    python bench/feedback_loop.py --domain finance --mode clean --questions 120
    python bench/feedback_loop.py --domain legal --mode noise --questions 120 --out /tmp/loop

Prints a table (qa test correctness before/after, the verdict, the interval, wall time) and writes it as
markdown (plus results.json, and each loop's dev answers, live vs candidate, as answers_<domain>_<mode>.json)
under --out (default bench/results/feedback_loop, outside git's tracked files).

`--keep-db` saves each loop's feedback store as <out>/feedback_<domain>_<mode>.db; `--reuse-db` then retrains from
that store without simulating again (the same feedback, another recipe). The live adapter's eval results are
cached under <out>/.gate_cache, keyed by everything they depend on (`training.retrain.live_eval`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bot.testing.slack_bot import RunningBot  # noqa: E402
from bot.testing.slack_kit import (  # noqa: E402
    BOT_USER_ID,
    CHANNEL,
    app_mention,
    message,
    post_event,
    reaction,
)

MODES = {"clean": (0.0, False), "noise": (0.3, False), "poisoned": (0.0, True)}


@dataclass
class SimConfig:
    domain: str
    task: str = ""  # "": the domain's open_qa task (<domain>_qa)
    questions: int = 100
    noise: float = 0.0  # share of votes flipped
    poisoned: bool = False  # every vote inverted
    correct_share: float = 0.6  # share of 👎 followed by a `correction:` reply
    optout_share: float = 0.05  # share of answers a user hides with 🙈
    users: int = 12
    seed: int = 0


@dataclass
class SimStats:
    asked: int = 0
    right: int = 0  # answers the gold judged correct
    up: int = 0
    down: int = 0
    corrections: int = 0
    optouts: int = 0
    flipped: int = 0
    events: int = 0  # Slack events posted (questions, reactions, replies)
    seconds: float = 0.0


# ---- the questions and the judge ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    id: str
    question: str
    gold: str
    row: dict = field(default_factory=dict)  # what the judge reads


def items_for(domain, task: str, split: str = "train") -> tuple[list[Item], Callable[[str, Item], bool]]:
    """The task's rows to ask and a judge of an answer against the gold: an open_qa task reads its qa.jsonl
    `split` and judges with `qa_eval.is_correct`; a classification task reads train.jsonl and compares labels."""
    from training import metrics, qa_eval
    from training.dataset import answer_label, read_jsonl, user_text

    specs = qa_eval.specs(domain)
    if task in specs:
        rows = qa_eval.load_rows(domain, [task], split, read_jsonl)
        return [Item(r["id"], qa_eval.question_of(r), r["answer"], r) for r in rows], (
            lambda text, item: qa_eval.is_correct(text, item.row)
        )
    spec = domain.tasks.get(task)
    if spec is None:
        raise SystemExit(f"{domain.name} has no task {task!r}; it has {', '.join(sorted(domain.tasks))}")
    labels = list(spec.get("labels", []))
    rows = [r for r in read_jsonl(domain.train_file) if r["task"] == task]
    items = [Item(r["id"], user_text(r["instruction"], r.get("input")), r["output"].strip(), r) for r in rows]

    def judge(text: str, item: Item) -> bool:
        return (metrics.parse_label(text, labels) or "").lower() == answer_label(item.row)

    return items, judge


def correction_text(item: Item, domain) -> str:
    """The right fact, as a user states it, with the passage it comes from when the row names one."""
    source = item.row.get("context_id")
    return f"{item.gold} (source: {source})" if source and item.row.get("task") in _qa_tasks(domain) else item.gold


def _qa_tasks(domain) -> set[str]:
    from training import qa_eval

    return set(qa_eval.specs(domain))


# ---- the simulated users -----------------------------------------------------------------------------------
class Simulator:
    """Asks through Slack and reacts like users; everything lands in the store through the real listeners."""

    def __init__(self, bot: RunningBot, domain, cfg: SimConfig, optout: str = "see_no_evil") -> None:
        self.bot, self.domain, self.cfg, self.optout = bot, domain, cfg, optout
        self.rng = random.Random(cfg.seed)
        task = cfg.task or next(iter(sorted(_qa_tasks(domain))), "")
        if not task:
            raise SystemExit(f"{domain.name} has no open_qa task: name one with --task")
        self.task = task
        self.items, self.judge = items_for(domain, task)
        if not self.items:
            raise SystemExit(f"{domain.name}: task {task} has no rows to ask")
        self.stats = SimStats()

    def _post(self, payload: dict) -> None:
        status, body = post_event(self.bot.url, payload)
        if status != 200:
            raise RuntimeError(f"the Slack app answered {status}: {body[:200]}")
        self.stats.events += 1

    def ask(self, item: Item, user: str) -> dict:
        text = f"<@{BOT_USER_ID}> {self.domain.name}: {item.question}"
        ts = self.bot.slack.add_message(CHANNEL, text, user=user)
        self._post(app_mention(text, channel=CHANNEL, ts=ts, user=user))
        store = self.bot.store

        def answered() -> dict | None:
            rows = [r for r in store.exchanges(self.domain.name) if r["thread_ts"] == ts and r["message_ts"]]
            return rows[-1] if rows else None

        return self.bot.slack.wait_for(answered, timeout=300, what=f"the answer to {item.id}")

    def react(self, item: Item, exchange: dict, user: str) -> None:
        s, rng = self.stats, self.rng
        right = self.judge(exchange["answer"] or "", item)
        s.right += right
        liked = right
        if self.cfg.poisoned or rng.random() < self.cfg.noise:
            liked, s.flipped = not liked, s.flipped + 1
        ts = exchange["message_ts"]
        self._post(reaction("+1" if liked else "-1", channel=CHANNEL, ts=ts, user=user))
        s.up, s.down = s.up + liked, s.down + (not liked)
        if not liked and rng.random() < self.cfg.correct_share:
            fact = self._wrong_fact(item) if self.cfg.poisoned else correction_text(item, self.domain)
            reply = f"correction: {fact}"
            rts = self.bot.slack.add_message(CHANNEL, reply, user=user, thread_ts=exchange["thread_ts"])
            self._post(message(reply, channel=CHANNEL, ts=rts, thread_ts=exchange["thread_ts"], user=user))
            s.corrections += 1
        if rng.random() < self.cfg.optout_share:
            self._post(reaction(self.optout, channel=CHANNEL, ts=ts, user=user))
            s.optouts += 1

    def _wrong_fact(self, item: Item) -> str:
        other = self.rng.choice([i for i in self.items if i.gold != item.gold] or self.items)
        return other.gold

    def run(self) -> SimStats:
        t0 = time.perf_counter()
        picked = self.rng.sample(self.items, min(self.cfg.questions, len(self.items)))
        for n, item in enumerate(picked):
            user = f"USIM{n % self.cfg.users:02d}"
            exchange = self.ask(item, user)
            self.stats.asked += 1
            self.react(item, exchange, user)
        # the last events are handled on the app's workers: wait until the store has them all
        want = self.stats.up + self.stats.down + self.stats.corrections + self.stats.optouts
        self.bot.slack.wait_for(lambda: len(self.bot.store.feedback(self.domain.name)) >= want, timeout=120,
                                what="every reaction and correction to be stored")  # fmt: skip
        self.stats.seconds = round(time.perf_counter() - t0, 1)
        return self.stats


# ---- one loop ----------------------------------------------------------------------------------------------
def loop_config(**changes):
    """The CPU-sized recipe the bench runs (and the worker would, with DOMAINBOT_* settings)."""
    from training.retrain import RetrainConfig

    base = {"max_steps": 30, "lr": 5e-4, "batch_size": 8, "micro_batch": 4, "feedback_repeats": 2,
            "replay_per_example": 1.0, "min_replay": 16, "eval_limit": 60, "test_limit": 60, "kto_steps": 8,
            "refit_router": False, "threads": 2}  # fmt: skip
    return RetrainConfig(**{**base, **changes})


def run_loop(settings, answerer, domain_name: str, sim: SimConfig, *, cfg=None, min_examples: int = 1,
             simulate: bool = True) -> dict:
    """Simulate the feedback (`simulate` False: the store at settings.db_path already holds it), let the worker
    retrain (gate, promote/reject), return the numbers."""
    from functools import partial

    from bot.domains import discover
    from bot.testing.slack_bot import start_bot
    from training import retrain as rt
    from training import worker

    domain = discover(settings.domains_dir).get(domain_name)
    t0 = time.perf_counter()
    bot = start_bot(settings, answerer)
    try:
        stats = Simulator(bot, domain, sim, optout=settings.optout_reaction).run() if simulate else stored_stats(
            bot.store, domain_name)  # fmt: skip
        t1 = time.perf_counter()
        due = rt.new_example_count(bot.store, domain_name)
        outcomes = worker.run_once(settings, bot.store, min_examples=min_examples, cfg=cfg or loop_config(),
                                   retrain_fn=partial(rt.retrain, answerer=answerer))  # fmt: skip
    finally:
        bot.stop()
    out = next((o for o in outcomes if o.domain == domain_name), None)
    result = {"domain": domain_name, "sim": asdict(sim), "stats": asdict(stats), "new_signals": due,
              "sim_s": round(t1 - t0, 1), "retrain_s": round(time.perf_counter() - t1, 1),
              "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    if out is None:
        return {**result, "status": "not due", "reason": f"{due} new signals < {min_examples}"}
    return {**result, "status": out.status, "reason": out.reason, "from": out.current_version,
            "to": out.candidate_version, "live": out.live_version, "verdict": out.verdict,
            "n_feedback": out.n_feedback, "n_replay": out.n_replay, "items": out.items}  # fmt: skip


def stored_stats(store, domain_name: str) -> SimStats:
    """What a reused store holds, counted from its rows (the events count is the stored signals plus questions)."""
    from training import feedback as fd

    exchanges, rows = store.exchanges(domain_name), store.feedback(domain_name)
    votes = list(fd.standing_votes(rows).values())
    kinds = [r["kind"] for r in rows]
    s = SimStats(asked=len(exchanges), up=votes.count(1), down=votes.count(-1), corrections=kinds.count("correction"),
                 optouts=kinds.count("opt_out"))  # fmt: skip
    s.events = s.asked + len(rows)
    return s


def row_of(mode: str, r: dict) -> list[str]:
    test = (r.get("verdict") or {}).get("test") or {}
    dev = (r.get("verdict") or {}).get("dev") or {}
    t = next(iter(test.values()), {})
    d = next(iter(dev.values()), {})
    after = t.get("candidate") if r.get("status") == "promoted" else t.get("current")

    def f(x) -> str:
        return "-" if x is None else f"{x:.3f}"

    ci = f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] p={d['p_value']:.3g}" if d else "-"
    return [r["domain"], mode, str(r["stats"]["events"]), f(t.get("current")), f(t.get("candidate")), f(after),
            f"{d.get('diff', 0):+.3f} {ci}" if d else "-", r["status"], f"{r['wall_s'] / 60:.1f}"]  # fmt: skip


HEAD = ["domain", "mode", "events", "test before", "test candidate", "test live after", "dev diff (95% CI)",
        "verdict", "wall min"]  # fmt: skip


def markdown(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--domain", action="append", required=True, help="repeatable")
    ap.add_argument("--mode", action="append", choices=sorted(MODES), help="repeatable; default all three")
    ap.add_argument("--questions", type=int, default=120, help="questions asked per loop (~2-3 events each)")
    ap.add_argument("--task", default="")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--kto-steps", type=int, default=8)
    ap.add_argument("--eval-limit", type=int, default=60)
    ap.add_argument("--test-limit", type=int, default=60)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--kto-lr", type=float, default=5e-5)
    ap.add_argument("--keep-db", action="store_true", help="save each loop's feedback store under --out")
    ap.add_argument("--reuse-db", action="store_true", help="retrain from the store --keep-db saved; no simulation")
    ap.add_argument("--tag", default="", help="a label for this recipe in the table and file names")
    ap.add_argument("--live", default="", help="an adapter folder to copy in as the live v1 (default: the shipped one)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "feedback_loop")
    args = ap.parse_args(argv)

    import shutil
    import tempfile

    from bot import adapters
    from bot.answer import Answerer
    from bot.config import load_settings
    from bot.domains import discover
    from bot.testing.workspace import linked_workspace

    args.out.mkdir(parents=True, exist_ok=True)
    base = load_settings()
    done = args.out / "results.json"
    results = json.loads(done.read_text()) if done.is_file() else []  # earlier loops stay in the table
    for name in args.domain:
        for mode in args.mode or list(MODES):
            noise, poisoned = MODES[mode]
            saved = args.out / f"feedback_{name}_{mode}.db"
            if args.reuse_db and not saved.is_file():
                raise SystemExit(f"--reuse-db: no {saved}; run once with --keep-db")
            with tempfile.TemporaryDirectory(prefix="feedback_loop_") as tmp:
                if args.reuse_db:
                    for suffix in ("", "-wal"):
                        if Path(f"{saved}{suffix}").is_file():
                            shutil.copy(f"{saved}{suffix}", Path(tmp) / f"loop.db{suffix}")
                domains, indexes = linked_workspace(Path(tmp), base.indexes_dir)
                settings = base.with_(domains_dir=domains, indexes_dir=indexes, db_path=Path(tmp) / "loop.db")
                domain = discover(domains).get(name)
                shipped = Path(args.live) if args.live else getattr(
                    adapters.current(ROOT / "domains" / name / "adapters"), "path", None)  # fmt: skip
                if shipped:  # start from the live adapter users see today
                    shutil.copytree(shipped, domain.adapters_dir / "v1")
                    adapters.promote(domain.adapters_dir, "v1")
                answerer = Answerer.from_settings(settings)
                try:
                    sim = SimConfig(name, task=args.task, questions=args.questions, noise=noise, poisoned=poisoned)
                    cfg = loop_config(max_steps=args.steps, kto_steps=args.kto_steps, eval_limit=args.eval_limit,
                                      test_limit=args.test_limit, lr=args.lr, kto_lr=args.kto_lr,
                                      eval_cache=str(args.out / ".gate_cache"))  # fmt: skip
                    r = run_loop(settings, answerer, name, sim, cfg=cfg, simulate=not args.reuse_db)
                    r["recipe"] = {k: v for k, v in asdict(cfg).items() if k != "eval_cache"}
                    r["reused_db"] = args.reuse_db
                finally:
                    answerer.close()
                if args.keep_db and not args.reuse_db:
                    for suffix in ("", "-wal"):  # a store in WAL mode may still hold rows in its log
                        if (Path(tmp) / f"loop.db{suffix}").is_file():
                            shutil.copy(Path(tmp) / f"loop.db{suffix}", f"{saved}{suffix}")
            mode = f"{mode} {args.tag}".strip()
            r["mode"] = mode
            items = r.pop("items", {})
            if items:
                (args.out / f"answers_{name}_{mode.replace(' ', '_')}.json").write_text(json.dumps(items, indent=1))
            results = [x for x in results if (x["domain"], x["mode"]) != (name, mode)] + [r]
            print(markdown([row_of(mode, r)]).splitlines()[-1], f"({r['reason'][:160]})", flush=True)
            done.write_text(json.dumps(results, indent=1, default=str))
    table = markdown([row_of(x["mode"], x) for x in results])
    (args.out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
