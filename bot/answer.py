"""The answering path shared by the CLI and Slack: route → policy → retrieve → prompt → generate → Answer.

Knows nothing of Slack. The LLM runtime and the retriever can be injected (tests share one model); otherwise
the runtime is built on the first answer.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

from bot import adapters as adapter_store
from bot import policy
from bot.config import Settings
from bot.domains import Discovery, Domain, discover
from bot.errors import UserFacingError
from bot.guard import GuardResult, guard
from bot.llm.llama import AdapterMismatch, Runtime
from bot.prompt import Passage, Turn, build_messages
from bot.retrieval.index import Retriever
from bot.router import Router, RouteResult

log = logging.getLogger(__name__)

_CITE = re.compile(r"\[(\d{1,2})\]")
# How far (in router score) another domain must lead the thread's own before a follow-up leaves the thread's
# domain: a topic change ("What are the symptoms of hepatitis A?" in a legal thread leads by 0.4), not a
# near-tie on a vague follow-up.
FOLLOW_UP_LEAD = 0.1


@dataclass(frozen=True)
class Citation:
    n: int
    chunk_id: str
    title: str
    doc_id: str
    url: str | None = None
    score: float = 0.0
    cited: bool = False  # the answer text refers to [n]
    file: str | None = None  # a document file's name (docs/*.pdf, .docx, .md, ...); None for a corpus row
    page: int | None = None  # 1-based page of a PDF
    heading: str | None = None  # heading path of a Markdown or HTML section, "Guide > Weekends"

    @property
    def label(self) -> str:
        """How a source is named to a reader: "Master Services Agreement.pdf, p. 14", "guide.md, Parking > Zones",
        or a corpus row's title."""
        if not self.file:
            return self.title.strip() or self.doc_id or self.chunk_id
        where = f"p. {self.page}" if self.page else self.heading
        return f"{self.file}, {where}" if where else self.file


@dataclass(frozen=True)
class Place:
    """Where a question was asked: the domain's channel policy depends on it."""

    channel: str | None = None
    channel_name: str | None = None
    is_dm: bool = False


@dataclass(frozen=True)
class Question:
    """One question and everything known about it when it arrives."""

    text: str
    domain: str | None = None  # an explicit choice; None lets the router decide
    history: Sequence[Turn] = ()  # earlier turns of the thread, oldest first
    place: Place = Place()
    adapter: str | None = None  # "base", "vN", or None for the live version
    passages: Sequence[Passage] | None = None  # sources given by the caller; None retrieves, [] means none
    max_tokens: int | None = None
    route: RouteResult | None = None  # a routing decision already made (Slack shows the domain first)
    # Passages from outside the domain's index (a file attached in Slack), ranked by score: merged with the retrieved
    # ones before the prompt is built, so they are numbered, cited and checked by the guard like any other source.
    extra_passages: Sequence[Passage] = ()


