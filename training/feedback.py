"""Turn stored feedback into training data (pure rules over store rows; I/O only in `build`).

Rules, per exchange of the domain (only kind == "answer": refusals and redirects come from policy, not the model):
- an opt-out removes the exchange from every training set, whatever else it received;
- a correction makes an SFT example with the corrected answer (the latest correction wins);
- a net positive vote makes an SFT example with the bot's own answer, unless the guard replaced that answer
  (verdict "quoted" or "no-sources": the text is a quote or a refusal, not the model's answer to learn);
- a net non-positive vote with a 👎 and no correction is excluded and listed for the domain owner to review.

Votes: each user counts once per exchange. A user's latest vote event wins ("+1" / "-1", from a reaction or a
button), and "removed:+1" withdraws it. So a retried event, a repeated reaction or 👍 on both the reaction and
the button never counts twice.

An SFT example is what the model saw: the domain's system prompt with the passages the answer was shown (looked
up by chunk id in the domain's index) and the question, formatted by `bot.prompt.build_messages`. Two repairs
make it teach the job (a short answer read from a numbered passage) rather than guessing:
- the store keeps the shown passages with the cited ones first, so a 👍 answer's [n] markers are renumbered to
  the order the rebuilt prompt shows them in (else "[2]" would point at another passage);
- a correction that names its source ("... (source: <doc id>)") is grounded: that passage is put among the
  shown ones when retrieval missed it, and the target is the stated fact citing it as [n], the way served
  answers cite. A correction with no findable source stays as written.
A correction with a number that no shown passage holds (a computed figure, or a wrong source) is not trained on:
the guard drops every such sentence in serving (`bot.guard`), so the model would learn an answer users never
get, and to state figures its sources lack. It is counted as "unservable" (KTO skips it the same way).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bot.prompt import SOURCES_HEADER, Passage, TokenCounter, approx_tokens, build_messages
from bot.router import explicit_prefix
from training.dataset import Example

VOTE_WORDS: dict[str, int] = {
    "+1": 1,
    "thumbsup": 1,
    "up": 1,
    "good": 1,
    "-1": -1,
    "thumbsdown": -1,
    "down": -1,
    "bad": -1,
}
REMOVED = "removed:"
GUARDED = ("quoted", "no-sources")  # guard verdicts whose text is not the model's answer: never learned from
VOTE_KINDS = ("reaction", "button")


def parse_vote(value: str) -> tuple[int, bool] | None:
    """(+1 or -1, removed?) for a vote value, or None for a reaction that is not a vote (e.g. :eyes:)."""
    removed = value.startswith(REMOVED)
    word = value[len(REMOVED) :] if removed else value
    word = word.strip(":").split("::")[0]  # "+1::skin-tone-2" is still a thumbs up
    direction = VOTE_WORDS.get(word)
    return None if direction is None else (direction, removed)


@dataclass(frozen=True)
class Tally:
    net: int = 0  # sum over users of their standing vote
    up: int = 0
    down: int = 0


def standing_votes(feedback: Iterable[Mapping]) -> dict[tuple[int, str | None], int]:
    """(exchange id, user hash) -> that user's standing vote (+1/-1), replayed in id order: a removed vote is
    no vote, a repeated one counts once, the latest direction wins."""
    standing: dict[tuple[int, str | None], int] = {}
    for row in sorted(feedback, key=lambda r: r["id"]):
        if row["kind"] not in VOTE_KINDS:
            continue
        vote = parse_vote(row["value"])
        if vote is None:
            continue
        key = (row["exchange_id"], row["user_hash"])
        direction, removed = vote
        if not removed:
            standing[key] = direction
        elif standing.get(key) == direction:
            del standing[key]
    return standing


def tally_votes(feedback: Iterable[Mapping]) -> dict[int, Tally]:
    """Each user's standing vote per exchange, summed per exchange."""
    out: dict[int, Tally] = {}
    for (exchange_id, _), vote in standing_votes(feedback).items():
        t = out.get(exchange_id, Tally())
        out[exchange_id] = Tally(t.net + vote, t.up + (vote > 0), t.down + (vote < 0))
    return out


