"""Open questions from the domain's own corpus (`qa.jsonl`, task kind "open_qa"): the real job, scored.

Each question is asked through the serving path with retrieval on (no gold passage handed in), and each answer
is scored on five things:
- correct: the gold answer or an alias is in the text (normalised), numbers compared as numbers (3,778 = 3778 =
  $3.8 million where the scale allows), arithmetic rows on `answer_value` and `scale`, multi-span rows on every span;
- cites_gold: a citation the text really uses ([n]) points at the gold passage;
- supported: the guard's verdict is "supported" or "trimmed" and every number in the text is in a shown passage;
- retrieved: the gold passage was among those shown;
- abstained: the answer says the sources don't settle it (right when the gold passage was not retrieved).

Everything here is a pure function of strings and dicts (unit-testable without a model), except `answer_record`,
which turns a served `Answer` into such a dict, and `load_rows`, which reads the task's rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from bot import guard
from training.metrics import MULTIPLIER, Number, numbers_in

KIND = "open_qa"
SUPPORTED_VERDICTS = ("supported", "trimmed")
ABSTAIN_VERDICTS = ("no-sources", "quoted")
_DECREASE = re.compile(r"\b(decreas|declin|drop|fell|fall|lower|reduc|less than|down by|shrank)", re.IGNORECASE)
_ARTICLES = {"a", "an", "the"}


# ---- correctness ----------------------------------------------------------------------------------------
def normalize_text(text: str) -> str:
    """Lower case, punctuation -> space, articles dropped, numbers canonical (1,406,546 -> 1406546; 90.0 -> 90)."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", (text or "").lower().replace("per cent", "%").replace("percent", "%"))
    tokens = []
    for tok in re.sub(r"[^a-z0-9.%]+", " ", text.replace("%", " % ")).split():
        tok = tok.strip(".")
        if re.fullmatch(r"\d+\.\d+", tok):
            tok = tok.rstrip("0").rstrip(".")
        if tok and tok not in _ARTICLES:
            tokens.append(tok)
    return " ".join(tokens)


def contains(text: str, gold: str) -> bool:
    """Whole-token containment after normalisation ("New York" is in "the State of New York", not in "Yorkshire")."""
    g = normalize_text(gold)
    return bool(g) and f" {g} " in f" {normalize_text(text)} "


def pure_number(gold: str, scale: str = "") -> Number | None:
    """The gold as one number in its scale ("$ 67,719" with scale thousand, "486 thousand", "97.58%"), else None
    when the gold is words ("1 in 200", "ninety (90) days" are matched as text)."""
    found = numbers_in(gold)
    rest = re.sub(r"[\s$£€%().,\-\u2212]|percent|thousands?|millions?|billions?", "", gold, flags=re.IGNORECASE)
    if len(found) != 1 or re.sub(r"\d", "", rest):
        return None
    n = found[0]
    unit = n.unit or {"percent": "%", "thousand": "thousand", "million": "million", "billion": "billion"}.get(scale, "")
    return Number(n.value, n.decimals, unit, n.digits)


def number_matches(gold: Number, shown: Number, decrease: bool = False, table_unit: str = "") -> bool:
    """`shown` (a number in the answer) equals `gold` within rounding to the precision either one shows.

    A bare number may be in the table's scale or in units (90,882 = 90882 thousand); a unit word fixes it
    ($90.9 million). A rounded figure needs 2 significant digits ($3.8 million passes for 3,778 thousand,
    "$4 million" does not). A decrease written as a word may drop the sign (-17.95% = "fell 17.95%").
    """
    if (gold.unit == "%") != (shown.unit == "%") and shown.unit != "":
        return False
    if gold.unit == "%":
        units = [""]
    elif shown.unit:
        units = [shown.unit]
    else:
        units = sorted({"", table_unit or gold.unit})
    g = gold.value * gold.multiplier
    g_step = 10.0 ** -gold.decimals * gold.multiplier
    for unit in units:
        mult = MULTIPLIER[unit]
        step = 10.0 ** -shown.decimals * mult
        for value in [shown.value * mult] + ([-abs(shown.value) * mult] if decrease else []):
            gap, eps = abs(value - g), 1e-9 * max(1.0, abs(g))
            # strictly inside both roundings: 485 is not 486 at the same precision, 0.49 million is 486 thousand
            if gap <= g_step / 2 + eps or (gap < (step + g_step) / 2 - eps and shown.significant >= 2):
                return True
    return False


