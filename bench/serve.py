"""Serving benchmark: prints ratios measured in one run (no timing asserts anywhere in tests).

    python bench/serve.py            # or: domainbot bench serve
    python bench/serve.py --quick    # fewer repetitions
    python bench/serve.py --guard-only   # just 6., in a second, without loading the model

Measures, on the same prompt and machine:
  1. decode tok/s through `Answerer.answer` vs raw llama-cpp-python
  2. time to first token for typical domain questions at the default prompt budget (p50, p90)
  3. adapter switch time (set adapters + reset), and adapter load time
  4. RSS of 1 base + 3 adapters vs 3 separate `Llama(lora_path=...)` instances (separate processes)
  5. retrieval p50 at ~100k chunks (HNSW above the configured size), search only and with query embedding
  6. the grounding guard (`bot.guard.guard`) per answer, p50 / p99, on synthetic answers from the corpora
  7. TTFT at the default budget vs raw llama.cpp's eval of the tokens actually evaluated (bench/ttft.py's way)
  8. `domainbot ask --json` wall time, a short answer, warm disk cache (a fresh process each time)
  9. 30 Slack questions at once through the real app (fake Slack Web API): all answered, and how long each
     user waits for the message that tells their place in line
Results go to bench/results/serve.json as well. `--only ttft_raw,ask,slack30` runs just those steps (short
slices on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bot import adapters as adapter_store  # noqa: E402
from bot.answer import Answerer, Question, warm_up  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.llm import llama_lora  # noqa: E402
from bot.testing.lora import write_lora  # noqa: E402

TYPICAL = [
    "What are the early symptoms of type 2 diabetes?",
    "How is high blood pressure treated?",
    "What causes migraines?",
    "Is cystic fibrosis inherited?",
    "What was the company's total revenue in 2019?",
    "How much did operating expenses change from 2018 to 2019?",
    "What was the effective tax rate?",
    "Does the agreement renew automatically?",
    "What is the governing law of the distribution agreement?",
    "Can either party terminate the agreement for convenience?",
    "How is asthma diagnosed?",
    "What are the treatments for Parkinson's disease?",
]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def decode_rate(stamps: list[float]) -> float:
    """Tokens per second after the first token (prompt processing excluded)."""
    if len(stamps) < 3:
        return float("nan")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def bench_decode(answerer: Answerer, n_tokens: int) -> dict:
    import llama_cpp

    question = "Explain in detail how type 2 diabetes is treated, step by step."
    stamps: list[float] = []
    ans = answerer.answer(Question(question, domain="medical", adapter="base", max_tokens=n_tokens),
                          on_token=lambda _: stamps.append(time.perf_counter()))
    ours = decode_rate(stamps)
    from bot.prompt import build_messages

    built = build_messages(answerer.domain("medical").system_prompt, question, ans.passages,
                           budget=answerer.settings.prompt_budget, count=answerer.runtime.count_tokens)
    raw = llama_cpp.Llama(model_path=str(answerer.runtime.model_path), n_ctx=answerer.settings.n_ctx,
                          n_threads=answerer.settings.n_threads or None, seed=0, verbose=False)
    raw_stamps: list[float] = []
    for chunk in raw.create_chat_completion(messages=built.messages, max_tokens=n_tokens, temperature=0.0,
                                            stream=True):
        if chunk["choices"][0].get("delta", {}).get("content"):
            raw_stamps.append(time.perf_counter())
    raw.close()
    rate_raw = decode_rate(raw_stamps)
    return {"decode_tok_s_ask": ours, "decode_tok_s_raw": rate_raw, "ratio": ours / rate_raw,
            "tokens": len(stamps), "prompt_tokens": ans.tokens.get("prompt", 0)}


def bench_ttft(answerer: Answerer, questions: list[str]) -> dict:
    ttft, prompt_tokens = [], []
    for q in questions:
        ans = answerer.answer(Question(q, max_tokens=4))
        if ans.kind == "answer":
            ttft.append(ans.timings["first_token_s"])
            prompt_tokens.append(ans.tokens["prompt"])
    return {"p50_s": pct(ttft, 50), "p90_s": pct(ttft, 90), "n": len(ttft),
            "prompt_tokens_p50": pct(prompt_tokens, 50), "budget": answerer.settings.prompt_budget}


def bench_ttft_budget(answerer: Answerer, budget: int, questions: list[str]) -> dict:
    """The same measurement with a smaller prompt budget: the latency/context trade-off."""
    saved = answerer.settings
    answerer.settings = saved.with_(prompt_budget=budget)
    try:
        return bench_ttft(answerer, questions)
    finally:
        answerer.settings = saved


def bench_ttft_raw(answerer: Answerer, n: int) -> dict:
    """TTFT at the configured budget and raw llama.cpp's eval of the same tokens, per question (bench/ttft.py)."""
    import statistics

    sys.path.insert(0, str(ROOT / "bench"))
    import ttft

    rt = answerer.runtime
    prompts = ttft.questions(answerer.settings, rt, n, answerer.settings.prompt_budget)
    ttft.measure(rt, prompts, raw_too=False)  # the prefix cache filled, as in a running bot
    rows = ttft.measure(rt, prompts, raw_too=True)
    p50 = statistics.median
    return {"budget": answerer.settings.prompt_budget, "n": len(rows), "ttft_p50_s": p50(r["ttft_s"] for r in rows),
            "raw_eval_p50_s": p50(r["raw_s"] for r in rows), "ratio_p50": p50(r["ttft_s"] / r["raw_s"] for r in rows),
            "prompt_tokens_p50": p50(r["prompt"] for r in rows), "evaluated_tokens_p50": p50(r["evaluated"] for r in rows)}


