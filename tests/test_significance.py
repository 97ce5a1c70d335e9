"""The paired significance test and retrain's job gate, on hand-computed numbers (no model)."""

from __future__ import annotations

from math import comb

import pytest

from training import significance as sig
from training.evaluate import EvalResult, gate, job_gate


def binom_tail(wins: int, losses: int) -> float:
    """P(X >= wins), X ~ Binomial(wins + losses, 1/2), summed by hand: the oracle for the exact McNemar."""
    n = wins + losses
    return sum(comb(n, k) for k in range(wins, n + 1)) / 2**n


@pytest.mark.parametrize(("wins", "losses"), [(10, 1), (3, 0), (5, 5), (0, 4), (12, 3)])
def test_mcnemar_is_the_exact_one_sided_binomial(wins: int, losses: int) -> None:
    assert sig.mcnemar_p(wins, losses) == pytest.approx(binom_tail(wins, losses), rel=1e-9)


def test_no_discordant_item_is_no_evidence() -> None:
    assert sig.mcnemar_p(0, 0) == 1.0
    with pytest.raises(ValueError, match="counts must be >= 0"):
        sig.mcnemar_p(-1, 2)


def test_a_few_wins_on_40_items_is_not_significant_but_many_are() -> None:
    current = [True] * 10 + [False] * 30
    lucky = current[:]
    for i in (10, 11, 12):  # 3 more right, none lost: p = 1/8
        lucky[i] = True
    small = sig.compare(current, lucky)
    assert (small.wins, small.losses, small.n) == (3, 0, 40)
    assert small.diff == pytest.approx(3 / 40)
    assert small.p_value == pytest.approx(0.125) and not small.significant

    better = current[:]
    for i in range(10, 22):  # 12 more right, 1 lost
        better[i] = True
    better[0] = False
    big = sig.compare(current, better)
    assert (big.wins, big.losses) == (12, 1)
    assert big.p_value == pytest.approx(binom_tail(12, 1)) and big.p_value < 0.01
    assert 0 < big.ci_low <= big.diff <= big.ci_high  # the interval brackets the observed 11/40 gain
    assert big.significant
    assert "+12/-1" in big.describe() and "95% CI" in big.describe()


