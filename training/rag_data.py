"""RAG answering rows, built the way the bot serves a question: `domains/<d>/train_rag.jsonl`.

Each row is one open question, the real retriever's top-k chunks for it (`Retriever.search`, the domain's top_k
and score floor, as `Answerer.answer` calls it), and a short answer that states the fact in the passage's own
words and cites the gold passage as [n]: `Kansas [2].`, `486 thousand [1] ($1,616 - $1,130).` The gold chunk
sits at a seeded random position among real distractors (it replaces one when the retriever missed it), and
only at positions where the serving token budget still shows it with the answer in it. About one question in
five also gets a "missing" row (17 % of the rows): the same question, the gold document's chunks taken out and
the next hits moved up, answered with the guard's no-sources sentence, so the adapter learns to say so instead
of guessing. Tasks: <d>_rag, <d>_rag_missing, and finance_rag_arith (computed TAT-QA answers) for `--cap`.

Sources are the training side only: `qa.jsonl` rows with split "train", and train.jsonl's open questions that
have a corpus passage (TAT-QA, CUAD extraction, MedQuAD). A document that a dev/test `qa.jsonl` row or an
`eval.jsonl` row uses never appears in a row, as gold or as distractor (legal: nor any clause of a held-out
contract). Rows store chunk ids and character spans, not text; `training.dataset.row_to_example` rebuilds the
prompt from the corpus. Run: `python -m training.rag_data finance|legal|medical|all`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import Settings, load_settings
from bot.domains import Domain
from bot.policy import clean_question
from bot.prompt import SOURCES_HEADER, Passage, TokenCounter
from training.dataset import load_corpus, read_jsonl, resolve_domain, row_to_example

if TYPE_CHECKING:  # faiss and the embedder load only when rows are built
    from bot.retrieval.index import Retriever

try:  # the grounding guard's own sentence; the literal is its value when the guard is not there
    from bot.guard import NO_SOURCES_TEXT
except ImportError:  # pragma: no cover - bot/guard.py ships with this module's consumers
    NO_SOURCES_TEXT = "My sources don't cover this, so I can't answer it from them."

SEED = 0
MISSING_SHARE = 0.17  # of the rows: gold-missing rows, on questions that also have their gold row
REFILL = 12  # extra hits searched for when held-out or gold chunks must be replaced ("the next hit")
MAX_DERIVATION = 60  # characters: longer TAT-QA derivations are skipped (the answer must stay one short sentence)
MAX_QUOTE = 300  # characters of MedQuAD answer sentences kept (1-2 sentences)
DOMAINS = ("finance", "legal", "medical")
MARK = "[#]"  # where the citation goes in an answer template


@dataclass(frozen=True)
class Item:
    """One open question with a gold corpus document and the answer to give from it."""

    id: str
    question: str
    doc: str  # gold document id (a corpus id)
    evidence: tuple[str, ...]  # literal strings the shown gold chunk must contain
    template: str  # the answer with MARK where [n] goes
    kind: str  # span | multi-span | arithmetic | sentence


# ---------------------------------------------------------------- held-out documents


def held_out_docs(domain: Domain, corpus: dict[str, Passage]) -> set[str]:
    """Documents a train_rag row must not show: those of qa dev/test rows and eval rows; for legal, every clause
    of a contract those rows (or heldout_cuad_contracts.txt) hold out, since CUAD splits by contract."""
    qa_path = domain.path / "qa.jsonl"
    qa = read_jsonl(qa_path, required=("id", "context_id")) if qa_path.is_file() else []
    evals = read_jsonl(domain.eval_file, required=("id",)) if domain.eval_file.is_file() else []
    held = {r["context_id"] for r in qa if r.get("split") != "train"}
    held |= {r["context_id"] for r in evals if r.get("context_id")}
    contracts = {corpus[d].metadata.get("contract_file") for d in held if d in corpus}
    contracts |= {r["contract"] for r in qa if r.get("split") != "train" and r.get("contract")}
    listed = domain.path / "heldout_cuad_contracts.txt"
    if listed.is_file():
        contracts |= {line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()}
    contracts.discard(None)
    held |= {d for d, p in corpus.items() if p.metadata.get("contract_file") in contracts}
    return held


# ---------------------------------------------------------------- answers in the passage's words


def _ws(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def locate(answer: str, text: str) -> str | None:
    """`answer` as the passage writes it (its casing, "$ 67,719" as "$67,719" or "67,719"), or None."""
    flat = _ws(text)
    for form in dict.fromkeys([answer, answer.replace("$ ", "$"), answer.replace("$ ", "").replace("$", "")]):
        form = _ws(form)
        if not form:
            continue
        # whole words only: "12" must not match inside "2012"
        m = re.search(rf"(?<![\w]){re.escape(form)}(?![\w])", flat, re.IGNORECASE)
        if m:
            return m.group(0)
    return None


def holds(text: str, evidence: Sequence[str], exact: bool = True) -> bool:
    """Whether `text` writes every evidence string: as written (the answer quotes it), or in any of locate's
    forms (enough to make a "missing" row answerable after all)."""
    found = [locate(e, text) for e in evidence]
    return all(f is not None and (not exact or f.lower() == _ws(e).lower()) for f, e in zip(found, evidence, strict=True))


def _sentences(text: str) -> list[str]:
    """Sentences and "- " list items of a MedQuAD answer, in order."""
    pieces = re.split(r"(?<=[.!?:])\s+(?=[A-Z(\"'])|\s+-\s+|^-\s+", _ws(text))
    return [s.strip() for s in pieces if s.strip()]


def _cite_sentence(sentence: str) -> str:
    """'A sentence.' -> 'A sentence [#].' (the citation before the final stop, as the guard reads it)."""
    body = sentence.rstrip()
    stop = re.search(r"[.!?]+$", body)
    return f"{body[: stop.start()]} {MARK}{stop.group(0)}" if stop else f"{body} {MARK}."


_DERIVATION = re.compile(r"^(?P<answer>.*?)\s*\(derivation:\s*(?P<derivation>.*)\)\s*$", re.S)
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def arithmetic_template(answer: str, derivation: str, text: str) -> tuple[str, tuple[str, ...]] | None:
    """`486 thousand [#] ($1,616 - $1,130).` when every number of the derivation is written in the passage."""
    derivation = _ws(derivation)
    if not derivation or len(derivation) > MAX_DERIVATION or "##" in derivation:
        return None
    numbers = tuple(dict.fromkeys(n.rstrip(",") for n in _NUMBER.findall(derivation)))
    operands = [n for n in numbers if not re.fullmatch(r"[1-9]|10|100", n)]  # /2, *100 are arithmetic, not data
    if not operands or any(locate(n, text) is None for n in operands):
        return None
    return f"{_ws(answer)} {MARK} ({derivation}).", tuple(operands)


# ---------------------------------------------------------------- items per domain


def _finance_name(question: str, title: str) -> str:
    """The question as a user who names the report section asks it (the way qa.jsonl's named_question reads)."""
    words = re.sub(r"^Annual-report excerpt:\s*", "", title).rstrip("…").split()[:10]
    while words and words[-1].lower() in {"and", "or", "of", "the", "a", "in", "for", "to", "as", "by", "on"}:
        words.pop()
    name = " ".join(words).rstrip(",;:.")
    return f"{name}: {question}" if name else question


def _span_item(id_: str, question: str, doc: str, spans: Sequence[str], kind: str, text: str,
               scale: str = "") -> Item | None:
    """`<span(s) as the passage writes them> [#].` A bare number of a table "in millions" (or a percent column)
    gets its scale word ("0.9 million", "12.5%"): the reader needs it, and the guard counts such a number as
    the passage's (scale words are not content words, and 0.9 million matches 0.9 up to a factor of 1000)."""
    found = [locate(s, text) for s in spans if s.strip()]
    if not found or any(f is None for f in found):
        return None
    unit = {"thousand": " thousand", "million": " million", "billion": " billion", "percent": "%"}.get(scale, "")
    shown = [f"{f}{unit}" if unit and re.fullmatch(r"-?\$?\s?[\d,]*\.?\d+", f) else f for f in found]
    answer = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
    return Item(id_, question, doc, tuple(found), f"{answer.rstrip('.;:, ')} {MARK}.", kind)


def _qa_items(domain: Domain, corpus: dict[str, Passage]) -> Iterator[Item]:
    """qa.jsonl rows with split "train": short gold answers (or an alias) written as in the passage."""
    path = domain.path / "qa.jsonl"
    if not path.is_file():
        return
    for r in read_jsonl(path, required=("id", "question", "answer", "context_id")):
        if r.get("split") != "train" or r["context_id"] not in corpus:
            continue
        text = corpus[r["context_id"]].text
        question = r.get("named_question") or r["question"]  # finance: the user names the company's report
        kind = r.get("answer_type", "span")
        if kind == "arithmetic":
            made = arithmetic_template(r["answer"], r.get("derivation", ""), text)
            if made:
                yield Item(r["id"], question, r["context_id"], made[1], made[0], kind)
            continue
        if kind == "multi-span":
            item = _span_item(r["id"], question, r["context_id"], r["answer"].split("; "), kind, text)
        else:
            item = next((it for a in [r["answer"], *r.get("aliases", [])]
                         if (it := _span_item(r["id"], question, r["context_id"], [a], "span", text))), None)
        if item:
            yield item


def _tatqa_items(rows: Iterable[dict], corpus: dict[str, Passage], rng: random.Random) -> Iterator[Item]:
    for r in rows:
        if r["task"] != "tatqa_hybrid_qa" or r.get("context_id") not in corpus:
            continue
        passage = corpus[r["context_id"]]
        question = r["instruction"].strip()
        if rng.random() < 0.5:  # half named, half as asked: users do both
            question = _finance_name(question, passage.title)
        kind = r.get("answer_type", "span")
        if kind == "arithmetic":
            m = _DERIVATION.match(r["output"])
            made = arithmetic_template(m["answer"], m["derivation"], passage.text) if m else None
            if made:
                yield Item(r["id"], question, r["context_id"], made[1], made[0], kind)
        elif kind in ("span", "multi-span"):
            raw = r.get("answer_raw")
            spans = raw if isinstance(raw, list) else [r["output"]]
            item = _span_item(r["id"], question, r["context_id"], [str(s) for s in spans], kind, passage.text,
                              r.get("scale", ""))
            if item:
                yield item


_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                 "sixteen seventeen eighteen nineteen twenty").split()
_WORDS = "|".join([*_NUMBER_WORDS, "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred"])
_PERIOD = re.compile(r"^(?:successive\s+)?(\d+)\s+(day|month|year)s?$", re.I)