def bench_ask_wall(reps: int) -> dict:
    """`domainbot ask --json` in a fresh process: the first run warms the disk cache and is not counted."""
    cmd = [str(ROOT / ".venv" / "bin" / "domainbot"), "ask", "--json", "--domain", "medical", "--max-tokens", "16",
           "Is asthma inherited?"]
    walls, startup, first = [], [], []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"ask failed: {done.stderr[-500:]}")
        if i == 0:
            continue
        timings = json.loads(done.stdout).get("timings", {})
        walls.append(wall)
        startup.append(timings.get("startup_s", float("nan")))
        first.append(timings.get("first_token_s", float("nan")))
    return {"wall_s_p50": pct(walls, 50), "wall_s_max": max(walls), "startup_s_p50": pct(startup, 50),
            "first_token_s_p50": pct(first, 50), "n": reps}


def bench_slack_queue(answerer: Answerer, n: int) -> dict:
    """n app mentions from n users at once through the real Slack app over HTTP (fake Web API): seconds from
    each event's POST to the first bot message in its thread (the place in line, or the answer), and answers."""
    from concurrent.futures import ThreadPoolExecutor

    from bot.testing.slack_bot import start_bot
    from bot.testing.slack_kit import CHANNEL, app_mention, post_event

    with tempfile.TemporaryDirectory() as tmp:
        bot = start_bot(answerer.settings, answerer, db_path=Path(tmp) / "slack.db", max_tokens=24)
        try:
            threads = [bot.slack.add_message(CHANNEL, f"<@UBOT> medical: is asthma inherited? ({i})") for i in range(n)]
            sent: dict[str, float] = {}

            def send(i: int) -> int:
                text = f"<@UBOT> medical: is asthma inherited? ({i})"
                sent[threads[i]] = time.monotonic()
                return post_event(bot.url, app_mention(text, ts=threads[i], user=f"U{i:04d}"))[0]

            with ThreadPoolExecutor(n) as pool:
                codes = list(pool.map(send, range(n)))
            told: dict[str, float] = {}
            ahead: set[str] = set()

            def everyone_told() -> bool:
                for c in bot.slack.calls():
                    ts = c.args.get("thread_ts") if c.method in ("chat.postMessage", "chat.startStream") else None
                    if ts in sent and ts not in told:
                        told[ts] = c.at - sent[ts]
                        if "ahead of yours" in c.args.get("text", ""):
                            ahead.add(ts)
                return len(told) == n

            bot.slack.wait_for(everyone_told, timeout=120, what="a first message in every thread")
            t0 = time.monotonic()

            def answered() -> int:  # an exchange is logged once its answer was posted
                return len(bot.store.exchanges())

            bot.slack.wait_for(lambda: answered() == n, timeout=600, what="every answer")
            waits = list(told.values())
            return {"n": n, "accepted": sum(c == 200 for c in codes), "answered": answered(),
                    "told_place": len(ahead), "first_message_s_p50": pct(waits, 50), "first_message_s_max": max(waits),
                    "all_answered_after_s": time.monotonic() - t0 + max(waits)}
        finally:
            bot.stop()


