"""Files attached in Slack, end to end: the real app over HTTP, the fake Slack Web API serving the file bytes at
url_private (bearer token checked), real PDF and DOCX files written in the test, the real loaders, embedder, FAISS
indexes, router, guard and SQLite store. The model is an OpenAI-compatible server scripted over HTTP (it answers
with the sentence of the sources that holds the asked-for word), except in the one slow test on the real model.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import faiss
import httpx
import pytest

from bot.answer import Answerer, Question, merge_ranked
from bot.config import Settings
from bot.domains import discover
from bot.llm.openai import OpenAIRuntime, ServerOptions
from bot.prompt import Passage
from bot.retrieval.index import Retriever
from bot.slack import attachments
from bot.slack.events import may_be_question
from bot.testing.documents import make_docx, make_encrypted_pdf, make_pdf, make_scanned_pdf
from bot.testing.recording import RecordingRuntime
from bot.testing.scripted_llm import URL, sse
from bot.testing.slack_bot import BotStarter, RunningBot
from bot.testing.slack_kit import (
    BOT_TOKEN,
    BOT_USER_ID,
    CHANNEL,
    DM,
    USER,
    FakeSlack,
    app_mention,
    message,
    post_event,
)

PAGES = [
    "This Master Services Agreement is made between Acme Widgets Ltd and Blue Heron Logistics. It starts on the "
    "first day of March.",
    "Termination. Either party may end this agreement early. The early termination fee is 4,721 zorkmids, payable "
    "within thirty days of the notice.",
    "Assignment. Neither party may assign this agreement without the written consent of the other party.",
]
MAGIC = "zorkmid"  # a word only the attached file holds: no domain document, no training set
FEE = "The early termination fee is 4,721 zorkmids, payable within thirty days of the notice."
QUESTION = "legal: What is the early termination fee in zorkmids?"


# ---------------------------------------------------------------- a scripted model over the real parts


def _sources(body: dict) -> dict[int, str]:
    """The numbered passages of a prompt: {n: text}."""
    system = body["messages"][0]["content"]
    blocks = system.split("Sources:\n", 1)[1] if "Sources:\n" in system else ""
    found = {}
    for part in re.split(r"\n\n(?=\[\d+\] )", blocks):
        m = re.match(r"\[(\d+)\] [^\n]*\n(.*)", part, re.S)
        if m:
            found[int(m.group(1))] = m.group(2)
    return found


def _reply(body: dict) -> str:
    """The sentence of the sources that holds the word the question asks about, cited; else the first one's."""
    sources = _sources(body)
    for n, text in sources.items():
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            if MAGIC in sentence:
                return f"{' '.join(sentence.split())} [{n}]"  # fpdf wraps lines inside a sentence
    if sources:
        first = re.split(r"(?<=[.!?])\s+", sources[1].strip())[0]
        return f"{first} [1]"
    return "I don't know."


class Scripted:
    def __init__(self) -> None:
        self.seen: list[dict] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # the adapter probe: the base model only
            return httpx.Response(200, json={"object": "list", "data": [{"id": "base", "object": "model"}]})
        body = json.loads(request.content)
        self.seen.append(body)
        return httpx.Response(200, content=sse(_reply(body)), headers={"content-type": "text/event-stream"})


@pytest.fixture(scope="module")
def shared_parts(base_settings, built_indexes, embedder) -> tuple:
    """The real domains, indexes and router (fitted once), without loading the language model."""
    discovery = discover(base_settings.domains_dir)
    retriever = Retriever(base_settings, embedder)
    router = Answerer(base_settings, discovery, retriever).router
    return discovery, retriever, router


@pytest.fixture()
def scripted_answerer(shared_parts, settings) -> tuple[Answerer, Scripted]:
    discovery, retriever, router = shared_parts
    model = Scripted()
    s = settings.with_(llm_backend="openai", llm_base_url=URL, max_tokens=64)
    runtime = OpenAIRuntime(s, options=ServerOptions(base_url=URL, tokenizer="estimate", retries=0),
                            transport=httpx.MockTransport(model.handle))
    return Answerer(s, discovery, retriever, runtime, router=router), model


