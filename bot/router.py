"""Which domain answers a question: explicit choice > meaning (embeddings) > abstain.

The scoring and threshold fitting are pure functions over vectors; `Router` wires them to an embedder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bot.domains import Domain

Encode = Callable[[list[str]], np.ndarray]

# Office chatter the bot should not claim; the negatives when fitting the abstention threshold.
CHITCHAT = (
    "book the meeting room for 3pm",
    "can someone book the big meeting room tomorrow",
    "what's for lunch today?",
    "where is the coffee machine",
    "who is coming to the team offsite?",
    "the printer on floor 2 is jammed again",
    "how do I reset my laptop password?",
    "my VPN keeps disconnecting",
    "happy birthday Sarah!",
    "is the office open on Friday?",
    "can you share the slides from the all-hands?",
    "when is the holiday party",
    "thanks everyone, great work this week",
    "good morning team",
    "what time is standup",
    "I'm working from home today",
    "can I get access to the design Figma file",
    "where do I submit my parking pass request",
    "the wifi is slow in the kitchen",
    "who has the keys to the storage room",
    "let's grab coffee at 4",
    "how do I add a new calendar invite",
    "lol that's hilarious",
    "can you order more whiteboard markers",
    "what's the guest wifi password",
    "is anyone using the projector",
    "please water the plants while I'm away",
    "does anyone want to play ping pong",
    "the build is broken on main",
    "can you review my pull request",
)

_PREFIX = r"^\s*(?:/|@)?({names})\s*(?::|\s-\s)\s*|^\s*/({names})\s+"


@dataclass(frozen=True)
class RouteResult:
    domain: str | None
    scores: dict[str, float]
    method: str  # explicit | router | thread | button | none
    question: str
    threshold: float = 0.0
    margin: float = 0.0

    def to_dict(self) -> dict:
        return {
            "domain": self.domain,
            "method": self.method,
            "scores": self.scores,
            "threshold": round(self.threshold, 4),
            "margin": round(self.margin, 4),
        }


def explicit_prefix(question: str, names: Sequence[str]) -> tuple[str | None, str]:
    """`legal: ...`, `/legal ...` or `@legal: ...` picks a domain explicitly; returns (domain, rest)."""
    if not names:
        return None, question
    alternation = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    m = re.match(_PREFIX.format(names=alternation), question, flags=re.IGNORECASE)
    if not m:
        return None, question
    name = (m.group(1) or m.group(2)).lower()
    return name, question[m.end() :].strip()


def domain_scores(qvec: np.ndarray, anchors: Mapping[str, np.ndarray]) -> dict[str, float]:
    """A domain's score: the mean of its best two anchor similarities (description + examples)."""
    out = {}
    for name, mat in anchors.items():
        sims = mat @ qvec
        top = np.sort(sims)[-2:] if len(sims) > 1 else sims
        out[name] = float(np.mean(top))
    return out


def decide(scores: Mapping[str, float], threshold: float, min_margin: float) -> tuple[str | None, float]:
    if not scores:
        return None, 0.0
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    best, top = ranked[0]
    margin = top - ranked[1][1] if len(ranked) > 1 else top
    if top < threshold or margin < min_margin:
        return None, margin
    return best, margin


def fit_threshold(positive: Sequence[float], negative: Sequence[float]) -> float:
    """The cut that maximises balanced accuracy between in-domain and off-topic top scores."""
    pos, neg = np.asarray(positive), np.asarray(negative)
    candidates = np.unique(np.concatenate([pos, neg]))
    best_t, best_acc = 0.3, -1.0
    for t in candidates:
        acc = ((pos >= t).mean() + (neg < t).mean()) / 2
        if acc > best_acc:
            best_t, best_acc = float(t), acc
    below = neg[neg < best_t]
    # Put the cut halfway into the gap below it, so near-misses on both sides are treated alike.
    return float((best_t + below.max()) / 2) if below.size else best_t


@dataclass
class RouterFit:
    threshold: float
    min_margin: float
    balanced_accuracy: float
    n_positive: int
    n_negative: int
    extra_examples: dict[str, int] = field(default_factory=dict)


def _anchor_texts(domain: Domain, extra: Sequence[str]) -> list[str]:
    return [domain.description, *domain.examples, *extra]