@dataclass(frozen=True)
class Judged:
    exchange: Mapping
    tally: Tally
    correction: str | None = None
    correction_id: int | None = None
    opted_out: bool = False

    @property
    def status(self) -> str:
        if self.opted_out:
            return "opted_out"
        if self.exchange.get("kind", "answer") != "answer":
            return "not_an_answer"
        if self.correction is not None:
            return "corrected"
        if self.tally.net > 0:
            return "guarded" if self.exchange.get("guard_verdict") in GUARDED else "positive"
        if self.tally.down > 0:
            return "needs_review"
        return "no_signal"

    @property
    def source_id(self) -> str:
        """A stable id per training signal: a later correction of an already used answer is new data."""
        base = f"exchange-{self.exchange['id']}"
        return f"{base}-correction-{self.correction_id}" if self.status == "corrected" else base

    @property
    def target(self) -> str | None:
        return {"corrected": self.correction, "positive": self.exchange.get("answer")}.get(self.status)


def judge(exchanges: Iterable[Mapping], feedback: Sequence[Mapping]) -> list[Judged]:
    tallies = tally_votes(feedback)
    corrections: dict[int, tuple[int, str]] = {}
    opted: set[int] = set()
    for row in sorted(feedback, key=lambda r: r["id"]):
        if row["kind"] == "correction" and row["value"].strip():
            corrections[row["exchange_id"]] = (row["id"], row["value"].strip())
        elif row["kind"] == "opt_out":
            opted.add(row["exchange_id"])
    out = []
    for ex in exchanges:
        fid, text = corrections.get(ex["id"], (None, None))
        out.append(Judged(ex, tallies.get(ex["id"], Tally()), text, fid, ex["id"] in opted))
    return out


ChunkLookup = Callable[[str], Passage | None]


def to_example(
    judged: Judged,
    *,
    system_prompt: str,
    domain_names: Sequence[str],
    lookup: ChunkLookup,
    budget: int,
    count: TokenCounter = approx_tokens,
) -> Example | None:
    """The SFT example for one usable exchange, or None when its cited passages are gone from the index or the
    correction is unservable (see the module doc)."""
    pair = training_pair(judged.exchange, judged.target or "", corrected=judged.status == "corrected",
                         system_prompt=system_prompt, domain_names=domain_names, lookup=lookup, budget=budget,
                         count=count)  # fmt: skip
    if pair is None or (judged.status == "corrected" and unservable(*pair)):
        return None
    return Example(pair[0], pair[1], f"feedback_{judged.status}", judged.source_id)


def unservable(messages: Sequence[Mapping], target: str) -> bool:
    """True when the target states a number none of the prompt's passages holds (the guard's own number rule)."""
    from bot import guard

    shown = [n.value for n in guard.numbers_in(messages[0]["content"].partition(SOURCES_HEADER)[2])]
    return any(not any(n.matches(v) for v in shown) for n in guard.numbers_in(target))


_CITE = re.compile(r"\[(\d{1,2})\]")  # as bot.answer reads an answer's [n] markers
_SOURCE_NOTE = re.compile(r"\s*[(\[]\s*(?:source|sources|src)\s*:\s*([^()\[\]]+?)\s*[)\]]\s*\.?\s*$", re.IGNORECASE)


def split_source(text: str) -> tuple[str, str | None]:
    """'$1.2 million (source: doc-7)' -> ('$1.2 million', 'doc-7'); a text naming no source -> (text, None)."""
    m = _SOURCE_NOTE.search(text)
    return (text[: m.start()].strip(), m.group(1).strip()) if m and m.start() > 0 else (text, None)


def renumber(text: str) -> str:
    """The answer's [n] markers in first-use order become [1], [2], ...: the order the store keeps the cited
    passages in (cited first), so the rebuilt prompt's numbers and the answer's agree again."""
    order = list(dict.fromkeys(int(n) for n in _CITE.findall(text)))
    new = {old: i + 1 for i, old in enumerate(order)}
    return _CITE.sub(lambda m: f"[{new[int(m.group(1))]}]", text)


def _passages(exchange: Mapping, lookup: ChunkLookup) -> list[Passage] | None:
    cited = list(exchange.get("citations") or [])
    passages = [p for p in map(lookup, cited) if p is not None]
    return None if cited and not passages else passages  # gone from the index: training would teach guessing


def prompt_messages(exchange: Mapping, *, system_prompt: str, domain_names: Sequence[str], lookup: ChunkLookup,
                    budget: int, count: TokenCounter = approx_tokens) -> list[dict] | None:  # fmt: skip
    """The prompt the model saw for an exchange (its shown passages looked up again), None if they are gone."""
    passages = _passages(exchange, lookup)
    if passages is None:
        return None
    _, question = explicit_prefix(exchange["question"], list(domain_names))
    return build_messages(system_prompt, question, passages, budget=budget, count=count).messages


