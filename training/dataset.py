"""Training examples, formatted exactly the way the bot serves them.

Every example goes through `bot.prompt.build_messages` with the domain's system prompt and the serving
token budget, so an adapter learns the prompt shape it will see in Slack. A row whose text lives only in
the corpus (TAT-QA, most MedQuAD rows: `input` empty, `context_id` set) gets that passage as source [1],
as retrieval would supply it; a row with inline `input` is pasted after the instruction, as a user would.
A RAG row (`training/rag_data.py`) lists its sources in `passages`: corpus ids or retriever chunk ids
(`doc#n`, with the chunk's character span of the doc in `spans`), shown as [1..k] in that order.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.config import Settings, load_settings
from bot.domains import Domain, discover
from bot.errors import UserFacingError
from bot.prompt import Passage, TokenCounter, approx_tokens, build_messages

REQUIRED_FIELDS = ("id", "task", "instruction", "output")


class DatasetError(UserFacingError):
    """A training file that cannot be used; the message names the file (and line)."""


@dataclass(frozen=True)
class Example:
    messages: list[dict]  # system (+ sources) and user turns, ready for the chat template
    answer: str  # the assistant turn to learn
    task: str
    source_id: str


# How the same question is phrased at serving/eval time when it differs from the training row.
# Training shows each such row in one of the two phrasings (seeded), so the adapter answers both.
def _strip_prefix(prefix: str) -> Callable[[str], str]:
    return lambda text: text[len(prefix) :].lstrip() if text.startswith(prefix) else text


def _after_marker(marker: str) -> Callable[[str], str]:
    return lambda text: text.split(marker, 1)[1].strip() if marker in text else text


SERVED_PHRASING: dict[str, Callable[[str], str]] = {
    "cuad_yes_no": _strip_prefix("Read the contract excerpt and answer Yes or No."),
    "pubmedqa_reasoning": _after_marker("Question:"),
}


def resolve_domain(domain: Domain | str, settings: Settings | None = None) -> Domain:
    if isinstance(domain, Domain):
        return domain
    settings = settings or load_settings()
    return discover(settings.domains_dir).get(domain)


def read_jsonl(path: Path, required: Sequence[str] = REQUIRED_FIELDS) -> list[dict]:
    """Parse a JSONL file; a bad row raises DatasetError with the file and line number."""
    if not path.is_file():
        raise DatasetError(f"training file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if not isinstance(row.get(k), str) or not row[k].strip()]
            if missing:
                raise DatasetError(f"{path} line {n}: missing or empty field(s): {', '.join(missing)}")
            rows.append(row)
    return rows


def load_corpus(domain: Domain) -> dict[str, Passage]:
    """Corpus passages by id. Prefers the lead's `bot.retrieval.index.load_docs`; reads docs/corpus.jsonl otherwise."""
    try:
        from bot.retrieval.index import load_docs
    except ImportError:
        load_docs = None
    if load_docs is not None:
        return {d.id: Passage(f"{d.id}#0", d.title, d.text, 1.0, d.id, dict(d.metadata)) for d in load_docs(domain)}
    passages = {}
    for path in sorted(domain.docs_dir.glob("*.jsonl")):
        for row in read_jsonl(path, required=("id", "text")):
            meta = {k: v for k, v in row.items() if k not in ("id", "title", "text")}
            passages[row["id"]] = Passage(f"{row['id']}#0", row.get("title", row["id"]), row["text"], 1.0, row["id"], meta)
    return passages


def user_text(instruction: str, inline: str | None) -> str:
    """The user turn: an instruction, then any pasted text (a tweet, a clause, an abstract), normalised
    by the same `policy.clean_question` that every served question goes through."""
    from bot.policy import clean_question

    inline = (inline or "").strip()
    return clean_question(f"{instruction.strip()}\n\n{inline}" if inline else instruction.strip())


def chunk_passage(pid: str, corpus: dict[str, Passage], spans: dict | None = None, where: str = "") -> Passage:
    """A source named by a RAG row: a corpus id is the whole passage; a retriever chunk id `doc#n` is the doc's
    text at spans[pid] (start, end), stripped as `chunk_doc` strips it, or the whole stripped text (a doc that
    fits in one chunk). Chunk ids keep the rows small: the text is rebuilt from the corpus."""
    if pid in corpus:
        return corpus[pid]
    doc_id, _, n = pid.rpartition("#")
    doc = corpus.get(doc_id)
    if doc is None or not n.isdigit():
        raise DatasetError(f"{where}: passage {pid!r} is not in the corpus (neither an id nor an id#chunk)")
    span = (spans or {}).get(pid)
    if span is None:
        text = doc.text.strip()
    elif (not isinstance(span, list | tuple) or len(span) != 2 or not all(isinstance(x, int) for x in span)
          or not 0 <= span[0] < span[1] <= len(doc.text)):
        raise DatasetError(f"{where}: span {span!r} of passage {pid!r} is not a [start, end] inside the doc")
    else:
        text = doc.text[span[0] : span[1]].strip()
    return Passage(pid, doc.title, text, 1.0, doc.doc_id, dict(doc.metadata))