class Bot(RunningBot):
    def say(self, text: str, *, files: list[dict] | None = None, channel: str = CHANNEL,
            thread_ts: str | None = None, mention: bool = True) -> str:
        """A person posts a message (with files) and Slack delivers its event, signed: an app_mention, or a
        message (subtype file_share when it has files)."""
        ts = self.slack.add_message(channel, text, thread_ts=thread_ts, files=files)
        if mention:
            payload = app_mention(text, channel=channel, ts=ts, thread_ts=thread_ts, files=files)
        else:
            payload = message(text, channel=channel, ts=ts, thread_ts=thread_ts, files=files,
                              channel_type="im" if channel.startswith("D") else "channel")
        assert post_event(self.url, payload)[0] == 200
        return ts

    def ours(self, channel: str, thread_ts: str | None) -> list[dict]:
        return [m for m in self.slack.messages(channel) if m.get("user") == BOT_USER_ID
                and m.get("thread_ts") == thread_ts]

    def wait_answers(self, channel: str, thread_ts: str | None, n: int = 1) -> list[dict]:
        def done() -> list[dict] | None:
            found = [m for m in self.ours(channel, thread_ts) if _is_answer(m)]
            return found if len(found) >= n else None

        return self.slack.wait_for(done, timeout=60, what=f"{n} answers in {channel}/{thread_ts}")

    def wait_notice(self, channel: str, thread_ts: str | None, words: str) -> dict:
        def found() -> dict | None:
            return next((m for m in self.ours(channel, thread_ts) if words in m.get("text", "")), None)

        return self.slack.wait_for(found, timeout=60, what=f"a reply saying {words!r}")


def _is_answer(msg: dict) -> bool:
    return any(b.get("block_id") == "domainbot_answer" for b in msg.get("blocks") or ()) and "▍" not in json.dumps(
        msg.get("blocks"))


def _text(msg: dict) -> str:
    return json.dumps(msg.get("blocks") or [], ensure_ascii=False)


def _sources_line(msg: dict) -> str:
    return next(e["text"] for b in msg["blocks"] if b["type"] == "context" for e in b["elements"]
                if e["text"].startswith("*Sources*"))


@pytest.fixture()
def start_bot(settings: Settings, scripted_answerer, tmp_path) -> Iterator[BotStarter[Bot]]:
    starter = BotStarter(settings, scripted_answerer[0], tmp_path, Bot, stream_interval_s=0.0)
    yield starter
    starter.close()


def _index_state(settings: Settings) -> tuple[int, str]:
    folder = settings.indexes_dir / "legal"
    return faiss.read_index(str(folder / "index.faiss")).ntotal, (folder / "chunks.jsonl").read_text()


def _stored_text(db: Path) -> str:
    """Every value of every table of the SQLite store, as one string."""
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(str(v) for t in tables for row in con.execute(f'SELECT * FROM "{t}"') for v in row)


# ---------------------------------------------------------------- end to end


def test_a_pdf_in_a_thread_is_answered_from_and_cited_with_its_page_only_in_that_thread(
        start_bot, scripted_answerer, settings, tmp_path):
    _, model = scripted_answerer
    before = _index_state(settings)
    bot = start_bot()
    pdf = bot.slack.add_file("contract.pdf", make_pdf(tmp_path / "contract.pdf", PAGES).read_bytes())

    root = bot.say("<@UBOT> legal: Does the agreement renew automatically?")
    bot.wait_answers(CHANNEL, root)
    bot.say(QUESTION, files=[pdf], thread_ts=root, mention=False)  # a thread reply with the file: file_share
    _, answer = bot.wait_answers(CHANNEL, root, n=2)
    assert FEE in answer["text"]
    # The answer cites [n]; [n] is labelled "contract.pdf, p. 2", and the passage the model saw as [n] is page 2.
    n = int(re.search(r"\[(\d)\]", answer["text"]).group(1))
    assert re.search(rf"\[{n}\] <[^|>]+\|contract\.pdf, p\. 2>", _sources_line(answer))
    shown = " ".join(_sources(model.seen[-1])[n].split())
    assert FEE in shown and PAGES[0][:40] not in shown and PAGES[2][:40] not in shown
    downloads = bot.slack.calls("files-pri")
    assert downloads and all(c.token == BOT_TOKEN for c in downloads)
    assert bot.slack.calls("files.info", file=pdf["id"])

    # A later reply in the thread, without the file, still sees it (read again from the thread).
    bot.say("And the termination fee, how many zorkmids was it?", thread_ts=root, mention=False)
    *_, later = bot.wait_answers(CHANNEL, root, n=3)
    assert FEE in later["text"] and "contract.pdf, p. 2" in _sources_line(later)

    # Another thread does not.
    other = bot.say(f"<@UBOT> {QUESTION}")
    [elsewhere] = bot.wait_answers(CHANNEL, other)
    assert MAGIC not in _text(elsewhere) and "contract.pdf" not in _text(elsewhere)
    assert all(MAGIC not in text for text in _sources(model.seen[-1]).values())

    bot.ctx.close()
    assert _index_state(settings) == before  # the domain's index is untouched
    stored = _stored_text(bot.ctx.settings.db_path)  # the questions are; nothing only the file says is
    assert "4,721" not in stored and "thirty days" not in stored and "Blue Heron" not in stored
    kinds = [(r["kind"], r["domain"]) for r in bot.store.exchanges()]
    assert kinds == [("answer", "legal"), ("file_answer", "legal"), ("file_answer", "legal"), ("answer", "legal")]
    assert "contract.pdf" in bot.store.exchanges()[1]["answer"]  # its name is kept, not its text


