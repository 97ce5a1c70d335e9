"""Durable Slack questions: stored when their event is claimed, resumed after a crash (start-up, the keeper, a
redelivery), apologised for when too old or tried too often; and the waiting line users see."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.answer import Answerer
from bot.config import ROOT, Settings
from bot.slack import blocks
from bot.slack.resume import RESTARTED, resume_open
from bot.slack.waiting import RETRY_QUESTION, waiting_message
from bot.store.questions import LEASE_S, MAX_ATTEMPTS, Questions, owner_is_dead
from bot.store.store import STORED_QUESTION_CHARS, Store
from bot.testing.slack_bot import RunningBot
from bot.testing.slack_bot import start_bot as start_running_bot
from bot.testing.slack_kit import (
    BOT_TOKEN,
    BOT_USER_ID,
    CHANNEL,
    SIGNING_SECRET,
    USER,
    FakeSlack,
    app_mention,
    block_action,
    new_event_id,
    post_event,
    post_interaction,
)

QUESTION = "<@UBOT> medical: Is Huntington disease inherited?"


def dead_owner() -> str:
    """The owner string of a process on this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:gone"


def resume_fields(ts: str, event_id: str) -> dict:
    return {"channel": CHANNEL, "user": USER, "event_key": f"event:{event_id}", "source": "mention",
            "thread_ts": ts, "history_ts": None, "message_ts": ts}


# ---------------------------------------------------------------- the store's questions table (no model)


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_a_claimed_question_is_stored_scrubbed_before_any_answer(tmp_path: Path):
    store = Store(tmp_path / "q.db")
    q = Questions(store)
    claimed = q.claim("event:Ev1", source="slack:mention", channel=CHANNEL, user=USER,
                      question="mail me at ann@example.com please", resume={"channel": CHANNEL, "user": USER})
    assert claimed is not None and not claimed.resumed
    row = q.get(claimed.id)
    assert row["status"] == "queued" and row["question"] == "mail me at [EMAIL] please"
    assert row["user_hash"] != USER and USER not in row["user_hash"]
    assert store.query("SELECT count(*) AS n FROM events")[0]["n"] == 1  # the event claim, same transaction
    q.finish(claimed.id, "answered", exchange_id=None, queue_ms=1.0, answer_ms=2.0)
    row = q.get(claimed.id)
    assert row["status"] == "answered" and row["resume"] is None and row["owner"] is None  # raw user id gone


def test_a_repeat_is_dropped_while_the_owner_holds_it_and_taken_once_the_lease_lapses(tmp_path: Path):
    store, clock = Store(tmp_path / "q.db"), Clock()
    first, second = Questions(store, "hostA:1:a", clock=clock), Questions(store, "hostB:2:b", clock=clock)
    claimed = first.claim("event:Ev2", source="s", channel=CHANNEL, user=USER, question="q?", resume={"x": 1})
    assert second.claim("event:Ev2", source="s", channel=CHANNEL, user=USER, question="q?", resume={}) is None
    clock.t += LEASE_S / 2
    assert first.renew() == 1
    clock.t += LEASE_S * 0.9  # past the first lease, inside the renewed one
    assert second.claim("event:Ev2", source="s", channel=CHANNEL, user=USER, question="q?", resume={}) is None
    clock.t += LEASE_S
    taken = second.claim("event:Ev2", source="s", channel=CHANNEL, user=USER, question="q?", resume={})
    assert taken is not None and taken.resumed and taken.id == claimed.id and taken.resume == {"x": 1}
    assert second.get(claimed.id)["owner"] == "hostB:2:b"
    first.finish(claimed.id, "answered")
    assert second.claim("event:Ev2", source="s", channel=CHANNEL, user=USER, question="q?", resume={}) is None