def row_to_example(
    row: dict,
    domain: Domain,
    corpus: dict[str, Passage],
    *,
    budget: int,
    count: TokenCounter = approx_tokens,
    served_phrasing: bool = False,
    where: str = "",
) -> Example:
    instruction = row["instruction"]
    if served_phrasing and row["task"] in SERVED_PHRASING:
        instruction = SERVED_PHRASING[row["task"]](instruction)
    passages: list[Passage] = []
    inline = row.get("input") or ""
    if row.get("passages") is not None:  # a RAG row: the retriever's sources, in the order it lists them
        if not isinstance(row["passages"], list) or not all(isinstance(p, str) for p in row["passages"]):
            raise DatasetError(f"{where}: `passages` must be a list of passage ids")
        passages = [chunk_passage(pid, corpus, row.get("spans"), where) for pid in row["passages"]]
    elif row.get("context_id") and not inline.strip():
        passage = corpus.get(row["context_id"])
        if passage is None:
            raise DatasetError(f"{where}: context_id {row['context_id']!r} is not in {domain.name}'s corpus")
        passages = [passage]
    try:
        question = user_text(instruction, inline)
    except UserFacingError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    built = build_messages(domain.system_prompt, question, passages, budget=budget, count=count)
    return Example(built.messages, row["output"].strip(), row["task"], row["id"])


def _resize(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    """n rows: a seeded sample below len(rows), whole repeats plus a sample above it."""
    repeats, rest = divmod(n, len(rows))
    return rows * repeats + rng.sample(rows, rest)


def answer_label(row: dict) -> str:
    """The label a classification answer starts with ("Yes. Based on..." -> "yes")."""
    words = re.findall(r"[A-Za-z]+", row["output"])
    return words[0].lower() if words else ""


def _cap_tasks(rows: list[dict], caps: dict[str, int], rng: random.Random, balance: Collection[str] = ()) -> list[dict]:
    """Resize each named task to caps[task] rows: a seeded sample below its size, repeats above it
    (a small task such as PubMedQA then counts more); tasks not named keep all their rows. A task in `balance`
    gets the same number of rows for every answer label (macro-F1 weighs the rare labels as much as the common)."""
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    unknown = set(balance) - set(by_task)
    if unknown:
        raise DatasetError(f"--balance names task(s) with no training rows: {', '.join(sorted(unknown))}")
    kept = []
    for task, task_rows in by_task.items():
        n = caps.get(task, len(task_rows))
        if task not in balance:
            kept += _resize(task_rows, n, rng)
            continue
        by_label: dict[str, list[dict]] = {}
        for row in task_rows:
            by_label.setdefault(answer_label(row), []).append(row)
        share, extra = divmod(n, len(by_label))
        for i, label in enumerate(sorted(by_label)):
            kept += _resize(by_label[label], share + (i < extra), rng)
    return kept


def _dedupe(rows: Iterable[tuple[str, dict]]) -> list[tuple[str, dict]]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for where, row in rows:
        key = (row["task"], row["instruction"], row.get("input") or "")
        if key not in seen:
            seen.add(key)
            out.append((where, row))
    return out


def load_rows(domain: Domain, extra_files: Sequence[str | Path] = ()) -> list[tuple[str, dict]]:
    """(where, row) for train.jsonl plus any extra files (relative to the domain folder), duplicates dropped."""
    files = [domain.train_file] + [p if Path(p).is_absolute() else domain.path / p for p in map(Path, extra_files)]
    rows: list[tuple[str, dict]] = []
    for path in files:
        rows += [(f"{path} ({row['id']})", row) for row in read_jsonl(Path(path))]
    if not rows:
        raise DatasetError(f"no training rows for {domain.name}: {', '.join(map(str, files))} is empty")
    return _dedupe(rows)


def load_examples(
    domain: Domain | str,
    *,
    max_examples: int | None = None,
    seed: int = 0,
    extra_files: Sequence[str | Path] = (),
    task_caps: dict[str, int] | None = None,
    settings: Settings | None = None,
    count: TokenCounter = approx_tokens,
    balance: Collection[str] = (),
) -> list[Example]:
    """The domain's training examples, shuffled with `seed`, capped per task and in total."""
    settings = settings or load_settings()
    domain = resolve_domain(domain, settings)
    rng = random.Random(seed)
    pairs = load_rows(domain, extra_files)
    where_of = {id(row): where for where, row in pairs}
    rows = _cap_tasks([row for _, row in pairs], task_caps or {}, rng, balance)
    rng.shuffle(rows)
    if max_examples is not None:
        rows = rows[:max_examples]
    if not rows:
        raise DatasetError(f"the {domain.name} dataset is empty after sampling (max_examples={max_examples})")
    corpus = load_corpus(domain) if any(r.get("context_id") or r.get("passages") for r in rows) else {}
    return [
        row_to_example(
            row, domain, corpus, budget=settings.prompt_budget, count=count,
            served_phrasing=rng.random() < 0.5, where=where_of[id(row)],
        )
        for row in rows
    ]


def data_hash(examples: Sequence) -> str:
    """A short content hash of the formatted examples, or of cpt windows' token ids (recorded in meta.json)."""
    import hashlib

    h = hashlib.sha256()
    for ex in examples:
        ids = getattr(ex, "ids", None)  # a training.cpt.TextWindow (that module imports this one)
        payload = list(ids) if ids is not None else [ex.messages, ex.answer]
        h.update(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode())
    return h.hexdigest()[:16]