def locate_period(answer: str, text: str) -> str | None:
    """A CUAD period ("30 days", "successive 1 year") as the clause writes it: "thirty (30) days", "one-year",
    "12 months"; None when the clause spells it otherwise."""
    m = _PERIOD.match(answer.strip())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2).lower()
    words = rf"(?:{_WORDS})(?:[\s-]+(?:{_WORDS}|and))*"
    spelled = rf"|{_NUMBER_WORDS[n]}" if n < len(_NUMBER_WORDS) else ""
    pattern = (rf"(?<![\w(])(?:{words}\s*\(\s*{n}\s*\)|{n}{spelled})[\s-]*(?:calendar\s+|business\s+|consecutive\s+)?"
               rf"{unit}s?(?![\w])")
    found = re.search(pattern, _ws(text), re.I)
    return found.group(0) if found else None


_EXTRACT_QUESTION = re.compile(r"^[^?]*\?")


def _cuad_items(rows: Iterable[dict], corpus: dict[str, Passage]) -> Iterator[Item]:
    """CUAD extraction rows with a clause passage, asked naming the contract (as a user would), answered with
    the normalised answer only where the clause writes it ("30 days"), else skipped."""
    from training.qa_eval import contract_name

    for r in rows:
        if r["task"] != "cuad_extract" or r.get("context_id") not in corpus:
            continue
        passage = corpus[r["context_id"]]
        asked = _EXTRACT_QUESTION.match(r["instruction"].strip())  # the question, without format notes
        if not asked:
            continue
        file = passage.metadata.get("contract_file")
        question = f"{contract_name(file)}: {asked.group(0)}" if file else asked.group(0)
        answer = locate(r["output"], passage.text) or locate_period(r["output"], passage.text)
        if answer:
            yield Item(r["id"], question, r["context_id"], (answer,), f"{answer} {MARK}.", "span")