def _eval_questions(domain: Domain, limit: int = 60) -> list[str]:
    """In-domain questions from eval.jsonl (with their pasted text, as a user would ask)."""
    if not domain.eval_file.is_file():
        return []
    out = []
    for line in domain.eval_file.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        q = str(row.get("question", ""))
        if row.get("context") and len(q) < 200:
            q = f"{q}\n\n{str(row['context'])[:300]}"
        if q.strip():
            out.append(q)
    step = max(1, len(out) // limit)
    return out[::step][:limit]


class Router:
    def __init__(self, domains: Mapping[str, Domain], encode: Encode, cache_dir: Path | None = None,
                 extra_examples: Mapping[str, Sequence[str]] | None = None, encoder_key: str = ""):
        """`encoder_key` names the embedding weights behind `encode`; given one, the anchors' vectors are cached
        in `cache_dir` beside the fit, so a new process does not re-embed them."""
        self.domains = dict(domains)
        self.encode = encode
        self.encoder_key = encoder_key
        self.extra = {k: list(v) for k, v in (extra_examples or {}).items() if k in self.domains}
        self.anchors = self._load_or_encode_anchors(cache_dir)
        self.fit = self._load_or_fit(cache_dir)

    def _load_or_encode_anchors(self, cache_dir: Path | None) -> dict[str, np.ndarray]:
        texts = {name: _anchor_texts(d, self.extra.get(name, ())) for name, d in self.domains.items()}
        key = hashlib.sha256(json.dumps([self.encoder_key, sorted(texts.items())]).encode()).hexdigest()[:16]
        path = cache_dir / "router_anchors.npz" if cache_dir and self.encoder_key else None
        if path and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as saved:
                    names = [str(n) for n in saved["names"]]
                    if str(saved["key"]) == key and set(names) == set(texts):
                        return {n: saved[f"a{i}"] for i, n in enumerate(names)}
            except (OSError, ValueError, KeyError):
                pass  # unreadable or from another version: encode again
        anchors = {name: self.encode(t) for name, t in texts.items()}
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".router_anchors.{os.getpid()}.npz")
            learned = sum(len(v) for v in self.extra.values())  # reroute examples: not the manifests' alone
            np.savez(tmp, key=np.array(key), names=np.array(list(anchors)), learned=np.array(learned),
                     **{f"a{i}": v for i, v in enumerate(anchors.values())})
            os.replace(tmp, path)  # whole or not at all for a process reading it meanwhile
        return anchors

    # -------- fitting

    def _fingerprint(self) -> str:
        h = hashlib.sha256(self.encoder_key.encode())
        for name, d in sorted(self.domains.items()):
            h.update(json.dumps([name, _anchor_texts(d, self.extra.get(name, ()))]).encode())
            h.update(d.eval_file.read_bytes() if d.eval_file.is_file() else b"")
        h.update("\n".join(CHITCHAT).encode())
        return h.hexdigest()[:16]

    def _load_or_fit(self, cache_dir: Path | None) -> RouterFit:
        key = self._fingerprint()
        path = cache_dir / "router_fit.json" if cache_dir else None
        if path and path.is_file():
            try:
                saved = json.loads(path.read_text())
                if saved.get("key") == key:
                    return RouterFit(**saved["fit"])
            except (ValueError, TypeError, KeyError):
                pass
        fit = self._fit()
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"key": key, "fit": fit.__dict__}, indent=2))
        return fit

    def _fit(self) -> RouterFit:
        if not self.domains:
            return RouterFit(1.0, 0.0, 0.0, 0, 0)
        positives: list[float] = []
        for name, d in self.domains.items():
            qs = _eval_questions(d) + list(self.extra.get(name, ()))
            for vec in self.encode(qs) if qs else []:
                scores = domain_scores(vec, self.anchors)
                if max(scores, key=scores.get) == name:
                    positives.append(scores[name])
            # leave-one-out on the examples, so an example doesn't match itself
            ex = list(d.examples)
            vecs = self.anchors[name][1 : 1 + len(ex)]
            for i, vec in enumerate(vecs):
                anchors = dict(self.anchors)
                anchors[name] = np.delete(self.anchors[name], 1 + i, axis=0)
                scores = domain_scores(vec, anchors)
                if max(scores, key=scores.get) == name:
                    positives.append(scores[name])
        negatives = [max(domain_scores(v, self.anchors).values()) for v in self.encode(list(CHITCHAT))]
        threshold = fit_threshold(positives, negatives)
        pos, neg = np.asarray(positives), np.asarray(negatives)
        acc = float(((pos >= threshold).mean() + (neg < threshold).mean()) / 2) if len(pos) else 0.0
        return RouterFit(threshold, 0.02, acc, len(positives), len(negatives),
                         {k: len(v) for k, v in self.extra.items()})

    # -------- routing

    def route(self, question: str, explicit: str | None = None) -> RouteResult:
        name, rest = explicit_prefix(question, list(self.domains))
        if explicit:
            name, rest = explicit, question if name is None else rest
        if name is not None:
            return RouteResult(name, {}, "explicit", rest or question, self.fit.threshold)
        if not self.domains:
            return RouteResult(None, {}, "none", question, self.fit.threshold)
        scores = domain_scores(self.encode([question])[0], self.anchors)
        chosen, margin = decide(scores, self.fit.threshold, self.fit.min_margin)
        rounded = {k: round(v, 4) for k, v in sorted(scores.items(), key=lambda kv: -kv[1])}
        return RouteResult(chosen, rounded, "router" if chosen else "none", question, self.fit.threshold, margin)