def _three_adapters(tmp: Path, domains) -> list[Path]:
    paths = []
    for d in domains:
        cur = adapter_store.current(d.adapters_dir)
        paths.append(cur.gguf if cur else write_lora(tmp / f"{d.name}.gguf", rank=8, scale=0.01, seed=len(paths)))
    while len(paths) < 3:
        paths.append(write_lora(tmp / f"extra{len(paths)}.gguf", rank=8, scale=0.01, seed=len(paths)))
    return paths[:3]


def bench_switch(answerer: Answerer, paths: list[Path], reps: int) -> dict:
    rt = answerer.runtime
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        rt.ensure_adapter(f"bench:{i}", p)
    load_ms = (time.perf_counter() - t0) * 1000 / len(paths)

    def switch_all() -> list[float]:
        times = []
        for i in range(reps):
            t = time.perf_counter()
            llama_lora.apply(rt.llm, rt._adapters[f"bench:{i % len(paths)}"])
            times.append((time.perf_counter() - t) * 1000)
        llama_lora.apply(rt.llm, None)
        rt._active = None
        return times

    times = rt._call(switch_all)  # on the worker thread, which owns the context
    return {"switch_ms_p50": pct(times, 50), "switch_ms_max": max(times), "load_ms_mean": load_ms}


RSS_SCRIPT = r"""
import sys, json
sys.path.insert(0, {root!r})
mode, model, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
import llama_cpp
msgs = [{{"role": "user", "content": "Hello, who are you?"}}]
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
if mode == "shared":
    from bot.config import Settings
    from bot.llm.llama import Runtime
    from pathlib import Path
    rt = Runtime(Settings(model_path=Path(model)))
    for i, p in enumerate(paths):
        rt.ensure_adapter(f"a{{i}}", Path(p))
        rt.generate(msgs, adapter=f"a{{i}}", max_tokens=4)
else:
    llms = []
    for p in paths:
        llm = llama_cpp.Llama(model_path=model, lora_path=p, n_ctx=2048, verbose=False)
        llm.create_chat_completion(messages=msgs, max_tokens=4)
        llms.append(llm)
print(json.dumps({{"rss_mb": rss()}}))
"""


def bench_rss(model: Path, paths: list[Path]) -> dict:
    script = RSS_SCRIPT.format(root=str(ROOT))
    out = {}
    for mode in ("shared", "separate"):
        proc = subprocess.run([sys.executable, "-c", script, mode, str(model), *map(str, paths)],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])["rss_mb"]
    return {"rss_mb_one_base_3_adapters": out["shared"], "rss_mb_3_instances": out["separate"],
            "ratio": out["shared"] / out["separate"]}


