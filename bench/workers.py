"""Replicas benchmark: 1 vs 2 worker processes on the same cores, each with its own `Runtime` over the
mmapped GGUF. Prints ratios measured in one run; no timing asserts anywhere in tests.

    python bench/workers.py            # or: domainbot bench workers
    python bench/workers.py --quick    # fewer requests

Every configuration answers the same fixed requests (a domain question's real prompt: system prompt + retrieved
sources + question, with the domain's live adapter), pulled from one shared queue, at temperature 0 with a fixed
max_tokens. A worker with a thread budget uses it for decode and prompt processing alike; "Runtime defaults" is
what `Runtime` does with DOMAINBOT_THREADS unset (llama-cpp-python: decode on cores/2, prompts on all cores).
The configurations run in two rounds, the second in reverse order, and the table keeps each one's better round:
the cores are shared with other work, and the CPU columns show how much of them our workers got.
Memory is read from /proc/<pid>/smaps_rollup while every worker is still alive:
  - RSS counts a shared page in full in every process that maps it, so RSS(2 workers) double-counts the weights;
  - PSS divides each shared page by the number of processes mapping it: PSS summed is what they really use.
Results: bench/results/workers.json and workers.png.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = [
    ("medical", "What are the early symptoms of type 2 diabetes?"),
    ("finance", "What was the company's total revenue in 2019?"),
    ("legal", "Does the agreement renew automatically?"),
    ("medical", "How is high blood pressure treated?"),
    ("finance", "How much did operating expenses change from 2018 to 2019?"),
    ("legal", "What is the governing law of the distribution agreement?"),
]


CORES = os.cpu_count() or 2


@dataclass(frozen=True)
class Config:
    workers: int
    threads: int | None  # llama.cpp threads per worker (decode and prompt); None: Runtime's defaults

    @property
    def label(self) -> str:
        who = f"{self.workers} worker{'s' if self.workers > 1 else ''}"
        if self.threads is None:
            return f"{who}, Runtime defaults ({CORES} threads each, decode and prompt)"
        return f"{who} × {self.threads} thread{'s' if self.threads > 1 else ''}"

    @property
    def short(self) -> str:
        return f"{self.workers}×{self.threads or 'default'}"


@dataclass
class Request:
    messages: list[dict]
    adapter: str | None  # runtime key, e.g. "finance:v2"
    adapter_path: str | None


# ---------------------------------------------------------------------------------------------------------
# Memory from /proc


SMAPS_FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")


def smaps_rollup(pid: int) -> dict[str, float]:
    """MB per field of /proc/<pid>/smaps_rollup."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in SMAPS_FIELDS:
            out[key] = int(rest.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by every process on the machine (all cores), from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------------
# Prompts: built once, with the answer path's own pieces, before any worker maps the model


def build_requests(n: int) -> list[Request]:
    from bot import adapters as adapter_store
    from bot.config import load_settings
    from bot.domains import discover
    from bot.llm.llama import resolve_model_path
    from bot.llm.openai import VocabTokenizer
    from bot.prompt import build_messages
    from bot.retrieval.index import Retriever

    settings = load_settings()
    domains = discover(settings.domains_dir, settings.domain_allowlist).domains
    retriever = Retriever(settings)
    vocab = VocabTokenizer(resolve_model_path(settings))  # counts as the served runtime does
    count = vocab.count

    requests = []
    for i in range(n):
        name, question = QUESTIONS[i % len(QUESTIONS)]
        domain = domains[name]
        built = build_messages(domain.system_prompt, question, retriever.search(domain, question), (),
                               budget=settings.prompt_budget, count=count)
        live = adapter_store.current(domain.adapters_dir)
        requests.append(Request(built.messages, f"{name}:{live.version}" if live else None,
                                str(live.gguf) if live else None))
    vocab.close()  # unmap: the parent must not share the model's pages with the workers we measure
    return requests


# ---------------------------------------------------------------------------------------------------------
# Workers (spawned: fresh interpreters, nothing inherited)


def worker(threads: int, max_tokens: int, jobs, results, ready, go, done) -> None:
    from bot.config import load_settings
    from bot.llm.llama import Runtime

    rt = Runtime(load_settings().with_(n_threads=threads or 0, max_tokens=max_tokens))  # decode and prompt threads
    rt.generate([{"role": "user", "content": "hi"}], max_tokens=2)  # first decode outside the clock
    ready.put(os.getpid())
    go.wait()
    while True:
        job = jobs.get()
        if job is None:
            break
        req = Request(**job)
        if req.adapter and not rt.has_adapter(req.adapter):
            rt.ensure_adapter(req.adapter, Path(req.adapter_path))
        gen = rt.generate(req.messages, adapter=req.adapter, max_tokens=max_tokens, temperature=0.0)
        results.put(gen.completion_tokens)
    results.put(None)
    done.wait()  # stay alive until the parent has read our memory
    rt.close()


def importable_worker():
    """`worker` under an importable name: a spawned child cannot find a function of a script run by runpy
    (`domainbot bench workers`), but it gets our sys.path and can import this file as `workers`."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    return importlib.import_module("workers").worker


def run_config(cfg: Config, requests: list[Request], max_tokens: int) -> dict:
    from tqdm import tqdm

    ctx = mp.get_context("spawn")
    target = importable_worker()
    jobs, results, ready = ctx.Queue(), ctx.Queue(), ctx.Queue()
    go, done = ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=target, args=(cfg.threads, max_tokens, jobs, results, ready, go, done))
             for _ in range(cfg.workers)]
    for p in procs:
        p.start()
    pids = [ready.get(timeout=300) for _ in procs]
    for r in requests:
        jobs.put(asdict(r))
    for _ in procs:
        jobs.put(None)
    tokens, finished = 0, 0
    cpu0, busy0 = sum(cpu_seconds(pid) for pid in pids), machine_busy_seconds()
    t0 = time.perf_counter()
    go.set()
    with tqdm(total=len(requests), desc=cfg.label, unit="req") as bar:
        while finished < len(procs):
            got = results.get(timeout=600)
            if got is None:
                finished += 1
                continue
            tokens += got
            bar.update(1)
    wall = time.perf_counter() - t0
    ours = sum(cpu_seconds(pid) for pid in pids) - cpu0
    busy = machine_busy_seconds() - busy0
    memory = [smaps_rollup(pid) for pid in pids]  # all workers alive: PSS splits the shared pages among them
    done.set()
    for p in procs:
        p.join(timeout=60)
    return {"config": asdict(cfg), "label": cfg.label, "short": cfg.short, "requests": len(requests), "wall_s": wall,
            "requests_per_s": len(requests) / wall, "tokens_per_s": tokens / wall, "tokens": tokens,
            "cpu_ours": ours / (wall * CORES), "cpu_others": max(0.0, busy - ours) / (wall * CORES),
            "memory_mb": memory}


# ---------------------------------------------------------------------------------------------------------
# Report


def best_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Each configuration's faster round, in the first round's order."""
    by_label: dict[str, dict] = {}
    for run in (r for rnd in rounds for r in rnd):
        kept = by_label.get(run["label"])
        if kept is None or run["requests_per_s"] > kept["requests_per_s"]:
            by_label[run["label"]] = run
    return [by_label[r["label"]] for r in rounds[0]]


def summary(runs: list[dict]) -> dict:
    by = {(r["config"]["workers"], r["config"]["threads"]): r for r in runs}
    one, two = by[(1, CORES)], by[(2, max(1, CORES // 2))]
    rss1, pss1 = one["memory_mb"][0]["Rss"], one["memory_mb"][0]["Pss"]
    rss2 = sum(m["Rss"] for m in two["memory_mb"])
    pss2 = sum(m["Pss"] for m in two["memory_mb"])
    shared2 = [m["Shared_Clean"] + m["Shared_Dirty"] for m in two["memory_mb"]]
    return {
        "throughput_ratio": two["requests_per_s"] / one["requests_per_s"],
        "rss_one_mb": rss1, "pss_one_mb": pss1, "rss_two_sum_mb": rss2, "pss_two_sum_mb": pss2,
        "rss_two_vs_twice_one": rss2 / (2 * rss1), "pss_two_vs_twice_one": pss2 / (2 * rss1),
        "shared_per_worker_mb": shared2,
    }


def table(runs: list[dict], s: dict) -> str:
    base = runs[0]["requests_per_s"]
    lines = ["| configuration (better of 2 rounds) | requests/s | tokens/s | vs first row | CPU: ours | CPU: others |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['requests_per_s'] / base:.2f}× | {r['cpu_ours']:.0%} | {r['cpu_others']:.0%} |" for r in runs]
    lines += [
        "",
        "| memory (MB, smaps_rollup) | value | ratio to 2 × RSS(1 worker) |",
        "|---|---|---|",
        f"| RSS, 1 worker | {s['rss_one_mb']:.0f} | |",
        f"| 2 × RSS(1 worker) | {2 * s['rss_one_mb']:.0f} | 1.00 |",
        f"| RSS, 2 workers together | {s['rss_two_sum_mb']:.0f} | {s['rss_two_vs_twice_one']:.2f} |",
        f"| PSS, 2 workers together | {s['pss_two_sum_mb']:.0f} | {s['pss_two_vs_twice_one']:.2f} |",
        f"| shared pages per worker (2 workers) | {', '.join(f'{x:.0f}' for x in s['shared_per_worker_mb'])} | |",
        "",
        f"2 workers × {max(1, CORES // 2)} thread vs 1 worker × {CORES} threads: "
        f"{s['throughput_ratio']:.2f}× the requests/s.",
    ]
    return "\n".join(lines)


def plot(runs: list[dict], s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.bar([r["short"] for r in runs], [r["requests_per_s"] for r in runs], color="#4c72b0")
    a.set_ylabel("requests/s")
    a.set_title("throughput (workers × threads)")
    a.tick_params(axis="x", labelsize=8)
    labels = ["2 × RSS(1)", "RSS(2) summed", "PSS(2) summed"]
    b.bar(labels, [2 * s["rss_one_mb"], s["rss_two_sum_mb"], s["pss_two_sum_mb"]], color=["#999", "#dd8452", "#55a868"])
    b.set_ylabel("MB")
    b.set_title("memory of 2 workers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 requests instead of 12")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, choices=(1, 2), default=2, help="2: a second round in reverse order")
    args = parser.parse_args(argv)
    cores = CORES
    n = args.requests or (6 if args.quick else 12)
    requests = build_requests(n)
    configs = [Config(1, cores), Config(2, max(1, cores // 2)), Config(1, max(1, cores // 2)), Config(2, None)]
    rounds = [[run_config(c, requests, args.max_tokens) for c in order]
              for order in (configs, configs[::-1])[: args.rounds]]
    rounds[1:] = [sorted(r, key=lambda run: configs.index(Config(**run["config"]))) for r in rounds[1:]]
    runs = best_rounds(rounds)
    s = summary(runs)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "workers.json").write_text(json.dumps({"cores": cores, "max_tokens": args.max_tokens, "runs": runs,
                                                  "rounds": rounds, "summary": s}, indent=2))
    plot(runs, s, out / "workers.png")
    print(f"\n{cores} cores, {n} requests, max_tokens {args.max_tokens}, temperature 0\n")
    print(table(runs, s))
    print(f"\nwrote {out / 'workers.json'} and {out / 'workers.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