def _span_found(text: str, span: str, scale: str, golds_alt: Sequence[str] = ()) -> bool:
    gold = pure_number(span, scale)
    if gold is None:
        return any(contains(text, s) for s in [span, *golds_alt])
    decrease = gold.value < 0 and bool(_DECREASE.search(text))
    return any(number_matches(gold, n, decrease, gold.unit) for n in numbers_in(text))


def is_correct(text: str, row: Mapping[str, Any]) -> bool:
    """The scoring rule of the module doc, on one answer text and its qa.jsonl row."""
    scale = row.get("scale") or ""
    spans = row.get("answer_spans") or []
    if spans:  # multi-span (finance) and several genes (medical): every span must be there
        return all(_span_found(text, s, scale) for s in spans)
    if isinstance(row.get("answer_value"), int | float):  # arithmetic: computed, so scored numerically
        shape = pure_number(row["answer"], scale)
        unit = shape.unit if shape else {"percent": "%"}.get(scale, scale if scale in MULTIPLIER else "")
        gold = Number(float(row["answer_value"]), shape.decimals if shape else 2, unit)
        decrease = gold.value < 0 and bool(_DECREASE.search(text))
        return any(number_matches(gold, n, decrease, unit) for n in numbers_in(text))
    return _span_found(text, row["answer"], scale, list(row.get("aliases") or []))


# ---- the other measures ---------------------------------------------------------------------------------
def doc_of(ref: str) -> str:
    """'cuad-008-x#2' -> 'cuad-008-x' (a chunk id's passage)."""
    return (ref or "").split("#", 1)[0]


def cites_gold(cited: Iterable[str], gold: str) -> bool:
    return any(doc_of(c) == gold for c in cited)


def retrieved(shown: Iterable[str], gold: str) -> bool:
    return any(doc_of(s) == gold for s in shown)


def unsupported_numbers(text: str, passages: Sequence[str]) -> list[str]:
    """Numbers of the answer that no shown passage holds (a figure the model made up or computed), by the
    guard's own rule, so that "supported" means one thing in serving and in the eval."""
    found = [n.value for p in passages for n in guard.numbers_in(p)]
    return [f"{n.value:g}" for n in guard.numbers_in(text) if not any(n.matches(v) for v in found)]


def is_abstention(text: str) -> bool:
    return guard.is_abstention(text)


def guard_verdict(answer: Any) -> str | None:
    """The guard's verdict on an Answer (`Answer.guard`, a dict or an object), None where there is no guard."""
    g = getattr(answer, "guard", None)
    verdict = g.get("verdict") if isinstance(g, Mapping) else getattr(g, "verdict", None)
    return verdict if isinstance(verdict, str) else None


def answer_record(answer: Any) -> dict:
    """What scoring needs from a served Answer, as plain JSON (saved per item in eval_<adapter>.json)."""
    passages = list(getattr(answer, "passages", []) or [])
    text = answer.text
    return {
        "cited": [c.doc_id or doc_of(c.chunk_id) for c in getattr(answer, "citations", []) if c.cited],
        "shown": [p.doc_id or doc_of(p.chunk_id) for p in passages],
        "guard": guard_verdict(answer),
        "unsupported": unsupported_numbers(text, [f"{p.title}\n{p.text}" for p in passages]),
        "abstained": answer.kind == "abstain" or is_abstention(text),
        # the model's own words, where the guard changed them (to tell a trimmed answer from a bad model)
        **({"draft": draft} if (draft := getattr(answer, "draft", "")) and draft != text else {}),
    }


