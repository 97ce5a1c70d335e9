"""Files attached in Slack (a mention, a DM or a thread reply): PDF, DOCX, TXT, MD or HTML, read with the same
loaders as a domain's docs/, chunked, and ranked against the question as extra passages for that thread's answers.

Nothing here keeps a file: it is downloaded into a temporary folder, parsed, and deleted; its chunks live only in
the answer being built. A later reply in the thread reads the thread's files again (see `thread_file_ids`): that
works the same after a restart, on another replica, or for a resumed question, which an in-memory cache per thread
would not. The pure parts (what a file is, whether we can read it, chunking and ranking) are separate from the I/O
(`files.info` and the authenticated download of `url_private_download`).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import numpy as np
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.prompt import Passage
from bot.retrieval.incremental import embed_text
from bot.retrieval.index import chunk_doc
from bot.retrieval.loaders import DOCX, HTML, MARKDOWN, PDF, TEXT, Doc, DocumentError, load_file, pretty_stem

log = logging.getLogger(__name__)

READABLE = tuple(sorted(PDF + DOCX + HTML + MARKDOWN + TEXT))  # the docs/ types except curated .jsonl rows
# Slack's `filetype` for a file whose name has no extension
FILETYPES = {"pdf": ".pdf", "docx": ".docx", "html": ".html", "markdown": ".md", "text": ".txt", "post": ".md"}
TOP_K = 3  # file chunks kept per answer, next to the domain's own passages
MAX_THREAD_FILES = 5  # the latest files of a thread that later replies still read
MAX_CHUNKS = 400  # per file: a long file's tail is not ranked (bounds the embedding work per answer)
DOWNLOAD_TIMEOUT_S = 30.0
FILE_SHARE = "file_share"  # the subtype of a message event (or thread message) with files attached
KIND_ANSWER = "file_answer"  # exchange kind of an answer that saw a file's passages: never training data
KIND_ACK = "file_ack"  # exchange kind of "I read x.pdf; ask me about it"


class AttachmentError(Exception):
    """A file we cannot use; the message is the short reason shown to the user."""


@dataclass(frozen=True)
class FileRef:
    """What files.info says about one file."""

    id: str
    name: str
    size: int
    url: str  # url_private_download (else url_private): needs the bot token
    filetype: str = ""
    mimetype: str = ""
    permalink: str | None = None

    @property
    def suffix(self) -> str:
        suffix = Path(self.name).suffix.lower()
        return suffix or FILETYPES.get(self.filetype, "")

    @classmethod
    def from_info(cls, info: dict) -> FileRef:
        name = str(info.get("name") or info.get("title") or info.get("id") or "file")
        url = info.get("url_private_download") or info.get("url_private") or ""
        return cls(str(info.get("id", "")), name, int(info.get("size") or 0), str(url), str(info.get("filetype") or ""),
                   str(info.get("mimetype") or ""), info.get("permalink"))


@dataclass
class FileRead:
    """One file's chunks and how it reads to a person ("12 pages")."""

    ref: FileRef
    chunks: list[Passage]
    extent: str


@dataclass
class Attachments:
    """The files read for one answer: their chunks, and the reasons for those that could not be used."""

    read: list[FileRead] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def chunks(self) -> list[Passage]:
        return [c for f in self.read for c in f.chunks]


# ---------------------------------------------------------------- pure parts


def file_ids(files: Iterable[dict | str] | None) -> list[str]:
    """The ids of an event's or a message's `files` (full objects, or ids as a stored event keeps them)."""
    out = []
    for f in files or ():
        fid = f if isinstance(f, str) else (f.get("id") if isinstance(f, dict) else None)
        if fid and fid not in out:
            out.append(str(fid))
    return out


def thread_file_ids(messages: Sequence[dict], *, before_ts: str | None, bot_user_id: str,
                    limit: int = MAX_THREAD_FILES) -> list[str]:
    """The files people attached to a thread before `before_ts`, the latest `limit` of them, oldest first."""
    ids: list[str] = []
    for m in messages:
        if m.get("user") == bot_user_id or m.get("bot_id"):
            continue
        if before_ts is not None and float(m.get("ts") or 0) >= float(before_ts):
            continue
        ids.extend(i for i in file_ids(m.get("files")) if i not in ids)
    return ids[-limit:]


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{max(1, round(n / 1000))} KB"


def check(ref: FileRef, max_bytes: int) -> None:
    """Raise AttachmentError when the file's type or size rules it out, before downloading it."""
    if ref.suffix not in READABLE:
        kind = f"{ref.suffix} files" if ref.suffix else "files of this type"
        raise AttachmentError(f"I can't read {ref.name}: {kind} are not supported (I read PDF, DOCX, TXT, MD and HTML).")
    if ref.size > max_bytes:
        raise AttachmentError(f"I can't read {ref.name}: it is {_mb(ref.size)}, over the {_mb(max_bytes)} limit "
                              "for attached files.")
    if not ref.url:
        raise AttachmentError(f"I can't read {ref.name}: Slack gave no download link for it.")


def _safe_name(ref: FileRef) -> str:
    """The file's own name, made safe for a temporary folder (its citations show it)."""
    name = re.sub(r"[\x00-\x1f/\\]+", "_", Path(ref.name).name).strip(" .") or "file"
    return name if Path(name).suffix.lower() == ref.suffix else name + ref.suffix