def test_identical_answers_give_a_zero_width_interval() -> None:
    same = [True, False, True, True]
    p = sig.compare(same, same)
    assert (p.ci_low, p.ci_high, p.diff, p.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not p.significant


def test_bootstrap_interval_is_seeded() -> None:
    a = [True, False] * 20
    b = [True, True] * 10 + [False, True] * 10
    assert sig.bootstrap_ci(a, b, seed=3) == sig.bootstrap_ci(a, b, seed=3)


def test_unpaired_inputs_are_refused() -> None:
    with pytest.raises(sig.PairingError, match="not paired"):
        sig.compare([True], [True, False])
    with pytest.raises(sig.PairingError, match="no paired items"):
        sig.compare([], [])
    cur = [{"id": "a", "task": "t", "correct": True}, {"id": "b", "task": "t", "correct": False}]
    cand = [{"id": "a", "task": "t", "correct": True}, {"id": "c", "task": "t", "correct": True}]
    with pytest.raises(sig.PairingError, match="different items"):
        sig.compare_items(cur, cand, "t")


def test_items_pair_by_id_not_by_order() -> None:
    cur = [{"id": "a", "task": "t", "correct": True}, {"id": "b", "task": "t", "correct": False}]
    cand = [{"id": "b", "task": "t", "correct": True}, {"id": "a", "task": "t", "correct": True}]
    p = sig.compare_items(cur, cand, "t")
    assert (p.wins, p.losses) == (1, 0)


def test_item_correct_reads_each_task_kind() -> None:
    assert sig.item_correct({"correct": True})
    assert sig.item_correct({"pred": "positive", "gold": "positive"})
    assert not sig.item_correct({"pred": None, "gold": "positive"})
    assert sig.item_correct({"output": "42", "gold": "42"})
    assert not sig.item_correct({"output": "41", "gold": "42"})


# ---- the job gate -----------------------------------------------------------------------------------------
def qa_result(adapter: str, right: list[bool], *, supported: float = 0.5, extra: dict | None = None) -> EvalResult:
    items = [{"id": f"q{i}", "task": "finance_qa", "correct": r} for i, r in enumerate(right)]
    score = sum(right) / len(right)
    tasks = {"finance_qa": {"kind": "open_qa", "n": len(right), "score": score, "correct": score, "supported": supported}}
    for name, (score_, preds) in (extra or {}).items():
        tasks[name] = {"kind": "classification", "n": len(preds), "score": score_}
        items += [{"id": f"{name}{i}", "task": name, "pred": p, "gold": "yes"} for i, p in enumerate(preds)]
    return EvalResult("finance", adapter, tasks, items=items)


LIVE = [True] * 10 + [False] * 30
GOOD = [True] * 24 + [False] * 16  # 14 wins, no loss


def test_job_gate_promotes_a_significant_gain_and_keeps_the_numbers() -> None:
    ok, reason, paired = job_gate(qa_result("v2", GOOD), qa_result("v1", LIVE), 0.01)
    assert ok, reason
    assert reason.startswith("significant gain on finance_qa")
    assert paired["finance_qa"]["wins"] == 14 and paired["finance_qa"]["losses"] == 0
    assert paired["finance_qa"]["p_value"] == pytest.approx(binom_tail(14, 0))
    assert paired["finance_qa"]["ci_low"] > 0


def test_job_gate_rejects_a_gain_too_small_for_the_sample() -> None:
    small = [True] * 13 + [False] * 27  # +3 of 40: better, but chance explains it (p = 0.125)
    ok, reason, paired = job_gate(qa_result("v2", small), qa_result("v1", LIVE), 0.01)
    assert not ok
    assert reason.startswith("finance_qa: no significant gain at alpha 0.05")
    assert paired["finance_qa"]["p_value"] == pytest.approx(0.125)


def test_job_gate_rejects_a_tie_and_a_loss() -> None:
    assert not job_gate(qa_result("v2", LIVE), qa_result("v1", LIVE), 0.01)[0]
    worse = [True] * 5 + [False] * 35
    ok, reason, _ = job_gate(qa_result("v2", worse), qa_result("v1", LIVE), 0.01)
    assert not ok and "finance_qa correctness fell" in reason


def test_job_gate_rejects_a_job_gain_that_costs_another_task() -> None:
    keep = {"tfns_sentiment": (0.8, ["yes"] * 8 + ["no"] * 2)}
    lose = {"tfns_sentiment": (0.5, ["yes"] * 5 + ["no"] * 5)}
    ok, reason, paired = job_gate(qa_result("v2", GOOD, extra=lose), qa_result("v1", LIVE, extra=keep), 0.05)
    assert not ok and reason.startswith("tfns_sentiment dropped 0.300")
    assert paired["finance_qa"]["significant"]  # the numbers are kept even when another task refuses
    assert job_gate(qa_result("v2", GOOD, extra=keep), qa_result("v1", LIVE, extra=keep), 0.05)[0]


def test_job_gate_rejects_lost_support_even_with_a_gain() -> None:
    ok, reason, _ = job_gate(qa_result("v2", GOOD, supported=0.2), qa_result("v1", LIVE, supported=0.6), 0.05)
    assert not ok and "supported rate fell" in reason


def test_job_gate_without_items_cannot_pair() -> None:
    bare = EvalResult("finance", "v2", {"finance_qa": {"kind": "open_qa", "n": 40, "score": 0.9, "correct": 0.9}})
    ok, reason, _ = job_gate(bare, qa_result("v1", LIVE), 0.01)
    assert not ok and reason.startswith("cannot compare the adapters item by item")


def test_without_the_job_every_task_is_the_yardstick() -> None:
    cur = EvalResult("finance", "v1", {"tfns": {"kind": "classification", "n": 30, "score": 0.3}},
                     items=[{"id": str(i), "task": "tfns", "pred": "yes" if i < 9 else "no", "gold": "yes"}
                            for i in range(30)])  # fmt: skip
    cand = EvalResult("finance", "v2", {"tfns": {"kind": "classification", "n": 30, "score": 0.9}},
                      items=[{"id": str(i), "task": "tfns", "pred": "yes" if i < 27 else "no", "gold": "yes"}
                             for i in range(30)])  # fmt: skip
    ok, reason, paired = job_gate(cand, cur, 0.01)
    assert ok and set(paired) == {"tfns"} and paired["tfns"]["wins"] == 18


# ---- losses judged for their size --------------------------------------------------------------------------
def rate(units) -> float:
    return sum(units) / len(units)


@pytest.mark.parametrize(("losses", "wins"), [(1, 0), (2, 0), (3, 0), (3, 1), (4, 1), (6, 2), (9, 4)])
def test_drop_p_of_a_rate_is_the_exact_sign_test_on_the_flipped_items(losses: int, wins: int) -> None:
    current = [True] * losses + [False] * wins + [True] * 10 + [False] * 10
    candidate = [False] * losses + [True] * wins + [True] * 10 + [False] * 10
    assert sig.drop_p(current, candidate, rate) == pytest.approx(binom_tail(losses, wins), rel=1e-9)


def test_drop_p_is_one_when_nothing_fell() -> None:
    assert sig.drop_p([True, False], [True, True], rate) == 1.0
    assert sig.drop_p([True, False], [False, True], rate) == 1.0  # a tie
    with pytest.raises(sig.PairingError, match="not paired"):
        sig.drop_p([True], [True, False], rate)


def test_drop_p_samples_beyond_the_exact_limit_and_is_seeded() -> None:
    current = [True] * 20 + [False] * 10 + [True] * 30
    candidate = [False] * 20 + [True] * 10 + [True] * 30  # 30 items differ: sampled, not enumerated
    p = sig.drop_p(current, candidate, rate, seed=1)
    assert p == pytest.approx(binom_tail(20, 10), abs=0.015)
    assert p == sig.drop_p(current, candidate, rate, seed=1)


def test_drop_p_sees_a_macro_f1_collapse_that_one_flip_does_not_make() -> None:
    from training.metrics import macro_f1

    def f1(units) -> float:
        return macro_f1([p for p, _ in units], [g for _, g in units])

    gold = ["Yes"] * 10 + ["No"] * 20
    current = list(zip(["Yes"] * 10 + ["No"] * 14 + ["Yes"] * 6, gold, strict=True))  # 0.80 macro-F1
    collapsed = list(zip(["No"] * 30, gold, strict=True))  # every "Yes" lost: 0.40
    assert sig.drop_p(current, collapsed, f1, seed=0) < 0.05  # 16 items differ, all one way
    one_flip = [("No", "Yes"), *current[1:]]
    assert f1(current) - f1(one_flip) > 0.01  # beyond a 1-point margin, and only one answer changed
    assert sig.drop_p(current, one_flip, f1) == 0.5


def flagged(adapter: str, right: list[bool], supported: list[bool], cls: list[str] | None = None) -> EvalResult:
    """A result whose task scores are computed here from its items (the oracle the gate's re-scoring must match)."""
    from training.metrics import macro_f1

    items = [{"id": f"q{i}", "task": "legal_qa", "correct": r, "supported": s}
             for i, (r, s) in enumerate(zip(right, supported, strict=True))]  # fmt: skip
    tasks = {"legal_qa": {"kind": "open_qa", "n": len(right), "score": rate(right), "correct": rate(right),
                          "supported": rate(supported)}}  # fmt: skip
    if cls is not None:
        gold = ["Yes"] * (len(cls) // 3) + ["No"] * (len(cls) - len(cls) // 3)
        items += [{"id": f"c{i}", "task": "hearsay", "pred": p, "gold": g}
                  for i, (p, g) in enumerate(zip(cls, gold, strict=True))]  # fmt: skip
        tasks["hearsay"] = {"kind": "classification", "n": len(cls), "score": macro_f1(cls, gold)}
    return EvalResult("legal", adapter, tasks, items=items)


LIVE30 = [True] * 10 + [False] * 20
BETTER30 = [True] * 18 + [False] * 12  # +8/-0: p = 1/256
SUPPORT30 = [True] * 23 + [False] * 7  # 0.767


def test_job_gate_tolerates_a_one_item_slip_the_flat_margin_refused() -> None:
    slipped = [False, *SUPPORT30[1:]]  # one supported answer of 30 became a quote: 0.767 -> 0.733
    cand, cur = flagged("v2", BETTER30, slipped), flagged("v1", LIVE30, SUPPORT30)
    ok, reason, paired = job_gate(cand, cur, 0.01)
    assert ok, reason
    assert "legal_qa supported rate fell 0.033 (0.767 -> 0.733) on 30 items, within chance (p=0.5)" in reason
    assert paired["legal_qa"]["wins"] == 8
    # the same scores without the items cannot be tested for chance: the flat margin still refuses
    ok, reason = gate({"tasks": cand.tasks}, {"tasks": cur.tasks}, 0.01)
    assert not ok and reason == "legal_qa supported rate fell 0.033 (0.767 -> 0.733), more than the margin 0.01"


def test_job_gate_refuses_a_drop_chance_does_not_explain() -> None:
    slipped = [False] * 4 + SUPPORT30[4:]  # four supported answers lost, none gained: p = 1/16
    ok, reason, paired = job_gate(flagged("v2", BETTER30, slipped), flagged("v1", LIVE30, SUPPORT30), 0.01)
    assert not ok
    assert reason == ("legal_qa supported rate fell 0.133 (0.767 -> 0.633), more than the margin 0.01 and beyond "
                      "chance on 30 items (p=0.062 < 0.2)")  # fmt: skip
    assert paired["legal_qa"]["significant"]  # refused despite a significant gain on the job


def test_job_gate_refuses_another_task_collapsing_to_one_label() -> None:
    keep = ["Yes"] * 10 + ["No"] * 14 + ["Yes"] * 6
    cur = flagged("v1", LIVE30, SUPPORT30, keep)
    ok, reason, _ = job_gate(flagged("v2", BETTER30, SUPPORT30, ["No"] * 30), cur, 0.01)
    assert not ok and reason.startswith("hearsay dropped 0.396 (0.796 -> 0.400), more than the margin 0.01 and beyond")
    ok, reason, _ = job_gate(flagged("v2", BETTER30, SUPPORT30, ["No", *keep[1:]]), cur, 0.01)
    assert ok and "hearsay dropped" in reason and "within chance (p=0.5)" in reason


def test_a_large_eval_keeps_the_margin_meaning_a_few_points() -> None:
    cur_support = [True] * 800 + [False] * 200
    cand_support = [False] * 40 + cur_support[40:800] + [True] * 10 + cur_support[810:]  # -40/+10: 3 points
    right = [True] * 500 + [False] * 500
    better = [True] * 600 + [False] * 400
    ok, reason, _ = job_gate(flagged("v2", better, cand_support), flagged("v1", right, cur_support), 0.01)
    assert not ok and "legal_qa supported rate fell 0.030" in reason and "beyond chance on 1000 items" in reason
    assert binom_tail(40, 10) < 1e-4  # the oracle: so far beyond chance that sampling shows its floor, 1/4001
    assert "(p=0.00025 < 0.2)" in reason


def test_a_job_slip_within_chance_is_named_once() -> None:
    cur = flagged("v1", [True, *LIVE30[1:]], SUPPORT30)
    cand = flagged("v2", [False, *LIVE30[1:]], SUPPORT30)  # correctness 0.367 -> 0.333 (one item)
    ok, reason = gate(cand, cur, 0.01)
    assert not ok and reason.startswith("worse overall")  # nothing else gained: the mean fell
    cand.tasks["other"] = cur.tasks["other"] = {"kind": "qa", "n": 1, "score": 0.5}
    cand.tasks["other"] = {"kind": "qa", "n": 1, "score": 0.6}
    ok, reason = gate(cand, cur, 0.01)
    assert ok and reason.count("legal_qa correctness fell 0.033") == 1 and "within chance (p=0.5)" in reason