def test_a_dead_local_owner_is_taken_over_at_once_and_a_live_one_is_not(tmp_path: Path):
    store = Store(tmp_path / "q.db")
    gone = dead_owner()
    assert owner_is_dead(gone, "me")
    assert owner_is_dead(f"{socket.gethostname()}:{os.getpid()}:x", "me")  # our pid, another nonce: a restart
    assert not owner_is_dead(f"{socket.gethostname()}:{os.getppid()}:x", "me")  # our parent runs
    assert not owner_is_dead("some-other-host:1:x", "me")  # another host: only its lease can tell
    Questions(store, gone).claim("event:Ev3", source="s", channel=CHANNEL, user=USER, question="q?", resume={})
    Questions(store, f"{socket.gethostname()}:{os.getppid()}:x").claim(
        "event:Ev4", source="s", channel=CHANNEL, user=USER, question="q?", resume={})
    taken = Questions(store).take_stale()
    assert [t.id for t in taken] == [1]


def test_an_over_length_question_is_stored_cut_with_its_length(tmp_path: Path):
    store = Store(tmp_path / "q.db")
    long = "x" * (STORED_QUESTION_CHARS + 5000)
    claimed = Questions(store).claim("event:Ev5", source="s", channel=CHANNEL, user=USER, question=long, resume={})
    row = Questions(store).get(claimed.id)
    assert len(row["question"]) == STORED_QUESTION_CHARS and row["question_chars"] == len(long)
    xid = store.log_exchange(source="s", question=long, answer="refused", domain=None, kind="error",
                             router_scores={}, chosen_by="none", citations=[], adapter="", latency_ms=1.0)
    ex = store.exchange(xid)
    assert len(ex["question"]) == STORED_QUESTION_CHARS and ex["question_chars"] == len(long)


def test_finish_refuses_an_open_status(tmp_path: Path):
    q = Questions(Store(tmp_path / "q.db"))
    claimed = q.claim("event:Ev6", source="s", channel=CHANNEL, user=USER, question="q?", resume={})
    with pytest.raises(ValueError, match="answered or failed"):
        q.finish(claimed.id, "queued")


def test_the_worker_apologises_for_questions_no_slack_process_resumed(tmp_path: Path, base_settings: Settings):
    """No web process came back: the worker pass edits each placeholder into an apology with "Ask again"."""
    from training.worker import apologise_abandoned_questions

    with FakeSlack() as slack, Store(tmp_path / "w.db") as store:
        clock = Clock()
        ts_a, ts_b = slack.add_message(CHANNEL, QUESTION), slack.add_message(CHANNEL, QUESTION)
        gone = Questions(store, "other-host:7:x", clock=clock)
        a = gone.claim("event:EvA", source="slack:mention", channel=CHANNEL, user=USER, question=QUESTION,
                       resume=resume_fields(ts_a, "EvA"))
        placeholder = slack._post(CHANNEL, {"text": "Looking into it…", "thread_ts": ts_a})["ts"]
        gone.set_placeholder(a.id, placeholder)
        b = gone.receive("event:EvB", source="slack:app_mention", channel=CHANNEL, user=USER, text=QUESTION,
                         event={"type": "app_mention", "channel": CHANNEL, "user": USER, "ts": ts_b})
        live = Questions(store, "other-host:8:y", clock=clock)
        live.claim("event:EvC", source="s", channel=CHANNEL, user=USER, question="q?", resume={"channel": CHANNEL})
        clock.t = time.time() - 300  # gone's leases lapsed 5 minutes ago; live renews its own now
        gone.lease_s = 0
        gone.renew()
        live.clock = time.time
        live.renew()
        s = base_settings.with_(slack_api_url=slack.api_url, slack_bot_token=BOT_TOKEN)
        assert apologise_abandoned_questions(s, store) == 2
        assert RESTARTED in slack.message(CHANNEL, placeholder)["text"]  # the placeholder became the apology
        posted = [m for m in slack.messages(CHANNEL) if m.get("thread_ts") == ts_b and m.get("user") == BOT_USER_ID]
        assert len(posted) == 1 and RETRY_QUESTION in json.dumps(posted[0]["blocks"])
        assert {r["id"]: r["status"] for r in store.query("SELECT id, status FROM questions")} == {
            a.id: "failed", b.id: "failed", 3: "queued"}
        assert apologise_abandoned_questions(base_settings.with_(slack_bot_token=None), store) == 0  # nobody to tell


