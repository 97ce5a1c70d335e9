"""Live reload of plugin folders: a running bot sees a new, edited or removed `domains/<name>/` without a restart.

A watcher thread polls the folders' file stamps (no dependency, works on every filesystem). When a folder changed
and then stayed unchanged for one more poll (an editor's save or a `cp -r` has finished), it rediscovers the
domains and swaps them into the Answerer in one step, refitting the router when the set of domains or their
descriptions, examples or eval questions changed, and rebuilding the index of a domain whose docs changed. A
manifest that no longer parses keeps the last good version of that domain serving; the reason is logged once
per change, naming the folder.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot import adapters
from bot.domains import Discovery, Domain, discover, plugin_folders

if TYPE_CHECKING:
    from bot.answer import Answerer

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int] | None  # (mtime ns, size, inode) of a file, None when it is missing


def _stat(path: Path) -> Stamp:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino  # the inode catches editors that save by renaming a new file


def _tree(folder: Path) -> tuple[tuple[str, Stamp], ...]:
    if not folder.is_dir():
        return ()
    return tuple((str(p.relative_to(folder)), _stat(p)) for p in sorted(folder.rglob("*")) if p.is_file())


@dataclass(frozen=True)
class FolderStamp:
    """What the watcher compares between polls, per plugin folder."""

    manifest: Stamp  # domain.toml: description, examples, prompts, policy rules
    docs: tuple[tuple[str, Stamp], ...]  # every file under docs/
    adapter: tuple[str, float]  # adapters/current (the Answerer already rereads it on every answer)
    router_data: Stamp  # eval.jsonl: the router fits its threshold on these questions too

    @classmethod
    def of(cls, folder: Path) -> FolderStamp:
        return cls(_stat(folder / "domain.toml"), _tree(folder / "docs"),
                   adapters.pointer_stamp(folder / "adapters"), _stat(folder / "eval.jsonl"))


def scan(domains_dir: Path) -> dict[str, FolderStamp]:
    return {folder.name: FolderStamp.of(folder) for folder in plugin_folders(domains_dir)}


def _router_key(domain: Domain) -> tuple[str, tuple[str, ...]]:
    return domain.description, domain.examples


class DomainWatcher:
    """Polls the domains folder every `interval_s` seconds and reloads what changed into `answerer`."""

    def __init__(self, answerer: Answerer, interval_s: float | None = None):
        self.answerer = answerer
        self.interval_s = interval_s if interval_s is not None else answerer.settings.reload_s
        self.domains_dir = answerer.settings.domains_dir
        self.polls = 0  # finished polls, for tests and logs: waiting on this never needs a sleep
        self.reloads = 0
        self._applied = scan(self.domains_dir)  # what the answerer serves now
        self._pending: dict[str, FolderStamp] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------- the thread

    def start(self) -> DomainWatcher:
        self._thread = threading.Thread(target=self._run, name="domain-reload", daemon=True)
        self._thread.start()
        log.info("watching %s for plugin changes every %.1fs", self.domains_dir, self.interval_s)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad reload
                log.exception("live reload of %s failed; the bot keeps serving what it had", self.domains_dir)
            finally:
                self.polls += 1

    # -------- one poll

    def check(self) -> bool:
        """One poll. Reloads (and returns True) once a change has been stable for one poll."""
        now = scan(self.domains_dir)
        if now == self._applied:
            self._pending = None
            return False
        if now != self._pending:  # still changing (a save or a copy in progress): look again next poll
            self._pending = now
            return False
        changed = {n for n in now.keys() | self._applied.keys() if now.get(n) != self._applied.get(n)}
        before = self._applied
        self._applied, self._pending = now, None  # even if the reload fails: retry on the next change, not forever
        self.reload(changed, before, now)
        self.reloads += 1
        return True

    def reload(self, changed: set[str], before: dict[str, FolderStamp], now: dict[str, FolderStamp]) -> None:
        settings = self.answerer.settings
        old = self.answerer.discovery
        fresh = discover(self.domains_dir, settings.domain_allowlist)
        domains = dict(fresh.domains)
        for name, reason in fresh.errors.items():
            last_good = old.domains.get(name)
            if last_good is not None and (self.domains_dir / name / "domain.toml").is_file():
                domains[name] = last_good
                if name in changed:
                    log.warning("domain %s: the edit was not loaded, so its last good version keeps serving: %s",
                                name, reason)
            elif name in changed:
                log.warning("domain %s not loaded: %s", name, reason)
        domains = dict(sorted(domains.items()))

        added = domains.keys() - old.domains.keys()
        removed = old.domains.keys() - domains.keys()
        kept = domains.keys() & old.domains.keys()

        def moved(name: str, part: str) -> bool:
            was, is_ = before.get(name), now.get(name)
            return was is not None and is_ is not None and getattr(was, part) != getattr(is_, part)

        for name in sorted(added):
            self._refresh_index(domains[name])  # before it is routed to, so its first question isn't the slow one
        for name in sorted(changed & kept):
            if moved(name, "docs"):
                self._refresh_index(domains[name])
            if moved(name, "adapter"):
                log.info("domain %s: adapter pointer is now %r; the next answer uses it", name,
                         now[name].adapter[0] or "base")
        refit = bool(added or removed) or any(
            _router_key(domains[n]) != _router_key(old.domains[n]) or moved(n, "router_data") for n in kept
        )
        self.answerer.serve_domains(Discovery(domains, dict(fresh.errors)), refit_router=refit)
        for name in sorted(removed):
            self._forget_index(name)
            log.info("domain %s removed; it is no longer routed to", name)
        for name in sorted(added):
            log.info("domain %s added", name)
        log.info("domains reloaded (%s): serving %s%s", ", ".join(sorted(changed)), ", ".join(domains) or "none",
                 "; router refitted" if refit else "")

    # -------- indexes

    def _refresh_index(self, domain: Domain) -> None:
        """Rebuild a domain's index if its docs changed (the retriever compares a docs hash), then make the next
        search load it. If the build fails, the index already in memory keeps serving."""
        try:
            outcome = self.answerer.retriever.ensure_index(domain)
        except Exception as exc:  # noqa: BLE001 - one bad document must not stop the reload of the others
            log.warning("domain %s: its index was not rebuilt, so the last built one keeps serving: %s",
                        domain.name, exc)
            return
        self._forget_index(domain.name)  # also when another process (`domainbot index`) rebuilt it first
        log.info("domain %s: index %s", domain.name, outcome)

    def _forget_index(self, name: str) -> None:
        self.answerer.retriever.forget(name)


@contextmanager
def watching(answerer: Answerer) -> Iterator[DomainWatcher | None]:
    """Run a watcher while the block runs (DOMAINBOT_RELOAD_S seconds between polls; 0 turns it off)."""
    if answerer.settings.reload_s <= 0:
        yield None
        return
    watcher = DomainWatcher(answerer).start()
    try:
        yield watcher
    finally:
        watcher.stop()