def test_a_docx_shared_alone_in_a_dm_is_acknowledged_and_its_thread_answers_from_it(start_bot, tmp_path):
    bot = start_bot()
    doc = make_docx(tmp_path / "handbook.docx", [("h1", "Staff handbook"),
                                                  ("p", "Parking. The staff car park closes at 9 pm."),
                                                  ("p", f"Travel. Each trip earns 12 {MAGIC}s of allowance.")])
    ref = bot.slack.add_file("handbook.docx", doc.read_bytes())
    root = bot.say("", files=[ref], channel=DM, mention=False)
    ack = bot.wait_notice(DM, root, "I read handbook.docx")  # in a thread under the file
    assert "about 19 words" in ack["text"] and "ask me about it" in ack["text"]
    bot.say(f"legal: How many {MAGIC}s does each trip earn?", channel=DM, thread_ts=root, mention=False)
    [answer] = bot.wait_answers(DM, root)
    assert f"Each trip earns 12 {MAGIC}s of allowance" in answer["text"]
    assert "handbook.docx" in _sources_line(answer)


@pytest.mark.parametrize("case", ["unsupported", "oversized", "corrupt", "encrypted", "scanned", "wrong_token",
                                  "deleted"])
def test_a_file_that_cannot_be_used_gets_a_short_reason_and_the_question_is_still_answered(
        case, start_bot, tmp_path):
    slack = FakeSlack()
    overrides: dict = {}
    name, data = "contract.pdf", make_pdf(tmp_path / "c.pdf", PAGES).read_bytes()
    expected = {
        "unsupported": ".exe files are not supported (I read PDF, DOCX, TXT, MD and HTML)",
        "oversized": "over the 1 KB limit for attached files",
        "corrupt": "not a readable PDF",
        "encrypted": "the PDF is encrypted",
        "scanned": "needs OCR",
        "wrong_token": "Slack refused the bot's access to it",
        "deleted": "couldn't open an attached file (file_not_found)",
    }[case]
    if case == "unsupported":
        name = "setup.exe"
    elif case == "oversized":
        overrides["slack_file_max_bytes"] = 1000
    elif case == "corrupt":
        data = b"%PDF-1.4\n" + b"\x00garbage" * 50
    elif case == "encrypted":
        data = make_encrypted_pdf(tmp_path / "e.pdf", PAGES).read_bytes()
    elif case == "scanned":
        data = make_scanned_pdf(tmp_path / "s.pdf").read_bytes()
    elif case == "wrong_token":
        slack.file_tokens = ("xoxb-another-workspace",)  # url_private turns the bot's token away
    bot = start_bot(slack=slack, **overrides)
    ref = bot.slack.add_file(name, data)
    if case == "deleted":
        ref = {**ref, "id": "F0GONE"}
    ts = bot.say("<@UBOT> legal: Does the agreement renew automatically?", files=[ref])
    notice = bot.wait_notice(CHANNEL, ts, expected)
    assert notice["text"].startswith(":warning:") and name in notice["text"] or case == "deleted"
    [answer] = bot.wait_answers(CHANNEL, ts)  # answered from the domain all the same
    assert name not in _sources_line(answer) and MAGIC not in answer["text"]
    if case == "wrong_token":  # the sign-in page was never taken for the file
        assert [c.token for c in bot.slack.calls("files-pri")] == [BOT_TOKEN]
    if case in ("unsupported", "oversized", "deleted"):
        assert not bot.slack.calls("files-pri")  # ruled out by files.info, before any download