def _medquad_items(rows: Iterable[dict], corpus: dict[str, Passage]) -> Iterator[Item]:
    """MedQuAD rows: the first 1-2 answer sentences that the passage holds, each cited."""
    for r in rows:
        if r["task"] != "medquad_qa" or r.get("context_id") not in corpus:
            continue
        text = _ws(corpus[r["context_id"]].text)
        kept: list[str] = []
        for sentence in _sentences(r["output"]):
            if sentence.endswith(":") or len(kept) == 2 or (kept and len(" ".join(kept)) + len(sentence) > MAX_QUOTE):
                break  # a lead-in ("...the following:") starts a list of fragments
            # a claim: ends a statement (not a restated question), 4+ words, and the passage has it verbatim
            if re.search(r"\w[.!]$", sentence) and len(sentence.split()) >= 4 and len(sentence) <= MAX_QUOTE \
                    and sentence in text:
                kept.append(sentence)
        if kept:
            template = " ".join(_cite_sentence(s) for s in kept)
            yield Item(r["id"], r["instruction"].strip(), r["context_id"], tuple(kept), template, "sentence")


def items_for(domain: Domain, corpus: dict[str, Passage], seed: int = SEED) -> list[Item]:
    """Every usable training question of the domain (qa train rows first), one per question text."""
    train = read_jsonl(domain.train_file)
    rng = random.Random(f"{seed}:{domain.name}:names")
    found: list[Item] = list(_qa_items(domain, corpus))
    found += _tatqa_items(train, corpus, rng)
    found += _cuad_items(train, corpus)
    found += _medquad_items(train, corpus)
    seen: set[str] = set()
    out = []
    for item in found:
        key = _ws(item.question).lower()
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


