"""`domainbot train | publish | eval | adapters | promote | rollback`."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from bot import adapters as store
from bot.config import Settings
from bot.errors import UserFacingError
from training.dataset import resolve_domain


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a LoRA adapter for a domain, export it to GGUF and verify it")
    p.add_argument("domain")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (quick runs)")
    p.add_argument("--max-examples", type=int, help="use at most this many training rows")
    p.add_argument("--epochs", type=float)
    p.add_argument("--rank", type=int)
    p.add_argument("--alpha", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--micro-tokens", type=int,
                   help="padded tokens per forward pass (default 4096; a GPU takes far more, and steps stay exact)")
    p.add_argument("--extra-file", action="append", default=[], metavar="JSONL",
                   help="more training rows, relative to the domain folder (e.g. train_tfns_full.jsonl)")
    p.add_argument("--cap", action="append", default=[], metavar="TASK=N",
                   help="resize a task to N rows: a seeded sample, or repeats when N is larger")
    p.add_argument("--balance", action="append", default=[], metavar="TASK",
                   help="resample TASK to the same number of rows per answer label (after --cap)")
    p.add_argument("--base-model", type=Path, help="a GGUF or HF model dir (default: the served GGUF)")
    p.add_argument("--warm-start", type=Path, help="a PEFT dir or an adapter version folder to start from")
    p.add_argument("--fresh", action="store_true", help="ignore a checkpoint of the same run instead of resuming")
    p.add_argument("--merged", choices=("q8_0", "q4_k_m"), help="also write a standalone merged GGUF")
    p.add_argument("--no-peft", action="store_true", help="keep only adapter.gguf + meta.json in the version folder")
    p.add_argument("--promote", action="store_true", help="make the new version live after it verifies")
    p.add_argument("--no-publish", action="store_true",
                   help="stop after training and write the run's result.json (publish later with `domainbot publish`, "
                        "e.g. when the GPU box has no llama.cpp)")
    p.add_argument("--mode", choices=("auto", "sft", "cpt"), default="auto",
                   help="sft: train.jsonl examples; cpt: continued pretraining on docs/ alone, judged by held-out "
                        "perplexity (auto: cpt when the domain has documents but no train.jsonl)")
    p.add_argument("--seq-len", type=int, help="cpt: tokens per document window (default 512)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("publish", help="export, verify and version a run trained with --no-publish")
    p.add_argument("domain")
    p.add_argument("run", type=Path, help="the run folder (holds result.json and peft/)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the llama.cpp check (0: all cores)")
    p.add_argument("--promote", action="store_true", help="make the new version live after it verifies")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("eval", help="score the base model and/or an adapter on the domain's eval.jsonl and qa.jsonl")
    p.add_argument("domain")
    p.add_argument("--adapter", help="vN, base or current (default: current, compared with base; a vN that is not "
                                     "live is also compared with the live one, and the gate's verdict is recorded)")
    p.add_argument("--limit", type=int, help="at most this many items per task")
    p.add_argument("--tasks", nargs="*", help="only these eval tasks (e.g. legal_qa)")
    p.add_argument("--split", choices=("dev", "test"), default="test", help="qa.jsonl split of open_qa tasks")
    p.add_argument("--no-compare", action="store_true", help="do not also evaluate the base and live models")
    p.add_argument("--out", type=Path, help="report folder (default: reports/<domain>)")
    p.add_argument("--retrieval-only", action="store_true", help="only recall@k of the retriever (no model; seconds)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("adapters", help="list a domain's adapter versions with their metrics; "
                                        "`adapters export` prints the inference-server flags for the live ones")
    p.add_argument("domain", help="a domain, or `export` (see `domainbot adapters export -h`)")
    p.add_argument("export_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_adapters)

    p = sub.add_parser("promote", help="make an adapter version (or 'base') live, if its recorded gate verdict passed")
    promote_args(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="go back to the version that was live before the last promotion")
    p.add_argument("domain")
    p.set_defaults(func=cmd_rollback)


def promote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain")
    p.add_argument("version")
    p.add_argument("--force", action="store_true",
                   help="promote over a failed (or missing) gate verdict; needs --reason")
    p.add_argument("--reason", help="why (recorded in meta.json and adapters/history.jsonl)")


def parse_caps(items: list[str]) -> dict[str, int]:
    caps = {}
    for item in items:
        task, _, n = item.partition("=")
        if not task or not n.isdigit():
            raise UserFacingError(f"--cap wants TASK=N (e.g. tfns_sentiment=3000), got {item!r}")
        caps[task] = int(n)
    return caps


def train_config(args: argparse.Namespace):
    from training.finetune import TrainConfig

    cfg = TrainConfig(seed=args.seed, threads=args.threads, device=args.device, bf16=not args.no_bf16,
                      max_steps=args.max_steps, max_examples=args.max_examples, task_caps=parse_caps(args.cap),
                      task_balance=tuple(args.balance),
                      extra_files=tuple(args.extra_file), base_model=args.base_model, warm_start=args.warm_start)
    for name in ("epochs", "rank", "alpha", "lr", "batch_size", "micro_tokens", "seq_len"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    return cfg


def train_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (recorded in meta.json)."""
    flags = {"max_steps": "--max-steps", "max_examples": "--max-examples", "epochs": "--epochs", "rank": "--rank",
             "alpha": "--alpha", "lr": "--lr", "batch_size": "--batch-size", "base_model": "--base-model",
             "warm_start": "--warm-start", "merged": "--merged", "micro_tokens": "--micro-tokens",
             "seq_len": "--seq-len"}
    parts = ["domainbot", "train", args.domain]
    parts += [f"--extra-file {shlex.quote(f)}" for f in args.extra_file] + [f"--cap {c}" for c in args.cap]
    parts += [f"--balance {t}" for t in args.balance] + ([f"--mode {args.mode}"] if args.mode != "auto" else [])
    parts += [f"{flag} {shlex.quote(str(getattr(args, k)))}" for k, flag in flags.items() if getattr(args, k) is not None]
    parts += [f"--seed {args.seed}", f"--threads {args.threads}"] + ([f"--device {args.device}"] if args.device != "auto" else [])
    parts += [flag for k, flag in (("no_bf16", "--no-bf16"), ("no_peft", "--no-peft"), ("promote", "--promote")) if getattr(args, k)]
    return " ".join(parts)


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from training import cpt
    from training.export import publish
    from training.finetune import check_architecture, config_examples, load_base, served_gguf, train
    from training.runs import save_run

    domain = resolve_domain(args.domain, settings)
    cfg = train_config(args)
    cfg.mode = cpt.pick_mode(domain, args.mode, cfg.extra_files)  # a clear error when there is nothing to train on
    base = Path(cfg.base_model) if cfg.base_model else served_gguf(settings)
    if base.suffix != ".gguf":
        raise UserFacingError("export needs the served GGUF as the base; train on an HF model with the Python API")
    check_architecture(base, cfg)  # an architecture we can't export is refused before the base is loaded
    model, tokenizer = load_base(base)
    split = None
    if cfg.mode == "cpt":
        split = cpt.prepare(domain, tokenizer, seq_len=cfg.seq_len, seed=cfg.seed,
                            max_len=model.config.max_position_embeddings)
        print(cpt.why(domain, split))
        examples = split.train[: cfg.max_examples] if cfg.max_examples else split.train  # as config_examples
        cfg.micro_tokens = cfg.micro_tokens if args.micro_tokens else cpt.MICRO_TOKENS
    else:
        examples = config_examples(domain, cfg, settings, tokenizer)
    unit = "windows" if split else "examples"
    print(f"{domain.name}: {len(examples)} {unit}, rank {cfg.rank}, lr {cfg.lr}, batch {cfg.batch_size}, seed {cfg.seed}")
    result = train(domain, cfg, examples, settings=settings, resume=not args.fresh)
    if result.rank:  # under `accelerate launch`: rank 0 exports, verifies and publishes
        return 0
    print(f"trained {result.steps} steps in {result.seconds:.0f}s: {result.tokens_per_s:.0f} tokens/s, "
          f"final loss {result.final_loss:.3f} ({result.device}"
          f"{f' x {result.world} processes' if result.world > 1 else ''})")
    command = train_command(args)
    if args.no_publish:
        saved = save_run(result, command)
        print(f"saved {saved}; publish it with: domainbot publish {domain.name} {result.run_dir}")
        return 0
    version = publish(result, examples, adapters_dir=domain.adapters_dir, base_gguf=base, keep_peft=not args.no_peft,
                      threads=cfg.threads, command=command, merged=args.merged)
    _published(domain, version, args.promote, settings, base, split)
    return 0


