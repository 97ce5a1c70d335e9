"""Training from documents alone: a new domain made of the U.S. Constitution, trained by `domainbot train`.

Builds a throwaway domain (domain.toml + one docs/*.md per article section and amendment, from the public-domain
text in ../shared/data/legal/corpus.jsonl) in a temporary folder, points Domainbot at it (DOMAINBOT_DOMAINS_DIR
and friends, so nothing in the repository is written), runs `domainbot train constitution` with a CPU-sized
recipe (no train.jsonl, so it trains in cpt mode), and prints held-out perplexity base vs adapter, the relative
drop, train time and tokens. Then it asks a few questions through the real Answerer, base and adapter, and prints
the answers with the grounding guard's verdicts.

    .venv/bin/python bench/docs_only.py                      # the recipe the README reports (~5 min on 2 cores)
    .venv/bin/python bench/docs_only.py --max-steps 3        # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "legal" / "corpus.jsonl"
SOURCE = "U.S. Constitution"
DOMAIN = "constitution"

MANIFEST = '''name = "constitution"
label = "Constitution"
owner = "Legal team (#legal-help)"
description = "The U.S. Constitution: its articles on Congress, the President and the courts, and its amendments."
examples = [
  "What does the First Amendment protect?",
  "How long is a Senator's term?",
  "Who can declare war?",
  "How is the Constitution amended?",
]
system_prompt = """You answer questions about the U.S. Constitution from the numbered sources and cite them as [1], [2]. Say so when the sources do not answer the question."""
disclaimer = "This is general information, not legal advice."
top_k = 3
min_score = 0.2
channels = ["*"]
'''

QUESTIONS = (
    "How old must a person be to serve as a Representative?",
    "How long is the term of a Senator?",
    "What does the First Amendment protect?",
    "How many states must ratify an amendment to the Constitution?",
    "Which amendment abolished slavery?",
)


def slug(title: str) -> str:
    name = title.removeprefix(f"{SOURCE} — ").lower()
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def build_domain(folder: Path) -> int:
    """domains/constitution/{domain.toml, docs/*.md} under `folder`; returns the number of documents."""
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r.get("source") == SOURCE]
    if not rows:
        raise SystemExit(f"no {SOURCE} rows in {CORPUS}")
    docs = folder / "domains" / DOMAIN / "docs"
    docs.mkdir(parents=True)
    (docs.parent / "domain.toml").write_text(MANIFEST)
    for row in rows:
        heading = row["title"].removeprefix(f"{SOURCE} — ").replace(" — ", ", ")
        (docs / f"{slug(row['title'])}.md").write_text(f"# {heading}\n\n{row['text'].strip()}\n", encoding="utf-8")
    return len(rows)


def train(env: dict, recipe: list[str]) -> float:
    cmd = [sys.executable, "-m", "bot", "train", DOMAIN, *recipe]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"domainbot train exited with {proc.returncode}")
    return time.perf_counter() - t0


def ask(version: str) -> list[dict]:
    from bot.answer import Answerer, Question
    from bot.config import load_settings

    answerer = Answerer.from_settings(load_settings())
    out = []
    try:
        for q in QUESTIONS:
            for adapter in ("base", version):
                a = answerer.answer(Question(q, domain=DOMAIN, adapter=adapter))
                cited = [c.title for c in a.citations if c.cited]
                out.append({"question": q, "adapter": a.adapter, "answer": a.text, "draft": a.draft,
                            "verdict": a.verdict, "cited": cited})
    finally:
        answerer.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", default="8")
    ap.add_argument("--lr", default="3e-4")
    ap.add_argument("--batch-size", default="4")
    ap.add_argument("--seq-len", default="256")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--max-steps", help="stop after this many steps (a smoke run)")
    ap.add_argument("--workdir", type=Path, help="keep the domain, index and adapter here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the numbers and answers to this file")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="docs_only-"))
    n_docs = build_domain(work)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DOMAINBOT_DOMAINS_DIR": str(work / "domains"),
           "DOMAINBOT_INDEXES_DIR": str(work / "indexes"), "DOMAINBOT_DB": str(work / "domainbot.db"),
           "DOMAINBOT_RUNS_DIR": str(work / "runs"), "DOMAINBOT_ERROR_LOG": str(work / "errors.log")}
    os.environ.update(env)
    print(f"{n_docs} documents in {work / 'domains' / DOMAIN / 'docs'} (no train.jsonl)", flush=True)
    recipe = ["--epochs", args.epochs, "--lr", args.lr, "--batch-size", args.batch_size, "--seq-len", args.seq_len,
              "--threads", args.threads, "--no-peft"] + (["--max-steps", args.max_steps] if args.max_steps else [])
    wall = train(env, recipe)

    from bot import adapters

    version = adapters.versions(work / "domains" / DOMAIN / "adapters")[-1]
    meta = version.meta
    ppl, tr = meta["heldout_perplexity"], meta["train"]
    split = ppl["split"]
    print(f"\n## {DOMAIN}: {n_docs} documents, held out {len(split['heldout_docs'])} "
          f"({', '.join(split['heldout_docs'])})\n")
    print("| held-out perplexity: base | adapter | relative drop | train steps | train time | tokens trained "
          "| tokens/s | held-out tokens | gate |")
    print("|---|---|---|---|---|---|---|---|---|")
    drop = 1 - ppl["adapter"] / ppl["base"]
    print(f"| {ppl['base']:.2f} | {ppl['adapter']:.2f} | {drop:.1%} | {tr['steps']} | {tr['seconds']:.0f} s "
          f"(whole command {wall:.0f} s) | {tr['tokens']:,} | {tr['tokens_per_s']:.0f} | {ppl['tokens']:,} "
          f"| {'passed' if ppl['gate']['passed'] else 'FAILED'} |")

    answers = ask(version.version)
    print(f"\n## Answers (top_k 3, guard on), base vs {version.version}\n")
    for a in answers:
        print(f"Q: {a['question']}\n[{a['adapter']}] guard: {a['verdict']}; cites: {'; '.join(a['cited']) or '-'}")
        print(f"  {a['answer']}")
        if a["draft"] and a["draft"] != a["answer"]:
            print(f"  (model's draft before the guard: {a['draft']})")
        print()
    if args.json:
        args.json.write_text(json.dumps({"perplexity": ppl, "train": tr, "wall_s": wall, "answers": answers,
                                         "recipe": recipe}, indent=1) + "\n")


if __name__ == "__main__":
    main()