# ---------------------------------------------------------------- chunks, retrieval and placement


@dataclass(frozen=True)
class Chunks:
    """The index's chunks with their character spans in the corpus text (what a row stores)."""

    by_doc: dict[str, list[Passage]]
    spans: dict[str, tuple[int, int]]  # chunk id -> (start, end) in the doc text; absent: the whole doc


def chunk_spans(loaded_chunks: Sequence[Passage], corpus: dict[str, Passage]) -> Chunks:
    by_doc: dict[str, list[Passage]] = {}
    for c in loaded_chunks:
        by_doc.setdefault(c.doc_id, []).append(c)
    spans: dict[str, tuple[int, int]] = {}
    for doc_id, chunks in by_doc.items():
        text = corpus[doc_id].text
        if len(chunks) == 1 and chunks[0].text == text.strip():
            continue
        start = 0
        for c in chunks:  # chunks are in order and overlap: search from the previous chunk's start
            at = text.find(c.text, start)
            if at < 0:
                raise ValueError(f"chunk {c.chunk_id} is not in the corpus text of {doc_id}: rebuild the index")
            spans[c.chunk_id] = (at, at + len(c.text))
            start = at + 1
    return Chunks(by_doc, spans)


def _block(system: str, n: int, title: str) -> str | None:
    """The text of source [n] in a built system message (as cut by the budget), or None if not shown."""
    head = f"[{n}] {title}\n"
    _, _, sources = system.partition(f"\n\n{SOURCES_HEADER}\n")
    at = sources.find(head)
    if at < 0 or (at and sources[at - 2 : at] != "\n\n"):
        return None
    rest = sources[at + len(head) :]
    nxt = rest.find(f"\n\n[{n + 1}] ")
    return rest if nxt < 0 else rest[:nxt]