def training_pair(exchange: Mapping, target: str, *, corrected: bool, system_prompt: str,
                  domain_names: Sequence[str], lookup: ChunkLookup, budget: int,
                  count: TokenCounter = approx_tokens) -> tuple[list[dict], str] | None:  # fmt: skip
    """(prompt messages, target) for one answer or correction (see the module doc), None when its passages
    are gone from the index."""
    passages = _passages(exchange, lookup)
    if passages is None:
        return None
    _, question = explicit_prefix(exchange["question"], list(domain_names))
    fact, ref = split_source(target) if corrected else (target, None)
    find = getattr(lookup, "source", None)
    source = find(ref, fact) if ref and find else None
    if source is not None and all(p.chunk_id != source.chunk_id for p in passages):
        # retrieval missed it: show it, at a position drawn per exchange (always [1] would teach "copy [1]"),
        # in place of the last-ranked passage so the prompt keeps its size
        keep = max(1, len(passages))
        at = random.Random(exchange.get("id", 0)).randrange(len(passages) + 1)
        passages = [*passages[:at], source, *passages[at:]]
        if len(passages) > keep:
            passages.remove(next(p for p in reversed(passages) if p is not source))
    built = build_messages(system_prompt, question, passages, budget=budget, count=count)
    if not corrected:
        return built.messages, renumber(target)
    shown = [p.chunk_id for p in built.passages]
    if source is not None and source.chunk_id in shown:
        return built.messages, f"{fact} [{shown.index(source.chunk_id) + 1}]"
    return built.messages, fact if ref else target


@dataclass
class FeedbackDataset:
    domain: str
    examples: list[Example] = field(default_factory=list)
    review: list[Judged] = field(default_factory=list)  # 👎 without a correction, newest first
    counts: dict[str, int] = field(default_factory=dict)  # exchanges per status, plus "stale" and "seen"

    @property
    def source_ids(self) -> list[str]:
        return [ex.source_id for ex in self.examples]


def build(
    store,
    domain,
    *,
    lookup: ChunkLookup,
    domain_names: Sequence[str],
    budget: int,
    count: TokenCounter = approx_tokens,
    exclude: Iterable[str] = (),
) -> FeedbackDataset:
    """Every usable feedback example of `domain` whose source id is not in `exclude` (e.g. already trained on)."""
    skip = set(exclude)
    judged = judge(store.exchanges(domain.name), store.feedback(domain.name))
    out = FeedbackDataset(domain.name)
    for j in judged:
        out.counts[j.status] = out.counts.get(j.status, 0) + 1
        if j.target is None:
            continue
        if j.source_id in skip:
            out.counts["seen"] = out.counts.get("seen", 0) + 1
            continue
        example = to_example(
            j,
            system_prompt=domain.system_prompt,
            domain_names=domain_names,
            lookup=lookup,
            budget=budget,
            count=count,
        )
        if example is None:
            key = "stale" if _passages(j.exchange, lookup) is None else "unservable"
            out.counts[key] = out.counts.get(key, 0) + 1
        else:
            out.examples.append(example)
    out.review = needs_review(judged)
    return out


def usable_source_ids(store, domain_name: str) -> list[str]:
    """Source ids of every exchange that would make an example now (no index needed: for counting)."""
    judged = judge(store.exchanges(domain_name), store.feedback(domain_name))
    return [j.source_id for j in judged if j.target is not None]


def needs_review(judged: Iterable[Judged], limit: int | None = None) -> list[Judged]:
    """The 👎 answers without a correction, newest first: what the domain owner should look at."""
    flagged = sorted((j for j in judged if j.status == "needs_review"), key=lambda j: -j.exchange["id"])
    return flagged[:limit]


class IndexLookup:
    """Chunk id -> Passage (call it), and `source(ref, fact)`: the passage a correction names, by chunk id or
    document id, preferring the document's chunk that holds the fact."""

    def __init__(self, chunks: Iterable[Passage]) -> None:
        self.chunks = {c.chunk_id: c for c in chunks}
        self.docs: dict[str, list[Passage]] = {}
        for c in self.chunks.values():
            self.docs.setdefault(c.doc_id or c.chunk_id.split("#", 1)[0], []).append(c)

    def __call__(self, chunk_id: str) -> Passage | None:
        return self.chunks.get(chunk_id)

    def source(self, ref: str, fact: str) -> Passage | None:
        from training.qa_eval import contains

        if ref in self.chunks:
            return self.chunks[ref]
        candidates = self.docs.get(ref.split("#", 1)[0], [])
        return next((c for c in candidates if contains(c.text, fact)), candidates[0] if candidates else None)


def index_lookup(retriever, domain) -> IndexLookup:
    """The domain's built index as an `IndexLookup` (the same text the answer was given)."""
    return IndexLookup(retriever.load(domain).chunks)
