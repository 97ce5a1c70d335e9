"""The answering path shared by the CLI and Slack: route → policy → retrieve → prompt → generate → Answer.

Knows nothing of Slack. The LLM runtime and the retriever are injected, so tests and the CLI share it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from bot import adapters as adapter_store
from bot import policy
from bot.config import Settings
from bot.domains import Discovery, Domain, discover
from bot.errors import UserFacingError
from bot.llm.llama import AdapterMismatch, Runtime
from bot.prompt import Passage, Turn, build_messages
from bot.retrieval.index import Retriever
from bot.router import Router, RouteResult

log = logging.getLogger(__name__)

_CITE = re.compile(r"\[(\d{1,2})\]")


@dataclass(frozen=True)
class Citation:
    n: int
    chunk_id: str
    title: str
    doc_id: str
    url: str | None = None
    score: float = 0.0
    cited: bool = False  # the answer text refers to [n]


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
        }


def _stored_router_examples(settings: Settings) -> dict[str, list[str]]:
    """Reroute picks logged by earlier runs; the router learns from them (an unreadable store is not fatal)."""
    if not settings.db_path.exists():
        return {}
    try:
        from bot.store.store import Store

        with Store.from_settings(settings) as store:
            return store.router_examples()
    except Exception:  # noqa: BLE001 - routing still works from the manifests
        log.warning("could not read router examples from %s", settings.db_path, exc_info=True)
        return {}


def citations_for(text: str, passages: Sequence[Passage]) -> list[Citation]:
    cited = {int(m) for m in _CITE.findall(text)}
    return [
        Citation(i, p.chunk_id, p.title, p.doc_id, p.metadata.get("url"), p.score, i in cited)
        for i, p in enumerate(passages, 1)
    ]


class Answerer:
    def __init__(self, settings: Settings, discovery: Discovery, retriever: Retriever, runtime: Runtime,
                 router: Router | None = None):
        self.settings = settings
        self.discovery = discovery
        self.retriever = retriever
        self.runtime = runtime
        self._router = router
        self._adapter_state: dict[str, tuple[tuple[str, float], str | None]] = {}
        self._adapter_lock = threading.Lock()
        self._extra_router_examples: dict[str, list[str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Answerer:
        discovery = discover(settings.domains_dir, settings.domain_allowlist)
        for folder, reason in discovery.errors.items():
            log.error("domain %s not loaded: %s", folder, reason)
        from bot.llm.backends import make_runtime  # embedded llama.cpp or an OpenAI-compatible server

        answerer = cls(settings, discovery, Retriever(settings), make_runtime(settings))
        answerer._extra_router_examples = _stored_router_examples(settings)
        return answerer

    # -------- routing

    @property
    def router(self) -> Router:
        if self._router is None:
            self._router = Router(self.discovery.domains, self.retriever.embedder.encode,
                                  cache_dir=self.settings.indexes_dir, extra_examples=self._extra_router_examples)
        return self._router

    def refit_router(self, extra_examples: dict[str, list[str]], background: bool = False) -> Router | None:
        """Rebuild the router with extra examples (reroute feedback). In the background, the old router keeps
        answering until the new one is fitted (a second or two), then they swap."""
        self._extra_router_examples = dict(extra_examples)

        def build() -> Router:
            router = Router(self.discovery.domains, self.retriever.embedder.encode,
                            cache_dir=self.settings.indexes_dir, extra_examples=self._extra_router_examples)
            self._router = router
            return router

        if background:
            threading.Thread(target=build, name="router-refit", daemon=True).start()
            return None
        return build()

    def domain(self, name: str) -> Domain:
        return self.discovery.get(name)  # UnknownDomain is a UserFacingError naming the known domains

    def route(self, question: str, domain: str | None = None) -> RouteResult:
        if domain is not None:
            self.domain(domain)
        return self.router.route(question, explicit=domain)

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

    def answer(
        self,
        question: str,
        *,
        domain: str | None = None,
        history: Sequence[Turn] = (),
        channel: str | None = None,
        channel_name: str | None = None,
        is_dm: bool = False,
        on_token: Callable[[str], None] | None = None,
        adapter: str | None = None,
        passages: Sequence[Passage] | None = None,
        max_tokens: int | None = None,
        method: str | None = None,
        route: RouteResult | None = None,
    ) -> Answer:
        """`route`: a routing decision the caller already made (Slack shows the domain before answering)."""
        t0 = time.perf_counter()
        question = policy.clean_question(question)
        route = route or self.route(question, domain)
        if method and route.domain:
            route = RouteResult(route.domain, route.scores, method, route.question, route.threshold, route.margin)
        if route.domain is None:
            return Answer(policy.no_domain_message(list(self.discovery.domains.values())), None, route, kind="abstain",
                          timings={"total_s": time.perf_counter() - t0})
        dom = self.domain(route.domain)
        verdict = policy.check(dom, route.question, channel, channel_name, is_dm)
        if verdict.kind != "ok":
            kind = {"refuse": "refused"}.get(verdict.kind, verdict.kind)
            return Answer(verdict.message, dom.name, route, kind=kind, disclaimer=dom.disclaimer,
                          timings={"total_s": time.perf_counter() - t0})

        notes: list[str] = []
        t_ret = time.perf_counter()
        found = list(passages) if passages is not None else self.retriever.search(dom, route.question)
        retrieval_s = time.perf_counter() - t_ret
        key = self._adapter_for(dom, adapter, notes)
        built = build_messages(dom.system_prompt, route.question, found, history,
                               budget=self.settings.prompt_budget, count=self.runtime.count_tokens)
        first_at: list[float] = []

        def relay(piece: str) -> None:
            if not first_at:
                first_at.append(time.perf_counter())
            if on_token:
                on_token(piece)

        gen = self.runtime.generate(built.messages, adapter=key, max_tokens=max_tokens or self.settings.max_tokens,
                                    on_token=relay)
        text = gen.text.strip() or "(The model returned no text. Please rephrase the question.)"
        return Answer(
            text=text,
            domain=dom.name,
            route=route,
            citations=citations_for(text, built.passages),
            disclaimer=dom.disclaimer,
            adapter=key.split(":", 1)[1] if key else "base",
            timings={
                "retrieval_s": retrieval_s,
                "first_token_s": (first_at[0] - t0) if first_at else 0.0,
                "generation_s": gen.total_s,
                "total_s": time.perf_counter() - t0,
            },
            tokens={"prompt": gen.prompt_tokens, "completion": gen.completion_tokens},
            passages=built.passages,
            notes=notes,
        )

    def close(self) -> None:
        self.runtime.close()


def render_text(answer: Answer, *, with_sources: bool = True) -> str:
    """Plain-text rendering for the terminal."""
    return "\n\n".join([answer.text, *render_trailer(answer, with_sources=with_sources)])


def render_trailer(answer: Answer, *, with_sources: bool = True) -> list[str]:
    """What follows the answer text (sources, notes, the route line): all a streamed answer still has to print."""
    parts = []
    if with_sources and answer.citations:
        parts.append("Sources:\n" + "\n".join(f"  [{c.n}] {c.title}  ({c.chunk_id})" for c in answer.citations))
    if answer.disclaimer and answer.kind == "answer":
        parts.append(f"Note: {answer.disclaimer}")
    parts.extend(f"Note: {n}" for n in answer.notes)
    if answer.domain:
        t = answer.timings
        parts.append(
            f"— {answer.domain} · adapter {answer.adapter} · {answer.route.method}"
            + (f" · first token {t['first_token_s']:.2f}s · total {t['total_s']:.2f}s" if t.get("first_token_s") else "")
        )
    return parts


def warm_indexes(answerer: Answerer) -> None:
    """Fit the router and build or load every index, so the first question isn't the slow one."""
    answerer.router  # noqa: B018 - property with side effects
    for d in answerer.discovery.domains.values():
        answerer.retriever.load(d)


def warm_up(answerer: Answerer) -> None:
    """warm_indexes, plus the model's first decode before the first user waits."""
    warm_indexes(answerer)
    answerer.runtime.generate([{"role": "user", "content": "hi"}], max_tokens=1)