class Builder:
    """Builds one domain's rows with the real retriever and the serving prompt."""

    def __init__(self, domain: Domain, settings: Settings, retriever: Retriever, count: TokenCounter,
                 seed: int = SEED):
        self.domain, self.settings, self.retriever, self.count, self.seed = domain, settings, retriever, count, seed
        self.corpus = load_corpus(domain)
        self.held = held_out_docs(domain, self.corpus)
        self.chunks = chunk_spans(retriever.load(domain).chunks, self.corpus)
        self.skipped: Counter[str] = Counter()

    def search(self, question: str, extra: int = 0) -> list[Passage]:
        return self.retriever.search(self.domain, question, k=self.domain.top_k + extra)

    def ranked(self, question: str, drop: Callable[[Passage], bool]) -> tuple[list[Passage], list[Passage]]:
        """(the served top-k minus `drop`ped and held-out chunks, refilled with the next hits; the served top-k)."""
        served = self.search(question)
        bad = lambda p: p.doc_id in self.held or drop(p)  # noqa: E731
        kept = [p for p in served if not bad(p)]
        if len(kept) < len(served) or len(served) < self.domain.top_k:
            ids = {p.chunk_id for p in kept}
            for p in self.search(question, REFILL):
                if len(kept) == self.domain.top_k:
                    break
                if p.chunk_id not in ids and not bad(p):
                    kept.append(p)
                    ids.add(p.chunk_id)
        return kept, served

    def task(self, item: Item) -> str:
        """<d>_rag; TAT-QA arithmetic apart (<d>_rag_arith), since its answer states a computed number that no
        passage holds, and a recipe may weigh it on its own."""
        return f"{self.domain.name}_rag" + ("_arith" if item.kind == "arithmetic" else "")

    def row(self, item: Item, ids: list[str], task: str, output: str, **extra) -> dict:
        spans = {i: list(self.chunks.spans[i]) for i in ids if i in self.chunks.spans}
        return {"id": f"rag-{item.id}" + ("-missing" if task.endswith("_missing") else ""), "task": task,
                "instruction": item.question, "input": "", "passages": ids, **({"spans": spans} if spans else {}),
                "output": output, "source_id": item.id, "kind": item.kind, **extra}

    def shown(self, row: dict) -> list[str | None]:
        """What the model sees of each listed passage: the text of [n] as the budget cut it (None: not shown)."""
        ex = row_to_example(row, self.domain, self.corpus, budget=self.settings.prompt_budget, count=self.count,
                            where=row["id"])
        system = ex.messages[0]["content"]
        titles = [self.corpus[pid.rpartition("#")[0] or pid].title for pid in row["passages"]]
        return [_block(system, n, t) for n, t in enumerate(titles, 1)]

    def gold_row(self, item: Item) -> dict | None:
        """The question with its gold chunk at a seeded position among the retrieved distractors."""
        rng = random.Random(f"{self.seed}:{self.domain.name}:{item.id}")
        gold = next((c for c in self.chunks.by_doc.get(item.doc, [])
                     if holds(c.text, item.evidence)), None)
        if gold is None:
            self.skipped["answer split across chunks"] += 1
            return None
        question = clean_question(item.question)  # what the retriever is asked at serving time
        top, served = self.ranked(question, lambda p: p.chunk_id == gold.chunk_id)
        found = any(p.chunk_id == gold.chunk_id for p in served)
        if len(top) >= self.domain.top_k:  # k passages in all, as served
            if found:
                del top[self.domain.top_k - 1 :]
            else:  # the retriever missed it: it replaces a distractor
                top.pop(rng.randrange(len(top)))
        positions = list(range(len(top) + 1))
        rng.shuffle(positions)
        for pos in positions:  # the first seeded position where the budget still shows the answer
            ids = [p.chunk_id for p in top[:pos]] + [gold.chunk_id] + [p.chunk_id for p in top[pos:]]
            row = self.row(item, ids, self.task(item), item.template.replace(MARK, f"[{pos + 1}]"),
                           gold=gold.chunk_id, retrieved=found)
            text = self.shown(row)[pos]
            if text is not None and holds(text, item.evidence):
                return row
        self.skipped["answer cut by the prompt budget"] += 1
        return None

    def missing_row(self, item: Item) -> dict | None:
        """The question with every chunk of the gold document taken out (the next hits move up). Skipped when a
        shown passage still holds the answer (another filing with the same table): then it is not missing."""
        top, _ = self.ranked(clean_question(item.question), lambda p: p.doc_id == item.doc)
        if not top:
            self.skipped["missing: nothing else retrieved"] += 1
            return None
        row = self.row(item, [p.chunk_id for p in top], f"{self.domain.name}_rag_missing", NO_SOURCES_TEXT,
                       gold=None, retrieved=False)
        if any(text and holds(text, item.evidence, exact=False) for text in self.shown(row)):
            self.skipped["missing: another passage holds the answer"] += 1
            return None
        return row

    def build(self, items: Sequence[Item]) -> list[dict]:
        """Gold rows for every item, then missing rows for seeded items with a gold row until they are
        MISSING_SHARE of the rows (the same question seen both ways: the answer depends on the sources)."""
        gold: list[tuple[Item, dict]] = []
        for item in items:
            if item.doc in self.held:
                self.skipped["gold passage held out"] += 1
            elif (row := self.gold_row(item)) is not None:
                gold.append((item, row))
        want = round(MISSING_SHARE / (1 - MISSING_SHARE) * len(gold))
        order = list(range(len(gold)))
        random.Random(f"{self.seed}:{self.domain.name}:missing").shuffle(order)
        missing: dict[int, dict] = {}
        for i in order:
            if len(missing) == want:
                break
            if (row := self.missing_row(gold[i][0])) is not None:
                missing[i] = row
        return [r for i, (_, row) in enumerate(gold) for r in (row, missing.get(i)) if r is not None]