def test_the_worker_turns_a_placeholder_a_crash_left_unrecorded_into_the_apology(tmp_path: Path,
                                                                                 base_settings: Settings):
    """Posted, then the process died before recording its ts: the apology edits that note, posts nothing new."""
    from training.worker import apologise_abandoned_questions

    with FakeSlack() as slack, Store(tmp_path / "w.db") as store:
        ts = slack.add_message(CHANNEL, QUESTION)
        gone = Questions(store, "other-host:7:x", clock=lambda: time.time() - 300)
        held = gone.claim("event:EvH", source="slack:mention", channel=CHANNEL, user=USER, question=QUESTION,
                          resume=resume_fields(ts, "EvH"))  # an earlier question of the thread, its note recorded
        recorded = slack._post(CHANNEL, {**waiting_message(1), "thread_ts": ts})["ts"]
        gone.set_placeholder(held.id, recorded)
        lost = gone.claim("event:EvL", source="slack:mention", channel=CHANNEL, user=USER, question=QUESTION,
                          resume=resume_fields(ts, "EvL"))
        note = slack._post(CHANNEL, {**waiting_message(2), "thread_ts": ts})["ts"]
        s = base_settings.with_(slack_api_url=slack.api_url, slack_bot_token=BOT_TOKEN)
        assert apologise_abandoned_questions(s, store) == 2
        ours = [m for m in slack.messages(CHANNEL) if m.get("thread_ts") == ts]
        assert [m["ts"] for m in ours] == [recorded, note]  # both edited in place, nothing posted
        assert all(RESTARTED in m["text"] for m in ours)
        assert Questions(store).get(lost.id)["placeholder_ts"] == note


# ---------------------------------------------------------------- through the real app (real model)


class Bot(RunningBot):
    def thread(self, ts: str) -> list[dict]:
        return [m for m in self.slack.messages(CHANNEL) if m.get("user") == BOT_USER_ID and m.get("thread_ts") == ts]


def is_answer(msg: dict) -> bool:
    return any(b.get("block_id") == "domainbot_answer" for b in msg.get("blocks") or ())


@pytest.fixture()
def start_bot(settings: Settings, quick: Answerer, tmp_path) -> Iterator[Callable[..., Bot]]:
    started: list[Bot] = []

    def start(db: Path | None = None, **overrides: object) -> Bot:
        bot = start_running_bot(settings, quick, cls=Bot, **{"db_path": db or tmp_path / "slack.db", **overrides})
        started.append(bot)
        return bot

    yield start
    for bot in started:
        bot.stop()


def orphan(store: Store, ts: str, event_id: str, *, attempts: int = 0) -> int:
    """A question a dead process claimed and never answered, as a crash leaves it."""
    claimed = Questions(store, dead_owner()).claim(
        f"event:{event_id}", source="slack:mention", channel=CHANNEL, user=USER, question=QUESTION,
        resume=resume_fields(ts, event_id))
    store.db.execute("UPDATE questions SET attempts = ?, status = 'answering' WHERE id = ?", (attempts, claimed.id))
    store.db.conn.commit()
    return claimed.id


@pytest.mark.slow
def test_a_redelivered_event_whose_question_is_unanswered_is_answered_not_dropped(start_bot):
    bot = start_bot()
    for keeper in bot.ctx.background:  # only the redelivery may resume it here
        keeper.stop()
    ts, event_id = bot.slack.add_message(CHANNEL, QUESTION), new_event_id()
    qid = orphan(bot.store, ts, event_id)
    assert post_event(bot.server.url, app_mention(QUESTION, ts=ts, event_id=event_id))[0] == 200
    answers = bot.slack.wait_for(lambda: [m for m in bot.thread(ts) if is_answer(m)], what="the resumed answer")
    assert len(answers) == 1
    bot.slack.wait_for(lambda: bot.ctx.questions.get(qid)["status"] == "answered", what="answered status")
    row = bot.ctx.questions.get(qid)
    assert row["exchange_id"] and bot.store.exchange(row["exchange_id"])["answer"] in answers[0]["text"]