def test_a_bad_file_alone_gets_only_its_reason(start_bot, tmp_path):
    bot = start_bot()
    ref = bot.slack.add_file("photo.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    ts = bot.say("<@UBOT>", files=[ref])
    notice = bot.wait_notice(CHANNEL, ts, "photo.png")
    assert ".png files are not supported" in notice["text"]
    bot.ctx.close()
    assert not [m for m in bot.ours(CHANNEL, ts) if _is_answer(m)] and bot.store.exchanges() == []


@pytest.mark.slow
def test_the_real_model_answers_with_the_attached_pdf_among_its_sources(start_bot, quick: Answerer, tmp_path):
    recorder = RecordingRuntime(quick.runtime)
    answerer = Answerer(quick.settings, quick.discovery, quick.retriever, recorder, router=quick.router)
    bot = start_bot(answerer=answerer)
    pdf = bot.slack.add_file("contract.pdf", make_pdf(tmp_path / "contract.pdf", PAGES).read_bytes())
    ts = bot.say(f"<@UBOT> {QUESTION}", files=[pdf])
    [answer] = bot.wait_answers(CHANNEL, ts)
    assert "contract.pdf, p. 2" in _sources_line(answer)
    system = recorder.prompt_for("What is the early termination fee in zorkmids?")[0]["content"]
    assert FEE in " ".join(system.split())  # page 2's text reached the real model as a numbered source


# ---------------------------------------------------------------- the parts


def test_the_fake_url_private_serves_the_bytes_only_to_the_bot_token():
    with FakeSlack() as slack:
        ref = slack.add_file("notes.txt", b"hello file")
        ok = httpx.get(ref["url_private_download"], headers={"Authorization": f"Bearer {BOT_TOKEN}"})
        assert (ok.status_code, ok.content) == (200, b"hello file")
        for headers in ({"Authorization": "Bearer xoxb-wrong"}, {}):
            refused = httpx.get(ref["url_private"], headers=headers)
            assert refused.status_code == 302 and "Sign in" in refused.text
            assert refused.headers["content-type"].startswith("text/html")


def test_file_share_messages_may_be_questions_but_other_subtypes_and_mentions_are_not(start_bot):
    bot = start_bot()
    ref = {"id": "F1", "name": "a.pdf"}
    dm = message("see attached", channel=DM, channel_type="im", files=[ref])["event"]
    assert dm["subtype"] == "file_share" and may_be_question(bot.ctx, dm)
    assert not may_be_question(bot.ctx, {**dm, "subtype": "message_changed"})
    mention = message("<@UBOT> see attached", files=[ref], thread_ts="1.0")["event"]
    assert not may_be_question(bot.ctx, mention)  # it arrives as an app_mention too


def test_merge_ranked_keeps_each_lists_order_and_the_guard_sees_file_passages(scripted_answerer, tmp_path):
    a = [Passage("d#1", "D", "x", 0.5), Passage("d#2", "D", "y", 0.7)]
    b = [Passage("f#1", "F", "z", 0.6), Passage("f#2", "F", "w", 0.1)]
    assert [p.chunk_id for p in merge_ranked(a, b)] == ["f#1", "d#1", "d#2", "f#2"]
    answerer, _ = scripted_answerer
    extra = [Passage("slack-file/F1/contract.pdf#1", "contract", PAGES[1], 0.9, "slack-file/F1/contract.pdf",
                     {"file": "contract.pdf", "page": 2, "slack_file": "F1"})]
    ans = answerer.answer(Question(QUESTION, extra_passages=extra))
    assert ans.guard["verdict"] == "supported" and FEE in ans.text
    [cited] = [c for c in ans.citations if c.cited]
    assert cited.label == "contract.pdf, p. 2"
    without = answerer.answer(Question(QUESTION))
    assert FEE not in without.text  # the guard would not keep it from the domain's passages alone


def test_attachments_rank_and_check_without_slack(embedder, tmp_path):
    ref = attachments.FileRef("F1", "contract.pdf", 2000, "http://x/f")
    docs = attachments.parse(make_pdf(tmp_path / "c.pdf", PAGES).read_bytes(), ref)
    assert [d.metadata["page"] for d in docs] == [1, 2, 3] and attachments.extent(docs) == "3 pages"
    chunks = attachments.chunk(docs, embedder.tokenizer, 240, 32)
    found = attachments.Attachments([attachments.FileRead(ref, chunks, "3 pages")])
    [best] = attachments.best_passages(found, "What is the early termination fee?", embedder, k=1)
    assert best.metadata["page"] == 2 and best.chunk_id.startswith("slack-file/F1/")
    with pytest.raises(attachments.AttachmentError, match="over the 1 KB limit"):
        attachments.check(ref, max_bytes=1000)
    with pytest.raises(attachments.AttachmentError, match="the file is empty"):
        attachments.parse(b"", attachments.FileRef("F2", "empty.txt", 0, "http://x/e"))
    ids = attachments.thread_file_ids([
        {"ts": "1.0", "user": USER, "files": [{"id": "F1"}]}, {"ts": "2.0", "user": BOT_USER_ID, "files": [{"id": "FB"}]},
        {"ts": "3.0", "user": USER, "files": [{"id": "F3"}]}], before_ts="3.0", bot_user_id=BOT_USER_ID)
    assert ids == ["F1"]