def serving_counter(settings: Settings) -> TokenCounter:
    """Counts prompt tokens with the served base model's tokenizer, as training and llama.cpp do."""
    from transformers import AutoTokenizer

    from training.finetune import served_gguf, token_counter

    path = served_gguf(settings)
    return token_counter(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))


def build_domain(domain: Domain | str, settings: Settings | None = None, *, retriever: Retriever | None = None,
                 count: TokenCounter | None = None, seed: int = SEED) -> tuple[list[dict], Counter[str]]:
    """(rows, skipped reasons) for one domain."""
    settings = settings or load_settings()
    domain = resolve_domain(domain, settings)
    if retriever is None:
        from bot.retrieval.index import Retriever

        retriever = Retriever(settings)
    builder = Builder(domain, settings, retriever, count or serving_counter(settings), seed)
    rows = builder.build(items_for(domain, builder.corpus, seed))
    return rows, builder.skipped


def write_rows(rows: Sequence[dict], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def summary(rows: Sequence[dict]) -> str:
    tasks = Counter(r["task"] for r in rows)
    kinds = Counter(r["kind"] for r in rows if not r["task"].endswith("_missing"))
    at = Counter(int(re.search(r"\[(\d+)\]", r["output"])[1]) for r in rows if not r["task"].endswith("_missing"))
    found = sum(r["retrieved"] for r in rows if not r["task"].endswith("_missing"))
    return (f"{dict(tasks)}; kinds {dict(kinds)}; gold at [n] {dict(sorted(at.items()))}; "
            f"retriever found the gold in {found} of {sum(kinds.values())}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.rag_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("domain", choices=(*DOMAINS, "all"))
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, help="output file (one domain only; default domains/<d>/train_rag.jsonl)")
    args = parser.parse_args(argv)
    settings = load_settings()
    names = DOMAINS if args.domain == "all" else (args.domain,)
    if args.out and len(names) > 1:
        parser.error("--out takes one domain")
    from bot.retrieval.index import Retriever

    retriever, count = Retriever(settings), serving_counter(settings)
    for name in names:
        domain = resolve_domain(name, settings)
        rows, skipped = build_domain(domain, settings, retriever=retriever, count=count, seed=args.seed)
        out = args.out or domain.path / "train_rag.jsonl"
        write_rows(rows, out)
        print(f"{name}: {len(rows)} rows -> {out}: {summary(rows)}; skipped {dict(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
