"""Count the work of a backtracking regex match, without a clock: a small interpreter of the parse trees that
`re` itself builds (`re._parser`), which tries the same alternatives in the same order as `re` and counts one
step per node it tries. `re` has no step counter, and timing asserts are not allowed in tests; the step count
is deterministic, so "steps per character" and "steps(2n) / steps(n)" can be asserted.

It covers the constructs PII patterns use (literals, classes, categories, greedy/lazy/possessive repeats,
groups, alternation, \\b, lookarounds, backreferences, atomic groups); anything else raises
NotImplementedError. Tests check it against `re` itself: for every pattern and text, the same match spans.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from re import _constants as c  # type: ignore[attr-defined]
from re import _parser  # type: ignore[attr-defined]

Next = Callable[[int], "int | None"]  # continuation: given a position, the end of the whole match or None


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


_CATEGORIES: dict[object, Callable[[str], bool]] = {
    c.CATEGORY_DIGIT: str.isdecimal,
    c.CATEGORY_NOT_DIGIT: lambda ch: not ch.isdecimal(),
    c.CATEGORY_SPACE: str.isspace,
    c.CATEGORY_NOT_SPACE: lambda ch: not ch.isspace(),
    c.CATEGORY_WORD: _is_word,
    c.CATEGORY_NOT_WORD: lambda ch: not _is_word(ch),
}


class StepCounter:
    """`spans(text)`: the non-overlapping match spans, left to right, as `pattern.finditer` finds them;
    `steps`: the nodes tried so far (one per start position, plus one per node attempt)."""

    def __init__(self, pattern: re.Pattern[str]):
        parsed = _parser.parse(pattern.pattern, pattern.flags)
        self.items = list(parsed)
        self.ignorecase = bool(parsed.state.flags & re.IGNORECASE)
        self.steps = 0
        self.text = ""
        self.groups: dict[int, tuple[int, int]] = {}

    # ------------------------------------------------------------------ one character

    def _char_ok(self, op: object, av: object, ch: str) -> bool:
        if op is c.LITERAL:
            return self._same(ch, chr(av))  # type: ignore[arg-type]
        if op is c.NOT_LITERAL:
            return not self._same(ch, chr(av))  # type: ignore[arg-type]
        if op is c.ANY:
            return ch != "\n"
        if op is c.IN:
            negate = False
            hit = False
            for sub_op, sub_av in av:  # type: ignore[union-attr]
                if sub_op is c.NEGATE:
                    negate = True
                elif sub_op is c.RANGE:
                    lo, hi = sub_av
                    options = {ch, ch.lower(), ch.upper()} if self.ignorecase else {ch}
                    hit = hit or any(lo <= ord(o) <= hi for o in options)
                elif sub_op is c.CATEGORY:
                    hit = hit or _CATEGORIES[sub_av](ch)
                else:
                    hit = hit or self._char_ok(sub_op, sub_av, ch)
            return hit != negate
        raise NotImplementedError(op)

    def _same(self, a: str, b: str) -> bool:
        return a == b or (self.ignorecase and a.lower() == b.lower())

    @staticmethod
    def _single_char(body: list) -> bool:
        return len(body) == 1 and body[0][0] in (c.LITERAL, c.NOT_LITERAL, c.ANY, c.IN)

    # ------------------------------------------------------------------ sequences

    def _seq(self, items: list, i: int, pos: int, k: Next) -> int | None:
        if i == len(items):
            return k(pos)
        self.steps += 1
        op, av = items[i]
        text = self.text

        def nxt(p: int) -> int | None:
            return self._seq(items, i + 1, p, k)

        if op in (c.LITERAL, c.NOT_LITERAL, c.ANY, c.IN):
            return nxt(pos + 1) if pos < len(text) and self._char_ok(op, av, text[pos]) else None
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            return self._repeat(op, *av, pos, nxt)
        if op is c.SUBPATTERN:
            group, add_flags, del_flags, body = av
            if add_flags & ~re.UNICODE or del_flags:
                raise NotImplementedError("inline flags")
            if group is None:
                return self._seq(list(body), 0, pos, nxt)
            return self._seq(list(body), 0, pos, lambda end: self._capture(group, pos, end, nxt))
        if op is c.BRANCH:
            for alternative in av[1]:
                found = self._seq(list(alternative), 0, pos, nxt)
                if found is not None:
                    return found
            return None
        if op is c.AT:
            return nxt(pos) if self._at(av, pos) else None
        if op in (c.ASSERT, c.ASSERT_NOT):
            direction, body = av
            body = list(body)
            if direction == 1:
                held = self._seq(body, 0, pos, lambda end: end) is not None
            else:
                width = _parser.SubPattern(_parser.State(), body).getwidth()[0]
                start = pos - width
                held = start >= 0 and self._seq(body, 0, start, lambda end: end if end == pos else None) is not None
            return nxt(pos) if held == (op is c.ASSERT) else None
        if op is c.GROUPREF:
            if av not in self.groups:
                return None
            start, end = self.groups[av]
            want = text[start:end]
            got = text[pos : pos + len(want)]
            return nxt(pos + len(want)) if len(got) == len(want) and all(map(self._same, got, want)) else None
        if op is c.ATOMIC_GROUP:
            end = self._seq(list(av), 0, pos, lambda e: e)
            return None if end is None else nxt(end)
        raise NotImplementedError(op)

    def _capture(self, group: int, start: int, end: int, k: Next) -> int | None:
        saved = self.groups.get(group)
        self.groups[group] = (start, end)
        found = k(end)
        if found is None:
            if saved is None:
                self.groups.pop(group, None)
            else:
                self.groups[group] = saved
        return found

    def _at(self, code: object, pos: int) -> bool:
        text = self.text
        before = pos > 0 and _is_word(text[pos - 1])
        after = pos < len(text) and _is_word(text[pos])
        if code is c.AT_BOUNDARY:
            return before != after
        if code is c.AT_NON_BOUNDARY:
            return before == after
        if code in (c.AT_BEGINNING, c.AT_BEGINNING_STRING):
            return pos == 0
        if code in (c.AT_END, c.AT_END_STRING):
            return pos == len(text)
        raise NotImplementedError(code)

    def _repeat(self, op: object, low: int, high: int, body: list, pos: int, k: Next) -> int | None:
        body = list(body)
        if self._single_char(body):
            # like sre: count the run once, then give characters back one at a time
            b_op, b_av = body[0]
            n = 0
            while n < high and pos + n < len(self.text) and self._char_ok(b_op, b_av, self.text[pos + n]):
                n += 1
            self.steps += n
            if n < low:
                return None
            if op is c.POSSESSIVE_REPEAT:
                return k(pos + n)
            counts = range(n, low - 1, -1) if op is c.MAX_REPEAT else range(low, n + 1)
            for count in counts:
                self.steps += 1
                found = k(pos + count)
                if found is not None:
                    return found
            return None
        if op is c.POSSESSIVE_REPEAT:
            count, at = 0, pos
            while count < high:
                end = self._seq(body, 0, at, lambda e: e)
                if end is None or end == at:
                    break
                count, at = count + 1, end
            return k(at) if count >= low else None

        def iterate(count: int, at: int) -> int | None:
            self.steps += 1

            def again(end: int) -> int | None:
                return None if end == at else iterate(count + 1, end)  # an empty iteration ends the loop

            if op is c.MAX_REPEAT:
                if count < high:
                    found = self._seq(body, 0, at, again)
                    if found is not None:
                        return found
                return k(at) if count >= low else None
            if count >= low:
                found = k(at)
                if found is not None:
                    return found
            return self._seq(body, 0, at, again) if count < high else None

        return iterate(0, pos)

    # ------------------------------------------------------------------ search

    def spans(self, text: str) -> list[tuple[int, int]]:
        self.text = text
        found: list[tuple[int, int]] = []
        pos = 0
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 50_000))
        try:
            while pos <= len(text):
                self.steps += 1
                self.groups = {}
                end = self._seq(self.items, 0, pos, lambda e: e)
                if end is None:
                    pos += 1
                    continue
                found.append((pos, end))
                pos = end if end > pos else pos + 1
        finally:
            sys.setrecursionlimit(limit)
        return found


def count_steps(pattern: re.Pattern[str], text: str) -> int:
    counter = StepCounter(pattern)
    counter.spans(text)
    return counter.steps
