"""Time to first token vs raw llama.cpp prompt time of the tokens actually evaluated (one run).

    python bench/ttft.py [--n 12] [--budgets 512,320] [--no-cache-too]

Each question is a real qa.jsonl dev question with its retrieved passages, built at the prompt budget, served
with the domain's live adapter (as the bot serves it). Domains alternate (legal, medical, finance, ...) and the
context is reset before each question, so the live context never already holds the next prompt: the
per-(domain, adapter) prefix cache restores the system prompt and the rest is evaluated.

For every question, interleaved so that load from other work on the machine hits both alike:
  - ours: wall time of `Runtime.generate(..., max_tokens=1)` (render, tokenise, prefix restore, prompt eval,
    the first token) with the prefix cache warm;
  - raw: `Llama.eval` of exactly the tokens ours evaluated, on the same context, threads and adapter, after the
    cached prefix is in place (untimed), i.e. llama.cpp's own prompt time for the same work.
Also printed: raw prompt tok/s of the whole prompt on an empty context with and without the adapter (what
`llama-bench -p` measures, which runs no adapter).
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

from bot import adapters as adapter_store  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.domains import discover  # noqa: E402
from bot.llm.llama import Runtime  # noqa: E402
from bot.prompt import build_messages  # noqa: E402
from bot.retrieval.index import Retriever  # noqa: E402

TARGET_S = 0.8
TARGET_RATIO = 1.1


def questions(settings, runtime: Runtime, n: int, budget: int) -> list[tuple[str | None, list[dict]]]:
    """(adapter key, messages) for n dev questions, domains alternating; each domain's live adapter loaded."""
    found = discover(settings.domains_dir)
    domains = [d for d in found.domains.values() if (d.path / "qa.jsonl").is_file()]
    retriever = Retriever(settings)
    keys: dict[str, str | None] = {}
    for d in domains:
        live = adapter_store.current(d.adapters_dir)
        keys[d.name] = f"{d.name}:{live.version}" if live else None
        if live:
            runtime.ensure_adapter(keys[d.name], live.gguf)
    rows = {}
    for d in domains:
        every = [json.loads(x) for x in (d.path / "qa.jsonl").open(encoding="utf-8")]
        rows[d.name] = [r for r in every if r.get("split") == "dev"] or every
    out = []
    for i in range(n):
        d = domains[i % len(domains)]
        q = rows[d.name][i // len(domains)]["question"]
        built = build_messages(d.system_prompt, q, retriever.search(d, q), budget=budget, count=runtime.count_tokens)
        out.append((keys[d.name], built.messages))
    return out


def measure(rt: Runtime, prompts, *, raw_too: bool) -> list[dict]:
    """Per prompt: our TTFT, and the raw eval time of the same tokens on the same context and adapter."""
    out = []
    for adapter, messages in prompts:
        rt._call(rt.llm.reset)  # a cold live context: the prefix comes from the cache, the rest is evaluated
        hits = rt.prefix_stats["hits"]
        t0 = time.perf_counter()
        rt.generate(messages, adapter=adapter, max_tokens=1, temperature=0.0)
        ours = time.perf_counter() - t0
        row = {"ttft_s": ours, "hit": rt.prefix_stats["hits"] > hits}
        if raw_too:
            def raw(adapter=adapter, messages=messages, cached=row["hit"]) -> dict:
                rt._activate(adapter)
                prompt = rt.render(messages)
                tokens = rt._tokens(prompt)
                prefix = rt._prefix_tokens(messages, prompt, tokens) if cached else []
                rt.llm.reset()
                rt._restore_prefix(adapter, prefix)  # untimed: what the cache hands ours for free
                # llama-cpp-python re-evaluates the last prompt token when the whole prompt is cached; never here
                rest = tokens[len(prefix):]
                t = time.perf_counter()
                rt.llm.eval(rest)
                return {"raw_s": time.perf_counter() - t, "evaluated": len(rest), "prompt": len(tokens)}

            row.update(rt._call(raw))
        out.append(row)
    return out


def full_prompt_speed(rt: Runtime, prompts, adapter_on: bool) -> float:
    """Raw tok/s of whole prompts on an empty context (llama-bench's pp), with or without the adapter."""

    def run() -> float:
        speeds = []
        for adapter, messages in prompts:
            rt._activate(adapter if adapter_on else None)
            tokens = rt._tokens(rt.render(messages))
            rt.llm.reset()  # eval drops the KV from position n_tokens (0) on
            t = time.perf_counter()
            rt.llm.eval(tokens)
            speeds.append(len(tokens) / (time.perf_counter() - t))
        return statistics.median(speeds)

    return rt._call(run)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--budgets", default="", help="comma-separated prompt budgets (default: the configured one)")
    ap.add_argument("--no-cache-too", action="store_true", help="also time a runtime without the prefix cache")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "ttft.json")
    args = ap.parse_args()
    settings = load_settings()
    budgets = [int(b) for b in args.budgets.split(",") if b] or [settings.prompt_budget]
    rt = Runtime(settings)
    p50 = statistics.median
    print(f"threads {settings.n_threads or os.cpu_count()}, load average {os.getloadavg()[0]:.2f} "
          f"(other work on the cores slows ours and raw alike)")
    results = {}
    for budget in budgets:
        prompts = questions(settings, rt, args.n, budget)
        measure(rt, prompts, raw_too=False)  # fill the prefix cache (one entry per domain), as a running bot has
        rows = measure(rt, prompts, raw_too=True)
        ours, raw = p50(r["ttft_s"] for r in rows), p50(r["raw_s"] for r in rows)
        ratio = p50(r["ttft_s"] / r["raw_s"] for r in rows)  # per question, then the median
        res = {"budget": budget, "n": len(rows), "prompt_tokens_p50": p50(r["prompt"] for r in rows),
               "evaluated_tokens_p50": p50(r["evaluated"] for r in rows), "ttft_p50_s": ours,
               "ttft_p90_s": statistics.quantiles([r["ttft_s"] for r in rows], n=10)[-1] if len(rows) > 1 else ours,
               "raw_eval_p50_s": raw, "ratio_p50": ratio, "cache_hits": sum(r["hit"] for r in rows),
               "raw_pp_tok_s_adapter": full_prompt_speed(rt, prompts, True),
               "raw_pp_tok_s_base": full_prompt_speed(rt, prompts, False)}
        if args.no_cache_too:
            plain = Runtime(settings, prefix_cache=0)
            for d_key, _ in prompts:
                if d_key:
                    plain.ensure_adapter(d_key, rt._adapter_paths[d_key])
            res["ttft_p50_no_cache_s"] = p50(r["ttft_s"] for r in measure(plain, prompts, raw_too=False))
            plain.close()
        results[budget] = res
        default = " (default)" if budget == settings.prompt_budget else ""
        print(f"\nbudget {budget}{default}: n {res['n']}, prompt p50 {res['prompt_tokens_p50']:.0f} tok, "
              f"evaluated p50 {res['evaluated_tokens_p50']:.0f} tok (prefix cache hits {res['cache_hits']}/{res['n']})")
        print(f"  TTFT p50 {ours:.3f} s (p90 {res['ttft_p90_s']:.3f}); raw llama.cpp eval of the same tokens "
              f"p50 {raw:.3f} s; TTFT/raw p50 {ratio:.2f}x")
        print(f"  raw prompt speed, whole prompt, empty context: {res['raw_pp_tok_s_adapter']:.0f} tok/s with the "
              f"live adapter, {res['raw_pp_tok_s_base']:.0f} tok/s base only")
        if "ttft_p50_no_cache_s" in res:
            print(f"  TTFT p50 without the prefix cache: {res['ttft_p50_no_cache_s']:.3f} s")
        print(f"  target TTFT p50 <= {TARGET_S} s: {'met' if ours <= TARGET_S else 'NOT met'}; "
              f"<= {TARGET_RATIO}x raw: {'met' if ratio <= TARGET_RATIO else 'NOT met'}")
    rt.close()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"load_avg_1m": os.getloadavg()[0], "budgets": results}, indent=2))


if __name__ == "__main__":
    main()