def _published(domain, version, promote: bool, settings: Settings, base: Path, split=None) -> None:
    """Report the export; a cpt version is judged by held-out perplexity first and promoted only if it passes."""
    report = version.meta.get("verify", {})
    print(f"exported {version.gguf} ({version.gguf.stat().st_size / 1e6:.1f} MB); verified: llama.cpp and "
          f"transformers agree on {report.get('agreement', 0):.1%} of top-1 tokens")
    next_step = f"domainbot eval {domain.name} --adapter {version.version}; "
    if (version.meta.get("hyperparameters") or {}).get("mode") == "cpt":
        from training import perplexity

        record = perplexity.judge(domain, version, base_gguf=base, margin=settings.gate_margin,
                                  by="domainbot train", split=split)
        print(perplexity.table(record, version.version))
        if not record["gate"]["passed"]:
            print(f"{domain.name}: {version.version} {'was not promoted' if promote else 'is not live'}: its gate "
                  f'failed. To promote it anyway: domainbot promote {domain.name} {version.version} --force --reason "why"')
            return
        next_step = ""
    if promote:
        store.promote(version.path.parent, version.version)
        print(f"{domain.name}: {version.version} is now live")
    else:
        print(f"next: {next_step}domainbot promote {domain.name} {version.version}")


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from training.export import publish
    from training.runs import load_run

    domain = resolve_domain(args.domain, settings)
    result, examples, command = load_run(args.run, domain, settings)
    version = publish(result, examples, adapters_dir=domain.adapters_dir, base_gguf=Path(result.base_model),
                      threads=args.threads, command=command)
    _published(domain, version, args.promote, settings, Path(result.base_model))
    return 0


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from bot.answer import Answerer
    from training import perplexity
    from training.evaluate import evaluate, record_metrics, save_results, table

    domain = resolve_domain(args.domain, settings)
    if not args.retrieval_only and perplexity.docs_only(domain):  # trained from documents: no eval.jsonl to score
        return perplexity.eval_command(domain, args.adapter or "current", settings)
    if args.retrieval_only:
        from training.evaluate import retrieval_only

        print(table([retrieval_only(domain, settings)]))
        return 0
    wanted = args.adapter or "current"
    live = store.current(domain.adapters_dir)
    live_name = live.version if live else "base"
    answerer = Answerer.from_settings(settings)
    try:
        kwargs = {"limit": args.limit, "tasks": args.tasks, "settings": settings, "answerer": answerer,
                  "split": args.split}
        main = evaluate(domain, wanted, **kwargs)
        results, verdict = [main], None
        if main.adapter != "base" and not args.no_compare:
            results.insert(0, _cached_or_run(domain, "base", args, settings, kwargs))
            if main.adapter != live_name:  # a candidate: the gate compares it with what serves now
                live_result = results[0]
                if live_name != "base":
                    live_result = _cached_or_run(domain, live_name, args, settings, kwargs)
                    results.insert(1, live_result)
                verdict = _record_gate(domain, main, live_result, settings.gate_margin)
    finally:
        answerer.close()
    if main.adapter != "base":
        record_metrics(domain, main, results[0] if len(results) > 1 else None)
    path, png = save_results(results, args.out)
    print(table(results))
    if verdict:
        print(f"\ngate {'passed' if verdict['passed'] else 'FAILED'} {verdict['reason']} (recorded in meta.json)")
    print(f"\nwrote {path} and {png}")
    return 0


