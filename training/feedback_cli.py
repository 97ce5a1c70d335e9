"""Subcommands of the feedback loop: `retrain <domain>`, `report [domain]`, `worker`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bot.config import ROOT, Settings


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def _alpha(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _retrain_config(args: argparse.Namespace):
    from training.retrain import RetrainConfig

    cfg = RetrainConfig()
    changes = {
        "max_steps": args.steps, "epochs": args.epochs, "eval_limit": args.eval_limit, "margin": args.margin,
        "min_examples": args.min_examples, "threads": args.threads,
        "replay_tasks": tuple(args.replay_task or ()) or None, "eval_tasks": tuple(args.eval_task or ()) or None,
        "kto_steps": args.kto_steps, "alpha": args.alpha, "test_limit": args.test_limit,
        "loss_alpha": args.loss_alpha, "lr": args.lr,
    }  # fmt: skip
    for name, value in changes.items():
        if value is not None:
            setattr(cfg, name, value)
    return cfg


def _discover(settings: Settings, name: str | None):
    """Discovery; an unknown `name` raises UnknownDomain, a UserFacingError that names the known domains."""
    from bot.domains import discover

    discovery = discover(settings.domains_dir, settings.domain_allowlist)
    if name is not None:
        discovery.get(name)
    return discovery


def print_outcome(out) -> None:
    print(f"{out.domain}: {out.status} ({out.reason})")
    print(f"  feedback examples {out.n_feedback}, replay {out.n_replay}")
    if out.metrics_candidate:
        print(f"  {'version':<10} {'overall':>8}  tasks")
        for name, m in (
            (out.current_version, out.metrics_current),
            (out.candidate_version, out.metrics_candidate),
        ):
            tasks = "  ".join(f"{t}={v:.3f}" for t, v in sorted(m.get("tasks", {}).items()))
            print(f"  {name:<10} {m['overall']:>8.3f}  {tasks}")
    print(f"  live adapter: {out.live_version}")
    if out.router:
        print(f"  router: {out.router}")


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from bot.store.store import Store
    from training.retrain import retrain
    from training.worker import retrain_lease

    _discover(settings, args.domain)
    # The workers' lease: by hand on one host while another host's worker trains the same domain would be two runs.
    with retrain_lease(settings, args.domain) as held, Store.from_settings(settings) as store:
        if not held:
            print(f"{args.domain}: a worker on another host is retraining it now (it holds the domain's lease in "
                  "the shared store); nothing was started. Try again when its run ends (`domainbot report`).",
                  file=sys.stderr)
            return 1
        out = retrain(args.domain, settings=settings, store=store, cfg=_retrain_config(args))
    print_outcome(out)
    return 0 if out.status in ("promoted", "rejected", "skipped") else 1


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from bot.store.store import Store
    from training.report import write_report

    discovery = _discover(settings, args.domain)
    out_dir = Path(args.out) if args.out else ROOT / "reports" / (args.domain or "all")
    with Store.from_settings(settings) as store:
        report = write_report(
            store, out_dir, args.domain, domains=discovery.domains.values(), review_limit=args.review
        )
    print(report.table)
    print(f"\nreport: {report.html_path}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from bot.store.store import Store
    from training.worker import loop, run_once

    cfg = _retrain_config(args)
    if args.once:
        with Store.from_settings(settings) as store:
            outcomes = run_once(settings, store, min_examples=args.min_new, cfg=cfg)
        for out in outcomes:
            print_outcome(out)
        if not outcomes:
            print("no domain has enough new feedback examples yet")
        return 0
    print(f"retrain worker: checking every {args.interval:g}s (Ctrl-C to stop)")
    loop(settings, interval_s=args.interval, min_examples=args.min_new, cfg=cfg,
         on_pass=lambda outs: [print_outcome(o) for o in outs])  # fmt: skip
    return 0


def _train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=_positive_int, help="at most this many training steps (default 30)")
    p.add_argument("--epochs", type=float, help="passes over feedback + replay examples (default 1)")
    p.add_argument("--lr", type=_positive_float, help="SFT learning rate (default 2e-4)")
    p.add_argument("--eval-limit", type=_positive_int, help="eval items per task for the gate (default 40)")
    p.add_argument("--eval-task", action="append", help="evaluate only this task (repeatable)")
    p.add_argument(
        "--replay-task", action="append", help="replay only this task from train.jsonl (repeatable)"
    )
    p.add_argument(
        "--margin", type=float, help="largest allowed per-task drop (default DOMAINBOT_GATE_MARGIN=0.01)"
    )
    p.add_argument(
        "--min-examples", type=_positive_int, help="skip the run below this many feedback examples"
    )
    p.add_argument("--threads", type=int, help="CPU threads for training (default: all)")
    p.add_argument("--kto-steps", type=_non_negative_int, help="KTO steps on unpaired 👍/👎 after SFT (default 8; 0: none)")
    p.add_argument("--alpha", type=_alpha, help="the gate's significance level on the qa job (default 0.05)")
    p.add_argument("--loss-alpha", type=_alpha,
                   help="a drop beyond --margin is a loss unless chance explains it at this level (default 0.2)")
    p.add_argument("--test-limit", type=_non_negative_int,
                   help="qa test items reported after the verdict (default 40; 0: skip)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrain", help="fine-tune a domain from feedback; promote only if the eval gate passes"
    )
    p.add_argument("domain")
    _train_flags(p)
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser(
        "report", help="owner report: HTML + PNG plots of feedback, versions, eval and routing"
    )
    p.add_argument("domain", nargs="?")
    p.add_argument("--out", help="output folder (default reports/<domain or all>/)")
    p.add_argument("--review", type=_positive_int, default=20, help="how many 👎 answers to list")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "worker", help="retrain loop: retrain a domain when N new usable examples have accumulated"
    )
    p.add_argument("--interval", type=float, default=300.0, help="seconds between checks")
    p.add_argument("--min-new", type=_positive_int, help="N (default DOMAINBOT_RETRAIN_MIN_EXAMPLES)")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    _train_flags(p)
    p.set_defaults(func=cmd_worker)
