from bot.prompt import Passage, Turn, approx_tokens, build_messages


def words(text: str) -> int:
    return len(text.split())


def test_passages_are_numbered_in_the_system_message():
    built = build_messages("SYS", "What?", [Passage("a#0", "Title A", "alpha text"), Passage("b#0", "Title B", "beta")])
    system = built.messages[0]["content"]
    assert system.startswith("SYS") and "Sources:" in system
    assert "[1] Title A\nalpha text" in system and "[2] Title B\nbeta" in system
    assert built.messages[-1] == {"role": "user", "content": "What?"}
    assert [p.chunk_id for p in built.passages] == ["a#0", "b#0"]


def test_no_passages_means_plain_system_prompt():
    built = build_messages("SYS", "Q")
    assert built.messages == [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Q"}]


def test_budget_is_never_exceeded():
    long = " ".join(["word"] * 2000)
    passages = [Passage(f"d{i}#0", f"T{i}", long) for i in range(5)]
    history = [Turn("user", long), Turn("assistant", long), Turn("user", "short"), Turn("assistant", "ok")]
    for budget in (120, 300, 700):
        built = build_messages("system prompt here", long, passages, history, budget=budget, count=words)
        total = sum(words(m["content"]) + 8 for m in built.messages)
        assert total <= budget, (budget, total)
        assert built.messages[-1]["role"] == "user"


def test_history_keeps_newest_turns_first():
    history = [Turn("user", f"turn {i} " + "x " * 50) for i in range(10)]
    built = build_messages("S", "Q", (), history, budget=200, count=words)
    kept = [m["content"] for m in built.messages[1:-1]]
    assert kept and kept[-1].startswith("turn 9")
    assert built.dropped_turns > 0


def test_approx_tokens_is_monotonic():
    assert approx_tokens("") == 0
    assert approx_tokens("a" * 100) < approx_tokens("a" * 1000)