@dataclass
class Answer:
    text: str
    domain: str | None
    route: RouteResult
    kind: str = "answer"  # answer | abstain | refused | redirect | not_allowed
    citations: list[Citation] = field(default_factory=list)
    disclaimer: str = ""
    adapter: str = "base"
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    passages: list[Passage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    guard: dict = field(default_factory=dict)  # the grounding guard's verdict, cited [n] and dropped sentences
    draft: str = ""  # what the model generated (and streamed) before the guard; equal to text when unchanged

    @property
    def verdict(self) -> str | None:
        return self.guard.get("verdict")

    def to_dict(self) -> dict:
        return {
            "domain": self.domain,
            "kind": self.kind,
            "route": self.route.to_dict(),
            "answer": self.text,
            "citations": [asdict(c) for c in self.citations],
            "disclaimer": self.disclaimer,
            "adapter": self.adapter,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "tokens": self.tokens,
            "notes": self.notes,
            "guard": self.guard,
        }


def _stored_router_examples(settings: Settings) -> dict[str, list[str]]:
    """Reroute picks logged by earlier runs; the router learns from them (an unreadable store is not fatal)."""
    if getattr(settings, "db_url", None) is None and not settings.db_path.exists():
        return {}
    try:
        from bot.store.store import Store

        with Store.from_settings(settings) as store:
            return store.router_examples()
    except Exception:  # noqa: BLE001 - routing still works from the manifests
        log.warning("could not read router examples from the store", exc_info=True)  # a URL may hold a password
        return {}


def citations_for(text: str, passages: Sequence[Passage], used: Sequence[int] | None = None) -> list[Citation]:
    """All shown passages as citations; those the answer uses (`used`, else its [n] markers) first, in use order."""
    order = list(used) if used is not None else list(dict.fromkeys(int(m) for m in _CITE.findall(text)))
    order = [n for n in order if 1 <= n <= len(passages)]
    rest = [n for n in range(1, len(passages) + 1) if n not in order]
    return [_citation(n, passages[n - 1], n in order) for n in order + rest]


def merge_ranked(first: Sequence[Passage], second: Sequence[Passage]) -> list[Passage]:
    """Two ranked lists as one: each keeps its own order, and the better-scoring head goes next (a tie goes to
    `first`). The domain's passages are ordered by fused rank, not score, so they are not re-sorted."""
    a, b, out = list(first), list(second), []
    while a and b:
        out.append(a.pop(0) if a[0].score >= b[0].score else b.pop(0))
    return out + a + b


def _citation(n: int, p: Passage, cited: bool) -> Citation:
    meta = p.metadata
    page = meta.get("page")
    return Citation(n, p.chunk_id, p.title, p.doc_id, meta.get("url"), p.score, cited,
                    file=str(meta["file"]) if meta.get("file") else None,
                    page=page if isinstance(page, int) and not isinstance(page, bool) else None,
                    heading=str(meta["heading"]) if meta.get("heading") else None)


_POLAR = re.compile(r"^\s*(is|are|was|were|does|do|did|can|could|may|might|must|shall|should|will|would|has|have|had)\b",
                    re.IGNORECASE)


_ASKED = re.compile(r"[?:\n]")


def carries_text(question: str) -> bool:
    """The question brings text of its own to judge (a tweet, a clause): three words or more after its first "?",
    ":" or line break. Without it, "Yes" to "Does the agreement renew automatically?" is a claim about the
    sources, which the guard must check like any other."""
    asked = _ASKED.search(question)
    return bool(asked) and len(re.findall(r"[^\W_]+", question[asked.end():])) >= 3


def _asks_for(question: str, spec: dict) -> bool:
    """The question names two of the task's labels, or a phrase its manifest lists in `asked_by` ("sentiment")."""
    q = question.lower()
    if sum(str(label).lower() in q for label in spec.get("labels", [])) >= 2:
        return True
    return any(re.search(rf"(?<![\w-]){re.escape(str(cue).lower())}(?![\w-])", q) for cue in spec.get("asked_by", []))


def label_answer(text: str, question: str, domain: Domain) -> str | None:
    """The answer's leading label when the question asks for one about text it carries (a pasted tweet or clause):
    Yes/No to a polar question, or one of a task's labels when the question names at least two of them or one of
    the task's `asked_by` phrases. Such a label is a verdict on the user's own text, not a claim from the sources,
    so the guard does not judge it."""
    first = re.match(r"\s*([A-Za-z][\w-]*)", text)
    if not first or not carries_text(question):
        return None
    word = first.group(1).lower()
    for spec in domain.tasks.values():
        if word not in (str(label).lower() for label in spec.get("labels", [])):
            continue
        if word in ("yes", "no"):
            if _POLAR.match(question):
                return first.group(1)
        elif _asks_for(question, spec):
            return first.group(1)
    return None


def grounded(draft: str, passages: Sequence[Passage], question: str, domain: Domain,
             subject: Sequence[str] = ()) -> GuardResult:
    """The guard on a draft answer; a leading label the question asked for is kept ahead of the checked rest.
    `subject`: the question's rare names (`Retriever.subject_terms`), which a claim about them must find."""
    label = label_answer(draft, question, domain)
    if label is None:
        return guard(draft, passages, question=question, relevant=bool(passages), subject=subject)
    rest = draft.strip()[len(label):].lstrip(" .,:;-")
    if not rest:
        return GuardResult(label, "supported", (), ())
    checked = guard(rest, passages, question=question, relevant=bool(passages), subject=subject)
    if checked.verdict in ("supported", "trimmed"):
        return GuardResult(f"{label}. {checked.text}", checked.verdict, checked.cited, checked.dropped)
    return GuardResult(label, "trimmed", (), (rest,))


class Answerer:
    def __init__(self, settings: Settings, discovery: Discovery, retriever: Retriever, runtime: Runtime | None = None,
                 router: Router | None = None):
        self.settings = settings
        self.retriever = retriever
        self._runtime = runtime
        self._runtime_lock = threading.Lock()
        # What is served, swapped whole by live reload (bot/reload.py): an answer takes one snapshot and finishes
        # on it, so it never routes on one set of domains and answers from another.
        self._serving: tuple[Discovery, Router | None] = (discovery, router)
        self._router_lock = threading.RLock()  # one router build at a time: first use, reroute refits, reloads
        self._adapter_state: dict[str, tuple[tuple[str, float], str | None]] = {}
        self._adapter_lock = threading.Lock()
        self._extra_router_examples: dict[str, list[str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Answerer:
        """One way to build it for the CLI, Slack, the eval and retrain: the model loads on the first answer, so
        routing, listing or a retrain that stops at its cheap checks never pays for it."""
        discovery = discover(settings.domains_dir, settings.domain_allowlist)
        for folder, reason in discovery.errors.items():
            log.error("domain %s not loaded: %s", folder, reason)
        answerer = cls(settings, discovery, Retriever(settings))
        answerer._extra_router_examples = _stored_router_examples(settings)
        return answerer

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            with self._runtime_lock:
                if self._runtime is None:
                    from bot.llm.backends import (
                        make_runtime,  # embedded llama.cpp or an OpenAI-compatible server
                    )

                    self._runtime = make_runtime(self.settings)
        return self._runtime

    # -------- what is served: the domains and their router

    @property
    def discovery(self) -> Discovery:
        return self._serving[0]

    @property
    def router(self) -> Router:
        return self._snapshot()[1]

    def _snapshot(self) -> tuple[Discovery, Router]:
        """The domains and the router fitted on them, read together (the router is fitted on first use)."""
        while True:
            discovery, router = self._serving
            if router is not None:
                return discovery, router
            with self._router_lock:
                if self._serving[1] is None:
                    self._serving = (self._serving[0], self._new_router(self._serving[0]))

    def _new_router(self, discovery: Discovery) -> Router:
        embedder = self.retriever.embedder
        return Router(discovery.domains, embedder.encode, cache_dir=self.settings.indexes_dir,
                      extra_examples=self._extra_router_examples, encoder_key=embedder.fingerprint())

    def refit_router(self, extra_examples: dict[str, list[str]], background: bool = False) -> Router | None:
        """Rebuild the router with extra examples (reroute feedback). In the background, the old router keeps
        answering until the new one is fitted (a second or two), then they swap."""
        self._extra_router_examples = dict(extra_examples)

        def build() -> Router:
            with self._router_lock:  # a reload meanwhile would fit on domains this swap then overwrites
                discovery = self._serving[0]
                router = self._new_router(discovery)
                self._serving = (discovery, router)
                return router

        if background:
            threading.Thread(target=build, name="router-refit", daemon=True).start()
            return None
        return build()

    def serve_domains(self, discovery: Discovery, *, refit_router: bool) -> None:
        """Serve another set of domains (live reload) without a restart. The router is refitted first when the set
        or its descriptions and examples changed, then both swap in one step; answers already running finish on
        the snapshot they took."""
        with self._router_lock:
            router = self._serving[1]
            if refit_router and router is not None:  # never fitted yet: the first answer fits it on the new set
                router = self._new_router(discovery)
            self._serving = (discovery, router)

    def domain(self, name: str) -> Domain:
        return self.discovery.get(name)  # UnknownDomain is a UserFacingError naming the known domains

    def route(self, question: str, domain: str | None = None) -> RouteResult:
        return _route_on(*self._snapshot(), question, domain)

    def route_follow_up(self, question: str, thread_domain: str) -> RouteResult:
        """A follow-up keeps its thread's domain unless it names one or the router clearly prefers another
        (the router only picks a domain past its fitted threshold and margin): then it switches, and says so."""
        auto = self.router.route(question)
        if auto.method == "explicit":
            return auto
        lead = auto.scores.get(auto.domain, 0.0) - auto.scores.get(thread_domain, 0.0) if auto.domain else 0.0
        if auto.domain and auto.domain != thread_domain and lead >= FOLLOW_UP_LEAD:
            return replace(auto, method="switched")
        return replace(auto, domain=thread_domain, method="thread")

    # -------- adapters (hot reload: the pointer is checked on every request)

    def _adapter_for(self, domain: Domain, requested: str | None, notes: list[str]) -> str | None:
        """Return the runtime key of the adapter to use, or None for the base model."""
        if requested == "base":
            return None
        with self._adapter_lock:
            if requested:
                version = adapter_store.AdapterVersion(requested, domain.adapters_dir / requested)
                if not version.gguf.is_file():
                    raise UserFacingError(f"{domain.name} has no adapter {requested!r}")
            else:
                stamp = adapter_store.pointer_stamp(domain.adapters_dir)
                cached = self._adapter_state.get(domain.name)
                if cached and cached[0] == stamp:
                    return cached[1]
                version = adapter_store.current(domain.adapters_dir)
                if version is None:
                    self._adapter_state[domain.name] = (stamp, None)
                    return None
            key = f"{domain.name}:{version.version}"
            try:
                self.runtime.ensure_adapter(key, version.gguf)
            except AdapterMismatch as exc:
                log.warning("refusing adapter for %s: %s", domain.name, exc)
                notes.append(f"Adapter {version.version} was refused ({exc}); answered with the base model.")
                key = None
            if not requested:
                self._adapter_state[domain.name] = (stamp, key)
            return key

    # -------- answering

    def answer(self, question: Question | str, *, on_token: Callable[[str], None] | None = None) -> Answer:
        """Route, check policy, retrieve, generate (streaming pieces to `on_token`), guard. A plain string is a
        question with nothing else known about it."""
        q = question if isinstance(question, Question) else Question(question)
        t0 = time.perf_counter()
        discovery, router = self._snapshot()  # a live reload meanwhile does not change this answer's domains
        route = q.route or _route_on(discovery, router, policy.clean_question(q.text), q.domain)
        if route.domain is None:
            return Answer(policy.no_domain_message(list(discovery.domains.values())), None, route, kind="abstain",
                          timings={"total_s": time.perf_counter() - t0})
        dom = discovery.get(route.domain)
        verdict = policy.check(dom, route.question, q.place.channel, q.place.channel_name, q.place.is_dm)
        if verdict.kind != "ok":
            kind = {"refuse": "refused"}.get(verdict.kind, verdict.kind)
            return Answer(verdict.message, dom.name, route, kind=kind, disclaimer=dom.disclaimer,
                          timings={"total_s": time.perf_counter() - t0})

        notes: list[str] = []
        if route.method == "switched":
            notes.append(f"This reads as a {dom.title} question, so I answered from {dom.title} rather than the "
                         f"thread's earlier topic. Start with `name:` (e.g. `{dom.name}:`) to choose a domain.")
        t_ret = time.perf_counter()
        found = list(q.passages) if q.passages is not None else self.retriever.search(dom, route.question)
        found = merge_ranked(found, q.extra_passages)
        retrieval_s = time.perf_counter() - t_ret
        key = self._adapter_for(dom, q.adapter, notes)
        built = build_messages(dom.system_prompt, route.question, found, q.history,
                               budget=self.settings.prompt_budget, count=self.runtime.count_tokens)
        first_at: list[float] = []

        def relay(piece: str) -> None:
            if not first_at:
                first_at.append(time.perf_counter())
            if on_token:
                on_token(piece)

        gen = self.runtime.generate(built.messages, adapter=key, max_tokens=q.max_tokens or self.settings.max_tokens,
                                    on_token=relay)
        draft = gen.text.strip()
        t_guard = time.perf_counter()
        if q.passages is not None and not q.passages and not q.extra_passages:
            # The caller supplied no sources on purpose (text pasted to classify): nothing to check against.
            checked = GuardResult(draft or "(The model returned no text. Please rephrase the question.)", "unchecked", (), ())
        else:
            subject = self.retriever.subject_terms(dom, route.question) if q.passages is None else ()
            checked = grounded(draft, built.passages, route.question, dom, subject)
        guard_s = time.perf_counter() - t_guard
        return Answer(
            text=checked.text,
            domain=dom.name,
            route=route,
            citations=citations_for(checked.text, built.passages, checked.cited),
            disclaimer=dom.disclaimer,
            adapter=key.split(":", 1)[1] if key else "base",
            timings={
                "retrieval_s": retrieval_s,
                "first_token_s": (first_at[0] - t0) if first_at else 0.0,
                "generation_s": gen.total_s,
                "guard_s": guard_s,
                "total_s": time.perf_counter() - t0,
            },
            tokens={"prompt": gen.prompt_tokens, "completion": gen.completion_tokens},
            passages=built.passages,
            notes=notes,
            guard={k: v for k, v in checked.to_dict().items() if k != "text"},
            draft=draft,
        )

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()


def _route_on(discovery: Discovery, router: Router, question: str, domain: str | None) -> RouteResult:
    if domain is not None:
        discovery.get(domain)  # UnknownDomain names the known domains
    return router.route(question, explicit=domain)


def warm_indexes(answerer: Answerer) -> None:
    """Fit the router and build or load every index, so the first question isn't the slow one."""
    answerer.router  # noqa: B018 - property with side effects
    for d in answerer.discovery.domains.values():
        answerer.retriever.load(d)


def warm_up(answerer: Answerer) -> None:
    """warm_indexes, plus the model's first decode before the first user waits."""
    warm_indexes(answerer)
    answerer.runtime.generate([{"role": "user", "content": "hi"}], max_tokens=1)