def parse(data: bytes, ref: FileRef) -> list[Doc]:
    """The file's Docs, read by the domain loaders (PDF pages, Markdown and HTML sections); AttachmentError names
    why not (encrypted, damaged, scanned without text, empty)."""
    with tempfile.TemporaryDirectory(prefix="domainbot-file-") as tmp:
        path = Path(tmp) / _safe_name(ref)
        path.write_bytes(data)
        try:
            docs = load_file(path, Path(tmp))
        except DocumentError as exc:
            reason = str(exc).removeprefix(f"{path.name}: ")
            raise AttachmentError(f"I couldn't read {ref.name}: {reason}.".replace("..", ".")) from exc
    doc_id = f"slack-file/{ref.id}/{path.name}"
    meta = {"slack_file": ref.id, **({"url": ref.permalink} if ref.permalink else {})}
    return [Doc(doc_id, pretty_stem(path), d.text, {**d.metadata, **meta}) for d in docs]


def extent(docs: Sequence[Doc]) -> str:
    """"12 pages" for a PDF, else the length in words."""
    pages = {d.metadata["page"] for d in docs if isinstance(d.metadata.get("page"), int)}
    if pages:
        return f"{len(pages)} page{'s' if len(pages) != 1 else ''}"
    words = sum(len(d.text.split()) for d in docs)
    return f"about {words:,} words"


def chunk(docs: Sequence[Doc], tokenizer, size: int, overlap: int, limit: int = MAX_CHUNKS) -> list[Passage]:
    """Chunks as a domain index makes them, numbered on across pages, at most `limit`."""
    chunks: list[Passage] = []
    numbered: dict[str, int] = {}
    for doc in docs:
        part = chunk_doc(doc, tokenizer, size, overlap, first=numbered.get(doc.id, 0))
        numbered[doc.id] = numbered.get(doc.id, 0) + len(part)
        chunks.extend(part)
        if len(chunks) >= limit:
            return chunks[:limit]
    return chunks


def rank(question_vec: np.ndarray, chunks: Sequence[Passage], vectors: np.ndarray, k: int = TOP_K) -> list[Passage]:
    """The k chunks closest in meaning to the question (normalised vectors: inner product is cosine)."""
    if not chunks:
        return []
    scores = vectors @ question_vec
    best = np.argsort(-scores, kind="stable")[:k]
    return [replace(chunks[i], score=round(float(scores[i]), 4)) for i in best]


def ack_text(read: Sequence[FileRead]) -> str:
    """What a file shared with no question gets: "I read contract.pdf (12 pages); ask me about it in this thread."."""
    names = ", ".join(f"{f.ref.name} ({f.extent})" for f in read)
    return f"I read {names}; ask me about {'it' if len(read) == 1 else 'them'} in this thread."


def is_file_passage(p: Passage) -> bool:
    return "slack_file" in p.metadata


# ---------------------------------------------------------------- I/O


def file_info(client: WebClient, file_id: str) -> FileRef:
    try:
        info = client.files_info(file=file_id)["file"]
    except SlackApiError as err:
        raise AttachmentError(f"I couldn't open an attached file ({err.response.get('error')}); is the app's "
                              "files:read scope granted?") from None
    return FileRef.from_info(info)


def download(ref: FileRef, token: str, max_bytes: int, timeout: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """The file's bytes from url_private_download with the bot token. Slack answers a token it does not accept
    with a redirect to its sign-in page (or that page itself); that is a refusal, not the file."""
    refused = (f"I couldn't download {ref.name}: Slack refused the bot's access to it (is the app's files:read "
               "scope granted, and is the bot in this conversation?).")
    try:
        with httpx.stream("GET", ref.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout,
                          follow_redirects=False) as resp:
            if resp.is_redirect or resp.status_code in (401, 403):
                raise AttachmentError(refused)
            if resp.status_code != 200:
                raise AttachmentError(f"I couldn't download {ref.name}: Slack answered HTTP {resp.status_code}.")
            html = resp.headers.get("content-type", "").startswith("text/html")
            if html and ref.suffix not in HTML:  # the sign-in page instead of the file
                raise AttachmentError(refused)
            data = bytearray()
            for block in resp.iter_bytes():
                data += block
                if len(data) > max_bytes:
                    raise AttachmentError(f"I can't read {ref.name}: it is over the {_mb(max_bytes)} limit for "
                                          "attached files.")
    except httpx.HTTPError as exc:
        raise AttachmentError(f"I couldn't download {ref.name} ({type(exc).__name__}).") from None
    return bytes(data)


def read_file(client: WebClient, file_id: str, *, token: str, max_bytes: int, tokenizer, size: int,
              overlap: int) -> FileRead:
    """files.info, check, download, parse and chunk one file; AttachmentError says why it cannot be used."""
    ref = file_info(client, file_id)
    check(ref, max_bytes)
    docs = parse(download(ref, token, max_bytes), ref)
    return FileRead(ref, chunk(docs, tokenizer, size, overlap), extent(docs))


def read_files(client: WebClient, ids: Sequence[str], *, report: Sequence[str], token: str, max_bytes: int,
               embedder, chunk_tokens: int, chunk_overlap: int) -> Attachments:
    """Read every file; problems with the files in `report` (this message's) are kept for the user, others
    (earlier in the thread, already reported then) only logged."""
    found = Attachments()
    size = min(chunk_tokens, embedder.max_seq_length - 16)
    for fid in ids:
        try:
            found.read.append(read_file(client, fid, token=token, max_bytes=max_bytes, tokenizer=embedder.tokenizer,
                                        size=size, overlap=chunk_overlap))
        except AttachmentError as exc:
            if fid in report:
                found.problems.append(str(exc))
            else:
                log.info("an earlier file of the thread is not used: %s", exc)
    return found


def best_passages(found: Attachments, question: str, embedder, k: int = TOP_K) -> list[Passage]:
    """The file chunks closest to the question, scored (cosine) like the domain's passages."""
    chunks = found.chunks
    if not chunks or not question.strip():
        return []
    vectors = embedder.encode([embed_text(c) for c in chunks])
    return rank(embedder.encode_one(question), chunks, vectors, k)