@pytest.mark.slow
def test_an_event_acknowledged_but_never_handled_is_replayed_at_start_up(start_bot, tmp_path):
    """The crash came after the ack, before the listener ran: only the received event is on disk."""
    db = tmp_path / "replay.db"
    with FakeSlack() as slack:  # where the first process would have answered
        ts, event_id = slack.add_message(CHANNEL, QUESTION), new_event_id()
    with Store(db) as store:
        Questions(store, dead_owner()).receive(
            f"event:{event_id}", source="slack:app_mention", channel=CHANNEL, user=USER, text=QUESTION,
            event={"type": "app_mention", "channel": CHANNEL, "user": USER, "ts": ts})
    bot = start_bot(db=db)  # start-up resumes it
    bot.slack.add_message(CHANNEL, QUESTION, ts=ts)
    answers = bot.slack.wait_for(lambda: [m for m in bot.thread(ts) if is_answer(m)], what="the replayed answer")
    assert len(answers) == 1
    bot.slack.wait_for(lambda: not bot.ctx.questions.open(), what="nothing left open")
    assert [r["status"] for r in bot.store.query("SELECT status FROM questions")] == ["answered"]


@pytest.mark.slow
def test_a_question_tried_too_often_is_apologised_for_and_can_be_asked_again(start_bot):
    bot = start_bot()
    ts, event_id = bot.slack.add_message(CHANNEL, QUESTION), new_event_id()
    qid = orphan(bot.store, ts, event_id, attempts=MAX_ATTEMPTS)
    assert resume_open(bot.ctx) == 1
    apology = [m for m in bot.thread(ts) if RETRY_QUESTION in json.dumps(m.get("blocks") or [])]
    assert len(apology) == 1 and RESTARTED in apology[0]["text"]
    assert bot.ctx.questions.get(qid)["status"] == "failed"
    assert not [m for m in bot.thread(ts) if is_answer(m)]  # apologised, not answered

    status, _ = post_interaction(bot.server.url, block_action(RETRY_QUESTION, str(qid), channel=CHANNEL,
                                                               message_ts=apology[0]["ts"], thread_ts=ts))
    assert status == 200
    bot.slack.wait_for(lambda: [m for m in bot.thread(ts) if is_answer(m)], what="the answer asked again")


@pytest.mark.slow
@pytest.mark.parametrize("left, attempts", [("waiting note", 0), ("stream draft", 0), ("waiting note", MAX_ATTEMPTS)])
def test_a_placeholder_posted_but_not_recorded_before_a_crash_becomes_the_answer_or_apology(start_bot, left,
                                                                                           attempts):
    """A crash between Slack's reply and recording its ts: the resumed question edits that message, so the thread
    never keeps a stale "in line" note or a half-streamed draft beside the answer."""
    bot = start_bot()
    for keeper in bot.ctx.background:  # only this resume may take it
        keeper.stop()
    ts, event_id = bot.slack.add_message(CHANNEL, QUESTION), new_event_id()
    qid = orphan(bot.store, ts, event_id, attempts=attempts)
    if left == "waiting note":
        draft = bot.ctx.client.chat_postMessage(channel=CHANNEL, thread_ts=ts, **waiting_message(2))["ts"]
    else:
        draft = bot.ctx.client.chat_startStream(channel=CHANNEL, thread_ts=ts, recipient_user_id=USER,
                                                recipient_team_id=bot.slack.team_id,
                                                markdown_text=blocks.stream_intro("Medical"))["ts"]
    assert resume_open(bot.ctx) == 1
    bot.slack.wait_for(lambda: bot.ctx.questions.get(qid)["status"] in ("answered", "failed"), what="settled")
    ours = bot.thread(ts)
    assert [m["ts"] for m in ours] == [draft]  # one message: the draft, edited
    if attempts < MAX_ATTEMPTS:
        assert is_answer(ours[0]) and bot.ctx.questions.get(qid)["status"] == "answered"
    else:
        assert RESTARTED in ours[0]["text"] and bot.ctx.questions.get(qid)["status"] == "failed"