def _cached_or_run(domain, adapter: str, args: argparse.Namespace, settings: Settings, kwargs: dict):
    from training.evaluate import cached, evaluate

    saved = cached(domain, adapter, settings, args.limit, args.tasks, args.out, split=args.split)
    if saved:
        print(f"{adapter}: reusing the saved results for the same model, data and settings ({saved.seconds:.0f}s saved)")
    return saved or evaluate(domain, adapter, **kwargs)


def _record_gate(domain, candidate, live, margin: float) -> dict:
    """The gate's verdict on the candidate vs the live version, in its meta.json: `domainbot promote` reads it."""
    import time

    from training.evaluate import gate

    ok, reason = gate(candidate, live, margin)
    verdict = {"passed": ok, "reason": f"vs {live.adapter}: {reason}", "against": live.adapter, "by": "domainbot eval",
               "tasks": sorted(candidate.tasks), "limit": candidate.limit, "split": candidate.split, "margin": margin,
               "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    store.update_meta(domain.adapters_dir / candidate.adapter, gate=verdict)
    return verdict


def cmd_adapters(args: argparse.Namespace, settings: Settings) -> int:
    if args.domain == "export":  # `domainbot adapters export [domain] --format peft|gguf [--target ...]`
        from training.serve_export import export_main

        return export_main(args.export_args, settings)
    if args.domain == "promote":  # `domainbot adapters promote <d> <version> [--force --reason ...]`
        p = argparse.ArgumentParser(prog="domainbot adapters promote", description="same as `domainbot promote`")
        promote_args(p)
        return cmd_promote(p.parse_args(args.export_args), settings)
    if args.export_args:
        raise UserFacingError(f"unexpected arguments after the domain: {' '.join(args.export_args)}")
    domain = resolve_domain(args.domain, settings)
    live = store.current(domain.adapters_dir)
    found = store.versions(domain.adapters_dir)
    if not found:
        print(f"{domain.name}: no adapters yet (live: base). Train one with `domainbot train {domain.name}`.")
        return 0
    print(f"{'':2}{'version':8}{'created':26}{'MB':>6}  {'steps':>6}  {'loss':>6}  {'gate':7} metrics")
    for v in found:
        meta = v.meta
        tasks = (meta.get("metrics") or {}).get("tasks", {})
        scores = ", ".join(f"{t} {s['score']:.3f}" for t, s in sorted(tasks.items())) or "not evaluated"
        mark = "* " if live and live.version == v.version else "  "
        train = meta.get("train", {})
        passed, _ = store.gate_verdict(v.path)
        gate = "forced" if meta.get("forced") else {True: "passed", False: "FAILED", None: "-"}[passed]
        print(f"{mark}{v.version:8}{meta.get('created', '?'):26}{v.gguf.stat().st_size / 1e6:6.1f}  "
              f"{train.get('steps', '?'):>6}  {train.get('final_loss', float('nan')):6.3f}  {gate:7} {scores}")
    print(f"\nlive: {live.version if live else 'base'}")
    return 0


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    """By hand: the version's recorded gate verdict must have passed, or --force --reason overrides it."""
    domain = resolve_domain(args.domain, settings)
    store.promote_by_hand(domain.adapters_dir, args.version, force=args.force, reason=args.reason)
    forced = f" (forced: {args.reason.strip()})" if args.force else ""
    print(f"{domain.name}: {args.version} is now live{forced}")
    return 0


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    domain = resolve_domain(args.domain, settings)
    now = store.rollback(domain.adapters_dir)
    print(f"{domain.name}: rolled back; {now} is now live")
    return 0
