"""Time to first token: raw llama.cpp prompt speed vs our TTFT with and without the prefix cache (one run).

    python bench/ttft.py [--n 12]

Each question is a real qa.jsonl question with its retrieved passages, built at the configured prompt budget.
Domains alternate (legal, medical, finance, ...) so the live context never already holds the next domain's
system prompt: that is the case the per-(domain, adapter) prefix cache is for. Prints p50s and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bot.config import load_settings  # noqa: E402
from bot.domains import discover  # noqa: E402
from bot.llm.llama import Runtime  # noqa: E402
from bot.prompt import build_messages  # noqa: E402
from bot.retrieval.index import Retriever  # noqa: E402


def questions(settings, runtime: Runtime, n: int) -> list[list[dict]]:
    found = discover(settings.domains_dir)
    domains = [d for d in found.domains.values() if (d.path / "qa.jsonl").is_file()]
    retriever = Retriever(settings)
    rows = {d.name: [json.loads(x) for x in (d.path / "qa.jsonl").open(encoding="utf-8")][:n] for d in domains}
    out = []
    for i in range(n):
        d = domains[i % len(domains)]
        q = rows[d.name][i // len(domains)]["question"]
        passages = retriever.search(d, q)
        out.append(build_messages(d.system_prompt, q, passages, budget=settings.prompt_budget,
                                  count=runtime.count_tokens).messages)
    return out


def ttft(runtime: Runtime, prompts: list[list[dict]]) -> list[float]:
    times = []
    for messages in prompts:
        runtime._call(runtime.llm.reset)  # a cold context each time (domains alternate in real traffic too)
        t0 = time.perf_counter()
        runtime.generate(messages, max_tokens=1, temperature=0.0)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=12)
    args = ap.parse_args()
    settings = load_settings()
    cached = Runtime(settings)
    plain = Runtime(settings, prefix_cache=0)
    prompts = questions(settings, cached, args.n)

    def raw() -> list[float]:  # llama-cpp-python alone: tokens/s of the prompt eval, no cache of any kind
        speeds = []
        for messages in prompts:
            tokens = plain._tokens(plain.render(messages))
            plain.llm.reset()
            t0 = time.perf_counter()
            plain.llm.eval(tokens)
            speeds.append(len(tokens) / (time.perf_counter() - t0))
        return speeds

    speeds = plain._call(raw)
    ttft(cached, prompts)  # fill the prefix cache (one entry per domain), as a running bot has
    with_cache = ttft(cached, prompts)
    without = ttft(plain, prompts)
    n_tokens = statistics.median(len(plain._tokens(plain.render(m))) for m in prompts)
    p50 = statistics.median
    print(f"prompt tokens p50: {n_tokens:.0f} (budget {settings.prompt_budget}, threads {settings.n_threads or 'all'})")
    print(f"raw llama.cpp prompt eval: {p50(speeds):.0f} tok/s -> {n_tokens / p50(speeds):.3f} s for the p50 prompt")
    print(f"TTFT p50 without prefix cache: {p50(without):.3f} s")
    print(f"TTFT p50 with prefix cache:    {p50(with_cache):.3f} s  (hits {cached.prefix_stats['hits']})")
    print(f"ratio without/with cache: {p50(without) / p50(with_cache):.2f}x; "
          f"with-cache TTFT / raw prompt eval time: {p50(with_cache) / (n_tokens / p50(speeds)):.2f}")
    print(f"target TTFT p50 < 0.8 s: {'met' if p50(with_cache) < 0.8 else 'NOT met'}")
    cached.close()
    plain.close()


if __name__ == "__main__":
    main()