def score_item(item: dict) -> dict:
    """Sets the item's flags from its answer record and gold fields (an item = row fields + answer_record)."""
    gold = item["context_id"]
    verdict = item.get("guard")
    item["correct"] = is_correct(item["output"], {"answer": item.get("gold"), **item})  # eval items keep it as "gold"
    item["cites_gold"] = cites_gold(item.get("cited", []), gold)
    item["retrieved"] = retrieved(item.get("shown", []), gold)
    item["supported"] = verdict in SUPPORTED_VERDICTS and not item.get("unsupported")
    item["abstained"] = bool(item.get("abstained")) or verdict in ABSTAIN_VERDICTS
    return item


def _rate(items: Sequence[dict], key: str) -> float | None:
    return sum(bool(it[key]) for it in items) / len(items) if items else None


def score_task(items: Sequence[dict]) -> dict:
    """The task's measures; `score` (what the gate and the overall mean use) is correctness on all items."""
    for it in items:
        score_item(it)
    hit = [it for it in items if it["retrieved"]]
    missed = [it for it in items if not it["retrieved"]]
    right = [it for it in items if it["correct"]]
    out: dict[str, Any] = {
        "kind": KIND, "n": len(items), "score": _rate(items, "correct") or 0.0, "correct": _rate(items, "correct") or 0.0,
        "correct_when_retrieved": _rate(hit, "correct"), "cites_gold_of_correct": _rate(right, "cites_gold"),
        "supported": _rate(items, "supported") or 0.0, "unsupported_numbers": sum(bool(it.get("unsupported")) for it in items),
        "retrieved": _rate(items, "retrieved") or 0.0, "abstain_right": _rate(missed, "abstained"),
        "invented": sum(not it["abstained"] for it in missed),
    }
    types = sorted({it["answer_type"] for it in items if it.get("answer_type")})
    if types:  # finance: span vs arithmetic apart (a span is copied, an arithmetic answer is computed)
        out["by_type"] = {}
        for t in types:
            sub = [it for it in items if it.get("answer_type") == t]
            out["by_type"][t] = {"n": len(sub), "correct": _rate(sub, "correct")}
    fresh = [it for it in items if it.get("in_train_jsonl") is False]
    if fresh and len(fresh) < len(items):  # passages no training row showed the model
        out["not_in_train"] = {"n": len(fresh), "correct": _rate(fresh, "correct"),
                               "supported": _rate(fresh, "supported")}
    return out


ITEM_FIELDS = ("answer_type", "in_train_jsonl", "context_id", "aliases", "answer_value", "scale", "answer_spans")


# ---- rows, the printed table, the gate ------------------------------------------------------------------
def specs(domain: Any) -> dict[str, dict]:
    """The domain's open_qa tasks (domain.toml `[tasks.<d>_qa] kind = "open_qa"`)."""
    return {t: spec for t, spec in domain.tasks.items() if spec.get("kind") == KIND}


def sources(domain: Any) -> dict[str, Any]:
    """Each open_qa task's rows file (`source`, default qa.jsonl, beside domain.toml)."""
    return {t: domain.path / spec.get("source", "qa.jsonl") for t, spec in specs(domain).items()}


def contract_name(contract_file: str) -> str:
    """'ADAMSGOLFINC_03_21_2005-EX-10.17-ENDORSEMENT AGREEMENT.PDF' -> 'ADAMSGOLFINC ENDORSEMENT AGREEMENT';
    'CerenceInc_20191002_8-K_EX-10.4_11827494_EX-10.4_Intellectual Property Agreement' -> 'CerenceInc Intellectual
    Property Agreement' (as a person names it: no filing codes)."""
    stem = re.sub(r"\.(pdf|txt)$", "", contract_file, flags=re.IGNORECASE)
    if re.match(r"[^_]+_\d{8}_", stem):  # EDGAR style: company_date_form_EX-n_id_EX-n_kind
        return f"{stem.split('_')[0]} {re.split(r'_EX-[^_]*_', stem)[-1].replace('_', ' ').strip()}"
    company = re.split(r"_\d", stem, maxsplit=1)[0].replace("_", " ").strip()
    kind = re.split(r"-EX-[\d.]+[A-Z]?-?", stem, maxsplit=1)[-1].replace("_", " ").strip()
    return f"{company} {kind}".strip() if kind != stem else company


