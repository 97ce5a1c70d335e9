"""Continued pretraining ("cpt"): a LoRA trained on a domain's documents alone, for a domain with no train.jsonl.

The documents are read by the retriever's own loader (the text the index sees), as plain text: no chat template,
and the loss covers every token (there is no prompt to mask). Each split's documents are tokenized, joined with
the end-of-text token and cut into fixed-length windows. 10 % of the documents (seeded by a hash of each doc id,
so the same docs stay out run after run) are held out: their perplexity, base against adapter, is what the gate
judges (`training.perplexity`). A domain with fewer than MIN_DOCS documents has no 10 % to hold out, so 10 % of
the windows are held out instead, and the run says so.

This module only builds data; the loop is `training.finetune.train` (mode "cpt"), unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.errors import UserFacingError

TASK = "cpt"  # the task name of every window (meta.json's per-task counts)
SEQ_LEN = 512  # tokens per window: long enough for whole sections, short enough for CPU batches
HOLDOUT = 0.1  # share of documents (or windows) held out for perplexity
MIN_DOCS = 10  # below this, 10 % of the documents is not a document: hold out windows instead
MIN_SEQ_LEN = 16
MICRO_TOKENS = 2048  # default tokens per forward pass: every position runs the 49k-vocabulary head here


class NoTrainingData(UserFacingError):
    """A domain with neither documents nor train.jsonl: nothing to train on."""


@dataclass(frozen=True)
class TextWindow:
    """A fixed-length run of document tokens; the loss covers all of them."""

    ids: tuple[int, ...]
    docs: tuple[str, ...]  # ids of the documents whose tokens are in the window, in order
    task: str = TASK

    @property
    def source_id(self) -> str:
        return self.docs[0] if self.docs else ""


@dataclass(frozen=True)
class Document:
    """One document's whole text: the loader's Docs that share an id (a PDF's pages, a Markdown file's sections)."""

    id: str
    text: str


@dataclass
class DocSplit:
    train: list[TextWindow]
    heldout: list[TextWindow]
    by: str  # "document" or "window"
    train_docs: list[str]
    heldout_docs: list[str]  # empty when split by window
    seq_len: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def tokens(self, which: str) -> int:
        return sum(len(w.ids) for w in getattr(self, which))

    def summary(self) -> dict:
        """What meta.json records about the split."""
        return {"by": self.by, "seq_len": self.seq_len, "seed": self.seed, "holdout": HOLDOUT,
                "train_docs": len(self.train_docs), "heldout_docs": self.heldout_docs,
                "train_windows": len(self.train), "heldout_windows": len(self.heldout),
                "train_tokens": self.tokens("train"), "heldout_tokens": self.tokens("heldout")}


# ---- which mode -----------------------------------------------------------------------------------------
def load_documents(domain) -> list[Document]:
    """The domain's documents, read by the retriever's loaders (the text the index sees), one per document id."""
    from bot.retrieval.index import load_docs

    grouped: dict[str, list] = {}
    for doc in load_docs(domain):
        if doc.text.strip():
            grouped.setdefault(doc.id, []).append(doc)
    return [Document(i, "\n\n".join([doc_text(parts[0])] + [d.text.strip() for d in parts[1:]]))
            for i, parts in grouped.items()]


def pick_mode(domain, requested: str = "auto", extra_files: Sequence[str] = ()) -> str:
    """"sft" when the domain has training rows, "cpt" when it has only documents; a clear error when neither."""
    if requested not in ("auto", "sft", "cpt"):
        raise UserFacingError(f"--mode must be auto, sft or cpt; got {requested!r}")
    if requested == "sft" or (requested == "auto" and (domain.train_file.is_file() or extra_files)):
        return "sft"
    if load_documents(domain):
        return "cpt"
    what = "no documents" if requested == "cpt" else f"neither documents nor a {domain.train_file.name}"
    raise NoTrainingData(
        f"{domain.name} has {what} to train on: put its documents in {domain.docs_dir} (*.md, *.txt, or *.jsonl "
        f"rows with id and text) to train from them, or add {domain.train_file} with question/answer examples "
        "(README, 'Adding a domain')"
    )


def why(domain, split: DocSplit) -> str:
    """The lines `domainbot train` prints before a cpt run."""
    lines = [
        f"{domain.name}: training from documents alone (continued pretraining): there is no "
        f"{domain.train_file.name} of questions and answers, so the adapter learns the language of its "
        f"{len(split.train_docs) + len(split.heldout_docs)} documents in docs/: plain text, no chat template, "
        f"loss on every token, {split.seq_len}-token windows.",
    ]
    if split.by == "document":
        lines.append(f"held out {len(split.heldout_docs)} of {len(split.train_docs) + len(split.heldout_docs)} "
                     f"documents (seed {split.seed}) for held-out perplexity: {', '.join(split.heldout_docs)}")
    lines += split.notes
    lines.append(f"{len(split.train)} training windows ({split.tokens('train'):,} tokens), {len(split.heldout)} "
                 f"held-out windows ({split.tokens('heldout'):,} tokens)")
    return "\n".join(lines)


# ---- the split ------------------------------------------------------------------------------------------
def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def n_heldout(n: int) -> int:
    return max(1, round(n * HOLDOUT))


def doc_text(doc) -> str:
    """The document's text, its title first when the text does not already open with it (jsonl rows)."""
    text = doc.text.strip()
    first = text.splitlines()[0] if text else ""
    title = (doc.title or "").strip()
    return text if not title or title in first else f"{title}\n\n{text}"