@pytest.mark.slow
def test_waiting_users_are_told_their_place_and_it_becomes_the_answer(start_bot):
    bot = start_bot(max_tokens=48)  # slower answers: the line is visibly long
    threads = []
    for i in range(4):
        text = f"<@UBOT> medical: is asthma inherited? ({i})"
        ts = bot.slack.add_message(CHANNEL, text)
        assert post_event(bot.server.url, app_mention(text, ts=ts))[0] == 200
        threads.append(ts)
    last = threads[-1]
    bot.slack.wait_for(lambda: [c for c in bot.slack.calls("chat.postMessage")
                                if c.args.get("thread_ts") == last and "ahead of yours" in c.args.get("text", "")],
                       what="the last question's place in line")
    for ts in threads:
        bot.slack.wait_for(lambda ts=ts: [m for m in bot.thread(ts) if is_answer(m)], what=f"answer in {ts}")
        assert len(bot.thread(ts)) == 1  # the waiting note became the answer: one message per question
    exchanges = bot.store.exchanges()
    assert len(exchanges) == 4
    waited = max(exchanges, key=lambda e: e["queue_ms"])
    assert waited["queue_ms"] > 0 and waited["latency_ms"] == pytest.approx(waited["queue_ms"] + waited["answer_ms"],
                                                                             abs=0.2)


@pytest.mark.slow
def test_kill_9_mid_answer_then_restart_answers_or_apologises_for_every_question(settings: Settings, tmp_path):
    """The Procfile's `web:` process killed while answering three questions, restarted on the same database."""
    db = tmp_path / "serve.db"

    def serve(slack: FakeSlack) -> tuple[subprocess.Popen, str]:
        env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
               "SLACK_API_URL": slack.api_url, "PORT": "0", "DOMAINBOT_DB": str(db),
               "DOMAINBOT_INDEXES_DIR": str(settings.indexes_dir), "DOMAINBOT_MAX_TOKENS": "48",
               "DOMAINBOT_PROMPT_BUDGET": "320", "DOMAINBOT_THREADS": "2", "PYTHONFAULTHANDLER": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--http", "--host", "127.0.0.1"], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=(tmp_path / "serve.err").open("a"),
                                text=True)
        if not select.select([proc.stdout], [], [], 180)[0]:  # stuck starting: its threads' stacks say where
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line + (tmp_path / "serve.err").read_text()
        return proc, line.split("listening on ")[1].strip()

    with FakeSlack() as slack:
        proc, url = serve(slack)
        threads = []
        try:
            for i in range(3):
                text = f"<@UBOT> medical: how is asthma treated in children? ({i})"
                ts = slack.add_message(CHANNEL, text)
                assert post_event(url, app_mention(text, ts=ts))[0] == 200  # acknowledged
                threads.append(ts)
            def begun() -> bool:  # answering has begun and its message (a stream or a placeholder) is on disk
                with Store(db) as store:
                    return bool(store.query("SELECT id FROM questions WHERE placeholder_ts IS NOT NULL"))

            slack.wait_for(begun, what="a recorded placeholder")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            proc.kill()
        with Store(db) as store:
            stored = store.query("SELECT status FROM questions")
        assert len(stored) == 3  # every acknowledged question is on disk, whatever its state
        assert any(r["status"] in ("queued", "answering") for r in stored)  # the kill really was mid-answer

        proc, url = serve(slack)
        try:
            def settled(ts: str) -> bool:
                ours = [m for m in slack.messages(CHANNEL) if m.get("user") == BOT_USER_ID
                        and m.get("thread_ts") == ts]
                return bool(ours) and all(is_answer(m) or RESTARTED in m.get("text", "") for m in ours)

            for ts in threads:
                try:
                    slack.wait_for(lambda ts=ts: settled(ts), what=f"question {ts} answered or apologised for")
                except AssertionError as err:  # say what the thread holds and what the server logged
                    ours = [(m.get("ts"), m.get("text", "")[:80], is_answer(m)) for m in slack.messages(CHANNEL)
                            if m.get("user") == BOT_USER_ID and m.get("thread_ts") == ts]
                    with Store(db) as store:
                        rows = store.query("SELECT id, status, placeholder_ts, attempts FROM questions")
                    log = (tmp_path / "serve.err").read_text()[-3000:]
                    raise AssertionError(f"{err}\nthread {ts}: {ours}\nquestions: {rows}\nserver log:\n{log}") from None
            def none_open() -> bool:
                with Store(db) as store:
                    return not store.query("SELECT id FROM questions WHERE status IN ('queued', 'answering')")

            slack.wait_for(none_open, what="no open question")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