def named_question(question: str, passage: Any) -> str:
    """The question as a user who names the source asks it: contract name, else the passage title."""
    if passage is None:
        return question
    file = passage.metadata.get("contract_file")
    name = contract_name(file) if file else passage.title
    return f"{name}: {question}"


def question_of(row: Mapping[str, Any]) -> str:
    """As an employee asks it: with the company named where the row has that form (TAT-QA seldom names it)."""
    return (row.get("named_question") or row["question"]).strip()


def load_rows(domain: Any, wanted: Sequence[str] | None, split: str, read: Callable[..., list[dict]]) -> list[dict]:
    """The rows of each open_qa task in `split` (`wanted` None: every task; a task whose source file is missing is
    then skipped, so a copied domain without qa.jsonl still evaluates)."""
    from bot.errors import UserFacingError

    rows: list[dict] = []
    for task, path in sources(domain).items():
        if wanted is not None and task not in wanted:
            continue
        if not path.is_file():
            if wanted is not None:
                raise UserFacingError(f"{domain.name}: task {task} reads {path}, which does not exist")
            continue
        rows += [r for r in read(path, required=("id", "task", "question", "answer"))
                 if r["task"] == task and r.get("split") == split]
    return rows


def table_rows(task: str, results: Sequence[Any]) -> list[list[str]]:
    """Lines of the eval table for one open_qa task: base vs the adapter(s), one measure a line."""
    first = next(r.tasks[task] for r in results if task in r.tasks)

    def cells(get: Callable[[Mapping], Any]) -> list[str]:
        out = []
        for r in results:
            v = get(r.tasks[task]) if task in r.tasks else None
            out.append("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
        return out

    measures: list[tuple[str, Callable[[Mapping], Any]]] = [
        ("correct", lambda s: s.get("correct")),
        ("correct when retrieved", lambda s: s.get("correct_when_retrieved")),
        ("cites gold (of correct)", lambda s: s.get("cites_gold_of_correct")),
        ("supported", lambda s: s.get("supported")),
        ("unsupported numbers", lambda s: s.get("unsupported_numbers")),
        ("retrieved", lambda s: s.get("retrieved")),
        ("abstain right (of missed)", lambda s: s.get("abstain_right")),
    ]
    for t in first.get("by_type", {}):
        measures.append((f"correct: {t}", lambda s, t=t: s.get("by_type", {}).get(t, {}).get("correct")))
    if "not_in_train" in first:
        measures.append(("correct: not in train.jsonl", lambda s: s.get("not_in_train", {}).get("correct")))
    return [[task if i == 0 else "", str(first["n"]) if i == 0 else "", name, *cells(get), "-"]
            for i, (name, get) in enumerate(measures)]


GATE_MEASURES = (("correct", "correctness"), ("supported", "supported rate"))


def gate_check(candidate: Mapping[str, Any], current: Mapping[str, Any], margin: float,
               lost: Callable[[str, str, str, float, float], str | None]) -> str | None:  # fmt: skip
    """Why the candidate must not replace the current adapter on an open_qa task, else None.

    Checked before any average, so no classification gain can buy a loss on the real job. Each measure that fell by
    more than `margin` goes to `lost(task, key, label, was, now)`, which says whether it is a loss, and why.
    """
    for task in sorted(t for t, s in current.items() if isinstance(s, Mapping) and s.get("kind") == KIND):
        cand = candidate.get(task)
        if not isinstance(cand, Mapping):
            return f"{task} was scored for the current adapter but not for the candidate"
        for key, label in GATE_MEASURES:
            was, now = current[task].get(key), cand.get(key)
            if isinstance(was, int | float) and isinstance(now, int | float) and was - now > margin:
                why = lost(task, key, label, was, now)
                if why:
                    return why
    return None
