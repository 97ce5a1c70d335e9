"""Is the candidate really better than the live adapter on the same eval items, or just lucky?

Both adapters answer the same items, so the comparison is paired: only the discordant items (one right, the
other wrong) carry evidence. The decision is the exact one-sided McNemar test (a binomial test on the
discordant items, `scipy.stats.binomtest`); the interval reported beside it is a seeded paired-bootstrap
percentile CI of the difference in correctness. On 40 items a 3-item gain is noise; on 40 items 10 wins and
1 loss is not.

Losses are judged the same way, from the other side (`drop_p`): a measure that fell by more than the margin counts
as lost unless chance explains the drop for its size. On 30 items one answer that flips is a 3.3-point drop that
any retrained model makes somewhere; a flat 1-point margin would refuse every candidate for it. The test is a
paired randomization (each item's two outcomes swapped at random), so it works for any measure: a rate, a mean
token-F1, or a macro-F1 where one flip in a small class moves the score a lot. A loss needs less evidence than a
gain (`LOSS_ALPHA` 0.2 against `ALPHA` 0.05): letting a regression through costs users more than a missed promotion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import product

import numpy as np
from scipy.stats import binomtest

ALPHA = 0.05
LOSS_ALPHA = 0.2
BOOTSTRAP = 2000
EXACT_UPTO = 14  # differing items up to which every swap is enumerated (2**14 metric pairs); beyond, sampled
ROUNDS = 4000


class PairingError(ValueError):
    """The two evaluations did not answer the same items."""


@dataclass(frozen=True)
class Paired:
    n: int
    current: float  # correctness of each on the n shared items
    candidate: float
    wins: int  # candidate right, current wrong
    losses: int  # candidate wrong, current right
    p_value: float  # exact one-sided McNemar: P(>= wins of the discordant items | no real difference)
    ci_low: float  # paired bootstrap CI of candidate - current
    ci_high: float
    confidence: float
    alpha: float

    @property
    def diff(self) -> float:
        return self.candidate - self.current

    @property
    def significant(self) -> bool:
        """Better beyond chance: McNemar below alpha and the whole interval above zero."""
        return self.p_value < self.alpha and self.ci_low > 0

    def to_dict(self) -> dict:
        return {**asdict(self), "diff": round(self.diff, 4), "significant": self.significant}

    def describe(self) -> str:
        return (
            f"{self.current:.3f} -> {self.candidate:.3f} on {self.n} paired items "
            f"(+{self.wins}/-{self.losses}, diff {self.diff:+.3f}, {self.confidence:.0%} CI "
            f"[{self.ci_low:+.3f}, {self.ci_high:+.3f}], McNemar p={self.p_value:.3g})"
        )


def mcnemar_p(wins: int, losses: int) -> float:
    """One-sided exact McNemar p-value that the candidate is better (1.0 with no discordant item)."""
    if wins < 0 or losses < 0:
        raise ValueError(f"counts must be >= 0, got wins={wins} losses={losses}")
    if wins + losses == 0:
        return 1.0
    return float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)


def bootstrap_ci(current: Sequence[bool], candidate: Sequence[bool], *, confidence: float = 0.95,
                 rounds: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """Percentile CI of mean(candidate) - mean(current), resampling items (pairs stay together)."""
    d = np.asarray(candidate, dtype=float) - np.asarray(current, dtype=float)
    if d.size == 0:
        raise PairingError("no paired items to compare")
    idx = np.random.default_rng(seed).integers(0, d.size, size=(rounds, d.size))
    means = d[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def _check_paired(current: Sequence, candidate: Sequence) -> None:
    if len(current) != len(candidate):
        raise PairingError(f"{len(current)} current vs {len(candidate)} candidate items: not paired")
    if not current:
        raise PairingError("no paired items to compare")


def compare(current: Sequence[bool], candidate: Sequence[bool], *, alpha: float = ALPHA,
            confidence: float = 0.95, seed: int = 0) -> Paired:  # fmt: skip
    """The paired comparison of two equal-length correctness vectors (item i is the same item in both)."""
    _check_paired(current, candidate)
    wins = sum(1 for a, b in zip(current, candidate, strict=True) if b and not a)
    losses = sum(1 for a, b in zip(current, candidate, strict=True) if a and not b)
    low, high = bootstrap_ci(current, candidate, confidence=confidence, seed=seed)
    n = len(current)
    return Paired(n, sum(map(bool, current)) / n, sum(map(bool, candidate)) / n, wins, losses,
                  mcnemar_p(wins, losses), round(low, 4), round(high, 4), confidence, alpha)  # fmt: skip


def item_correct(item: Mapping) -> bool:
    """One eval item's right/wrong: open_qa's judged `correct`, else the parsed label or exact answer."""
    if "correct" in item:
        return bool(item["correct"])
    if "pred" in item:
        return item["pred"] == item["gold"]
    from training.metrics import exact_match, strip_derivation

    return bool(exact_match(strip_derivation(item["output"]), item["gold"]))


def pair_items(current: Sequence[Mapping], candidate: Sequence[Mapping], task: str) -> list[tuple[Mapping, Mapping]]:
    """Two EvalResults' items of `task` as (current, candidate) pairs by id, in id order; a missing or extra item
    is an error, never a silent drop."""
    cur = {it["id"]: it for it in current if it["task"] == task}
    cand = {it["id"]: it for it in candidate if it["task"] == task}
    if set(cur) != set(cand):
        only = sorted(set(cur) ^ set(cand))[:3]
        raise PairingError(f"{task}: the two evaluations answered different items (e.g. {', '.join(only)})")
    return [(cur[i], cand[i]) for i in sorted(cur)]


def compare_items(current: Sequence[Mapping], candidate: Sequence[Mapping], task: str, **kw) -> Paired:
    """The paired comparison of `task`'s items (`pair_items`), each judged right or wrong by `item_correct`."""
    pairs = pair_items(current, candidate, task)
    return compare([item_correct(a) for a, _ in pairs], [item_correct(b) for _, b in pairs], **kw)


def drop_p(current: Sequence, candidate: Sequence, metric: Callable[[Sequence], float], *, rounds: int = ROUNDS,
           seed: int = 0) -> float:  # fmt: skip
    """One-sided paired randomization p-value of the candidate's drop: the share of random swaps of each item's
    two outcomes (`current[i]` <-> `candidate[i]`) that drop `metric` at least as much as observed. Exact over every
    swap when at most `EXACT_UPTO` items differ, else `rounds` seeded samples (the observed split counted once).
    1.0 when the candidate is not lower."""
    _check_paired(current, candidate)
    observed = metric(current) - metric(candidate)
    if observed <= 0:
        return 1.0
    differ = [i for i, (a, b) in enumerate(zip(current, candidate, strict=True)) if a != b]
    cur, cand = list(current), list(candidate)

    def drop(swap: Sequence[bool]) -> float:
        a, b = cur[:], cand[:]
        for i, s in zip(differ, swap, strict=True):
            if s:
                a[i], b[i] = cand[i], cur[i]
        return metric(a) - metric(b)

    tol = 1e-12 * max(1.0, abs(observed))
    if len(differ) <= EXACT_UPTO:
        drops = [drop(s) for s in product((False, True), repeat=len(differ))]
        return sum(d >= observed - tol for d in drops) / len(drops)
    rng = np.random.default_rng(seed)
    hits = sum(drop(rng.random(len(differ)) < 0.5) >= observed - tol for _ in range(rounds))
    return (hits + 1) / (rounds + 1)