def separator_id(tokenizer) -> int:
    """The pretraining end-of-text token between documents, else EOS."""
    tid = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # SmolLM2: id 0, which is also its unk id
    known = tid is not None and tokenizer.convert_ids_to_tokens(tid) == "<|endoftext|>"
    return tid if known else tokenizer.eos_token_id


def windows(docs: Sequence[Document], tokenizer, seq_len: int) -> list[TextWindow]:
    """The documents' tokens, each followed by the separator, cut into windows of seq_len (the last may be
    shorter; one of a single token predicts nothing and is dropped)."""
    sep = separator_id(tokenizer)
    stream: list[int] = []
    owner: list[int] = []
    for i, doc in enumerate(docs):
        ids = tokenizer(doc.text, add_special_tokens=False, verbose=False).input_ids + [sep]
        stream += ids
        owner += [i] * len(ids)
    out = []
    for start in range(0, len(stream), seq_len):
        ids = stream[start : start + seq_len]
        if len(ids) < 2:
            continue
        names = tuple(dict.fromkeys(docs[o].id for o in owner[start : start + seq_len]))
        out.append(TextWindow(tuple(ids), names))
    return out


def split(docs: Sequence[Document], tokenizer, *, seq_len: int = SEQ_LEN, seed: int = 0) -> DocSplit:
    """Hold out 10 % of the documents (by a seeded hash of their ids), or of the windows when there are fewer
    than MIN_DOCS documents."""
    if not docs:
        raise NoTrainingData("no documents to train on")
    if len(docs) >= MIN_DOCS:
        held = {d.id for d in sorted(docs, key=lambda d: _rank(seed, d.id))[: n_heldout(len(docs))]}
        train_docs = [d for d in docs if d.id not in held]
        held_docs = [d for d in docs if d.id in held]
        return DocSplit(windows(train_docs, tokenizer, seq_len), windows(held_docs, tokenizer, seq_len), "document",
                        [d.id for d in train_docs], [d.id for d in held_docs], seq_len, seed)
    every = windows(docs, tokenizer, seq_len)
    if len(every) < 2:
        total = sum(len(w.ids) for w in every)
        raise UserFacingError(
            f"too little text to hold any out: {len(docs)} document(s) make {total} tokens, one {seq_len}-token "
            "window; add documents or pass a smaller --seq-len"
        )
    held_at = set(sorted(range(len(every)), key=lambda i: _rank(seed, str(i)))[: n_heldout(len(every))])
    note = (f"only {len(docs)} documents (fewer than {MIN_DOCS}): held out {len(held_at)} of {len(every)} windows "
            "instead of whole documents, so the held-out text comes from documents the adapter also trains on")
    return DocSplit([w for i, w in enumerate(every) if i not in held_at], [w for i, w in enumerate(every) if i in held_at],
                    "window", [d.id for d in docs], [], seq_len, seed, [note])


def prepare(domain, tokenizer, *, seq_len: int = SEQ_LEN, seed: int = 0, max_len: int | None = None) -> DocSplit:
    """The domain's documents split and windowed; `max_len` is the model's context (a longer window is refused)."""
    if seq_len < MIN_SEQ_LEN or (max_len and seq_len > max_len):
        top = f" and at most the model's context, {max_len}" if max_len else ""
        raise UserFacingError(f"--seq-len must be at least {MIN_SEQ_LEN}{top}; got {seq_len}")
    docs = load_documents(domain)
    if not docs:
        raise NoTrainingData(f"{domain.name} has no documents in {domain.docs_dir} to train on")
    return split(docs, tokenizer, seq_len=seq_len, seed=seed)