def bench_retrieval(answerer: Answerer, target: int, queries: int) -> dict:
    """Replicate the real chunks (vectors + small noise) up to `target`, then time hybrid search."""
    import faiss

    from bot.retrieval.bm25 import BM25
    from bot.retrieval.index import LoadedIndex, _make_faiss

    real = [answerer.retriever.load(d) for d in answerer.discovery.domains.values()]
    chunks = [c for r in real for c in r.chunks]
    base = np.vstack([r.vectors.reconstruct_n(0, r.vectors.ntotal) for r in real])
    reps = -(-target // len(chunks))
    rng = np.random.default_rng(0)
    vecs = np.vstack([base + rng.normal(0, 0.02, base.shape).astype(np.float32) for _ in range(reps)])[:target]
    faiss.normalize_L2(vecs)
    all_chunks = (chunks * reps)[:target]
    t = time.perf_counter()
    index = _make_faiss(vecs, answerer.settings.hnsw_above)
    build_s = time.perf_counter() - t
    keywords = BM25([f"{c.title} {c.text}" for c in all_chunks])
    loaded = LoadedIndex("bench", all_chunks, index, keywords, {})
    qs = [q for q in TYPICAL * (queries // len(TYPICAL) + 1)][:queries]
    qvecs = answerer.retriever.embedder.encode(qs)
    dense_ms, hybrid_ms, embed_ms = [], [], []
    for q, v in zip(qs, qvecs, strict=True):
        t = time.perf_counter()
        answerer.retriever.embedder.encode_one(q)
        embed_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        loaded.dense(v, 20)
        dense_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        loaded.dense(v, 20)
        keywords.search(q, 20)
        hybrid_ms.append((time.perf_counter() - t) * 1000)
    return {"chunks": target, "index_type": type(index).__name__, "build_s": build_s,
            "dense_ms_p50": pct(dense_ms, 50), "hybrid_ms_p50": pct(hybrid_ms, 50),
            "query_embed_ms_p50": pct(embed_ms, 50)}


def _guard_inputs(n: int, seed: int = 0) -> list[tuple[str, list, str]]:
    """(question, passages, answer) like production: 4-6 corpus passages of ~200 tokens, answers of 60-300
    tokens mixing copied sentences (cited or not), changed numbers, foreign sentences, loops, a cut tail."""
    import random
    import re

    from bot.prompt import Passage

    rng = random.Random(seed)
    docs = []
    for path in sorted(ROOT.glob("domains/*/docs/corpus.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        docs.append([Passage(r["id"], r.get("title", ""), r["text"][:700]) for r in rows if r.get("text")])
    out = []
    for _ in range(n):
        pool = rng.choice(docs)
        passages = rng.sample(pool, rng.randint(4, 6))
        others = [s for p in rng.sample(pool, 8) for s in re.split(r"(?<=[.!?])\s+", p.text) if len(s) > 30]
        parts: list[str] = []
        length = rng.randint(200, 1050)  # characters: ~60-300 tokens
        while sum(len(x) + 1 for x in parts) < length:
            k = rng.randrange(len(passages))
            text = passages[k].text
            sents = [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s) > 20] or [text]
            sent, roll = rng.choice(sents), rng.random()
            if roll < 0.45:
                parts.append(f"{sent.rstrip('.')} [{k + 1}].")
            elif roll < 0.6:
                parts.append(sent)
            elif roll < 0.75:
                parts.append(re.sub(r"\d+", lambda m: str(int(m.group()) * 7 + 3), sent) + f" [{k + 1}]")
            elif roll < 0.9 and others:
                parts.append(rng.choice(others))
            else:
                parts.append(", ".join([sent.split(",")[0]] * rng.randint(3, 12)) + ".")
        out.append((passages[0].title, passages, " ".join(parts)[:1050]))  # may end mid-sentence, like max_tokens
    return out


def bench_guard(n: int) -> dict:
    from collections import Counter

    from bot.guard import guard

    inputs = _guard_inputs(n)
    ms, verdicts = [], Counter()
    for question, passages, answer in inputs:
        t = time.perf_counter()
        verdicts[guard(answer, passages, question=question).verdict] += 1
        ms.append((time.perf_counter() - t) * 1000)
    return {"answers": n, "ms_p50": pct(ms, 50), "ms_p99": pct(ms, 99), "ms_max": max(ms), "budget_ms": 20.0,
            "verdicts": dict(verdicts)}


def _guard_row(g: dict) -> tuple[str, str, str, str]:
    return (f"grounding guard per answer ({g['answers']} synthetic answers, {g['verdicts']})",
            f"{g['ms_p50']:.2f} ms (p99 {g['ms_p99']:.2f}, max {g['ms_max']:.2f})",
            f"{g['ms_p99'] / g['budget_ms']:.3f}x of target (p99)", "< 20 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--guard-only", action="store_true", help="only time the grounding guard (no model)")
    parser.add_argument("--only", default="", help="comma-separated steps: decode,ttft,ttft_small,ttft_raw,switch,"
                                                  "rss,retrieval,guard,ask,slack30")
    args = parser.parse_args()
    if args.guard_only:
        g = bench_guard(200)
        print("| measure | measured | ratio | target |\n|---|---|---|---|\n| " + " | ".join(_guard_row(g)) + " |")
        return
    settings = load_settings()
    answerer = Answerer.from_settings(settings)
    warm_up(answerer)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = _three_adapters(Path(tmp), answerer.discovery.domains.values())
        steps = [
            ("decode", lambda: bench_decode(answerer, 64 if args.quick else 128)),
            ("ttft", lambda: bench_ttft(answerer, TYPICAL[:6] if args.quick else TYPICAL)),
            ("ttft_small", lambda: bench_ttft_budget(answerer, 320, TYPICAL[6:] if args.quick else TYPICAL[::-1])),
            ("switch", lambda: bench_switch(answerer, paths, 30 if args.quick else 200)),
            ("rss", lambda: bench_rss(answerer.runtime.model_path, paths)),
            ("retrieval", lambda: bench_retrieval(answerer, args.chunks, 50 if args.quick else 200)),
            ("guard", lambda: bench_guard(200)),
            ("ttft_raw", lambda: bench_ttft_raw(answerer, 9 if args.quick else 12)),
            ("ask", lambda: bench_ask_wall(3)),
            ("slack30", lambda: bench_slack_queue(answerer, 30)),
        ]
        only = {s for s in args.only.split(",") if s}
        for name, fn in steps:
            if only and name not in only:
                continue
            print(f"… {name}", file=sys.stderr, flush=True)
            results[name] = fn()
    answerer.close()
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    saved = out / "serve.json"
    try:  # steps not run this time keep their last numbers (each with the load it was measured under)
        merged = json.loads(saved.read_text()) if only else {}
    except (OSError, ValueError):
        merged = {}
    merged.update({k: {**v, "load_avg_1m": round(os.getloadavg()[0], 2)} for k, v in results.items()})
    saved.write_text(json.dumps(merged, indent=2))
    print("\n| measure | measured | ratio | target |\n|---|---|---|---|")
    for row in table_rows(results):
        print("| " + " | ".join(row) + " |")


def table_rows(res: dict) -> list[tuple[str, ...]]:
    """One row per measured step (a step not run this time has no row)."""
    rows = []
    if d := res.get("decode"):
        rows.append(("decode tok/s through ask vs raw llama-cpp-python", f"{d['decode_tok_s_ask']:.1f} vs "
                     f"{d['decode_tok_s_raw']:.1f}", f"{d['ratio']:.3f}x", ">= 0.9x"))
    for key in ("ttft", "ttft_small"):
        if t := res.get(key):
            rows.append((f"time to first token, p50 (budget {t['budget']} tok, prompt p50 {t['prompt_tokens_p50']:.0f} tok)",
                         f"{t['p50_s']:.2f} s (p90 {t['p90_s']:.2f})", f"{t['p50_s'] / 0.8:.2f}x of target", "<= 0.8 s"))
    if t := res.get("ttft_raw"):
        rows.append((f"TTFT p50 at the default budget {t['budget']} (prompt p50 {t['prompt_tokens_p50']:.0f} tok, "
                     f"evaluated {t['evaluated_tokens_p50']:.0f}) vs raw llama.cpp eval of the same tokens",
                     f"{t['ttft_p50_s']:.3f} s vs {t['raw_eval_p50_s']:.3f} s", f"{t['ratio_p50']:.2f}x",
                     "<= 0.8 s and <= 1.1x"))
    if s := res.get("switch"):
        rows.append(("adapter switch (set + reset), p50", f"{s['switch_ms_p50']:.3f} ms (load {s['load_ms_mean']:.1f} ms)",
                     f"{s['switch_ms_p50'] / 10:.4f}x of target", "<= 10 ms"))
    if r := res.get("rss"):
        rows.append(("RSS 1 base + 3 adapters vs 3 Llama instances",
                     f"{r['rss_mb_one_base_3_adapters']:.0f} vs {r['rss_mb_3_instances']:.0f} MB", f"{r['ratio']:.2f}x",
                     "<= 0.5x"))
    if q := res.get("retrieval"):
        rows.append((f"retrieval p50 at {q['chunks']:,} chunks ({q['index_type']}), dense / hybrid",
                     f"{q['dense_ms_p50']:.2f} / {q['hybrid_ms_p50']:.2f} ms (+{q['query_embed_ms_p50']:.1f} ms embed)",
                     f"{q['hybrid_ms_p50'] / 10:.2f}x of target", "<= 10 ms"))
    if g := res.get("guard"):
        rows.append(_guard_row(g))
    if a := res.get("ask"):
        rows.append((f"`domainbot ask --json` wall, 16-token answer, warm disk cache (n {a['n']})",
                     f"p50 {a['wall_s_p50']:.2f} s, max {a['wall_s_max']:.2f} (startup {a['startup_s_p50']:.2f} s)",
                     f"{a['wall_s_p50'] / 3:.2f}x of target", "<= 3 s"))
    if q := res.get("slack30"):
        rows.append((f"{q['n']} Slack questions at once: answered; first message in each thread (place in line)",
                     f"{q['answered']}/{q['n']} answered, {q['told_place']} told their place; p50 "
                     f"{q['first_message_s_p50']:.2f} s, max {q['first_message_s_max']:.2f} s; last answer after "
                     f"{q['all_answered_after_s']:.0f} s", f"{q['first_message_s_max'] / 2:.2f}x of target",
                     "30 answered, each told within 2 s"))
    return rows


if __name__ == "__main__":
    main()
